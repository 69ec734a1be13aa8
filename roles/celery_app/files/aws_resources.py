"""Create what the app needs in AWS before its workers start: its SQS queues with the fleet's
visibility timeout (set on those that have another), and its DynamoDB result table. With
--remove first, delete them instead (the app leaves the fleet; its processes have stopped).

Run by the celery_app role through the app's launcher, as root, so it reaches AWS with the app's
own settings and credentials and names everything exactly as its processes do (kombu's SQS
transport: prefix, dots to dashes; Celery's DynamoDB backend: its table and schema):

    bin/run python -c "$(cat aws_resources.py)" [--remove] QUEUE...

kombu sets a queue's visibility timeout only when it creates the queue: an existing queue would
silently keep an older one, and tasks longer than that run twice. Celery's DynamoDB backend
creates its table in each process on first use: pool processes starting together race, and the
losers' tasks fail with ResourceInUseException (measured: 2 to 3 tasks of 300 under a rolling
restart's load). Prints JSON: `created` (names) and `changed` (a sentence per queue whose timeout
was changed), or with --remove `deleted` (the names of those that were there).
"""

import json
import sys

from celery.app.utils import find_app


def each_queue(app, queues):
    """(channel, queue, its SQS name, its URL or None where SQS has no such queue) for each queue,
    through the app's own connection (none opened without queues)."""
    if not queues:
        return
    from kombu.transport.SQS.exceptions import DoesNotExistQueueException

    with app.connection_for_write() as connection:
        channel = connection.default_channel
        for queue in queues:
            try:
                url = channel._resolve_queue_url(queue)
            except DoesNotExistQueueException:
                url = None
            yield channel, queue, channel.canonical_queue_name(queue), url


def create(app, queues):
    created, changed = [], []
    for channel, queue, name, url in each_queue(app, queues):
        if url is None:
            channel._new_queue(queue)  # with the transport's visibility_timeout
            created.append(name)
            continue
        client = channel.sqs(queue=name)
        wanted = str(app.conf.broker_transport_options["visibility_timeout"])
        attributes = client.get_queue_attributes(QueueUrl=url, AttributeNames=["VisibilityTimeout"])["Attributes"]
        if attributes["VisibilityTimeout"] != wanted:
            client.set_queue_attributes(QueueUrl=url, Attributes={"VisibilityTimeout": wanted})
            changed.append(f"{name}: visibility timeout was {attributes['VisibilityTimeout']} s, now {wanted} s")
    backend = app.backend
    if type(backend).__name__ == "DynamoDBBackend":
        import boto3

        tables = boto3.client("dynamodb", region_name=backend.aws_region, endpoint_url=backend.endpoint_url).list_tables()["TableNames"]
        backend.client  # the backend's own create (and wait until active), in one process
        if backend.table_name not in tables:
            created.append(backend.table_name)
    return {"created": created, "changed": changed}


def remove(app, queues):
    deleted = []
    for channel, _, name, url in each_queue(app, queues):
        if url is not None:
            channel.sqs(queue=name).delete_queue(QueueUrl=url)
            deleted.append(name)
    backend = app.backend
    if type(backend).__name__ == "DynamoDBBackend":
        import boto3

        dynamodb = boto3.client("dynamodb", region_name=backend.aws_region, endpoint_url=backend.endpoint_url)
        try:
            dynamodb.delete_table(TableName=backend.table_name)
            deleted.append(backend.table_name)
        except dynamodb.exceptions.ResourceNotFoundException:
            pass
    return {"deleted": deleted}


if sys.argv[1:2] == ["--remove"]:
    print(json.dumps(remove(find_app("celery_fleet:app"), sys.argv[2:])))
else:
    print(json.dumps(create(find_app("celery_fleet:app"), sys.argv[1:])))
