"""The fleet's model (plugins/filter/fleet_model.py): every derived value and every rule of a
list of apps, without a host."""

import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "plugins" / "filter"))

from fleet_model import (  # noqa: E402
    celery_app_removed_inputs,
    celery_apps_rules,
    celery_fleet_apps,
    celery_fleet_refusals,
    celery_flower_inputs,
    celery_flower_removed_inputs,
    celery_flower_switched_off_inputs,
    celery_removed_broker_inputs,
    celery_rabbitmq_users,
    celery_redis_users,
    celery_worker_removed_inputs,
)

GROUPS = {"all": ["b1", "b2", "b3", "w1", "w2", "web1"], "brokers": ["b1"], "workers": ["w1", "w2"], "beat": ["w1"],
          "flower": ["w1"], "clients": ["web1"]}
DEFAULT_GROUPS = [{"name": "default", "queues": ["celery"]}]

# Role celery's defaults of the single-app variables (celery_app_<key>), as the plays pass them.
ROLE_DEFAULTS = yaml.safe_load((Path(__file__).resolve().parents[1] / "roles/celery/defaults/main.yml").read_text())
SINGLE_APP_VARIABLES = {key: f"celery_app_{key}" for key in ("name", "src", "module", "requirements", "env", "settings", "root",
                                                               "env_file", "user", "group", "home", "workdir", "broker_url",
                                                               "result_backend")}
SINGLE_APP_VARIABLES.update(flower_users="celery_flower_users", flower_url_prefix="celery_flower_url_prefix",
                            worker_groups="celery_worker_groups", smoke_task="celery_worker_smoke_task",
                            smoke_args="celery_worker_smoke_args", smoke_result="celery_worker_smoke_result")


def model(apps=(), inventory=None, **fleet):
    """The model of a fleet: the lab's choices (Redis on b1), overridden by `fleet`. `inventory`
    sets any single-app variable."""
    variables = dict(ROLE_DEFAULTS, **(inventory or {}))
    fleet.setdefault("single_app", {key: variables[name] for key, name in SINGLE_APP_VARIABLES.items()})
    choices = dict(groups=GROUPS, broker="redis", result_backend="redis", broker_host="b1", broker_hosts=["b1"], redis_port=6379,
                   rabbitmq_port=5672, sqs_queue_name_prefix="", sqs_region="eu-west-1", flower_port=5555,
                   default_worker_groups=DEFAULT_GROUPS, broker_user="celery", broker_vhost="celery", broker_password="p" * 16,
                   flower_enabled=True)
    choices.update(fleet)
    return celery_fleet_apps(list(apps), **choices)


def test_a_single_app_keeps_the_single_app_layout():
    (app,) = model()
    assert app["name"] == "fleetapp" and app["module"] == "fleetapp"
    assert (app["root"], app["env_file"], app["user"], app["home"]) == ("/opt/fleetapp", "/etc/celery-fleet/fleetapp.env", "celery", "/var/lib/celery")
    # Redis's password account and unprefixed keys: a converged fleet keeps its queued tasks.
    assert app["broker_url"] == "redis://:" + "p" * 16 + "@b1:6379/0"
    assert app["result_backend"] == "redis://:" + "p" * 16 + "@b1:6379/1"
    assert (app["redis_user"], app["key_prefix"], app["flower_user"]) == ("", "", "flower")
    assert app["worker_hosts"] == ["w1", "w2"] and app["beat_hosts"] == ["w1"] and app["flower_hosts"] == ["w1"]
    assert app["process_hosts"] == ["w1", "w2"] and app["hosts"] == ["w1", "w2", "web1"]
    assert app["queues"] == ["celery"] and app["sqs_queues"] == [] and app["send_to"] == {}


def test_a_single_app_takes_the_inventorys_single_app_variables():
    inventory = {"celery_app_name": "tutorial", "celery_app_module": "tasks", "celery_app_root": "/srv/tutorial",
                 "celery_worker_groups": [{"name": "long", "queues": ["long", "celery"], "concurrency": 2}],
                 "celery_app_broker_url": "rediss://elsewhere:6380/0"}
    (app,) = model(inventory=inventory, flower_enabled="false", groups=dict(GROUPS, beat=[]))
    assert (app["name"], app["module"], app["root"], app["env_file"]) == ("tutorial", "tasks", "/srv/tutorial", "/etc/celery-fleet/tutorial.env")
    assert app["queues"] == ["long", "celery"]
    assert app["broker_url"] == "rediss://elsewhere:6380/0", "a URL the inventory gives itself wins"
    assert app["beat_hosts"] == [] and app["flower_hosts"] == [] and app["flower"] is False


