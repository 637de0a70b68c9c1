"""Message.status_at and last_error_at (what makes the log writer's upsert order-independent); no index on the
message of an event or a recipient alone (composite indexes lead with it: fewer index writes per row); the
recipient domain index carries the message id (a domain search reads the index alone); on PostgreSQL, an index for
the admin's subject-prefix search."""

from django.apps.registry import Apps
from django.db import migrations, models
from django.db.backends.base.schema import BaseDatabaseSchemaEditor
from django.db.models.deletion import CASCADE

#: ``subject__istartswith`` is ``UPPER("subject"::text) LIKE UPPER('term%')``: text_pattern_ops serves the
#: prefix whatever the database's collation. PostgreSQL only; the other databases search without it.
SUBJECT_INDEX = "mq_message_subject_upper"


def backfill_status_at(apps: Apps, schema_editor: BaseDatabaseSchemaEditor) -> None:
    Message = apps.get_model("mailqueue", "Message")
    messages = Message.objects.using(schema_editor.connection.alias)
    messages.filter(status_at=None).update(status_at=models.F("updated_at"))
    messages.exclude(last_error="").filter(last_error_at=None).update(last_error_at=models.F("updated_at"))


def create_subject_index(apps: Apps, schema_editor: BaseDatabaseSchemaEditor) -> None:
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(
            f"CREATE INDEX IF NOT EXISTS {SUBJECT_INDEX} ON mailqueue_message (UPPER(subject) text_pattern_ops)"
        )


def drop_subject_index(apps: Apps, schema_editor: BaseDatabaseSchemaEditor) -> None:
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(f"DROP INDEX IF EXISTS {SUBJECT_INDEX}")


class Migration(migrations.Migration):
    dependencies = [
        ("mailqueue", "0002_message_log"),
    ]

    operations = [
        migrations.AddField(
            model_name="message",
            name="status_at",
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name="message",
            name="last_error_at",
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.RunPython(backfill_status_at, migrations.RunPython.noop),
        migrations.AlterField(
            model_name="messageevent",
            name="message",
            field=models.ForeignKey(
                db_constraint=False,
                db_index=False,
                on_delete=CASCADE,
                related_name="events",
                to="mailqueue.message",
            ),
        ),
        migrations.AlterField(
            model_name="messagerecipient",
            name="message",
            field=models.ForeignKey(
                db_constraint=False,
                db_index=False,
                on_delete=CASCADE,
                related_name="recipients",
                to="mailqueue.message",
            ),
        ),
        migrations.RemoveIndex(model_name="messagerecipient", name="mq_recipient_domain"),
        migrations.AddIndex(
            model_name="messagerecipient",
            index=models.Index(fields=["domain", "message"], name="mq_recipient_domain_message"),
        ),
        migrations.RunPython(create_subject_index, drop_subject_index),
    ]
