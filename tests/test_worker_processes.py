"""The host's Celery processes from the fleet's model: the model's view for role celery_worker
(plugins/filter/fleet_model.py, celery_worker_inputs) and the role's processes
(roles/celery_worker/filter_plugins/celery_worker.py)."""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "roles/celery_worker/filter_plugins"), str(ROOT / "plugins/filter"), str(ROOT / "tests")]

from celery_worker import celery_worker_processes, celery_worker_state_apps, celery_worker_unanswered  # noqa: E402
from fleet_model import celery_worker_inputs  # noqa: E402
from test_fleet_model import model  # noqa: E402

DEFAULTS = {"queues": ["celery"], "concurrency": 2, "pool": "prefork", "max_tasks_per_child": 1000, "state": "present"}


def test_each_host_runs_what_its_groups_say_of_every_app():
    apps = model([{"name": "billing", "beat": True, "flower": True, "flower_users": [{"name": "a", "password": "x" * 16}],
                   "worker_groups": [{"name": "default"}, {"name": "slow", "queues": ["slow"], "state": "absent"}], "broker_password": "b" * 16},
                  {"name": "mailer", "workers": ["w2"], "broker_password": "m" * 16}])
    w1 = celery_worker_inputs(apps, "w1")
    assert [(app["name"], app["workers"], app["beat"], app["flower"]) for app in w1] == [("billing", True, True, True)]
    assert [(app["name"], app["workers"], app["beat"]) for app in celery_worker_inputs(apps, "w2")] == [("billing", True, False), ("mailer", True, False)]
    assert celery_worker_inputs(apps, "web1") == [], "a client runs no process"

    processes = celery_worker_processes(w1, DEFAULTS, "supervisor")
    assert [(p["name"], p["kind"], p["state"]) for p in processes] == [
        ("celery-billing-worker-default", "worker", "present"), ("celery-billing-worker-slow", "worker", "absent"),
        ("celery-billing-beat", "beat", "present"), ("celery-billing-flower", "flower", "present")]
    assert processes[0]["group"] == dict(DEFAULTS, name="default")
    assert processes[2]["schedule"] == "/var/lib/celery-billing/billing-beat-schedule"
    assert (processes[3]["user"], processes[3]["inputs"]) == ("flower-billing", ["/etc/celery-fleet/billing-flower.py"])
    assert celery_worker_processes(w1, DEFAULTS, "systemd")[0]["name"] == "celery-billing@worker-default.service"

    (query,) = celery_worker_state_apps(w1, processes)
    assert query == {"prefix": "celery-billing", "wanted": ["worker-default", "beat", "flower"],
                     "inputs": ["/etc/celery-fleet/billing.env", "/opt/billing/bin/run", "/opt/billing/current"],
                     "process_inputs": {"flower": ["/etc/celery-fleet/billing-flower.py"]}}


def test_a_host_that_is_not_a_worker_of_the_app_runs_no_worker_group_of_it():
    apps = celery_worker_inputs(model([{"name": "mailer", "workers": ["w2"], "beat": True, "broker_password": "m" * 16}]), "w1")
    assert [(p["instance"], p["state"]) for p in celery_worker_processes(apps, DEFAULTS, "supervisor")] == [
        ("beat", "present"), ("flower", "absent")]


def test_the_nodes_that_did_not_answer_name_their_processes():
    """Two apps with a group `default` on one host: the same node name, each on its own broker."""
    results = [{"item": {"nodes": ["default@w1", "long@w1"], "names": ["celery-a-worker-default", "celery-a-worker-long"]},
                "rc": 0, "stdout": "-> default@w1: OK pong"},
               {"item": {"nodes": ["default@w1"], "names": ["celery-b-worker-default"]}, "rc": 1, "stdout": ""}, {"skipped": True}]
    assert celery_worker_unanswered(results) == ["celery-a-worker-long", "celery-b-worker-default"]