def test_a_rabbitmq_cluster_gives_one_url_per_node_on_the_apps_vhost():
    (app,) = model(broker="rabbitmq", result_backend="rpc", broker_hosts=["b1", "b2", "b3"], broker_vhost="jobs")
    pw = "p" * 16
    assert app["broker_url"] == ";".join(f"amqp://celery:{pw}@{h}:5672/jobs" for h in ("b1", "b2", "b3"))
    assert app["result_backend"] == "rpc://" and app["broker_namespace"] == "jobs"


def test_sqs_names_the_apps_queues_and_results_and_carries_no_credentials():
    groups = [{"name": "default", "queues": ["celery"]}, {"name": "old", "queues": ["gone"], "state": "absent"}]
    (app,) = model(inventory={"celery_worker_groups": groups}, broker="sqs", result_backend="dynamodb",
                   sqs_queue_name_prefix="prod-", flower_enabled=False)
    assert app["broker_url"] == "sqs://" and app["queue_prefix"] == "prod-fleetapp-"
    assert app["result_backend"] == "dynamodb://@eu-west-1/prod-fleetapp-results"
    # A removed group's queue is not the app's any more; each present group's direct queue is.
    assert app["sqs_queues"] == ["celery", "default@w1.dq2", "default@w2.dq2"]


TWO_APPS = [
    {"name": "shop", "flower": True, "flower_users": [{"name": "a", "password": "x"}], "sends_to": ["mail"],
     "broker_password": "s" * 16, "worker_groups": [{"name": "default", "queues": ["celery", "orders.v1"]}]},
    {"name": "mail", "workers": ["w2"], "beat": "yes", "broker_password": "m" * 16},
    {"name": "search", "flower": True, "flower_users": [{"name": "b", "password": "y"}], "broker_password": "q" * 16},
]


def test_several_apps_each_get_their_own_account_prefix_and_flower_port():
    shop, mail, search = model(TWO_APPS)
    assert (shop["user"], shop["home"], shop["flower_user"]) == ("celery-shop", "/var/lib/celery-shop", "flower-shop")
    assert shop["broker_url"] == "redis://shop:" + "s" * 16 + "@b1:6379/0" and shop["key_prefix"] == "shop:"
    assert mail["worker_hosts"] == ["w2"] and mail["beat_hosts"] == ["w1"] and mail["process_hosts"] == ["w2", "w1"]
    # Flower ports count only the apps with a Flower before them.
    assert (shop["flower_port"], search["flower_port"]) == (5555, 5556)
    assert shop["flower_url_prefix"] == "shop" and mail["flower_hosts"] == []


def test_an_app_sends_to_another_with_its_own_account_on_redis_and_rabbitmq():
    shop = model(TWO_APPS)[0]
    assert shop["send_to"] == {"mail": {"queues": ["celery"], "url": "redis://shop:" + "s" * 16 + "@b1:6379/0",
                                        "transport_options": {"global_keyprefix": "mail:"}}}
    shop = model(TWO_APPS, broker="rabbitmq", result_backend="rpc", broker_hosts=["b1", "b2", "b3"])[0]
    assert shop["send_to"]["mail"]["url"] == ";".join(f"amqp://shop:{'s' * 16}@{h}:5672/mail" for h in ("b1", "b2", "b3"))
    assert shop["send_to"]["mail"]["transport_options"] == {"confirm_publish": True}


