"""Amazon SQS as the broker (scenario `sqs`): moto's server on the lab's endpoint host stands in
for AWS (SQS and the DynamoDB results). SQS carries no remote control, so these checks count
what happened by task id, read SQS's own queue attributes and the process manager's state,
never `celery inspect`. The rolling restart under load and the deploys are checked by
test_after_rolling_restart.py and test_after_deploys.py (marked sqs too). Last, the demo app is
replaced by the tutorial's (replaces_app): its queues and result table leave AWS.
"""

import json
import statistics
import time

import pytest
from conftest import (
    ACK_TIMEOUT,
    APP,
    ENV_FILE,
    NAME_PREFIX,
    TUTORIAL,
    TUTORIAL_ADD,
    TUTORIAL_APP,
    all_ran,
    assert_refused_before_any_change,
    ansible_playbook,
    env_variables,
    executions,
    mark_hosts,
    host_state,
    left_of,
    plain,
    processes,
    recap,
    refusal_problems,
    report,
    run_python,
    secret,
    send_tracked,
    start_process,
    stop_process,
    wait_until,
    workers_playbook,
)

pytestmark = pytest.mark.sqs

# Each queue of the app and its SQS visibility timeout, read with the app's own settings.
QUEUE_ATTRIBUTES = """
import json
from celery_fleet import app
with app.connection_for_write() as connection:
    channel = connection.default_channel
    client = channel.sqs()
    prefix = channel.canonical_queue_name("")
    urls = client.list_queues(QueueNamePrefix=prefix).get("QueueUrls", [])
    print(json.dumps({url.rsplit("/", 1)[1]: client.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
                      for url in urls}))
"""


def queue_attributes(h):
    return json.loads(run_python(h, QUEUE_ATTRIBUTES))


def test_the_tutorials_add_returns_8_from_a_client_host(clients):
    code = """
import json, time
from fleetapp.tasks import add
took, results = [], []
for _ in range(20):
    started = time.monotonic()
    results.append(add.delay(4, 4).get(timeout=30))
    took.append(time.monotonic() - started)
print(json.dumps({"results": results, "took": took}))
"""
    out = json.loads(run_python(clients[0], code, timeout=120))
    took = sorted(out["took"])
    report("sqs-add-round-trip", calls=len(took), median_ms=round(statistics.median(took) * 1000),
           p95_ms=round(took[int(len(took) * 0.95) - 1] * 1000), worst_ms=round(took[-1] * 1000))
    assert out["results"] == [8] * 20


def test_no_secret_is_in_a_url_or_a_command_line(workers, clients):
    key_id, key = secret("aws_access_key_id"), secret("aws_secret_access_key")
    for h in workers + clients:
        env_file = h.file(ENV_FILE)
        assert env_file.mode == 0o640 and env_file.user == "root" and env_file.group == "celery"
        variables = env_variables(env_file.content_string)
        assert variables["AWS_ACCESS_KEY_ID"] == key_id and variables["AWS_SECRET_ACCESS_KEY"] == key
        assert variables["CELERY_BROKER_URL"] == "sqs://"
        assert variables["CELERY_RESULT_BACKEND"] == "dynamodb://@eu-west-1/lab-fleetapp-results"
        assert key not in h.check_output("ps -eo args="), f"the secret key is on a command line on {h.backend.host}"
        programs = h.run(f"cat /etc/supervisor/conf.d/{NAME_PREFIX}-*.conf").stdout
        assert programs and key not in programs


def test_every_queue_has_the_visibility_timeout_and_a_drifted_one_is_set_back(workers):
    """A queue made by an older setting (kombu sets the timeout only when it creates a queue):
    site.yml sets it back and says so."""
    worker = workers[0]
    before = queue_attributes(worker)
    assert {"lab-fleetapp-celery", "lab-fleetapp-long"} <= set(before), sorted(before)
    assert {name: a["VisibilityTimeout"] for name, a in before.items()} == dict.fromkeys(before, str(ACK_TIMEOUT))
    run_python(worker, """
from celery_fleet import app
with app.connection_for_write() as connection:
    channel = connection.default_channel
    channel.sqs().set_queue_attributes(QueueUrl=channel._resolve_queue_url("long"), Attributes={"VisibilityTimeout": "99"})
""")
    assert queue_attributes(worker)["lab-fleetapp-long"]["VisibilityTimeout"] == "99"
    done = ansible_playbook("site.yml")
    output = plain(done.stdout)
    assert done.returncode == 0, output[-3000:]
    assert f"lab-fleetapp-long: visibility timeout was 99 s, now {ACK_TIMEOUT} s" in output, output[-3000:]
    after = queue_attributes(worker)
    assert {name: a["VisibilityTimeout"] for name, a in after.items()} == dict.fromkeys(after, str(ACK_TIMEOUT))


