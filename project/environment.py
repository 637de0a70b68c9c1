"""How project/settings.py resolves the values whose source is not just one environment variable."""

from __future__ import annotations

from collections.abc import Mapping


def unset(environ: Mapping[str, str], names: tuple[str, ...]) -> list[str]:
    """Which of ``names`` are unset or empty (the settings then use a demo default)."""
    return [name for name in names if not environ.get(name)]