def test_broker_accounts_grant_an_app_its_namespace_and_the_queues_it_sends_to_only():
    apps = model(TWO_APPS, broker="rabbitmq", result_backend="rpc")
    users = {u["name"]: u for u in celery_rabbitmq_users(apps, True, "flower-monitor", "f" * 16)}
    assert users["shop"]["permissions"] == [{"vhost": "shop"}, {"vhost": "mail", "configure_priv": "^$", "write_priv": "^(celery)$", "read_priv": "^$"}]
    assert users["mail"]["permissions"] == [{"vhost": "mail"}]
    assert [p["vhost"] for p in users["flower-monitor"]["permissions"]] == ["shop", "search"]
    assert all(p["write_priv"] == p["read_priv"] == p["configure_priv"] == "^$" for p in users["flower-monitor"]["permissions"])
    # Flower switched off: its account goes.
    assert [u for u in celery_rabbitmq_users(apps, "false", "flower-monitor", "") if u["name"] == "flower-monitor"] == [
        {"name": "flower-monitor", "state": "absent"}]

    redis = {u["name"]: u for u in celery_redis_users(model(TWO_APPS))}
    assert redis["shop"] == {"name": "shop", "password": "s" * 16, "prefix": "shop:", "pushes": ["mail:celery"]}
    # RabbitMQ carries the tasks: a Redis for the results pushes onto no app's queues.
    assert all(not u["pushes"] for u in celery_redis_users(apps))
    assert celery_redis_users(model()) == [], "a single app keeps Redis's password account"


def failing(entries, flower_enabled=True, single_app_variables_set=()):
    apps = model(entries, flower_enabled=flower_enabled)
    return [rule["msg"] for rule in celery_apps_rules(entries, apps, GROUPS["all"], flower_enabled, single_app_variables_set) if not rule["ok"]]


def test_a_valid_list_of_apps_passes_every_rule():
    assert failing(TWO_APPS) == []


# (the change to TWO_APPS, the messages it must give and no other). A renamed app's namespace
# and user follow its name (a second `shop` shares the first one's), and `shop` sends to `mail`.
@pytest.mark.parametrize("change, messages", [
    ({1: {"name": "shop"}}, ["celery_apps[0].name (shop) names another app too", "celery_apps[1].name (shop) names another app too",
                             "celery_apps[0].broker_namespace (shop)", "celery_apps[0].broker_user (shop)",
                             "celery_apps[1].broker_namespace (shop)", "celery_apps[1].broker_user (shop)",
                             "celery_apps[0].sends_to (mail) must name other apps of celery_apps; unknown: mail."]),
    ({1: {"name": "Mail App"}}, ["celery_apps[1].name (Mail App) is required: lower-case letters", "celery_apps[1].broker_namespace (Mail App)",
                                 "celery_apps[1].broker_user (Mail App)", "celery_apps[0].sends_to (mail)"]),
    ({1: {"queue": "x"}}, ["celery_apps[1] (mail) has keys no app takes: queue"]),
    ({1: {"broker_namespace": "shop"}}, ["celery_apps[0].broker_namespace (shop) must be letters", "celery_apps[1].broker_namespace (shop)"]),
    ({1: {"broker_user": "guest"}}, ["celery_apps[1].broker_user (guest) must be letters"]),
    ({1: {"workers": ["w9"]}}, ["celery_apps[1].workers (w9) names hosts or groups the inventory does not have: w9."]),
    ({2: {"flower_users": []}}, ["celery_apps[2].flower_users (app search) is required with flower"]),
    ({2: {"flower_url_prefix": "shop"}}, ["celery_apps[0].flower_url_prefix (shop) is another Flower's path too",
                                          "celery_apps[2].flower_url_prefix (shop) is another Flower's path too"]),
    ({0: {"sends_to": ["post"]}}, ["celery_apps[0].sends_to (post) must name other apps of celery_apps; unknown: post."]),
    ({0: {"sends_to": ["shop"]}}, ["celery_apps[0].sends_to (shop) must name other apps"]),
    ({1: {"worker_groups": []}}, ["celery_apps[1].workers and .worker_groups (app mail) need at least one host and one group"]),
    ({1: {"state": "gone"}}, ["celery_apps[1].state (gone) must be present or absent"]),
    ({1: {"drop_queued": "maybe"}}, ["celery_apps[1].drop_queued (maybe) must be true or false."]),
    ({1: {"state": "absent"}}, ["celery_apps[0].sends_to (mail) names an app marked absent"]),
    # An app marked absent keeps only the rules on the form of its namespace and account: one a
    # kept app uses too stays on the broker (a rename that keeps the namespace).
    ({2: {"state": "absent", "flower_users": [], "workers": ["w9"], "worker_groups": []}}, []),
    ({2: {"state": "absent", "broker_namespace": "shop"}}, []),
    ({2: {"state": "absent", "broker_namespace": "a b"}}, ["celery_apps[2].broker_namespace (a b)"]),
])
def test_each_wrong_entry_is_refused_by_its_own_rule(change, messages):
    entries = [dict(entry, **change.get(index, {})) for index, entry in enumerate(TWO_APPS)]
    found = failing(entries)
    assert len(found) == len(messages) and all(any(f.startswith(m) for f in found) for m in messages), found


