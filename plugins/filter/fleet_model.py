"""The fleet's model: every app with every key filled in and what the fleet derives from it.

roles/celery/vars/main.yml calls these filters once per variable it defines. They were Jinja
templates of 60 to 70 lines each, templated again at every reference on every host: about a
third of the controller's CPU in a no-op `site.yml` (measured in issue 25's note). Here they are
plain Python, and tests/test_fleet_model.py checks each derived value without a host.
"""

import json
import re

from ansible.module_utils.parsing.convert_bool import boolean

# An app's keys and their defaults (an entry of celery_apps names at least `name`); `None`
# stands for a default derived from the name.
APP_DEFAULTS = {
    "module": None, "requirements": "", "env": {}, "settings": {}, "src": "", "worker_groups": None, "sends_to": [],
    "workers": ["workers"], "beat": False, "flower": False, "flower_users": [], "flower_url_prefix": None,
    "smoke_task": "", "smoke_args": [], "smoke_result": None, "root": "", "env_file": "", "workdir": "",
    "user": None, "group": None, "home": None, "broker_password": "", "broker_user": None, "broker_namespace": None,
    "broker_url": "", "result_backend": "", "state": "present", "drop_queued": False,
}
# The keys an entry of celery_apps may have (a misspelt key would otherwise be ignored): its name
# and every key with a default, less the URLs (a list's apps get theirs from their accounts).
ENTRY_KEYS = ["name"] + [key for key in APP_DEFAULTS if key not in ("broker_url", "result_backend")]


def _single_app(single_app, groups, broker, broker_user, broker_vhost, broker_password, flower_enabled):
    """The one app of a single-app inventory (today's names and layout: the `celery` RabbitMQ user
    and vhost, Redis's password account and unprefixed keys, so a converged fleet keeps its queued
    tasks): `single_app`, role celery's single-app variables by key (name, src, module, ...)."""
    app = dict(single_app)
    app.update({
        "beat": len(groups.get("beat", [])) > 0,
        "flower": _truth(flower_enabled),
        "broker_user": broker_user if broker == "rabbitmq" else "",
        "broker_password": broker_password,
        # SQS: the app's queues are named after it.
        "broker_namespace": broker_vhost if broker == "rabbitmq" else app["name"] if broker == "sqs" else "",
    })
    return app


def _names(value):
    """celery_app_remove's names: one name (`-e celery_app_remove=NAME`), or a list of them."""
    if isinstance(value, str):
        return [value] if value else []
    return [str(name) for name in value or []]


def _unique(items):
    """Items in their first order, each once (Ansible's `unique`, which also takes dicts)."""
    kept = []
    for item in items:
        if item not in kept:
            kept.append(item)
    return kept


def _truth(value):
    return boolean(value, strict=False)


def _present(group):
    return group.get("state", "present") == "present"


def _kept(app):
    """An app the fleet keeps: any but those marked `state: absent` (a wrong state is refused)."""
    return app.get("state") != "absent"


