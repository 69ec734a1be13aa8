#!/usr/bin/python
"""Whether a systemd service runs the files written for it (the fleet's Redis, RabbitMQ, nginx)."""

DOCUMENTATION = r"""
module: fleet_service_state
short_description: Whether a systemd service runs the configuration written for it
description:
  - >-
    Reads, never changes. A service that applies its files when it (re)starts runs an older
    version of them when it started before their last change; a run that wrote them and failed
    before the restart (or a handler that was forgotten) leaves it so, and the next run that
    reads this restarts it, although it writes nothing new.
  - >-
    With O(applied_by=reload) (nginx), the service applies its files on a reload, which starts
    new worker processes under the same main process; the youngest of them is compared.
options:
  name:
    description: The systemd unit.
    type: str
    required: true
  inputs:
    description: The files (or directories, whose time changes as entries come and go) the service reads.
    type: list
    elements: path
    required: true
  applied_by:
    description: What makes the service read its files again.
    type: str
    choices: [restart, reload]
    default: restart
"""

RETURN = r"""
outdated:
  description: The service runs and started (or last reloaded) before its newest input changed.
  type: bool
  returned: always
active:
  description: The unit is active.
  type: bool
  returned: always
"""

import os

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.fleet_started import changed_at, runs_older, started_at


def children(pid):
    """The PIDs whose parent is `pid` (nginx's workers, which a reload replaces)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    if int(stat.read().rsplit(")", 1)[1].split()[1]) == pid:
                        found.append(int(entry))
            except (OSError, IndexError, ValueError):
                continue
    return found


def main():
    module = AnsibleModule(
        argument_spec={"name": {"type": "str", "required": True},
                       "inputs": {"type": "list", "elements": "path", "required": True},
                       "applied_by": {"type": "str", "choices": ["restart", "reload"], "default": "restart"}},
        supports_check_mode=True)
    rc, out, err = module.run_command(["systemctl", "show", "--property=ActiveState,MainPID", module.params["name"]])
    if rc != 0:
        module.fail_json(msg=f"systemctl show {module.params['name']} failed: {err.strip()}")
    show = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    active, pid = show.get("ActiveState") == "active", int(show.get("MainPID") or 0)
    began = None
    if active and pid:
        # A reload starts new workers; the youngest proves the last reload (old ones may linger
        # while they finish their connections).
        workers = [started_at(child) for child in children(pid)] if module.params["applied_by"] == "reload" else []
        began = max([time for time in workers if time is not None], default=None) or started_at(pid)
    module.exit_json(changed=False, active=active, outdated=runs_older(began, changed_at(module.params["inputs"])))


if __name__ == "__main__":
    main()
