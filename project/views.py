"""The demo page: send each kind of mail and watch the queues drain (to requests from this machine only)."""

from __future__ import annotations

from django.contrib import messages
from django.core.mail import EmailMultiAlternatives, mailers, send_mail
from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest, JsonResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from mailqueue.models import Message
from mailqueue.monitoring import queue_depths

from .apps import DEMO_USER_EMAIL
from .safety import local_only

#: Whom the notification form can write to: a choice among these, never an address or a name from the request,
#: so the demo cannot be made to send mail to strangers or to put someone's words in a display name.
DEMO_RECIPIENTS = {
    "ann": "Ann Example <ann@example.com>",
    "bob": "Bob Example <bob@example.com>",
}


#: How many of the latest logged messages the demo page lists (the admin has them all).
RECENT = 15


@local_only
def index(request: HttpRequest) -> HttpResponse:
    """The queue table and the last messages from the message log, with where each one is."""
    return render(
        request,
        "demo/index.html",
        {
            "depths": queue_depths(),
            "recent": Message.objects.order_by("-queued_at")[:RECENT],
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
