from celery import shared_task

from notes.models import Note


@shared_task
def note_value(key):
    """Read a row through the ORM: proves Django was set up in the worker."""
    return Note.objects.get(key=key).value


@shared_task
def note_count():
    return Note.objects.count()
