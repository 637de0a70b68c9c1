"""mailqueue's settings, as the rest of the code reads them: once, validated, reset on change.

``get_config()`` hands out the ``MailQueueConfig`` that ``mailqueue.config_reader`` read from
MAILQUEUE and MAILERS, and refuses one with problems. The value types are defined in
``mailqueue.settings_values`` and importable from here, the settings API every module uses.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from typing import Any

from django.conf import settings
from django.core.signals import setting_changed
from django.dispatch import receiver

from .config_reader import read_config
from .exceptions import MailQueueImproperlyConfigured
from .settings_values import (
    MailQueueConfig,
    PoolConfig,
    ProviderConfig,
    QueueConfig,
    Quota,
    RateLimit,
    Route,
    Strategy,
)

__all__ = [
    "HOT_DJANGO_SETTINGS",
    "MailQueueConfig",
    "PoolConfig",
    "ProviderConfig",
    "QueueConfig",
    "Quota",
    "RateLimit",
    "Route",
    "Strategy",
    "django_setting",
    "get_config",
    "on_config_reset",
]


@cache
def get_config() -> MailQueueConfig:
    """The validated configuration, read once per settings change."""
    config, problems = read_config()
    if problems:
        first = problems[0]
        more = f" (and {len(problems) - 1} more; run manage.py check)" if len(problems) > 1 else ""
        raise MailQueueImproperlyConfigured(f"{first.id}: {first.msg}{more}")
    return config


#: Django settings the request path reads for every message (through the lazy settings object
#: each read costs more than the check it serves).
HOT_DJANGO_SETTINGS = frozenset({"DEFAULT_CHARSET", "EMAIL_USE_LOCALTIME"})


@cache
def django_setting(name: str) -> Any:
    """``settings.<name>`` for one of HOT_DJANGO_SETTINGS, read once per settings change."""
    return getattr(settings, name)


@receiver(setting_changed)
def _reset_config(*, setting: str, **kwargs: Any) -> None:
    if setting in HOT_DJANGO_SETTINGS:
        django_setting.cache_clear()
    if setting in {"MAILQUEUE", "MAILERS", "DATABASES"}:
        get_config.cache_clear()
        for reset in _RESET_HOOKS:
            reset()


_RESET_HOOKS: list[Callable[[], None]] = []


def on_config_reset(function: Callable[[], None]) -> Callable[[], None]:
    """Register a cache to clear whenever mailqueue's settings change (tests)."""
    _RESET_HOOKS.append(function)
    return function
