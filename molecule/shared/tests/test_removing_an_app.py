"""An app taken out of the fleet with `state: absent` (scenario apps: once on Redis under
supervisor, once on RabbitMQ under systemd).

First the tutorial's app renamed in the list: refused before any host changes, naming the app
whose processes still run. Then the demo app goes (it has the most to leave behind: two worker
groups, beat, a Flower, a grant to send to the tutorial) and the tutorial's app stays. Three
tasks wait on the demo app's `long` queue, whose worker group is stopped by hand: the first run
is refused before any host changes,
naming the count; the second, with `drop_queued: true`, removes everything the fleet put on every
host and on the broker for the demo app and names the count it dropped; the third changes
nothing. The tutorial's processes keep their PIDs throughout and its tasks still run. Last, what
the fleet makes on the broker for an app (RabbitMQ: its user, with the role's tag, and vhost;
Redis: its ACL user in the configuration the role wrote) for one no host runs any more and the
inventory no longer names: refused before any host changes. The tests are marked `disrupts`:
they run last (after the interrupted run's, by file name).
"""

import json
from pathlib import Path

import pytest
import yaml
from conftest import (
    BROKER,
    PM,
    ansible_playbook,
    assert_refused_before_any_change,
    get,
    left_of,
    plain,
    private_address,
    processes,
    recap,
    required_group,
    run_python,
    secret,
)

pytestmark = [pytest.mark.apps, pytest.mark.disrupts]

REMOVED, KEPT, RENAMED, GONE = "fleetapp", "tutorial", "tutor", "ledger"
WAITING = 3

SEND_LONG = f"""
import json
import celery_fleet
print(json.dumps([celery_fleet.app.send_task('fleetapp.tasks.add', (1, 1), queue='long').id for _ in range({WAITING})]))
"""
ADD = """
import celery_fleet
print(celery_fleet.app.send_task('tasks.add', (4, 4), queue='celery').get(timeout=60))
"""


def scenario_apps():
    """The scenario's celery_apps as its inventory writes them (lookups and all)."""
    scenario = Path(__file__).resolve().parents[2] / "apps" / "group_vars" / "all" / "apps.yml"
    return yaml.safe_load(scenario.read_text())["celery_apps"]


def apps_marked(drop_queued):
    """The scenario's apps, the demo app marked absent: an extra-vars argument."""
    apps = [dict(app, state="absent", drop_queued=drop_queued) if app["name"] == REMOVED else app for app in scenario_apps()]
    return json.dumps({"celery_apps": apps})


def apps_renamed():
    """The scenario's apps with the kept one renamed (RENAMED), the grant to it too."""
    apps = [dict(app, name=RENAMED) if app["name"] == KEPT else dict(app, sends_to=[RENAMED]) for app in scenario_apps()]
    return json.dumps({"celery_apps": apps})


def stop_long_group(worker):
    name = f"celery-{REMOVED}-worker-long" if PM == "supervisor" else f"celery-{REMOVED}@worker-long.service"
    worker.check_output(f"supervisorctl stop {name}" if PM == "supervisor" else f"systemctl stop {name}")


def kept_pids(hosts):
    return {h.backend.host: processes(h, KEPT) for h in hosts}


@pytest.fixture(scope="module")
def runs(workers, clients):
    """The refused run, the removal, the rerun; the kept app's processes before and after."""
    hosts = workers + [c for c in clients if c.backend.host not in {w.backend.host for w in workers}]
    stop_long_group(workers[0])
    waiting = json.loads(run_python(clients[0], SEND_LONG, app=REMOVED))
    before = kept_pids(workers)
    renamed = ansible_playbook("site.yml", "-e", apps_renamed())
    refused = ansible_playbook("site.yml", "-e", apps_marked(False))
    removed = ansible_playbook("site.yml", "-e", apps_marked(True))
    after = kept_pids(workers)
    rerun = ansible_playbook("site.yml", "-e", apps_marked(True))
    print(f"\nremoving an app: {WAITING} waiting ({', '.join(waiting)}), {KEPT}'s processes before {before}, after {after}")
    return {"hosts": hosts, "renamed": renamed, "refused": refused, "removed": removed, "rerun": rerun, "before": before, "after": after}


def test_an_app_renamed_in_the_list_is_refused_naming_the_one_still_running_before_any_host_changes(runs, workers):
    assert_refused_before_any_change(runs["renamed"], f"{KEPT} runs on {workers[0].backend.host} (", f"but the inventory names no app {KEPT};",
                                     "tasks wait in its queues", "state: absent on its entry in celery_apps")


