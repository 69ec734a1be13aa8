"""A run that ends half-way, after writing a service's configuration and before that service runs
it, is finished by the next run (scenario apps: once on Redis under supervisor, once on RabbitMQ
under systemd).

A Ctrl-C, a lost SSH session or a failed check can end a run between writing a file and
restarting what reads it, and a handler that was to restart it is then forgotten. Here the run
ends there on purpose, on two hosts: on the Flower host a stray broken file in nginx's conf.d
(someone else's) fails `nginx -t` after the run wrote Flower's configuration and nginx's site; on
the broker host its unit is disabled and masked for the run (`systemctl mask --runtime`), so the
run writes the broker's configuration and fails when it enables the unit, before the restart.
The next run, with the stray file gone, the unit unmasked and the same inputs, changes none of
those files, yet must find each service running an older configuration than the one written:
by what the service last started with, not by what this run changed. The tests are marked
`disrupts`: they run last and leave the new values in place.
"""

import json
import secrets
import shlex
from pathlib import Path

import pytest
from conftest import BROKER, BROKER_SERVICE, INVENTORY, ansible_playbook, broker_pid, plain, processes, required_group, secret

pytestmark = [pytest.mark.apps, pytest.mark.disrupts]

# A broker setting whose only effect is on what the broker runs with: (variable, value, its line in
# the broker's configuration, how the running broker reports it).
BROKER_SETTING = {
    "redis": ("redis_tcp_keepalive", 301, "/etc/redis/redis.conf:tcp-keepalive 301",
              "REDISCLI_AUTH=\"$(sed -n 's/^requirepass //p' /etc/redis/redis.conf)\" redis-cli --raw CONFIG GET tcp-keepalive | tail -n 1"),
    "rabbitmq": ("rabbitmq_vm_memory_high_watermark", 0.41, "/etc/rabbitmq/rabbitmq.conf:vm_memory_high_watermark.relative = 0.41",
                 "rabbitmqctl -q eval 'vm_memory_monitor:get_vm_memory_high_watermark().'"),
}.get(BROKER)
# nginx's site changes with the scrapers' allow-list: 127.0.0.2 (loopback too) gets /metrics.
METRICS_ALLOW = "127.0.0.1,127.0.0.2"
# Fails `nginx -t` while it is there.
STRAY_NGINX_FILE = "/etc/nginx/conf.d/stray.conf"
# Flower's configuration changes with the demo app's Flower password (a lab secret); the
# tutorial's Flower keeps its configuration.
CHANGED_APP, OTHER_APP = "fleetapp", "tutorial"


def broker_state(broker):
    return {"pid": broker_pid(broker),
            "setting": broker.check_output(BROKER_SETTING[3]).strip()}


# An HTTP request made on host h (from `source`, a loopback address), and the status it got.
STATUS = """
import base64, http.client, sys
port, path, source, login = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10, source_address=(source, 0))
headers = {"Authorization": "Basic " + base64.b64encode(login.encode()).decode()} if login else {}
connection.request("GET", path, headers=headers)
print(connection.getresponse().status)
"""


def http_status(h, port, path, source="127.0.0.1", login=""):
    return h.check_output(f"python3 -c {shlex.quote(STATUS)} {port} {shlex.quote(path)} {source} {shlex.quote(login)}")


def metrics_status(flower_host):
    """What nginx answers a scraper on 127.0.0.2 (its allow-list decides: 200 or 403)."""
    return http_status(flower_host, 80, f"/{CHANGED_APP}/metrics", source="127.0.0.2")


def flower_status(flower_host, app, password):
    """What the app's Flower itself answers on its own port (its own login, not nginx's)."""
    port = flower_host.check_output(f"sed -n 's/^port = //p' /etc/celery-fleet/{app}-flower.py")
    return http_status(flower_host, port, f"/{app}/api/workers?refresh=0", login=f"{app}-admin:{password}")


def snapshot(broker, flower_host, passwords):
    return {"broker": broker_state(broker), "metrics": metrics_status(flower_host),
            "flower_pids": {app: processes(flower_host, app)["flower"][1] for app in (CHANGED_APP, OTHER_APP)},
            "flower_logins": {which: flower_status(flower_host, CHANGED_APP, password) for which, password in passwords.items()}}


