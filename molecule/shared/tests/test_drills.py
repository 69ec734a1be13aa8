"""Failure drills (scenario `drills`): what production does to a fleet, and what must survive it.

Each drill prints one line with its counts and times (the verifier runs with -s). Tasks are the
demo app's `tracked`, which appends its id to ~celery/fleetapp-executions.log on the worker that
ran it, so a drill counts executions whatever the result backend. The drills run after every
other test of the scenario (conftest orders them last) and leave the fleet as they found it.
"""

import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest
from conftest import (
    ACK_TIMEOUT,
    BROKER,
    BROKER_SERVICE,
    ENV_FILE,
    NAME_PREFIX,
    PM,
    STOCK_ANSIBLE,
    WORKER_GROUPS,
    all_ran,
    ansible_playbook,
    broker_pid,
    executions,
    host_state,
    inspect,
    mark_hosts,
    plain,
    processes,
    recap,
    refusal_problems,
    report,
    send_tracked,
    settled,
    start_process,
    stop_process,
    wait_until,
)

pytestmark = pytest.mark.drills

INVENTORY_DIR = Path(os.environ.get("MOLECULE_INVENTORY_FILE", "/nonexistent")).parent


def worker_pids(worker):
    """Main PIDs of the host's worker groups (beat aside)."""
    return {instance: pid for instance, (_, pid) in processes(worker).items() if instance.startswith("worker-")}


def nodes_answer(worker):
    nodes = {f"{group}@{worker.backend.host}" for group in WORKER_GROUPS}
    return nodes <= set(inspect(worker, "ping", timeout=3))


# --- 1. A worker killed mid-task ---------------------------------------------------------------

def test_drill_a_worker_killed_mid_task_still_gets_its_task_done(clients, workers):
    """kill -9 of the worker's main process and its pool (as the OOM killer or a crash leaves it):
    with late acks the broker hands the task out again (RabbitMQ when the connection drops, Redis
    after the ack timeout), and the process manager brings the worker back."""
    worker = workers[0]
    node = f"long@{worker.backend.host}"
    (task_id,) = send_tracked(clients[0], 1, seconds=8, queue="long")
    running = wait_until(lambda: any(t["id"] == task_id for t in inspect(worker, "active", node, 2).get(node, [])), 30, 0.5)
    assert running, f"task {task_id} never started on {node}"

    before = worker_pids(worker)["worker-long"]
    killed_at = time.monotonic()
    worker.check_output(f"pkill -KILL -P {before}; kill -KILL {before}")
    assert executions(workers, [task_id])[task_id] == 0, "the task finished before the kill: the drill proved nothing"

    def replaced():
        state, pid = processes(worker)["worker-long"]
        return state == "RUNNING" and pid != before and nodes_answer(worker)

    back = wait_until(replaced, 90, 1)
    back_after = round(time.monotonic() - killed_at, 1)
    assert back, f"worker-long did not come back after kill -9: {processes(worker)}"
    done = wait_until(lambda: all_ran(workers, [task_id]), 150, 2)
    report("kill-9", task=task_id, runs=(done or {}).get(task_id, 0), worker_back_s=back_after,
           completed_after_s=round(time.monotonic() - killed_at, 1), pid=f"{before}->{processes(worker)['worker-long'][1]}")
    assert done, f"task {task_id} never ran after its worker was killed"


# --- 2. A broker crash with a backlog ----------------------------------------------------------

def test_drill_a_backlog_survives_a_broker_crash(brokers, clients, workers):
    """Tasks queued with no consumer survive kill -9 of the broker: RabbitMQ's durable queues and
    persistent messages, Redis's append-only file (fsync every second)."""
    broker, worker = brokers[0], workers[0]
    groups = [instance for instance in processes(worker) if instance.startswith("worker-")]
    for instance in groups:
        assert stop_process(worker, instance).rc == 0
    try:
        ids = send_tracked(clients[0], 300)
        time.sleep(2)  # past Redis's one-second fsync of the append-only file
        crashed = broker_pid(broker)
        broker.check_output(f"kill -KILL {crashed}")
        # systemd may restart it by itself (Restart=); either way it is started again here.
        wait_until(lambda: broker_pid(broker) != crashed, 30, 0.2)
        broker.check_output(f"systemctl start {BROKER_SERVICE}")
        assert wait_until(lambda: broker.run(f"systemctl is-active {BROKER_SERVICE}").stdout.strip() == "active", 120, 1)
        restarted = broker_pid(broker)
        assert restarted != crashed
    finally:
        for instance in groups:
            start_process(worker, instance)
    started = time.monotonic()
    counts = wait_until(lambda: all_ran(workers, ids), 180, 2) or executions(workers, ids)
    lost = sum(1 for n in counts.values() if n == 0)
    report("broker-crash-backlog", sent=len(ids), ran=sum(1 for n in counts.values() if n), lost=lost,
           duplicated=sum(1 for n in counts.values() if n > 1), drained_s=round(time.monotonic() - started, 1),
           broker_pid=f"{crashed}->{restarted}")
    assert lost == 0, f"{lost} of {len(ids)} queued tasks were lost with the broker"


