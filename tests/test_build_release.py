"""roles/celery_app/files/build_wheelhouse.py: what stops a release on the control node, before
any host changes, and what a plain project's release holds."""

import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FILES = ROOT / "roles/celery_app/files"
TUTORIAL = ROOT / "molecule/shared/apps/tutorial"


def build(tmp_path, src, *extra):
    return subprocess.run(
        [sys.executable, str(FILES / "build_wheelhouse.py"), "--src", str(src), "--boot", str(FILES / "celery_fleet.py"),
         "--celery", ">=5.5,<5.8", "--cache", str(tmp_path / "cache"), "--python-version", "3.11.2",
         "--platform", "manylinux2014_x86_64", "--platform", "manylinux_2_28_x86_64", *extra],
        capture_output=True, text=True, timeout=300,
    )


def project(tmp_path, requirements):
    src = tmp_path / "project"
    src.mkdir(exist_ok=True)
    (src / "tasks.py").write_text((TUTORIAL / "tasks.py").read_text())
    (src / "requirements.txt").write_text(requirements)
    return src


@pytest.mark.parametrize(
    ("requirements", "message"),
    [
        ("celery\n", "pin every requirement"),
        ("celery>=5.5\n", "not pinned: ['celery>=5.5']"),
        ("celery==5.2.7\n", "the app requires celery 5.2.7; celery-fleet runs celery >=5.5,<5.8"),
        ("kombu==5.7.0\n", "the app does not require celery"),
        ("celery==5.7.0\nno-such-distribution-celery-fleet==1.0\n", "No matching distribution found for no-such-distribution-celery-fleet"),
    ],
)
def test_a_bad_requirement_stops_the_build_naming_the_variable(tmp_path, requirements, message):
    done = build(tmp_path, project(tmp_path, requirements))
    assert done.returncode == 2, done.stdout
    assert done.stderr.startswith("celery_app_requirements: "), done.stderr
    assert message in done.stderr, done.stderr
    assert not list((tmp_path / "cache").glob("*.tar")), "a failed build must leave no release behind"


def test_a_missing_source_directory_is_named(tmp_path):
    done = build(tmp_path, tmp_path / "nowhere")
    assert done.returncode == 2
    assert done.stderr.startswith(f"celery_app_src: {tmp_path / 'nowhere'} is not a directory")


def test_a_plain_project_without_requirements_is_refused(tmp_path):
    src = tmp_path / "bare"
    src.mkdir()
    (src / "tasks.py").write_text("")
    done = build(tmp_path, src)
    assert done.returncode == 2
    assert "no pyproject.toml or setup.py and no requirements file" in done.stderr


def test_the_tutorial_is_shipped_as_source_with_its_resolved_dependencies(tmp_path):
    done = build(tmp_path, TUTORIAL)
    assert done.returncode == 0, done.stderr
    release = json.loads(done.stdout)
    assert release["release"].startswith("source-") and release["celery"] == "5.7.0" and release["changed"]
    with tarfile.open(release["archive"]) as tar:
        names = set(tar.getnames())
        pinned = tar.extractfile("wheelhouse/requirements.txt").read().decode().split()
    assert {"source/tasks.py", "source/requirements.txt", "boot/celery_fleet.py"} <= names
    # Resolved from the one pin in requirements.txt, for the targets: celery's own dependencies.
    assert {"celery==5.7.0", "kombu==5.7.0", "billiard==4.3.2", "vine==5.1.0"} <= set(pinned)
    assert all(any(n.startswith(f"wheelhouse/{p.split('==')[0].replace('-', '_')}-") for n in names) for p in pinned), names

    again = build(tmp_path, TUTORIAL)
    assert json.loads(again.stdout) == dict(release, changed=False), "an unchanged app must come from the cache"


def test_dependencies_are_resolved_for_the_targets_python_not_this_one(tmp_path):
    # redis 8.1.0 needs async-timeout only below Python 3.11.3: the targets run 3.11.2, this
    # machine may run a newer Python, whose pip alone would leave it out.
    done = build(tmp_path, project(tmp_path, "celery[redis]==5.7.0\nredis==8.1.0\n"))
    assert done.returncode == 0, done.stderr
    with tarfile.open(json.loads(done.stdout)["archive"]) as tar:
        pinned = tar.extractfile("wheelhouse/requirements.txt").read().decode().split()
    assert "redis==8.1.0" in pinned and "async-timeout==5.0.1" in pinned, pinned


def test_an_extra_tool_is_resolved_with_the_app_into_its_own_set(tmp_path):
    done = build(tmp_path, TUTORIAL, "--extra", "flower==2.2.0")
    assert done.returncode == 0, done.stderr
    release = json.loads(done.stdout)
    assert release["extras"] == ["flower==2.2.0"]
    with tarfile.open(release["archive"]) as tar:
        names = set(tar.getnames())
        app = tar.extractfile("wheelhouse/requirements.txt").read().decode().split()
        tools = tar.extractfile("wheelhouse/extras.txt").read().decode().split()
    # The app's venv gets the app's set only; the tool's set is the app's plus the tool's.
    assert not any(p.startswith(("flower==", "tornado==")) for p in app), app
    assert "flower==2.2.0" in tools and set(app) <= set(tools), (app, tools)
    assert all(any(n.startswith(f"wheelhouse/{p.split('==')[0].replace('-', '_')}-") for n in names) for p in tools), names
    without = build(tmp_path, TUTORIAL)
    assert json.loads(without.stdout)["release"] != release["release"], "the extras are part of the release's hash"


def test_an_unpinned_extra_is_refused(tmp_path):
    done = build(tmp_path, TUTORIAL, "--extra", "flower")
    assert done.returncode == 2
    assert done.stderr.startswith("celery_app_extra_requirements: pin every extra requirement"), done.stderr


def test_the_brokers_celery_extra_brings_what_its_transport_imports(tmp_path):
    # The tutorial pins plain celery==5.7.0: kombu 5.7's Redis transport imports `redis` and
    # `packaging`, which only celery[redis] brings, so its workers would die at start on Redis.
    plain = build(tmp_path, TUTORIAL)
    with_redis = build(tmp_path, TUTORIAL, "--celery-extra", "redis")
    assert with_redis.returncode == 0, with_redis.stderr
    release = json.loads(with_redis.stdout)
    assert release["celery"] == "5.7.0" and release["release"] != json.loads(plain.stdout)["release"]
    with tarfile.open(json.loads(plain.stdout)["archive"]) as tar:
        plain_pins = {p.split("==")[0] for p in tar.extractfile("wheelhouse/requirements.txt").read().decode().split()}
    with tarfile.open(release["archive"]) as tar:
        pins = tar.extractfile("wheelhouse/requirements.txt").read().decode().split()
        source = tar.extractfile("source/requirements.txt").read().decode()
    assert not {"redis", "packaging"} & plain_pins, plain_pins
    # Whichever redis the index offers newest (8.1.0, then 8.2.0 on 2026-12-05): the tutorial pins none.
    assert "celery==5.7.0" in pins and all(any(p.startswith(f"{name}==") for p in pins) for name in ("redis", "packaging")), pins
    assert source == "celery==5.7.0\n", "the app's own requirements are shipped as written"
