"""Test helpers for applications: capture what ``send_mail()`` queues, assert on it, deliver it, without Redis.

``capture_mail()`` puts mailqueue's own backend back on the queued ``MAILERS``
aliases (Django's test runner swapped every alias for locmem) and points
mailqueue at an in-memory Redis of its own (fakeredis, which runs Lua). So a
send in a test takes the production path end to end: validation, routing,
the envelope, and the ENQUEUE script itself, whose only twin is the Redis it
runs on. Nothing is written to a real Redis.

Delivering is the workers' job, and ``mailqueue`` never imports ``workers``:
``CapturedMail.deliver()`` calls the deliverer that ``workers.testing``
registers when it is imported (the pytest plugin ``workers.pytest_plugin``
imports it; a Django ``TestCase`` module imports ``workers.testing`` itself).
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.utils import parseaddr
from types import TracebackType
from typing import Any, Literal, TypeVar

from django.conf import settings
from django.core.mail import EmailMessage
from django.core.mail.backends.base import BaseEmailBackend
from django.db import connections
from django.test.utils import override_settings
from django.utils.module_loading import import_string
from dramatiq.errors import DecodeError

from . import deadletters
from .backend import EmailBackend
from .broker import MESSAGE_ENCODER
from .client import redis_client
from .conf import get_config
from .envelope import Envelope
from .exceptions import EnvelopeError, MailQueueImproperlyConfigured
from .keys import QueueKeys

try:
    import fakeredis
except ImportError:  # an optional dependency: mailqueue[testing]
    HAVE_FAKEREDIS = False
else:
    HAVE_FAKEREDIS = True

__all__ = [
    "CapturedMail",
    "DeliveredMail",
    "ProviderCall",
    "QueuedMail",
    "StandInProvider",
    "capture_mail",
]

LOCMEM = "django.core.mail.backends.locmem.EmailBackend"

#: What ``deliver()`` hands each provider alias to: a locmem stand-in, or the backend configured in MAILERS.
Providers = Literal["locmem", "configured"]

Function = TypeVar("Function", bound=Callable[..., Any])


@dataclass(frozen=True, kw_only=True)
class QueuedMail:
    """One message that reached a queue: where it went, and enough of it to assert on."""

    envelope_id: str
    queue: str
    #: The MAILERS alias the application sent through (``using=``).
    mailer: str
    subject: str
    from_email: str
    to: tuple[str, ...]
    cc: tuple[str, ...]
    bcc: tuple[str, ...]
    envelope: Envelope = field(repr=False)

    @classmethod
    def of(cls, envelope: Envelope) -> QueuedMail:
        fields = envelope.message
        return cls(
            envelope_id=envelope.id,
            queue=envelope.queue,
            mailer=envelope.mailer,
            subject=str(fields.get("subject", "")),
            from_email=str(fields.get("from_email", "")),
            to=tuple(fields.get("to", ())),
            cc=tuple(fields.get("cc", ())),
            bcc=tuple(fields.get("bcc", ())),
            envelope=envelope,
        )

    @property
    def recipients(self) -> tuple[str, ...]:
        return self.to + self.cc + self.bcc

    @property
    def message(self) -> EmailMessage:
        """The message as a worker rebuilds it from the envelope (body, alternatives, attachments, headers)."""
        return self.envelope.to_message()

    def describe(self) -> str:
        """One line for a failure message: queue, mailer, recipients and subject (a test's own data)."""
        return f"queue={self.queue!r} mailer={self.mailer!r} to={list(self.to)!r} subject={self.subject!r}"


@dataclass(frozen=True, kw_only=True)
class ProviderCall:
    """One hand-off of a message to a provider during ``deliver()``, whether it took it or not."""

    provider: str
    envelope_id: str | None
    #: The message exactly as the provider received it (a copy).
    message: EmailMessage
    #: What the provider raised (a ``fail_provider`` error), or None when it took the message.
    error: BaseException | None


@dataclass(frozen=True, kw_only=True)
class DeliveredMail:
    """A message a provider accepted during ``deliver()``."""

    envelope_id: str
    queue: str
    mailer: str
    #: The MAILERS alias of the provider that took it.
    provider: str
    #: 1 for the first attempt; a failover inside one attempt does not count, a retry does.
    attempt: int
    #: The message as that provider received it.
    message: EmailMessage


@dataclass
class _Failure:
    remaining: int | None
    error: BaseException | type[BaseException]


#: Set by ``workers.testing`` at import: runs the real delivery pipeline over a capture.
_deliverer: Callable[[CapturedMail, Providers, float], None] | None = None


def register_deliverer(deliverer: Callable[[CapturedMail, Providers, float], None]) -> None:
    """Called by ``workers.testing``: the worker side provides ``deliver()`` (mailqueue never imports workers)."""
    global _deliverer
    _deliverer = deliverer


def _mailers_before_test_runner() -> Mapping[str, Any] | None:
    """MAILERS as settings.py wrote it, when Django's test environment swapped every alias for locmem.

    ``setup_test_environment()`` (Django's runner, pytest-django) keeps the original
    on ``django.test.utils._TestState.saved_data``, a private name: read with guards,
    so a Django that moves it makes the capture restore nothing rather than fail, and
    a test that set its own MAILERS (override_settings) keeps them either way.
    """
    try:
        from django.test.utils import _TestState  # noqa: PLC0415  (Django private: contained here)
    except ImportError:
        return None
    saved = getattr(getattr(_TestState, "saved_data", None), "mailers", None)
    return saved if isinstance(saved, Mapping) else None


def _is_queued(config: Any) -> bool:
    """True for a MAILERS entry whose backend is mailqueue's queued backend (or a subclass)."""
    path = config.get("BACKEND") if isinstance(config, Mapping) else None
    if not isinstance(path, str):
        return False
    try:
        backend = import_string(path)
    except ImportError:
        return False
    return isinstance(backend, type) and issubclass(backend, EmailBackend)


def _as_address(value: str) -> str:
    return parseaddr(value)[1].lower() or value.lower()


def _matches(address: str, addresses: Sequence[str]) -> bool:
    wanted = _as_address(address)
    return any(address == given or _as_address(given) == wanted for given in addresses)


class StandInProvider(BaseEmailBackend):
    """A provider alias during ``deliver()``: fails as ``fail_provider`` says, else hands on and records.

    Hands the message to Django's locmem backend under the provider's alias (so
    ``mail.outbox`` holds a copy whose ``sent_using`` names the provider), or to
    the backend the alias is configured with.
    """

    def __init__(
        self,
        *,
        capture: CapturedMail,
        delegate: Mapping[str, Any] | None = None,
        alias: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(alias=alias, **kwargs)
        #: The provider alias this stands in for.
        self.provider = alias or ""
        self.capture = capture
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
            self.capture._hand_off(self.provider, message, self.delegate)
        return len(email_messages)


class CapturedMail:
    """What the application queued while captured, and what ``deliver()`` made of it.

    A context manager (``with capture_mail() as captured:``), a decorator that
    passes the capture as the last positional argument (as ``mock.patch``
    does), and the ``captured_mail`` pytest fixture.
    """

    def __init__(self) -> None:
        if not HAVE_FAKEREDIS:
            raise MailQueueImproperlyConfigured(
                "mailqueue.testing needs fakeredis with Lua support for its in-memory Redis: "
                "pip install 'mailqueue[testing]' (or 'fakeredis[lua]')."
            )
        self.server = fakeredis.FakeServer()
        #: Filled as messages reach a queue (read on every access), oldest first.
        self._queued: dict[str, QueuedMail] = {}
        self.delivered: list[DeliveredMail] = []
        #: Every hand-off to a provider during ``deliver()``, failed ones included, in order.
        self.provider_calls: list[ProviderCall] = []
        self._failures: dict[str, _Failure] = {}
        self._mailers: dict[str, Any] | None = None
        self._mailqueue: dict[str, Any] | None = None
        self._providers_configured: dict[str, Any] = {}
        self._active: list[override_settings] = []
        #: on_commit callbacks seen since the capture started (kept alive, so ids stay unique).
        self._seen_callbacks: dict[int, Any] = {}
        #: The envelope the deliverer is attempting now (names the provider calls it causes).
        self.current_envelope: str | None = None

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
            with CapturedMail() as captured:
                return function(*args, captured, **kwargs)

        return wrapper  # type: ignore[return-value]

    def start(self) -> None:
        """Begin capturing: mailqueue's backend on the queued aliases, queues in the in-memory Redis."""
        if self._mailers is None:
            self._mailers, self._mailqueue, self._providers_configured = self._settings()
        self._activate()
        self._remember_pending_callbacks()

    def stop(self) -> None:
        """Stop capturing; what was queued (sent on commit included) stays readable, ``deliver()`` still works."""
        try:
            self._sync()
        finally:
            self._deactivate()

    def _settings(self) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        current: dict[str, Any] = dict(getattr(settings, "MAILERS", {}))
        original = _mailers_before_test_runner() or {}
        # settings.py's entry wherever the test runner's locmem swap is still in place; a test's own
        # MAILERS (override_settings, pytest-django's settings fixture) are what it asked for.
        swapped = {alias for alias, config in current.items() if config == {"BACKEND": LOCMEM} and alias in original}
        mailers = {
            alias: original[alias] if alias in swapped and _is_queued(original[alias]) else config
            for alias, config in current.items()
        }
        raw: dict[str, Any] = dict(getattr(settings, "MAILQUEUE", {}))
        raw["BROKER_OPTIONS"] = {
            **raw.get("BROKER_OPTIONS", {}),
            # redis-py builds every connection from these: fakeredis's, to this capture's own server.
            "connection_class": fakeredis.FakeRedisConnection,
            "server": self.server,
        }
        # What "configured" providers means: settings.py's entry, from before the test runner's swap.
        providers = {alias: original[alias] if alias in swapped else config for alias, config in current.items()}
        return mailers, raw, providers

    def _activate(self, mailers: dict[str, Any] | None = None) -> None:
        override = override_settings(MAILERS=mailers or self._mailers, MAILQUEUE=self._mailqueue)
        override.enable()
        self._active.append(override)

    def _deactivate(self) -> None:
        if self._active:
            self._active.pop().disable()

    @contextmanager
    def active(self) -> Iterator[None]:
        """The capture's settings, for as long as the block runs (again, after the capture ended)."""
        if self._mailers is None:
            raise RuntimeError("this capture was never started: use it as 'with capture_mail() as captured:'")
        self._activate()
        try:
            yield
        finally:
            self._deactivate()

    @contextmanager
    def delivering(self, providers: Providers) -> Iterator[None]:
        """The capture's settings with every provider of a queue's chain behind a ``StandInProvider``."""
        with self.active():
            chains = {alias for queue in get_config().queues.values() for alias in queue.providers}
        mailers = dict(self._mailers or {})
        for alias in chains:
            delegate = self._providers_configured.get(alias) if providers == "configured" else None
            mailers[alias] = {
                "BACKEND": f"{__name__}.StandInProvider",
                "OPTIONS": {"capture": self, "delegate": delegate},
            }
        self._activate(mailers)
        try:
            yield
        finally:
            self._deactivate()

    # --- what was queued ----------------------------------------------------

    def _remember_pending_callbacks(self) -> None:
        for callback in self._on_commit_callbacks():
            self._seen_callbacks[id(callback)] = callback

    def _on_commit_callbacks(self) -> list[Any]:
        # Django's own TestCase.captureOnCommitCallbacks reads this list; it holds (savepoints, callable, robust).
        using = get_config().on_commit_using
        return [callback for _, callback, _ in getattr(connections[using], "run_on_commit", ())]

    def _commit_pending(self) -> None:
        """Run mailqueue's pushes that wait for a commit, as if the test's transaction committed now.

        A ``TestCase`` never commits, so mail a view sends in it would never reach
        a queue. Only pushes registered during the capture run, each once; one in
        a savepoint that was rolled back is gone (Django drops it), as in production.
        """
        for callback in self._on_commit_callbacks():
            if id(callback) in self._seen_callbacks:
                continue
            self._seen_callbacks[id(callback)] = callback
            method = getattr(callback, "func", None)
            if getattr(method, "__func__", None) is EmailBackend._push_after_commit:
                callback()
                # The batch is the partial's own list: emptied, a real commit later (TransactionTestCase)
                # pushes nothing a second time.
                callback.args[0].clear()

    def _sync(self) -> None:
        """Record every message that reached a queue since the last look."""
        with self.active():
            self._commit_pending()
            config = get_config()
            client = redis_client()
            for queue in config.queues:
                keys = QueueKeys.of(config.namespace, queue)
                ids = client.lrange(keys.ready, 0, -1)
                if not ids:
                    continue
                for data in client.hmget(keys.messages, ids):
                    if data is None:
                        continue
                    envelope = _envelope_of(data)
                    if envelope is not None and envelope.id not in self._queued:
                        self._queued[envelope.id] = QueuedMail.of(envelope)

    @property
    def queued(self) -> list[QueuedMail]:
        """Every message that reached a queue during the capture, oldest first (each envelope once)."""
        if self._mailers is not None:
            self._sync()
        return sorted(self._queued.values(), key=lambda queued: queued.envelope.created_at)

    @property
    def pending(self) -> list[QueuedMail]:
        """Messages still on a queue (not yet delivered, or deferred past ``deliver()``'s wait)."""
        waiting: list[QueuedMail] = []
        with self.active():
            config = get_config()
            client = redis_client()
            for queue in config.queues:
                keys = QueueKeys.of(config.namespace, queue)
                for key in (keys.messages, keys.delayed_messages):
                    for data in client.hvals(key):
                        envelope = _envelope_of(data)
                        if envelope is not None:
                            waiting.append(QueuedMail.of(envelope))
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
        """The queued messages matching every criterion given.

        ``to`` is one address of the To header; ``recipient`` one of To, Cc or
        Bcc (compared as addresses: ``"Ann <ANN@example.com>"`` matches
        ``ann@example.com``); ``where`` any predicate on a ``QueuedMail``.
        """
        found = []
        for queued in self.queued:
            if queue is not None and queued.queue != queue:
                continue
            if mailer is not None and queued.mailer != mailer:
                continue
            if to is not None and not _matches(to, queued.to):
                continue
            if recipient is not None and not _matches(recipient, queued.recipients):
                continue
            if subject is not None and queued.subject != subject:
                continue
            if from_email is not None and not _matches(from_email, [queued.from_email]):
                continue
            if where is not None and not where(queued):
                continue
            found.append(queued)
        return found

    def assert_queued(self, count: int | None = None, **criteria: Any) -> list[QueuedMail]:
        """Fail unless messages matching ``criteria`` were queued (exactly ``count`` of them, when given).

        Returns the matching messages. The failure lists what was queued instead.
        """
        found = self.filter(**criteria)
        if (count is None and not found) or (count is not None and len(found) != count):
            wanted = "at least 1" if count is None else str(count)
            raise AssertionError(
                f"Expected {wanted} queued message(s) matching {_criteria(criteria)}, found {len(found)}.\n"
                + self._listing()
            )
        return found

    def assert_not_queued(self, **criteria: Any) -> None:
        """Fail if any message matching ``criteria`` (all messages, given none) was queued."""
        found = self.filter(**criteria)
        if found:
            raise AssertionError(
                f"Expected no queued message matching {_criteria(criteria)}, found {len(found)}.\n" + self._listing()
            )

    def _listing(self) -> str:
        queued = self.queued
        if not queued:
            return "Nothing was queued."
        lines = [f"Queued ({len(queued)}):"]
        lines += [f"  {number}. {item.describe()}" for number, item in enumerate(queued, start=1)]
        return "\n".join(lines)

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
        with self.active():
            chains = {name for queue in get_config().queues.values() for name in queue.providers}
        if alias not in chains:
            raise ValueError(f"{alias!r} is in no queue's provider chain; the chains name {sorted(chains)!r}")
        self._failures[alias] = _Failure(
            remaining=times, error=error or ConnectionError(f"{alias} is down (mailqueue.testing.fail_provider)")
        )

    def _hand_off(self, alias: str, message: EmailMessage, delegate: BaseEmailBackend) -> None:
        received = copy.deepcopy(message)
        failure = self._failures.get(alias)
        if failure is not None and failure.remaining != 0:
            if failure.remaining is not None:
                failure.remaining -= 1
            error = failure.error() if isinstance(failure.error, type) else failure.error
            self.provider_calls.append(
                ProviderCall(provider=alias, envelope_id=self.current_envelope, message=received, error=error)
            )
            raise error
        delegate.send_messages([message])
        self.provider_calls.append(
            ProviderCall(provider=alias, envelope_id=self.current_envelope, message=received, error=None)
        )

    def record_delivery(self, *, envelope_id: str, queue: str, mailer: str, provider: str, attempt: int) -> None:
        """Called by the deliverer for each ``message_sent``: keep it with what the provider received."""
        received = next(
            (
                call.message
                for call in reversed(self.provider_calls)
                if call.envelope_id == envelope_id and call.provider == provider and call.error is None
            ),
            None,
        )
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
        if _deliverer is None:
            raise MailQueueImproperlyConfigured(
                "deliver() runs the workers' delivery pipeline, and mailqueue never imports workers: "
                "import workers.testing once in your tests (the pytest plugin workers.pytest_plugin does), "
                "e.g. 'import workers.testing  # noqa: F401' at the top of the test module."
            )
        if providers not in ("locmem", "configured"):
            raise ValueError(f"providers must be 'locmem' or 'configured', not {providers!r}")
        before = len(self.delivered)
        self._sync()
        _deliverer(self, providers, timeout)
        return self.delivered[before:]


def _envelope_of(data: bytes | str) -> Envelope | None:
    try:
        return Envelope.decode(MESSAGE_ENCODER.decode(data if isinstance(data, bytes) else data.encode())["args"][0])
    except (DecodeError, EnvelopeError, KeyError, IndexError, TypeError, ValueError):
        return None  # not mailqueue's: a delivery would dead-letter it; nothing to assert on


def _criteria(criteria: Mapping[str, Any]) -> str:
    return ", ".join(f"{name}={value!r}" for name, value in criteria.items()) or "anything"


def capture_mail() -> CapturedMail:
    """Capture what the application queues: ``with capture_mail() as captured:`` or ``@capture_mail()``."""
    return CapturedMail()