@pytest.fixture(scope="module")
def interrupted(brokers):
    """The fleet before, after the interrupted run and after the next, recorded as each run ended."""
    if BROKER_SETTING is None:
        pytest.skip(f"no broker host to interrupt with {BROKER}")
    broker, flower_host = brokers[0], required_group("flower")[0]
    password_file = Path(INVENTORY).parent / ".secrets" / f"{CHANGED_APP}_flower_password"
    # A new one each time: the lab's secrets outlive the scenario's hosts.
    passwords = {"old": secret(f"{CHANGED_APP}_flower_password"), "new": secrets.token_hex(12)}
    inputs = ("-e", json.dumps({BROKER_SETTING[0]: BROKER_SETTING[1]}))
    env = {"FLEET_METRICS_ALLOW": METRICS_ALLOW}
    states = {"before": snapshot(broker, flower_host, passwords)}

    password_file.write_text(passwords["new"] + "\n")
    broker.check_output(f"systemctl disable --quiet {BROKER_SERVICE} && systemctl mask --quiet --runtime {BROKER_SERVICE}")
    flower_host.check_output(f"echo 'stray {{' > {STRAY_NGINX_FILE}")
    try:
        failed = ansible_playbook("site.yml", *inputs, env=env)
    finally:
        broker.check_output(f"systemctl unmask --quiet --runtime {BROKER_SERVICE}")
        flower_host.check_output(f"rm -f {STRAY_NGINX_FILE}")
    assert failed.returncode != 0, "the run meant to end half-way passed"
    states["interrupted"] = snapshot(broker, flower_host, passwords)
    config, line = BROKER_SETTING[2].split(":")
    written = {"broker": broker.run(f"grep -qxF '{line}' {config}").rc == 0,
               "nginx site": flower_host.run("grep -qrF 'allow 127.0.0.2;' /etc/nginx/sites-available/").rc == 0,
               "Flower": flower_host.run(f"grep -qF {passwords['new']} /etc/celery-fleet/{CHANGED_APP}-flower.py").rc == 0}
    assert all(written.values()), f"the run ended before it wrote every file: {written}"

    # Each test judges the next run's outcome: what failed in it is what one of them claims.
    finished = ansible_playbook("site.yml", *inputs, env=env)
    states["finished"] = snapshot(broker, flower_host, passwords)
    print(f"\ninterrupted run: {json.dumps(states)}")
    return states, finished


def test_the_broker_and_nginx_run_what_an_interrupted_run_wrote_after_the_next_run(interrupted):
    (before, stopped, finished), run = (interrupted[0][when] for when in ("before", "interrupted", "finished")), interrupted[1]
    # The interrupted run restarted nothing: the state a forgotten handler leaves.
    assert stopped["broker"] == before["broker"], (before["broker"], stopped["broker"])
    assert stopped["metrics"] == before["metrics"] == "403", (before["metrics"], stopped["metrics"])
    # The next run changed no file of theirs, yet restarted the broker and reloaded nginx.
    assert finished["broker"]["setting"] == str(BROKER_SETTING[1]), f"the broker still runs its old configuration: {finished['broker']}"
    assert finished["broker"]["pid"] != before["broker"]["pid"], finished["broker"]
    assert finished["metrics"] == "200", f"nginx still serves its old site: a scraper on 127.0.0.2 got {finished['metrics']}"
    assert run.returncode == 0, "the next run failed: " + plain(run.stdout)[-3000:]


def test_flower_restarts_on_its_changed_configuration_and_the_other_apps_flower_does_not(interrupted):
    (before, stopped, finished), run = (interrupted[0][when] for when in ("before", "interrupted", "finished")), interrupted[1]
    assert stopped["flower_pids"] == before["flower_pids"], (before["flower_pids"], stopped["flower_pids"])
    assert before["flower_logins"] == {"old": "200", "new": "401"}, before["flower_logins"]
    assert finished["flower_pids"][CHANGED_APP] != before["flower_pids"][CHANGED_APP], "Flower was not restarted on its new configuration"
    assert finished["flower_logins"] == {"old": "401", "new": "200"}, f"Flower still runs its old configuration: {finished['flower_logins']}"
    assert finished["flower_pids"][OTHER_APP] == before["flower_pids"][OTHER_APP], "the other app's Flower was restarted"
    assert run.returncode == 0, "the next run failed: " + plain(run.stdout)[-3000:]