def test_flower_apps_need_flower_enabled_and_single_app_variables_are_refused_with_a_list():
    assert failing(TWO_APPS, flower_enabled=False) == [
        f"celery_apps[{i}].flower (app {name}) needs celery_flower_enabled: it makes the releases carry Flower and workers send events."
        for i, name in ((0, "shop"), (2, "search"))]
    assert failing(TWO_APPS, single_app_variables_set=["celery_worker_smoke_task"]) == [
        "celery_worker_smoke_task is a single-app variable, ignored with celery_apps: set the matching key of each app (smoke_task) instead."]


GOOD_SQS = {"region": "eu-west-1", "queue_name_prefix": "prod-", "wait_time_seconds": 1, "polling_interval": 0.1,
            "aws_access_key_id": "", "aws_secret_access_key": "", "endpoint_url": "", "dynamodb_endpoint_url": "", "flower_enabled": False}
GOOD_CLUSTER = {"brokers": ["b1", "b2", "b3"], "nodes": ["rabbit@b1", "rabbit@b2", "rabbit@b3"], "broker_hosts": ["b1", "b2", "b3"],
                "delivery_limit": 20}


def refusals(broker="redis", result_backend="redis", sqs=None, cluster=None, **changes):
    choices = dict(broker_user="celery", broker_vhost="celery", ack_timeout=7200, task_time_limit=600, soft_shutdown_timeout=30)
    choices.update(changes)
    return celery_fleet_refusals(model(broker=broker, result_backend=result_backend), broker=broker, result_backend=result_backend,
                                 sqs=sqs, cluster=cluster, apps_rules=[], group_defaults=ROLE_DEFAULTS["celery_worker_group_defaults"],
                                 **choices)


def test_a_good_fleet_breaks_no_fleet_wide_rule():
    assert refusals() == {"choices": [], "sqs": [], "cluster": [], "apps": [], "groups": []}
    assert refusals("sqs", "dynamodb", sqs=GOOD_SQS)["sqs"] == []
    assert refusals("rabbitmq", "rpc", cluster=GOOD_CLUSTER)["cluster"] == []


# (the topic, what is wrong, the start of the one message it gives). Values typed with -e arrive
# as strings: "30" is a number of seconds, as the Jinja rules read it.
@pytest.mark.parametrize("topic, wrong, message", [
    ("choices", dict(result_backend="rpc"), "celery_result_backend rpc needs celery_broker rabbitmq (got redis)"),
    ("choices", dict(broker_user="guest"), "celery_broker_user (guest) takes letters"),
    ("choices", dict(broker_vhost="a/b"), "celery_broker_vhost (a/b) takes letters"),
    ("choices", dict(ack_timeout="0"), "celery_broker_ack_timeout must be a positive number of seconds (got 0)"),
    ("choices", dict(ack_timeout="630", task_time_limit=600, soft_shutdown_timeout="30"),
     "celery_broker_ack_timeout (630 s) must be longer than celery_app_task_time_limit (600 s) plus celery_app_worker_soft_shutdown_timeout (30 s)"),
    ("sqs", dict(broker="sqs", result_backend="dynamodb", sqs=dict(GOOD_SQS, wait_time_seconds="30")), "celery_sqs_wait_time_seconds (30) must be 0 to 20"),
    ("sqs", dict(broker="sqs", result_backend="dynamodb", sqs=dict(GOOD_SQS, region="Europe")), "celery_sqs_region (Europe) must be an AWS region"),
    ("sqs", dict(broker="sqs", result_backend="dynamodb", sqs=dict(GOOD_SQS, aws_access_key_id="AKIAIOSFODNN7EXAMPLE")),
     "celery_aws_access_key_id and celery_aws_secret_access_key go together"),
    ("sqs", dict(broker="sqs", result_backend="dynamodb", sqs=dict(GOOD_SQS, flower_enabled="true")), "celery_flower_enabled needs remote control"),
    ("sqs", dict(broker="sqs", result_backend="dynamodb", ack_timeout=50000, sqs=GOOD_SQS), "celery_broker_ack_timeout (50000 s) is SQS's visibility timeout"),
    ("cluster", dict(broker="rabbitmq", result_backend="rpc", cluster=dict(GOOD_CLUSTER, delivery_limit="1")), "celery_rabbitmq_delivery_limit (1) must be at least 2"),
    ("cluster", dict(broker="rabbitmq", result_backend="rpc", cluster=dict(GOOD_CLUSTER, nodes=["rabbit@b1", "rabbit@b1", "rabbit@b3"])),
     "celery_rabbitmq_node_host must differ from host to host"),
    ("cluster", dict(broker="rabbitmq", result_backend="rpc", cluster=dict(GOOD_CLUSTER, broker_hosts=["b1"])), "celery_broker_hosts lists 1 addresses"),
])
def test_each_fleet_wide_rule_refuses_with_its_own_message(topic, wrong, message):
    found = refusals(**wrong)
    assert [m[:len(message)] for m in found[topic]] == [message], found
    assert all(not messages for other, messages in found.items() if other != topic), found