def _app(entry, fleet, several, flowers_before):
    name = entry["name"]
    app = dict(APP_DEFAULTS, module=name, worker_groups=fleet["default_worker_groups"], flower_url_prefix=name,
               user=f"celery-{name}", group=f"celery-{name}", home=f"/var/lib/celery-{name}",
               broker_user=name, broker_namespace=name)
    app.update(entry)
    groups = fleet["groups"]
    broker = fleet["broker"]
    namespace = app["broker_namespace"]
    workers = []
    for pattern in app["workers"]:
        workers.extend(groups[pattern] if pattern in groups else [pattern])
    redis_user = app["broker_user"] if several else ""
    redis_url = f"redis://{redis_user}:{app['broker_password']}@{fleet['broker_host']}:{fleet['redis_port']}"
    queue_prefix = f"{fleet['sqs_queue_name_prefix']}{namespace}-" if broker == "sqs" else ""
    # SQS: no credentials in any URL (boto3 reads them from the environment file or the instance
    # role). A RabbitMQ cluster: one URL per node, `;`-separated (kombu fails over in that order).
    broker_urls = {
        "rabbitmq": ";".join(f"amqp://{app['broker_user']}:{app['broker_password']}@{host}:{fleet['rabbitmq_port']}/{namespace}"
                             for host in fleet["broker_hosts"]),
        "redis": f"{redis_url}/0",
        "sqs": "sqs://",
    }
    result_urls = {"rpc": "rpc://", "redis": f"{redis_url}/1", "none": "",
                   "dynamodb": f"dynamodb://@{fleet['sqs_region']}/{queue_prefix}results"}
    app.update({
        "root": app["root"] or f"/opt/{name}",
        "env_file": app["env_file"] or f"/etc/celery-fleet/{name}.env",
        "flower_config_file": f"/etc/celery-fleet/{name}-flower.py",
        # Beat keeps its schedule in the app's home, so a restart neither repeats nor skips a task.
        "beat_schedule": f"{app['home']}/{name}-beat-schedule",
        "flower_user": f"flower-{name}" if several else "flower",
        "flower_port": int(fleet["flower_port"]) + flowers_before,
        "flower_htpasswd": f"/etc/nginx/{name}-flower.htpasswd",
        # The host's one nginx site for its Flowers; a single app's keeps its name (an upgrade
        # leaves no second default server behind).
        "flower_site": "celery-flower" if several else f"{name}-flower",
        "worker_hosts": _unique(workers),
        "beat_hosts": list(groups.get("beat", [])) if _truth(app["beat"]) else [],
        "flower_hosts": list(groups.get("flower", [])) if _truth(app["flower"]) else [],
        "redis_user": redis_user,
        "key_prefix": f"{namespace}:" if several and broker == "redis" and namespace else "",
        "queue_prefix": queue_prefix,
        "broker_url": app["broker_url"] or broker_urls[broker],
        "result_backend": app["result_backend"] or result_urls[fleet["result_backend"]],
    })
    app["process_hosts"] = _unique(app["worker_hosts"] + app["beat_hosts"] + app["flower_hosts"])
    app["hosts"] = _unique(app["process_hosts"] + list(groups.get("clients", [])))
    # Groups without a state first, then those present (as the Jinja model ordered them).
    groups_in_order = [g for g in app["worker_groups"] if "state" not in g] + [g for g in app["worker_groups"] if g.get("state") == "present"]
    app["queues"] = _unique(q for g in _unique(groups_in_order) for q in g.get("queues", ["celery"]))
    # SQS: the queues whose visibility timeout the fleet sets (the worker groups' own queues too).
    direct = [f"{g['name']}@{host}.dq2" for g in app["worker_groups"] if _present(g) for host in app["worker_hosts"]]
    app["sqs_queues"] = app["queues"] + direct if broker == "sqs" else []
    return app


def celery_fleet_apps(celery_apps, single_app, groups, broker, result_backend, broker_host, broker_hosts, redis_port, rabbitmq_port,
                      sqs_queue_name_prefix, sqs_region, flower_port, default_worker_groups, broker_user, broker_vhost,
                      broker_password, flower_enabled, remove=(), remove_drop_queued=False):
    """Every app of the fleet (celery_apps, or the single app of the inventory's single-app
    variables) with every key filled in, its hosts, its broker URLs, and what it may send to other
    apps (`send_to`: the other app's queues, reached with the sender's own account: on RabbitMQ on
    the other vhost, on Redis under the other prefix). Apps marked `state: absent` are in the list
    too, derived the same way: where their processes, files and account are, to remove them. A
    single-app inventory removes the apps it named before with `remove` (celery_app_remove: a name
    or a list of names), laid out as its app is, each marked absent (`remove_drop_queued`: drop
    what waits for them)."""
    groups = {k: list(v) for k, v in groups.items()}
    several = len(celery_apps) > 0
    entries = celery_apps if several else [
        _single_app(dict(single_app, **({"name": name, "root": "", "env_file": "", "state": "absent", "drop_queued": remove_drop_queued}
                                        if name is not None else {})),
                    groups, broker, broker_user, broker_vhost, broker_password, flower_enabled)
        for name in [None] + _names(remove)]
    fleet = {"groups": groups, "broker": broker, "result_backend": result_backend,
             "broker_host": broker_host, "broker_hosts": list(broker_hosts), "redis_port": redis_port, "rabbitmq_port": rabbitmq_port,
             "sqs_queue_name_prefix": sqs_queue_name_prefix, "sqs_region": sqs_region, "flower_port": flower_port,
             "default_worker_groups": default_worker_groups}
    apps = []
    for entry in entries:
        # An entry without a name is refused by celery_apps_rules, which needs the rest anyway.
        # Flower ports count every Flower before the app's, those of apps marked absent too: the
        # other Flowers keep their ports (and processes) while a removed app's entry stays.
        apps.append(_app(dict(entry, name=str(entry.get("name", ""))), fleet, several, sum(1 for a in apps if _truth(a["flower"]))))
    # An app marked absent sends nothing and nothing is sent to it.
    for app in apps:
        app["send_to"] = {
            target["name"]: {
                "queues": target["queues"],
                "url": ";".join(re.sub(r"/[^/]*$", "/" + (target["broker_namespace"] if broker == "rabbitmq" else "0"), url)
                                for url in app["broker_url"].split(";")),
                "transport_options": {"confirm_publish": True} if broker == "rabbitmq" else {"global_keyprefix": target["key_prefix"]},
            }
            for target in apps if target["name"] in app["sends_to"] and _kept(target)
        } if _kept(app) else {}
    return apps