def test_status_reports_each_queues_depth_and_each_process(workers, clients):
    """With worker-long stopped everywhere, tasks sent to `long` wait: the status counts them
    from SQS's attributes and fails naming the stopped processes."""
    for worker in workers:
        assert stop_process(worker, "worker-long").rc == 0
    try:
        ids = send_tracked(clients[0], 3, queue="long")
        # SQS's counts are approximate and settle within a moment.
        assert wait_until(lambda: queue_attributes(workers[0])["lab-fleetapp-long"]["ApproximateNumberOfMessages"] == "3", 20, 1)
        status = workers_playbook("status")
        output = plain(status.stdout)
    finally:
        for worker in workers:
            start_process(worker, "worker-long")
    report("sqs-status", rc=status.returncode, lines=sum("queue long: 3 waiting" in line for line in output.splitlines()))
    assert status.returncode != 0, output[-3000:]
    assert "queue long: 3 waiting, 0 in flight, 0 delayed" in output, output[-3000:]
    assert "worker-long is STOPPED" in output and "worker-default: RUNNING" in output, output[-3000:]
    assert wait_until(lambda: all_ran(workers, ids), 60, 1), executions(workers, ids)
    done = workers_playbook("status")
    assert done.returncode == 0, plain(done.stdout)[-3000:]


def test_a_worker_killed_with_kill_9_mid_task_has_it_rerun_after_the_visibility_timeout(workers, clients):
    """kill -9 of a worker's main process and its pool mid-task: SQS makes the message visible
    again after the visibility timeout, and the worker supervisor restarted runs it, once."""
    worker = workers[-1]
    node = f"long@{worker.backend.host}"
    log = f"/var/log/celery/{NAME_PREFIX}-worker-long.log"
    # Through the node's own queue, so the rerun is this worker's too.
    (task_id,) = send_tracked(clients[0], 1, seconds=8, queue=f"{node}.dq2")
    received = wait_until(lambda: worker.run(f"grep -c '{task_id}\\] received' {log}").stdout.strip() == "1", 30, 0.5)
    assert received, f"task {task_id} never reached {node}"
    time.sleep(1)
    before = processes(worker)["worker-long"][1]
    killed_at = time.monotonic()
    worker.check_output(f"pkill -KILL -P {before}; kill -KILL {before}")
    assert executions([worker], [task_id])[task_id] == 0, "the task finished before the kill: the drill proved nothing"
    back = wait_until(lambda: processes(worker)["worker-long"][0] == "RUNNING" and processes(worker)["worker-long"][1] != before, 60, 1)
    back_after = round(time.monotonic() - killed_at, 1)
    done = wait_until(lambda: all_ran(workers, [task_id]), ACK_TIMEOUT + 60, 1)
    rerun_after = round(time.monotonic() - killed_at, 1)
    time.sleep(5)  # a second run would show by now (the task takes 8 s, none is expected)
    runs = executions(workers, [task_id])[task_id]
    report("sqs-kill-9", task=task_id, runs=runs, worker_back_s=back_after, completed_after_s=rerun_after,
           visibility_timeout_s=ACK_TIMEOUT)
    assert back, f"worker-long did not come back after kill -9: {processes(worker)}"
    assert done, f"task {task_id} never ran after its worker was killed"
    assert runs == 1, f"task {task_id} ran {runs} times"
    # Visible again only once the timeout (counted from its receipt, about a second before the
    # kill) has passed, then 8 s to run.
    assert rerun_after >= ACK_TIMEOUT - 2 + 8, rerun_after


# (what is wrong, the extra variables that say it, the one rule that must refuse it).
BAD_INPUTS = [
    ("rpc results", {"celery_result_backend": "rpc"},
     "celery_result_backend rpc needs celery_broker rabbitmq (got sqs: SQS has no reply queues"),
    ("a visibility timeout below the task time limit", {"celery_broker_ack_timeout": 20},
     "celery_broker_ack_timeout (20 s) must be longer than celery_app_task_time_limit (20 s) plus "
     "celery_app_worker_soft_shutdown_timeout (5 s)"),
    ("a visibility timeout above SQS's 12 hours", {"celery_broker_ack_timeout": 50000},
     "celery_broker_ack_timeout (50000 s) is SQS's visibility timeout: at most 43200 s"),
    ("a secret in the broker URL", {"celery_app_broker_url": "sqs://AKIAIOSFODNN7EXAMPLE:wJalrXUtnFEMIbPxRfiCYEXAMPLEKEY@"},
     "celery_app_broker_url has credentials in it: with SQS they go in celery_aws_access_key_id and celery_aws_secret_access_key"),
    ("half an access key", {"celery_aws_secret_access_key": ""},
     "celery_aws_access_key_id and celery_aws_secret_access_key go together"),
    ("long polling beyond 20 s", {"celery_sqs_wait_time_seconds": 30}, "celery_sqs_wait_time_seconds (30) must be 0 to 20"),
    ("Flower", {"celery_flower_enabled": True}, "celery_flower_enabled needs remote control and events, which SQS does not carry"),
    ("a smoke task without results", {"celery_result_backend": "none"},
     "celery_worker_smoke_task (or an app's smoke_task) needs a result backend: with celery_result_backend none"),
]


