"""Celery settings from the environment.

Celery itself reads only CELERY_BROKER_URL and CELERY_RESULT_BACKEND from the environment. The
fleet's environment file carries the production settings too (late acks, prefetch, time limits,
transport options), each as ``CELERY_<SETTING NAME IN UPPER CASE>``. This module turns those
variables into typed settings, using Celery's own table of settings for names and types, so a
misspelt name or an ill-typed value fails at start instead of being silently ignored.
"""

import json
from collections.abc import Mapping

from celery.app.defaults import NAMESPACES, Option, flatten

PREFIX = "CELERY_"

# Variables with the prefix that are not settings: Celery's own CLI and app selection.
NOT_SETTINGS = frozenset({"CELERY_APP", "CELERY_CONFIG_MODULE", "CELERY_LOADER", "CELERY_CUSTOM_WORKER_POOL"})

_OPTIONS: dict[str, Option] = dict(flatten(NAMESPACES))


class SettingError(ValueError):
    """An environment variable names no Celery setting, or its value has the wrong type."""


def _parse(name: str, option: Option, raw: str):
    kind = option.type
    try:
        if kind == "bool":
            lowered = raw.strip().lower()
            if lowered in {"1", "true", "yes", "on"}:
                return True
            if lowered in {"0", "false", "no", "off"}:
                return False
            raise ValueError(f"{raw!r} is not a boolean (true/false)")
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
        if kind == "dict":
            value = json.loads(raw)
            if not isinstance(value, dict):
                raise ValueError("expected a JSON object")
            return value
        if kind in {"list", "tuple"}:
            value = json.loads(raw) if raw.lstrip().startswith("[") else [p.strip() for p in raw.split(",") if p.strip()]
            return list(value)
        if kind == "any":
            # Numbers and JSON documents for settings typed loosely (time limits, queues...).
            try:
                return json.loads(raw)
            except ValueError:
                return raw
        return raw
    except ValueError as exc:
        raise SettingError(f"{PREFIX}{name.upper()}: {exc}") from exc


def settings_from_environ(environ: Mapping[str, str]) -> dict:
    """Return the Celery settings named by ``CELERY_*`` variables in ``environ``."""
    settings = {}
    for key, raw in environ.items():
        if not key.startswith(PREFIX) or key in NOT_SETTINGS:
            continue
        name = key[len(PREFIX):].lower()
        option = _OPTIONS.get(name)
        if option is None:
            raise SettingError(f"{key}: no Celery setting is called {name!r}")
        settings[name] = _parse(name, option, raw)
    return settings