# What role celery_app takes of each app (its argument spec's celery_app_apps options).
CELERY_APP_KEYS = ("name", "module", "root", "env_file", "user", "group", "home", "broker_url", "result_backend", "src",
                   "requirements", "env", "settings", "workdir", "key_prefix", "send_to", "queue_prefix", "sqs_queues",
                   "flower", "process_hosts", "flower_hosts")


def celery_app_inputs(apps):
    """Role celery_app's view of the apps: each app's keys that the role takes, no other."""
    return [{key: app[key] for key in CELERY_APP_KEYS} for app in apps]


def celery_worker_removed_inputs(apps):
    """Role celery_worker's view of the apps to remove: what their processes' names start with
    under either manager, wherever a run finds them, and how to count the tasks that wait for them
    (their launcher, entry point and queues) before they go."""
    return [{"name": app["name"], "root": app["root"], "entry_point": ENTRY_POINT, "process_prefixes": _process_prefixes(app),
             "queues": app["queues"], "drop_queued": _truth(app["drop_queued"])} for app in apps]


def celery_app_removed_inputs(apps, present):
    """Role celery_app's view of the apps to remove: what the fleet put on the hosts for each
    (its root, environment file, home, account and group), less anything an app of `present` (the
    apps the fleet runs) uses too, left empty; its beat schedule (beat_schedule: shelve adds a
    suffix of its own), which goes from a home that stays too; and with SQS its queues (sqs_queues:
    deleted, with its DynamoDB result table, through its launcher before the root goes)."""
    kept = {key: {app[key] for app in present} for key in ("root", "env_file", "home", "user", "group")}
    return [dict({"name": app["name"], "beat_schedule": app["beat_schedule"], "sqs_queues": app["sqs_queues"]},
                 **{key: "" if app[key] in used else app[key] for key, used in kept.items()}) for app in apps]


def celery_flower_removed_inputs(apps, present):
    """Role celery_flower's view of the apps to remove: the files, account and nginx site of their
    Flower, wherever a run finds them, less the account or site an app of `present` uses too (a
    single app's `flower` account and the apps' shared site), left empty."""
    kept = {key: {app[key] for app in present} for key in ("flower_user", "flower_site")}
    return [{"name": app["name"], "config_file": app["flower_config_file"], "htpasswd": app["flower_htpasswd"],
             "user": "" if app["flower_user"] in kept["flower_user"] else app["flower_user"],
             "site": "" if app["flower_site"] in kept["flower_site"] else app["flower_site"]}
            for app in apps]


def celery_flower_switched_off_inputs(apps, host, flower_hosts):
    """The same view of the Flowers of `apps` (those the fleet runs) that no longer run on `host`,
    a host of the `flower` group (`flower_hosts`): switched off (celery_flower_enabled false, or an
    app's `flower: false`). What a Flower still running there uses stays."""
    if host not in flower_hosts:
        return []
    running = [app for app in apps if host in app["flower_hosts"]]
    return celery_flower_removed_inputs([app for app in apps if host not in app["flower_hosts"]], running)


def celery_removed_broker_inputs(apps, present):
    """The brokers' view of the apps to remove: the RabbitMQ vhosts and users to delete (entries of
    rabbitmq_vhosts and rabbitmq_users with state absent) and the Redis key prefixes to empty, less
    any an app of `present` uses too (a single app replaced by another keeps the account both use:
    its tasks left in the shared queues are dropped as the count said)."""
    kept = {key: {app[key] for app in present} for key in ("broker_namespace", "broker_user", "key_prefix")}
    gone = {key: _unique(app[key] for app in apps if app[key] and app[key] not in kept[key]) for key in kept}
    return {"rabbitmq_vhosts": [{"name": name, "state": "absent"} for name in gone["broker_namespace"]],
            "rabbitmq_users": [{"name": name, "state": "absent"} for name in gone["broker_user"]],
            "redis_prefixes": gone["key_prefix"]}


