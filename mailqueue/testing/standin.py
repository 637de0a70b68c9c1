"""Providers during ``deliver()``: a stand-in that fails as ``fail_provider`` says and records each hand-off."""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from django.core.mail import EmailMessage
from django.core.mail.backends.base import BaseEmailBackend
from django.utils.module_loading import import_string

from .capture_settings import LOCMEM
from .values import ProviderCall


@dataclass
class _Failure:
    remaining: int | None
    error: BaseException | type[BaseException]


class HandOffs:
    """A capture's providers: the failures ``fail_provider`` scheduled, and every hand-off, failed ones included."""

    def __init__(self) -> None:
        #: Every hand-off to a provider, in order.
        self.calls: list[ProviderCall] = []
        self._failures: dict[str, _Failure] = {}
        #: The envelope being attempted now (names the provider calls it causes).
        self._envelope: str | None = None

    def fail(self, alias: str, times: int | None, error: BaseException | type[BaseException]) -> None:
        """Make ``alias`` raise ``error`` on its next ``times`` sends (every send: None)."""
        self._failures[alias] = _Failure(remaining=times, error=error)

    @contextmanager
    def attempting(self, envelope_id: str) -> Iterator[None]:
        """The provider calls made while the block runs are this envelope's."""
        self._envelope = envelope_id
        try:
            yield
        finally:
            self._envelope = None

    def hand_off(self, alias: str, message: EmailMessage, delegate: BaseEmailBackend) -> None:
        """Fail as scheduled, else hand the message on; record it as the provider received it either way."""
        received = copy.deepcopy(message)
        failure = self._failures.get(alias)
        if failure is not None and failure.remaining != 0:
            if failure.remaining is not None:
                failure.remaining -= 1
            error = failure.error() if isinstance(failure.error, type) else failure.error
            self.calls.append(ProviderCall(provider=alias, envelope_id=self._envelope, message=received, error=error))
            raise error
        delegate.send_messages([message])
        self.calls.append(ProviderCall(provider=alias, envelope_id=self._envelope, message=received, error=None))

    def received(self, envelope_id: str, provider: str) -> EmailMessage | None:
        """The message as ``provider`` last took it for ``envelope_id``; None if it never took it."""
        return next(
            (
                call.message
                for call in reversed(self.calls)
                if call.envelope_id == envelope_id and call.provider == provider and call.error is None
            ),
            None,
        )


class StandInProvider(BaseEmailBackend):
    """A provider alias during ``deliver()``: fails as ``fail_provider`` says, else hands on and records.

    Hands the message to Django's locmem backend under the provider's alias (so
    ``mail.outbox`` holds a copy whose ``sent_using`` names the provider), or to
    the backend the alias is configured with.
    """

    def __init__(
        self,
        *,
        hand_offs: HandOffs,
        delegate: Mapping[str, Any] | None = None,
        alias: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(alias=alias, **kwargs)
        #: The provider alias this stands in for.
        self.provider = alias or ""
        self.hand_offs = hand_offs
        self.delegate_config = dict(delegate or {"BACKEND": LOCMEM})
        self.delegate: BaseEmailBackend | None = None

    def open(self) -> bool | None:
        if self.delegate is None:
            backend_class = import_string(self.delegate_config.get("BACKEND", LOCMEM))
            self.delegate = backend_class(alias=self.provider, **self.delegate_config.get("OPTIONS", {}))
        return self.delegate.open()

    def close(self) -> None:
        if self.delegate is not None:
            self.delegate.close()

    def send_messages(self, email_messages: Sequence[EmailMessage]) -> int:
        if self.delegate is None:
            self.open()
        assert self.delegate is not None
        for message in email_messages:
            self.hand_offs.hand_off(self.provider, message, self.delegate)
        return len(email_messages)


#: The dotted path MAILERS names the stand-in by.
STAND_IN = f"{StandInProvider.__module__}.{StandInProvider.__qualname__}"
