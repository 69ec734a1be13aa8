"""Hosts of the scenario under test, by inventory group, and helpers shared by every scenario.

The scenario's broker and process manager come from its molecule.yml (provisioner env
FLEET_BROKER and FLEET_PROCESS_MANAGER, which the lab inventory also reads), so one set of
tests checks every combination. Scenarios that deploy an app of their own (FLEET_APP_NAME, the
fixtures in molecule/shared/apps) run the tests marked own_app; the others those marked
fleet_app (the bundle's demo app), chosen by the verifier's `-m`. A test that does not apply to
a scenario is skipped with its reason (never left undefined), and each scenario declares in its
molecule.yml how many tests its verify runs (verifier env FLEET_EXPECTED_TESTS): the session
fails when fewer run, so a lost variable or marker cannot silently drop a group of tests.
"""

import json
import os
import re
import shlex
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
import urllib.error
import urllib.request
from base64 import b64encode
from pathlib import Path

import pytest
import testinfra
import testinfra.utils.ansible_runner
import yaml

INVENTORY = os.environ["MOLECULE_INVENTORY_FILE"]
RUNNER = testinfra.utils.ansible_runner.AnsibleRunner(INVENTORY)

BROKER = os.environ.get("FLEET_BROKER", "redis")
PM = os.environ.get("FLEET_PROCESS_MANAGER", "supervisor")
# celery_broker_ack_timeout: the bundle's default unless the scenario shortens it (drills).
ACK_TIMEOUT = int(os.environ.get("FLEET_ACK_TIMEOUT", "7200"))

# The app's name (celery_app_name: the bundle's demo app unless the scenario deploys its own).
APP = os.environ.get("FLEET_APP_NAME", "fleetapp")
RUN = f"/opt/{APP}/bin/run"
ENV_FILE = f"/etc/celery-fleet/{APP}.env"
NAME_PREFIX = f"celery-{APP}"
# The broker's systemd unit on a broker host (Redis and RabbitMQ alike run under systemd).
BROKER_SERVICE = "rabbitmq-server" if BROKER == "rabbitmq" else "redis-server"


def _worker_groups():
    """{group name: its queues} of the scenario's workers, read from the scenario's inventory
    (celery_worker_groups of the first worker host; role celery's default where the inventory sets
    none, each group's keys from celery_worker_group_defaults); groups with state absent are
    left out."""
    hosts = RUNNER.get_hosts("workers")
    if not hosts:
        return {}
    found = RUNNER.get_variables(hosts[0])
    roles = os.path.join(os.path.dirname(__file__), "..", "..", "..", "roles")
    defaults = {}
    for role in ("celery", "celery_worker"):
        with open(os.path.join(roles, role, "defaults", "main.yml")) as f:
            defaults.update(yaml.safe_load(f))
    chosen = found.get("celery_worker_groups", defaults["celery_worker_groups"])
    assert isinstance(chosen, list), f"celery_worker_groups of {hosts[0]} is not a literal list: {chosen!r}"
    default_queues = found.get("celery_worker_group_defaults", {}).get("queues") or defaults["celery_worker_group_defaults"]["queues"]
    return {g["name"]: list(g.get("queues") or default_queues) for g in chosen if g.get("state", "present") != "absent"}


# The scenario's worker groups: {name: queues}, and {name: its first queue}.
WORKER_QUEUES = _worker_groups()
WORKER_GROUPS = {name: queues[0] for name, queues in WORKER_QUEUES.items()}


def pytest_configure(config):
    config.addinivalue_line("markers", "fleet_app: needs the bundle's demo app (app/)")
    config.addinivalue_line("markers", "own_app: needs an app of the scenario's own (molecule/shared/apps)")
    config.addinivalue_line("markers", "apps: several apps on one broker (scenario apps)")
    config.addinivalue_line("markers", "tutorial: needs the tutorial's tasks.py (app tutorial)")
    config.addinivalue_line("markers", "django: needs the Django project (app django)")
    config.addinivalue_line("markers", "staging_ssh: needs hosts reached over SSH (scenario staging-ssh)")
    config.addinivalue_line("markers", "drills: failure drills (scenario drills)")
    config.addinivalue_line("markers", "monitoring: Flower, its metrics and the health check (scenarios with a flower group)")
    config.addinivalue_line("markers", "sqs: Amazon SQS as the broker (scenario sqs)")
    config.addinivalue_line("markers", "replaces_app: the demo app replaced by the tutorial's (a single-app rename; scenarios rabbitmq-systemd and sqs)")
    config.addinivalue_line("markers", "cluster: a RabbitMQ cluster of three nodes (scenario fleet)")
    config.addinivalue_line("markers", "disrupts: kills or stops part of the scenario's fleet; runs after its other tests")
    config.addinivalue_line("markers", "manager_operations: a warm stop and the status, stop and start actions; proven once per"
                            " process manager (the drills run under supervisor, fleet under systemd)")


