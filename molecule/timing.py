"""The suite's clock: each Molecule run's wall time, the time of each of its steps, and the
share of the run this machine's cores were idle; `make test` prints the table at its end.

    python molecule/timing.py run LABEL -- molecule test --scenario-name fleet
    python molecule/timing.py report

`run` passes the command's output through unchanged, takes a step's start from Molecule's
"<scenario> ➜ <step>: Executing" line (a step ends where the next one starts), and appends one
JSON line to TIMINGS; a failed run prints the table so far before it exits with the run's code.
With FLEET_LANE set (a lane of runs beside another), each line of output starts with it, and the
table's last line gives the wall time from the first run's start to the last one's end.
"""

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

TIMINGS = Path(os.environ.get("FLEET_TIMINGS", Path(__file__).resolve().parent.parent / ".cache" / "timings.jsonl"))
STEPS = ["create", "prepare", "converge", "idempotence", "side_effect", "verify", "destroy"]
STEP_LINE = re.compile(r"➜ ([a-z_]+): Executing")


def cpu_times():
    """(idle, total) jiffies of every core since boot: idle and iowait against all."""
    fields = [int(n) for n in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return fields[3] + fields[4], sum(fields)


def step_seconds(marks, ended):
    """{step: seconds} from the (time, step) marks of a run, a step lasting until the next mark;
    a step Molecule runs twice (destroy) counts both times."""
    seconds = {}
    for (at, step), (until, _) in zip(marks, [*marks[1:], (ended, None)]):
        seconds[step] = round(seconds.get(step, 0.0) + until - at, 1)
    return seconds


def run(label, command):
    idle0, total0 = cpu_times()
    began, started = time.time(), time.monotonic()
    marks = []
    lane = os.environ.get("FLEET_LANE", "")
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1) as process:
        for line in process.stdout:
            sys.stdout.write(lane + line)
            found = STEP_LINE.search(re.sub(r"\x1b\[[0-9;]*m", "", line))
            if found:
                marks.append((time.monotonic(), found.group(1)))
    ended = time.monotonic()
    idle1, total1 = cpu_times()
    record = {"run": lane + label, "began": began, "ended": time.time(), "seconds": round(ended - started, 1), "steps": step_seconds(marks, ended),
              "idle": round((idle1 - idle0) / max(total1 - total0, 1), 3), "rc": process.returncode}
    TIMINGS.parent.mkdir(parents=True, exist_ok=True)
    with TIMINGS.open("a") as out:
        out.write(json.dumps(record) + "\n")
    if process.returncode:
        report()
    return process.returncode


def table(records):
    header = ["run", "total", *STEPS, "idle", "ok"]
    rows = [header]
    for r in records:
        rows.append([r["run"], f"{r['seconds'] / 60:.1f}m", *(f"{r['steps'][s]:.0f}s" if s in r["steps"] else "-" for s in STEPS),
                     f"{r['idle']:.0%}", "yes" if r["rc"] == 0 else "FAILED"])
    total = sum(r["seconds"] for r in records)
    rows.append(["all runs", f"{total / 60:.1f}m", *([""] * len(STEPS)), "", ""])
    wall = max(r["ended"] for r in records) - min(r["began"] for r in records)
    rows.append(["wall time", f"{wall / 60:.1f}m", *([""] * len(STEPS)), "", ""])
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
                     for row in rows)


def report():
    records = [json.loads(line) for line in TIMINGS.read_text().splitlines()] if TIMINGS.exists() else []
    print(f"\nMolecule runs (wall time, time per step, share of the run the cores were idle; {TIMINGS}):")
    print(table(records) if records else "no run recorded")


if __name__ == "__main__":
    if sys.argv[1:2] == ["run"] and "--" in sys.argv:
        sys.exit(run(sys.argv[2], sys.argv[sys.argv.index("--") + 1:]))
    if sys.argv[1:] == ["report"]:
        sys.exit(report())
    sys.exit(__doc__)
