"""The RabbitMQ role's drift filters (roles/rabbitmq/filter_plugins/rabbitmq_definitions.py):
which vhosts, users and policies its modules must apply, read against the definitions a broker
exported, without a broker."""

import copy
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "roles" / "rabbitmq" / "filter_plugins"))

from rabbitmq_definitions import (  # noqa: E402
    rabbitmq_holds_user,
    rabbitmq_policies_to_apply,
    rabbitmq_users_left_over,
    rabbitmq_users_owned,
    rabbitmq_users_to_apply,
    rabbitmq_vhosts_to_apply,
)

# The hash RabbitMQ 3.10.8 (Debian 12) made of this password (`rabbitmqctl add_user`), and the
# shape of `rabbitmqctl export_definitions - --format json` there.
HASH = "S1TDssXzUz8cm8EBcMZ4I6hVjLK9dYt9t2lea9SsMqwDXsio"
PASSWORD = "s3cret-broker-password"
HELD = {
    "users": [
        {"name": "celery", "password_hash": HASH, "hashing_algorithm": "rabbit_password_hashing_sha256", "tags": [], "limits": {}},
        {"name": "flower", "password_hash": HASH, "hashing_algorithm": "rabbit_password_hashing_sha256", "tags": ["monitoring"],
         "limits": {}},
    ],
    "vhosts": [{"name": "/", "limits": [], "metadata": {}}, {"name": "celery", "limits": [], "metadata": {}}],
    "permissions": [
        {"user": "celery", "vhost": "celery", "configure": ".*", "write": ".*", "read": ".*"},
        {"user": "flower", "vhost": "celery", "configure": "^$", "write": "^$", "read": ".*"},
    ],
    "topic_permissions": [],
    "policies": [{"vhost": "celery", "name": "celery-fleet-quorum", "pattern": ".*", "apply-to": "queues",
                  "definition": {"delivery-limit": 20}, "priority": 0}],
}
USERS = [
    {"name": "celery", "password": PASSWORD, "permissions": [{"vhost": "celery"}]},
    {"name": "flower", "password": PASSWORD, "tags": "monitoring",
     "permissions": [{"vhost": "celery", "configure_priv": "^$", "write_priv": "^$"}]},
]
VHOSTS = [{"name": "celery"}]
POLICIES = [{"name": "celery-fleet-quorum", "vhost": "celery", "pattern": ".*", "apply_to": "queues", "tags": {"delivery-limit": 20}}]


def changed(**edits):
    """The users the filter picks when each named user is given the edited keys."""
    users = copy.deepcopy(USERS)
    for user in users:
        user.update(edits.get(user["name"], {}))
    return [user["name"] for user in rabbitmq_users_to_apply(users, HELD)]


def test_a_broker_that_holds_everything_gets_nothing_applied():
    assert rabbitmq_vhosts_to_apply(VHOSTS, HELD) == []
    assert rabbitmq_users_to_apply(USERS, HELD) == []
    assert rabbitmq_policies_to_apply(POLICIES, HELD) == []


def test_a_changed_password_tag_or_permission_applies_that_user_only():
    assert changed(celery={"password": "another-password-of-24ch"}) == ["celery"]
    assert changed(flower={"tags": "monitoring,management"}) == ["flower"]
    assert changed(flower={"tags": ""}) == ["flower"]
    assert changed(flower={"permissions": [{"vhost": "celery", "configure_priv": "^$"}]}) == ["flower"]
    assert changed(celery={"permissions": [{"vhost": "celery"}, {"vhost": "other"}]}) == ["celery"]
    assert changed(celery={"permissions": []}) == ["celery"]


def test_a_user_missing_or_meant_to_go_is_applied_and_one_gone_already_is_not():
    assert changed(celery={"name": "newapp"}) == ["newapp"]
    assert changed(flower={"state": "absent"}) == ["flower"]
    assert changed(flower={"name": "gone", "state": "absent"}) == []


def test_a_topic_permission_or_an_unreadable_hash_applies_the_user():
    held = copy.deepcopy(HELD)
    held["topic_permissions"] = [{"user": "celery", "vhost": "celery", "exchange": "amq.topic", "write": ".*", "read": ".*"}]
    assert [u["name"] for u in rabbitmq_users_to_apply(USERS, held)] == ["celery"]
    for broken in ({"password_hash": "not base64!"}, {"password_hash": ""}, {"hashing_algorithm": "rabbit_password_hashing_sha3"}):
        held = copy.deepcopy(HELD)
        held["users"][0].update(broken)
        assert [u["name"] for u in rabbitmq_users_to_apply(USERS, held)] == ["celery"], broken


def test_tags_in_the_pre_3_9_form_compare_the_same():
    held = copy.deepcopy(HELD)
    held["users"][1]["tags"] = "monitoring"
    assert rabbitmq_users_to_apply(USERS, held) == []


def test_vhosts_are_applied_when_missing_or_meant_to_go():
    assert rabbitmq_vhosts_to_apply([{"name": "celery"}, {"name": "new"}], HELD) == [{"name": "new"}]
    assert rabbitmq_vhosts_to_apply([{"name": "celery", "state": "absent"}], HELD) == [{"name": "celery", "state": "absent"}]
    assert rabbitmq_vhosts_to_apply([{"name": "gone", "state": "absent"}], HELD) == []


def test_a_policy_that_differs_in_any_field_is_applied():
    for edit in ({"pattern": "^celery$"}, {"apply_to": "all"}, {"tags": {"delivery-limit": 5}}, {"priority": 1}, {"vhost": "other"}):
        policy = dict(POLICIES[0], **edit)
        assert rabbitmq_policies_to_apply([policy], HELD) == [policy], edit
    gone = dict(POLICIES[0], state="absent")
    assert rabbitmq_policies_to_apply([gone], HELD) == [gone]


def test_guest_is_found_only_when_the_broker_holds_it():
    assert not rabbitmq_holds_user(HELD, "guest")
    held = copy.deepcopy(HELD)
    held["users"].append({"name": "guest", "password_hash": HASH, "hashing_algorithm": "rabbit_password_hashing_sha256", "tags": ["administrator"]})
    assert rabbitmq_holds_user(held, "guest")


def test_every_present_user_is_written_with_the_owner_tag_beside_its_own():
    owned = rabbitmq_users_owned(USERS + [{"name": "gone", "state": "absent"}], "celery-fleet")
    assert [user.get("tags") for user in owned] == ["celery-fleet", "celery-fleet,monitoring", None]
    assert rabbitmq_users_owned(USERS, "") == USERS


def test_a_user_with_the_owner_tag_that_the_list_no_longer_names_is_left_over():
    held = copy.deepcopy(HELD)
    for user in held["users"]:
        user["tags"] = user["tags"] + ["celery-fleet"]
    held["users"].append({"name": "byhand", "password_hash": HASH, "tags": ["administrator"]})
    held["permissions"].append({"user": "byhand", "vhost": "celery", "configure": ".*", "write": ".*", "read": ".*"})
    # celery is dropped from the list, flower marked absent, byhand was never the role's.
    assert rabbitmq_users_left_over(held, [dict(USERS[1], state="absent")], "celery-fleet") == [{"name": "celery", "vhosts": ["celery"]}]
    assert rabbitmq_users_left_over(held, USERS, "celery-fleet") == []
    assert rabbitmq_users_left_over(held, [], "") == []
