"""System checks (``mailqueue.E001`` …): misconfiguration reported at startup."""

from __future__ import annotations

from typing import Any

from django.core import checks
from django.core.mail import mailers

from .conf import get_config
from .config_reader import find_problems


def _provider_errors() -> list[checks.CheckMessage]:
    """Build each provider's backend once, as a worker will: missing API keys show up now."""
    aliases = {alias for queue in get_config().queues.values() for alias in queue.providers}
    errors: list[checks.CheckMessage] = []
    for alias in sorted(aliases):
        try:
            backend = mailers[alias]
        except Exception as error:  # noqa: BLE001  (any failure to build the backend is the finding)
            errors.append(
                checks.Error(
                    f"Provider MAILERS[{alias!r}] cannot be created: {type(error).__name__}: {error}",
                    hint="Fix its BACKEND or OPTIONS (API keys, host, ...); workers would fail over or retry.",
                    id="mailqueue.E012",
                )
            )
            continue
        if hasattr(backend, "timeout") and backend.timeout is None:
            errors.append(
                checks.Warning(
                    f"Provider MAILERS[{alias!r}] has no timeout: a server that stops answering would hold "
                    "a worker thread forever (a queue's time_limit cannot interrupt a blocked socket).",
                    hint=f'Set MAILERS[{alias!r}]["OPTIONS"]["timeout"] (seconds), e.g. 10.',
                    id="mailqueue.W001",
                )
            )
    return errors


def check_configuration(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """Report every problem in MAILQUEUE and its MAILERS, each saying what to fix."""
    problems = find_problems()
    if problems:
        return [checks.Error(problem.msg, hint=problem.hint, id=problem.id) for problem in problems]
    return _provider_errors()
