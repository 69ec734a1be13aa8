"""Tasks: the tutorial's ``add``, and the probes the fleet's tests and deploys rely on."""

import json
import socket
import time
from pathlib import Path

from fleetapp import __version__
from fleetapp.celery import app


@app.task
def add(x, y):
    return x + y


@app.task
def hostname():
    """Name of the host whose worker ran this task: proves where a task was executed."""
    return socket.gethostname()


@app.task
def version():
    """Version of the app the worker runs: proves which release a host serves."""
    return __version__


@app.task
def sleep(seconds, token=None):
    """Hold a worker for ``seconds``; ``token`` comes back so callers can match results."""
    time.sleep(seconds)
    return token


@app.task(ignore_result=True)
def heartbeat():
    """Sent by beat on its schedule: records on the worker's host when and where it last ran."""
    record = {"host": socket.gethostname(), "at": time.time()}
    path = Path.home() / "fleetapp-heartbeat.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record))
    tmp.replace(path)
    return record


@app.task(bind=True)
def tracked(self, seconds, token=None):
    """Like ``sleep``, and logs each completed run on the worker's host (its id, the host, when it
    started, in seconds since the epoch, and 1 when the broker redelivered it, else 0), so a load
    test can count how many times every task ran, across all workers, how late a countdown task
    started, and tell a redelivery (a worker's ack lost with its connection) from a second send."""
    started = time.time()
    time.sleep(seconds)
    redelivered = int(bool((self.request.delivery_info or {}).get("redelivered")))
    line = f"{self.request.id} {socket.gethostname()} {started:.3f} {redelivered}\n"
    # One short O_APPEND write per run: lines from concurrent pool processes never interleave.
    with open(Path.home() / "fleetapp-executions.log", "a", encoding="ascii") as log:
        log.write(line)
    return token
