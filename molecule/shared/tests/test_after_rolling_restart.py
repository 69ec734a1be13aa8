"""A rolling restart under load (scenario `fleet`): no task lost or run twice, always a consumer.

The scenario's side effect leaves, in FLEET_ROLLING_LOAD on the first client, the load's files
(fleetapp.load: sent.json, samples.json, summary.json; roll-start and stop mark the roll), and
on every worker its process table from just before the roll and from just after it (before the
deploys that follow restart everything again). Each check fails if those are missing: no side
effect, no pass. A scenario without FLEET_ROLLING_LOAD runs no load: there each test is skipped,
visibly. The name sorts first, so these checks see the fleet as the roll left it.
"""

import json
import os
from collections import Counter

import pytest
from conftest import WORKER_GROUPS, celery_main_processes, run_python

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


def test_every_queue_kept_a_consumer_throughout_the_roll(load, clients):
    client = clients[0]
    roll_start, roll_end = (
        float(client.check_output(f"stat -c %.3Y {load_file(client, name).path}")) for name in ("roll-start", "stop")
    )
    samples = json.loads(load_file(client, "samples.json").content_string)
    during = [s for s in samples if roll_start <= s["at"] <= roll_end]
    print(f"\nroll took {roll_end - roll_start:.1f} s; {len(during)} consumer samples during it")
    # Watched from before the roll to its end, about every 1.3 s: a host's drain and restart
    # take several seconds, so a gap in consumers would show in at least one sample.
    assert samples[0]["at"] <= roll_start and samples[-1]["answered"] >= roll_end - 3
    assert len(during) >= (roll_end - roll_start) / 3, len(during)
    empty = [s for s in during if min(s["consumers"].values()) < 1]
    assert empty == [], empty[:3]


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
