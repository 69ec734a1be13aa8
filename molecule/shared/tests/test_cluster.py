"""A RabbitMQ cluster of three nodes (scenario `fleet`): how it formed, its quorum queues, its
status and the inputs it refuses. Its drills are in test_cluster_drills.py; the rolling restart
of the workers and the deploys on it are checked by test_after_rolling_restart.py and
test_after_deploys.py.
"""

import json
import re
import time

import pytest
from cluster import VHOST, node_name, queues, rabbitmqctl
from conftest import (
    all_ran,
    ansible_playbook,
    env_settings,
    executions,
    host_state,
    inspect,
    mark_hosts,
    plain,
    refusal_problems,
    refusals,
    report,
    run_python,
    wait_until,
    workers_playbook,
)

pytestmark = pytest.mark.cluster


def test_the_brokers_form_one_cluster(brokers):
    nodes = {node_name(b) for b in brokers}
    for broker in brokers:
        status = rabbitmqctl(broker, "cluster_status")
        assert set(status["running_nodes"]) == nodes and set(status["disk_nodes"]) == nodes, status
        assert status["cluster_name"] == "celery-fleet"
        assert not status["partitions"] and not status["alarms"], status
        handling = broker.check_output("rabbitmqctl -q eval 'application:get_env(rabbit, cluster_partition_handling).'")
        assert handling == "{ok,pause_minority}"
        flags = rabbitmqctl(broker, "list_feature_flags name state")
        assert flags and all(flag["state"] == "enabled" for flag in flags), flags


def test_every_queue_of_the_app_is_a_quorum_queue_on_every_node(brokers, workers):
    found = queues(brokers[0])
    nodes = sorted(node_name(b) for b in brokers)
    direct = [f"{group}@{w.backend.host}.dq2" for w in workers for group in ("default", "long")]
    delayed = [f"celery_delayed_{level}" for level in range(28)]
    for name in ["celery", "long", *direct, *delayed]:
        row = found.get(name)
        assert row, f"no queue {name} on the cluster: {sorted(found)}"
        assert row["type"] == "quorum", row
        assert sorted(row["members"]) == nodes and sorted(row["online"]) == nodes, row
    for name in ["celery", "long", *direct]:
        assert found[name]["policy"] == "celery-fleet-quorum", found[name]
    limits = rabbitmqctl(brokers[0], f"list_policies -p {VHOST}")
    assert [json.loads(p["definition"]) for p in limits if p["name"] == "celery-fleet-quorum"] == [{"delivery-limit": 20}]


def test_clients_and_workers_know_every_node(brokers, workers, clients):
    addresses = [b.backend.host for b in brokers]
    for h in [*workers, *clients]:
        urls = env_settings(h)["CELERY_BROKER_URL"].split(";")
        assert [url.rsplit("@", 1)[1] for url in urls] == [f"{a}:5672/{VHOST}" for a in addresses], urls


def test_a_countdown_task_waits_in_rabbitmq_not_in_a_worker_and_then_runs(clients, workers):
    code = (
        "import json; from fleetapp.tasks import tracked\n"
        "print(json.dumps([tracked.apply_async((0,), countdown=10, queue=q).id for q in ('celery', 'long')]))"
    )
    started = time.monotonic()
    ids = json.loads(run_python(clients[0], code))
    # Native delayed delivery: while they wait, no worker holds them (Celery's ETA tasks would be
    # in a worker's memory, `inspect scheduled`, and block its prefetch on quorum queues).
    held = [task["request"]["id"] for replies in [inspect(workers[0], "scheduled", timeout=2)]
            for tasks in replies.values() for task in tasks]
    assert time.monotonic() - started < 10 and not set(held) & set(ids), held
    assert not any(executions(workers, ids).values())
    ran = wait_until(lambda: all_ran(workers, ids), 40, 0.5)
    elapsed = round(time.monotonic() - started, 1)
    report("countdown", sent=2, ran=sum((ran or {}).values()), seconds=elapsed)
    assert ran and set(ran.values()) == {1} and elapsed >= 10, (ran, elapsed)


def test_the_status_action_reports_every_node_and_each_quorum_queues_leader(brokers):
    done = workers_playbook("status")
    out = plain(done.stdout)
    assert done.returncode == 0, out[-3000:]
    # Each node's own view.
    assert out.count("cluster celery-fleet: 3 of 3 nodes running") == len(brokers), out[-3000:]
    for queue in ("celery", "long"):
        found = re.findall(rf"queue celery/{queue}: leader rabbit@fleet-broker\d, 3 of 3 members online", out)
        assert len(found) == len(brokers), out[-3000:]


def test_bad_cluster_inputs_are_refused_before_any_host_changes(brokers, tmp_path):
    # Per-host values go in through an extra inventory; the lab's stays as it is.
    cases = {
        "four brokers": {"all": {"children": {"brokers": {"hosts": {"fleet-worker2": {}}}}}},
        "unresolvable node name": {"all": {"hosts": {brokers[-1].backend.host: {"celery_rabbitmq_node_host": "no-such-node"}}}},
    }
    special = {}
    for name, inventory in cases.items():
        path = tmp_path / f"{name.replace(' ', '-')}.yml"
        path.write_text(json.dumps(inventory))
        special[name] = ["-i", str(path)]
    problems, seconds = refusal_problems([
        ("four brokers", "four brokers", "an even"),
        ("unresolvable node name", "unresolvable node name", "rabbit@no-such-node in rabbitmq_cluster_nodes do not resolve"),
        ("missing cookie", {"rabbitmq_erlang_cookie": ""}, "rabbitmq_erlang_cookie must be 20 to 255 letters and digits"),
        ("generated cookie form", {"rabbitmq_erlang_cookie": "ABCDEFGHIJKLMNOPQRST"}, "rabbitmq_erlang_cookie is 20 capital letters"),
        ("delivery limit 1", {"celery_rabbitmq_delivery_limit": 1}, "celery_rabbitmq_delivery_limit (1) must be at least 2"),
        ("no confirms", {"celery_app_confirm_publish": False}, "celery_app_confirm_publish must stay true on a RabbitMQ cluster"),
    ], special)
    report("cluster-bad-inputs", cases=6, seconds=seconds)
    assert not problems, problems


def test_a_former_single_nodes_data_on_a_broker_is_refused_naming_the_fix(brokers):
    """From one broker to three: the first host still has the single node's data (rabbit@localhost,
    classic queues, which cannot become quorum queues in place). Its node directory is staged here."""
    leftover = "/var/lib/rabbitmq/mnesia/rabbit@localhost"
    broker = brokers[0]
    broker.check_output(f"mkdir {leftover}")
    try:
        marks = mark_hosts(brokers, ["rabbitmq-server"])
        done = ansible_playbook("site.yml", env={"ANSIBLE_STDOUT_CALLBACK": "ansible.posix.json"})
        failures, stats = refusals(done.stdout)
    finally:
        broker.check_output(f"rmdir {leftover}")
    assert done.returncode != 0
    assert {task for task, _, _ in failures} == {"rabbitmq : Refuse to leave an existing node's data behind"}, failures
    assert all("keeps the RabbitMQ data of rabbit@localhost (a single node" in message and "remove /var/lib/rabbitmq/mnesia/" in message
               for _, message, _ in failures), failures
    assert not any(host["changed"] for host in stats.values()), stats
    assert {b.backend.host: host_state(b, ["rabbitmq-server"]) for b in brokers} == marks
