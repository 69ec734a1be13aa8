"""Flower behind nginx, its metrics and the fleet's health check (scenarios with a `flower` group).

Each test closes one of Flower's traps: the login that Flower itself leaves off /metrics and
/healthcheck, the password on the command line, the empty Broker page without `broker_api`,
metrics that stay empty without task events; then a real browser, and the health check that
names the broker or the worker group that is down.
"""

import json
import os
import re
import shlex
import shutil
from base64 import b64encode
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import (
    APP,
    BROKER,
    BROKER_SERVICE,
    STOCK_ANSIBLE,
    WORKER_GROUPS,
    ansible_playbook,
    get,
    hostname,
    listening,
    plain,
    private_address,
    processes,
    recap,
    required_group,
    run_python,
    secret,
    start_process,
    stop_process,
    wait_until,
    workers_playbook,
)

pytestmark = pytest.mark.monitoring

# The scenario serves Flower under a path (celery_flower_url_prefix), as part of an existing site.
PREFIX = "/" + os.environ["FLEET_FLOWER_URL_PREFIX"].strip("/") if os.environ.get("FLEET_FLOWER_URL_PREFIX") else ""
# Screenshots stay after the scenario's hosts are gone: .cache/artifacts/<scenario>/ (ignored by git).
ARTIFACTS = Path(os.environ.get("MOLECULE_PROJECT_DIRECTORY", ".")) / ".cache" / "artifacts" / os.environ.get("MOLECULE_SCENARIO_NAME", "")
FLOWER_CONFIG = f"/etc/celery-fleet/{APP}-flower.py"


@pytest.fixture(scope="module")
def flower():
    return required_group("flower")[0]


@pytest.fixture(scope="module")
def base(flower):
    return f"http://{private_address(flower)}{PREFIX}"


@pytest.fixture(scope="module")
def login():
    return "admin", secret("flower_password")


def get_from(h, url):
    """The HTTP status of GET url made from host h (another lab container)."""
    code = (f"import urllib.request, urllib.error\ntry:\n    print(urllib.request.urlopen({url!r}, timeout=10).status)\n"
            "except urllib.error.HTTPError as e:\n    print(e.code)")
    return int(h.check_output(f"python3 -c {shlex.quote(code)}"))


def metric_total(text, type_, task):
    """Sum of flower_events_total for one event type and task name, over every worker."""
    pattern = re.compile(r'^flower_events_total\{([^}]*)\} ([0-9.e+]+)$', re.M)
    total = 0.0
    for labels, value in pattern.findall(text):
        found = dict(re.findall(r'(\w+)="([^"]*)"', labels))
        if found.get("type") == type_ and found.get("task") == task:
            total += float(value)
    return total


def send_adds(client, count):
    """Send `count` add tasks from the client host and wait for their results; returns the ids.

    The client takes the app from celery_fleet, as a client of the fleet does (README), so it gets
    the environment file's settings: task-sent events among them (a bare import of the module
    configures nothing: `celery_fleet.app` loads and configures the app on first use)."""
    code = (
        "import json; from celery_fleet import app; from fleetapp.tasks import add\n"
        f"results = [add.delay(i, 1) for i in range({count})]\n"
        "assert [r.get(timeout=60) for r in results] == [i + 1 for i in range(%d)]\n"
        "print(json.dumps([r.id for r in results]))" % count
    )
    return json.loads(run_python(client, code, timeout=120))


# --- Flower runs as it should ---------------------------------------------------------------------

def test_flower_runs_as_its_own_user_on_loopback_only(flower):
    state, pid = processes(flower)["flower"]
    assert state == "RUNNING" and pid > 0
    assert flower.check_output(f"ps -o user= -p {pid}").strip() == "flower"
    assert listening(flower, 5555) == {"127.0.0.1"}


def test_flower_configuration_is_readable_by_root_and_flower_only(flower):
    config = flower.file(FLOWER_CONFIG)
    assert (config.user, config.group, config.mode) == ("root", "flower", 0o640)
    assert flower.run(f"runuser -u celery -- cat {FLOWER_CONFIG}").rc != 0, "workers read it"
    assert flower.run(f"runuser -u flower -- cat {FLOWER_CONFIG}").rc == 0
    # A fixed cookie secret: Flower makes a random one at every start otherwise.
    assert secret("flower_cookie_secret") in flower.check_output(f"cat {FLOWER_CONFIG}")


def test_no_password_is_on_a_command_line(flower):
    table = flower.check_output("ps -eo args=")
    for name in ("flower_password", "flower_cookie_secret", "broker_password"):
        assert secret(name) not in table, f"ps shows {name}"
    assert f"--conf={FLOWER_CONFIG}" in table


