"""The entry point every deployed app's processes load (roles/celery_app/files/celery_fleet.py)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "roles/celery_app/files"))

from celery_fleet import SettingError, send_task, settings_from_environ  # noqa: E402


def test_typed_settings_from_environment():
    settings = settings_from_environ(
        {
            "CELERY_TASK_ACKS_LATE": "true",
            "CELERY_TASK_REJECT_ON_WORKER_LOST": "False",
            "CELERY_WORKER_PREFETCH_MULTIPLIER": "1",
            "CELERY_BROKER_TRANSPORT_OPTIONS": '{"visibility_timeout": 7200}',
            "CELERY_BROKER_URL": "redis://:secret@broker1:6379/0",
            "CELERY_TASK_TIME_LIMIT": "600",
            "PATH": "/usr/bin",
        }
    )
    assert settings == {
        "task_acks_late": True,
        "task_reject_on_worker_lost": False,
        "worker_prefetch_multiplier": 1,
        "broker_transport_options": {"visibility_timeout": 7200},
        "broker_url": "redis://:secret@broker1:6379/0",
        "task_time_limit": 600,
    }


def test_cli_variables_are_not_settings():
    assert settings_from_environ({"CELERY_APP": "fleetapp", "CELERY_CONFIG_MODULE": "x"}) == {}


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("CELERY_TASK_ACKS_LAET", "true", "no Celery setting is called 'task_acks_laet'"),
        ("CELERY_TASK_ACKS_LATE", "maybe", "not a boolean"),
        ("CELERY_WORKER_PREFETCH_MULTIPLIER", "one", "CELERY_WORKER_PREFETCH_MULTIPLIER"),
        ("CELERY_BROKER_TRANSPORT_OPTIONS", "[1, 2]", "expected a JSON object"),
        ("CELERY_BROKER_TRANSPORT_OPTIONS", "{oops", "CELERY_BROKER_TRANSPORT_OPTIONS"),
    ],
)
def test_bad_values_fail_with_the_variable_name(key, value, message):
    with pytest.raises(SettingError, match=message):
        settings_from_environ({key: value})


def run_entry_point(tmp_path, code, **environ):
    """Run ``code`` in a fresh interpreter, as a worker starts, with a tutorial app in tmp_path."""
    (tmp_path / "tasks.py").write_text(
        "from celery import Celery\n"
        "app = Celery('tasks', broker='pyamqp://guest@localhost//')\n"
        "app.conf.task_acks_late = False\n"
        "@app.task\ndef add(x, y):\n    return x + y\n"
    )
    pythonpath = os.pathsep.join([str(tmp_path), str(ROOT / "roles/celery_app/files")])
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CELERY_", "FLEET_"))}
    env.update(PYTHONPATH=pythonpath, **environ)
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=tmp_path)


def test_the_deployment_wins_over_the_apps_hard_coded_settings(tmp_path):
    out = run_entry_point(
        tmp_path,
        "from celery_fleet import app; print(app.main, app.conf.broker_url, app.conf.task_acks_late,"
        " app.conf.worker_prefetch_multiplier, sorted(app.tasks)[-1])",
        FLEET_APP_MODULE="tasks",
        CELERY_BROKER_URL="redis://:secret@broker1:6379/0",
        CELERY_TASK_ACKS_LATE="true",
        CELERY_WORKER_PREFETCH_MULTIPLIER="1",
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["tasks", "redis://:secret@broker1:6379/0", "True", "1", "tasks.add"]


def test_an_unknown_setting_stops_the_process(tmp_path):
    out = run_entry_point(tmp_path, "from celery_fleet import app", FLEET_APP_MODULE="tasks", CELERY_TASK_ACKS_LAET="true")
    assert out.returncode != 0
    assert "no Celery setting is called 'task_acks_laet'" in out.stderr


def test_without_an_app_name_the_error_says_which_variable(tmp_path):
    out = run_entry_point(tmp_path, "from celery_fleet import app")
    assert out.returncode != 0
    assert "FLEET_APP_MODULE is not set" in out.stderr


def test_other_names_are_not_there():
    import celery_fleet

    with pytest.raises(AttributeError):
        celery_fleet.nothing  # noqa: B018


@pytest.mark.parametrize(
    "grants, target, queue, message",
    [
        ({}, "billing", "celery", "this app may not send to 'billing' (sends_to grants: none)"),
        ({"billing": {"queues": ["celery"], "url": "memory://", "transport_options": {}}}, "mailer", "celery",
         "this app may not send to 'mailer' (sends_to grants: ['billing'])"),
        ({"billing": {"queues": ["celery"], "url": "memory://", "transport_options": {}}}, "billing", "reports",
         "'billing' has no queue 'reports' (its queues: ['celery'])"),
    ],
)
def test_a_send_to_another_app_needs_its_grant_and_one_of_its_queues(grants, target, queue, message):
    with pytest.raises(LookupError) as refused:
        send_task(target, "billing.tasks.charge", (1,), queue=queue, environ={"FLEET_SEND_TO": json.dumps(grants)})
    assert str(refused.value) == message


def pth_import_line():
    """The import line of the celery_fleet.pth the role writes into every release venv."""
    import yaml

    tasks = yaml.safe_load((ROOT / "roles/celery_app/tasks/venv.yml").read_text())
    content = next(t["ansible.builtin.copy"]["content"] for t in tasks if "ansible.builtin.copy" in t)
    (line,) = [each for each in content.splitlines() if each.startswith("import ")]
    return line


# A client as the tutorial writes it: it imports its app (broker hard-coded) and sends a task.
TUTORIAL_CLIENT = """
import json
from celery import Celery
app = Celery("tasks", broker="memory://")
@app.task
def add(x, y):
    return x + y
