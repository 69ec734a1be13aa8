"""Create an app's SQS queues with the fleet's visibility timeout; set it on those that have another.

Run by the celery_app role through the app's launcher, as root, so it reaches SQS with the app's
own settings and credentials and names the queues exactly as its workers do (kombu's transport:
prefix, dots to dashes):

    bin/run python -c "$(cat sqs_queues.py)" QUEUE...

kombu sets a queue's visibility timeout only when it creates the queue: an existing queue would
silently keep an older one, and tasks longer than that run twice. Prints JSON: `created` (queue
names) and `changed` (a sentence per queue whose timeout was changed).
"""

import json
import sys

from celery.app.utils import find_app
from kombu.transport.SQS.exceptions import DoesNotExistQueueException

app = find_app("celery_fleet:app")
wanted = str(app.conf.broker_transport_options["visibility_timeout"])
created, changed = [], []
with app.connection_for_write() as connection:
    channel = connection.default_channel
    for queue in sys.argv[1:]:
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
print(json.dumps({"created": created, "changed": changed}))