# --- The way in: nginx with a login, /metrics for the allow-list -------------------------------------

def test_nothing_of_flower_is_served_without_a_login(base, login):
    for path in ("/", "/workers", "/tasks", "/api/workers", "/api/tasks", "/healthcheck", "/broker", "/dashboard"):
        status, _ = get(base + path)
        assert status == 401, f"{path} answered {status} without a login"
    status, _ = get(base + "/api/workers", auth=(login[0], "wrong-password-0123456789"))
    assert status == 401
    status, body = get(base + "/healthcheck", auth=login)
    assert (status, body) == (200, "OK")


def test_flower_lives_under_its_path_only(base, flower, login):
    if not PREFIX:
        pytest.fail("the scenario must set FLEET_FLOWER_URL_PREFIX to test celery_flower_url_prefix")
    root = base[: -len(PREFIX)]
    assert get(root + "/api/workers", auth=login)[0] == 404
    assert get(base + "/api/workers", auth=login)[0] == 200


def test_metrics_are_served_to_the_allow_list_only(base, flower, brokers):
    # This machine (the lab network's gateway) is on the scenario's allow-list; the broker is not.
    status, body = get(base + "/metrics")
    assert status == 200 and "flower_events_total" in body, body[:500]
    assert get_from(brokers[0], f"http://{private_address(flower)}{PREFIX}/metrics") == 403
    # Loopback is on the list too (the default), for a Prometheus on the host itself.
    assert get_from(flower, f"http://127.0.0.1{PREFIX}/metrics") == 200


def test_every_worker_is_online_in_flower(base, login, workers):
    expected = {f"{g}@{hostname(w)}" for w in workers for g in WORKER_GROUPS}

    def online():
        status, body = get(base + "/api/workers?refresh=1", auth=login, timeout=30)
        return status == 200 and expected <= set(json.loads(body))

    assert wait_until(online, 60, interval=3), get(base + "/api/workers", auth=login)[1][:1000]


def test_the_broker_page_shows_every_queue(base, login, brokers):
    # With RabbitMQ, Flower reads the queues through the management API (broker_api): without it
    # this page stays empty. With Redis it reads them from Redis itself.
    status, body = get(base + "/broker", auth=login)
    assert status == 200
    for queue in WORKER_GROUPS.values():
        assert re.search(rf">\s*{queue}\s*<", body), f"queue {queue} missing from the Broker page: {body[:2000]}"
    if BROKER == "rabbitmq":
        # The management API listens on the broker's private address, and wants a login.
        assert listening(brokers[0], 15672) == {private_address(brokers[0])}
        assert get(f"http://{private_address(brokers[0])}:15672/api/overview")[0] == 401


# --- Events and metrics ----------------------------------------------------------------------------

def test_metrics_count_every_task(base, clients):
    def counts():
        text = get(base + "/metrics")[1]
        return (metric_total(text, "task-sent", "fleetapp.tasks.add"),
                metric_total(text, "task-succeeded", "fleetapp.tasks.add"))

    before, count = counts(), 25
    send_adds(clients[0], count)
    # task-sent comes from the client (task_send_sent_event), task-succeeded from the workers.
    grown = lambda: tuple(now - then for now, then in zip(counts(), before))  # noqa: E731
    assert wait_until(lambda: grown() == (count, count), 30), f"sent and succeeded grew by {grown()}, not {count}"


# --- A real browser ---------------------------------------------------------------------------------

def test_a_browser_logs_in_sees_every_worker_and_finds_a_task(base, login, clients, workers):
    # selenium is pinned in requirements-dev.txt: a missing one fails here, it is never skipped.
    from selenium import webdriver
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    # Debian's chromium and its driver (make setup installs them): a test tool's own browser
    # download does not work here.
    chromium, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    assert chromium and driver_path, "make setup installs Debian's chromium and chromium-driver"
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(argument)
    browser = webdriver.Chrome(service=webdriver.ChromeService(executable_path=driver_path), options=options)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    try:
        # The login: basic auth on every request the page makes, its API calls included.
        browser.execute_cdp_cmd("Network.enable", {})
        token = b64encode(":".join(login).encode()).decode()
        browser.execute_cdp_cmd("Network.setExtraHTTPHeaders", {"headers": {"Authorization": f"Basic {token}"}})

        browser.get(base + "/")
        expected = {f"{g}@{hostname(w)}" for w in workers for g in WORKER_GROUPS}
        WebDriverWait(browser, 60).until(lambda b: all(node in b.page_source for node in expected))
        rows = browser.find_elements(By.CSS_SELECTOR, "#workers-table tbody tr")
        # A long node name wraps in its cell: compare without white space.
        online = {re.sub(r"\s+", "", row.find_element(By.CSS_SELECTOR, "td").text): row.text for row in rows}
        assert expected <= set(online), online
        assert all("Online" in online[node] for node in expected), online
        browser.save_screenshot(str(ARTIFACTS / "flower-workers.png"))

        # A task the test sends through the broker, not the browser: Flower saw it by its events.
        (task_id,) = send_adds(clients[0], 1)
        browser.get(base + "/tasks")
        WebDriverWait(browser, 60).until(lambda b: task_id in b.page_source or b.refresh())
        browser.save_screenshot(str(ARTIFACTS / "flower-tasks.png"))
        assert (ARTIFACTS / "flower-tasks.png").stat().st_size > 10_000
    finally:
        browser.quit()


