"""Report one host's part of the fleet's health, and fail naming what is wrong.

Run by the celery_worker role through the app's launcher (`bin/run python -c ...`), as root, so
it reaches the broker with the app's own settings and credentials:

    APP MANAGER HOSTNAME QUEUES BEAT_SCHEDULE BEAT_STALE PROCESSES

MANAGER is supervisor or systemd; PROCESSES is a JSON list of the host's processes of the app,
each its manager's name (the supervisor program or the systemd unit), its instance
(worker-<group>, beat or flower) and a worker group's node (<group>@<host>). QUEUES (comma-separated) are the
queues this host's worker groups consume (with SQS: waiting, in flight and delayed, from the
queue's attributes; and no ping: SQS carries no remote control). BEAT_SCHEDULE is beat's schedule file when beat runs
here (else "-"): beat writes it as it ticks, so its age says when beat last worked; older than
BEAT_STALE seconds is a failure. Prints one line per check and exits 1, naming every failing
part: the broker, a worker group's node, a process, beat.
"""

import glob
import json
import os
import subprocess
import sys
import time

from celery.app.utils import find_app

app_name, manager, hostname, queues, beat_schedule, beat_stale, processes = sys.argv[1:]
processes = json.loads(processes)
app = find_app(app_name)
trouble = []


def state_and_pid(name):
    if manager == "supervisor":
        out = subprocess.run(["supervisorctl", "status", name], capture_output=True, text=True).stdout.split()
        state = out[1] if len(out) > 1 else "UNKNOWN"
        return state, int(out[3].rstrip(",")) if state == "RUNNING" else 0
    show = subprocess.run(["systemctl", "show", "-p", "ActiveState", "-p", "MainPID", name],
                          capture_output=True, text=True).stdout
    props = dict(line.split("=", 1) for line in show.splitlines() if "=" in line)
    state = props.get("ActiveState", "unknown")
    return ("RUNNING" if state == "active" else state.upper()), int(props.get("MainPID", "0"))


def uptime(pid):
    out = subprocess.run(["ps", "-o", "etimes=", "-p", str(pid)], capture_output=True, text=True).stdout.strip()
    return f"{int(out)} s" if out else "?"


def depth(connection, queue):
    """What QUEUE holds, as the broker counts it: a line's end."""
    channel = connection.default_channel
    driver = connection.transport.driver_type
    if driver == "redis":
        return f"{channel._size(queue)} waiting"  # kombu's own count over the queue's priority lists
    if driver == "sqs":
        # SQS's own (approximate) counts: waiting, received and not yet acknowledged, delayed.
        url = channel._resolve_queue_url(queue)
        counts = channel.sqs(queue=channel.canonical_queue_name(queue)).get_queue_attributes(
            QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible",
                                          "ApproximateNumberOfMessagesDelayed"])["Attributes"]
        return (f"{counts['ApproximateNumberOfMessages']} waiting, {counts['ApproximateNumberOfMessagesNotVisible']} in flight, "
                f"{counts['ApproximateNumberOfMessagesDelayed']} delayed")
    declared = channel.queue_declare(queue=queue, passive=True)
    return f"{declared.message_count} waiting, {declared.consumer_count} consumers"


# The broker, with the app's own URL and credentials (shown without the password).
broker = app.connection_for_write()
where = broker.as_uri()
try:
    broker.ensure_connection(max_retries=1, timeout=5)
    print(f"broker {where}: reachable")
    for queue in filter(None, queues.split(",")):
        print(f"queue {queue}: {depth(broker, queue)}")
    reachable = True
except Exception as error:  # noqa: BLE001 - any failure to reach it is the finding
    print(f"broker {where}: UNREACHABLE ({type(error).__name__}: {error})")
    trouble.append(f"the broker {where} is unreachable")
    reachable = False
finally:
    broker.release()

# Remote control needs a fanout exchange: SQS has none, so its workers are not pinged.
pingable = "fanout" in broker.transport.implements.exchange_type
nodes = [process["node"] for process in processes if process.get("node")]
answered = (app.control.inspect(destination=nodes, timeout=3).ping() or {}) if nodes and reachable and pingable else {}
for process in processes:
    instance, node = process["instance"], process.get("node")
    state, pid = state_and_pid(process["name"])
    line = f"{instance}: {state}" + (f", pid {pid}, up {uptime(pid)}" if pid else "")
    if node and pingable:
        line += ", ping " + ("ok" if node in answered else "NO ANSWER")
        if node not in answered:
            trouble.append(f"worker group {node.split('@')[0]} ({node}) does not answer")
    if state != "RUNNING":
        trouble.append(f"{instance} is {state}")
    print(line)

if beat_schedule != "-":
    files = glob.glob(glob.escape(beat_schedule) + "*")
    age = time.time() - max(os.stat(f).st_mtime for f in files) if files else None
    print(f"beat: last tick {'never' if age is None else f'{age:.0f} s ago'}")
    if age is None or age > float(beat_stale):
        trouble.append(f"beat has not ticked for {'ever' if age is None else f'{age:.0f} s'} (more than {beat_stale} s)")

if trouble:
    sys.exit(f"{hostname}: " + "; ".join(trouble))
