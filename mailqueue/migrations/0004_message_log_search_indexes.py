"""Indexes for the admin's searches: the recipient domain index with the message id (a domain search reads the
index alone), and on PostgreSQL ``UPPER(subject) text_pattern_ops`` for the subject-prefix search.

Not atomic, so that on PostgreSQL every index is built ``CONCURRENTLY``: a large log stays readable and writable
while they build (a plain CREATE INDEX would block the writers for its whole duration).
"""

from django.apps.registry import Apps
from django.db import migrations, models
from django.db.backends.base.schema import BaseDatabaseSchemaEditor

#: ``subject__istartswith`` is ``UPPER("subject"::text) LIKE UPPER('term%')``: text_pattern_ops serves the
#: prefix whatever the database's collation. PostgreSQL only; the other databases search without it.
SUBJECT_INDEX = "mq_message_subject_upper"
OLD_DOMAIN = models.Index(fields=["domain"], name="mq_recipient_domain")
NEW_DOMAIN = models.Index(fields=["domain", "message"], name="mq_recipient_domain_message")
#: The columns of those fields.
COLUMNS = {"domain": "domain", "message": "message_id"}


def _postgres(schema_editor: BaseDatabaseSchemaEditor) -> bool:
    return schema_editor.connection.vendor == "postgresql"


def _swap(apps: Apps, schema_editor: BaseDatabaseSchemaEditor, add: models.Index, drop: models.Index) -> None:
    recipient = apps.get_model("mailqueue", "MessageRecipient")
    if _postgres(schema_editor):
        table = recipient._meta.db_table
        columns = ", ".join(COLUMNS[name] for name in add.fields)
        schema_editor.execute(f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {add.name} ON {table} ({columns})")
        schema_editor.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {drop.name}")
    else:
        schema_editor.add_index(recipient, add)
        schema_editor.remove_index(recipient, drop)


def extend_domain_index(apps: Apps, schema_editor: BaseDatabaseSchemaEditor) -> None:
    _swap(apps, schema_editor, NEW_DOMAIN, OLD_DOMAIN)


def restore_domain_index(apps: Apps, schema_editor: BaseDatabaseSchemaEditor) -> None:
    _swap(apps, schema_editor, OLD_DOMAIN, NEW_DOMAIN)


def create_subject_index(apps: Apps, schema_editor: BaseDatabaseSchemaEditor) -> None:
    if _postgres(schema_editor):
        schema_editor.execute(
            f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {SUBJECT_INDEX} "
            "ON mailqueue_message (UPPER(subject) text_pattern_ops)"
        )


def drop_subject_index(apps: Apps, schema_editor: BaseDatabaseSchemaEditor) -> None:
    if _postgres(schema_editor):
        schema_editor.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {SUBJECT_INDEX}")


class Migration(migrations.Migration):
    atomic = False

    dependencies = [
        ("mailqueue", "0003_message_log_merge_times"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.RemoveIndex(model_name="messagerecipient", name=OLD_DOMAIN.name),
                migrations.AddIndex(model_name="messagerecipient", index=NEW_DOMAIN),
            ],
            database_operations=[migrations.RunPython(extend_domain_index, restore_domain_index)],
        ),
        migrations.RunPython(create_subject_index, drop_subject_index),
    ]
