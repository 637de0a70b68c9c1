"""Read-only admin for the outbox and the message log: operators look (and requeue or purge), the writers write."""

from __future__ import annotations

import hashlib
import re
from typing import Any

from django.contrib import admin, messages
from django.contrib.admin.filters import SimpleListFilter
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.core.paginator import Paginator
from django.db import connections, transaction
from django.db.models import Q, QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import NoReverseMatch, reverse
from django.utils.functional import cached_property

from . import deadletters
from .access import may_monitor
from .conf import get_config
from .exceptions import EnvelopeError
from .models import Message, MessageEvent, MessageRecipient, OutboxMessage, Status

#: A filtered changelist counts at most this many rows: beyond it the page count is a floor, not a count.
COUNT_CAP = 10_000
_ENVELOPE_ID = re.compile(r"[0-9a-f]{32}")


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


class EstimatedCountPaginator(Paginator):  # type: ignore[type-arg]
    """A paginator that never counts a million rows: an estimate for the whole table, a capped count otherwise.

    On PostgreSQL the unfiltered table's size is the planner's estimate (``pg_class.reltuples``, kept
    current by autovacuum); a filtered or searched list, and every list on other databases, counts at
    most COUNT_CAP rows (a COUNT over a LIMIT subquery), so the last page of a bigger result is not linked.
    """

    cap = COUNT_CAP

    @cached_property
    def count(self) -> int:
        queryset = self.object_list
        if isinstance(queryset, QuerySet):
            estimate = _table_estimate(queryset)
            if estimate is not None and estimate >= self.cap:
                return estimate
            return queryset[: self.cap].count()
        return len(queryset)


def _table_estimate(queryset: QuerySet[Any]) -> int | None:
    """PostgreSQL's row estimate for the table behind an unfiltered ``queryset``; None when there is none."""
    connection = connections[queryset.db]
    if connection.vendor != "postgresql" or queryset.query.where:
        return None
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT reltuples::bigint FROM pg_class WHERE oid = %s::regclass", [queryset.model._meta.db_table]
        )
        row = cursor.fetchone()
    # -1: never vacuumed nor analyzed (a new table); count it then, it is small.
    return int(row[0]) if row and row[0] >= 0 else None


class _ConfiguredChoiceFilter(SimpleListFilter):
    """A filter whose choices come from the configuration, never from a SELECT DISTINCT over the log."""

    field: str

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        value = self.value()
        return queryset.filter(**{self.field: value}) if value else queryset


class QueueFilter(_ConfiguredChoiceFilter):
    title = "queue"
    parameter_name = field = "queue"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [(name, name) for name in get_config().queues]


class ProviderFilter(_ConfiguredChoiceFilter):
    title = "provider"
    parameter_name = field = "provider"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        config = get_config()
        aliases = dict.fromkeys(alias for queue in config.queues.values() for alias in queue.providers)
        aliases.update(dict.fromkeys(config.providers))
        return [(alias, alias) for alias in aliases]


def recipient_key(address: str) -> str:
    """What MessageRecipient.address holds for ``address``: lower-cased, or its SHA-256 with RECIPIENTS="hash"."""
    address = address.strip().lower()
    log = getattr(get_config(), "log", None)
    if getattr(log, "recipients", "store") == "hash":
        return hashlib.sha256(address.encode()).hexdigest()
    return address


def search_log(queryset: QuerySet[Message], term: str) -> QuerySet[Message]:
    """One search box, read by the shape of the term, each through an index.

    "@example.com": a recipient domain; "ann@example.com": a recipient address (exact); "<id@host>": an
    SMTP provider message id; 32 hex digits: an envelope id; anything else: a subject prefix or a provider
    message id (an ESP's). Every shape but the last reads one index.
    """
    term = term.strip()
    if not term:
        return queryset
    if term.startswith("<"):
        # An SMTP Message-ID (what SMTP providers report as the provider message id), brackets and all.
        return queryset.filter(provider_message_id__in=(term, term.strip("<>")))
    if term.startswith("@"):
        recipients = MessageRecipient.objects.filter(domain=term[1:].lower())
        return queryset.filter(pk__in=recipients.values("message_id"))
    if "@" in term:
        # One condition only: OR-ed with another column's, PostgreSQL scans the whole table instead.
        return queryset.filter(pk__in=MessageRecipient.objects.filter(address=recipient_key(term)).values("message_id"))
    if _ENVELOPE_ID.fullmatch(term.lower()):
        return queryset.filter(pk=term.lower())
    return queryset.filter(Q(subject__istartswith=term) | Q(provider_message_id=term))


class _LogInline(admin.TabularInline):  # type: ignore[type-arg]
    """Rows of a logged message, shown to whoever may see the message, changed by nobody."""

    extra = 0
    can_delete = False

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return request.user.has_perm("mailqueue.view_message")

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class MessageEventInline(_LogInline):
    """The timeline, oldest first."""

    model = MessageEvent
    fields = readonly_fields = ("at", "kind", "provider", "attempt", "detail")
    ordering = ("at", "id")
    verbose_name_plural = "timeline"


