"""Which queued messages an assertion means, and the failure text that lists what was queued instead."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from email.utils import parseaddr
from typing import Any

from .values import QueuedMail


@dataclass(frozen=True, kw_only=True)
class Criteria:
    """What ``filter()`` and the assertions match on; every criterion given must hold.

    ``to`` is one address of the To header; ``recipient`` one of To, Cc or Bcc
    (compared as addresses: ``"Ann <ANN@example.com>"`` matches
    ``ann@example.com``); ``where`` any predicate on a ``QueuedMail``.
    """

    queue: str | None = None
    mailer: str | None = None
    to: str | None = None
    recipient: str | None = None
    subject: str | None = None
    from_email: str | None = None
    where: Callable[[QueuedMail], bool] | None = None

    def match(self, queued: QueuedMail) -> bool:
        return (
            (self.queue is None or queued.queue == self.queue)
            and (self.mailer is None or queued.mailer == self.mailer)
            and (self.to is None or _matches(self.to, queued.to))
            and (self.recipient is None or _matches(self.recipient, queued.recipients))
            and (self.subject is None or queued.subject == self.subject)
            and (self.from_email is None or _matches(self.from_email, [queued.from_email]))
            and (self.where is None or self.where(queued))
        )


def _as_address(value: str) -> str:
    return parseaddr(value)[1].lower() or value.lower()


def _matches(address: str, addresses: Sequence[str]) -> bool:
    wanted = _as_address(address)
    return any(address == given or _as_address(given) == wanted for given in addresses)


def describe(criteria: Mapping[str, Any]) -> str:
    """The criteria as the test wrote them, for a failure message."""
    return ", ".join(f"{name}={value!r}" for name, value in criteria.items()) or "anything"


def listing(queued: Sequence[QueuedMail]) -> str:
    """What was queued, one numbered line each: the part of a failure message that shows what to fix."""
    if not queued:
        return "Nothing was queued."
    lines = [f"Queued ({len(queued)}):"]
    lines += [f"  {number}. {item.describe()}" for number, item in enumerate(queued, start=1)]
    return "\n".join(lines)
