"""Load a fleet with tasks and watch its consumers, for rolling-restart tests and drills.

    python -m fleetapp.load --out DIR [--tasks 300] [--slow-fraction 0.2] [--slow-seconds 2,6]
                            [--queues celery,long] [--watch-until DIR/stop] [--deadline 600]

Sends ``--tasks`` ``tracked`` tasks, each with a unique id: most instant, ``--slow-fraction`` of
them sleeping between the ``--slow-seconds`` bounds, spread over ``--queues``. While results
come in, a thread asks the workers about every second which queues they consume
(``inspect active_queues``), until the file ``--watch-until`` exists. Writes to DIR:
``sent.json`` (task id -> queue, as soon as all are sent), ``samples.json`` (every consumer
sample) and, last, ``summary.json``. Exits 0 once every result is in, whatever they are: judging
them is the caller's job.
"""

import argparse
import json
import random
import threading
import time
import uuid
from pathlib import Path

from fleetapp import app
from fleetapp.tasks import tracked


def watch_consumers(queues, stop_file, samples, stop_event):
    """Sample, about every second, how many worker nodes consume each queue (none on a broker
    without remote control, such as SQS: there is no one to ask)."""
    with app.connection_for_write() as connection:
        if "fanout" not in connection.transport.implements.exchange_type:
            return
    # A broadcast waits its whole timeout for replies: 1 s keeps samples about 1.3 s apart.
    inspector = app.control.inspect(timeout=1.0)
    while not stop_event.is_set() and not (stop_file and Path(stop_file).exists()):
        asked = time.time()
        replies = inspector.active_queues() or {}
        counts = {q: sum(1 for node_queues in replies.values() if q in {each["name"] for each in node_queues}) for q in queues}
        # `at` is when the question went out: the replies describe the moments after it.
        samples.append({"at": asked, "answered": time.time(), "nodes": len(replies), "consumers": counts})
        time.sleep(0.25)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fleetapp.load", description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--tasks", type=int, default=300)
    parser.add_argument("--slow-fraction", type=float, default=0.2)
    parser.add_argument("--slow-seconds", default="2,6", help="bounds of a slow task's duration: LOW,HIGH")
    parser.add_argument("--queues", default="celery", help="comma-separated queues to spread the tasks over")
    parser.add_argument("--watch-until", default=None, help="watch consumers until this file exists")
    parser.add_argument("--deadline", type=float, default=600.0, help="seconds to wait for every result")
    args = parser.parse_args(argv)

    args.out.mkdir(parents=True, exist_ok=True)
    queues = [q for q in args.queues.split(",") if q]
    low, high = (float(x) for x in args.slow_seconds.split(","))
    rng = random.Random()

    samples: list = []
    stop_event = threading.Event()
    watcher = threading.Thread(target=watch_consumers, args=(queues, args.watch_until, samples, stop_event), daemon=True)
    watcher.start()

    started = time.time()
    sent, results = {}, {}
    for n in range(args.tasks):
        task_id = str(uuid.uuid4())
        queue = queues[n % len(queues)]
        seconds = round(rng.uniform(low, high), 2) if rng.random() < args.slow_fraction else 0
        results[task_id] = tracked.apply_async((seconds, task_id), task_id=task_id, queue=queue)
        sent[task_id] = {"queue": queue, "seconds": seconds}
    (args.out / "sent.json").write_text(json.dumps(sent))
    sent_at = time.time()

    outcome = {}
    deadline = started + args.deadline
    for task_id, result in results.items():
        try:
            value = result.get(timeout=max(1.0, deadline - time.time()), propagate=False)
            outcome[task_id] = {"state": result.state, "ok": result.successful() and value == task_id, "worker": result.worker}
        except Exception as error:  # a timeout: the task never finished
            outcome[task_id] = {"state": "MISSING", "ok": False, "error": type(error).__name__}
    finished = time.time()

    if args.watch_until:
        while not Path(args.watch_until).exists() and time.time() < deadline:
            time.sleep(0.5)
    stop_event.set()
    watcher.join(timeout=10)
    (args.out / "samples.json").write_text(json.dumps(samples))
    summary = {
        "sent": len(sent),
        "ok": sum(1 for o in outcome.values() if o["ok"]),
        "not_ok": {k: v for k, v in outcome.items() if not v["ok"]},
        "longest_task": max((s["seconds"] for s in sent.values()), default=0),
        "send_seconds": round(sent_at - started, 2),
        "results_seconds": round(finished - started, 2),
        "workers": sorted({o.get("worker") for o in outcome.values() if o.get("worker")}),
    }
    (args.out / "summary.json").write_text(json.dumps(summary))
    print(json.dumps({k: summary[k] for k in ("sent", "ok", "longest_task", "results_seconds")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