# A worker group's rules, with what it leaves out filled in from celery_worker_group_defaults: the
# single app's groups are named as celery_worker_groups, a list's by entry.
@pytest.mark.parametrize("groups, message", [
    ([{"name": "default", "queues": ["a"]}, {"name": "default", "queues": ["b"]}], 'celery_worker_groups: group names must be unique: ["default", "default"]'),
    ([{"name": "Fast"}], 'celery_worker_groups: group names take lower-case letters, digits, `-` and `_`: ["Fast"]'),
    ([{"name": "default", "queues": "celery long"}], 'celery_worker_groups, group default: queues must be a non-empty list'),
    ([{"name": "default", "queues": ["celery"], "concurrency": -2}], "celery_worker_groups, group default: concurrency must be an integer of at least 1 (got -2)"),
    ([{"name": "default", "concurrency": True}], "celery_worker_groups, group default: concurrency must be an integer of at least 1 (got True)"),
    ([{"name": "default", "max_tasks_per_child": -1}], "celery_worker_groups, group default: max_tasks_per_child must be 0 or more (got -1)"),
    ([{"name": "default", "pool": "gevent"}], "celery_worker_groups, group default: pool must be prefork, threads or solo (got gevent)"),
    ([{"name": "default", "state": "stopped"}], "celery_worker_groups, group default: state must be present or absent (got stopped)"),
])
def test_each_worker_group_rule_refuses_with_its_own_message(groups, message):
    defaults = ROLE_DEFAULTS["celery_worker_group_defaults"]
    found = celery_fleet_refusals(model(inventory={"celery_worker_groups": groups}), broker="redis", result_backend="redis",
                                  broker_user="celery", broker_vhost="celery", ack_timeout=7200, task_time_limit=600,
                                  soft_shutdown_timeout=30, sqs=None, cluster=None,
                                  apps_rules=[], group_defaults=defaults)
    assert [m[:len(message)] for m in found["groups"]] == [message], found
    entries = [{"name": "billing", "broker_password": "b" * 16}, {"name": "mail", "broker_password": "m" * 16, "worker_groups": groups}]
    listed = celery_fleet_refusals(model(entries), broker="redis", result_backend="redis", broker_user="celery", broker_vhost="celery",
                                   ack_timeout=7200, task_time_limit=600, soft_shutdown_timeout=30, sqs=None, cluster=None,
                                   apps_rules=[{"ok": True, "msg": ""}], group_defaults=defaults)
    assert listed["groups"] == [m.replace("celery_worker_groups", "celery_apps[1].worker_groups", 1) for m in found["groups"]]


def test_flower_takes_the_flowers_of_its_host_each_with_its_own_account_port_path_and_logins():
    users = [{"name": "admin", "password": "x" * 16}]
    apps = model([{"name": "billing", "flower": True, "flower_users": users, "broker_password": "b" * 16},
                  {"name": "mailer", "broker_password": "m" * 16}])
    assert celery_flower_inputs(apps, "w1") == [
        {"name": "billing", "group": "celery-billing", "home": "/var/lib/celery-billing", "config_file": "/etc/celery-fleet/billing-flower.py",
         "user": "flower-billing", "port": 5555, "htpasswd": "/etc/nginx/billing-flower.htpasswd", "url_prefix": "billing", "users": users}]
    assert celery_flower_inputs(apps, "w2") == [], "w2 is not in the flower group"
    (single,) = model(inventory={"celery_flower_users": users, "celery_flower_url_prefix": "flower"})
    assert [(f["user"], f["url_prefix"], f["users"]) for f in celery_flower_inputs([single], "w1")] == [("flower", "flower", users)]


