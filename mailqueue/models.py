"""The outbox: mail accepted while Redis was unreachable, waiting in the database for the relay."""

from __future__ import annotations

from django.db import models
from django.utils import timezone


class OutboxMessage(models.Model):
    """One encoded message that ``manage.py mailqueue relay`` will push to Redis."""

    envelope_id = models.CharField(max_length=32, unique=True)
    queue = models.CharField(max_length=200)
    #: The Dramatiq message id under which it is stored in Redis (part of ``data``).
    redis_id = models.CharField(max_length=36)
    #: The encoded Dramatiq message, exactly as it would have been pushed.
    data = models.BinaryField()
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    #: Why it is here: the Redis error at send time.
    reason = models.TextField(blank=True)

    class Meta:
        ordering = ("id",)
        verbose_name = "outbox message"

    def __str__(self) -> str:
        return f"{self.envelope_id} ({self.queue})"
