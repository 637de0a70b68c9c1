"""The operator's dashboard: a page that polls dashboard.json, and the dead letters it lists, requeues and purges.

Everything here is for users who pass ``mailqueue.access.may_monitor``. The page sends an anonymous visitor to
the admin's login; the JSON endpoints answer 401/403 with no data, and 503 when Redis cannot be read, so the
page can say its figures are stale instead of showing old ones as current. The JSON endpoints are
``login_not_required`` (Django's LoginRequiredMiddleware would turn their 401 into a redirect to an HTML page) and
the POSTs ``csrf_protect`` themselves, so neither rule depends on the project's MIDDLEWARE.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from functools import wraps
from typing import Any

from django.contrib.auth.decorators import login_not_required
from django.contrib.auth.views import redirect_to_login
from django.http import HttpRequest, HttpResponse, JsonResponse, QueryDict
from django.shortcuts import render
from django.urls import NoReverseMatch, reverse
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import csrf_protect, ensure_csrf_cookie
from django.views.decorators.http import require_GET, require_POST
from redis.exceptions import RedisError

from . import deadletters
from .access import may_monitor
from .client import access_problem
from .conf import get_config
from .deadletters import DeadLetter, DeadLetterFilter, Selection
from .models import Message
from .monitoring import overview, provider_aliases

logger = logging.getLogger("mailqueue.dashboard")

#: Dead letters the dashboard lists (newest first); the total matching is shown beside them.
DEAD_LETTERS_SHOWN = 100
#: The longest provider or error class name a filter accepts (longer ones match nothing anyway).
FILTER_TEXT_MAX = 200

View = Callable[..., HttpResponse]


def _refusal(request: HttpRequest) -> JsonResponse | None:
    """401 for nobody logged in, 403 for a user who may not monitor; None for one who may."""
    if not request.user.is_authenticated:
        return JsonResponse({"error": "Log in first."}, status=401)
    if not may_monitor(request.user):
        return JsonResponse({"error": "You may not see the mail queue."}, status=403)
    return None


def monitor_json(view: View) -> View:
    """A JSON endpoint for monitors only, answering 503 (no figures) when Redis cannot be read."""

    @wraps(view)
    def guarded(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        refused = _refusal(request)
        if refused is not None:
            return refused
        try:
            return view(request, *args, **kwargs)
        except RedisError as error:
            # Refused credentials or ACL are no outage: say what to fix, in the log and to the operator.
            problem = access_problem(error)
            logger.warning("dashboard: cannot read Redis: %s", problem or type(error).__name__)
            text = f"Redis refused: {problem}" if problem else "Redis is unreachable: the figures cannot be read."
            return JsonResponse({"error": text}, status=503)

    return never_cache(guarded)


@require_GET
@never_cache
@ensure_csrf_cookie
def dashboard(request: HttpRequest) -> HttpResponse:
    """The page: its tables are filled and refreshed by static/mailqueue/dashboard.js from the JSON views."""
    if not request.user.is_authenticated:
        return redirect_to_login(request.get_full_path(), _login_url())
    if not may_monitor(request.user):
        return render(request, "mailqueue/forbidden.html", status=403)
    config = get_config()
    return render(
        request,
        "mailqueue/dashboard.html",
        {
            "refresh": config.monitor.refresh,
            "queues": list(config.queues),
            "providers": provider_aliases(),
            "shown": DEAD_LETTERS_SHOWN,
            "can_requeue": _may_requeue(request),
            "can_purge": _may_purge(request),
        },
    )


def _login_url() -> str | None:
    """The admin's login, which staff already use; settings.LOGIN_URL (None) when the project has no admin."""
    try:
        return reverse("admin:login")
    except NoReverseMatch:
        return None


@login_not_required
@require_GET
@monitor_json
def dashboard_json(request: HttpRequest) -> HttpResponse:
    """``overview().as_dict()``: a fixed number of Redis round trips, whatever the queues hold."""
    return JsonResponse(overview().as_dict())


class BadFilter(ValueError):
    """A filter parameter the dashboard cannot use; its message says which and why."""


def _seconds(params: QueryDict, name: str, what: str) -> float | None:
    raw = params.get(name)
    if not raw:
        return None
    try:
        value = float(raw)
    except ValueError:
        raise BadFilter(f"{name}: {what}, a number") from None
    if not math.isfinite(value) or value < 0:
        raise BadFilter(f"{name}: {what}, a number 0 or more")
    return value


def parse_filter(params: QueryDict) -> DeadLetterFilter:
    """The dead-letter filter from ``queue``, ``provider``, ``error_type``, ``older_than`` (seconds) and
    ``failed_before`` (epoch seconds: the ``as_of`` of the listing an action confirms)."""
    queue = params.get("queue") or None
    if queue is not None and queue not in get_config().queues:
        raise BadFilter(f"queue: {queue!r} is not a configured queue")
    texts = {}
    for name in ("provider", "error_type"):
        value = (params.get(name) or "").strip() or None
        if value is not None and len(value) > FILTER_TEXT_MAX:
            raise BadFilter(f"{name}: longer than {FILTER_TEXT_MAX} characters")
        texts[name] = value
    return DeadLetterFilter(
        queue=queue,
        older_than=_seconds(params, "older_than", "seconds"),
        failed_before=_seconds(params, "failed_before", "epoch seconds"),
        **texts,
    )


def _filter_or_400(params: QueryDict) -> DeadLetterFilter | JsonResponse:
    try:
        return parse_filter(params)
    except BadFilter as error:
        return JsonResponse({"error": str(error)}, status=400)


def _may_requeue(request: HttpRequest) -> bool:
    # The admin's own rule for its requeue action, so the dashboard is no way around it.
    return bool(request.user.has_perm("mailqueue.change_message"))


