"""The demo app's Flower switched off, then the demo app replaced by the tutorial's, as the
README's "Deploy your own app" does after `make demo` (scenario rabbitmq-systemd: a single app,
Flower under a path).

Flower switched off (`-e celery_flower_enabled=false`) takes its program or unit, configuration,
logins, account and nginx site off the host, and its account and the management plugin off
RabbitMQ; nginx keeps serving (its configuration is valid). The replacement then turns it on
again, for the new app.

The inventory's single-app variables name the tutorial instead of the demo app. The first run is
refused before any host changes: the demo app's processes still run and the inventory no longer
names it; the refusal names the app, its processes, the tasks waiting for it, and the command that
removes it. That command (`-e celery_app_remove=fleetapp`) removes everything of the demo app on
every host (its Flower's own nginx site too, which would otherwise stay enabled beside the new one:
two default servers) and keeps what both apps use (the account `celery`, the broker's user and
vhost); the tutorial's `add(4, 4)` returns 8 and its Flower answers. The rerun is the one users
read: stock Ansible with -vvv, which prints every task's arguments and results; it changes nothing
on any host and prints no secret (the scenario's idempotence: it has no step of its own). These
tests run last (conftest: replaces_app).
"""

import json
import os

import pytest
from conftest import (
    APP,
    STOCK_ANSIBLE,
    TUTORIAL,
    TUTORIAL_ADD,
    TUTORIAL_APP,
    ansible_playbook,
    assert_refused_before_any_change,
    flower_left_of,
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

pytestmark = pytest.mark.replaces_app

# The scenario's Flower path (celery_flower_url_prefix), the same for the new app.
FLOWER = "/" + os.environ.get("FLEET_FLOWER_URL_PREFIX", "").strip("/")


@pytest.fixture(scope="module")
def flower_off(brokers):
    """The run with Flower switched off, and what it left on the Flower host and the broker."""
    flower, broker = required_group("flower")[0], brokers[0]
    assert flower_left_of(flower, APP), "the scenario's Flower must run before it is switched off"
    done = ansible_playbook("site.yml", "-e", "celery_flower_enabled=false")
    return {"run": done, "left": flower_left_of(flower, APP), "account": flower.run("getent passwd flower").rc != 2,
            "nginx_ok": flower.run("nginx -t -q").rc == 0,
            "broker_users": broker.check_output("rabbitmqctl -q list_users --formatter json"),
            "plugins": broker.check_output("rabbitmq-plugins list -q -E")}


def test_switching_flower_off_removes_it_from_the_host_and_the_broker(flower_off):
    assert flower_off["run"].returncode == 0, plain(flower_off["run"].stdout)[-3000:]
    assert flower_off["left"] == [], flower_off["left"]
    assert not flower_off["account"], "Flower's account stays"
    assert flower_off["nginx_ok"], "nginx's configuration is broken without Flower's site"
    assert "flower-monitor" not in flower_off["broker_users"], "Flower's account on RabbitMQ's management API stays"
    assert "rabbitmq_management" not in flower_off["plugins"], flower_off["plugins"]


@pytest.fixture(scope="module")
def runs(flower_off, workers, clients):
    """The refused run, the replacement with the command it named, the verbose rerun."""
    assert processes(workers[0]), f"the scenario's own app {APP} must run before it is replaced"
    refused = ansible_playbook("site.yml", "-e", json.dumps(TUTORIAL))
    command = f"celery_app_remove={APP}"
    replaced = ansible_playbook("site.yml", "-e", json.dumps(TUTORIAL), "-e", command)
    rerun = ansible_playbook("site.yml", "-vvv", "-e", json.dumps(TUTORIAL), "-e", command, env=STOCK_ANSIBLE)
    return {"hosts": workers + clients, "refused": refused, "replaced": replaced, "rerun": rerun}


def test_a_run_that_no_longer_names_the_running_app_is_refused_before_any_host_changes(runs, workers):
    assert_refused_before_any_change(runs["refused"], f"{APP} runs on {workers[0].backend.host} (", f"but the inventory names no app {APP};",
                                     "tasks wait in its queues (queue ", f"-e celery_app_remove={APP} with a single app")


def test_the_replaced_app_leaves_nothing_and_nginx_serves_one_site(runs):
    output = plain(runs["replaced"].stdout)
    assert runs["replaced"].returncode == 0, output[-3000:]
    for h in runs["hosts"]:
        assert left_of(h, APP) == [], h.backend.host
    flower = required_group("flower")[0]
    assert flower.check_output("ls /etc/nginx/sites-enabled").split() == [f"{TUTORIAL_APP}-flower"]
    assert flower.run("nginx -t -q").rc == 0
    # What both apps use stays: the account and the broker's user and vhost (the tutorial's now).
    assert flower.run("getent passwd celery").rc == 0


def test_the_tutorials_add_returns_8_and_its_flower_answers(runs, clients):
    assert run_python(clients[0], TUTORIAL_ADD, timeout=90, app=TUTORIAL_APP).strip() == "8"
    flower = required_group("flower")[0]
    status, body = get(f"http://{private_address(flower)}{FLOWER.rstrip('/')}/api/workers?refresh=1", auth=("admin", secret("flower_password")), timeout=30)
    assert status == 200 and json.loads(body), (status, body[:500])


def test_a_verbose_rerun_changes_nothing_on_any_host_and_prints_no_secret(runs):
    secrets = {name: secret(name) for name in ("flower_password", "flower_cookie_secret", "broker_password", "flower_broker_api_password")}
    done = runs["rerun"]
    out = done.stdout + done.stderr
    assert done.returncode == 0, plain(out)[-3000:]
    assert " EXEC " in out, "the rerun printed no command it ran on a host: it was not verbose"
    changed = recap(done.stdout)
    assert set(changed) >= {h.backend.host for h in runs["hosts"]} and not any(changed.values()), (changed, plain(out)[-3000:])
    leaked = [name for name, value in secrets.items() if value in out]
    assert not leaked, f"-vvv printed {leaked}"
