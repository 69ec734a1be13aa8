"""The Celery application, configured from the process environment (see fleetapp.settings)."""

import os

from celery import Celery

from fleetapp.settings import settings_from_environ

app = Celery("fleetapp", include=["fleetapp.tasks"])
# The app's periodic task, for beat: a heartbeat every 10 seconds. The environment may
# replace the schedule (CELERY_BEAT_SCHEDULE, a JSON object).
app.conf.beat_schedule = {"heartbeat": {"task": "fleetapp.tasks.heartbeat", "schedule": 10.0}}
app.conf.update(settings_from_environ(os.environ))