# --- 3. A broker outage -------------------------------------------------------------------------

def test_drill_the_same_workers_consume_again_after_a_30_s_broker_outage(brokers, clients, workers):
    broker, worker = brokers[0], workers[0]
    before = worker_pids(worker)
    broker.check_output(f"systemctl stop {BROKER_SERVICE}")
    time.sleep(30)
    broker.check_output(f"systemctl start {BROKER_SERVICE}")
    assert wait_until(lambda: broker.run(f"systemctl is-active {BROKER_SERVICE}").stdout.strip() == "active", 120, 1)
    returned = time.monotonic()
    # Tasks sent once the broker is back, to every queue: each must be consumed by the same
    # worker processes, reconnected on their own (Celery once stopped consuming after a Redis
    # reconnect, celery/celery#7276).
    ids = send_tracked(clients[0], 10) + send_tracked(clients[0], 2, queue="long")
    counts = wait_until(lambda: all_ran(workers, ids), 90, 1)
    consumed_after = round(time.monotonic() - returned, 1)
    after = worker_pids(worker)
    report("broker-outage-30s", sent=len(ids), ran=sum(1 for n in (counts or executions(workers, ids)).values() if n),
           consumed_within_s=consumed_after, same_pids=before == after)
    assert counts, f"workers did not consume again within 90 s of the broker's return: {executions(workers, ids)}"
    assert after == before, f"the workers were restarted ({before} -> {after}); they must reconnect by themselves"


# --- 4. Restarted hosts -------------------------------------------------------------------------

def test_drill_restarted_hosts_come_back_on_their_own(brokers, clients, workers):
    """docker restart of the broker and worker containers: systemd boots them, the broker, the
    process manager, the workers and beat start at boot, and tasks flow with nobody's help."""
    names = [h.backend.host for h in brokers + workers]
    started = time.monotonic()
    subprocess.run(["docker", "restart", "--time", "60", *names], check=True, capture_output=True, timeout=180)
    def booted(name):
        # Right after the restart systemd may not take D-Bus connections yet ("Failed to connect
        # to bus"): ask again until it answers, then --wait until the boot has finished.
        state = subprocess.run(["docker", "exec", name, "systemctl", "is-system-running", "--wait"],
                               capture_output=True, text=True, timeout=180)
        return state.stdout.strip() in ("running", "degraded") and state

    for name in names:
        assert wait_until(lambda: booted(name), 180, 2), (name, "never finished booting")
    worker = workers[0]
    assert wait_until(lambda: nodes_answer(worker), 120, 2), processes(worker)
    back = round(time.monotonic() - started, 1)
    # supervisor reports STARTING until a program has run startsecs: wait for RUNNING.
    assert wait_until(lambda: processes(worker)["beat"][0] == "RUNNING", 60, 1), processes(worker)
    ids = send_tracked(clients[0], 10)
    counts = wait_until(lambda: all_ran(workers, ids), 60, 1)
    heartbeat = json.loads(worker.check_output("cat /var/lib/celery/fleetapp-heartbeat.json"))
    beat_after = wait_until(lambda: json.loads(worker.check_output("cat /var/lib/celery/fleetapp-heartbeat.json"))["at"]
                            > time.time() - 15, 40, 2)
    report("host-restart", hosts=len(names), workers_answer_after_s=back, sent=len(ids),
           ran=sum(1 for n in (counts or {}).values() if n), beat_ticking=bool(beat_after))
    assert counts, f"tasks did not flow after the restart: {executions(workers, ids)}"
    assert beat_after, f"beat's heartbeat did not run after the restart: {heartbeat}"


