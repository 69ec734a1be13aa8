"""A rolling restart under load (scenario `fleet`): no task lost or run twice, always a consumer.

The scenario's side effect leaves, in FLEET_ROLLING_LOAD on the first client, the load's files
(fleetapp.load: sent.json, samples.json, summary.json; roll-start and stop mark the roll), and
on every worker its process table from just before the roll and from just after it (before the
deploys that follow restart everything again). Each check fails if those are missing: no side
effect, no pass. A scenario without FLEET_ROLLING_LOAD runs no load: there each test is skipped,
visibly. The name sorts first, so these checks see the fleet as the roll left it.
"""

import json
import math
import os
from collections import Counter

import pytest
from conftest import NAME_PREFIX, PM, WORKER_GROUPS, celery_main_processes, run_python

pytestmark = pytest.mark.fleet_app

LOAD = os.environ.get("FLEET_ROLLING_LOAD")


@pytest.fixture
def load():
    if not LOAD:
        pytest.skip("the scenario runs no rolling load (FLEET_ROLLING_LOAD unset)")
    return LOAD


def load_file(client, name):
    found = client.file(f"{LOAD}/{name}")
    assert found.exists, f"{LOAD}/{name} is missing: did the side effect run?"
    return found


def process_table(worker, when):
    """The process table the side effect saved on `worker` just `when` (before/after) the roll."""
    saved = worker.file(f"{LOAD}-ps-{when}-roll")
    assert saved.exists, f"no process table from {when} the roll on {worker.backend.host}: did the side effect run?"
    return saved.content_string


@pytest.mark.sqs
def test_the_load_ran_and_every_task_ran_exactly_once(load, clients, workers):
    client = clients[0]
    sent = json.loads(load_file(client, "sent.json").content_string)
    summary = json.loads(load_file(client, "summary.json").content_string)
    completions = Counter()
    for worker in workers:
        log = worker.run("cat /var/lib/celery/fleetapp-executions.log")
        completions.update(line.split()[0] for line in log.stdout.splitlines() if line.strip())
    lost = sorted(task_id for task_id in sent if completions[task_id] == 0 or task_id in summary["not_ok"])
    duplicated = sorted(task_id for task_id in sent if completions[task_id] > 1)
    print(f"\nsent={len(sent)} ok={summary['ok']} lost={len(lost)} duplicated={len(duplicated)}"
          f" (longest task {summary['longest_task']} s, all results in {summary['results_seconds']} s,"
          f" served by {len(summary['workers'])} worker nodes)")
    assert len(sent) >= 300 and summary["sent"] == len(sent)
    # Each lost task with what is known of it: its runs and the outcome the client saw.
    assert lost == [] and duplicated == [], {"lost": {task_id: (completions[task_id], summary["not_ok"].get(task_id), sent[task_id])
                                                      for task_id in lost[:5]}, "duplicated": duplicated[:5]}
    assert summary["ok"] == len(sent)
    assert set(completions) <= set(sent), "a tracked task ran that the load never sent"


def mark_time(client, name):
    """When the side effect wrote one of the load's files (epoch seconds, its mtime)."""
    return float(client.check_output(f"stat -c %.3Y {load_file(client, name).path}"))


def roll_marks(client):
    """When the roll began and ended."""
    return mark_time(client, "roll-start"), mark_time(client, "stop")


def test_every_queue_kept_a_consumer_throughout_the_roll(load, clients):
    client = clients[0]
    roll_start, roll_end = roll_marks(client)
    samples = json.loads(load_file(client, "samples.json").content_string)
    during = [s for s in samples if roll_start <= s["at"] <= roll_end]
    print(f"\nroll took {roll_end - roll_start:.1f} s; {len(during)} consumer samples during it")
    # Watched from before the roll to its end, about every 1.3 s: a host's drain and restart
    # take several seconds, so a gap in consumers would show in at least one sample.
    assert samples[0]["at"] <= roll_start and samples[-1]["answered"] >= roll_end - 3
    assert len(during) >= (roll_end - roll_start) / 3, len(during)
    empty = [s for s in during if min(s["consumers"].values()) < 1]
    assert empty == [], empty[:3]