def celery_flower_inputs(apps, host):
    """Role celery_flower's view of the Flowers that run on `host`, one per app that has it there."""
    return [{"name": app["name"], "group": app["group"], "home": app["home"], "config_file": app["flower_config_file"],
             "user": app["flower_user"], "port": app["flower_port"], "htpasswd": app["flower_htpasswd"],
             "url_prefix": app["flower_url_prefix"], "users": app["flower_users"]}
            for app in apps if host in app["flower_hosts"]]


# What every Celery command names with --app: the entry point role celery_app installs in each
# release, which loads the app's module (FLEET_APP_MODULE) and applies the fleet's settings.
ENTRY_POINT = "celery_fleet:app"


def _groups(app, group_defaults):
    """The app's worker groups, each with every key filled in from group_defaults."""
    return [dict(group_defaults, **group) for group in app["worker_groups"]]


def _process_prefixes(app):
    """What every name of the app's processes starts with, under each process manager: the
    supervisor program celery-<app>-<instance>, the instance celery-<app>@<instance>.service of
    the systemd template unit celery-<app>@.service. The one place the names are spelt: the role
    finds, reads and reports processes by these prefixes and by the names made of them."""
    return {"supervisor": f"celery-{app['name']}-", "systemd": f"celery-{app['name']}@"}


def _process(app, host, manager, kind, instance, argv, **keys):
    """One Celery process of `app` on `host`: named as its manager names it (_process_prefixes),
    its command line (the one source of supervisor's and systemd's), and whom it runs as."""
    return dict({"app": app["name"], "kind": kind, "instance": instance,
                 "name": _process_prefixes(app)[manager] + instance + (".service" if manager == "systemd" else ""),
                 "command": " ".join(argv), "user": app["user"], "inputs": []}, **keys)


def _processes(app, host, manager, group_defaults, loglevel):
    """The processes of `app` that run on `host`: one per worker group present (where the app's
    `workers` run), beat and Flower where they run. A process of the app not listed here is stopped
    and removed wherever a run finds it (a group made absent, beat or Flower moved)."""
    run = f"{app['root']}/bin/run"
    celery = [run, "celery", f"--app={ENTRY_POINT}"]
    processes = []
    for group in _groups(app, group_defaults) if host in app["worker_hosts"] else []:
        if group["state"] != "present":
            continue
        node = f"{group['name']}@{host}"
        argv = celery + ["worker", f"--hostname={node}", f"--queues={','.join(group['queues'])}",
                         f"--concurrency={group['concurrency']}", f"--pool={group['pool']}"]
        argv += [f"--max-tasks-per-child={group['max_tasks_per_child']}"] if group["max_tasks_per_child"] > 0 else []
        argv += ["--without-gossip", "--without-mingle", f"--loglevel={loglevel}"]
        processes.append(_process(app, host, manager, "worker", f"worker-{group['name']}", argv, node=node, group=group["name"],
                                  queues=group["queues"]))
    if host in app["beat_hosts"]:
        schedule = app["beat_schedule"]
        processes.append(_process(app, host, manager, "beat", "beat", celery + ["beat", f"--schedule={schedule}", f"--loglevel={loglevel}"],
                                  schedule=schedule))
    if host in app["flower_hosts"]:
        # Flower runs from the release's tools venv as its own user, and reads its configuration
        # (celery_flower writes it): a Flower started before it changed restarts.
        processes.append(_process(app, host, manager, "flower", "flower",
                                  [run, "--tools", "celery", f"--app={ENTRY_POINT}", "flower", f"--conf={app['flower_config_file']}"],
                                  user=app["flower_user"], inputs=[app["flower_config_file"]]))
    return processes


def celery_worker_inputs(apps, host, manager, group_defaults, loglevel):
    """Role celery_worker's view of the apps whose processes run on `host`: each app's account and
    paths, the entry point its Celery commands name with --app, what its processes' names start
    with under either manager (`process_prefixes`: what the role finds and removes), its processes
    here (`processes`, see _processes) and its smoke task."""
    return [{"name": app["name"], "root": app["root"], "env_file": app["env_file"], "user": app["user"], "group": app["group"],
             "home": app["home"], "workdir": app["workdir"] or app["home"],
             "entry_point": ENTRY_POINT, "process_prefixes": _process_prefixes(app),
             "processes": _processes(app, host, manager, group_defaults, loglevel),
             "smoke_task": app["smoke_task"], "smoke_args": app["smoke_args"], "smoke_result": app["smoke_result"]}
            for app in apps if host in app["process_hosts"]]