# --- 5. Bad input -------------------------------------------------------------------------------

def bad_requirements():
    path = INVENTORY_DIR.parent / "drills-unpinned-requirements.txt"
    path.write_text("celery\n")
    return str(path)


def two_beat_hosts():
    path = INVENTORY_DIR.parent / "drills-two-beat-hosts.yml"
    path.write_text(json.dumps({"beat": {"hosts": {"drills-broker1": {}}}}))
    return str(path)


# (what is wrong, the extra variables that say it, the one rule that must refuse it: its message
# names one variable and one reason). Extra variables go as JSON, so numbers stay numbers.
BAD_INPUTS = [
    ("unknown broker", {"celery_broker": "kafka"}, "value of celery_broker must be one of: redis, rabbitmq, sqs, got: kafka"),
    ("unknown process manager", {"celery_process_manager": "runit"}, "value of celery_process_manager must be one of"),
    ("empty password", {"celery_broker_password": ""}, "celery_broker_password must be at least 16 characters"),
    ("default password", {"celery_broker_password": "guest"}, "celery_broker_password must be at least 16 characters"),
    ("two beat hosts", "TWO_BEAT_HOSTS", "The `beat` group has 2 hosts"),
    ("ack timeout shorter than the task time limit", {"celery_broker_ack_timeout": 20},
     "celery_broker_ack_timeout (20 s) must be longer than celery_app_task_time_limit (20 s) plus "
     "celery_app_worker_soft_shutdown_timeout (5 s)"),
    ("duplicate worker group names",
     {"celery_worker_groups": [{"name": "default", "queues": ["a"]}, {"name": "default", "queues": ["b"]}]},
     "celery_worker_groups: group names must be unique"),
    ("malformed queues", {"celery_worker_groups": [{"name": "default", "queues": "celery long"}]},
     "celery_worker_groups, group default: queues must be a non-empty list"),
    ("negative concurrency", {"celery_worker_groups": [{"name": "default", "queues": ["celery"], "concurrency": -2}]},
     "celery_worker_groups, group default: concurrency must be an integer of at least 1 (got -2)"),
    ("unresolvable broker host", {"celery_broker_host": "no-such-broker.invalid"}, "celery_broker_host (no-such-broker.invalid) does not resolve"),
    ("zero task time limit", {"celery_app_task_time_limit": 0}, "celery_app_task_time_limit (0) must be a positive number"),
    ("workers as root", {"celery_app_user": "root"}, "celery_app_user must not be root"),
    ("app name with spaces", {"celery_app_name": "Fleet App"}, "celery_app_name (Fleet App) must be lower-case"),
    ("unpinned requirement", "BAD_REQUIREMENTS", "celery_app_requirements: pin every requirement"),
    ("a Celery setting in the app's environment", {"celery_app_env": {"CELERY_BROKER_URL": "x"}}, "celery_app_env takes environment variable names (letters, digits, `_`), not CELERY_* (Celery's settings go in "
     "celery_app_settings) nor FLEET_APP_MODULE (set from celery_app_module)"),
    ("unknown log level", {"celery_worker_loglevel": "loud"}, "value of celery_worker_loglevel must be one of"),
]


def test_drill_bad_inputs_fail_before_any_host_changes(brokers, workers):
    if BROKER != "redis":
        pytest.skip("the refusals come before any host changes and name no broker or manager: the Redis drills run them")
    hosts = brokers + workers
    before = mark_hosts(hosts, [BROKER_SERVICE])
    # The two cases that need a file: a second inventory that adds a beat host, and requirements.
    special = {"TWO_BEAT_HOSTS": ["-i", two_beat_hosts()],
               "BAD_REQUIREMENTS": ["-e", json.dumps({"celery_app_requirements": bad_requirements()})]}
    problems, took = refusal_problems(BAD_INPUTS, special)
    after = {h.backend.host: host_state(h, [BROKER_SERVICE]) for h in hosts}
    report("bad-input", cases=len(BAD_INPUTS), refused=len(BAD_INPUTS) - len(problems),
           hosts_unchanged=after == before, took_s=took)
    assert not problems, "\n".join(problems)
    assert after == before, f"a host changed: {before} -> {after}"


# --- 6. Process state converges, whatever the run found -----------------------------------------

LONG_TWICE_AS_WIDE = {"celery_worker_groups": [{"name": "default", "queues": ["celery"]},
                                               {"name": "long", "queues": ["long"], "concurrency": 2}]}


