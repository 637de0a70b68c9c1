"""System checks (``mailqueue.E001`` …): misconfiguration reported at startup."""

from __future__ import annotations

from typing import Any

from django.core import checks

from .conf import find_problems


def check_configuration(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """Report every problem in MAILQUEUE and its MAILERS, each saying what to fix."""
    return [checks.Error(problem.msg, hint=problem.hint, id=problem.id) for problem in find_problems()]
