"""A team's own app on its servers (scenarios staging-ssh and django-app).

The apps are fixtures in molecule/shared/apps: the tutorial's tasks.py with its broker hard-coded
to localhost (app `tutorial`), and a Django project whose task reads the ORM (app `django`).
Tasks are sent from the control node, as the team's own code would send them, with the broker
address and credentials of the client environment the converge wrote (FLEET_CLIENT_ENV).
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import APP, ENV_FILE, RUN, celery_main_processes, env_variables, inspect, plain, workers_playbook

pytestmark = pytest.mark.own_app

APPS = Path(__file__).resolve().parents[1] / "apps"
SOURCES = {"tutorial": APPS / "tutorial", "django": APPS / "django_project"}
MODULES = {"tutorial": "tasks", "django": "proj"}


def celery_pin():
    """The Celery version the app's own requirements.txt pins (celery==X, no extra)."""
    found = re.search(r"^celery==(\S+)$", (SOURCES[APP] / "requirements.txt").read_text(), re.M)
    assert found, f"{SOURCES[APP]}/requirements.txt pins no plain celery==X"
    return found.group(1)


def client_env():
    """The variables of the client environment file, as `set -a; . FILE` would export them."""
    path = Path(os.environ["FLEET_CLIENT_ENV"])
    assert path.exists(), f"{path} is missing: the converge writes it (playbooks/client_env.yml)"
    assert path.stat().st_mode & 0o077 == 0, f"{path} holds the broker password: it must be private"
    return env_variables(path.read_text())


