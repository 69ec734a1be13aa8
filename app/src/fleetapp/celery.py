"""The Celery application. Like any app the fleet deploys, it holds no deployment settings: the
broker, the result backend and the production settings reach it from the environment when
celery-fleet's entry point (celery_fleet, installed beside it) loads it."""

from celery import Celery

app = Celery("fleetapp", include=["fleetapp.tasks"])
# The app's periodic task, for beat: a heartbeat every 10 seconds.
app.conf.beat_schedule = {"heartbeat": {"task": "fleetapp.tasks.heartbeat", "schedule": 10.0}}
