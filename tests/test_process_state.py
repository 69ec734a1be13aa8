"""The process state read of roles/celery_worker/library/celery_process_state.py (readiness without
remote control, restarts of what runs an older input, beat and Flower that must stay up) and the
fleet's one rule for "runs what was written" (plugins/module_utils/fleet_started.py)."""

import importlib.util
import os
import stat
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load(name, path):
    spec = importlib.util.spec_from_file_location(name, ROOT / path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


# As Ansible ships them to a host: the project's module_utils under ansible.module_utils.
fleet_started = load("ansible.module_utils.fleet_started", "plugins/module_utils/fleet_started.py")
process_state = load("celery_process_state", "roles/celery_worker/library/celery_process_state.py")
logged_ready = process_state.logged_ready

NODE = "long@worker1"


def celery_line(at, message):
    """A line as Celery logs it: local time, level, process."""
    return time.strftime("[%Y-%m-%d %H:%M:%S", time.localtime(at)) + f",123: INFO/MainProcess] {message}\n"


def test_supervisor_log_counts_only_a_ready_line_written_since_the_start(tmp_path):
    query = {"manager": "supervisor", "prefix": "celery-fleetapp-", "log_dir": str(tmp_path)}
    log = tmp_path / "celery-fleetapp-worker-long.log"
    started = time.time()
    # The previous process's ready line, and the new one's start: not ready yet.
    log.write_text(celery_line(started - 60, f"{NODE} ready.") + celery_line(started, "Connected to sqs://"))
    assert not logged_ready(query, "celery-fleetapp-worker-long", NODE, started)
    # Another node's line does not count either.
    with log.open("a") as f:
        f.write(celery_line(started + 1, "default@worker1 ready."))
    assert not logged_ready(query, "celery-fleetapp-worker-long", NODE, started)
    with log.open("a") as f:
        f.write(celery_line(started + 1, f"{NODE} ready."))
    assert logged_ready(query, "celery-fleetapp-worker-long", NODE, started)


def test_supervisor_without_a_log_is_not_ready(tmp_path):
    query = {"manager": "supervisor", "prefix": "celery-fleetapp-", "log_dir": str(tmp_path)}
    assert not logged_ready(query, "celery-fleetapp-worker-long", NODE, time.time())


def test_systemd_reads_the_units_journal_since_the_start(tmp_path, monkeypatch):
    """journalctl, faked: it records its arguments and prints what the journal would."""
    asked = tmp_path / "asked"
    fake = tmp_path / "journalctl"
    fake.write_text(f'#!/bin/sh\necho "$@" > {asked}\ncat {tmp_path / "journal"}\n')
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    query = {"manager": "systemd", "prefix": "celery-fleetapp@"}
    (tmp_path / "journal").write_text("[2026-11-29 19:30:00,123: INFO/MainProcess] Connected to sqs://\n")
    assert not logged_ready(query, "celery-fleetapp@worker-long.service", NODE, 1795980600.7)
    assert asked.read_text().split() == ["--no-pager", "--output=cat", "--since=@1795980600", "--unit=celery-fleetapp@worker-long.service"]
    (tmp_path / "journal").write_text(f"[2026-11-29 19:30:01,123: INFO/MainProcess] {NODE} ready.\n")
    assert logged_ready(query, "celery-fleetapp@worker-long.service", NODE, 1795980600.7)


def test_systemd_unit_running_an_old_input_and_disabled_is_restarted_and_enabled(tmp_path, monkeypatch):
    """A unit started before its environment file changed is restarted; one not enabled at boot is
    also in `start` (started and enabled), since `systemctl restart` does not enable it."""
    converge = process_state.converge

    fake = tmp_path / "systemctl"
    show = (f"Id=celery-fleetapp@worker-long.service\nLoadState=loaded\nActiveState=active\nSubState=running\n"
            f"UnitFileState={{state}}\nNeedDaemonReload=no\nMainPID={os.getpid()}\n")
    fake.write_text(f'#!/bin/sh\ncase "$1" in show) cat {tmp_path / "show"};; esac\n')
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    env_file = tmp_path / "env"
    env_file.write_text("changed after this process started\n")
    os.utime(env_file, (time.time() + 5, time.time() + 5))  # well after this process's start
    query = {"manager": "systemd", "prefix": "celery-fleetapp@", "wanted": ["celery-fleetapp@worker-long.service"], "inputs": [str(env_file)],
             "unit_dir": str(tmp_path)}
    (tmp_path / "show").write_text(show.format(state="enabled"))
    enabled = converge(query)
    assert (enabled["restart"], enabled["start"]) == (["celery-fleetapp@worker-long.service"], [])
    (tmp_path / "show").write_text(show.format(state="disabled"))
    disabled = converge(query)
    assert (disabled["restart"], disabled["start"]) == (["celery-fleetapp@worker-long.service"], ["celery-fleetapp@worker-long.service"])


def manager_reads(monkeypatch, manager, reads, clock):
    """Fake the process manager's successive reads ({name: (state, pid)} each) and the clock: every
    read is 1 s after the one before, and every PID started at 0."""
    states = iter(reads)

    def read(query):
        clock[0] += 1.0
        return {name: {"state": state, "pid": pid} for name, (state, pid) in next(states).items()}, [], False, []

    monkeypatch.setattr(process_state, manager, read)
    monkeypatch.setattr(process_state, "started_at", lambda pid: 0.0)
    monkeypatch.setattr(process_state.time, "time", lambda: clock[0])
    monkeypatch.setattr(process_state.time, "sleep", lambda seconds: None)
    return process_state.unsteady


def test_a_process_restarted_under_the_same_name_before_its_seconds_is_unsteady(monkeypatch):
    """systemd restarts a beat that dies at start (Restart=always): it looks active between tries,
    on another PID each time; a steady Flower beside it passes once it has run 3 s."""
    unsteady = manager_reads(monkeypatch, "systemd", [
        {"beat": ("RUNNING", 101), "flower": ("RUNNING", 200)},
        {"beat": ("ACTIVATING", 0), "flower": ("RUNNING", 200)},
        {"beat": ("RUNNING", 102), "flower": ("RUNNING", 200)},
    ], clock=[0.0])
    assert unsteady({"manager": "systemd"}, ["beat", "flower"], 3) == ["beat"]


def test_supervisor_starting_is_waited_out_and_backoff_is_unsteady(monkeypatch):
    unsteady = manager_reads(monkeypatch, "supervisor", [
        {"beat": ("STARTING", 0), "flower": ("STARTING", 0)},
        {"beat": ("BACKOFF", 0), "flower": ("RUNNING", 200)},
        {"flower": ("RUNNING", 200)},
    ], clock=[0.0])
    assert unsteady({"manager": "supervisor"}, ["beat", "flower"], 2) == ["beat"]
    steady = manager_reads(monkeypatch, "supervisor", [
        {"beat": ("STARTING", 0)}, {"beat": ("RUNNING", 101)}, {"beat": ("RUNNING", 101)},
    ], clock=[0.0])
    assert steady({"manager": "supervisor"}, ["beat"], 2) == []


def test_a_process_started_before_its_input_changed_runs_an_older_one(tmp_path):
    config, sites = tmp_path / "redis.conf", tmp_path / "sites-enabled"
    config.write_text("port 6379\n")
    sites.mkdir()
    os.utime(config, (1000.0, 1000.0))
    os.utime(sites, (900.0, 900.0))
    changed = fleet_started.changed_at([str(config), str(sites), str(tmp_path / "missing")])
    assert changed == 1000.0
    assert fleet_started.runs_older(999.0, changed)
    # Started after the change, or within a clock tick of it: runs the file; not running: nothing to restart.
    assert not fleet_started.runs_older(1000.5, changed)
    assert not fleet_started.runs_older(999.9, changed)
    assert not fleet_started.runs_older(None, changed)
    # A site enabled or disabled (a link added or removed) changes its directory's time.
    (sites / "flower").symlink_to(config)
    assert fleet_started.changed_at([str(config), str(sites)]) > 1000.0


def test_find_names_the_apps_programs_and_units_under_either_manager_and_no_other_apps(tmp_path):
    conf_dir, unit_dir = tmp_path / "conf.d", tmp_path / "system"
    conf_dir.mkdir()
    unit_dir.mkdir()
    for name in ("celery-fleetapp-worker-default.conf", "celery-fleetapp-beat.conf", "celery-fleetapp-flower.conf",
                 "celery-fleetapp2-worker-default.conf", "celery-fleetapp-notes.txt", "other.conf", "celery-mailer-beat.conf"):
        (conf_dir / name).write_text("")
    for name in ("celery-fleetapp@worker-long.service.d", "celery-tutorial@beat.service.d"):
        (unit_dir / name).mkdir()
    query = {"apps": [{"supervisor": "celery-fleetapp-", "systemd": "celery-fleetapp@"}, {"supervisor": "celery-mailer-", "systemd": "celery-mailer@"}],
             "conf_dir": str(conf_dir), "unit_dir": str(unit_dir)}
    assert process_state.found_files(query) == {
        "supervisor": ["celery-fleetapp-beat", "celery-fleetapp-flower", "celery-fleetapp-worker-default", "celery-mailer-beat"],
        "systemd": ["celery-fleetapp@worker-long.service"], "systemd_templates": []}
    (unit_dir / "celery-fleetapp@.service").write_text("")
    assert process_state.found_files(query)["systemd_templates"] == ["celery-fleetapp@.service"]
    # A host without supervisor (or without either directory) has nothing to remove.
    assert process_state.found_files(dict(query, conf_dir=str(tmp_path / "missing"))) == {
        "supervisor": [], "systemd": ["celery-fleetapp@worker-long.service"], "systemd_templates": ["celery-fleetapp@.service"]}


def render(template, app, process):
    """A program or unit drop-in as role celery_worker writes it (its own template)."""
    import jinja2
    source = (ROOT / "roles/celery_worker/templates" / template).read_text()
    return jinja2.Template(source).render(ansible_managed="Ansible managed", app=app, process=process, celery_worker_startsecs=10,
                                          celery_worker_stop_timeouts={"worker": 90, "beat": 30, "flower": 30},
                                          celery_worker_log_dir="/var/log/celery")


def test_the_processes_of_an_app_the_inventory_does_not_name_are_found_with_what_counts_its_tasks(tmp_path):
    conf_dir, unit_dir = tmp_path / "conf.d", tmp_path / "system"
    conf_dir.mkdir()
    unit_dir.mkdir()
    app = {"name": "fleetapp", "workdir": "/var/lib/celery", "home": "/var/lib/celery", "user": "celery", "group": "celery"}
    run = "/opt/fleetapp/bin/run celery --app=celery_fleet:app"
    worker = {"kind": "worker", "group": "long", "queues": ["long", "slow"], "user": "celery", "name": "celery-fleetapp-worker-long",
              "command": f"{run} worker --hostname=long@w1 --queues=long,slow --concurrency=1"}
    beat = {"kind": "beat", "user": "celery", "name": "celery-fleetapp-beat", "command": f"{run} beat"}
    flower = {"kind": "flower", "user": "flower", "name": "celery-tutorial-flower",
              "command": "/opt/tutorial/bin/run --tools celery --app=celery_fleet:app flower"}
    (conf_dir / "celery-fleetapp-worker-long.conf").write_text(render("supervisor-program.conf.j2", app, worker))
    (conf_dir / "celery-tutorial-flower.conf").write_text(render("supervisor-program.conf.j2", dict(app, name="tutorial"), flower))
    # Someone else's program that happens to start with celery-: not the fleet's, left alone.
    (conf_dir / "celery-exporter.conf").write_text("[program:celery-exporter]\ncommand=/usr/bin/celery-exporter\n")
    (unit_dir / "celery-fleetapp@beat.service.d").mkdir()
    (unit_dir / "celery-fleetapp@beat.service.d" / "process.conf").write_text(render("systemd-process.conf.j2", app, beat))
    query = {"known": ["tutorial"], "conf_dir": str(conf_dir), "unit_dir": str(unit_dir)}
    assert process_state.unnamed_apps(query) == [{
        "name": "fleetapp", "processes": ["celery-fleetapp-worker-long", "celery-fleetapp@beat.service"], "root": "/opt/fleetapp",
        "entry_point": "celery_fleet:app", "queues": ["long", "slow"]}]
    assert process_state.unnamed_apps(dict(query, known=["tutorial", "fleetapp"])) == []
    assert [a["name"] for a in process_state.unnamed_apps(dict(query, known=[]))] == ["fleetapp", "tutorial"]


def test_every_app_of_the_host_is_read_and_named_as_its_manager_names_it(monkeypatch):
    """Two apps: each app's part of the query (its prefix, its wanted processes) read on its own,
    the caller's names (suspects, readiness) handed to the app they belong to, the results merged."""
    seen = []

    def app_state(query):
        seen.append({key: query.get(key) for key in ("prefix", "wanted", "suspects", "ready", "log_dir")})
        return {"processes": {name: {"state": "RUNNING", "pid": 1} for name in query["wanted"]}, "apply": query["wanted"][:1],
                "daemon_reload": False, "stop": [], "restart": [], "start": [], "not_ready": list(query.get("ready", {}))}

    monkeypatch.setattr(process_state, "app_state", app_state)
    state = process_state.host_state({
        "manager": "supervisor", "log_dir": "/var/log/celery",
        "suspects": ["celery-mailer-beat"], "ready": {"celery-fleetapp-worker-default": "default@w1"},
        "apps": [{"prefix": "celery-fleetapp-", "wanted": ["celery-fleetapp-worker-default", "celery-fleetapp-beat"]},
                 {"prefix": "celery-mailer-", "wanted": ["celery-mailer-beat"]}]})
    assert seen == [
        {"prefix": "celery-fleetapp-", "wanted": ["celery-fleetapp-worker-default", "celery-fleetapp-beat"], "suspects": [],
         "ready": {"celery-fleetapp-worker-default": "default@w1"}, "log_dir": "/var/log/celery"},
        {"prefix": "celery-mailer-", "wanted": ["celery-mailer-beat"], "suspects": ["celery-mailer-beat"], "ready": {}, "log_dir": "/var/log/celery"}]
    assert sorted(state["processes"]) == ["celery-fleetapp-beat", "celery-fleetapp-worker-default", "celery-mailer-beat"]
    assert state["apply"] == ["celery-fleetapp-worker-default", "celery-mailer-beat"]
    assert state["not_ready"] == ["celery-fleetapp-worker-default"]
