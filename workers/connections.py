"""Provider connections, one set per worker thread, reused across messages.

An SMTP session or an HTTP keep-alive session is opened once and kept until it
fails or the thread stops, instead of being reopened for every message.
"""

from __future__ import annotations

import logging
import threading

from django.core.mail import mailers
from django.core.mail.backends.base import BaseEmailBackend

logger = logging.getLogger(__name__)


class ProviderConnections(threading.local):
    """This thread's open provider backends, by MAILERS alias."""

    def __init__(self) -> None:
        self.open: dict[str, BaseEmailBackend] = {}

    def is_open(self, alias: str) -> bool:
        """True when this thread already holds a connection to ``alias`` (it may have gone stale)."""
        return alias in self.open

    def get(self, alias: str) -> BaseEmailBackend:
        """The open backend for ``alias``, opening it on first use."""
        backend = self.open.get(alias)
        if backend is None:
            backend = mailers[alias]
            backend.open()
            self.open[alias] = backend
        return backend

    def discard(self, alias: str) -> None:
        """Close and forget ``alias``'s backend (after an error, so the next try reconnects)."""
        backend = self.open.pop(alias, None)
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