def client(code, pythonpath=""):
    """Run `code` on the control node with the client environment; returns the finished process."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CELERY_", "FLEET_APP"))}
    env.update(client_env(), PYTHONPATH=str(pythonpath))
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)


def test_the_scenario_deploys_a_known_app():
    assert APP in SOURCES, f"FLEET_APP_NAME={APP!r} names no app in {APPS}"


def test_workers_load_the_app_through_the_entry_point_as_celery(workers):
    for worker in workers:
        env = worker.check_output(f"cat {ENV_FILE}")
        assert f"FLEET_APP_MODULE='{MODULES[APP]}'" in env
        for pid in celery_main_processes(worker, "worker"):
            assert worker.process.get(pid=pid).user == "celery"
            assert "--app=celery_fleet:app" in worker.check_output(f"cat /proc/{pid}/cmdline | tr '\\0' ' '")


def test_status_lists_every_worker_group_running_and_answering(workers):
    status = workers_playbook("status")
    assert status.returncode == 0, status.stdout[-3000:]
    running = re.findall(r"worker-default: RUNNING, pid \d+, up \d+ s, ping ok", status.stdout)
    assert len(running) == len(workers), status.stdout[-3000:]


# --- Over SSH (staging-ssh) -------------------------------------------------------------------

@pytest.mark.staging_ssh
def test_ansible_goes_over_ssh_as_deploy_with_controlpersist_pipelining_and_become(workers):
    inventory = os.path.dirname(os.environ["MOLECULE_INVENTORY_FILE"])
    done = subprocess.run(
        ["ansible", "-i", inventory, "workers", "--become", "-m", "ansible.builtin.command", "-a", "id -un", "-vvv"],
        cwd=os.environ["MOLECULE_PROJECT_DIRECTORY"], capture_output=True, text=True, timeout=120,
    )
    # -vvv's connection log goes to stderr; Molecule forces colours on.
    log, result = plain(done.stderr + done.stdout), plain(done.stdout)
    assert done.returncode == 0, log[-3000:]
    assert "ESTABLISH SSH CONNECTION FOR USER: deploy" in log
    assert "ControlPersist=" in log and "BECOME-SUCCESS" in log
    # Pipelining: the module goes through the SSH session's stdin; nothing is copied to the host.
    assert re.search(r"^<[^>]+> PUT ", log, re.M) is None, "a module was copied: pipelining is off"
    assert len(re.findall(r"\| CHANGED \| rc=0 >>\nroot$", result, re.M)) == len(workers), result[-2000:]


# --- The tutorial's tasks.py ------------------------------------------------------------------

# Each scenario selects its app's tests with the verifier's -m (tutorial or django).
only_tutorial = pytest.mark.tutorial


@only_tutorial
def test_a_plain_project_is_shipped_as_source_beside_its_requirements(workers):
    for worker in workers:
        release = worker.check_output(f"readlink /opt/{APP}/current")
        assert re.search(r"/releases/source-[0-9a-f]{12}$", release), release
        assert worker.file(f"{release}/source/tasks.py").content_string == (SOURCES[APP] / "tasks.py").read_text()
        installed = worker.check_output(f"{RUN} pip list --format=freeze")
        assert f"celery=={celery_pin()}" in installed.splitlines(), installed
        registered = inspect(worker, "registered", destination=f"default@{worker.backend.host}")
        assert "tasks.add" in registered[f"default@{worker.backend.host}"]


@only_tutorial
def test_the_tutorials_own_client_gets_add_4_4_from_the_fleet():
    done = client("from tasks import add; result = add.delay(4, 4); print(result.get(timeout=60))", SOURCES[APP])
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "8"


@only_tutorial
def test_a_task_sent_with_bad_arguments_fails_and_its_traceback_names_the_exception():
    done = client(
        "from tasks import add\n"
        "result = add.delay('4', 4)\n"
        "result.get(timeout=60, propagate=False)\n"
        "print(result.state)\n"
        "print(result.traceback)\n",
        SOURCES[APP],
    )
    assert done.returncode == 0, done.stderr[-2000:]
    state, traceback = done.stdout.split("\n", 1)
    assert state == "FAILURE"
    assert "TypeError" in traceback and "return x + y" in traceback, traceback


# --- The Django project -----------------------------------------------------------------------

only_django = pytest.mark.django


@only_django
def test_django_settings_reach_the_workers(workers):
    for worker in workers:
        env = worker.check_output(f"cat {ENV_FILE}")
        assert "DJANGO_SETTINGS_MODULE='proj.settings'" in env
        pid = celery_main_processes(worker, "worker")[0]
        environ = worker.check_output(f"cat /proc/{pid}/environ | tr '\\0' '\\n'")
        assert "DJANGO_SETTINGS_MODULE=proj.settings" in environ.splitlines()


@only_django
def test_the_orm_task_reads_the_row_its_migration_wrote():
    done = client(
        "from celery import Celery\n"
        "app = Celery()\n"
        "print(app.send_task('notes.tasks.note_value', args=['answer']).get(timeout=60))\n"
        "print(app.send_task('notes.tasks.note_count').get(timeout=60))\n"
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["42", "1"]


@only_django
def test_a_missing_row_fails_with_djangos_exception():
    done = client(
        "from celery import Celery\n"
        "result = Celery().send_task('notes.tasks.note_value', args=['no-such-key'])\n"
        "result.get(timeout=60, propagate=False)\n"
        "print(result.state)\n"
        "print(result.traceback)\n"
    )
    assert done.returncode == 0, done.stderr[-2000:]
    state, traceback = done.stdout.split("\n", 1)
    assert state == "FAILURE"
    assert "DoesNotExist" in traceback, traceback


@only_django
def test_a_plain_celery_pin_runs_on_redis_with_the_brokers_extra_from_the_release(workers):
    """The project pins plain `celery==X`, not `celery[redis]`: the release adds what kombu's Redis
    transport imports (without it, every worker dies at start with `No module named 'packaging'`;
    the ORM tests above prove a task then runs over Redis)."""
    for worker in workers:
        shipped = worker.check_output(f"cat /opt/{APP}/current/source/requirements.txt")
        assert re.search(rf"^celery=={re.escape(celery_pin())}$", shipped, re.M) and "celery[" not in shipped, shipped
        imported = worker.run(f"{RUN} python -c 'import kombu.transport.redis, packaging, redis'")
        assert imported.rc == 0, imported.stderr
