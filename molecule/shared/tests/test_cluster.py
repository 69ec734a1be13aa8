"""A RabbitMQ cluster of three nodes (scenario `fleet`): how it formed, its quorum queues, and
a node lost under load, counted by task id. The rolling restart of the workers and the deploys
on it are checked by test_after_rolling_restart.py and test_after_deploys.py.
"""

import json
import re
import shlex
import time

import pytest
from conftest import (
    RUN,
    all_ran,
    ansible_playbook,
    env_settings,
    executions,
    host_state,
    inspect,
    listening,
    mark_hosts,
    plain,
    recap,
    refusal_problems,
    refusals,
    report,
    run_python,
    wait_until,
    workers_playbook,
)

pytestmark = pytest.mark.cluster

VHOST = "celery"


def rabbitmqctl(broker, command):
    """A rabbitmqctl command's JSON output on that broker (its warnings go to stderr)."""
    return json.loads(broker.check_output(f"rabbitmqctl -q {command} --formatter json"))


def node_name(broker):
    return f"rabbit@{broker.backend.host}"


def queues(broker):
    """The app's queues as the cluster sees them: {name: row}."""
    rows = rabbitmqctl(broker, f"list_queues -p {VHOST} name type leader members online policy messages")
    return {row["name"]: row for row in rows}


def running_nodes(broker):
    result = broker.run("rabbitmqctl -q cluster_status --formatter json")
    return set(json.loads(result.stdout)["running_nodes"]) if result.rc == 0 and result.stdout.strip() else set()


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


LOAD = """
import json, random
from fleetapp.tasks import tracked
random.seed(19)
ids, delayed = [], []
for n in range({count}):
    seconds = random.uniform(1, 3) if n % 5 == 0 else 0
    countdown = random.randint(2, 6) if n % 10 == 3 else None
    queue = ("celery", "long")[n % 2]
    ids.append(tracked.apply_async((seconds,), queue=queue, countdown=countdown).id)
    if countdown:
        delayed.append(ids[-1])
print(json.dumps({{"ids": ids, "delayed": delayed}}))
"""


def send_load(client, count):
    return json.loads(run_python(client, LOAD.format(count=count), timeout=180))


# Tasks sent one after another from the moment a node is lost: a send the cluster refuses raises
# in the sender (publisher confirms: a nack while a queue elects its new leader) and is sent again.
PROBE = """
import json, time
from fleetapp.tasks import tracked
started = time.monotonic()
ids, refused, last_refusal = [], 0, 0.0
while len(ids) < {count}:
    try:
        ids.append(tracked.delay(0).id)
    except Exception:
        refused, last_refusal = refused + 1, time.monotonic() - started
        time.sleep(0.05)
print(json.dumps({{"ids": ids, "refused": refused, "refused_for": round(last_refusal, 2)}}))
"""


@pytest.mark.disrupts
def test_killing_the_node_that_leads_the_queues_loses_no_task(brokers, workers, clients):
    """Drill (a): SIGKILL of the node leading both task queues while 300 tasks run and wait."""
    by_node = {node_name(b): b for b in brokers}
    leaders = {queues(brokers[0])[name]["leader"] for name in ("celery", "long")}
    victim = by_node[sorted(leaders)[0]]
    others = [b for b in brokers if b is not victim]
    load = send_load(clients[0], 300)
    ids = load["ids"]
    time.sleep(2)
    victim.check_output("pkill -KILL -x beam.smp")
    killed = time.monotonic()
    # Sent after the kill: the client fails over to another node.
    sent_after = json.loads(run_python(clients[0], PROBE.format(count=20)))
    ids = ids + sent_after["ids"]
    # Until every task ran: the node's return (systemd restarts it), and how long the workers ever
    # went without completing a task. A countdown task waiting in a delayed-delivery queue the lost
    # node led moves on only once that node is back (RabbitMQ 3.10), so the count ends 90 s after
    # the return.
    rejoin_seconds = None
    done_before_rejoin = 0
    done, last_progress, longest_stall = 0, killed, 0.0
    deadline = killed + 180
    while True:
        counts = executions(workers, ids)
        now = time.monotonic()
        if sum(1 for n in counts.values() if n) > done:
            done, last_progress = sum(1 for n in counts.values() if n), now
        longest_stall = max(longest_stall, now - last_progress)
        if rejoin_seconds is None and running_nodes(others[0]) == set(by_node):
            rejoin_seconds = round(now - killed, 1)
            done_before_rejoin = done
            deadline = now + 90
        if (rejoin_seconds is not None and done == len(ids)) or now > deadline:
            break
        time.sleep(1)
    lost = [i for i, n in counts.items() if n == 0]
    duplicated = [i for i, n in counts.items() if n > 1]
    report("cluster-node-kill", victim=victim.backend.host, sent=len(ids), sent_after_the_kill=len(sent_after["ids"]),
           ok=len(ids) - len(lost), lost=len(lost), lost_with_a_countdown=len(set(lost) & set(load["delayed"])),
           duplicated=len(duplicated), ran_before_the_node_returned=done_before_rejoin,
           sends_refused=sent_after["refused"], refused_for=sent_after["refused_for"],
           longest_without_a_completed_task=round(longest_stall, 1), rejoined_within=rejoin_seconds)
    assert not lost, f"{len(lost)} tasks never ran: {lost[:10]}"
    assert rejoin_seconds is not None, f"{victim.backend.host} did not rejoin: {running_nodes(others[0])}"
    # A worker whose node was lost consumes again once Celery's delayed-delivery setup has given up
    # on that node's URL (three tries, about 10 s): measured 15 s without a completed task.
    assert longest_stall < 30, "the workers stopped completing tasks for more than 30 s"
    assert wait_until(lambda: all(sorted(r["online"]) == sorted(by_node) for n, r in queues(victim).items()
                                  if n in ("celery", "long")), 60, 2)


