"""The suite's clock (molecule/timing.py): steps measured from Molecule's own lines."""

import importlib.util
import json
from pathlib import Path

spec = importlib.util.spec_from_file_location("timing", Path(__file__).resolve().parent.parent / "molecule" / "timing.py")
timing = importlib.util.module_from_spec(spec)
spec.loader.exec_module(timing)


def test_a_step_lasts_until_the_next_and_destroy_counts_twice():
    marks = [(0.0, "destroy"), (2.0, "create"), (10.0, "converge"), (70.0, "verify"), (100.0, "destroy")]
    assert timing.step_seconds(marks, 105.0) == {"destroy": 7.0, "create": 8.0, "converge": 60.0, "verify": 30.0}


def test_a_run_records_its_steps_its_idle_share_and_its_code(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(timing, "TIMINGS", tmp_path / "timings.jsonl")
    script = "import time\nfor s in ('create', 'converge'):\n    print(f'INFO     x \\u279c {s}: Executing', flush=True); time.sleep(0.3)\n"
    code = timing.run("x redis", ["python3", "-c", script + "raise SystemExit(3)"])
    record = json.loads((tmp_path / "timings.jsonl").read_text())
    assert code == 3 and record["rc"] == 3 and record["run"] == "x redis"
    assert set(record["steps"]) == {"create", "converge"} and all(0.2 < s < 2 for s in record["steps"].values())
    assert 0 <= record["idle"] <= 1
    out = capsys.readouterr().out
    assert "converge: Executing" in out, "the run's own output passes through"
    assert "FAILED" in out.splitlines()[-3], "a failed run prints the table"


def test_a_lane_marks_its_lines_and_the_table_gives_the_wall_time_of_runs_side_by_side(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(timing, "TIMINGS", tmp_path / "timings.jsonl")
    monkeypatch.setenv("FLEET_LANE", "[drills] ")
    assert timing.run("d", ["python3", "-c", "print('hello')"]) == 0
    assert "[drills] hello" in capsys.readouterr().out
    assert json.loads((tmp_path / "timings.jsonl").read_text())["run"] == "[drills] d"
    records = [{"run": name, "began": began, "ended": began + seconds, "seconds": seconds, "steps": {}, "idle": 0.5, "rc": 0}
               for name, began, seconds in (("a", 0.0, 600.0), ("b", 60.0, 600.0), ("c", 660.0, 120.0))]
    lines = timing.table(records).splitlines()
    assert lines[-2].split()[:3] == ["all", "runs", "22.0m"] and lines[-1].split()[:3] == ["wall", "time", "13.0m"]