def test_removing_an_app_while_tasks_wait_for_it_is_refused_before_any_host_changes(runs):
    assert_refused_before_any_change(runs["refused"], f"celery_apps: {REMOVED} is marked absent, but {WAITING} tasks wait in its queues",
                                     "add drop_queued: true to its entry")


def test_an_app_removed_with_drop_queued_leaves_nothing_on_any_host_or_on_the_broker(runs, brokers):
    output = " ".join(plain(runs["removed"].stdout).split())
    assert runs["removed"].returncode == 0, output[-3000:]
    assert f"{REMOVED}: {WAITING} waiting tasks are dropped with it (drop_queued)" in output, output[-3000:]
    for h in runs["hosts"]:
        where = h.backend.host
        assert left_of(h, REMOVED) == [], where
        for account in (f"celery-{REMOVED}", f"flower-{REMOVED}"):
            assert h.run(f"getent passwd {account}").rc == 2 and h.run(f"getent group {account}").rc == 2, f"{where} keeps {account}"
    broker = brokers[0]
    if BROKER == "rabbitmq":
        assert REMOVED not in broker.check_output("rabbitmqctl -q list_vhosts name").split()
        assert REMOVED not in [line.split()[0] for line in broker.check_output("rabbitmqctl -q list_users").splitlines() if line.strip()]
    else:
        auth = "REDISCLI_AUTH=\"$(sed -n 's/^requirepass //p' /etc/redis/redis.conf)\""
        assert REMOVED not in broker.check_output(f"{auth} redis-cli --raw ACL USERS").split()
        keys = broker.check_output(f"for db in $(seq 0 15); do {auth} redis-cli -n $db --scan --pattern '{REMOVED}:*'; done")
        assert keys == "", f"Redis keeps {REMOVED}'s keys: {keys[:500]}"


def test_the_app_left_keeps_its_processes_runs_its_tasks_and_a_rerun_changes_nothing(runs, clients):
    assert runs["after"] == runs["before"], "the kept app's processes were restarted or stopped"
    assert all(state == "RUNNING" for found in runs["after"].values() for state, _ in found.values()), runs["after"]
    assert run_python(clients[0], ADD, timeout=90, app=KEPT).strip() == "8"
    site = f"http://{private_address(required_group('flower')[0])}"
    status, body = get(f"{site}/{KEPT}/api/workers?refresh=1", auth=(f"{KEPT}-admin", secret(f"{KEPT}_flower_password")), timeout=30)
    assert status == 200 and json.loads(body), (status, body[:500])
    assert get(f"{site}/{REMOVED}/api/workers")[0] == 404
    assert runs["rerun"].returncode == 0 and set(recap(runs["rerun"].stdout).values()) == {0}, plain(runs["rerun"].stdout)[-3000:]


def leave_an_account_of_an_app_gone(broker):
    """On the broker, what the fleet made for an app GONE, whose hosts are gone and which the
    inventory no longer names; returns the command that deletes it."""
    if BROKER == "rabbitmq":
        broker.check_output(f"rabbitmqctl -q add_vhost {GONE} && rabbitmqctl -q add_user {GONE} {GONE}-broker-password-0123"
                            f" && rabbitmqctl -q set_user_tags {GONE} celery-fleet && rabbitmqctl -q set_permissions -p {GONE} {GONE} '.*' '.*' '.*'")
        return f"rabbitmqctl -q delete_user {GONE}; rabbitmqctl -q delete_vhost {GONE}"
    broker.check_output(f"echo 'user {GONE} reset on #{'0' * 64} ~{GONE}:* &{GONE}:* -@all +ping' >> /etc/redis/redis.conf")
    return f"sed -i '/^user {GONE} /d' /etc/redis/redis.conf"


@pytest.fixture(scope="module")
def account_left(runs, brokers):
    """The run (the inventory as after the removal) with the account of an app gone on the broker."""
    delete = leave_an_account_of_an_app_gone(brokers[0])
    try:
        return ansible_playbook("site.yml", "-e", apps_marked(True))
    finally:
        brokers[0].check_output(delete)


def test_an_account_the_fleet_made_on_the_broker_for_an_app_no_longer_named_is_refused_before_any_host_changes(account_left):
    where = f"with permissions on vhost {GONE}:" if BROKER == "rabbitmq" else f"for the keys {GONE}:*:"
    assert_refused_before_any_change(account_left, f"no longer lists {GONE}, ", where, "state: absent on its entry in celery_apps")
