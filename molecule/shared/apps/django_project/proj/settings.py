"""A Django project with one app (notes) and Celery; secrets and paths come from the environment."""
import os

SECRET_KEY = os.environ["DJANGO_SECRET_KEY"]
DEBUG = False
ALLOWED_HOSTS: list[str] = []
INSTALLED_APPS = ["django.contrib.contenttypes", "notes"]
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": os.environ["DJANGO_SQLITE_PATH"]}}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True

# What a developer's settings say; on the fleet, CELERY_BROKER_URL from the environment wins.
CELERY_BROKER_URL = "redis://localhost:6379/0"
CELERY_TASK_TRACK_STARTED = True
