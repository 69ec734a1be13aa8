"""Several apps on one broker (scenario apps, once per broker): each its own service.

The inventory (molecule/apps/group_vars/all/apps.yml) lists the demo app and the tutorial's
tasks.py unchanged; both consume a queue named `celery`. Tasks are sent from the client host
through each app's own release and environment, as the team's own code would send them, and
counted by task id in every worker log of both apps.
"""

import json
import re
import shutil
from pathlib import Path

import pytest
from conftest import (
    BROKER,
    PM,
    STOCK_ANSIBLE,
    ansible_playbook,
    assert_refused_before_any_change,
    get,
    plain,
    private_address,
    processes,
    required_group,
    run_python,
    secret,
    wait_until,
)

pytestmark = pytest.mark.apps

APPS = {"fleetapp": "fleetapp.tasks.add", "tutorial": "tasks.add"}
SENT_PER_APP = 5

SEND = """
import json
import celery_fleet
sent = [celery_fleet.app.send_task({task!r}, (4, 4), queue='celery') for _ in range({count})]
print(json.dumps({{result.id: result.get(timeout=60) for result in sent}}))
"""


def worker_log(h, app):
    """Everything the worker groups of `app` logged on host h."""
    if PM == "supervisor":
        return h.check_output(f"cat /var/log/celery/celery-{app}-worker-*.log")
    return h.check_output(f"journalctl --no-pager --output=cat --unit='celery-{app}@worker-*.service'")


@pytest.fixture(scope="module")
def sent(clients):
    """{app: {task id: result}} of SENT_PER_APP add(4, 4) sent through each app's own client."""
    return {app: json.loads(run_python(clients[0], SEND.format(task=task, count=SENT_PER_APP), timeout=120, app=app))
            for app, task in APPS.items()}


def test_each_apps_tasks_run_on_its_own_workers_only(sent, workers):
    logs = {app: "".join(worker_log(w, app) for w in workers) for app in APPS}
    for app, results in sent.items():
        assert list(results.values()) == [8] * SENT_PER_APP, results
        for task_id in results:
            assert re.search(rf"Task {re.escape(APPS[app])}\[{task_id}\] succeeded", logs[app]), f"{app}'s {task_id} did not run on {app}'s workers"
            for other in set(APPS) - {app}:
                assert task_id not in logs[other], f"{app}'s task {task_id} reached {other}'s workers"


def test_no_worker_of_any_app_met_an_unregistered_task(sent, workers):
    for w in workers:
        for app in APPS:
            log = worker_log(w, app)
            assert "NotRegistered" not in log and "unregistered task" not in log, f"{app} on {w.backend.host}: {log[-2000:]}"


# The broker itself refuses: the demo app's own credentials, from its own environment file,
# taking from the tutorial's queue (Redis: its ACL user on the key tutorial:celery; RabbitMQ: its
# user, which may publish to the tutorial's vhost, getting from the queue there). Each probe
# first does the same on the app's own queue, which must work.
PROBES = {
    "redis": """
import os, redis
client = redis.Redis.from_url(os.environ['CELERY_BROKER_URL'])
client.llen('fleetapp:celery')
for probe in (lambda: client.llen('tutorial:celery'), lambda: client.lpop('tutorial:celery')):
    try:
        probe()
        print('ALLOWED')
    except redis.exceptions.NoPermissionError as error:
        print('REFUSED', error)
""",
    "rabbitmq": """
import os, kombu
url = os.environ['CELERY_BROKER_URL']
with kombu.Connection(url) as own:
    own.channel().basic_get('celery')
try:
    with kombu.Connection(url.rsplit('/', 1)[0] + '/tutorial') as other:
        other.channel().basic_get('celery')
    print('ALLOWED')
except Exception as error:
    print('REFUSED', type(error).__name__, error)
""",
}


def test_the_broker_refuses_one_apps_credentials_on_another_apps_queue(clients):
    outcome = run_python(clients[0], PROBES[BROKER], app="fleetapp").splitlines()
    assert outcome and all(line.startswith("REFUSED") for line in outcome), outcome
    if BROKER == "redis":
        assert all("NOPERM" in line or "no permissions" in line for line in outcome), outcome
    else:
        assert all("access to queue 'celery' in vhost 'tutorial' refused for user 'fleetapp'" in line for line in outcome), outcome


