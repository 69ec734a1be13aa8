"""Report one host's Celery processes: state, main PID, uptime, and for workers a ping.

Run by the celery_worker role through the app's launcher (`bin/run python -c ...`), as root:

    APP MANAGER PREFIX HOSTNAME INSTANCE...

MANAGER is supervisor or systemd; each INSTANCE is worker-<group> or beat, the supervisor
program PREFIX-INSTANCE or the unit PREFIX@INSTANCE.service. Prints one line per process and
exits 1, naming them, when a process is not running or a worker node does not answer.
"""

import subprocess
import sys

from celery.app.utils import find_app

app_name, manager, prefix, hostname, *instances = sys.argv[1:]


def state_and_pid(instance):
    if manager == "supervisor":
        out = subprocess.run(["supervisorctl", "status", f"{prefix}-{instance}"], capture_output=True, text=True).stdout.split()
        state = out[1] if len(out) > 1 else "UNKNOWN"
        return state, int(out[3].rstrip(",")) if state == "RUNNING" else 0
    show = subprocess.run(["systemctl", "show", "-p", "ActiveState", "-p", "MainPID", f"{prefix}@{instance}.service"],
                          capture_output=True, text=True).stdout
    props = dict(line.split("=", 1) for line in show.splitlines() if "=" in line)
    state = props.get("ActiveState", "unknown")
    return ("RUNNING" if state == "active" else state.upper()), int(props.get("MainPID", "0"))


def uptime(pid):
    out = subprocess.run(["ps", "-o", "etimes=", "-p", str(pid)], capture_output=True, text=True).stdout.strip()
    return f"{int(out)} s" if out else "?"


nodes = [f"{i[len('worker-'):]}@{hostname}" for i in instances if i.startswith("worker-")]
answered = find_app(app_name).control.inspect(destination=nodes, timeout=3).ping() or {} if nodes else {}
trouble = []
for instance in instances:
    state, pid = state_and_pid(instance)
    line = f"{instance}: {state}" + (f", pid {pid}, up {uptime(pid)}" if pid else "")
    if instance.startswith("worker-"):
        node = f"{instance[len('worker-'):]}@{hostname}"
        line += ", ping " + ("ok" if node in answered else "NO ANSWER")
        if node not in answered:
            trouble.append(f"{node} does not answer")
    if state != "RUNNING":
        trouble.append(f"{instance} is {state}")
    print(line)
if trouble:
    sys.exit(f"{hostname}: " + "; ".join(trouble))
