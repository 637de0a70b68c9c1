"""mailqueue's pushes waiting for a commit that a test's transaction never makes, run as if it had."""

from __future__ import annotations

from functools import partial
from typing import Any

from mailqueue.backend import EmailBackend
from mailqueue.conf import get_config

from .django_internals import on_commit_callbacks

#: What the queued backend registers with ``transaction.on_commit`` (bound to a backend, wrapped in a partial).
_PUSH = EmailBackend._push_after_commit


class PendingPushes:
    """The on-commit pushes of one capture: those registered before it started are never its business.

    A ``TestCase`` never commits, so mail a view sends in it would never reach
    a queue. Only pushes registered during the capture run, each once; one in
    a savepoint that was rolled back is gone (Django drops it), as in production.
    """

    def __init__(self) -> None:
        #: Callbacks seen so far, kept alive so their ids stay unique.
        self._seen: dict[int, Any] = {}

    def skip_waiting(self) -> None:
        """Mark every callback waiting now as seen: the capture starts after them."""
        for callback in on_commit_callbacks(get_config().on_commit_using):
            self._seen[id(callback)] = callback

    def commit(self) -> None:
        """Run mailqueue's pushes registered since the last look, under the settings active now."""
        for callback in on_commit_callbacks(get_config().on_commit_using):
            if id(callback) in self._seen:
                continue
            self._seen[id(callback)] = callback
            if isinstance(callback, partial) and getattr(callback.func, "__func__", None) is _PUSH:
                callback()
                # The batch is the partial's own list: emptied, a real commit later (TransactionTestCase)
                # pushes nothing a second time.
                callback.args[0].clear()
