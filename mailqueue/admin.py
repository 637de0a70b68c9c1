"""Read-only admin for the outbox: operators look, the relay acts."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest

from .conf import get_config
from .models import OutboxMessage


@admin.register(OutboxMessage)
class OutboxMessageAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    """Mail waiting for Redis; ``manage.py mailqueue relay`` moves it."""

    list_display = ("envelope_id", "queue", "created_at", "reason")
    list_filter = ("queue",)
    search_fields = ("envelope_id",)
    readonly_fields = ("envelope_id", "queue", "redis_id", "created_at", "reason")
    exclude = ("data",)

    def get_queryset(self, request: HttpRequest) -> QuerySet[OutboxMessage]:
        return super().get_queryset(request).using(get_config().outbox_database)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # a deleted row is a lost message
