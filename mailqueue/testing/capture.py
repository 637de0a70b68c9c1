"""The capture: what the application queued while it ran, the assertions on it, and ``deliver()``."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from types import TracebackType
from typing import Any, TypeVar

from django.test.utils import override_settings

from mailqueue import deadletters
from mailqueue.conf import get_config

from . import inmemory
from .capture_settings import CaptureSettings
from .criteria import Criteria, describe, listing
from .deliverer import registered_deliverer
from .oncommit import PendingPushes
from .standin import STAND_IN, HandOffs
from .values import DeliveredMail, ProviderCall, Providers, QueuedMail

Function = TypeVar("Function", bound=Callable[..., Any])


class CapturedMail:
    """What the application queued while captured, and what ``deliver()`` made of it.

    A context manager (``with capture_mail() as captured:``), a decorator that
    passes the capture as the last positional argument (as ``mock.patch``
    does), and the ``captured_mail`` pytest fixture.
    """

    def __init__(self, *, mailers: Mapping[str, Any] | None = None) -> None:
        self.server = inmemory.new_server()
        #: MAILERS as settings.py writes them, when given; else what the test runner replaced is read.
        self._original_mailers = mailers
        #: Filled as messages reach a queue (read on every access), oldest first.
        self._queued: dict[str, QueuedMail] = {}
        self.delivered: list[DeliveredMail] = []
        self._hand_offs = HandOffs()
        self._pending_pushes = PendingPushes()
        self._settings: CaptureSettings | None = None
        self._active: list[override_settings] = []

    @property
    def provider_calls(self) -> list[ProviderCall]:
        """Every hand-off to a provider during ``deliver()``, failed ones included, in order."""
        return self._hand_offs.calls

    # --- activation ---------------------------------------------------------

    def __enter__(self) -> CapturedMail:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()

    def __call__(self, function: Function) -> Function:
        """Decorate a test: it gets a fresh capture as its last positional argument."""

        @functools.wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with CapturedMail(mailers=self._original_mailers) as captured:
                return function(*args, captured, **kwargs)

        return wrapper  # type: ignore[return-value]

    def start(self) -> None:
        """Begin capturing: mailqueue's backend on the queued aliases, queues in the in-memory Redis."""
        if self._settings is None:
            self._settings = CaptureSettings.read(self.server, self._original_mailers)
        self._activate(self._settings.mailers)
        self._pending_pushes.skip_waiting()

    def stop(self) -> None:
        """Stop capturing; what was queued (sent on commit included) stays readable, ``deliver()`` still works."""
        try:
            self._sync()
        finally:
            self._deactivate()

    def _activate(self, mailers: dict[str, Any]) -> None:
        assert self._settings is not None
        override = override_settings(MAILERS=mailers, MAILQUEUE=self._settings.mailqueue)
        override.enable()
        self._active.append(override)

    def _deactivate(self) -> None:
        if self._active:
            self._active.pop().disable()

    @contextmanager
    def active(self) -> Iterator[None]:
        """The capture's settings, for as long as the block runs (again, after the capture ended)."""
        if self._settings is None:
            raise RuntimeError("this capture was never started: use it as 'with capture_mail() as captured:'")
        self._activate(self._settings.mailers)
        try:
            yield
        finally:
            self._deactivate()

    @contextmanager
    def delivering(self, providers: Providers) -> Iterator[None]:
        """The capture's settings with every provider of a queue's chain behind a ``StandInProvider``."""
        chains = self._provider_chains()
        assert self._settings is not None
        mailers = dict(self._settings.mailers)
        for alias in chains:
            delegate = self._settings.providers.get(alias) if providers == "configured" else None
            mailers[alias] = {"BACKEND": STAND_IN, "OPTIONS": {"hand_offs": self._hand_offs, "delegate": delegate}}
        self._activate(mailers)
        try:
            yield
        finally:
            self._deactivate()

    def attempting(self, envelope_id: str) -> AbstractContextManager[None]:
        """Called by the deliverer around each attempt: the provider calls it causes are this envelope's."""
        return self._hand_offs.attempting(envelope_id)

    def _provider_chains(self) -> set[str]:
        with self.active():
            return {alias for queue in get_config().queues.values() for alias in queue.providers}

    # --- what was queued ----------------------------------------------------

    def _sync(self) -> None:
        """Record every message that reached a queue since the last look (pushes waiting for a commit first)."""
        with self.active():
            self._pending_pushes.commit()
            for envelope in inmemory.ready_envelopes():
                if envelope.id not in self._queued:
                    self._queued[envelope.id] = QueuedMail.of(envelope)

    @property
    def queued(self) -> list[QueuedMail]:
        """Every message that reached a queue during the capture, oldest first (each envelope once)."""
        if self._settings is not None:
            self._sync()
        return sorted(self._queued.values(), key=lambda queued: queued.envelope.created_at)

    @property
    def pending(self) -> list[QueuedMail]:
        """Messages still on a queue (not yet delivered, or deferred past ``deliver()``'s wait)."""
        with self.active():
            waiting = [QueuedMail.of(envelope) for envelope in inmemory.waiting_envelopes()]
        return sorted(waiting, key=lambda queued: queued.envelope.created_at)

    @property
    def dead_letters(self) -> list[deadletters.DeadLetter]:
        """The dead-letter store of the in-memory Redis: messages no provider will take, with their reason."""
        with self.active():
            return list(deadletters.iter_dead())

    def filter(
        self,
        *,
        queue: str | None = None,
        mailer: str | None = None,
        to: str | None = None,
        recipient: str | None = None,
        subject: str | None = None,
        from_email: str | None = None,
        where: Callable[[QueuedMail], bool] | None = None,
    ) -> list[QueuedMail]:
        """The queued messages matching every criterion given (see ``Criteria``)."""
        criteria = Criteria(
            queue=queue, mailer=mailer, to=to, recipient=recipient, subject=subject, from_email=from_email, where=where
        )
        return [queued for queued in self.queued if criteria.match(queued)]

    def assert_queued(self, count: int | None = None, **criteria: Any) -> list[QueuedMail]:
        """Fail unless messages matching ``criteria`` were queued (exactly ``count`` of them, when given).

        Returns the matching messages. The failure lists what was queued instead.
        """
        found = self.filter(**criteria)
        if (count is None and not found) or (count is not None and len(found) != count):
            wanted = "at least 1" if count is None else str(count)
            raise AssertionError(
                f"Expected {wanted} queued message(s) matching {describe(criteria)}, found {len(found)}.\n"
                + listing(self.queued)
            )
        return found

    def assert_not_queued(self, **criteria: Any) -> None:
        """Fail if any message matching ``criteria`` (all messages, given none) was queued."""
        found = self.filter(**criteria)
        if found:
            raise AssertionError(
                f"Expected no queued message matching {describe(criteria)}, found {len(found)}.\n"
                + listing(self.queued)
            )

    def clear(self) -> None:
        """Forget what was queued, delivered and handed to providers so far (the queues themselves are kept)."""
        self._sync()
        self._queued.clear()
        self.delivered.clear()
        self.provider_calls.clear()

    # --- delivering -----------------------------------------------------------

    def fail_provider(
        self, alias: str, times: int | None = 1, error: BaseException | type[BaseException] | None = None
    ) -> None:
        """Make provider ``alias`` fail its next ``times`` sends during ``deliver()`` (every send: ``times=None``).

        ``error`` (an exception or class) is what it raises; by default a
        ``ConnectionError``, which the pipeline classifies as transient, so the
        in-attempt retries, failover and Dramatiq retries follow. Each try counts:
        a provider with ``attempts: 3`` uses three of ``times`` in one attempt.
        """
        if times is not None and times < 1:
            raise ValueError(f"times must be at least 1 (or None for every send), not {times!r}")
        chains = self._provider_chains()
        if alias not in chains:
            raise ValueError(f"{alias!r} is in no queue's provider chain; the chains name {sorted(chains)!r}")
        self._hand_offs.fail(
            alias, times, error or ConnectionError(f"{alias} is down (mailqueue.testing.fail_provider)")
        )

    def record_delivery(self, *, envelope_id: str, queue: str, mailer: str, provider: str, attempt: int) -> None:
        """Called by the deliverer for each ``message_sent``: keep it with what the provider received."""
        received = self._hand_offs.received(envelope_id, provider)
        if received is None:
            raise AssertionError(f"{envelope_id} was reported sent via {provider}, which never received it")
        self.delivered.append(
            DeliveredMail(
                envelope_id=envelope_id,
                queue=queue,
                mailer=mailer,
                provider=provider,
                attempt=attempt,
                message=received,
            )
        )

    def deliver(self, *, providers: Providers = "locmem", timeout: float = 5.0) -> list[DeliveredMail]:
        """Run everything queued through the real delivery pipeline, in this thread; return what was delivered now.

        ``providers="locmem"`` (the default) hands each provider alias's mail to a
        locmem stand-in (``mail.outbox``, ``sent_using`` set to the alias);
        ``"configured"`` uses the backends settings.py configures for them.
        Retries run at once (their backoff is skipped); a deferral (a rate limit,
        open circuits) is waited out if it ends within ``timeout`` seconds, else
        the message stays in ``pending``.
        """
        deliverer = registered_deliverer()
        if providers not in ("locmem", "configured"):
            raise ValueError(f"providers must be 'locmem' or 'configured', not {providers!r}")
        before = len(self.delivered)
        self._sync()
        deliverer(self, providers, timeout)
        return self.delivered[before:]


def capture_mail(*, mailers: Mapping[str, Any] | None = None) -> CapturedMail:
    """Capture what the application queues: ``with capture_mail() as captured:`` or ``@capture_mail()``.

    ``mailers``: ``MAILERS`` as your settings write them, when the capture cannot
    find them (settings made with ``settings.configure()``); by default it reads
    what the test runner replaced.
    """
    return CapturedMail(mailers=mailers)
