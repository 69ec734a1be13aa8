"""Hosts of the scenario under test, by inventory group, and helpers shared by every scenario."""

import os
import re
import shlex

import pytest
import testinfra
import testinfra.utils.ansible_runner

INVENTORY = os.environ["MOLECULE_INVENTORY_FILE"]
RUNNER = testinfra.utils.ansible_runner.AnsibleRunner(INVENTORY)

# The bundle's defaults for the demo app (roles/celery_app/defaults/main.yml).
APP = "fleetapp"
RUN = f"/opt/{APP}/bin/run"
ENV_FILE = f"/etc/celery-fleet/{APP}.env"
PROGRAM_PREFIX = f"celery-{APP}-"


def host(name):
    return testinfra.get_host(f"ansible://{name}", ansible_inventory=INVENTORY)


def group(name):
    return [host(n) for n in RUNNER.get_hosts(name)]


@pytest.fixture(scope="session")
def brokers():
    return group("brokers")


@pytest.fixture(scope="session")
def workers():
    found = group("workers")
    assert found, "the scenario has no worker host"
    return found


@pytest.fixture(scope="session")
def clients():
    found = group("clients")
    assert found, "the scenario has no client host"
    return found


@pytest.fixture(scope="session")
def broker_password(workers):
    """The password the workers use, read from a worker's environment file."""
    env = workers[0].check_output(f"cat {ENV_FILE}")
    match = re.search(r"^CELERY_BROKER_URL='redis://:([^@]+)@", env, re.M)
    assert match, "no Redis broker URL in the environment file"
    return match.group(1)


def private_address(h):
    """The host's address on the lab network (its default route's interface)."""
    return h.check_output("ip -4 -o route get 1.1.1.1 | sed -n 's/.* src \\([0-9.]*\\).*/\\1/p'")


def run_python(h, code, timeout=60):
    """Run Python in the app's current release, with its environment, on host h."""
    return h.check_output(f"timeout {timeout} {RUN} python -c {shlex.quote(code)}")
