"""Retention of the message log: ``manage.py mailqueue prune`` deletes old messages in short batches.

Each batch is its own transaction over at most ``batch`` message ids, so no lock
is held for long and the log writer keeps writing while a prune runs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from .models import Message, MessageEvent, MessageRecipient


@dataclass(kw_only=True, slots=True)
class Pruned:
    messages: int = 0
    recipients: int = 0
    events: int = 0
    batches: int = 0


def expired(cutoff: datetime) -> Q:
    """Messages whose last change is older than ``cutoff`` (their queue time, if nothing changed since)."""
    return Q(updated_at__lt=cutoff) | Q(updated_at__isnull=True, queued_at__lt=cutoff)


def prune(
    *,
    days: float,
    batch: int = 5000,
    using: str = "default",
    progress: Callable[[Pruned], None] | None = None,
) -> Pruned:
    """Delete messages older than ``days`` with their recipients and events, ``batch`` ids per transaction."""
    cutoff = timezone.now() - timedelta(days=days)
    pruned = Pruned()
    messages = Message.objects.using(using)
    while True:
        ids = list(messages.filter(expired(cutoff)).order_by().values_list("envelope_id", flat=True)[:batch])
        if not ids:
            return pruned
        with transaction.atomic(using=using):
            pruned.events += MessageEvent.objects.using(using).filter(message_id__in=ids).delete()[0]
            pruned.recipients += MessageRecipient.objects.using(using).filter(message_id__in=ids).delete()[0]
            # Their children are gone already: the cascade Django runs for these finds nothing more to delete.
            pruned.messages += messages.filter(envelope_id__in=ids).delete()[1].get(Message._meta.label, 0)
        pruned.batches += 1
        if progress is not None:
            progress(pruned)
