"""The RabbitMQ cluster's drills (scenario `fleet`), counted by task id: the nodes leading the
queues killed under load, the rolling broker restart under a steady sender and a churn of
connections, and the majority lost. Each runs after the scenario's other tests (`disrupts`)."""

import json
import re
import shlex
import time

import pytest
from cluster import node_name, queues, running_nodes
from conftest import (
    RUN,
    all_ran,
    ansible_playbook,
    listening,
    plain,
    recap,
    report,
    run_log,
    run_python,
    runs,
    wait_until,
    workers_playbook,
)

pytestmark = pytest.mark.cluster


LOAD = """
import json, random, time
from fleetapp.tasks import tracked
random.seed(19)
ids, due = [], {{}}
for n in range({count}):
    seconds = random.uniform(1, 3) if n % 5 == 0 else 0
    countdown = random.randint(2, 6) if n % 10 == 3 else None
    queue = ("celery", "long")[n % 2]
    ids.append(tracked.apply_async((seconds,), queue=queue, countdown=countdown).id)
    if countdown:
        due[ids[-1]] = time.time() + countdown
print(json.dumps({{"ids": ids, "due": due}}))
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

# A steady sender: a task every 0.1 s over both queues (one in five of 1 s; one in `every` with a
# countdown, 3 s or an expression of n, its due time recorded) until the stop file exists. It records each send's
# outcome with its time: a refused send raises in the sender (confirms) and is counted, never
# retried, so a confirmed id is a promise the cluster made. A send whose publish met a closed
# connection is published again by kombu (Celery's publish retry): both copies may run, so such
# ids are recorded, as is the longest a single send took.
STEADY = """
import json, time
from pathlib import Path
from celery import uuid
from fleetapp.tasks import tracked
stop, out = Path("{stop}"), Path("{out}")
started = time.monotonic()
ids, sent_at, refused_at, due, published_again, longest_send = [], [], [], {{}}, [], 0.0
n = 0
while not stop.exists():
    n += 1
    countdown = ({countdown}) if n % {every} == 1 else None
    task_id, send_started = uuid(), time.monotonic()
    again = {{"errback": lambda error, interval, task_id=task_id: published_again.append(task_id)}}
    try:
        tracked.apply_async((1 if n % 5 == 0 else 0,), queue=("celery", "long")[n % 2], countdown=countdown,
                            task_id=task_id, retry_policy=again)
        ids.append(task_id)
        sent_at.append(round(time.monotonic() - started, 2))
        if countdown:
            due[task_id] = time.time() + countdown
    except Exception:
        refused_at.append(round(time.monotonic() - started, 2))
    longest_send = max(longest_send, time.monotonic() - send_started)
    time.sleep(0.1)
out.write_text(json.dumps({{"ids": ids, "sent_at": sent_at, "refused_at": refused_at, "due": due,
                           "published_again": sorted(set(published_again)), "longest_send": round(longest_send, 2)}}))
"""

# A client that sent once and then sat idle: its connection is closed under it (its node stopped
# or paused); its next send, once the stop file exists, must fail in the sender, not block.
IDLE_CLIENT = """
import json, time
from pathlib import Path
from fleetapp.tasks import tracked
stop, out = Path("{stop}"), Path("{out}")
first = tracked.delay(0).id
stop.with_name("ready").touch()
while not stop.exists():
    time.sleep(0.1)
started = time.monotonic()
try:
    second = tracked.delay(0).id
except Exception as error:
    second = repr(error)
out.write_text(json.dumps({{"first": first, "second": second, "seconds": round(time.monotonic() - started, 2)}}))
"""

# Connections opened and closed all the time, to every node (eight at a time each, held 0 to
# 50 ms): a drain meets connections that close by themselves while it closes them.
CHURN = """
import json, os, random, threading, time
from pathlib import Path
from kombu import Connection
stop, out = Path("{stop}"), Path("{out}")
opened = [0]

def churn(url):
    while not stop.exists():
        try:
            with Connection(url, connect_timeout=2) as connection:
                connection.connect()
                opened[0] += 1
                time.sleep(random.uniform(0, 0.05))
        except Exception:
            time.sleep(0.2)