def stops_and_readies(worker, since, until):
    """{worker group instance: ([times it began a warm stop], [times it logged `ready.`])} from
    the host's journal between two epoch times: journald stamps each line as it arrives, and every
    container reads the same clock. Celery writes `worker: Warm shutdown (MainProcess)` the moment
    SIGTERM reaches it (it stops consuming then) and `<node> ready.` once it consumes its queues."""
    found = {f"worker-{group}": ([], []) for group in WORKER_GROUPS}
    journal = worker.check_output(f"journalctl --no-pager --output=json --since=@{int(since)} --until=@{int(until) + 1}"
                                  f" --unit='{NAME_PREFIX}@worker-*.service'")
    for entry in map(json.loads, journal.splitlines()):
        at, instance = int(entry["__REALTIME_TIMESTAMP"]) / 1e6, entry.get("SYSLOG_IDENTIFIER", "").removeprefix(f"{NAME_PREFIX}-")
        message = entry.get("MESSAGE") if isinstance(entry.get("MESSAGE"), str) else ""
        if instance in found and since <= at <= until:
            if message.strip() == "worker: Warm shutdown (MainProcess)":
                found[instance][0].append(at)
            elif message.endswith(" ready."):
                found[instance][1].append(at)
    return found


def test_each_host_consumed_again_before_the_next_host_began_to_stop(load, clients, workers):
    """The roll's promise, from what the workers logged as it happened: in roll order, every
    worker group of a host is consuming again (`ready.` after its warm stop) before the first
    group of the next host begins to stop, and the last host's before the roll ends. A gap of any
    length fails, however short. Read up to the load's end, before the deploys restart again."""
    if PM != "systemd":
        pytest.skip("supervisor's log gives Celery's warm-stop line no time; the systemd journal does (scenario fleet)")
    roll_start, roll_end = roll_marks(clients[0])
    load_end = mark_time(clients[0], "summary.json")
    hosts = []
    for worker in workers:
        events = stops_and_readies(worker, roll_start, load_end)
        for instance, (stops, _) in events.items():
            assert stops and stops[0] < roll_end, (worker.backend.host, instance, "began no warm stop during the roll")
        began = min(stops[0] for stops, _ in events.values())
        consuming = max(next((at for at in readies if at > stops[0]), math.inf) for stops, readies in events.values())
        hosts.append((began, consuming, worker.backend.host))
    hosts.sort()
    print("\n" + "\n".join(f"{name}: began to stop at +{began - roll_start:.2f} s, all consuming again at +{consuming - roll_start:.2f} s"
                           for began, consuming, name in hosts) + f"\nroll ended at +{roll_end - roll_start:.2f} s")
    assert len(hosts) >= 2, hosts
    deadlines = [(began, f"{name} began to stop") for began, _, name in hosts[1:]] + [(roll_end, "the roll ended")]
    for (_, consuming, name), (deadline, what) in zip(hosts, deadlines):
        assert consuming < deadline, f"{what} {consuming - deadline:.2f} s before every worker group of {name} consumed again"


@pytest.mark.sqs
def test_the_roll_restarted_every_worker_process(load, workers):
    """Process tables saved just before and just after the roll, on every worker host: every
    Celery main process (each worker group's, and beat) is a new one, and as many run as before.
    The deploys that the side effect runs later restart everything too: they cannot hide a
    roll that restarted nothing, since the tables were taken before them."""
    for worker in workers:
        before, after = process_table(worker, "before"), process_table(worker, "after")
        for kind in ("worker", "beat"):
            old = set(celery_main_processes(worker, kind, before))
            new = set(celery_main_processes(worker, kind, after))
            assert len(old) == len(new) and not old & new, (worker.backend.host, kind, sorted(old), sorted(new))
        assert len(celery_main_processes(worker, "worker", after)) == len(WORKER_GROUPS), (
            f"{worker.backend.host}: not every worker group ran right after the roll")


def test_the_queues_are_empty_after_the_roll(load, clients):
    queues = sorted(set(WORKER_GROUPS.values()))
    counts = json.loads(run_python(clients[0], (
        "import json; from fleetapp import app\n"
        "with app.connection_for_read() as conn:\n"
        "    channel = conn.default_channel\n"
        f"    print(json.dumps({{q: channel.queue_declare(q, passive=True).message_count for q in {queues!r}}}))"
    )))
    assert counts == dict.fromkeys(queues, 0), counts
