"""What keeps the demo safe by default: local-only pages, debug pages without credentials, a startup warning.

The demo is meant for 127.0.0.1. These guards make the usual ways it leaks when exposed (a queue table and a
mailbox open to anyone, a Redis password on a debug page, a secret key everyone knows) fail closed.
"""

from __future__ import annotations

import ipaddress
import logging
import re
from collections.abc import Callable, Sequence
from functools import wraps
from typing import Any

from django.http import HttpRequest, HttpResponse, HttpResponseForbidden
from django.views.debug import SafeExceptionReporterFilter

logger = logging.getLogger("project")

#: The userinfo of a URL (``redis://user:password@host``), up to the last ``@`` before the path, so a password
#: with an unencoded ``@`` is hidden whole.
URL_USERINFO = re.compile(r"(?<=://)[^/\s]*@")
MASK = "********@"


def is_local(request: HttpRequest) -> bool:
    """Whether the request came from this machine (loopback REMOTE_ADDR, IPv4-mapped IPv6 included)."""
    try:
        address = ipaddress.ip_address(request.META.get("REMOTE_ADDR", ""))
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def local_only(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """Answer 403 to any request that does not come from this machine: queue depths and the mailbox stay local."""

    @wraps(view)
    def guarded(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if not is_local(request):
            return HttpResponseForbidden(
                "The mailqueue demo answers this page only to requests from this machine (127.0.0.1 or ::1).",
                content_type="text/plain",
            )
        return view(request, *args, **kwargs)

    return guarded


def mask_credentials(text: str) -> str:
    """``redis://:secret@host/0`` -> ``redis://********@host/0``; text without a URL is returned as it is."""
    return URL_USERINFO.sub(MASK, text)


class _MaskedRepr:
    """Stands in for a frame variable whose repr carries a URL with credentials."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text


class CredentialFilter(SafeExceptionReporterFilter):
    """Django's filter, plus URLs with credentials masked wherever a debug page or an error report shows text.

    Django hides settings whose *name* looks secret (``PASSWORD``, ``TOKEN``...), but a Redis password travels
    inside ``MAILQUEUE["BROKER_URL"]`` and the ``REDIS_URL`` environment variable (which runserver copies into
    ``request.META``), and frame variables are shown unfiltered while ``DEBUG`` is on.
    """

    def cleanse_setting(self, key: Any, value: Any) -> Any:
        if isinstance(value, str):
            value = mask_credentials(value)
        return super().cleanse_setting(key, value)

    def get_traceback_frame_variables(self, request: HttpRequest | None, tb_frame: Any) -> Any:
        cleansed = []
        for name, value in super().get_traceback_frame_variables(request, tb_frame):
            if isinstance(value, str | dict | list | tuple):
                cleansed.append((name, self.cleanse_setting(name, value)))
                continue
            try:
                text = repr(value)
            except Exception:  # noqa: BLE001  (Django shows such a variable as an error; so do we)
                cleansed.append((name, value))
                continue
            masked = mask_credentials(text)
            cleansed.append((name, value if masked == text else _MaskedRepr(masked)))
        return cleansed


def warn_about_defaults(defaulted: Sequence[str]) -> None:
    """Log once, loudly, which security settings fell back to their demo defaults (called by project.wsgi)."""
    if not defaulted:
        return
    consequences = {
        "DJANGO_SECRET_KEY": "SECRET_KEY is a random key of this process: sessions and password-reset links "
        "stop working when it restarts",
        "DJANGO_DEBUG": "DEBUG is off (set DJANGO_DEBUG=1 for Django's debug pages, on this machine only)",
    }
    lines = [f"  {name} is unset: {consequences.get(name, 'using the demo default')}" for name in defaulted]
    logger.warning(
        "\n%s\n  mailqueue demo: security settings not taken from the environment\n%s\n"
        "  This is fine for a demo on 127.0.0.1; set them before the site is reachable from anywhere else.\n%s",
        "!" * 100,
        "\n".join(lines),
        "!" * 100,
    )
