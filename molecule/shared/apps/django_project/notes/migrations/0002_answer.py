from django.db import migrations


def add_answer(apps, schema_editor):
    apps.get_model("notes", "Note").objects.create(key="answer", value=42)


class Migration(migrations.Migration):
    dependencies = [("notes", "0001_initial")]

    operations = [migrations.RunPython(add_answer, migrations.RunPython.noop)]
