"""celery-fleet's entry point for an app's Celery processes: ``celery --app=celery_fleet:app``.

Every worker, beat and control command of a deployed app loads the app through this module. It
finds the app named by FLEET_APP_MODULE, which is what the tutorial puts after ``-A`` (``tasks``,
``proj``, ``proj.celery:app``), and applies the deployment's settings to it. The module is
installed into every release's venv by the celery_app role; the app needs no code for it.

Celery itself reads only CELERY_BROKER_URL and CELERY_RESULT_BACKEND from the environment (and
those win over a broker hard-coded in the app). The fleet's environment file carries the
production settings too (late acks, prefetch, time limits, transport options), each as
``CELERY_<SETTING NAME IN UPPER CASE>``. They are typed with Celery's own table of settings, so a
misspelt name or an ill-typed value fails at start instead of being silently ignored, and they
win over the app's own configuration: the broker's timeouts and the workers' acknowledgements
must agree with each other whatever the code says.

A process that imports the app itself, as the tutorial's client does (``from tasks import add``),
gets the same settings when it runs on the release's Python with the app's environment
(``bin/run python ...``, or the release's venv with the environment file loaded): the venv's
``celery_fleet.pth`` calls ``configure_every_app()`` there, and every app the process creates is
configured when its configuration is first read. Without that, such a client would miss the settings Celery does not read from the
environment itself: on SQS the queue name prefix (its tasks would go to a queue nobody consumes),
on a shared Redis the key prefix, on RabbitMQ publisher confirms (and, on a cluster, each
node's own queue declared as the quorum queue the workers declare: quorum_worker_direct). A process on another Python
calls ``celery_fleet.configure(app)`` itself.

An app may send tasks by name to the apps the inventory lets it (celery_apps' ``sends_to``):
``celery_fleet.send_task("billing", "billing.tasks.charge", (order_id,))``. The broker grants
exactly that to the app's own account: publishing to the other app's queues, nothing else.
"""

import json
import os
import sys
from collections.abc import Mapping

from celery import Celery
from celery._state import task_join_will_block
from celery.backends.rpc import RPCBackend as _CeleryRPCBackend
from kombu import Queue
from kombu.common import maybe_declare
from celery.app.defaults import NAMESPACES, Option, flatten
from celery.app.utils import find_app
from celery.utils.nodenames import worker_direct as _celery_worker_direct

PREFIX = "CELERY_"

# Names the app to load, as `celery -A` would (not CELERY_*: that prefix is for settings).
APP_VARIABLE = "FLEET_APP_MODULE"

# The other apps this one may send tasks to: {app: {url, transport_options, queues}} as JSON.
SEND_TO_VARIABLE = "FLEET_SEND_TO"

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



def configure(app: Celery, environ: Mapping[str, str] = os.environ) -> Celery:
    """Apply the deployment's settings from ``environ`` to ``app`` and return it."""
    app.conf.update(settings_from_environ(environ))
    _use_bounded_rpc(app)
    return app


class RPCBackend(_CeleryRPCBackend):
    """``rpc://`` results, whose reply queue a client declares before each send within the app's
    publish retry policy (task_publish_retry_policy), as the send itself is.

    Celery's declares it retrying for ever (``maybe_declare(..., retry=True)``, no limit): a client
    whose idle connection a broker closed (a node stopped, or paused when its cluster lost the
    majority) then blocks in ``delay()`` until a broker is back, instead of failing in the sender.
    """

    def on_task_call(self, producer, task_id):
        if not task_join_will_block():
            maybe_declare(self.binding(producer.channel), retry=True, **self.app.conf.task_publish_retry_policy)


def _use_bounded_rpc(app: Celery) -> None:
    # The loader's own hook for a backend class per URL scheme: the setting stays rpc://.
    app.loader.override_backends = {**app.loader.override_backends, "rpc": f"{__name__}:RPCBackend"}