# Services hand work to each other: the demo app may send to the tutorial's queues (sends_to in
# the inventory), the tutorial may not send to the demo app's.
CROSS_SEND = """
import json
import celery_fleet
print(json.dumps([celery_fleet.send_task('tutorial', 'tasks.add', (2, 3)) for _ in range(3)]))
"""

UNGRANTED_SEND = """
import json, os
import celery_fleet
url = os.environ['CELERY_BROKER_URL']
amqp = url.startswith('amqp')
grant = {'queues': ['celery'], 'url': url.rsplit('/', 1)[0] + '/fleetapp' if amqp else url,
         'transport_options': {'confirm_publish': True} if amqp else {'global_keyprefix': 'fleetapp:'}}
try:
    celery_fleet.send_task('fleetapp', 'fleetapp.tasks.add', (1, 1), environ={'FLEET_SEND_TO': json.dumps({'fleetapp': grant})})
    print('SENT')
except Exception as error:
    print('REFUSED', type(error).__name__, error)
"""


def test_a_granted_send_to_another_app_runs_on_that_apps_workers(clients, workers):
    ids = json.loads(run_python(clients[0], CROSS_SEND, app="fleetapp"))
    assert len(set(ids)) == 3, ids

    def ran():
        log = "".join(worker_log(w, "tutorial") for w in workers)
        return all(re.search(rf"Task tasks\.add\[{task_id}\] succeeded .*: 5", log) for task_id in ids)

    assert wait_until(ran, 60), f"the tutorial's workers did not run {ids}"
    assert not any(task_id in worker_log(w, "fleetapp") for w in workers for task_id in ids)


def test_a_send_to_an_app_without_the_grant_is_refused_by_the_broker(clients):
    # The tutorial's own account, aimed at the demo app's queue as a grant would aim it.
    outcome = run_python(clients[0], UNGRANTED_SEND, app="tutorial").strip()
    assert outcome.startswith("REFUSED"), outcome
    if BROKER == "redis":
        assert "no permissions" in outcome, outcome
    else:
        assert "access to vhost 'fleetapp' refused for user 'tutorial'" in outcome, outcome


def test_a_rolling_restart_of_one_app_leaves_the_other_apps_processes_alone(workers):
    before = {app: [processes(w, app) for w in workers] for app in APPS}
    done = ansible_playbook("playbooks/rolling_restart.yml", "-e", "celery_app=tutorial")
    after = {app: [processes(w, app) for w in workers] for app in APPS}
    assert done.returncode == 0, plain(done.stdout)[-3000:]
    assert after["fleetapp"] == before["fleetapp"], "the demo app's processes were restarted"
    for old, new in zip(before["tutorial"], after["tutorial"]):
        assert set(new) == set(old) and all(state == "RUNNING" for state, _ in new.values()), new
        assert all(new[name][1] != old[name][1] for name in old if name.startswith("worker-")), (old, new)


def test_status_reports_every_app(workers):
    done = ansible_playbook("playbooks/workers.yml", "-e", "celery_action=status")
    output = plain(done.stdout)
    assert done.returncode == 0, output[-3000:]
    for app in APPS:
        assert len(re.findall(rf"{app}: worker-default: RUNNING, pid \d+, up \d+ s, ping ok", output)) == len(workers), output[-3000:]


def current_releases(hosts, app):
    return [h.check_output(f"readlink /opt/{app}/current") for h in hosts]


def test_a_deploy_and_a_rollback_of_one_app_switch_it_on_every_host_and_leave_the_other_alone(brokers, workers, tmp_path):
    """The tutorial's new version goes to its worker host and its client host (which runs no
    process of it, and under supervisor has no supervisor at all), then back; the demo app's
    release and processes stay as they were."""
    hosts = list(workers) + [b for b in brokers if b.backend.host not in {w.backend.host for w in workers}]
    version2 = tmp_path / "tutorial"
    shutil.copytree(Path(__file__).resolve().parents[1] / "apps" / "tutorial", version2)
    with open(version2 / "tasks.py", "a") as tasks:
        tasks.write("\n# version 2\n")
    before = {app: current_releases(hosts, app) for app in APPS}
    demo_processes = [processes(w, "fleetapp") for w in workers]

    deployed = ansible_playbook("playbooks/deploy.yml", "-e", "celery_app=tutorial", env={"FLEET_TUTORIAL_SRC": str(version2)})
    assert deployed.returncode == 0, plain(deployed.stdout)[-3000:]
    switched = current_releases(hosts, "tutorial")
    assert all(new != old for new, old in zip(switched, before["tutorial"])), (before["tutorial"], switched)
    assert len(set(switched)) == 1, switched

    rolled_back = ansible_playbook("playbooks/rollback.yml", "-e", "celery_app=tutorial", env={"FLEET_TUTORIAL_SRC": str(version2)})
    assert rolled_back.returncode == 0, plain(rolled_back.stdout)[-3000:]
    assert current_releases(hosts, "tutorial") == before["tutorial"]
    assert current_releases(hosts, "fleetapp") == before["fleetapp"]
    assert [processes(w, "fleetapp") for w in workers] == demo_processes, "the demo app's processes were restarted"


