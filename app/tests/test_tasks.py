import json
import socket
import time

from fleetapp import __version__, app
from fleetapp.tasks import add, heartbeat, hostname, sleep, tracked, version


def test_tasks_run_eagerly():
    assert add.apply(args=(4, 4)).get() == 8
    assert hostname.apply().get() == socket.gethostname()
    assert version.apply().get() == __version__
    assert sleep.apply(args=(0, "token-1")).get() == "token-1"


def test_heartbeat_records_host_and_time(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    record = heartbeat.apply().get()
    assert record["host"] == socket.gethostname()
    assert json.loads((tmp_path / "fleetapp-heartbeat.json").read_text()) == record


def test_tracked_logs_every_completed_run(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    sent = time.time()
    first = tracked.apply(args=(0, "t-1"), task_id="id-1")
    second = tracked.apply(args=(0, "t-2"), task_id="id-2")
    assert (first.get(), second.get()) == ("t-1", "t-2")
    done = time.time()
    lines = [line.split(" ") for line in (tmp_path / "fleetapp-executions.log").read_text().splitlines()]
    assert [line[:2] for line in lines] == [["id-1", socket.gethostname()], ["id-2", socket.gethostname()]]
    # When each run started, to the millisecond.
    assert all(sent - 0.001 <= float(line[2]) <= done + 0.001 for line in lines)
    # Run in place, not delivered by a broker: not a redelivery.
    assert [line[3] for line in lines] == ["0", "0"]


def test_beat_schedules_the_heartbeat():
    assert app.conf.beat_schedule["heartbeat"]["task"] == "fleetapp.tasks.heartbeat"


def test_tasks_are_registered_under_their_module_names():
    app.loader.import_default_modules()
    assert {"fleetapp.tasks.add", "fleetapp.tasks.hostname", "fleetapp.tasks.version", "fleetapp.tasks.sleep", "fleetapp.tasks.heartbeat", "fleetapp.tasks.tracked"} <= set(app.tasks)
