"""Deploys and rollbacks across the fleet (scenario `fleet`): version 2 everywhere after its
deploy, version 1 everywhere after the rollback, each of them restarting every worker process,
and a deploy whose smoke test fails stops at its first host and leaves every host on version 1.

The scenario's side effect (molecule/fleet/deploys.yml, failed_deploy.yml) records, just before
the deploy and right after each step, the version each worker group reported through its own
queue, each host's `current` release and each worker host's process table, in fleet-results/ of
the scenario's ephemeral directory. No side effect, no files: every test fails. A scenario without
the rolling load (FLEET_ROLLING_LOAD) runs no deploys: there each test is skipped, visibly.
"""

import json
import os
from pathlib import Path

import pytest
from conftest import WORKER_GROUPS, celery_main_processes, hostname

# Scenario fleet's side effect; scenario sqs runs its deploy and rollback (marked sqs), not the
# failing deploy (molecule/fleet/failed_deploy.yml).
pytestmark = pytest.mark.fleet_app

RESULTS = Path(os.environ.get("MOLECULE_EPHEMERAL_DIRECTORY", "/nonexistent")) / "fleet-results"


@pytest.fixture
def deploys():
    if not os.environ.get("FLEET_ROLLING_LOAD"):
        pytest.skip("the scenario runs no deploys (its side effect comes with FLEET_ROLLING_LOAD)")
    return RESULTS


def stage(name):
    path = RESULTS / f"versions-{name}.json"
    assert path.exists(), f"{path} is missing: did the side effect run?"
    return json.loads(path.read_text())


def expect_everywhere(recorded, workers, version):
    nodes = {f"{g}@{w.backend.host}" for g in WORKER_GROUPS for w in workers}
    assert recorded["versions"] == {node: version for node in nodes}
    assert set(recorded["current"]) == {w.backend.host for w in workers}
    for host, release in recorded["current"].items():
        assert Path(release).name.startswith(version + "-"), (host, release)


def expect_every_worker_restarted(before, after, workers):
    """Every worker group's main process on every host differs between the two stages' tables."""
    for worker in workers:
        name = worker.backend.host
        old = set(celery_main_processes(worker, "worker", before["ps"][name]))
        new = set(celery_main_processes(worker, "worker", after["ps"][name]))
        assert len(old) == len(new) == len(WORKER_GROUPS) and not old & new, (name, sorted(old), sorted(new))


@pytest.mark.sqs
def test_a_deploy_puts_version_2_on_every_worker(deploys, workers):
    expect_everywhere(stage("before-deploy"), workers, "1.0.0")
    expect_everywhere(stage("deployed"), workers, "2.0.0")


@pytest.mark.sqs
def test_a_deploy_restarts_every_worker_process(deploys, workers):
    expect_every_worker_restarted(stage("before-deploy"), stage("deployed"), workers)


@pytest.mark.sqs
def test_a_rollback_puts_version_1_back_on_every_worker(deploys, workers):
    expect_everywhere(stage("rolled-back"), workers, "1.0.0")


@pytest.mark.sqs
def test_a_rollback_restarts_every_worker_process(deploys, workers):
    expect_every_worker_restarted(stage("deployed"), stage("rolled-back"), workers)


def test_a_deploy_whose_smoke_test_fails_stops_and_leaves_every_host_on_the_previous_version(deploys, workers):
    outcome = json.loads((RESULTS / "broken-deploy.json").read_text())
    assert outcome["rc"] != 0
    stopped_at = [w for w in workers if f"Stopped at {hostname(w)}:" in outcome["stdout"]]
    assert len(stopped_at) == 1 and "returned 8, expected 9" in outcome["stdout"], outcome["stdout"][-2000:]
    after = stage("after-failed-deploy")
    expect_everywhere(after, workers, "1.0.0")
    assert after["current"] == stage("rolled-back")["current"]
