"""The host's Celery processes from the fleet's model: each named as its manager names it, with
its command line (plugins/filter/fleet_model.py, celery_worker_inputs), and role celery_worker's
views of them (roles/celery_worker/filter_plugins/celery_worker.py)."""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "roles/celery_worker/filter_plugins"), str(ROOT / "plugins/filter"), str(ROOT / "tests")]

from celery_worker import celery_worker_app_workers, celery_worker_state_apps, celery_worker_unanswered  # noqa: E402
from fleet_model import celery_worker_inputs  # noqa: E402
from test_fleet_model import ROLE_DEFAULTS, model  # noqa: E402

DEFAULTS = ROLE_DEFAULTS["celery_worker_group_defaults"]
CELERY = "/opt/billing/bin/run celery --app=celery_fleet:app"


def inputs(apps, host, manager="supervisor"):
    return celery_worker_inputs(apps, host, manager=manager, group_defaults=DEFAULTS, loglevel="INFO")


def test_each_host_runs_what_its_groups_say_of_every_app():
    apps = model([{"name": "billing", "beat": True, "flower": True, "flower_users": [{"name": "a", "password": "x" * 16}],
                   "worker_groups": [{"name": "default"}, {"name": "slow", "queues": ["slow"], "state": "absent"},
                                     {"name": "long", "queues": ["long", "celery"], "concurrency": 1, "max_tasks_per_child": 0}],
                   "broker_password": "b" * 16},
                  {"name": "mailer", "workers": ["w2"], "broker_password": "m" * 16}])
    (w1,) = inputs(apps, "w1")
    assert [(p["name"], p["kind"], p["user"]) for p in w1["processes"]] == [
        ("celery-billing-worker-default", "worker", "celery-billing"), ("celery-billing-worker-long", "worker", "celery-billing"),
        ("celery-billing-beat", "beat", "celery-billing"), ("celery-billing-flower", "flower", "flower-billing")], "an absent group runs nowhere"
    default, long, beat, flower = w1["processes"]
    assert default["command"] == (f"{CELERY} worker --hostname=default@w1 --queues=celery --concurrency=2 --pool=prefork"
                                  " --max-tasks-per-child=1000 --without-gossip --without-mingle --loglevel=INFO")
    assert long["command"] == (f"{CELERY} worker --hostname=long@w1 --queues=long,celery --concurrency=1 --pool=prefork"
                               " --without-gossip --without-mingle --loglevel=INFO"), "max_tasks_per_child 0: never replaced"
    assert (default["node"], long["queues"]) == ("default@w1", ["long", "celery"])
    assert beat["command"] == f"{CELERY} beat --schedule=/var/lib/celery-billing/billing-beat-schedule --loglevel=INFO"
    assert flower["command"] == "/opt/billing/bin/run --tools celery --app=celery_fleet:app flower --conf=/etc/celery-fleet/billing-flower.py"
    assert flower["inputs"] == ["/etc/celery-fleet/billing-flower.py"] and default["inputs"] == []
    assert [p["name"] for p in inputs(apps, "w1", "systemd")[0]["processes"]][:1] == ["celery-billing@worker-default.service"]
    assert [(a["name"], [p["instance"] for p in a["processes"]]) for a in inputs(apps, "w2")] == [
        ("billing", ["worker-default", "worker-long"]), ("mailer", ["worker-default"])], "beat and Flower run on w1 only"
    assert inputs(apps, "web1") == [], "a client runs no process"

    assert w1["process_prefixes"] == {"supervisor": "celery-billing-", "systemd": "celery-billing@"}
    (query,) = celery_worker_state_apps([w1], "supervisor")
    assert query == {"prefix": "celery-billing-",
                     "wanted": ["celery-billing-worker-default", "celery-billing-worker-long", "celery-billing-beat", "celery-billing-flower"],
                     "inputs": ["/etc/celery-fleet/billing.env", "/opt/billing/bin/run", "/opt/billing/current"],
                     "process_inputs": {"celery-billing-flower": ["/etc/celery-fleet/billing-flower.py"]}}
    (workers,) = celery_worker_app_workers([w1])
    assert (workers["nodes"], workers["names"], workers["node_queues"]) == (
        ["default@w1", "long@w1"], ["celery-billing-worker-default", "celery-billing-worker-long"],
        ["default@w1 celery", "long@w1 long", "long@w1 celery"])


def test_a_host_that_is_not_a_worker_of_the_app_runs_no_worker_group_of_it():
    (app,) = inputs(model([{"name": "mailer", "workers": ["w2"], "beat": True, "broker_password": "m" * 16}]), "w1")
    assert [p["instance"] for p in app["processes"]] == ["beat"]
    assert celery_worker_app_workers([app]) == [], "no node to ping here"


def test_the_nodes_that_did_not_answer_name_their_processes():
    """Two apps with a group `default` on one host: the same node name, each on its own broker."""
    results = [{"item": {"nodes": ["default@w1", "long@w1"], "names": ["celery-a-worker-default", "celery-a-worker-long"]},
                "rc": 0, "stdout": "-> default@w1: OK pong"},
               {"item": {"nodes": ["default@w1"], "names": ["celery-b-worker-default"]}, "rc": 1, "stdout": ""}, {"skipped": True}]
    assert celery_worker_unanswered(results) == ["celery-a-worker-long", "celery-b-worker-default"]
