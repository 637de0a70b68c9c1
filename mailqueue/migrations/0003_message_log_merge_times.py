"""The times the log writer's merge compares (status_at, queue_at, provider_at, last_error_at), and no index on
the message of an event or a recipient alone (composite indexes lead with it: fewer index writes per row).

Adding a nullable column is a catalogue change on PostgreSQL and SQLite, not a rewrite. No backfill: a row
without these times takes the next event's values, which is what the writer did before. Stop the log writers
while migrating (docs/operating.md, "Upgrading").
"""

from django.db import migrations, models
from django.db.models.deletion import CASCADE


class Migration(migrations.Migration):
    dependencies = [
        ("mailqueue", "0002_message_log"),
    ]

    operations = [
        *(
            migrations.AddField(model_name="message", name=name, field=models.DateTimeField(blank=True, null=True))
            for name in ("status_at", "queue_at", "provider_at", "last_error_at")
        ),
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
    ]
