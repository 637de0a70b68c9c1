"""Choosing a message's queue.

Precedence, most specific first:

1. a per-message override: ``message.queue = "bulk"``;
2. the first matching rule in ``MAILQUEUE["ROUTES"]`` (anymail tag, header,
   or a callable that returns a queue name or None);
3. the queued mailer's ``OPTIONS["queue"]``;
4. ``MAILQUEUE["DEFAULT_QUEUE"]``.
"""

from __future__ import annotations

from django.core.mail import EmailMessage
from django.utils.encoding import force_str

from .conf import MailQueueConfig, Route
from .exceptions import MailQueueImproperlyConfigured, UnknownQueue

#: The attribute a caller sets on a message to pick its queue.
QUEUE_ATTRIBUTE = "queue"


def _matches(route: Route, message: EmailMessage) -> bool:
    if route.tag is not None:
        tags = getattr(message, "tags", None)
        return isinstance(tags, (list, tuple, set, frozenset)) and route.tag in tags
    if route.header is not None:
        wanted = route.header.lower()
        for name, value in message.extra_headers.items():
            if name.lower() == wanted:
                return route.value is None or force_str(value) == route.value
    return False


def _known(queue: object, config: MailQueueConfig) -> str:
    if not isinstance(queue, str) or queue not in config.queues:
        raise UnknownQueue(
            f"message.{QUEUE_ATTRIBUTE} chose queue {queue!r}, which is not configured; "
            f"queues: {', '.join(config.queues)}."
        )
    return queue


def choose_queue(message: EmailMessage, mailer_queue: str | None, config: MailQueueConfig) -> str:
    """Return the queue ``message`` goes to, or raise UnknownQueue."""
    override = getattr(message, QUEUE_ATTRIBUTE, None)
    if override is not None:
        return _known(override, config)
    for route in config.routes:
        if route.function is not None:
            queue = route.function(message)
            if queue is not None:
                if queue not in config.queues:
                    # The routing code is wrong, not the message: a configuration error.
                    raise MailQueueImproperlyConfigured(
                        f"routing callable {route.function.__qualname__} chose queue {queue!r}, which is not "
                        f"configured; queues: {', '.join(config.queues)}."
                    )
                return str(queue)
        elif _matches(route, message):
            assert route.queue is not None
            return route.queue
    return mailer_queue or config.default_queue
