"""How many RabbitMQ brokers an inventory may have: one (a single node) or 3, 5, 7 (a cluster).

Two brokers cannot be staged in the Molecule scenarios (an extra inventory can add a host to a
group, never take one out), so preflight runs here against hosts that are this machine
(`ansible_connection: local`): the refusal comes from the first rule, before any task that
could change a host. The inventory has no `beat` group, as a fleet without periodic tasks would
not: the beat rule used to fail on it with a templating error instead of passing.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
BIN = Path(sys.executable).parent


def preflight(tmp_path, brokers):
    inventory = {
        "all": {
            "vars": {
                "ansible_connection": "local",
                "ansible_python_interpreter": sys.executable,
                "celery_broker": "rabbitmq",
                "celery_broker_password": "Zq7mW2pL9xR4tV8nK3bY",
                "rabbitmq_erlang_cookie": "Q8W2E6R4T1Y9U3I7O5P0A2S4",
            },
            "children": {
                "brokers": {"hosts": {f"broker{n}": {} for n in range(1, brokers + 1)}},
                "workers": {"hosts": {"worker1": {}}},
            },
        }
    }
    path = tmp_path / "hosts.yml"
    path.write_text(json.dumps(inventory))
    env = {**os.environ, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"), "ANSIBLE_STDOUT_CALLBACK": "ansible.posix.json"}
    done = subprocess.run([str(BIN / "ansible-playbook"), "-i", str(path), "playbooks/preflight.yml"],
                          cwd=ROOT, capture_output=True, text=True, env=env)
    failures = [(task["task"]["name"], " ".join(str(each.get("msg", "")).split()))
                for play in json.loads(done.stdout)["plays"] for task in play["tasks"]
                for result in task["hosts"].values() for each in result.get("results") or [result] if each.get("failed")]
    return done.returncode, failures


@pytest.mark.parametrize("brokers, why", [
    (2, "With 2, losing either stops every quorum queue"),
    (4, "an even count can split into halves that both pause"),
])
def test_two_brokers_or_an_even_count_are_refused_by_one_rule(tmp_path, brokers, why):
    returncode, failures = preflight(tmp_path, brokers)
    assert returncode != 0
    assert {task for task, _ in failures} == {"celery : Check the RabbitMQ cluster"}, failures
    assert all(f"The `brokers` group has {brokers} hosts" in msg and why in msg for _, msg in failures), failures