def test_bad_inputs_are_refused_before_any_host_changes(workers, clients):
    hosts = list({h.backend.host: h for h in workers + clients}.values())
    before = mark_hosts(hosts)
    problems, took = refusal_problems(BAD_INPUTS)
    after = {h.backend.host: host_state(h) for h in hosts}
    report("sqs-bad-input", cases=len(BAD_INPUTS), refused=len(BAD_INPUTS) - len(problems), hosts_unchanged=after == before, took_s=took)
    assert not problems, "\n".join(problems)
    assert after == before, f"a host changed: {before} -> {after}"


# The fleet's queues and result tables in AWS (the scenario's name prefix), read with the app's own settings.
AWS_LEFT = """
import json, boto3
from celery_fleet import app
with app.connection_for_write() as connection:
    urls = connection.default_channel.sqs().list_queues(QueueNamePrefix="lab-").get("QueueUrls", [])
backend = app.backend
tables = boto3.client("dynamodb", region_name=backend.aws_region, endpoint_url=backend.endpoint_url).list_tables()["TableNames"]
print(json.dumps({"queues": sorted(url.rsplit("/", 1)[1] for url in urls), "tables": tables}))
"""


@pytest.fixture(scope="module")
def replaced(workers, clients):
    """The demo app replaced by the tutorial's while 3 tasks wait for it (its `long` group stopped):
    the run that names only the tutorial, the one that removes the demo app dropping them, a rerun."""
    for worker in workers:
        assert stop_process(worker, "worker-long").rc == 0
    send_tracked(clients[0], 3, queue="long")
    assert wait_until(lambda: queue_attributes(workers[0])[f"lab-{APP}-long"]["ApproximateNumberOfMessages"] == "3", 20, 1)
    refused = ansible_playbook("site.yml", "-e", json.dumps(TUTORIAL))
    removal = ["-e", json.dumps(TUTORIAL), "-e", f"celery_app_remove={APP}", "-e", "celery_app_remove_drop_queued=true"]
    done = ansible_playbook("site.yml", *removal)
    left = json.loads(run_python(clients[0], AWS_LEFT, app=TUTORIAL_APP)) if done.returncode == 0 else {}
    rerun = ansible_playbook("site.yml", *removal)
    return {"hosts": list({h.backend.host: h for h in workers + clients}.values()), "refused": refused, "done": done, "aws": left,
            "rerun": rerun}


@pytest.mark.replaces_app
def test_replacing_the_app_on_sqs_is_refused_naming_the_tasks_waiting_for_it_before_any_host_changes(replaced, workers):
    assert_refused_before_any_change(replaced["refused"], f"{APP} runs on {workers[0].backend.host} (", f"but the inventory names no app {APP};",
                                     "3 tasks wait in its queues (queue ", "queue long: 3 waiting", f"-e celery_app_remove={APP} with a single app")


@pytest.mark.replaces_app
def test_an_app_removed_on_sqs_leaves_no_queue_or_result_table_in_aws_and_nothing_on_any_host(replaced):
    output = " ".join(plain(replaced["done"].stdout).split())
    assert replaced["done"].returncode == 0, output[-3000:]
    assert f"{APP}: 3 waiting tasks are dropped with it (drop_queued)" in output, output[-3000:]
    report("sqs-removal", **replaced["aws"])
    assert [q for q in replaced["aws"]["queues"] if q.startswith(f"lab-{APP}-")] == [], replaced["aws"]
    assert f"lab-{APP}-results" not in replaced["aws"]["tables"], replaced["aws"]
    assert {f"lab-{TUTORIAL_APP}-celery", f"lab-{TUTORIAL_APP}-long"} <= set(replaced["aws"]["queues"]), replaced["aws"]
    for h in replaced["hosts"]:
        assert left_of(h, APP) == [], h.backend.host


@pytest.mark.replaces_app
def test_the_tutorials_add_returns_8_on_sqs_and_a_rerun_changes_nothing(replaced, clients):
    assert run_python(clients[0], TUTORIAL_ADD, timeout=90, app=TUTORIAL_APP).strip() == "8"
    rerun = replaced["rerun"]
    assert rerun.returncode == 0, plain(rerun.stdout)[-3000:]
    changed = recap(rerun.stdout)
    assert set(changed) >= {h.backend.host for h in replaced["hosts"]} and not any(changed.values()), changed
