#!/usr/bin/python
"""What the process manager runs of the host's apps, against what role celery_worker wants: one
read per host.

    - celery_process_state:
        query: QUERY

QUERY: manager (supervisor or systemd), unit_dir (systemd), log_dir (supervisor), reload (systemd
units were written or removed this run), logs (a number: report on the suspects and the processes
not running, with that many log lines), suspects (processes to report on), ready ({process:
node}: the worker groups whose readiness to read; a broker without remote control, SQS, cannot
answer `inspect ping`, so a group is ready when its process runs and its log says Celery's
`<node> ready.` since that process started), steady ({names, seconds}), and apps, one entry per
app: prefix (what the names of the app's processes start with under the manager), wanted (the
names of the processes that must run), inputs (files every process of the app reads at start:
the environment file, the launcher, the `current` link), process_inputs (per process, files only
it reads: Flower's configuration). With `find`, apps gives each app's prefix under either manager
({supervisor, systemd}) and only those are read.

Every process is named as its manager names it (the fleet's model names them; this module only
matches them by their app's prefix): a supervisor program, or a systemd unit, an instance of the
app's template unit `<prefix>.service`. Returns each found
process's state, main PID and start time, and what converges the host: `apply` (supervisor
programs to load, reload or forget: new, changed or removed files, whatever an earlier run left
undone), `daemon_reload`, `stop` (systemd units no longer wanted), `restart` (running, but started
before one of its inputs changed: a run that wrote them failed before the restart), `start`
(stopped, exited, failed or not enabled). With `ready`, `not_ready`: those not (yet) ready. With
`steady`, `unsteady`: those of the named processes that did not stay up, on one PID, until `seconds`
after their start (a process that dies at start is restarted by its manager and looks running
between tries; worker groups are proven by answering instead, beat and Flower by this). With
`logs`, `report`: for each suspect and each wanted process not running, a line naming it and its
state, then the last lines of its log. With `find`: `found`, the apps' supervisor programs and
systemd units on the host under either manager, and their template units. With `known` (app
names) alone: `unnamed`, the fleet's processes of any other app, by app (unnamed_apps).
Reads only: supervisorctl's `reread` compares the files with what supervisord loaded and
applies nothing. Runs with the host's python3, not the app's, so it works before any release.
"Started before one of its inputs changed" is the fleet's one rule for a process that runs what
was written (module_utils/fleet_started.py; fleet_service_state applies it to the brokers and nginx).
"""

DOCUMENTATION = r"""
module: celery_process_state
short_description: What the process manager runs of the host's apps, against what role celery_worker wants
description:
  - Reads, never changes; the module's own docstring describes the query and the result.
options:
  query:
    description: The processes wanted and their inputs, by app (role celery_worker's celery_worker_state_query).
    type: dict
    required: true
"""

import os
import re
import subprocess
import time

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.fleet_started import changed_at, runs_older, started_at

RUNNING = {"RUNNING", "STARTING"}
# How much of a supervisor log file the readiness check reads, from its end.
LOG_TAIL_BYTES = 1 << 20


def run(*argv):
    return subprocess.run(argv, capture_output=True, text=True).stdout


def supervisor(query):
    prefix = query["prefix"]
    reread = dict(re.findall(r"^(\S+): (available|changed|disappeared)$", run("supervisorctl", "reread"), re.M))
    found = {}
    for line in run("supervisorctl", "status").splitlines():
        fields = line.split(None, 2)
        if len(fields) >= 2 and fields[0].startswith(prefix):
            pid = re.search(r"\bpid (\d+),", line)
            found[fields[0]] = {"state": fields[1], "pid": int(pid.group(1)) if pid else 0, "detail": fields[2] if len(fields) > 2 else ""}
    apply = [name for name in reread if name.startswith(prefix)]
    apply += [name for name in query["wanted"] if name not in found and name not in apply]
    return found, apply, False, []


def systemd(query):
    prefix = query["prefix"]
    listed = run("systemctl", "list-units", "--all", "--plain", "--no-legend", f"{prefix}*.service").split("\n")
    units = sorted({line.split()[0] for line in listed if line.strip()} | set(query["wanted"]))
    properties = "Id,LoadState,ActiveState,SubState,UnitFileState,NeedDaemonReload,MainPID"
    found, reload = {}, bool(query.get("reload"))
    for block in run("systemctl", "show", f"--property={properties}", *units).split("\n\n"):
        show = dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
        if not show.get("Id", "").startswith(prefix):
            continue
        active = show["ActiveState"] == "active"
        found[show["Id"]] = {"state": "RUNNING" if active else show["ActiveState"].upper(),
                             "pid": int(show["MainPID"]) if active else 0, "detail": show["SubState"],
                             "enabled": show["UnitFileState"] == "enabled"}
        reload = reload or show["NeedDaemonReload"] == "yes"
    unwanted = [name for name, process in found.items() if name not in query["wanted"] and process["state"] == "RUNNING"]
    return found, [], reload, unwanted


