"""The one adapter to Django internals the test helpers lean on (written for Django 6.1).

Everything ``mailqueue.testing`` reads that Django does not document lives
here, so a Django upgrade has one module to read:

* ``django.test.utils._TestState.saved_data.mailers``: the ``MAILERS``
  ``setup_test_environment()`` (Django's runner, pytest-django) replaced with
  locmem, which the capture puts back for its queued aliases. Read on Django
  6.1.x only; on another version, or if 6.1's layout is not found, the capture
  reads ``MAILERS`` from the settings module itself (public: Django imported
  it from ``settings.SETTINGS_MODULE``) and says so once, as a warning.
* ``connections[alias].run_on_commit``: the callbacks waiting for the test's
  transaction to commit (``TestCase.captureOnCommitCallbacks`` reads the same
  list). Unchanged in shape since Django 4.2 and read defensively: a layout
  not recognised yields no callbacks (mail sent on commit in a ``TestCase``
  then never reaches a queue) rather than an error.
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import django
from django.conf import settings
from django.db import connections
from django.test import utils as test_utils

#: The Django releases (major, minor) whose private test-runner state this module was written against.
SUPPORTED_DJANGO = ((6, 1),)

#: Whether the fallback was announced in this process (it is said once, not at every capture).
_fallback_announced = False


def mailers_before_test_runner() -> Mapping[str, Any]:
    """``MAILERS`` as the project's settings wrote them, before a test environment swapped them for locmem.

    Empty when no test environment is set up (nothing was swapped) and, on the
    fallback, when the settings were not loaded from a module (``settings.configure()``):
    then pass ``capture_mail(mailers=...)``.
    """
    version = django.VERSION[:2]
    if version not in SUPPORTED_DJANGO:
        _announce_fallback(f"Django {django.get_version()} is installed")
        return mailers_of_settings_module()
    holder = getattr(test_utils, "_TestState", None)
    test_state = getattr(holder, "saved_data", None)
    if holder is not None and test_state is None:
        return {}  # setup_test_environment() has not run (or was torn down): MAILERS are as configured
    if hasattr(test_state, "email_backend"):
        return {}  # the project has no MAILERS: Django swapped EMAIL_BACKEND instead
    saved = getattr(test_state, "mailers", None)
    if not isinstance(saved, Mapping):
        _announce_fallback("this Django keeps no MAILERS there")
        return mailers_of_settings_module()
    return saved


def mailers_of_settings_module() -> Mapping[str, Any]:
    """The public fallback: ``MAILERS`` of the settings module Django loaded (``settings.SETTINGS_MODULE``).

    Python returns the module Django already imported, so these are the values
    settings.py computed at startup, before any test environment replaced them.
    """
    name = getattr(settings, "SETTINGS_MODULE", None)
    if not name:
        return {}
    mailers = getattr(importlib.import_module(name), "MAILERS", None)
    return mailers if isinstance(mailers, Mapping) else {}


def _announce_fallback(reason: str) -> None:
    global _fallback_announced
    if _fallback_announced:
        return
    _fallback_announced = True
    warnings.warn(
        "mailqueue.testing reads the MAILERS Django's test runner replaced from Django 6.1.x's private test "
        f"state (django.test.utils._TestState), but {reason}: capture_mail() reads MAILERS from the settings "
        "module instead (settings.SETTINGS_MODULE). Where they are not defined there, pass capture_mail(mailers=...).",
        RuntimeWarning,
        stacklevel=4,
    )


def on_commit_callbacks(using: str) -> list[Callable[[], Any]]:
    """The callbacks waiting for connection ``using``'s transaction to commit, oldest first."""
    # Django 4.2+ keeps (savepoint ids, callable, robust) tuples.
    entries = getattr(connections[using], "run_on_commit", ())
    return [entry[1] for entry in entries if isinstance(entry, tuple) and len(entry) >= 2 and callable(entry[1])]