def test_an_app_marked_absent_stays_in_the_model_and_every_role_gets_what_to_remove():
    entries = [dict(TWO_APPS[0], sends_to=[]), TWO_APPS[1], dict(TWO_APPS[2], state="absent", drop_queued="yes")]
    apps = model(entries)
    present, removed = [a for a in apps if a["state"] == "present"], [a for a in apps if a["state"] == "absent"]
    assert [a["name"] for a in present] == ["shop", "mail"] and [a["name"] for a in removed] == ["search"]
    # Its Flower keeps its port while its entry stays, so the others' do not move.
    assert removed[0]["flower_port"] == 5556
    assert celery_worker_removed_inputs(removed) == [{
        "name": "search", "root": "/opt/search", "entry_point": "celery_fleet:app", "queues": ["celery"], "drop_queued": True,
        "process_prefixes": {"supervisor": "celery-search-", "systemd": "celery-search@"}}]
    assert celery_flower_removed_inputs(removed, present) == [{"name": "search", "config_file": "/etc/celery-fleet/search-flower.py",
                                                               "htpasswd": "/etc/nginx/search-flower.htpasswd", "user": "flower-search",
                                                               "site": ""}]
    assert celery_removed_broker_inputs(removed, present) == {"rabbitmq_vhosts": [{"name": "search", "state": "absent"}],
                                                              "rabbitmq_users": [{"name": "search", "state": "absent"}],
                                                              "redis_prefixes": ["search:"]}
    assert celery_app_removed_inputs(removed, present) == [{"name": "search", "beat_schedule": "/var/lib/celery-search/search-beat-schedule",
                                                            "root": "/opt/search", "env_file": "/etc/celery-fleet/search.env",
                                                            "home": "/var/lib/celery-search", "user": "celery-search", "group": "celery-search",
                                                            "sqs_queues": []}]


def test_a_removal_keeps_whatever_an_app_the_fleet_runs_uses_too():
    entries = [dict(TWO_APPS[0], sends_to=[]), dict(TWO_APPS[1], state="absent", user="celery-shop", group="celery-shop",
                                                    root="/srv/apps", env_file="/etc/celery-fleet/mail.env")]
    apps = model(entries)
    present, removed = [a for a in apps if a["state"] == "present"], [a for a in apps if a["state"] == "absent"]
    present[0]["root"] = "/srv/apps"
    assert celery_app_removed_inputs(removed, present) == [{"name": "mail", "beat_schedule": "/var/lib/celery-mail/mail-beat-schedule",
                                                            "root": "", "env_file": "/etc/celery-fleet/mail.env",
                                                            "home": "/var/lib/celery-mail", "user": "", "group": "", "sqs_queues": []}]


def test_a_single_app_removes_the_apps_it_named_before_and_keeps_what_both_use():
    apps = model(inventory={"celery_app_name": "tutorial"}, broker="rabbitmq", result_backend="rpc", remove="fleetapp",
                 remove_drop_queued="true")
    present, removed = apps[:1], apps[1:]
    assert [(a["name"], a["state"]) for a in apps] == [("tutorial", "present"), ("fleetapp", "absent")]
    assert (removed[0]["root"], removed[0]["flower_site"], removed[0]["queues"]) == ("/opt/fleetapp", "fleetapp-flower", ["celery"])
    assert celery_worker_removed_inputs(removed)[0]["drop_queued"] is True
    # The account, its vhost and Flower's account are the new app's too: they stay.
    assert celery_removed_broker_inputs(removed, present) == {"rabbitmq_vhosts": [], "rabbitmq_users": [], "redis_prefixes": []}
    assert celery_app_removed_inputs(removed, present) == [{"name": "fleetapp", "beat_schedule": "/var/lib/celery/fleetapp-beat-schedule",
                                                            "root": "/opt/fleetapp",
                                                            "env_file": "/etc/celery-fleet/fleetapp.env", "home": "", "user": "", "group": "",
                                                            "sqs_queues": []}]
    assert celery_flower_removed_inputs(removed, present) == [{"name": "fleetapp", "config_file": "/etc/celery-fleet/fleetapp-flower.py",
                                                               "htpasswd": "/etc/nginx/fleetapp-flower.htpasswd", "user": "",
                                                               "site": "fleetapp-flower"}]
    assert [a["name"] for a in model(remove=["old", "older"])] == ["fleetapp", "old", "older"]


