"""Start, stop or restart several of the app's supervisor programs at once.

    python3 -c "$(cat supervisor_act.py)" start|stop|restart PROGRAM...

`supervisorctl start a b c` waits for each program in turn (for `startsecs`, or for a warm stop
to end) before it asks for the next, so a host's processes came up one after another. This asks
supervisord (its XML-RPC interface, through supervisorctl's own client settings) for every
program at once and waits for all of them: what supervisorctl would do, in the time of the
slowest program. A restart stops them all, then starts them all.

Prints each program's state at the end and `changed: NAME` for each program it stopped or
started (one already stopped or running is left alone). Exits 0 when every program ended in the
wanted state; otherwise prints a line per program that did not (supervisorctl's words:
`NAME: ERROR (abnormal termination)`) and exits 1.
"""

import sys
import time
from xmlrpc.client import Fault

from supervisor.options import ClientOptions
from supervisor.xmlrpc import Faults

# Settled states: a stop waits until none of its programs is in STOPPING_STATES (supervisord
# sends SIGKILL itself after the program's stopwaitsecs); a start until each is RUNNING, or has
# failed to stay up for startsecs (BACKOFF: the test supervisorctl's own `start` applies).
STOPPING_STATES = {"STOPPING", "RUNNING", "STARTING", "BACKOFF"}
FAILED_STATES = {"BACKOFF", "FATAL", "EXITED", "STOPPED", "UNKNOWN"}
POLL_SECONDS = 0.2


def supervisor():
    options = ClientOptions()
    options.realize(args=[])
    return options.getServerProxy().supervisor


def states(rpc, names):
    return {info["name"]: info["statename"] for info in rpc.getAllProcessInfo() if info["name"] in names}


def ask(call, names, unchanged_fault):
    """Call stopProcess or startProcess for every program without waiting; the ones it acted on."""
    acted = []
    for name in names:
        try:
            call(name, False)
            acted.append(name)
        except Fault as fault:
            if fault.faultCode != unchanged_fault:
                raise
    return acted


def stop(rpc, names):
    acted = ask(rpc.stopProcess, names, Faults.NOT_RUNNING)
    while any(state in STOPPING_STATES for state in states(rpc, names).values()):
        time.sleep(POLL_SECONDS)
    return acted, []


def start(rpc, names):
    acted = ask(rpc.startProcess, names, Faults.ALREADY_STARTED)
    while True:
        found = states(rpc, names)
        failed = [name for name in names if found.get(name, "UNKNOWN") in FAILED_STATES]
        if failed or all(found.get(name) == "RUNNING" for name in names):
            return acted, [f"{name}: ERROR (abnormal termination)" for name in failed]
        time.sleep(POLL_SECONDS)


def main(action, names):
    rpc = supervisor()
    missing = sorted(set(names) - set(states(rpc, names)))
    if missing:
        print("\n".join(f"{name}: ERROR (no such process)" for name in missing))
        return 1
    acted, errors = set(), []
    for step in ([stop] if action in ("stop", "restart") else []) + ([start] if action in ("start", "restart") else []):
        step_acted, step_errors = step(rpc, names)
        acted.update(step_acted)
        errors += step_errors
    for name, state in sorted(states(rpc, names).items()):
        print(f"{name}: {state}")
    print("".join(f"changed: {name}\n" for name in sorted(acted)) + "\n".join(errors))
    return 1 if errors else 0


if __name__ == "__main__":
    if len(sys.argv) < 3 or sys.argv[1] not in ("start", "stop", "restart"):
        sys.exit(__doc__)
    sys.exit(main(sys.argv[1], sys.argv[2:]))
