"""Provider connections, one set per worker thread, reused across messages.

An SMTP session or an HTTP keep-alive session is opened once and kept until it
fails or the thread stops, instead of being reopened for every message.

Servers close idle sessions (Postfix after 300 s, often with a 421 first), so
an SMTP session left unused for a while gets a NOOP before it carries a
message, and is reopened if that fails. Checking *before* sending, rather
than resending after a failure, never risks a second copy of a message the
server may already have accepted. HTTP backends need no such check: their
connection pool (urllib3) tests a pooled connection before reusing it.
"""

from __future__ import annotations

import logging
import smtplib
import threading
import time

from django.core.mail import mailers
from django.core.mail.backends.base import BaseEmailBackend

logger = logging.getLogger(__name__)

#: A kept-open connection unused for longer than this (seconds) is checked before use.
IDLE_CHECK_SECONDS = 1.0


def is_alive(backend: BaseEmailBackend) -> bool:
    """NOOP an open SMTP session; backends without one are assumed able to reconnect themselves."""
    session = getattr(backend, "connection", None)
    if not isinstance(session, smtplib.SMTP):
        return True
    try:
        code, _ = session.noop()
    except (smtplib.SMTPException, OSError):
        return False
    return code == 250


class ProviderConnections(threading.local):
    """This thread's open provider backends, by MAILERS alias."""

    def __init__(self) -> None:
        self.open: dict[str, BaseEmailBackend] = {}
        self.last_used: dict[str, float] = {}

    def get(self, alias: str) -> BaseEmailBackend:
        """The open backend for ``alias``: reused, checked after idling, or opened now."""
        now = time.monotonic()
        backend = self.open.get(alias)
        if backend is not None and now - self.last_used[alias] > IDLE_CHECK_SECONDS and not is_alive(backend):
            logger.info("provider %s: idle connection was closed by the server; reconnecting", alias)
            self.discard(alias)
            backend = None
        if backend is None:
            backend = mailers[alias]
            backend.open()
            self.open[alias] = backend
        self.last_used[alias] = now
        return backend

    def discard(self, alias: str) -> None:
        """Close and forget ``alias``'s backend (after an error, so the next try reconnects)."""
        backend = self.open.pop(alias, None)
        self.last_used.pop(alias, None)
        if backend is not None:
            try:
                backend.close()
            except Exception:
                logger.debug("closing provider %r failed", alias, exc_info=True)

    def close_all(self) -> None:
        """Close every connection this thread opened."""
        for alias in list(self.open):
            self.discard(alias)


#: Shared by the delivery pipeline and the middleware that closes connections.
connections = ProviderConnections()