# --- Bad settings are refused before any host changes --------------------------------------------

FLOWER_BAD_INPUTS = [
    ({"celery_flower_cookie_secret": ""}, "celery_flower_cookie_secret"),
    ({"celery_flower_cookie_secret": "0123456789abcdef"}, "celery_flower_cookie_secret"),
    ({"celery_flower_users": [{"name": "admin", "password": "changeme"}]}, "celery_flower_users"),
    ({"celery_flower_users": [{"name": "admin", "password": "x" * 20, "state": "absent"}]}, "celery_flower_users"),
    ({"celery_flower_metrics_allow": ["0.0.0.0/0"]}, "celery_flower_metrics_allow"),
    ({"celery_flower_tls_certificate": "/etc/ssl/flower.crt"}, "celery_flower_tls_key"),
    ({"celery_flower_url_prefix": "/flower/"}, "celery_flower_url_prefix"),
] + ([({"celery_flower_broker_api_password": "short"}, "celery_flower_broker_api_password")] if BROKER == "rabbitmq" else [])


def test_bad_flower_settings_fail_before_any_host_changes(flower):
    before = flower.check_output(f"stat -c %Y {FLOWER_CONFIG}"), processes(flower)["flower"]

    def attempt(case):
        variables, expected = case
        return expected, ansible_playbook("site.yml", "-e", json.dumps(variables), env=STOCK_ANSIBLE)

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(attempt, FLOWER_BAD_INPUTS))
    problems = []
    for expected, done in results:
        out = plain(done.stdout)
        changed = recap(done.stdout)
        if done.returncode == 0 or expected not in out or any(changed.values()):
            problems.append(f"{expected}: rc={done.returncode} recap={changed} {out[-800:]}")
    assert not problems, "\n".join(problems)
    assert (flower.check_output(f"stat -c %Y {FLOWER_CONFIG}"), processes(flower)["flower"]) == before, "Flower changed"


# --- The health check -------------------------------------------------------------------------------

def test_health_reports_the_broker_every_queue_and_every_group(workers):
    status = workers_playbook("status")
    assert status.returncode == 0, status.stdout[-3000:]
    assert re.search(r"broker \S+: reachable", status.stdout)
    for queue in WORKER_GROUPS.values():
        assert re.search(rf"queue {queue}: \d+ waiting", status.stdout), status.stdout[-3000:]
    assert re.search(r"beat: last tick \d+ s ago", status.stdout), status.stdout[-3000:]
    assert re.search(r"flower: RUNNING, pid \d+", status.stdout), status.stdout[-3000:]


def test_health_names_the_broker_when_it_is_down(brokers, workers):
    broker = brokers[0]
    broker.check_output(f"systemctl stop {BROKER_SERVICE}")
    try:
        status = workers_playbook("status")
        assert status.returncode != 0, status.stdout[-3000:]
        assert re.search(r"the broker \S+ is unreachable", status.stdout), status.stdout[-3000:]
        assert secret("broker_password") not in status.stdout
    finally:
        broker.check_output(f"systemctl start {BROKER_SERVICE}")
    assert wait_until(lambda: workers_playbook("status").returncode == 0, 120, interval=5), "the fleet never recovered"


def test_health_names_a_stopped_worker_group(workers):
    worker = workers[0]
    stop_process(worker, "worker-long")
    try:
        status = workers_playbook("status")
        assert status.returncode != 0
        name = hostname(worker)
        assert f"worker group long (long@{name}) does not answer" in status.stdout, status.stdout[-3000:]
        assert "worker group default" not in status.stdout, "a running group was named"
    finally:
        start_process(worker, "worker-long")
    assert wait_until(lambda: workers_playbook("status").returncode == 0, 120, interval=5)
