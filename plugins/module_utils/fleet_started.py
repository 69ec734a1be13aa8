"""When a process started and when its inputs last changed: the fleet's one rule for "runs what was
written". A service (or a Celery process) started before the newest change of a file it reads at
start runs an older version of it: a run that wrote the file and failed before the restart, or a
handler that was forgotten, is put right by the next run, which compares these two times.
Used by the modules fleet_service_state (Redis, RabbitMQ, nginx) and celery_process_state (the
Celery processes, Flower included)."""

import os
import time

# A process started this long before an input's change counts as started after it: a start time
# from /proc is exact to a clock tick, file times to a few milliseconds.
CLOCK_SLACK = 0.2


def started_at(pid):
    """The wall-clock time process `pid` started, from /proc (None when it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    since_boot = int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22: starttime, in ticks
    return time.time() - time.clock_gettime(time.CLOCK_BOOTTIME) + since_boot


def changed_at(paths):
    """The newest modification among `paths` (a link's own, not its target's; a directory's
    changes when an entry is added or removed). Missing paths count as never changed."""
    times = [os.lstat(path).st_mtime for path in paths if os.path.lexists(path)]
    return max(times, default=0.0)


def runs_older(began, changed):
    """Whether a process that started at `began` (None: not running) predates a change at `changed`."""
    return began is not None and began + CLOCK_SLACK < changed