add.delay(4, 4)
sender = Celery("other-sender", set_as_current=False)
sender.fleet_sender = True
print(json.dumps([app.conf.broker_transport_options, sender.conf.broker_transport_options]))
"""


@pytest.mark.parametrize("with_app_environment", [True, False])
def test_a_client_that_imports_its_app_gets_the_fleets_settings_in_the_apps_environment(with_app_environment):
    """The release venv's .pth runs in every process; with the app's environment (bin/run), every
    app the process creates is configured before it sends (on SQS the queue prefix decides where
    tasks go), a send_task sender excepted; without it nothing is imported or changed."""
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(ROOT / "roles/celery_app/files"),
           "CELERY_BROKER_TRANSPORT_OPTIONS": '{"queue_name_prefix": "lab-tasks-"}'}
    if with_app_environment:
        env["FLEET_APP_MODULE"] = "tasks"
    out = subprocess.run([sys.executable, "-c", pth_import_line() + "\n" + TUTORIAL_CLIENT],
                         capture_output=True, text=True, env=env, check=True).stdout
    own, sender = json.loads(out)
    assert own == ({"queue_name_prefix": "lab-tasks-"} if with_app_environment else {})
    assert sender == {}


# Every way the app's code, Celery's worker and the deploys' smoke test reach a node's own queue.
DIRECT_QUEUES = """
import json
from celery.utils import worker_direct as from_utils
from celery.utils.nodenames import worker_direct as from_nodenames
from celery.worker.worker import worker_direct as the_workers
print(json.dumps([[q.name, q.exchange.name, q.routing_key, q.queue_arguments]
                  for q in (f("default@worker1") for f in (from_utils, from_nodenames, the_workers))]))
"""


@pytest.mark.parametrize("queue_type, arguments", [("quorum", {"x-queue-type": "quorum"}), ("classic", None)])
def test_a_nodes_own_queue_is_declared_alike_everywhere(queue_type, arguments):
    """On a cluster (quorum queues) a classic direct queue would live on one node: the worker
    could not declare it while that node is down, and RabbitMQ refuses a sender that declares it
    with another type. So in the app's environment every worker_direct is the quorum one."""
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(ROOT / "roles/celery_app/files"),
           "FLEET_APP_MODULE": "tasks", "CELERY_TASK_DEFAULT_QUEUE_TYPE": queue_type}
    out = subprocess.run([sys.executable, "-c", pth_import_line() + "\n" + DIRECT_QUEUES],
                         capture_output=True, text=True, env=env, check=True).stdout
    assert json.loads(out) == [["default@worker1.dq2", "C.dq2", "default@worker1", arguments]] * 3


RPC_CLIENT = """
from celery import Celery
app = Celery("tasks", broker="pyamqp://", backend="rpc://")
print(type(app.backend).__module__, app.conf.result_backend)
"""


def test_a_client_in_the_apps_environment_gets_rpc_results_whose_declaration_gives_up():
    """Celery's rpc:// backend declares the client's reply queue before every send, retrying for
    ever: a client whose idle connection a broker closed blocked in delay() until a broker came
    back (drill (c) of the cluster). The fleet's declares within the publish retry policy."""
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(ROOT / "roles/celery_app/files"), "FLEET_APP_MODULE": "tasks"}
    out = subprocess.run([sys.executable, "-c", pth_import_line() + "\n" + RPC_CLIENT],
                         capture_output=True, text=True, env=env, check=True).stdout
    assert out.split() == ["celery_fleet", "rpc://"]


def test_the_rpc_reply_queue_is_declared_within_the_publish_retry_policy(monkeypatch):
    import celery
    import celery_fleet

    declared = []
    monkeypatch.setattr(celery_fleet, "maybe_declare", lambda entity, **policy: declared.append(policy))
    app = celery_fleet.configure(celery.Celery("tasks", broker="memory://", set_as_current=False),
                                 {"CELERY_RESULT_BACKEND": "rpc://"})
    app.conf.task_publish_retry_policy = {"max_retries": 2, "interval_start": 0}
    with app.producer_or_acquire() as producer:
        app.backend.on_task_call(producer, "id-1")
    assert isinstance(app.backend, celery_fleet.RPCBackend)
    assert declared == [{"retry": True, "max_retries": 2, "interval_start": 0}]
