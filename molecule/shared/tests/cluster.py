"""The RabbitMQ cluster as its nodes report it, for test_cluster.py and test_cluster_drills.py."""

import json

VHOST = "celery"


def rabbitmqctl(broker, command):
    """A rabbitmqctl command's JSON output on that broker (its warnings go to stderr)."""
    return json.loads(broker.check_output(f"rabbitmqctl -q {command} --formatter json"))


def node_name(broker):
    return f"rabbit@{broker.backend.host}"


def queues(broker):
    """The app's queues as the cluster sees them: {name: row}."""
    rows = rabbitmqctl(broker, f"list_queues -p {VHOST} name type leader members online policy messages")
    return {row["name"]: row for row in rows}


def running_nodes(broker):
    result = broker.run("rabbitmqctl -q cluster_status --formatter json")
    return set(json.loads(result.stdout)["running_nodes"]) if result.rc == 0 and result.stdout.strip() else set()