class MessageRecipientInline(_LogInline):
    model = MessageRecipient
    fields = readonly_fields = ("kind", "address", "domain")
    ordering = ("kind", "id")
    verbose_name_plural = "recipients"


@admin.register(Message)
class MessageAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    """The message log: every queued message and its timeline, searchable by recipient, fast at a million rows."""

    list_display = ("envelope_id", "status", "queue", "subject", "provider", "queued_at", "attempts")
    list_filter = ("status", QueueFilter, ProviderFilter, "queued_at")
    search_fields = ("subject",)  # only so the search box shows; get_search_results does the searching
    search_help_text = (
        "@domain: recipient domain · address: recipient · <message-id>: SMTP provider id · "
        "32 hex digits: envelope id · else: subject prefix or provider message id"
    )
    readonly_fields = [field.name for field in Message._meta.fields]
    inlines = (MessageEventInline, MessageRecipientInline)
    actions = ("requeue_dead", "purge")
    paginator = EstimatedCountPaginator
    show_full_result_count = False
    list_per_page = 100
    ordering = ("-queued_at",)

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> HttpResponse:
        return super().changelist_view(
            request, {**(extra_context or {}), "mailqueue_dashboard_url": dashboard_url(request)}
        )

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[Message], search_term: str
    ) -> tuple[QuerySet[Message], bool]:
        return search_log(queryset, search_term), False

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # the log writer owns the rows

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # deleting is the purge action, with its confirmation

    def has_requeue_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("mailqueue.change_message")

    def has_purge_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("mailqueue.delete_message")

    @admin.action(permissions=["requeue"], description="Requeue selected dead messages")
    def requeue_dead(self, request: HttpRequest, queryset: QuerySet[Message]) -> None:
        selected = list(queryset.values_list("envelope_id", "status"))
        dead = {envelope_id for envelope_id, status in selected if status == Status.DEAD}
        letters = deadletters.find(dead)
        try:
            requeued = deadletters.requeue(letters.values())
        except EnvelopeError as error:
            self.message_user(request, f"Nothing requeued: a dead letter cannot be read ({error}).", messages.ERROR)
            return
        if requeued:
            self.message_user(request, f"Requeued {requeued} message(s): {', '.join(sorted(letters))}.")
        gone = sorted(dead - set(letters))
        if gone:
            self.message_user(
                request,
                f"No dead letter any more (requeued or purged already) for: {', '.join(gone)}.",
                messages.WARNING,
            )
        skipped = len(selected) - len(dead)
        if skipped:
            self.message_user(request, f"Skipped {skipped} message(s) that are not dead.", messages.WARNING)

    @admin.action(permissions=["purge"], description="Purge selected messages (log rows and dead letters)")
    def purge(self, request: HttpRequest, queryset: QuerySet[Message]) -> HttpResponse | None:
        """Delete the selected messages from the log (row, timeline, recipients) and their dead letters.

        A message still queued or deferred stays in Redis and will be delivered: purge forgets, it does
        not cancel. Asks first.
        """
        envelope_ids = list(queryset.values_list("envelope_id", flat=True))
        if request.POST.get("confirmed") != "yes":
            return TemplateResponse(
                request,
                "admin/mailqueue/message/purge_confirmation.html",
                {
                    **self.admin_site.each_context(request),
                    "opts": self.model._meta,
                    "title": "Purge messages?",
                    "envelope_ids": envelope_ids,
                    "checkbox_name": ACTION_CHECKBOX_NAME,
                    "action": "purge",
                    "select_across": request.POST.get("select_across", "0"),
                    "pending": queryset.filter(status__in=(Status.QUEUED, Status.DEFERRED)).count(),
                },
            )
        letters = deadletters.find(set(envelope_ids))
        purged_letters = deadletters.purge(letters.values())
        rows = purge_log(envelope_ids)
        self.message_user(request, f"Purged {rows} message(s) from the log and {purged_letters} dead letter(s).")
        return None


def dashboard_url(request: HttpRequest) -> str | None:
    """The dashboard's URL for a user who may see it, None when not (or when the project does not mount it)."""
    if not may_monitor(request.user):
        return None
    try:
        return reverse("mailqueue:dashboard")
    except NoReverseMatch:
        return None


def purge_log(envelope_ids: list[str], batch: int = 500) -> int:
    """Delete these messages with their events and recipients, in short transactions (no long locks)."""
    deleted = 0
    for start in range(0, len(envelope_ids), batch):
        with transaction.atomic():
            # Django deletes the events and recipients first, with one statement each (no signals to send).
            _, per_model = Message.objects.filter(pk__in=envelope_ids[start : start + batch]).delete()
        deleted += per_model.get(Message._meta.label, 0)
    return deleted