def _group_rules(app, where, group_defaults):
    """The rules of an app's worker groups (`where`: the variable that names them)."""
    groups = _groups(app, group_defaults)
    names = [str(group.get("name", "")) for group in groups]
    rules = [
        (len(names) > 0, f"{where} needs at least one group."),
        (len(set(names)) == len(names), f"{where}: group names must be unique: {json.dumps(names)}"),
        (all(_matches(r"^[a-z][a-z0-9_-]*$", name) for name in names),
         f"{where}: group names take lower-case letters, digits, `-` and `_`: {json.dumps(names)}"),
    ]
    for group in groups:
        at, queues = f"{where}, group {group.get('name', '')}: ", group["queues"]
        rules += [
            (isinstance(queues, list) and len(queues) > 0 and all(_matches(r"^[A-Za-z0-9][A-Za-z0-9._:-]*$", q) for q in queues),
             f"{at}queues must be a non-empty list of names of letters, digits and `._:-` (got {json.dumps(queues)})."),
            (_is_int(group["concurrency"]) and group["concurrency"] >= 1,
             f"{at}concurrency must be an integer of at least 1 (got {group['concurrency']})."),
            (_is_int(group["max_tasks_per_child"]) and group["max_tasks_per_child"] >= 0,
             f"{at}max_tasks_per_child must be 0 or more (got {group['max_tasks_per_child']})."),
            (group["pool"] in ("prefork", "threads", "solo"), f"{at}pool must be prefork, threads or solo (got {group['pool']})."),
            (group["state"] in ("present", "absent"), f"{at}state must be present or absent (got {group['state']})."),
        ]
    return rules


def _is_bool(value):
    """A boolean, or a string Ansible reads as one (a value typed with `-e`)."""
    try:
        boolean(value, strict=True)
    except TypeError:
        return False
    return True


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def celery_rabbitmq_users(apps, flower_enabled, flower_api_user, flower_api_password):
    """RabbitMQ's users: each app's, on its own vhost, and with Flower the management API's. An
    app that sends to another may publish to that app's queues' exchanges and nothing else (no
    configure, so no queue can be deleted; no read; not amq.default, through which any queue of
    the vhost is reached). The API's user may see every Flower app's vhost (the API lists a
    vhost's queues only to its users) but its permissions match no resource (^$)."""
    namespaces = {app["name"]: app["broker_namespace"] for app in apps}
    nothing = {"configure_priv": "^$", "write_priv": "^$", "read_priv": "^$"}
    users = []
    for app in apps:
        sends = [{"vhost": namespaces[target], "configure_priv": "^$",
                  "write_priv": "^(" + "|".join(re.escape(q) for q in grant["queues"]) + ")$", "read_priv": "^$"}
                 for target, grant in app["send_to"].items()]
        users.append({"name": app["broker_user"], "password": app["broker_password"], "permissions": [{"vhost": app["broker_namespace"]}] + sends})
    if _truth(flower_enabled):
        users.append({"name": flower_api_user, "password": flower_api_password, "tags": "monitoring",
                      "permissions": [dict(nothing, vhost=app["broker_namespace"]) for app in apps if _truth(app["flower"])]})
    elif flower_api_user:
        # Flower switched off: its account on the management API goes with it.
        users.append({"name": flower_api_user, "state": "absent"})
    return users


def celery_redis_users(apps):
    """Redis's ACL users: with several apps, each app's, confined to its own key prefix, and
    allowed to push onto the queues' keys of the apps it sends to when Redis is the broker (a
    single app keeps the password account)."""
    return [{"name": app["redis_user"], "password": app["broker_password"], "prefix": app["key_prefix"],
             "pushes": [grant["transport_options"]["global_keyprefix"] + queue for grant in app["send_to"].values()
                        if "global_keyprefix" in grant["transport_options"] for queue in grant["queues"]]}
            for app in apps if app["redis_user"]]