def _may_purge(request: HttpRequest) -> bool:
    return bool(request.user.has_perm("mailqueue.delete_message"))


def _letter_json(letter: DeadLetter, now: float, log_urls: dict[str, str]) -> dict[str, Any]:
    """What the list shows of a letter: never its payload (bodies and recipients stay out of the page)."""
    return {
        "id": letter.id,
        "queue": letter.queue,
        "provider": letter.provider,
        "error_type": letter.error_type,
        "reason": letter.reason,
        "attempts": letter.attempts,
        "failed_at": letter.failed_at,
        "age": max(now - letter.failed_at, 0.0),
        "subject": letter.subject,
        "log_url": log_urls.get(letter.id),
    }


@login_not_required
@require_GET
@monitor_json
def dead_letters_json(request: HttpRequest) -> HttpResponse:
    """The newest DEAD_LETTERS_SHOWN letters the filter matches, the total it matches, and links to their log.

    With them, what an action on all of them confirms: ``as_of`` (the newest time of death matched, posted back
    as ``failed_before``) and ``digest`` (of every matched id), so the server acts on exactly these letters.
    """
    where = _filter_or_400(request.GET)
    if isinstance(where, JsonResponse):
        return where
    now = time.time()
    page = deadletters.newest_matching(where, limit=DEAD_LETTERS_SHOWN, now=now)
    log_urls: dict[str, str] = {}
    if page.letters and request.user.has_perm("mailqueue.view_message"):
        logged = Message.objects.filter(pk__in=[letter.id for letter in page.letters]).values_list("pk", flat=True)
        log_urls = {pk: reverse("admin:mailqueue_message_change", args=[pk]) for pk in logged}
    return JsonResponse(
        {
            "total": page.total,
            "as_of": page.as_of,
            "digest": page.digest,
            "limit": DEAD_LETTERS_SHOWN,
            "letters": [_letter_json(letter, now, log_urls) for letter in page.letters],
        }
    )


#: What a confirmation's digest looks like: a sha256 in hex.
DIGEST_LENGTH = 64


def _act_on_matching(request: HttpRequest, act: Callable[[Selection], dict[str, Any]]) -> HttpResponse:
    """Re-apply the posted filter; act only on exactly the letters the operator confirmed (count and digest).

    The filter comes back with ``failed_before``, the listing's ``as_of``: letters that died since are not part
    of it, so a steady trickle of new dead letters does not refuse every confirmation.
    """
    where = _filter_or_400(request.POST)
    if isinstance(where, JsonResponse):
        return where
    try:
        confirmed = int(request.POST.get("count", ""))
    except ValueError:
        return JsonResponse({"error": "count: the number of matching letters you confirmed"}, status=400)
    digest = request.POST.get("digest", "")
    if len(digest) != DIGEST_LENGTH:
        return JsonResponse({"error": "digest: that of the letters you confirmed (dead-letters.json)"}, status=400)
    selection = deadletters.select(where)
    if selection.count != confirmed or selection.digest != digest:
        # The set changed between the listing and the click: the operator confirmed other letters.
        why = (
            f"{selection.count} letters match now, not {confirmed}"
            if selection.count != confirmed
            else f"the {confirmed} letters that match now are not the ones listed"
        )
        return JsonResponse({"error": f"{why}: nothing done", "matching": selection.count}, status=409)
    return JsonResponse({"matching": selection.count, **act(selection)})


@login_not_required
@require_POST
@csrf_protect
@monitor_json
def requeue_matching(request: HttpRequest) -> HttpResponse:
    """Requeue every dead letter the posted filter matches (once the operator confirmed exactly which)."""
    if not _may_requeue(request):
        return JsonResponse({"error": "You may not requeue messages."}, status=403)

    def act(selection: Selection) -> dict[str, Any]:
        requeued, unreadable = deadletters.requeue_selected(selection)
        logger.info("dashboard: %s requeued %d dead letter(s)", request.user.get_username(), requeued)
        return {"requeued": requeued, "unreadable": [letter.id for letter in unreadable]}

    return _act_on_matching(request, act)


@login_not_required
@require_POST
@csrf_protect
@monitor_json
def purge_matching(request: HttpRequest) -> HttpResponse:
    """Delete every dead letter the posted filter matches (once the operator confirmed exactly which)."""
    if not _may_purge(request):
        return JsonResponse({"error": "You may not purge messages."}, status=403)

    def act(selection: Selection) -> dict[str, Any]:
        purged = deadletters.purge_selected(selection)
        logger.info("dashboard: %s purged %d dead letter(s)", request.user.get_username(), purged)
        return {"purged": purged}

    return _act_on_matching(request, act)


@login_not_required
@require_POST
@csrf_protect
@monitor_json
def requeue_one(request: HttpRequest, letter_id: str) -> HttpResponse:
    """Requeue one dead letter by its id."""
    if not _may_requeue(request):
        return JsonResponse({"error": "You may not requeue messages."}, status=403)
    letter = deadletters.find([letter_id]).get(letter_id)
    if letter is None:
        return JsonResponse({"error": "No such dead letter (requeued or purged already?)."}, status=404)
    requeued, unreadable = deadletters.requeue_readable([letter])
    if unreadable:
        return JsonResponse({"error": "This letter cannot be read; purge it instead."}, status=422)
    if not requeued:
        # Read, then taken by a concurrent request (a double click, a colleague) before this one could act.
        return JsonResponse({"error": "No such dead letter (requeued or purged already?)."}, status=404)
    logger.info("dashboard: %s requeued dead letter %s (%s)", request.user.get_username(), letter.id, letter.queue)
    return JsonResponse({"requeued": requeued})
