"""The example inventories parse, name only example hosts, and site.yml accepts them.

Nothing here opens a connection: `ansible-inventory --list` and `--syntax-check` only read.
"""

import ipaddress
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
BIN = Path(sys.executable).parent
DOCUMENTATION_RANGES = [ipaddress.ip_network(n) for n in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24")]


def ansible(tool, *args):
    return subprocess.run([str(BIN / tool), *args], cwd=ROOT, check=True, capture_output=True, text=True).stdout


@pytest.mark.parametrize("env", ["staging", "production"])
def test_example_inventory_names_only_example_hosts(env):
    listing = json.loads(ansible("ansible-inventory", "-i", f"inventory/{env}", "--list"))
    hosts = listing["_meta"]["hostvars"]
    assert listing["brokers"]["hosts"] and listing["workers"]["hosts"]
    assert len(listing["beat"]["hosts"]) == 1
    for name, variables in hosts.items():
        assert name.endswith(".example.com"), name
        if "ansible_host" in variables:
            address = ipaddress.ip_address(variables["ansible_host"])
            assert any(address in net for net in DOCUMENTATION_RANGES), (name, address)
        # Secrets come from the vault file, never from the inventory in clear.
        assert variables["celery_broker_password"] == "{{ vault_celery_broker_password }}"
        flower = [variables.get("celery_flower_cookie_secret"), variables.get("celery_flower_broker_api_password")] + [
            user["password"] for user in variables.get("celery_flower_users", [])]
        assert all(value is None or value.startswith("{{ vault_") for value in flower), name
        assert variables["ansible_become"] is True and variables["ansible_user"] != "root"


@pytest.mark.parametrize("env", ["staging", "production"])
def test_site_and_day_two_playbooks_parse_with_the_example_inventory(env):
    for playbook in ("site.yml", "playbooks/deploy.yml", "playbooks/rollback.yml", "playbooks/rolling_restart.yml",
                     "playbooks/broker_restart.yml"):
        ansible("ansible-playbook", "-i", f"inventory/{env}", "--syntax-check", playbook)


def test_the_vault_password_client_reads_only_its_variable():
    client = [str(Path(__file__).resolve().parents[1] / "inventory/vault-password-from-env")]
    given = subprocess.run(client, env={"FLEET_VAULT_PASSWORD": "s3cret pass"}, capture_output=True, text=True)
    assert given.returncode == 0 and given.stdout == "s3cret pass\n"
    missing = subprocess.run(client, env={}, capture_output=True, text=True)
    assert missing.returncode != 0 and missing.stdout == ""
    assert "FLEET_VAULT_PASSWORD is not set" in missing.stderr
