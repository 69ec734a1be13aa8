"""The Celery application. Like any app the fleet deploys, it holds no deployment settings: the
broker, the result backend and the production settings reach it from the environment when
celery-fleet's entry point (celery_fleet, installed beside it) loads it."""

import os
import time

from celery import Celery
from celery.signals import worker_init

app = Celery("fleetapp", include=["fleetapp.tasks"])
# The app's periodic task, for beat: a heartbeat every 10 seconds.
app.conf.beat_schedule = {"heartbeat": {"task": "fleetapp.tasks.heartbeat", "schedule": 10.0}}


@worker_init.connect
def start_slowly(**_):
    """FLEETAPP_STARTUP_SECONDS: a worker that takes that long before it consumes, as one whose
    app imports Django and its models does (scenario fleet, whose rolling restart must wait)."""
    time.sleep(float(os.environ.get("FLEETAPP_STARTUP_SECONDS") or 0))