def test_a_flower_switched_off_leaves_what_a_flower_still_running_on_the_host_uses():
    apps = model(TWO_APPS)
    # One app of the list without its Flower: its files and account go, the shared site stays (the
    # app that never had one is in the list too: the role deletes only what it finds).
    off = [dict(app, flower_hosts=[]) if app["name"] == "shop" else app for app in apps]
    flower_host = apps[0]["flower_hosts"][0]
    found = celery_flower_switched_off_inputs(off, flower_host, [flower_host])
    assert [f["name"] for f in found] == ["shop", "mail"]
    assert found[0] == {"name": "shop", "config_file": "/etc/celery-fleet/shop-flower.py", "htpasswd": "/etc/nginx/shop-flower.htpasswd",
                        "user": "flower-shop", "site": ""}
    # Every Flower off: the site goes too; a host outside the `flower` group has none to delete.
    assert {f["site"] for f in celery_flower_switched_off_inputs([dict(a, flower_hosts=[]) for a in apps], flower_host, [flower_host])} == {
        "celery-flower"}
    assert celery_flower_switched_off_inputs(off, "elsewhere", [flower_host]) == []
    # The single app with Flower off: its `flower` account and its own site go.
    single = model(flower_enabled="false")
    assert celery_flower_switched_off_inputs(single, "w1", ["w1"]) == [{
        "name": "fleetapp", "config_file": "/etc/celery-fleet/fleetapp-flower.py", "htpasswd": "/etc/nginx/fleetapp-flower.htpasswd",
        "user": "flower", "site": "fleetapp-flower"}]
    assert celery_flower_switched_off_inputs(model(), "w1", ["w1"]) == []


@pytest.mark.parametrize("remove, message", [
    ("fleetapp", "celery_app_remove (fleetapp) must name an app this fleet ran before"),
    ("Bad Name", "celery_app_remove (Bad Name) must name an app this fleet ran before"),
])
def test_a_single_app_may_not_remove_itself_or_a_malformed_name(remove, message):
    apps = model(remove=remove)
    found = celery_fleet_refusals(apps, broker="redis", result_backend="redis", broker_user="celery", broker_vhost="celery",
                                  ack_timeout=3600, task_time_limit=1800, soft_shutdown_timeout=60, sqs=None, cluster=None,
                                  apps_rules=[], group_defaults=ROLE_DEFAULTS["celery_worker_group_defaults"])
    assert [m for m in found["apps"] if m.startswith(message)], found


def test_every_app_marked_absent_is_refused():
    every = [dict(entry, state="absent", sends_to=[]) for entry in TWO_APPS]
    assert "celery_apps marks every app absent: keep at least one app (a fleet without apps runs nothing)." in failing(every)


def test_an_app_removed_on_sqs_is_accepted_and_its_queues_go_with_it():
    one = [dict(TWO_APPS[0], sends_to=[], flower=False), dict(TWO_APPS[1], state="absent")]
    apps = model(one, broker="sqs", result_backend="dynamodb")
    found = celery_fleet_refusals(apps, broker="sqs", result_backend="dynamodb", broker_user="celery", broker_vhost="celery",
                                  ack_timeout=7200, task_time_limit=1800, soft_shutdown_timeout=60, sqs=GOOD_SQS, cluster=None,
                                  apps_rules=[], group_defaults=ROLE_DEFAULTS["celery_worker_group_defaults"])
    assert found["sqs"] == [], found
    present, removed = [a for a in apps if a["state"] == "present"], [a for a in apps if a["state"] == "absent"]
    (gone,) = celery_app_removed_inputs(removed, present)
    assert (gone["name"], gone["root"], gone["sqs_queues"]) == ("mail", "/opt/mail", removed[0]["sqs_queues"]), gone
    assert "celery" in gone["sqs_queues"]