def celery_apps_rules(entries, apps, hosts, flower_enabled, single_app_variables_set):
    """The rules of a list of apps, one message each naming the entry and its key ({ok, msg})."""
    rules = []
    names = [str(entry.get("name", "")) for entry in entries]
    for index, entry in enumerate(entries):
        where = f"celery_apps[{index}]"
        name = str(entry.get("name", ""))
        unknown = [key for key in entry if key not in ENTRY_KEYS]
        rules += [
            {"ok": bool(re.match(r"^[a-z][a-z0-9_]*$", name)),
             "msg": f"{where}.name ({name}) is required: lower-case letters, digits and `_`, starting with a letter."},
            {"ok": names.count(name) == 1, "msg": f"{where}.name ({name}) names another app too: each app needs its own name."},
            {"ok": not unknown, "msg": f"{where} ({name}) has keys no app takes: {', '.join(unknown)} (known: {', '.join(ENTRY_KEYS)})."},
            {"ok": entry.get("state", "present") in ("present", "absent"),
             "msg": f"{where}.state ({entry.get('state')}) must be present or absent (absent: remove the app from every host and the broker)."},
            {"ok": _is_bool(entry.get("drop_queued", False)),
             "msg": f"{where}.drop_queued ({entry.get('drop_queued')}) must be true or false."},
        ]
    rules.append({"ok": not entries or any(_kept(entry) for entry in entries),
                  "msg": "celery_apps marks every app absent: keep at least one app (a fleet without apps runs nothing)."})
    app_names = [app["name"] for app in apps]
    for index, app in enumerate(apps):
        where = f"celery_apps[{index}]"
        namespace, user = str(app["broker_namespace"]), str(app["broker_user"])
        missing_hosts = [host for host in app["worker_hosts"] if host not in hosts]
        unknown_targets = [target for target in app["sends_to"] if target not in app_names]
        # An app marked absent keeps only the rules on the form of its namespace and account: one
        # that another app uses too stays (celery_removed_broker_inputs), as in a rename that
        # keeps the namespace.
        present = _kept(app)
        flower = _truth(app["flower"]) and present
        prefixes = [a["flower_url_prefix"] for a in apps if _truth(a["flower"]) and _kept(a)]
        kept = [a for a in apps if _kept(a)]
        rules += [
            {"ok": (not present or [a["broker_namespace"] for a in kept].count(namespace) == 1) and bool(re.match(r"^[A-Za-z0-9_-]+$", namespace)),
             "msg": f"{where}.broker_namespace ({namespace}) must be letters, digits, `_` or `-`, and no other app's:"
                    " apps sharing a namespace share their queues."},
            {"ok": (not present or [a["broker_user"] for a in kept].count(user) == 1) and bool(re.match(r"^[A-Za-z0-9._-]+$", user))
             and user not in ("guest", "default"),
             "msg": f"{where}.broker_user ({user}) must be letters, digits and `._-`, not guest or default, and no other app's."},
            {"ok": not missing_hosts or not present,
             "msg": f"{where}.workers ({', '.join(app['workers'])}) names hosts or groups the inventory does not have: {', '.join(missing_hosts)}."},
            {"ok": not flower or len(app["flower_users"]) > 0 or not entries,
             "msg": f"{where}.flower_users (app {app['name']}) is required with flower: its Flower's own logins."},
            {"ok": not flower or _truth(flower_enabled),
             "msg": f"{where}.flower (app {app['name']}) needs celery_flower_enabled: it makes the releases carry Flower and workers send events."},
            {"ok": not flower or prefixes.count(app["flower_url_prefix"]) == 1,
             "msg": f"{where}.flower_url_prefix ({app['flower_url_prefix']}) is another Flower's path too: each app's Flower needs its own."},
            {"ok": not unknown_targets and app["name"] not in app["sends_to"],
             "msg": f"{where}.sends_to ({', '.join(app['sends_to'])}) must name other apps of celery_apps; unknown: {', '.join(unknown_targets)}."},
            {"ok": not _kept(app) or not [a for a in apps if a["name"] in app["sends_to"] and not _kept(a)],
             "msg": f"{where}.sends_to ({', '.join(app['sends_to'])}) names an app marked absent: take it out of sends_to"
                    " (its queues go with it)."},
            {"ok": not present or len(app["worker_hosts"]) > 0 and len(app["worker_groups"]) > 0,
             "msg": f"{where}.workers and .worker_groups (app {app['name']}) need at least one host and one group: nothing would take its tasks."},
        ]
    for variable in single_app_variables_set:
        key = re.sub(r"^celery_(app_|worker_(?=smoke))?", "", variable)
        rules.append({"ok": False, "msg": f"{variable} is a single-app variable, ignored with celery_apps: " + (
            "mark the app's entry `state: absent` (and drop_queued) instead." if key.startswith("remove")
            else f"set the matching key of each app ({key}) instead.")})
    return rules


