"""Who may see the operator's view (the dashboard, its JSON, /metrics with a session)."""

from __future__ import annotations

from typing import Any

from .conf import get_config
from .settings_values import MONITOR_FLAGS


def may_monitor(user: Any) -> bool:
    """Whether ``user`` passes MAILQUEUE["MONITOR"]["PERMISSION"] (``is_staff`` unless configured).

    An anonymous or inactive user never does; a permission ("app_label.codename") is checked with
    ``has_perm``, which a superuser always passes.
    """
    if user is None or not user.is_authenticated or not user.is_active:
        return False
    permission = get_config().monitor.permission
    if permission in MONITOR_FLAGS:
        return bool(getattr(user, permission, False))
    return bool(user.has_perm(permission))
