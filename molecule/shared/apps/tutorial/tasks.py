# The first-steps tutorial's tasks.py, unchanged: the broker is hard-coded to localhost. Deployed
# by celery-fleet with celery_app_module: tasks, it runs against the fleet's broker anyway
# (CELERY_BROKER_URL wins over the code's broker).
from celery import Celery

app = Celery('tasks', broker='pyamqp://guest@localhost//')


@app.task
def add(x, y):
    return x + y
