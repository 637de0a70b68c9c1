"""The one adapter to Django internals the test helpers lean on.

Everything ``mailqueue.testing`` reads that Django does not document lives
here, so a Django upgrade has one module to read:

* ``django.test.utils._TestState.saved_data.mailers``: the ``MAILERS``
  ``setup_test_environment()`` (Django's runner, pytest-django) replaced with
  locmem, which the capture puts back for its queued aliases. Read with
  guards: a Django that moves it makes the capture restore nothing.
* ``connections[alias].run_on_commit``: the callbacks waiting for the test's
  transaction to commit (``TestCase.captureOnCommitCallbacks`` reads the same
  list), read defensively: a layout not recognised yields no callbacks.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from django.db import connections
from django.test import utils as test_utils


def mailers_before_test_runner() -> Mapping[str, Any]:
    """``MAILERS`` as settings.py wrote them, when Django's test environment swapped every alias for locmem."""
    saved = getattr(getattr(getattr(test_utils, "_TestState", None), "saved_data", None), "mailers", None)
    return saved if isinstance(saved, Mapping) else {}


def on_commit_callbacks(using: str) -> list[Callable[[], Any]]:
    """The callbacks waiting for connection ``using``'s transaction to commit, oldest first."""
    # Django 4.2+ keeps (savepoint ids, callable, robust) tuples.
    entries = getattr(connections[using], "run_on_commit", ())
    return [entry[1] for entry in entries if isinstance(entry, tuple) and len(entry) >= 2 and callable(entry[1])]