def found_files(query):
    """The apps' supervisor programs and systemd units on the host, under either manager, by their
    manager's name, and the apps' systemd template units (read before any file is written: what
    the run may have to stop and remove). Only a worker group's, beat's or Flower's program counts
    as the fleet's: another program that starts with an app's prefix is left alone."""
    conf_dir, unit_dir = query.get("conf_dir", "/etc/supervisor/conf.d"), query.get("unit_dir", "/etc/systemd/system")
    listed = {path: sorted(os.listdir(path)) if os.path.isdir(path) else [] for path in (conf_dir, unit_dir)}
    found = {"supervisor": [], "systemd": [], "systemd_templates": []}
    for app in query["apps"]:
        program, unit = re.escape(app["supervisor"]), re.escape(app["systemd"])
        found["supervisor"] += [name[:-len(".conf")] for name in listed[conf_dir] if re.fullmatch(program + r"(worker-.+|beat|flower)\.conf", name)]
        found["systemd"] += [name[:-len(".d")] for name in listed[unit_dir] if re.fullmatch(unit + r".+\.service\.d", name)]
        found["systemd_templates"] += [name for name in listed[unit_dir] if name == app["systemd"] + ".service"]
    return found


# The first line a fleet's program or unit drop-in has after ansible_managed names its app
# (templates/supervisor-program.conf.j2, systemd-process.conf.j2).
FLEET_HEADER = re.compile(r"^[;#] (?:Worker group `[^`]*` of|Beat of|Flower of) ([^\s:,]+)", re.M)


def fleet_process(path):
    """(app, command) of a program or unit drop-in the fleet wrote, or None for any other file."""
    try:
        with open(path) as handle:
            text = handle.read(1 << 16)
    except OSError:
        return None
    header, command = FLEET_HEADER.search(text), re.search(r"^(?:command|ExecStart)=(.+)$", text, re.M)
    return (header.group(1), command.group(1).split()) if header and command else None


def unnamed_apps(query):
    """The fleet's programs and units on the host whose app is none of query["known"] (every app
    the inventory names, present or absent): an app renamed or taken out of the inventory. Each by
    app, with its processes by their manager's name and, read from their command lines, what
    counts the tasks that wait for it: its launcher's root, entry point and queues."""
    conf_dir, unit_dir = query.get("conf_dir", "/etc/supervisor/conf.d"), query.get("unit_dir", "/etc/systemd/system")
    candidates = []
    if os.path.isdir(conf_dir):
        candidates += [(name[:-len(".conf")], os.path.join(conf_dir, name)) for name in sorted(os.listdir(conf_dir))
                       if name.startswith("celery-") and name.endswith(".conf")]
    if os.path.isdir(unit_dir):
        candidates += [(name[:-len(".d")], os.path.join(unit_dir, name, "process.conf")) for name in sorted(os.listdir(unit_dir))
                       if name.startswith("celery-") and name.endswith(".service.d")]
    apps = {}
    for process, path in candidates:
        found = fleet_process(path)
        if found is None or found[0] in query["known"]:
            continue
        name, argv = found
        app = apps.setdefault(name, {"name": name, "processes": [], "root": "", "entry_point": "", "queues": []})
        app["processes"].append(process)
        if argv and argv[0].endswith("/bin/run"):
            app["root"] = argv[0][:-len("/bin/run")]
        for arg in argv:
            if arg.startswith("--app="):
                app["entry_point"] = arg[len("--app="):]
            elif arg.startswith("--queues="):
                app["queues"] += [q for q in arg[len("--queues="):].split(",") if q not in app["queues"]]
    return list(apps.values())


def unit_files(query, name):
    unit_dir = query.get("unit_dir", "/etc/systemd/system")
    return [os.path.join(unit_dir, query["prefix"] + ".service"), os.path.join(unit_dir, name + ".d", "process.conf")]


def converge(query):
    found, apply, reload, stop = (systemd if query["manager"] == "systemd" else supervisor)(query)
    inputs = changed_at(query["inputs"])
    restart, start = [], []
    for name in query["wanted"]:
        process = found.get(name)
        if name in apply or process is None:
            continue
        if process["state"] not in RUNNING:
            start.append(name)
            continue
        own = changed_at(query.get("process_inputs", {}).get(name, []))
        newest = max(inputs, own, changed_at(unit_files(query, name)) if query["manager"] == "systemd" else 0.0)
        began = started_at(process["pid"]) if process["pid"] else None
        process["started"] = began
        if runs_older(began, newest):
            restart.append(name)
        if not process.get("enabled", True):
            start.append(name)  # systemd: running but not enabled at boot (a restart does not enable)
    return {"processes": found, "apply": apply, "daemon_reload": reload, "stop": stop,
            "restart": restart, "start": start}


