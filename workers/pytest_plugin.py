"""pytest fixtures for applications that send mail through mailqueue.

Registered as the ``mailqueue`` ``pytest11`` entry point, so an installed
``mailqueue[testing]`` brings them; or name it in a conftest:
``pytest_plugins = ["workers.pytest_plugin"]``. It lives in ``workers``
because it imports ``workers.testing``, which gives ``CapturedMail.deliver()``
the workers' pipeline, and ``mailqueue`` never imports ``workers``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from mailqueue.testing import CapturedMail


@pytest.fixture
def captured_mail() -> Iterator[CapturedMail]:
    """Everything the test queues, in an in-memory Redis: ``captured_mail.assert_queued(to=...)``, ``.deliver()``."""
    # Imported here, not at the top: pytest loads entry-point plugins before pytest-django sets Django up,
    # and these modules import mailqueue's models.
    import workers.testing  # noqa: F401, PLC0415  (registers CapturedMail.deliver())
    from mailqueue.testing import capture_mail  # noqa: PLC0415

    with capture_mail() as captured:
        yield captured
