"""Which of the role's vhosts, users and policies differ from what the broker holds.

community.rabbitmq's modules ask the broker through its CLI, which starts an Erlang VM (about a
second) for every question: five times for each user (version, users, permissions, topic
permissions, password), again for guest, each vhost and each policy, so a run that changes
nothing spent most of its RabbitMQ time there. The role reads the broker's definitions once
(`rabbitmqctl export_definitions`) and hands each module only the items these filters find
different: the modules still make every change, by their own rules. What the definitions do
not hold (a vhost's tracing switch) is left as it is.
"""

import base64
import binascii
import hashlib
import hmac

# RabbitMQ's password hashes: base64 of a 4-byte salt and hash(salt + password).
HASHES = {
    "rabbit_password_hashing_sha256": hashlib.sha256,
    "rabbit_password_hashing_sha512": hashlib.sha512,
    "rabbit_password_hashing_md5": hashlib.md5,
}


def _present(item):
    return item.get("state", "present") == "present"


def _password_matches(held, password):
    algorithm = HASHES.get(held.get("hashing_algorithm"))
    try:
        raw = base64.b64decode(held.get("password_hash") or "", validate=True)
    except (binascii.Error, ValueError):
        return False
    if algorithm is None or len(raw) <= 4:
        return False
    salt, digest = raw[:4], raw[4:]
    return hmac.compare_digest(algorithm(salt + password.encode()).digest(), digest)


def _tags(value):
    """A user's tags as a set: the definitions give a list (a comma-separated string before 3.9)."""
    items = value.split(",") if isinstance(value, str) else value or []
    return {tag.strip() for tag in items if tag.strip()}


def _wanted_permissions(user):
    """Each vhost's permissions as the role asks the module for them: every privilege `.*`
    unless the entry names it."""
    return {
        entry.get("vhost", "/"): {
            "configure": entry.get("configure_priv", ".*"),
            "write": entry.get("write_priv", ".*"),
            "read": entry.get("read_priv", ".*"),
        }
        for entry in user.get("permissions", [])
    }


def rabbitmq_vhosts_to_apply(vhosts, definitions):
    """The vhosts to create or delete."""
    held = {vhost["name"] for vhost in definitions.get("vhosts", [])}
    return [vhost for vhost in vhosts if _present(vhost) != (vhost["name"] in held)]


def rabbitmq_users_to_apply(users, definitions):
    """The users to create, change (password, tags, permissions; any topic permission, which the
    role never gives) or delete."""
    held = {user["name"]: user for user in definitions.get("users", [])}
    permissions = {}
    for entry in definitions.get("permissions", []):
        permissions.setdefault(entry["user"], {})[entry["vhost"]] = {key: entry[key] for key in ("configure", "write", "read")}
    with_topic_permissions = {entry["user"] for entry in definitions.get("topic_permissions", [])}
    changes = []
    for user in users:
        found = held.get(user["name"])
        if not _present(user):
            if found is not None:
                changes.append(user)
        elif (found is None
              or not _password_matches(found, user.get("password") or "")
              or _tags(found.get("tags")) != _tags(user.get("tags", ""))
              or permissions.get(user["name"], {}) != _wanted_permissions(user)
              or user["name"] in with_topic_permissions):
            changes.append(user)
    return changes


def rabbitmq_users_owned(users, tag):
    """The users as the role writes them: `tag` (rabbitmq_owner_tag) added to each present user's
    tags, the mark by which a later run knows the users the role made."""
    if not tag:
        return users
    return [dict(user, tags=",".join(sorted(_tags(user.get("tags", "")) | {tag}))) if _present(user) else user for user in users]


def rabbitmq_users_left_over(definitions, users, tag):
    """The users the broker holds with the role's mark (`tag`) that `users` no longer lists, present
    or absent, each with the vhosts it has permissions on: [{name, vhosts}]."""
    listed = {user["name"] for user in users}
    vhosts = {}
    for entry in definitions.get("permissions", []):
        vhosts.setdefault(entry["user"], []).append(entry["vhost"])
    return [{"name": user["name"], "vhosts": sorted(vhosts.get(user["name"], []))} for user in definitions.get("users", [])
            if tag and tag in _tags(user.get("tags")) and user["name"] not in listed]


def rabbitmq_holds_user(definitions, name):
    return any(user["name"] == name for user in definitions.get("users", []))


def rabbitmq_policies_to_apply(policies, definitions):
    """The policies to create, change or delete."""
    held = {(policy["vhost"], policy["name"]): policy for policy in definitions.get("policies", [])}
    changes = []
    for policy in policies:
        found = held.get((policy.get("vhost", "/"), policy["name"]))
        if not _present(policy):
            if found is not None:
                changes.append(policy)
        elif (found is None
              or found.get("pattern") != policy["pattern"]
              or found.get("apply-to") != policy.get("apply_to", "all")
              or found.get("definition") != policy["tags"]
              or int(found.get("priority", 0)) != int(policy.get("priority", 0))):
            changes.append(policy)
    return changes


class FilterModule:
    def filters(self):
        return {
            "rabbitmq_vhosts_to_apply": rabbitmq_vhosts_to_apply,
            "rabbitmq_users_to_apply": rabbitmq_users_to_apply,
            "rabbitmq_holds_user": rabbitmq_holds_user,
            "rabbitmq_users_owned": rabbitmq_users_owned,
            "rabbitmq_users_left_over": rabbitmq_users_left_over,
            "rabbitmq_policies_to_apply": rabbitmq_policies_to_apply,
        }
