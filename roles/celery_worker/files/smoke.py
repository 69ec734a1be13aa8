"""Smoke-test one worker node: send a task to the node's own queue and check what comes back.

Run by the celery_worker role through the app's launcher (`bin/run python -c ...`) after a
deploy or rollback restarted the node:

    APP NODE TASK ARGS_JSON EXPECTED_JSON TIMEOUT

The task goes to the node's direct queue (Celery's `worker_direct`), so no other worker can
answer for it. EXPECTED_JSON `null` accepts any successful result. Exits non-zero, saying why,
when the task fails, times out, runs elsewhere, or returns something else.
"""

import json
import sys

from celery.app.utils import find_app
from celery.utils.nodenames import worker_direct

app_name, node, task, args, expected, timeout = sys.argv[1:7]
app = find_app(app_name)
result = app.send_task(task, args=json.loads(args), queue=worker_direct(node))
try:
    value = result.get(timeout=float(timeout))
except Exception as error:  # the task's own exception, or a timeout
    sys.exit(f"smoke task {task} on {node} failed: {type(error).__name__}: {error}")
print(json.dumps({"node": node, "task": task, "result": value, "worker": result.worker}, default=str))
if result.worker and result.worker != node:
    sys.exit(f"smoke task {task} ran on {result.worker}, not on {node}")
if json.loads(expected) is not None and value != json.loads(expected):
    sys.exit(f"smoke task {task} on {node} returned {value!r}, expected {json.loads(expected)!r}")
