"""Worker-wide concerns as Dramatiq middleware."""

from __future__ import annotations

from typing import Any

from django.db import close_old_connections
from dramatiq.middleware import Middleware

from .connections import connections


class CloseProviderConnections(Middleware):
    """Closes a worker thread's provider connections when the thread stops."""

    def before_worker_thread_shutdown(self, broker: Any, thread: Any) -> None:
        connections.close_all()


class CloseDatabaseConnections(Middleware):
    """Drops stale Django database connections around each message, as a request would."""

    def before_process_message(self, broker: Any, message: Any) -> None:
        close_old_connections()

    def after_process_message(self, broker: Any, message: Any, *, result: Any = None, exception: Any = None) -> None:
        close_old_connections()

    def before_worker_thread_shutdown(self, broker: Any, thread: Any) -> None:
        close_old_connections()
