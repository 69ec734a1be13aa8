"""The Celery tutorial's app, packaged for celery-fleet."""

# The one place the version is written: pyproject.toml reads it from here.
__version__ = "1.0.0"

from fleetapp.celery import app  # noqa: E402  (the app needs nothing above, tasks need __version__)

__all__ = ["__version__", "app"]
