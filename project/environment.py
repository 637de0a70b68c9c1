"""How project/settings.py resolves the values whose source is not just one environment variable."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

#: Where ``make run`` keeps the Redis URL it gives its processes while it runs (in the var/ directory).
REDIS_URL_FILE = "redis-url"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


def redis_url(environ: Mapping[str, str], var_dir: Path) -> str:
    """``REDIS_URL``; else the URL of the running ``make run`` (var/redis-url); else the local default.

    ``make run`` starts a private Redis when ``REDIS_URL`` is unset; the file lets ``manage.py mailqueue status``,
    run in a second terminal without ``REDIS_URL``, read that same Redis rather than another one on 6379.
    """
    if environ.get("REDIS_URL"):
        return environ["REDIS_URL"]
    try:
        written = (var_dir / REDIS_URL_FILE).read_text().strip()
    except FileNotFoundError:
        return DEFAULT_REDIS_URL
    return written or DEFAULT_REDIS_URL


def unset(environ: Mapping[str, str], names: tuple[str, ...]) -> list[str]:
    """Which of ``names`` are unset or empty (the settings then use a demo default)."""
    return [name for name in names if not environ.get(name)]
