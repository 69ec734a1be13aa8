"""The Celery application, configured from the process environment (see fleetapp.settings)."""

import os

from celery import Celery

from fleetapp.settings import settings_from_environ

app = Celery("fleetapp", include=["fleetapp.tasks"])
app.conf.update(settings_from_environ(os.environ))
