"""Test helpers for applications: capture what ``send_mail()`` queues, assert on it, deliver it, without Redis.

``capture_mail()`` puts mailqueue's own backend back on the queued ``MAILERS``
aliases (Django's test runner swapped every alias for locmem) and points
mailqueue at an in-memory Redis of its own (fakeredis, which runs Lua). So a
send in a test takes the production path end to end: validation, routing,
the envelope, and the ENQUEUE script itself, whose only twin is the Redis it
runs on. Nothing is written to a real Redis.

One module per job: ``values`` (what a test reads), ``capture`` (``CapturedMail``),
``criteria`` (matching and failure text), ``capture_settings`` and ``inmemory``
(the settings and the Redis a capture runs on), ``oncommit`` (pushes a test's
transaction never commits), ``standin`` (the providers during ``deliver()``),
``deliverer`` (where ``workers.testing`` plugs the pipeline in, since ``mailqueue``
never imports ``workers``) and ``django_internals`` (the one adapter to Django's
private test-runner state).
"""

from __future__ import annotations

from .capture import CapturedMail, capture_mail
from .deliverer import register_deliverer
from .standin import StandInProvider
from .values import DeliveredMail, ProviderCall, Providers, QueuedMail

__all__ = [
    "CapturedMail",
    "DeliveredMail",
    "ProviderCall",
    "Providers",
    "QueuedMail",
    "StandInProvider",
    "capture_mail",
    "register_deliverer",
]
