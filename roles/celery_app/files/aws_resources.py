"""Create what the app needs in AWS before its workers start: its SQS queues with the fleet's
visibility timeout (set on those that have another), and its DynamoDB result table.

Run by the celery_app role through the app's launcher, as root, so it reaches AWS with the app's
own settings and credentials and names everything exactly as its processes do (kombu's SQS
transport: prefix, dots to dashes; Celery's DynamoDB backend: its table and schema):

    bin/run python -c "$(cat aws_resources.py)" QUEUE...

kombu sets a queue's visibility timeout only when it creates the queue: an existing queue would
silently keep an older one, and tasks longer than that run twice. Celery's DynamoDB backend
creates its table in each process on first use: pool processes starting together race, and the
losers' tasks fail with ResourceInUseException (measured: 2 to 3 tasks of 300 under a rolling
restart's load). Prints JSON: `created` (names) and `changed` (a sentence per queue whose timeout
was changed).
"""

import json
import sys

from celery.app.utils import find_app

app = find_app("celery_fleet:app")
created, changed = [], []
queues = sys.argv[1:]
if queues:
    from kombu.transport.SQS.exceptions import DoesNotExistQueueException

    wanted = str(app.conf.broker_transport_options["visibility_timeout"])
    with app.connection_for_write() as connection:
        channel = connection.default_channel
        for queue in queues:
            name = channel.canonical_queue_name(queue)
            try:
                url = channel._resolve_queue_url(queue)
            except DoesNotExistQueueException:
                channel._new_queue(queue)  # with the transport's visibility_timeout
                created.append(name)
                continue
            client = channel.sqs(queue=name)
            attributes = client.get_queue_attributes(QueueUrl=url, AttributeNames=["VisibilityTimeout"])["Attributes"]
            if attributes["VisibilityTimeout"] != wanted:
                client.set_queue_attributes(QueueUrl=url, Attributes={"VisibilityTimeout": wanted})
                changed.append(f"{name}: visibility timeout was {attributes['VisibilityTimeout']} s, now {wanted} s")
if type(app.backend).__name__ == "DynamoDBBackend":
    import boto3

    backend = app.backend
    tables = boto3.client("dynamodb", region_name=backend.aws_region, endpoint_url=backend.endpoint_url).list_tables()["TableNames"]
    backend.client  # the backend's own create (and wait until active), in one process
    if backend.table_name not in tables:
        created.append(backend.table_name)
print(json.dumps({"created": created, "changed": changed}))