def logged_ready(query, name, node, since):
    """Whether worker `name` logged Celery's `<node> ready.` at or after `since` (its start)."""
    text = f"{node} ready."
    if query["manager"] == "systemd":
        journal = run("journalctl", "--no-pager", "--output=cat", f"--since=@{int(since)}", f"--unit={name}")
        return any(line.endswith(text) for line in journal.splitlines())
    path = os.path.join(query["log_dir"], f"{name}.log")
    try:
        with open(path, "rb") as log:
            log.seek(max(0, os.path.getsize(path) - LOG_TAIL_BYTES))
            lines = log.read().decode(errors="replace").splitlines()
    except OSError:
        return False
    # Celery's log lines start with the local time: `[2026-11-29 19:30:00,123: INFO/MainProcess]`.
    for line in reversed(lines):
        if line.endswith(text):
            try:
                logged = time.mktime(time.strptime(line[1:20], "%Y-%m-%d %H:%M:%S"))
            except ValueError:
                continue
            return logged + 1 >= since
    return False


def not_ready(query, processes):
    waiting = []
    for name, node in query.get("ready", {}).items():
        process = processes.get(name, {})
        began = started_at(process["pid"]) if process.get("state") == "RUNNING" and process.get("pid") else None
        if began is None or not logged_ready(query, name, node, began):
            waiting.append(name)
    return waiting


def unsteady(query, names, seconds):
    """The `names` that stopped, or changed PID, before they had run `seconds`. supervisor holds a
    program in STARTING until it has run its startsecs (then RUNNING, or BACKOFF if it died):
    waited out; every other state fails, as does a deadline for a program that never settles."""
    first, pending, failed = {}, set(names), []
    read = systemd if query["manager"] == "systemd" else supervisor
    deadline = time.time() + 3 * seconds + 10
    while pending:
        found = read(query)[0]
        for name in sorted(pending):
            process = found.get(name, {})
            if process.get("state") == "STARTING" and time.time() < deadline:
                continue
            began = started_at(process["pid"]) if process.get("state") == "RUNNING" and process.get("pid") else None
            if began is None or first.setdefault(name, process["pid"]) != process["pid"]:
                failed.append(name)
                pending.discard(name)
            elif time.time() - began >= seconds:
                pending.discard(name)
        if pending:
            time.sleep(0.5)
    return sorted(failed)


def log_tail(query, name, lines):
    if query["manager"] == "systemd":
        return run("journalctl", "--no-pager", "--output=cat", f"--lines={lines}", f"--unit={name}")
    try:
        with open(os.path.join(query["log_dir"], f"{name}.log"), errors="replace") as log:
            return "".join(log.readlines()[-lines:])
    except OSError as error:
        return f"(no log: {error})"


def report(query, state):
    """The suspects named by the caller, and every wanted process that is not running now."""
    lines = []
    down = [name for name in query["wanted"] if state["processes"].get(name, {}).get("state") != "RUNNING"]
    for name in dict.fromkeys(query.get("suspects", []) + state.get("not_ready", []) + down):
        process = state["processes"].get(name, {"state": "NOT LOADED", "detail": ""})
        lines.append(f"{name}: {process['state']} {process.get('detail', '')}".rstrip() + "; its last log lines:")
        lines += ["    " + line for line in log_tail(query, name, query["logs"]).splitlines()]
    return lines


def app_state(query):
    """One app's state (`query`: the common keys with the app's own)."""
    state = converge(query)
    if query.get("ready"):
        state["not_ready"] = not_ready(query, state["processes"])
    if query.get("steady"):
        state["unsteady"] = unsteady(query, query["steady"]["names"], query["steady"]["seconds"])
    if query.get("logs"):
        state["report"] = report(query, state)
    return state


def host_state(query):
    """Every app's state, merged (each process by its manager's name)."""
    common = {key: value for key, value in query.items() if key != "apps"}
    merged = {"processes": {}, "apply": [], "daemon_reload": False, "stop": [], "restart": [], "start": [],
              "not_ready": [], "unsteady": [], "report": []}
    for app in query["apps"]:
        app_query = dict(common, **app)
        # The caller names processes of every app; each app's part is its wanted processes'.
        own = set(app["wanted"])
        if "suspects" in common:
            app_query["suspects"] = [name for name in common["suspects"] if name in own]
        if "ready" in common:
            app_query["ready"] = {name: node for name, node in common["ready"].items() if name in own}
        if "steady" in common:
            app_query["steady"] = {"names": [name for name in common["steady"]["names"] if name in own],
                                   "seconds": common["steady"]["seconds"]}
        for key, value in app_state(app_query).items():
            if key == "processes":
                merged[key].update(value)
            elif key == "daemon_reload":
                merged[key] = merged[key] or value
            else:
                merged[key] += value
    return merged


def main():
    module = AnsibleModule(argument_spec={"query": {"type": "dict", "required": True}}, supports_check_mode=True)
    query = module.params["query"]
    if query.get("find"):
        module.exit_json(changed=False, found=found_files(query))
    if "known" in query:
        module.exit_json(changed=False, unnamed=unnamed_apps(query))
    module.exit_json(changed=False, **host_state(query))


if __name__ == "__main__":
    main()
