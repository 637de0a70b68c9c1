"""The settings a capture runs under: mailqueue's backend back on the queued aliases, queues on an in-memory Redis."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.utils.module_loading import import_string

from mailqueue.backend import EmailBackend

from . import inmemory
from .django_internals import mailers_before_test_runner

LOCMEM = "django.core.mail.backends.locmem.EmailBackend"


@dataclass(frozen=True, kw_only=True)
class CaptureSettings:
    """``MAILERS`` and ``MAILQUEUE`` for a capture, read once when it starts."""

    #: The queued aliases the test runner swapped for locmem put back as settings.py wrote them; the rest as found.
    mailers: dict[str, Any]
    #: ``MAILQUEUE`` with every Redis connection going to the capture's in-memory server.
    mailqueue: dict[str, Any]
    #: What ``deliver(providers="configured")`` hands each alias to: settings.py's entry, from before the swap.
    providers: dict[str, Any]

    @classmethod
    def read(cls, server: Any, original: Mapping[str, Any] | None = None) -> CaptureSettings:
        """The current settings, with ``original`` (default: what the test runner replaced) put back.

        Only aliases the runner's locmem swap still covers are put back: a test's own
        ``MAILERS`` (``override_settings``, pytest-django's ``settings``) are what it asked for.
        """
        current: dict[str, Any] = dict(getattr(settings, "MAILERS", {}))
        if original is None:
            original = mailers_before_test_runner()
        swapped = {alias for alias, config in current.items() if config == {"BACKEND": LOCMEM} and alias in original}
        raw: dict[str, Any] = dict(getattr(settings, "MAILQUEUE", {}))
        raw["BROKER_OPTIONS"] = inmemory.broker_options(server, raw.get("BROKER_OPTIONS", {}))
        return cls(
            mailers={
                alias: original[alias] if alias in swapped and is_queued(original[alias]) else config
                for alias, config in current.items()
            },
            mailqueue=raw,
            providers={alias: original[alias] if alias in swapped else config for alias, config in current.items()},
        )


def is_queued(config: Any) -> bool:
    """True for a MAILERS entry whose backend is mailqueue's queued backend (or a subclass)."""
    path = config.get("BACKEND") if isinstance(config, Mapping) else None
    if not isinstance(path, str):
        return False
    try:
        backend = import_string(path)
    except ImportError:
        return False
    return isinstance(backend, type) and issubclass(backend, EmailBackend)