urls = os.environ["CELERY_BROKER_URL"].split(";")
threads = [threading.Thread(target=churn, args=(url,)) for url in urls for _ in range(8)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
out.write_text(json.dumps(opened[0]))
"""


class Background:
    """A script in the background on the client host for the length of a `with` block, stopped by
    its stop file; `outcome` is what it leaves in its out file (JSON)."""

    def __init__(self, client, script, name, **values):
        self.client, self.name, self.dir = client, name, f"/var/tmp/cluster-{name}"
        self.code = script.format(stop=f"{self.dir}/stop", out=f"{self.dir}/out.json", **values)

    def __enter__(self):
        self.client.check_output(f"rm -rf {self.dir} && mkdir -p {self.dir}")
        self.client.check_output(f"nohup {RUN} python -c {shlex.quote(self.code)} > {self.dir}/log 2>&1 &")
        time.sleep(3)
        return self

    def __exit__(self, *_):
        self.client.check_output(f"touch {self.dir}/stop")
        self.outcome = wait_until(lambda: self.client.file(f"{self.dir}/out.json").exists, 60) and json.loads(
            self.client.check_output(f"cat {self.dir}/out.json"))
        assert self.outcome is not False, (f"the {self.name} client was still running 60 s after it was told to stop "
                                           f"(a send blocked?); its log: {self.client.run(f'cat {self.dir}/log').stdout}")


class SteadySender(Background):
    """STEADY in the background: a task every 0.1 s, one in `every` with a countdown."""

    def __init__(self, client, every=10, countdown="3"):
        super().__init__(client, STEADY, "steady", every=every, countdown=countdown)

    def longest_without_a_send(self):
        times = [0.0, *self.outcome["sent_at"]]
        return round(max(b - a for a, b in zip(times, times[1:])), 2)


def count_by_id(workers, ids, deadline, published_again=()):
    """The ids that never ran, those that ran twice or more, and of these the ones at-least-once
    delivery does not explain: neither run again by a redelivery (a worker's connection closed
    after the task ran and before its ack) nor published twice (`published_again`)."""
    wait_until(lambda: all_ran(workers, ids), deadline, 2)
    found = run_log(workers, ids)
    lost = [i for i, each in found.items() if not each]
    duplicated = [i for i, each in found.items() if len(each) > 1]
    unexplained = [i for i in duplicated if i not in published_again and not any(again for _, again in sorted(found[i])[1:])]
    return lost, duplicated, unexplained


def leader_of_most(broker, names):
    """The node that leads most of the named queues."""
    leaders = [row["leader"] for name, row in queues(broker).items() if name in names]
    return max(sorted(set(leaders)), key=leaders.count)


def kill_node(victim, brokers, clients):
    """SIGKILL of a node's Erlang VM, then tasks sent at once (the client fails over); returns
    when systemd has restarted the node and it runs in the cluster again."""
    by_node = {node_name(b): b for b in brokers}
    other = next(b for b in brokers if b is not victim)
    victim.check_output("pkill -KILL -x beam.smp")
    killed = time.monotonic()
    sent_after = json.loads(run_python(clients[0], PROBE.format(count=20)))
    rejoined = wait_until(lambda: running_nodes(other) == set(by_node), 120, 1)
    rejoin_seconds = round(time.monotonic() - killed, 1)
    assert rejoined, f"{victim.backend.host} did not rejoin within 120 s: {running_nodes(other)}"
    # Every quorum queue has its three members online before the next kill.
    assert wait_until(lambda: all(sorted(r["online"]) == sorted(by_node) for r in queues(other).values() if r["type"] == "quorum"), 60, 2)
    return {"victim": victim.backend.host, "ids": sent_after["ids"], "refused": sent_after["refused"],
            "refused_for": sent_after["refused_for"], "rejoined_within": rejoin_seconds}


# Countdown tasks start at most this long after their due time when a node is lost (measured 30,
# 47 and 64 s, the later ones when the lost node held the workers' connections): the workers'
# pause below, the tasks queued meanwhile (the 300 of the load and the stream's) going first, and
# a target queue refusing the countdown tasks forwarded to it while it elects a new leader, sent
# again after rabbitmq_dead_letter_retry_interval (5 s). RabbitMQ's default of 180 s left them 3
# to 6 minutes late, and the count below called them lost (19 of 163).
COUNTDOWN_LATE_BOUND = 120
# A send that the cluster cannot take fails in the sender within this (the publish retry policy's
# tries of every node, measured 0.01 to 6.1 s); one that waited for a node to come back, as
# Celery's own rpc:// backend made it, took as long as the 20 s outage and more.
SEND_BOUND = 15
# The workers start no task for at most this long: a worker whose connection was on the lost node
# consumes again once Celery's delayed-delivery setup, which runs before consuming on every
# reconnection, has given up on that node's URL (three tries each): measured 16 and 33 s.
WORKERS_PAUSE_BOUND = 60


@pytest.mark.disrupts
def test_killing_the_nodes_that_lead_the_queues_loses_no_task_and_delays_no_countdown_task(brokers, workers, clients):
    """Drill (a): SIGKILL of the node leading both task queues, then of the node leading the
    delayed queues, under 300 tasks and a steady stream of tasks, one in three with a countdown,
    so countdown tasks move between queues at every moment of each kill."""
    by_node = {node_name(b): b for b in brokers}
    load = send_load(clients[0], 300)
    drill_started = time.time()
    kills = []
    with SteadySender(clients[0], every=3, countdown="1 + n % 4") as sender:
        time.sleep(2)
        kills.append(kill_node(by_node[leader_of_most(brokers[0], ("celery", "long"))], brokers, clients))
        delayed = [f"celery_delayed_{level}" for level in range(3)]
        kills.append(kill_node(by_node[leader_of_most(brokers[0], delayed)], brokers, clients))
        time.sleep(5)
    drill_ended = time.time()
    due = {**load["due"], **sender.outcome["due"]}
    ids = load["ids"] + sender.outcome["ids"] + [i for kill in kills for i in kill["ids"]]
    wait_until(lambda: all_ran(workers, ids), 90, 2)
    started = runs(workers, ids)
    lost = [i for i, times in started.items() if not times]
    duplicated = [i for i, times in started.items() if len(times) > 1]
    late = {i: round(min(started[i]) - due[i], 1) for i in due if started[i]}
    steady_late = [late[i] for i in sender.outcome["due"] if i in late]
    # How long the workers ever went without starting a task while tasks were being sent.
    starts = sorted(t for times in started.values() for t in times if drill_started <= t <= drill_ended)
    longest_stall = round(max(b - a for a, b in zip([drill_started, *starts], [*starts, drill_ended])), 1)
    for kill in kills:
        report("cluster-node-kill", victim=kill["victim"], sent_after_the_kill=len(kill["ids"]), sends_refused=kill["refused"],
               refused_for=kill["refused_for"], rejoined_within=kill["rejoined_within"])
    report("cluster-node-kills", kills=len(kills), sent=len(ids), ok=len(ids) - len(lost), lost=len(lost),
           duplicated=len(duplicated), countdown_sent=len(due), countdown_ran=len(late),
           countdown_lost=len(set(lost) & set(due)), countdown_latest_past_due=max(late.values(), default=None),
           steady_countdown_latest_past_due=max(steady_late, default=None),
           steady_countdown_median_past_due=sorted(steady_late)[len(steady_late) // 2] if steady_late else None,
           longest_without_a_started_task=longest_stall)
    assert not lost, f"{len(lost)} tasks never ran, {len(set(lost) & set(due))} of them countdown tasks: {lost[:10]}"
    assert steady_late and max(late.values()) < COUNTDOWN_LATE_BOUND, sorted(late.values())[-10:]
    assert longest_stall < WORKERS_PAUSE_BOUND, f"the workers started no task for {longest_stall} s"


@pytest.mark.disrupts
def test_the_rolling_broker_restart_loses_no_task_and_repeats_one_only_by_redelivery_or_republish(brokers, workers, clients):
    """Drill (b): playbooks/broker_restart.yml while a steady sender sends, tasks run, and
    connections to every node open and close all the time."""
    started = time.monotonic()
    with SteadySender(clients[0]) as sender, Background(clients[0], CHURN, "churn") as churn:
        done = ansible_playbook("playbooks/broker_restart.yml")
        roll_seconds = round(time.monotonic() - started, 1)
        time.sleep(3)
    assert done.returncode == 0, done.stdout[-3000:]
    assert recap(done.stdout), done.stdout[-2000:]
    ids = sender.outcome["ids"]
    lost, duplicated, unexplained = count_by_id(workers, ids, 120, sender.outcome["published_again"])
    out = plain(done.stdout)
    report("broker-rolling-restart", sent=len(ids), lost=len(lost), duplicated=len(duplicated),
           duplicated_unexplained=len(unexplained), published_again=len(sender.outcome["published_again"]),
           sends_refused=len(sender.outcome["refused_at"]), longest_without_a_send=sender.longest_without_a_send(),
           longest_send=sender.outcome["longest_send"],
           roll_seconds=roll_seconds, connections_opened=churn.outcome, drains=out.count("TASK [rabbitmq : Drain the node]"),
           drains_run_again=len(re.findall(r"FAILED - RETRYING: \[[^]]+\]: Drain the node", out)))
    assert len(ids) > 300
    # Drains close the workers' connections too: a task that ran just before its ack met the
    # closed connection is redelivered and runs again (at-least-once; Celery's terminate-on-
    # connection-loss comes too late for a task of a few ms). Any other duplicate fails.
    assert not lost and not unexplained, (lost[:10], unexplained[:10])
    # Each drain closes the node's client connections: sends fail until the sender has reconnected to
    # another node and the queues the node led have their new leaders (measured 5.2 and 7.4 s at the
    # longest alone, 9 to 14 s beside the other lane of `make test`). A node's turn in the roll
    # (drain, stop, start, wait) takes a third of it; the others serve meanwhile, so sends stop for
    # less than half a turn, on a slow machine as on a fast one (its turns are slower too). A roll
    # that stopped every node at once would stop them for a whole turn.
    turn = roll_seconds / len(brokers)
    assert sender.longest_without_a_send() < turn / 2, (sender.longest_without_a_send(), turn)
    assert all(running_nodes(b) == {node_name(x) for x in brokers} for b in brokers)
    assert not any(json.loads(b.check_output("rabbitmq-diagnostics -q status --formatter json"))["is_under_maintenance"]
                   for b in brokers)


@pytest.mark.disrupts
def test_with_two_nodes_of_three_down_sends_fail_in_the_sender_and_confirmed_tasks_all_run(brokers, workers, clients):
    """Drill (c): the cluster loses its majority for 20 s under a steady sender, and a client that
    sat idle meanwhile sends once."""
    down = brokers[1:]
    idle = Background(clients[0], IDLE_CLIENT, "idle")
    with SteadySender(clients[0]) as sender:
        try:
            with idle:
                assert wait_until(lambda: clients[0].file(f"{idle.dir}/ready").exists, 30), "the idle client sent nothing"
                for broker in down:
                    broker.check_output("systemctl stop rabbitmq-server")
                stopped = time.monotonic()
                # pause_minority: the node left alone stops serving clients rather than accept writes.
                paused = wait_until(lambda: not listening(brokers[0], 5672), 30)
            status = workers_playbook("status")
            time.sleep(max(0.0, 20 - (time.monotonic() - stopped)))
        finally:
            for broker in down:
                broker.check_output("systemctl start rabbitmq-server")
        back = wait_until(lambda: running_nodes(brokers[0]) == {node_name(b) for b in brokers}, 120, 2)
        back_seconds = round(time.monotonic() - stopped, 1)
        time.sleep(5)
    outcome = sender.outcome
    lost, duplicated, unexplained = count_by_id(workers, [*outcome["ids"], idle.outcome["first"]], 120, outcome["published_again"])
    refused_while_down = [t for t in outcome["refused_at"] if t > 3]
    report("cluster-majority-lost", confirmed=len(outcome["ids"]), refused=len(outcome["refused_at"]), lost=len(lost),
           duplicated=len(duplicated), duplicated_unexplained=len(unexplained), longest_send=outcome["longest_send"],
           idle_client_send=idle.outcome["seconds"], longest_without_a_send=sender.longest_without_a_send(), back_within=back_seconds)
    assert paused, "the node left alone kept serving clients"
    assert status.returncode != 0 and all(f"{node_name(b)} is not running" in plain(status.stdout) for b in down), status.stdout[-3000:]
    assert back, running_nodes(brokers[0])
    # Celery's rpc:// backend blocked such a send until a node was back (the fleet's gives up
    # within the publish retry policy: measured 0.0 to 0.01 s here, 0.61 s on one node's URL).
    assert "OperationalError" in idle.outcome["second"] and idle.outcome["seconds"] < SEND_BOUND, idle.outcome
    assert refused_while_down, "no send failed in the sender while the majority was down"
    assert outcome["longest_send"] < SEND_BOUND, f"a send blocked the sender for {outcome['longest_send']} s"
    assert not lost and not unexplained, f"{len(lost)} confirmed tasks never ran: {lost[:10]}; ran twice unexplained: {unexplained[:10]}"