# A steady sender: a task every 0.1 s (one in five of 1 s, one in ten with a 3 s countdown) over
# both queues until the stop file exists. It records each send's outcome with its time: a refused
# send raises in the sender (confirms) and is counted, never retried, so a confirmed id is a
# promise the cluster made.
STEADY = """
import json, time
from pathlib import Path
from fleetapp.tasks import tracked
stop, out = Path("{stop}"), Path("{out}")
started = time.monotonic()
ids, sent_at, refused_at = [], [], []
n = 0
while not stop.exists():
    n += 1
    try:
        ids.append(tracked.apply_async((1 if n % 5 == 0 else 0,), queue=("celery", "long")[n % 2],
                                       countdown=3 if n % 10 == 3 else None).id)
        sent_at.append(round(time.monotonic() - started, 2))
    except Exception:
        refused_at.append(round(time.monotonic() - started, 2))
    time.sleep(0.1)
out.write_text(json.dumps({{"ids": ids, "sent_at": sent_at, "refused_at": refused_at}}))
"""
STEADY_DIR = "/var/tmp/cluster-steady"


class SteadySender:
    """STEADY in the background on the client host, for the length of a `with` block."""

    def __init__(self, client):
        self.client = client

    def __enter__(self):
        self.client.check_output(f"rm -rf {STEADY_DIR} && mkdir -p {STEADY_DIR}")
        code = STEADY.format(stop=f"{STEADY_DIR}/stop", out=f"{STEADY_DIR}/out.json")
        self.client.check_output(f"nohup {RUN} python -c {shlex.quote(code)} > {STEADY_DIR}/log 2>&1 &")
        time.sleep(3)
        return self

    def __exit__(self, *_):
        self.client.check_output(f"touch {STEADY_DIR}/stop")
        self.outcome = wait_until(lambda: self.client.file(f"{STEADY_DIR}/out.json").exists, 60) and json.loads(
            self.client.check_output(f"cat {STEADY_DIR}/out.json"))
        assert self.outcome, self.client.run(f"cat {STEADY_DIR}/log").stdout

    def longest_without_a_send(self):
        times = [0.0, *self.outcome["sent_at"]]
        return round(max(b - a for a, b in zip(times, times[1:])), 2)


def count_by_id(workers, ids, deadline):
    counts = wait_until(lambda: all_ran(workers, ids), deadline, 2) or executions(workers, ids)
    return [i for i, n in counts.items() if n == 0], [i for i, n in counts.items() if n > 1]


@pytest.mark.disrupts
def test_the_rolling_broker_restart_loses_and_duplicates_no_task(brokers, workers, clients):
    """Drill (b): playbooks/broker_restart.yml while a steady sender sends and tasks run."""
    started = time.monotonic()
    with SteadySender(clients[0]) as sender:
        done = ansible_playbook("playbooks/broker_restart.yml")
        roll_seconds = round(time.monotonic() - started, 1)
        time.sleep(3)
    assert done.returncode == 0, done.stdout[-3000:]
    assert recap(done.stdout), done.stdout[-2000:]
    ids = sender.outcome["ids"]
    lost, duplicated = count_by_id(workers, ids, 120)
    report("broker-rolling-restart", sent=len(ids), lost=len(lost), duplicated=len(duplicated),
           sends_refused=len(sender.outcome["refused_at"]), longest_without_a_send=sender.longest_without_a_send(),
           roll_seconds=roll_seconds)
    assert len(ids) > 300
    assert not lost and not duplicated, (lost[:10], duplicated[:10])
    # Each drain closes the node's client connections: sends fail until the sender has reconnected to
    # another node (measured 5.2 and 7.4 s at the longest).
    assert sender.longest_without_a_send() < 15
    assert all(running_nodes(b) == {node_name(x) for x in brokers} for b in brokers)


@pytest.mark.disrupts
def test_with_two_nodes_of_three_down_sends_fail_in_the_sender_and_confirmed_tasks_all_run(brokers, workers, clients):
    """Drill (c): the cluster loses its majority for 20 s under a steady sender."""
    down = brokers[1:]
    with SteadySender(clients[0]) as sender:
        for broker in down:
            broker.check_output("systemctl stop rabbitmq-server")
        stopped = time.monotonic()
        # pause_minority: the node left alone stops serving clients rather than accept writes.
        paused = wait_until(lambda: not listening(brokers[0], 5672), 30)
        status = workers_playbook("status")
        time.sleep(max(0.0, 20 - (time.monotonic() - stopped)))
        for broker in down:
            broker.check_output("systemctl start rabbitmq-server")
        back = wait_until(lambda: running_nodes(brokers[0]) == {node_name(b) for b in brokers}, 120, 2)
        back_seconds = round(time.monotonic() - stopped, 1)
        time.sleep(5)
    outcome = sender.outcome
    lost, duplicated = count_by_id(workers, outcome["ids"], 120)
    refused_while_down = [t for t in outcome["refused_at"] if t > 3]
    report("cluster-majority-lost", confirmed=len(outcome["ids"]), refused=len(outcome["refused_at"]), lost=len(lost),
           duplicated=len(duplicated), longest_without_a_send=sender.longest_without_a_send(), back_within=back_seconds)
    assert paused, "the node left alone kept serving clients"
    assert status.returncode != 0 and all(f"{node_name(b)} is not running" in plain(status.stdout) for b in down), status.stdout[-3000:]
    assert back, running_nodes(brokers[0])
    assert refused_while_down, "no send failed in the sender while the majority was down"
    assert not lost, f"{len(lost)} confirmed tasks never ran: {lost[:10]}"


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