def command_line(worker, instance):
    """The command line of one of the app's processes on the worker (its main PID's)."""
    pid = processes(worker)[instance][1]
    return worker.check_output(f"tr '\\0' ' ' < /proc/{pid}/cmdline") if pid else ""


def process_file(instance):
    """Where the process manager reads one of the app's processes from."""
    if PM == "supervisor":
        return f"/etc/supervisor/conf.d/{NAME_PREFIX}-{instance}.conf"
    return f"/etc/systemd/system/{NAME_PREFIX}@{instance}.service.d/process.conf"


def test_drill_a_run_that_failed_after_writing_the_process_files_is_finished_by_the_next(workers):
    """A run that fails right after writing a worker group's new configuration, before anything
    applied it (here its first step after the writes, the state read, is pointed at a missing
    interpreter; a failed nginx -t, a lost SSH session or a killed job leave the same state):
    the next run finds the process running the old configuration, from the manager's own state
    rather than a handler it forgot, and restarts that process only."""
    worker = workers[0]
    before = processes(worker)
    failed = ansible_playbook("site.yml", "-e", json.dumps(dict(LONG_TWICE_AS_WIDE, celery_worker_host_python="/nonexistent/python3")))
    assert failed.returncode != 0, "the run meant to fail after writing the files passed"
    assert "--concurrency=2 " in worker.check_output(f"cat {process_file('worker-long')}"), "the failed run wrote no new configuration"
    assert processes(worker)["worker-long"] == before["worker-long"], "the failed run applied the change after all"
    assert "--concurrency=1 " in command_line(worker, "worker-long")

    started = time.monotonic()
    done = ansible_playbook("site.yml", "-e", json.dumps(LONG_TWICE_AS_WIDE))
    after = settled(worker)
    report("failed-run-finished", changed=recap(done.stdout), took_s=round(time.monotonic() - started, 1),
           long_pid=f"{before['worker-long'][1]}->{after['worker-long'][1]}", default_pid_kept=after["worker-default"] == before["worker-default"])
    assert done.returncode == 0, plain(done.stdout)[-3000:]
    assert recap(done.stdout)[worker.backend.host] > 0, "the next run reported no change"
    assert after["worker-long"][0] == "RUNNING" and after["worker-long"][1] != before["worker-long"][1], after
    assert "--concurrency=2 " in command_line(worker, "worker-long"), command_line(worker, "worker-long")
    assert after["worker-default"] == before["worker-default"], "a process whose configuration did not change was restarted"


def remove_by_hand(worker, instance):
    """Stop one of the app's processes and delete its program file or unit drop-in, and tell the
    manager, as someone cleaning up by hand would."""
    if PM == "supervisor":
        worker.check_output(f"rm /etc/supervisor/conf.d/{NAME_PREFIX}-{instance}.conf && supervisorctl update {NAME_PREFIX}-{instance}")
    else:
        worker.check_output(f"systemctl stop {NAME_PREFIX}@{instance}.service && rm -r /etc/systemd/system/{NAME_PREFIX}@{instance}.service.d"
                            " && systemctl daemon-reload")


def rabbitmq_users(broker):
    """RabbitMQ's users and their tags."""
    return {u["user"]: sorted(u["tags"]) for u in json.loads(broker.check_output("rabbitmqctl -q list_users --formatter json"))}


def unit(instance):
    """The program or unit of one of the app's processes, as the manager and the run name it."""
    return f"{NAME_PREFIX}-{instance}" if PM == "supervisor" else f"{NAME_PREFIX}@{instance}.service"


# An app module that does not import: every process dies at start (the worker within seconds of
# its start, having logged the error: 10 s of pings, two rounds, are enough for the run to see it
# and read the log). Then beat alone: its scheduler does not import, with every program file
# changed (loaded by `supervisorctl update`, which waits for nothing; under systemd the unit looks
# active between restarts).
NOT_COMING_UP = {"worker-default": ["-e", "celery_app_module=fleetapp.no_such_module", "-e", "celery_worker_ping_timeout=10"],
                 "beat": ["-e", json.dumps({"celery_app_settings": {"beat_scheduler": "fleetapp.no_such_module:Scheduler"},
                                            "celery_worker_loglevel": "DEBUG"})]}


