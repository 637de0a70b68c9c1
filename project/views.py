"""The demo page: send each kind of mail and watch the queues drain (to requests from this machine only)."""

from __future__ import annotations

import email
import email.policy
from pathlib import Path

from django.conf import settings
from django.contrib import messages
from django.core.mail import EmailMultiAlternatives, mailers, send_mail
from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest, JsonResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from mailqueue.monitoring import queue_depths

from .apps import DEMO_USER_EMAIL
from .safety import local_only

MAILBOX = settings.VAR_DIR / "mailbox"

#: Whom the notification form can write to: a choice among these, never an address or a name from the request,
#: so the demo cannot be made to send mail to strangers or to put someone's words in a display name.
DEMO_RECIPIENTS = {
    "ann": "Ann Example <ann@example.com>",
    "bob": "Bob Example <bob@example.com>",
}


def _recent_deliveries(limit: int = 15) -> list[dict[str, str]]:
    if not MAILBOX.is_dir():
        return []
    files = sorted(MAILBOX.glob("*.eml"), reverse=True)[:limit]
    deliveries = []
    for path in files:
        parsed = email.message_from_bytes(Path(path).read_bytes(), policy=email.policy.default)
        deliveries.append({"subject": str(parsed["Subject"]), "to": str(parsed["To"]), "date": str(parsed["Date"])})
    return deliveries


@local_only
def index(request: HttpRequest) -> HttpResponse:
    """The queue table and the mailbox: what was delivered to the local SMTP catcher, with its recipients."""
    return render(
        request,
        "demo/index.html",
        {
            "depths": queue_depths(),
            "deliveries": _recent_deliveries(),
            "delivered_total": len(list(MAILBOX.glob("*.eml"))) if MAILBOX.is_dir() else 0,
            "demo_email": DEMO_USER_EMAIL,
            "recipients": DEMO_RECIPIENTS,
        },
    )


@require_POST
@local_only
def send_newsletter(request: HttpRequest) -> HttpResponse:
    """A newsletter: many messages in one batch, tagged so the route sends them to bulk."""
    batch = []
    for number in range(1, 51):
        message = EmailMultiAlternatives(
            subject=f"Our November newsletter (#{number})",
            body="Plain-text edition of the newsletter.",
            to=[f"reader{number}@example.com"],
        )
        message.attach_alternative("<h1>Newsletter</h1><p>HTML edition.</p>", "text/html")
        message.tags = ["newsletter"]  # type: ignore[attr-defined]  # an anymail attribute
        batch.append(message)
    sent = mailers["bulk"].send_messages(batch)
    messages.success(request, f"Queued {sent} newsletter messages on the bulk queue in one round trip.")
    return redirect("index")


@require_POST
@local_only
def send_notification(request: HttpRequest) -> HttpResponse:
    """An ordinary notification through the "notifications" mailer (default queue), to one demo recipient."""
    recipient = DEMO_RECIPIENTS.get(request.POST.get("recipient", "ann"))
    if recipient is None:
        return HttpResponseBadRequest(
            f"recipient must be one of {', '.join(DEMO_RECIPIENTS)}", content_type="text/plain"
        )
    send_mail("You have a new comment", "Someone replied to your post.", None, [recipient], using="notifications")
    messages.success(request, f"Queued one notification to {recipient} on the default queue.")
    return redirect("index")


@local_only
def status_json(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"queues": [depth.as_dict() for depth in queue_depths()]})