# Each app's Flower under its own path (the app's name) behind the worker host's one nginx site,
# with its own login: the demo app's Flower knows its `long` group, the tutorial's does not.
def flower_login(app):
    return f"{app}-admin", secret(f"{app}_flower_password")


def test_each_apps_flower_answers_under_its_own_path_with_its_own_login():
    site = f"http://{private_address(required_group('flower')[0])}"
    for app in APPS:
        status, body = get(f"{site}/{app}/api/workers?refresh=1", auth=flower_login(app), timeout=30)
        assert status == 200, (app, status, body[:500])
        nodes = sorted(json.loads(body))
        assert nodes and all(node.split("@")[0] in {"default", "long"} for node in nodes), (app, nodes)
        assert any(node.startswith("long@") for node in nodes) == (app == "fleetapp"), (app, nodes)


def test_one_apps_flower_login_is_refused_by_the_other_apps_flower():
    site = f"http://{private_address(required_group('flower')[0])}"
    for app, other in (("fleetapp", "tutorial"), ("tutorial", "fleetapp")):
        assert get(f"{site}/{other}/api/workers", auth=flower_login(app))[0] == 401, (app, other)
        assert get(f"{site}/{other}/api/workers")[0] == 401, other


# Preflight refuses what cannot work, naming the variable, before any host changes.
GOOD = [{"name": "fleetapp", "broker_password": "a" * 20 + "1"}, {"name": "tutorial", "module": "tasks", "broker_password": "b" * 20 + "2"}]
REFUSED = [
    ("site.yml", {"celery_apps": [GOOD[0], dict(GOOD[1], name="fleetapp")]}, "celery_apps[1].name (fleetapp) names another app too"),
    ("site.yml", {"celery_apps": [GOOD[0], dict(GOOD[1], broker_namespace="fleetapp")]}, "celery_apps[1].broker_namespace (fleetapp)"),
    ("site.yml", {"celery_apps": [GOOD[0], dict(GOOD[1], workers=["nosuchhost"])]}, "celery_apps[1].workers (nosuchhost) names hosts or groups the inventory does not have"),
    ("site.yml", {"celery_apps": [GOOD[0], dict(GOOD[1], broker_password="short")]}, "celery_apps[1].broker_password (app tutorial) is required"),
    ("site.yml", {"celery_apps": GOOD, "celery_app_module": "tasks"}, "celery_app_module is a single-app variable, ignored with celery_apps"),
    ("site.yml", {"celery_apps": [dict(GOOD[0], flower=True, flower_users=[{"name": "a", "password": "c" * 20}], flower_url_prefix="ops"),
                                  dict(GOOD[1], flower=True, flower_users=[{"name": "b", "password": "d" * 20}], flower_url_prefix="ops")]},
     "celery_apps[1].flower_url_prefix (ops) is another Flower's path too"),
    ("site.yml", {"celery_apps": [dict(GOOD[0], sends_to=["billing"]), GOOD[1]]}, "celery_apps[0].sends_to (billing) must name other apps of celery_apps"),
    ("playbooks/rolling_restart.yml", {"celery_app": "nosuchapp"}, "celery_app (nosuchapp) names no app of the fleet"),
]


@pytest.mark.parametrize("playbook, extra, message", REFUSED, ids=[case[2].split(" ")[0] for case in REFUSED])
def test_preflight_refuses_an_app_list_that_cannot_work(playbook, extra, message):
    assert_refused_before_any_change(ansible_playbook(playbook, "-e", json.dumps(extra), env=STOCK_ANSIBLE), message)
