from django.db import models


class Note(models.Model):
    key = models.CharField(max_length=50, unique=True)
    value = models.IntegerField()
