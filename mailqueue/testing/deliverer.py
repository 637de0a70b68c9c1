"""Where ``deliver()`` finds the workers' delivery pipeline: ``workers.testing`` registers it when imported.

``mailqueue`` never imports ``workers``; the pytest plugin ``workers.pytest_plugin``
imports ``workers.testing``, and a Django ``TestCase`` module imports it itself.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from mailqueue.exceptions import MailQueueImproperlyConfigured

from .values import Providers

if TYPE_CHECKING:
    from .capture import CapturedMail

#: Runs the real delivery pipeline over a capture: (capture, providers, timeout).
Deliverer = Callable[["CapturedMail", Providers, float], None]

_deliverer: Deliverer | None = None


def register_deliverer(deliverer: Deliverer) -> None:
    """Called by ``workers.testing`` at import: the worker side provides ``deliver()``."""
    global _deliverer
    _deliverer = deliverer


def registered_deliverer() -> Deliverer:
    """The deliverer ``workers.testing`` registered; a configuration error saying what to import when none is."""
    if _deliverer is None:
        raise MailQueueImproperlyConfigured(
            "deliver() runs the workers' delivery pipeline, and mailqueue never imports workers: "
            "import workers.testing once in your tests (the pytest plugin workers.pytest_plugin does), "
            "e.g. 'import workers.testing  # noqa: F401' at the top of the test module."
        )
    return _deliverer