@pytest.fixture(scope="module")
def repairs(brokers, workers):
    """The runs whose processes do not come up, one after the other (the second, with the app's
    module back, also repairs the first), then one good run that repairs what is left and what
    was done by hand meanwhile: one worker group stopped, beat's program or unit file deleted,
    on RabbitMQ guest added back and the app's user made an administrator. Each run's output
    and the fleet's state are recorded as the run ends."""
    worker, found = workers[0], {"bad": {}}
    for instance, extra in NOT_COMING_UP.items():
        started = time.monotonic()
        bad = ansible_playbook("site.yml", *extra)
        found["bad"][instance] = {"run": bad, "took_s": round(time.monotonic() - started, 1), "answered": nodes_answer(worker)}
    assert stop_process(worker, "worker-default").rc == 0
    remove_by_hand(worker, "beat")
    found["by_hand"] = processes(worker)
    if BROKER == "rabbitmq":
        found["users"] = rabbitmq_users(brokers[0])
        brokers[0].check_output("rabbitmqctl -q add_user guest guest && rabbitmqctl -q set_user_tags celery administrator")
        found["users_by_hand"] = rabbitmq_users(brokers[0])
    found["good"] = ansible_playbook("site.yml")
    found["after"] = settled(worker)
    found["answered"] = nodes_answer(worker)
    if BROKER == "rabbitmq":
        found["users_after"] = rabbitmq_users(brokers[0])
    return found


def test_drill_a_process_that_does_not_come_up_is_named_with_its_reason(repairs, workers):
    """Each run fails naming the host, the program or unit, and the error from its log; the next
    run repairs it (the second bad run the workers, the good run beat)."""
    worker = workers[0]
    for instance, bad in repairs["bad"].items():
        # Ansible's YAML output folds long lines and doubles quotes: compare words.
        out = " ".join(plain(bad["run"].stdout).split())
        expected = (f"on {worker.backend.host} did not come up", unit(instance), "ModuleNotFoundError: No module named",
                    "fleetapp.no_such_module")
        report("not-coming-up", process=instance, failed=bad["run"].returncode != 0, failed_after_s=bad["took_s"],
               named=all(text in out for text in expected), workers_answered_after=bad["answered"])
        assert bad["run"].returncode != 0, f"a run whose {instance} cannot start passed"
        for text in expected:
            assert text in out, f"the failure does not say {text!r}: {out[-3000:]}"
    assert repairs["bad"]["beat"]["answered"], "the run after the one whose workers did not come up left them down"
    assert repairs["good"].returncode == 0, plain(repairs["good"].stdout)[-3000:]
    assert repairs["answered"], repairs["after"]
    assert all(state == "RUNNING" for state, _ in repairs["after"].values()), repairs["after"]


def test_drill_processes_stopped_or_removed_by_hand_come_back_after_site_yml(repairs, clients, workers):
    """One worker group stopped by hand, beat's program or unit file deleted (on RabbitMQ also
    guest added back and the app's user made an administrator): the next site.yml starts the one,
    brings back the other, sets the broker's users back, and reports the change (worker-long also
    runs the configuration the inventory names, after the drill above)."""
    worker, before, after, done = workers[0], repairs["by_hand"], repairs["after"], repairs["good"]
    ids = send_tracked(clients[0], 4) + send_tracked(clients[0], 1, queue="long")
    counts = wait_until(lambda: all_ran(workers, ids), 60, 1)
    report("stopped-by-hand", before={k: v[0] for k, v in before.items()}, after={k: v[0] for k, v in after.items()},
           changed=recap(done.stdout), ran=sum(1 for n in (counts or {}).values() if n))
    assert before["worker-default"][0] != "RUNNING" and before.get("beat", ("GONE", 0))[0] != "RUNNING", before
    assert done.returncode == 0, plain(done.stdout)[-3000:]
    if BROKER == "rabbitmq":
        assert repairs["users_by_hand"] != repairs["users"], "guest and the administrator tag were not put back by hand"
        assert repairs["users_after"] == repairs["users"], "site.yml did not set the broker's users back"
    assert recap(done.stdout)[worker.backend.host] > 0, "site.yml reported no change"
    assert all(after[name][0] == "RUNNING" for name in ("worker-default", "worker-long", "beat")), after
    assert "--concurrency=1 " in command_line(worker, "worker-long")
    assert counts, f"tasks did not run after the repair: {executions(workers, ids)}"


