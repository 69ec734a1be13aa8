#!/usr/bin/env python3
"""The throughput benchmark's client, on the control node: send N `add` tasks with `delay`,
collect every result with `get`, print tasks per second as JSON.

    throughput_client.py fleet|stock N

`fleet` configures the demo app as the fleet's processes are (celery_fleet: publisher confirms
on RabbitMQ and the rest of the environment file); `stock` leaves Celery's defaults, with only
the broker and result backend from the environment, as the tutorial does.
"""

import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "app" / "src"), str(ROOT / "roles" / "celery_app" / "files")]

from fleetapp.celery import app  # noqa: E402
from fleetapp.tasks import add  # noqa: E402

mode, count = sys.argv[1], int(sys.argv[2])
if mode == "fleet":
    import celery_fleet

    celery_fleet.configure(app)
add.delay(0, 0).get(timeout=60)  # connections up, workers answering: not part of the figure
started = time.monotonic()
results = [add.delay(i, i) for i in range(count)]
sent = time.monotonic() - started
values = [result.get(timeout=300) for result in results]
elapsed = time.monotonic() - started
assert values == [2 * i for i in range(count)], "wrong results"
print(json.dumps({"tasks": count, "seconds": round(elapsed, 3), "send_seconds": round(sent, 3),
                  "per_second": round(count / elapsed, 1)}))
