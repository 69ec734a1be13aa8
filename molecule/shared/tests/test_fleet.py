"""Behaviour of a converged fleet: broker security, the workers, and a real task round trip."""

import json
import shlex
import uuid

from conftest import ENV_FILE, PROGRAM_PREFIX, RUN, private_address, run_python


# --- The broker ---------------------------------------------------------------------------------

def redis_cli(h, address, stdin):
    return h.run(f"printf {shlex.quote(stdin)} | redis-cli -h {address} -p 6379")


def test_redis_refuses_clients_without_the_password(brokers, broker_password):
    for broker in brokers:
        address = private_address(broker)
        anonymous = redis_cli(broker, address, "PING\n")
        assert "NOAUTH" in anonymous.stdout, anonymous.stdout
        wrong = redis_cli(broker, address, "AUTH not-the-password-at-all\nPING\n")
        assert "WRONGPASS" in wrong.stdout and "PONG" not in wrong.stdout, wrong.stdout
        right = redis_cli(broker, address, f"AUTH {broker_password}\nPING\n")
        assert right.stdout.split() == ["OK", "PONG"], right.stdout


def test_redis_listens_only_on_loopback_and_its_private_address(brokers):
    for broker in brokers:
        listening = broker.check_output("ss -Hltn 'sport = :6379' | awk '{print $4}'").split()
        addresses = {entry.rsplit(":", 1)[0] for entry in listening}
        assert addresses == {"127.0.0.1", private_address(broker)}, listening


def test_redis_is_configured_never_to_lose_queued_tasks(brokers, broker_password):
    for broker in brokers:
        asked = redis_cli(broker, "127.0.0.1",
                          f"AUTH {broker_password}\nCONFIG GET maxmemory-policy\nCONFIG GET appendonly\nCONFIG GET appendfsync\n")
        assert asked.stdout.split()[1:] == ["maxmemory-policy", "noeviction", "appendonly", "yes", "appendfsync", "everysec"]


# --- The app and its workers ---------------------------------------------------------------------

def test_environment_file_is_readable_by_root_and_celery_only(workers):
    for worker in workers:
        env = worker.file(ENV_FILE)
        assert (env.user, env.group, env.mode) == ("root", "celery", 0o640)
        assert worker.run(f"runuser -u celery -- grep -q '^CELERY_BROKER_URL=' {ENV_FILE}").rc == 0
        denied = worker.run(f"runuser -u nobody -- cat {ENV_FILE}")
        assert denied.rc != 0 and "Permission denied" in denied.stderr


def worker_programs(worker):
    status = worker.check_output("supervisorctl status")
    return {line.split()[0]: line.split() for line in status.splitlines() if line.startswith(PROGRAM_PREFIX)}


def test_worker_programs_run_as_celery_with_their_pool(workers):
    for worker in workers:
        programs = worker_programs(worker)
        assert programs, "no worker program under supervisor"
        for name, fields in programs.items():
            assert fields[1] == "RUNNING", fields
            pid = fields[3].rstrip(",")
            assert worker.check_output(f"ps -o user= -p {pid}").strip() == "celery"
            children = worker.check_output(f"ps -o user= --ppid {pid}").split()
            assert children and set(children) == {"celery"}, f"{name}: pool processes {children}"
            assert "celery" in worker.check_output(f"ps -o args= -p {pid}")


def test_every_worker_node_answers_inspect_ping(workers):
    for worker in workers:
        node = f"default@{worker.backend.host}"
        out = worker.check_output(f"{RUN} celery --app=fleetapp inspect ping --timeout=5 --json --destination={node}")
        assert json.loads(out) == {node: {"ok": "pong"}}


def test_a_task_sent_from_a_client_runs_on_a_worker_host(clients, workers):
    worker_hosts = {w.check_output("hostname") for w in workers}
    for client in clients:
        out = run_python(client, (
            "import json; from fleetapp.tasks import add, hostname\n"
            "r = add.delay(4, 4); value = r.get(timeout=30)\n"
            "h = hostname.delay().get(timeout=30)\n"
            "print(json.dumps({'value': value, 'node': r.worker, 'host': h}))"
        ))
        result = json.loads(out)
        assert result["value"] == 8
        assert result["host"] in worker_hosts and result["host"] != client.check_output("hostname")
        assert result["node"] == f"default@{result['host']}"


def test_the_client_module_prints_the_tutorial_result(clients):
    out = clients[0].check_output(f"timeout 60 {RUN} python -m fleetapp.client 4 4")
    assert out.startswith("add(4, 4) = 8 "), out


def test_a_stop_is_warm_and_lets_the_running_task_finish(clients, workers):
    """supervisorctl stop must let a running task finish (SIGTERM to the main process only)."""
    worker, client = workers[0], clients[0]
    program = f"{PROGRAM_PREFIX}default"
    token = uuid.uuid4().hex
    task_id = run_python(client, f"from fleetapp.tasks import sleep; print(sleep.delay(6, {token!r}).id)")
    # Wait until the worker is running it, then stop the worker while the task still runs.
    wait = (
        f"for i in $(seq 1 40); do {RUN} celery --app=fleetapp inspect active --json --timeout=2 "
        f"| grep -q {task_id} && exit 0; sleep 0.25; done; exit 1"
    )
    assert worker.run(wait).rc == 0, "the task never started"
    try:
        stopped = worker.run(f"supervisorctl stop {program}")
        assert "stopped" in stopped.stdout, stopped.stdout
        # No worker is running now: the result exists only if the task finished during the stop.
        out = run_python(client, (
            "from celery.result import AsyncResult; from fleetapp import app\n"
            f"r = AsyncResult({task_id!r}, app=app); print(r.state, r.get(timeout=5))"
        ))
        assert out.split() == ["SUCCESS", token]
    finally:
        worker.run(f"supervisorctl start {program}")