# --- 7. Security ----------------------------------------------------------------------------------

def test_drill_secrets_are_readable_only_by_their_owners(brokers, clients, workers):
    files = [(h, ENV_FILE) for h in workers + clients]
    for broker in brokers:
        files.append((broker, "/var/lib/rabbitmq/.erlang.cookie" if BROKER == "rabbitmq" else "/etc/redis/redis.conf"))
    for h, path in files:
        mode = int(h.check_output(f"stat -c %a {path}"), 8)
        assert mode & 0o007 == 0, f"{path} on {h.backend.host} is readable by others ({oct(mode)})"
        assert h.run(f"runuser -u nobody -- cat {path}").rc != 0, f"nobody can read {path}"
    report("secret-files", checked=len(files))


def test_drill_no_celery_process_runs_as_root(workers):
    for worker in workers:
        rows = worker.check_output("ps -eo user=,args=").splitlines()
        celery = [row for row in rows if re.search(r"/celery --app=", row)]
        assert celery and all(row.split()[0] == "celery" for row in celery), celery


# --- 8. The last rerun: values typed on the command line, printed with -vvv -------------------

# `-e name=false` or `-e name=30` gives Ansible the string "false" or "30": every boolean and
# number must read as one. The values are the scenario's own, so nothing may change.
def typed_values(settings):
    return {"celery_flower_enabled": "false", "celery_app_task_acks_late": "yes", "celery_app_task_reject_on_worker_lost": "1",
            "celery_app_confirm_publish": "true", "redis_appendonly": "True",
            "celery_app_task_time_limit": settings["CELERY_TASK_TIME_LIMIT"],
            "celery_app_worker_soft_shutdown_timeout": settings["CELERY_WORKER_SOFT_SHUTDOWN_TIMEOUT"],
            "celery_app_worker_prefetch_multiplier": settings["CELERY_WORKER_PREFETCH_MULTIPLIER"],
            "celery_app_result_expires": settings["CELERY_RESULT_EXPIRES"], "celery_broker_ack_timeout": str(ACK_TIMEOUT),
            "celery_app_keep_releases": "3", "celery_worker_stop_grace": "30", "celery_worker_ping_timeout": "60"}


@pytest.fixture(scope="module")
def last_rerun(settings):
    """One site.yml rerun after every drill above, for the two drills below (each a full run of
    the fleet: one run serves both claims): the scenario's values typed on the command line, and
    -vvv, which prints every task's arguments and results."""
    typed = typed_values(settings)
    # Stock Ansible: what -vvv prints for users, and the scenario's proof that a rerun on stock
    # Ansible changes nothing.
    done = ansible_playbook("site.yml", "-vvv", *(arg for name, value in typed.items() for arg in ("-e", f"{name}={value}")),
                            env=STOCK_ANSIBLE)
    return typed, done


def test_drill_values_typed_on_the_command_line_are_taken_as_their_types(last_rerun):
    """The rerun with every value typed as a string changes nothing on any host (and, being the
    last run after every drill, proves those drills left the fleet converged)."""
    typed, done = last_rerun
    changed = recap(done.stdout)
    report("typed-values", variables=len(typed), rc=done.returncode, changed=changed)
    assert done.returncode == 0, plain(done.stdout)[-3000:]
    assert changed and not any(changed.values()), f"the same values typed as strings changed a host: {changed}"


def test_drill_a_verbose_run_prints_no_secret(last_rerun):
    # The lab's generated secrets: the broker password (Redis and RabbitMQ), the Erlang cookie.
    secrets = {path.name: path.read_text().strip() for path in (INVENTORY_DIR / ".secrets").iterdir()}
    assert "broker_password" in secrets and all(len(value) >= 16 for value in secrets.values()), secrets.keys()
    if BROKER == "rabbitmq":
        assert "erlang_cookie" in secrets
    _, done = last_rerun
    out = done.stdout + done.stderr
    leaked = [name for name, value in secrets.items() if value in out]
    report("verbose-run", lines=out.count("\n"), leaked=leaked or "none")
    assert done.returncode == 0, out[-3000:]
    assert " EXEC " in out, "the run printed no command it ran on a host: it was not verbose"
    assert not leaked, f"-vvv printed {leaked}: " + "; ".join(
        line[:200] for line in out.splitlines() if any(v in line for v in secrets.values()))[:3000]