# --- Every scenario runs as many tests as it declares ----------------------------------------------

_OUTCOMES = {"passed": set(), "failed": set(), "skipped": set()}


def pytest_runtest_logreport(report):
    if report.skipped:
        _OUTCOMES["skipped"].add(report.nodeid)
    elif report.failed:
        _OUTCOMES["failed"].add(report.nodeid)
    elif report.when == "call":
        _OUTCOMES["passed"].add(report.nodeid)


def _tally():
    skipped = _OUTCOMES["skipped"]
    failed = _OUTCOMES["failed"] - skipped
    passed = _OUTCOMES["passed"] - failed - skipped
    return len(passed) + len(failed), len(skipped)


def _expected():
    declared = os.environ.get("FLEET_EXPECTED_TESTS", "")
    return int(declared) if declared.strip().isdigit() else None


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session, exitstatus):
    # Collection errors and interrupted sessions fail on their own.
    if exitstatus not in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED, pytest.ExitCode.NO_TESTS_COLLECTED):
        return
    ran, _ = _tally()
    expected = _expected()
    if expected is None or ran < expected:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter):
    ran, skipped = _tally()
    expected = _expected()
    scenario = os.environ.get("MOLECULE_SCENARIO_NAME", "?")
    line = f"scenario {scenario}: {ran} tests ran, {skipped} skipped; it declares {os.environ.get('FLEET_EXPECTED_TESTS') or 'nothing'}"
    terminalreporter.write_sep("=", line, bold=True)
    if expected is None:
        terminalreporter.write_line(
            "FAILED: the scenario must declare how many tests its verify runs: verifier env FLEET_EXPECTED_TESTS in its molecule.yml",
            red=True, bold=True)
    elif ran < expected:
        terminalreporter.write_line(
            f"FAILED: {expected - ran} fewer tests ran than scenario {scenario} declares (FLEET_EXPECTED_TESTS={expected}):"
            " a lost environment variable or marker dropped them, or a test now skips", red=True, bold=True)
    elif ran > expected:
        terminalreporter.write_line(
            f"note: {ran - expected} more tests ran than declared: raise FLEET_EXPECTED_TESTS to {ran}", yellow=True)


def pytest_collection_modifyitems(items):
    # The drills restart brokers and hosts (and the cluster's kill or stop its nodes: `disrupts`, a
    # marker of its own so the drills scenario does not select them), and the monitoring tests stop
    # the broker and a worker group: they run after every other test of the scenario. The demo app
    # replaced by another (replaces_app) comes last of all: every other test needs the demo app.
    items.sort(key=lambda item: (item.get_closest_marker("replaces_app") is not None,
                                 item.get_closest_marker("drills") is not None or item.get_closest_marker("disrupts") is not None,
                                 item.get_closest_marker("monitoring") is not None))


def ansible_playbook(playbook, *extra, env=None):
    """Run one of the bundle's playbooks against the scenario's hosts, from the control node
    (`env`: more environment, such as ANSIBLE_STDOUT_CALLBACK)."""
    project = os.environ["MOLECULE_PROJECT_DIRECTORY"]
    inventory = os.path.dirname(os.environ["MOLECULE_INVENTORY_FILE"])
    return subprocess.run(
        ["ansible-playbook", "-i", inventory, f"{project}/{playbook}", *extra],
        cwd=project, capture_output=True, text=True, timeout=300, env=dict(os.environ, **(env or {})),
    )


def plain(text):
    """Ansible's output without its ANSI colours."""
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


def recap(stdout):
    """{host: changed count} from the PLAY RECAP of an ansible-playbook run's output."""
    return {name: int(changed) for name, changed in re.findall(r"^(\S+)\s+: ok=\d+\s+changed=(\d+)", plain(stdout), re.M)}


def workers_playbook(action, *extra):
    """playbooks/workers.yml with celery_action=action."""
    return ansible_playbook("playbooks/workers.yml", "-e", f"celery_action={action}", *extra)


def secret(name):
    """A lab secret the inventory generated (its .secrets/ directory, beside the inventory)."""
    return (Path(INVENTORY).parent / ".secrets" / name).read_text().strip()