def _int(value):
    """Jinja's `int`: a number, a numeric string (decimals cut), or 0."""
    try:
        return int(value)
    except (TypeError, ValueError):
        try:
            return int(float(value))
        except (TypeError, ValueError):
            return 0


def _float(value):
    try:
        return float(value)
    except (TypeError, ValueError):
        return 0.0


def _matches(pattern, value):
    return re.match(pattern, "" if value is None else str(value)) is not None


def celery_fleet_refusals(apps, broker, result_backend, broker_user, broker_vhost, ack_timeout, task_time_limit, soft_shutdown_timeout, sqs,
                          cluster, apps_rules, group_defaults):
    """The fleet-wide rules no argument spec can express, by topic ({choices, sqs, cluster,
    apps}: the messages of the rules that fail, each naming its variable; empty lists on a good
    inventory). `sqs`: the SQS settings when SQS carries the tasks, else None; `cluster`: the
    RabbitMQ cluster's brokers, nodes, broker_hosts and delivery_limit when there is one, else
    None; `apps_rules`: celery_apps_rules of a list of apps; `group_defaults`: what a worker group
    leaves out (each app's groups are checked with them filled in)."""
    rules = {"choices": [
        (result_backend != "rpc" or broker == "rabbitmq",
         f"celery_result_backend rpc needs celery_broker rabbitmq (got {broker}"
         + (": SQS has no reply queues, a client waiting for an rpc result fails" if broker == "sqs" else "")
         + "); with sqs choose dynamodb, redis or none."),
        (result_backend != "none" or not any(app["smoke_task"] for app in apps),
         "celery_worker_smoke_task (or an app's smoke_task) needs a result backend: with celery_result_backend none"
         " the deploys could not read the smoke task's result."),
        (_matches(r"^[A-Za-z0-9._-]+$", broker_user) and broker_user != "guest",
         f"celery_broker_user ({broker_user}) takes letters, digits and `._-`, and is not guest."),
        (_matches(r"^[A-Za-z0-9._-]+$", broker_vhost), f"celery_broker_vhost ({broker_vhost}) takes letters, digits and `._-`."),
        (_int(ack_timeout) > 0, f"celery_broker_ack_timeout must be a positive number of seconds (got {ack_timeout})."),
        (_int(ack_timeout) <= 0 or _int(ack_timeout) > _int(task_time_limit) + _int(soft_shutdown_timeout),
         f"celery_broker_ack_timeout ({ack_timeout} s) must be longer than celery_app_task_time_limit ({task_time_limit} s) plus"
         f" celery_app_worker_soft_shutdown_timeout ({soft_shutdown_timeout} s), or the broker hands running tasks to a second"
         " worker (Redis) or drops the worker's channel (RabbitMQ)."),
    ], "sqs": [], "cluster": [], "apps": [(rule["ok"], rule["msg"]) for rule in apps_rules] if apps_rules else [
        # A single-app inventory's removals (celery_app_remove): apps it ran before, not its own.
        (_matches(r"^[a-z][a-z0-9_-]*$", app["name"]) and app["name"] != apps[0]["name"],
         f"celery_app_remove ({app['name']}) must name an app this fleet ran before (lower-case letters, digits, `_` or `-`),"
         f" not celery_app_name ({apps[0]['name']}), which the run keeps.")
        for app in apps[1:]],
        # The single app's groups are celery_worker_groups; a list's, each entry's worker_groups.
        "groups": [rule for index, app in enumerate(apps) if _kept(app)
                   for rule in _group_rules(app, f"celery_apps[{index}].worker_groups" if apps_rules else "celery_worker_groups", group_defaults)]}
    if sqs is not None:
        key_id, secret = sqs["aws_access_key_id"] or "", sqs["aws_secret_access_key"] or ""
        rules["sqs"] = [
            (_matches(r"^[a-z]{2}(-[a-z]+)+-[0-9]+$", sqs["region"]), f"celery_sqs_region ({sqs['region']}) must be an AWS region such as eu-west-1."),
            (_matches(r"^[A-Za-z0-9_-]{0,40}$", sqs["queue_name_prefix"]),
             f"celery_sqs_queue_name_prefix ({sqs['queue_name_prefix']}) takes up to 40 letters, digits, `_` and `-` (SQS's queue names)."),
            (_int(ack_timeout) <= 43200, f"celery_broker_ack_timeout ({ack_timeout} s) is SQS's visibility timeout: at most 43200 s (12 hours)."),
            (0 <= _int(sqs["wait_time_seconds"]) <= 20,
             f"celery_sqs_wait_time_seconds ({sqs['wait_time_seconds']}) must be 0 to 20 (SQS's long polling)."),
            (_float(sqs["polling_interval"]) >= 0, f"celery_sqs_polling_interval ({sqs['polling_interval']}) must not be negative."),
            ((len(key_id) > 0) == (len(secret) > 0),
             "celery_aws_access_key_id and celery_aws_secret_access_key go together: give both (vault them), or neither for the instance role."),
            (_matches(r"^([A-Z0-9]{16,128})?$", key_id), "celery_aws_access_key_id is not an AWS access key id (16 or more upper-case letters and digits)."),
            (_matches(r"^([A-Za-z0-9/+=]{16,})?$", secret),
             "celery_aws_secret_access_key is not an AWS secret access key (16 or more letters, digits and `/+=`)."),
            (_matches(r"^(https?://[A-Za-z0-9.:-]+/?)?$", sqs["endpoint_url"]),
             f"celery_sqs_endpoint_url ({sqs['endpoint_url']}) takes http(s)://HOST[:PORT], or nothing for AWS's."),
            (_matches(r"^(https?://[A-Za-z0-9.:-]+/?)?$", sqs["dynamodb_endpoint_url"]),
             f"celery_dynamodb_endpoint_url ({sqs['dynamodb_endpoint_url']}) takes http(s)://HOST[:PORT], or nothing for AWS's."),
            (not _truth(sqs["flower_enabled"]),
             "celery_flower_enabled needs remote control and events, which SQS does not carry: Flower would show no worker and no task."
             " With SQS, playbooks/workers.yml's status action shows each process and each queue's depth."),
            (not any(_matches(r"^sqs://[^/]*@", app["broker_url"]) for app in apps),
             "celery_app_broker_url has credentials in it: with SQS they go in celery_aws_access_key_id and celery_aws_secret_access_key"
             " (vault them; written only to the environment file), or leave both empty for the instance role."),
            (not any(app["sends_to"] for app in apps),
             "celery_apps' sends_to needs the redis or rabbitmq broker: with SQS, grant another app's queues in IAM, outside the fleet."),
        ]
    if cluster is not None:
        brokers, nodes, limit = list(cluster["brokers"]), list(cluster["nodes"]), cluster["delivery_limit"]
        listed = ", ".join(nodes)
        rules["cluster"] = [
            (len(brokers) >= 3 and len(brokers) % 2 == 1,
             f"The `brokers` group has {len(brokers)} hosts ({', '.join(brokers)}): with RabbitMQ, one host runs a single node and 3, 5 or 7"
             " a cluster. With 2, losing either stops every quorum queue; an even count can split into halves that both pause"
             " (pause_minority) and gains nothing over one node fewer."),
            (len(set(nodes)) == len(nodes), f"celery_rabbitmq_node_host must differ from host to host (the cluster's nodes: {listed})."),
            (all(_matches(r"^rabbit@[A-Za-z0-9-]+$", node) for node in nodes),
             f"celery_rabbitmq_node_host takes a short host name, letters, digits and `-`, no dots (the cluster's nodes: {listed})."),
            (_int(limit) >= 2,
             f"celery_rabbitmq_delivery_limit ({limit}) must be at least 2: a task interrupted once by a warm stop or a node loss is delivered again."),
            (len(cluster["broker_hosts"]) == len(brokers),
             f"celery_broker_hosts lists {len(cluster['broker_hosts'])} addresses for the {len(brokers)} hosts of `brokers`: one each."),
        ]
    return {topic: [message for ok, message in found if not ok] for topic, found in rules.items()}


class FilterModule:
    def filters(self):
        return {
            "celery_fleet_apps": celery_fleet_apps,
            "celery_app_inputs": celery_app_inputs,
            "celery_flower_inputs": celery_flower_inputs,
            "celery_flower_removed_inputs": celery_flower_removed_inputs,
            "celery_flower_switched_off_inputs": celery_flower_switched_off_inputs,
            "celery_removed_broker_inputs": celery_removed_broker_inputs,
            "celery_app_removed_inputs": celery_app_removed_inputs,
            "celery_worker_removed_inputs": celery_worker_removed_inputs,
            "celery_worker_inputs": celery_worker_inputs,
            "celery_rabbitmq_users": celery_rabbitmq_users,
            "celery_redis_users": celery_redis_users,
            "celery_apps_rules": celery_apps_rules,
            "celery_fleet_refusals": celery_fleet_refusals,
        }
