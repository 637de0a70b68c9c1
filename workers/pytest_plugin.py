"""pytest fixtures for applications that send mail through mailqueue.

Registered as the ``mailqueue`` ``pytest11`` entry point, so an installed
mailqueue brings them; or list it in a conftest: ``pytest_plugins = ["workers.pytest_plugin"]``.
It lives in ``workers`` because it imports ``workers.testing`` (which gives
``CapturedMail.deliver()`` the worker's pipeline), and ``mailqueue`` never imports ``workers``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import workers.testing  # noqa: F401  (registers CapturedMail.deliver())
from mailqueue.testing import CapturedMail, capture_mail


@pytest.fixture
def captured_mail() -> Iterator[CapturedMail]:
    """Everything the test queues, captured in an in-memory Redis: ``captured_mail.assert_queued(...)``."""
    with capture_mail() as captured:
        yield captured