def get(url, auth=None, timeout=10):
    """GET url from this machine (the control node); returns (status, body)."""
    request = urllib.request.Request(url)
    if auth:
        request.add_header("Authorization", "Basic " + b64encode(":".join(auth).encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode(errors="replace")


def host(name):
    return testinfra.get_host(f"ansible://{name}", ansible_inventory=INVENTORY)


def group(name):
    return [host(n) for n in RUNNER.get_hosts(name)]


def required_group(name):
    """Hosts of inventory group `name`; a scenario without any fails the tests that need them."""
    found = group(name)
    assert found, f"the scenario has no host in group {name}"
    return found


@pytest.fixture(scope="session")
def brokers():
    return required_group("brokers")


@pytest.fixture(scope="session")
def workers():
    return required_group("workers")


@pytest.fixture(scope="session")
def clients():
    return required_group("clients")


@pytest.fixture(scope="session")
def beat_hosts():
    return group("beat")


def env_variables(text):
    """The variables of an environment file the fleet writes (NAME='value' lines)."""
    return dict(re.findall(r"^([A-Z_][A-Z0-9_]*)='([^']*)'$", text, re.M))


def env_settings(h):
    """The CELERY_* variables of the app's environment file on host h."""
    return {name: value for name, value in env_variables(h.check_output(f"cat {ENV_FILE}")).items() if name.startswith("CELERY_")}


@pytest.fixture(scope="session")
def settings(workers):
    return env_settings(workers[0])


def private_address(h):
    """The host's address on the lab network (its default route's interface)."""
    return h.check_output("ip -4 -o route get 1.1.1.1 | sed -n 's/.* src \\([0-9.]*\\).*/\\1/p'")


def hostname(h):
    return h.check_output("hostname")


def run_python(h, code, timeout=60, app=APP):
    """Run Python in an app's current release, with its environment, on host h."""
    return h.check_output(f"timeout {timeout} /opt/{app}/bin/run python -c {shlex.quote(code)}")


def listening(h, port):
    """Addresses host h listens on for TCP port `port`."""
    entries = h.check_output(f"ss -Hltn 'sport = :{port}' | awk '{{print $4}}'").split()
    return {entry.rsplit(":", 1)[0] for entry in entries}


# --- The app's processes under either process manager --------------------------------------------

def processes(h, app=APP):
    """An app's processes on host h: {instance: (state, main PID)}, e.g. worker-default, beat."""
    found = {}
    prefix = f"celery-{app}"
    if PM == "supervisor":
        for line in h.check_output("supervisorctl status || true").splitlines():
            fields = line.split()
            if fields and fields[0].startswith(prefix + "-"):
                pid = int(fields[3].rstrip(",")) if fields[1] == "RUNNING" else 0
                found[fields[0][len(prefix) + 1:]] = (fields[1], pid)
    else:
        units = h.check_output(f"systemctl list-units --all --plain --no-legend '{prefix}@*.service'")
        for unit in (line.split()[0] for line in units.splitlines() if line.strip()):
            show = dict(
                line.split("=", 1)
                for line in h.check_output(f"systemctl show -p ActiveState -p MainPID {unit}").splitlines()
            )
            state = "RUNNING" if show["ActiveState"] == "active" else show["ActiveState"].upper()
            found[unit[len(prefix) + 1:-len(".service")]] = (state, int(show["MainPID"]))
    return found


def left_of(h, app):
    """What the fleet put on host h for `app` that is still there: its processes (by their
    manager, and any under its directory), release, environment and Flower files, programs, units,
    nginx site or location, home and beat schedule (accounts aside: a single app shares them)."""
    found = [f"process {instance}" for instance in processes(h, app)]
    # The pattern's [x] keeps the shell that runs pgrep from matching itself.
    if h.run(f"pgrep -f '/opt/[{app[0]}]{app[1:]}/'").rc == 0:
        found.append(f"a process under /opt/{app}")
    found += h.check_output(f"ls -d /opt/{app} /etc/celery-fleet/{app}.env /etc/celery-fleet/{app}-* /var/lib/celery-{app}"
                            f" /var/lib/celery*/{app}-beat-schedule* /etc/nginx/{app}-flower.htpasswd /etc/nginx/sites-*/{app}-flower"
                            f" /etc/supervisor/conf.d/celery-{app}-* /etc/systemd/system/celery-{app}@* 2>/dev/null || true").split()
    if h.run(f"grep -rqs '/{app}/' /etc/nginx/sites-enabled/").rc == 0:
        found.append(f"a location /{app}/ in nginx's sites")
    return found


def flower_left_of(h, app):
    """What the fleet put on host h for `app`'s Flower that is still there: its process, program or
    unit, configuration, logins and a site of its own (the account aside: the caller knows its name)."""
    found = [f"process {instance}" for instance in processes(h, app) if instance == "flower"]
    return found + h.check_output(f"ls -d /etc/celery-fleet/{app}-flower.py /etc/nginx/{app}-flower.htpasswd /etc/nginx/sites-*/{app}-flower"
                                  f" /etc/supervisor/conf.d/celery-{app}-flower.conf /etc/systemd/system/celery-{app}@flower.service.d"
                                  " 2>/dev/null || true").split()


def stop_process(h, instance):
    """Stop one of the app's processes the way its manager does; returns the command's result."""
    if PM == "supervisor":
        return h.run(f"supervisorctl stop {NAME_PREFIX}-{instance}")
    return h.run(f"systemctl stop {NAME_PREFIX}@{instance}.service")


def start_process(h, instance):
    if PM == "supervisor":
        return h.run(f"supervisorctl start {NAME_PREFIX}-{instance}")
    return h.run(f"systemctl start {NAME_PREFIX}@{instance}.service")


def celery_main_processes(h, kind, table=None):
    """PIDs of Celery main processes of `kind` (worker or beat) on h, whatever started them.

    `table` is a saved `ps -eo pid=,ppid=,args=` of h; by default h's process table now.
    """
    table = h.check_output("ps -eo pid=,ppid=,args=") if table is None else table
    rows = [line.split(None, 2) for line in table.splitlines() if line.strip()]
    matching = {int(pid): int(ppid) for pid, ppid, args in rows if re.search(rf"/celery --app=\S+ {kind}\b", args)}
    # Pool children are forks of their main process: same command line, parent among the matches.
    return sorted(pid for pid, ppid in matching.items() if ppid not in matching)


def wait_until(check, timeout, interval=1.0):
    """Call check() until it returns a true value or `timeout` seconds pass; return the last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


def settled(worker, timeout=30):
    """The host's processes once every one is RUNNING (supervisor says STARTING until a program
    has run startsecs), or as they are when `timeout` runs out."""
    def all_running():
        found = processes(worker)
        return found if all(state == "RUNNING" for state, _ in found.values()) else None

    return wait_until(all_running, timeout) or processes(worker)


def inspect(h, command, destination=None, timeout=5):
    """`celery inspect COMMAND --json` on host h; the parsed replies ({} when none answered)."""
    where = f" --destination={destination}" if destination else ""
    result = h.run(f"{RUN} celery --app=celery_fleet:app inspect {command} --json --timeout={timeout}{where}")
    return json.loads(result.stdout) if result.rc == 0 and result.stdout.strip() else {}


# --- Drills: tracked tasks counted by id, and bad inputs --------------------------------------

# Where the demo app's `tracked` task logs each completed run (its id and host), on every worker.
EXECUTIONS = "/var/lib/celery/fleetapp-executions.log"


def report(drill, **counts):
    """One line with a drill's counts and times, in the scenario's log (the verifier runs with -s)."""
    print(f"\ndrill {drill}: " + " ".join(f"{k}={v}" for k, v in counts.items()), flush=True)


def send_tracked(client, count, seconds=0.0, queue="celery"):
    """Send `count` tracked tasks from the client host; returns their ids."""
    code = (
        "import json; from fleetapp.tasks import tracked\n"
        f"ids = [tracked.apply_async(({seconds},), queue={queue!r}).id for _ in range({count})]\n"
        "print(json.dumps(ids))"
    )
    return json.loads(run_python(client, code, timeout=120))


def run_log(workers, ids):
    """Each run of `ids` over every worker host, as (when it started, in seconds since the epoch,
    the lab's containers sharing this machine's clock; whether the broker redelivered it)."""
    wanted = set(ids)
    found = {task_id: [] for task_id in ids}
    for worker in workers:
        for line in worker.run(f"cat {EXECUTIONS} 2>/dev/null").stdout.splitlines():
            task_id, _, at, redelivered = line.split(" ")
            if task_id in wanted:
                found[task_id].append((float(at), redelivered == "1"))
    return found


def runs(workers, ids):
    """When each of `ids` started, once per run, over every worker host."""
    return {task_id: sorted(at for at, _ in each) for task_id, each in run_log(workers, ids).items()}


def executions(workers, ids):
    """How many times each of `ids` ran, over every worker host."""
    return {task_id: len(each) for task_id, each in run_log(workers, ids).items()}


def all_ran(workers, ids):
    counts = executions(workers, ids)
    return counts if all(counts.values()) else None


def variables_named(text):
    return set(re.findall(r"\b(?:celery|rabbitmq|redis)_[a-z_]+\b", text))


def broker_pid(broker):
    return int(broker.check_output(f"systemctl show -p MainPID --value {BROKER_SERVICE}"))


def refusals(stdout):
    """Every failure of a run printed by the json callback, as (task, message, argument errors),
    and its stats ({host: {changed: N, ...}})."""
    run = json.loads(stdout)
    found = []
    for play in run["plays"]:
        for task in play["tasks"]:
            for result in task["hosts"].values():
                for each in result.get("results") or [result]:
                    if each.get("failed"):
                        found.append((task["task"]["name"], " ".join(str(each.get("msg", "")).split()), each.get("argument_errors")))
    return found, run["stats"]


# A run on stock Ansible where a scenario's runs use Mitogen (.config/molecule/config.yml): what
# users see (-vvv's output, preflight's refusals); and a run that preflight refuses ends before
# Mitogen's start-up on each host pays back (about 1.2 against 2.0 s a run).
STOCK_ANSIBLE = {"ANSIBLE_STRATEGY": "linear"}

# The demo app replaced by the tutorial's, as the README's "Deploy your own app" says: where the
# code is, what `-A` takes, and the smoke test of a deploy; and the tutorial's add(4, 4).
TUTORIAL_APP = "tutorial"
TUTORIAL = {"celery_app_name": TUTORIAL_APP, "celery_app_src": str(Path(__file__).resolve().parents[1] / "apps" / "tutorial"),
            "celery_app_module": "tasks", "celery_worker_smoke_task": "tasks.add", "celery_worker_smoke_args": [4, 4],
            "celery_worker_smoke_result": 8}
TUTORIAL_ADD = "import celery_fleet\nprint(celery_fleet.app.send_task('tasks.add', (4, 4)).get(timeout=60))"


def assert_refused_before_any_change(done, *texts):
    """A run that failed saying each of `texts` (its output's spaces and line breaks folded), before
    any host changed."""
    output = " ".join(plain(done.stdout).split())
    assert done.returncode != 0, output[-2000:]
    for text in texts:
        assert text in output, f"the refusal does not say {text!r}: {output[-3000:]}"
    assert set(recap(done.stdout).values()) == {0}, "a host changed before the refusal"


def refusal_problems(cases, special=None):
    """Run site.yml once per bad input, four at a time. Each case is (what is wrong, its extra
    variables, or a key of `special` naming other arguments, the text of the one rule that must
    refuse it: its message names one variable and one reason). Returns (problems, seconds)."""
    special = special or {}

    def attempt(case):
        name, variables, expected = case
        extra = special[variables] if isinstance(variables, str) else ["-e", json.dumps(variables)]
        return name, expected, ansible_playbook("site.yml", *extra, env=dict(STOCK_ANSIBLE, ANSIBLE_STDOUT_CALLBACK="ansible.posix.json"))

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(attempt, cases))
    problems = []
    for name, expected, done in results:
        failures, stats = refusals(done.stdout)
        rules = {task for task, _, _ in failures}
        if done.returncode == 0 or not failures:
            problems.append(f"{name}: the play succeeded")
        elif len(rules) != 1 or not all(expected in message for _, message, _ in failures):
            problems.append(f"{name}: not refused by the one rule {expected!r} alone: {failures}")
        elif any(variables_named(message) - variables_named(expected) for _, message, _ in failures):
            problems.append(f"{name}: the refusal names other variables than {expected!r}: {failures}")
        elif any(len(errors or []) > 1 for _, _, errors in failures):
            problems.append(f"{name}: the argument spec named more than one error: {failures}")
        elif any(host["changed"] for host in stats.values()):
            problems.append(f"{name}: a host changed before the failure: {stats}")
    return problems, round(time.monotonic() - started, 1)


def host_state(h, services=()):
    """What a changed host would show: files under /etc and /opt newer than the drill's marker
    (mark_hosts), and the main PIDs of `services` and of the app's processes."""
    changed = h.check_output("find /etc /opt -newer /run/celery-fleet-drill-marker -print 2>/dev/null | head -20")
    pids = [h.check_output(f"systemctl show -p MainPID --value {service} 2>/dev/null || true") for service in services]
    return changed, pids, sorted(celery_main_processes(h, "worker") + celery_main_processes(h, "beat"))


def mark_hosts(hosts, services=()):
    """Mark the hosts' state before a drill; returns {host: host_state} to compare with after."""
    for h in hosts:
        h.check_output("touch /run/celery-fleet-drill-marker")
    time.sleep(1.1)  # find's -newer compares whole seconds on some filesystems
    return {h.backend.host: host_state(h, services) for h in hosts}