def configure_every_app() -> None:
    """Configure every app this process creates, once its configuration is read (the release's
    celery_fleet.pth calls this when the app's environment is loaded: FLEET_APP_MODULE is set).

    Through Celery's own hooks: ``on_init``, called by every new app, connects the app's
    ``on_after_configure`` signal, sent when its configuration is first read (before any task is
    sent; a client never finalizes its app, so the finalize hooks would come too late).
    """
    if getattr(Celery.on_init, "fleet_hook", False):
        return
    app_on_init = Celery.on_init

    def on_init(app: Celery) -> None:
        app_on_init(app)
        app.on_after_configure.connect(_configure_own_app, sender=app, weak=False)

    on_init.fleet_hook = True
    Celery.on_init = on_init
    if os.environ.get(f"{PREFIX}TASK_DEFAULT_QUEUE_TYPE") == "quorum":
        _use_quorum_worker_direct()


def quorum_worker_direct(hostname):
    """Celery's ``worker_direct`` (a node's own queue), declared as a quorum queue.

    On a RabbitMQ cluster every queue is a quorum queue: a classic one lives on one node, and a
    worker failing over to another node could not declare its own queue while that node is down.
    Every declaration must agree (RabbitMQ refuses a queue declared with another type), so the
    fleet's processes get this in place of Celery's: the worker, the deploys' smoke tests, and any
    code of the app that sends to ``worker_direct(node)``.
    """
    queue = _celery_worker_direct(hostname)
    if isinstance(hostname, Queue):
        return queue
    return Queue(queue.name, queue.exchange, queue.routing_key, queue_arguments={"x-queue-type": "quorum"})


def _use_quorum_worker_direct() -> None:
    # Wherever Celery exposes it; modules imported later (the worker's) bind the replacement.
    for module in ("celery.utils.nodenames", "celery.utils", "celery.worker.worker", "celery.contrib.migrate"):
        if module in sys.modules:
            sys.modules[module].worker_direct = quorum_worker_direct


def _configure_own_app(sender: Celery, source, **_) -> None:
    # The senders of send_task carry another app's grant, not this app's settings.
    if not getattr(sender, "fleet_sender", False):
        source.update(settings_from_environ(os.environ))
        _use_bounded_rpc(sender)


def send_task(target: str, name: str, args=(), kwargs=None, queue: str = "celery", environ: Mapping[str, str] = os.environ):
    """Send task ``name`` to app ``target``'s ``queue``, as this app may (FLEET_SEND_TO); return its id.

    The grant is to publish and nothing more, so the send declares nothing and asks for no
    result (the other app stores none; it is that app's to report). RabbitMQ confirms the
    publish, so a refusal raises here, in the sender, and never drops the task silently.
    """
    grants = json.loads(environ.get(SEND_TO_VARIABLE) or "{}")
    if target not in grants:
        raise LookupError(f"this app may not send to {target!r} (sends_to grants: {sorted(grants) or 'none'})")
    grant = grants[target]
    if queue not in grant["queues"]:
        raise LookupError(f"{target!r} has no queue {queue!r} (its queues: {grant['queues']})")
    sender = Celery(f"{target}-sender", set_as_current=False)
    sender.fleet_sender = True
    sender.conf.update(
        broker_transport_options=grant["transport_options"],
        task_queues=[Queue(name, no_declare=True) for name in grant["queues"]],
        task_send_sent_event=False,
    )
    # RabbitMQ: through the queue's own exchange (the grant), never amq.default, which reaches
    # every queue of the vhost. Redis: straight onto the queue's list, the one key granted.
    amqp = grant["url"].startswith("amqp")
    route = {"exchange": queue, "routing_key": queue} if amqp else {"queue": queue}
    # The URL is given to the connection: CELERY_BROKER_URL (this app's own) would win over the app's.
    with sender.connection_for_write(url=grant["url"]) as connection:
        return sender.send_task(name, args, kwargs, connection=connection, ignore_result=True, **route).id


def __getattr__(name: str):
    # `celery --app=celery_fleet:app` asks for `app`: load and configure the app on first use.
    if name != "app":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if not os.environ.get(APP_VARIABLE):
        raise RuntimeError(f"{APP_VARIABLE} is not set: it names the app, as `celery -A` would (e.g. tasks or proj)")
    app = globals()["app"] = configure(find_app(os.environ[APP_VARIABLE]))
    return app
