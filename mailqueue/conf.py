"""The MAILQUEUE setting, read once into a validated, frozen value.

``find_problems()`` is the single place that knows what a valid configuration
is: system checks report its problems at startup, and ``get_config()`` refuses
to hand out a configuration that has any.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from django.conf import settings
from django.core.signals import setting_changed
from django.dispatch import receiver
from django.utils.module_loading import import_string
from redis.connection import parse_url

from .exceptions import MailQueueImproperlyConfigured

#: The dotted paths that make a MAILERS entry a queued mailer.
QUEUED_BACKENDS = frozenset({"mailqueue.backend.EmailBackend", "mailqueue.backend.QueuedEmailBackend"})

#: Dramatiq's own rule for queue names (they become Redis key parts).
QUEUE_NAME_RE = re.compile(r"[a-zA-Z_][a-zA-Z0-9._-]*")

DEFAULT_BROKER_URL = "redis://127.0.0.1:6379/0"
DEFAULT_NAMESPACE = "mailqueue"
DEFAULT_MAX_MESSAGE_BYTES = 25 * 1024 * 1024
#: How long an idempotency key or a delivered envelope id is remembered (seconds).
DEFAULT_DEDUP_WINDOW = 24 * 3600
#: What the backend does when Redis refuses a batch: keep it in the outbox table, or raise.
BROKER_FAILURE_POLICIES = ("outbox", "raise")

#: ``"14/s"``, ``"50000/d"``: a count per unit of time.
RATE_RE = re.compile(r"\s*(\d+)\s*/\s*(s|sec|second|m|min|minute|h|hour|d|day)\s*")
RATE_UNITS = {"s": 1, "sec": 1, "second": 1, "m": 60, "min": 60, "minute": 60, "h": 3600, "hour": 3600}
RATE_UNITS |= {"d": 86400, "day": 86400}

TOP_LEVEL_KEYS = frozenset(
    {
        "BROKER_URL",
        "BROKER_OPTIONS",
        "NAMESPACE",
        "QUEUES",
        "PROVIDERS",
        "DEFAULT_QUEUE",
        "ROUTES",
        "ON_COMMIT",
        "ON_COMMIT_USING",
        "MAX_MESSAGE_BYTES",
        "POOLS",
        "ON_BROKER_FAILURE",
        "OUTBOX_DATABASE",
        "DEDUP_WINDOW",
        "RATE_LIMIT_MAX_WAIT",
        "HEARTBEAT_TIMEOUT",
        "MAINTENANCE_CHANCE",
    }
)
QUEUE_KEYS = frozenset({"providers", "max_retries", "min_backoff", "max_backoff", "time_limit"})
PROVIDER_KEYS = frozenset(
    {"attempts", "wait_min", "wait_max", "rate_limit", "max_concurrency", "failure_threshold", "cooldown"}
)
RATE_KEYS = frozenset({"rate", "burst"})
POOL_KEYS = frozenset({"queues", "processes", "threads"})
ROUTE_KEYS = frozenset({"queue", "tag", "header", "value", "callable"})


@dataclass(frozen=True, kw_only=True)
class QueueConfig:
    """A priority queue and the provider chain its workers deliver through."""

    name: str
    providers: tuple[str, ...]
    #: Dramatiq re-attempts after the first one; then the message is dead-lettered.
    max_retries: int = 10
    #: Backoff between Dramatiq re-attempts, in milliseconds (exponential, jittered).
    min_backoff: int = 15_000
    max_backoff: int = 3_600_000
    #: Longest one attempt (all providers, all in-attempt retries) may run, in ms.
    time_limit: int = 300_000


@dataclass(frozen=True, kw_only=True)
class RateLimit:
    """``count`` sends per ``period`` seconds, spaced evenly; ``burst`` of them may go at once.

    With ``burst`` B, any window of one period holds at most count + B - 1 sends.
    """

    count: int
    period: int
    burst: int

    @property
    def interval(self) -> float:
        """Seconds between two sends at the sustained rate."""
        return self.period / self.count

    def __str__(self) -> str:
        return f"{self.count}/{self.period}s (burst {self.burst})"


@dataclass(frozen=True, kw_only=True)
class ProviderConfig:
    """How a worker treats one provider (a MAILERS alias)."""

    alias: str
    #: Tries inside one attempt (tenacity) before failing over to the next provider.
    attempts: int = 3
    #: Exponential wait between those tries, in seconds.
    wait_min: float = 0.1
    wait_max: float = 2.0
    #: Every limit must grant a token before a send; shared by all workers through Redis.
    rate_limits: tuple[RateLimit, ...] = ()
    #: Sends in flight at once across all workers (None: unlimited).
    max_concurrency: int | None = None
    #: Consecutive transient failures that open the provider's circuit.
    failure_threshold: int = 5
    #: Seconds an open circuit skips the provider before one probe message is let through.
    cooldown: float = 30.0


@dataclass(frozen=True, kw_only=True)
class PoolConfig:
    """A worker pool: one Procfile line, its queues, processes and threads."""

    name: str
    queues: tuple[str, ...]
    processes: int = 1
    threads: int = 8


@dataclass(frozen=True, kw_only=True)
class Route:
    """A routing rule: messages it matches go to ``queue``."""

    queue: str | None
    tag: str | None = None
    header: str | None = None
    value: str | None = None
    #: ``callable(message) -> queue name | None``; ``queue`` is unused for these.
    function: Callable[[Any], str | None] | None = None


@dataclass(frozen=True, kw_only=True)
class MailQueueConfig:
    """Everything mailqueue reads from settings, validated."""

    broker_url: str = DEFAULT_BROKER_URL
    broker_options: Mapping[str, Any] = field(default_factory=dict)
    namespace: str = DEFAULT_NAMESPACE
    queues: Mapping[str, QueueConfig] = field(default_factory=dict)
    providers: Mapping[str, ProviderConfig] = field(default_factory=dict)
    default_queue: str = "default"
    routes: tuple[Route, ...] = ()
    on_commit: bool = True
    on_commit_using: str = "default"
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    pools: Mapping[str, PoolConfig] = field(default_factory=dict)
    on_broker_failure: str = "outbox"
    outbox_database: str = "default"
    dedup_window: int = DEFAULT_DEDUP_WINDOW
    #: Longest a worker thread sleeps for a rate-limit token before re-scheduling the message (s).
    rate_limit_max_wait: float = 1.0
    #: Dramatiq: ms without a heartbeat before a worker's unacknowledged messages are requeued.
    heartbeat_timeout: int = 60_000
    #: Dramatiq: per million broker commands, how many also run that recovery (Dramatiq's own
    #: default is 1,000; at 10,000 a quiet queue gets a dead worker's messages back in minutes).
    maintenance_chance: int = 10_000

    def provider(self, alias: str) -> ProviderConfig:
        """Settings for a provider, with defaults for one not listed in PROVIDERS."""
        return self.providers.get(alias) or ProviderConfig(alias=alias)


@dataclass(frozen=True)
class Problem:
    """One configuration mistake, phrased as what to fix."""

    id: str
    msg: str
    hint: str | None = None


def _raw_setting() -> Any:
    return getattr(settings, "MAILQUEUE", None)


def _mailers() -> Mapping[str, Any]:
    return getattr(settings, "MAILERS", {}) or {}


def is_queued_mailer(alias: str) -> bool:
    """True when MAILERS[alias] is one of mailqueue's own backends."""
    entry = _mailers().get(alias)
    return isinstance(entry, Mapping) and entry.get("BACKEND") in QUEUED_BACKENDS


def queued_mailers() -> dict[str, Mapping[str, Any]]:
    """MAILERS entries whose backend is mailqueue's, by alias."""
    return {alias: entry for alias, entry in _mailers().items() if is_queued_mailer(alias)}


class _Reader:
    """Turns the raw setting into a config, collecting every problem on the way."""

    def __init__(self) -> None:
        self.problems: list[Problem] = []

    def problem(self, id: str, msg: str, hint: str | None = None) -> None:
        self.problems.append(Problem(id, msg, hint))

    def positive_int(self, where: str, value: Any, *, minimum: int = 1) -> bool:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            self.problem(
                "mailqueue.E010",
                f"{where} must be an integer >= {minimum}, not {value!r}.",
            )
            return False
        return True

    def unknown_keys(self, where: str, given: Mapping[str, Any], allowed: frozenset[str]) -> None:
        unknown = sorted(set(given) - allowed)
        if unknown:
            self.problem(
                "mailqueue.E001",
                f"{where} has unknown key(s) {', '.join(map(repr, unknown))}.",
                hint=f"Allowed keys: {', '.join(sorted(allowed))}.",
            )

    def read(self, raw: Any) -> MailQueueConfig:
        if raw is None:
            self.problem(
                "mailqueue.E002",
                "The MAILQUEUE setting is missing.",
                hint='Add MAILQUEUE = {"QUEUES": {"default": {"providers": ["smtp"]}}} '
                "naming MAILERS aliases that deliver mail.",
            )
            return MailQueueConfig()
        if not isinstance(raw, Mapping):
            self.problem("mailqueue.E001", f"MAILQUEUE must be a dict, not {type(raw).__name__}.")
            return MailQueueConfig()
        self.unknown_keys("MAILQUEUE", raw, TOP_LEVEL_KEYS)

        broker_url = raw.get("BROKER_URL") or DEFAULT_BROKER_URL
        self.check_broker_url(broker_url)
        broker_options = raw.get("BROKER_OPTIONS", {})
        if not isinstance(broker_options, Mapping):
            self.problem("mailqueue.E001", "MAILQUEUE['BROKER_OPTIONS'] must be a dict.")
            broker_options = {}
        elif str(broker_options.get("protocol", 2)) != "2":
            # mailqueue.client.Wire reads RESP2 replies; RESP3 adds push messages and a boolean false.
            self.problem(
                "mailqueue.E010",
                f"MAILQUEUE['BROKER_OPTIONS']['protocol'] must be 2 (RESP2), not {broker_options['protocol']!r}.",
            )
        namespace = raw.get("NAMESPACE", DEFAULT_NAMESPACE)
        if not isinstance(namespace, str) or not QUEUE_NAME_RE.fullmatch(namespace):
            self.problem(
                "mailqueue.E008",
                f"MAILQUEUE['NAMESPACE'] {namespace!r} is not a valid Redis key prefix.",
                hint="Use letters, digits, '.', '_' or '-', starting with a letter or '_'.",
            )
            namespace = DEFAULT_NAMESPACE

        queues = self.read_queues(raw.get("QUEUES"))
        providers = self.read_providers(raw.get("PROVIDERS", {}))
        default_queue = raw.get("DEFAULT_QUEUE") or (
            "default" if "default" in queues or not queues else next(iter(queues))
        )
        if queues and default_queue not in queues:
            self.problem(
                "mailqueue.E008",
                f"MAILQUEUE['DEFAULT_QUEUE'] is {default_queue!r}, which is not in QUEUES.",
                hint=f"Configured queues: {', '.join(queues)}.",
            )
        routes = self.read_routes(raw.get("ROUTES", ()), queues)
        max_bytes = raw.get("MAX_MESSAGE_BYTES", DEFAULT_MAX_MESSAGE_BYTES)
        if not self.positive_int("MAILQUEUE['MAX_MESSAGE_BYTES']", max_bytes):
            max_bytes = DEFAULT_MAX_MESSAGE_BYTES
        on_commit = raw.get("ON_COMMIT", True)
        if not isinstance(on_commit, bool):
            self.problem("mailqueue.E010", "MAILQUEUE['ON_COMMIT'] must be True or False.")
            on_commit = True
        on_commit_using = raw.get("ON_COMMIT_USING", "default")
        databases = getattr(settings, "DATABASES", {})
        wants_on_commit = on_commit or any(
            (entry.get("OPTIONS") or {}).get("on_commit") for entry in queued_mailers().values()
        )
        if wants_on_commit and on_commit_using not in databases:
            self.problem(
                "mailqueue.E010",
                f"MAILQUEUE['ON_COMMIT_USING'] is {on_commit_using!r}, not a DATABASES alias.",
                hint="Name a DATABASES alias, or set ON_COMMIT to False if the project has no database.",
            )
        pools = self.read_pools(raw.get("POOLS"), queues)
        durability = self.read_durability(raw, databases)
        max_wait = durability.get("rate_limit_max_wait", 1.0)
        for queue in queues.values():
            limited = [
                alias
                for alias in queue.providers
                if alias in providers and (providers[alias].rate_limits or providers[alias].max_concurrency)
            ]
            if limited and max_wait * 1000 >= queue.time_limit:
                self.problem(
                    "mailqueue.E010",
                    f"MAILQUEUE['RATE_LIMIT_MAX_WAIT'] ({max_wait:g} s) is not below the time_limit of queue "
                    f"{queue.name!r} ({queue.time_limit} ms), whose provider {limited[0]!r} is limited: waiting "
                    "for a token could use up the whole attempt.",
                )

        self.check_mailers(queues)
        return MailQueueConfig(
            broker_url=broker_url,
            broker_options=dict(broker_options),
            namespace=namespace,
            queues=queues,
            providers=providers,
            default_queue=default_queue,
            routes=routes,
            on_commit=on_commit,
            on_commit_using=on_commit_using,
            max_message_bytes=max_bytes,
            pools=pools,
            **durability,
        )

    def read_durability(self, raw: Mapping[str, Any], databases: Mapping[str, Any]) -> dict[str, Any]:
        """The outbox, duplicate suppression, rate-limit wait and Dramatiq recovery settings."""
        options: dict[str, Any] = {}
        policy = raw.get("ON_BROKER_FAILURE", "outbox")
        if policy not in BROKER_FAILURE_POLICIES:
            self.problem(
                "mailqueue.E013",
                f"MAILQUEUE['ON_BROKER_FAILURE'] is {policy!r}.",
                hint='Use "outbox" (keep the mail in the database and relay it) or "raise".',
            )
        else:
            options["on_broker_failure"] = policy
        outbox_database = raw.get("OUTBOX_DATABASE", "default")
        if not isinstance(outbox_database, str):
            self.problem(
                "mailqueue.E013", f"MAILQUEUE['OUTBOX_DATABASE'] must be a DATABASES alias, not {outbox_database!r}."
            )
            outbox_database = "default"
        elif policy == "outbox" and outbox_database not in databases:
            self.problem(
                "mailqueue.E013",
                f"MAILQUEUE['OUTBOX_DATABASE'] is {outbox_database!r}, not a DATABASES alias, so mail "
                "accepted while Redis is away would have nowhere to wait.",
                hint='Name a DATABASES alias, or set ON_BROKER_FAILURE to "raise".',
            )
        options["outbox_database"] = outbox_database
        for key, name, minimum in (
            ("DEDUP_WINDOW", "dedup_window", 1),
            ("HEARTBEAT_TIMEOUT", "heartbeat_timeout", 1),
            ("MAINTENANCE_CHANCE", "maintenance_chance", 0),
        ):
            if key in raw and self.positive_int(f"MAILQUEUE[{key!r}]", raw[key], minimum=minimum):
                options[name] = raw[key]
        if "RATE_LIMIT_MAX_WAIT" in raw:
            wait = self.seconds("MAILQUEUE['RATE_LIMIT_MAX_WAIT']", raw["RATE_LIMIT_MAX_WAIT"])
            if wait is not None:
                options["rate_limit_max_wait"] = wait
        return options

    def seconds(self, where: str, value: Any) -> float | None:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            self.problem("mailqueue.E010", f"{where} must be seconds >= 0, not {value!r}.")
            return None
        return float(value)

    def rate_limits(self, where: str, raw: Any) -> tuple[RateLimit, ...]:
        specs = raw if isinstance(raw, (list, tuple)) else [raw]
        limits = []
        for spec in specs:
            burst = None
            if isinstance(spec, Mapping):
                self.unknown_keys(where, spec, RATE_KEYS)
                burst = spec.get("burst")
                spec = spec.get("rate")
            match = RATE_RE.fullmatch(spec) if isinstance(spec, str) else None
            if match is None or int(match[1]) < 1:
                self.problem(
                    "mailqueue.E014",
                    f"{where} has {spec!r}, which is not a rate.",
                    hint='Write a count per unit: "14/s", "600/m", "50000/d", or {"rate": "50/s", "burst": 10}.',
                )
                continue
            count = int(match[1])
            if burst is not None and not self.positive_int(f"{where} burst", burst):
                continue
            # Burst 1 by default: never more than ``count`` sends in any window of one period.
            limits.append(RateLimit(count=count, period=RATE_UNITS[match[2]], burst=burst or 1))
        return tuple(limits)

    def check_broker_url(self, url: Any) -> None:
        try:
            if not isinstance(url, str):
                raise ValueError(f"expected a string, got {type(url).__name__}")
            parse_url(url)  # type: ignore[no-untyped-call]
        except ValueError as error:
            self.problem(
                "mailqueue.E007",
                f"MAILQUEUE['BROKER_URL'] {url!r} is not a Redis URL: {error}",
                hint="Use e.g. redis://127.0.0.1:6379/0, rediss://host:6380/0 or unix:///path/redis.sock.",
            )

    def read_queues(self, raw: Any) -> dict[str, QueueConfig]:
        if not raw or not isinstance(raw, Mapping):
            self.problem(
                "mailqueue.E002",
                "MAILQUEUE['QUEUES'] must name at least one queue.",
                hint='e.g. "QUEUES": {"critical": {"providers": ["postmark", "ses"]}}.',
            )
            return {}
        queues = {}
        for name, spec in raw.items():
            where = f"MAILQUEUE['QUEUES'][{name!r}]"
            if not isinstance(name, str) or not QUEUE_NAME_RE.fullmatch(name):
                self.problem(
                    "mailqueue.E008",
                    f"Queue name {name!r} is not valid.",
                    hint="Use letters, digits, '.', '_' or '-', starting with a letter or '_'.",
                )
                continue
            if not isinstance(spec, Mapping):
                self.problem("mailqueue.E001", f"{where} must be a dict.")
                continue
            self.unknown_keys(where, spec, QUEUE_KEYS)
            providers = spec.get("providers")
            if isinstance(providers, str):
                providers = [providers]
            if not providers:
                self.problem(
                    "mailqueue.E003",
                    f"{where} has no providers, so nothing could deliver its mail.",
                    hint='Add "providers": [...] with one or more MAILERS aliases, primary first.',
                )
                providers = []
            options = {}
            for key, minimum in (("max_retries", 0), ("min_backoff", 1), ("max_backoff", 1), ("time_limit", 1)):
                if key in spec and self.positive_int(f"{where}[{key!r}]", spec[key], minimum=minimum):
                    options[key] = spec[key]
            if options.get("min_backoff", 15_000) > options.get("max_backoff", 3_600_000):
                self.problem("mailqueue.E010", f"{where}: min_backoff is larger than max_backoff.")
            queues[name] = QueueConfig(name=name, providers=tuple(providers), **options)
        return queues

    def read_providers(self, raw: Any) -> dict[str, ProviderConfig]:
        if not isinstance(raw, Mapping):
            self.problem("mailqueue.E001", "MAILQUEUE['PROVIDERS'] must be a dict.")
            return {}
        providers = {}
        for alias, spec in raw.items():
            where = f"MAILQUEUE['PROVIDERS'][{alias!r}]"
            if not isinstance(spec, Mapping):
                self.problem("mailqueue.E001", f"{where} must be a dict.")
                continue
            self.unknown_keys(where, spec, PROVIDER_KEYS)
            options: dict[str, Any] = {}
            if "attempts" in spec and self.positive_int(f"{where}['attempts']", spec["attempts"]):
                options["attempts"] = spec["attempts"]
            for key in ("wait_min", "wait_max"):
                if key in spec:
                    value = spec[key]
                    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                        self.problem("mailqueue.E010", f"{where}[{key!r}] must be seconds >= 0.")
                    else:
                        options[key] = float(value)
            if options.get("wait_min", 0.1) > options.get("wait_max", 2.0):
                self.problem("mailqueue.E010", f"{where}: wait_min is larger than wait_max.")
            if "rate_limit" in spec:
                options["rate_limits"] = self.rate_limits(f"{where}['rate_limit']", spec["rate_limit"])
            for key in ("max_concurrency", "failure_threshold"):
                if key in spec and self.positive_int(f"{where}[{key!r}]", spec[key]):
                    options[key] = spec[key]
            if "cooldown" in spec:
                cooldown = self.seconds(f"{where}['cooldown']", spec["cooldown"])
                if cooldown == 0:
                    self.problem(
                        "mailqueue.E010",
                        f"{where}['cooldown'] must be more than 0 seconds.",
                        hint="To keep a flaky provider in use, raise its failure_threshold instead.",
                    )
                elif cooldown is not None:
                    options["cooldown"] = cooldown
            providers[alias] = ProviderConfig(alias=alias, **options)
            if alias not in _mailers():
                self.problem(
                    "mailqueue.E004",
                    f"{where} names {alias!r}, which is not in MAILERS.",
                )
        return providers

    def read_routes(self, raw: Any, queues: Mapping[str, QueueConfig]) -> tuple[Route, ...]:
        if not isinstance(raw, (list, tuple)):
            self.problem("mailqueue.E009", "MAILQUEUE['ROUTES'] must be a list of rules.")
            return ()
        routes = []
        for index, spec in enumerate(raw):
            where = f"MAILQUEUE['ROUTES'][{index}]"
            if isinstance(spec, str):
                spec = {"callable": spec}
            if not isinstance(spec, Mapping):
                self.problem("mailqueue.E009", f"{where} must be a dict or a dotted path.")
                continue
            self.unknown_keys(where, spec, ROUTE_KEYS)
            matchers = [key for key in ("tag", "header", "callable") if key in spec]
            if len(matchers) != 1:
                self.problem(
                    "mailqueue.E009",
                    f"{where} must have exactly one of 'tag', 'header' or 'callable'.",
                    hint='e.g. {"tag": "newsletter", "queue": "bulk"}.',
                )
                continue
            if "callable" in spec:
                path = spec["callable"]
                if not (callable(path) or isinstance(path, str)):
                    self.problem("mailqueue.E009", f"{where}: 'callable' must be a dotted path or a callable.")
                    continue
                try:
                    function = path if callable(path) else import_string(path)
                except ImportError as error:
                    self.problem("mailqueue.E009", f"{where}: cannot import {path!r}: {error}")
                    continue
                routes.append(Route(queue=None, function=function))
                continue
            queue = spec.get("queue")
            if queue not in queues:
                self.problem(
                    "mailqueue.E009",
                    f"{where} routes to {queue!r}, which is not in QUEUES.",
                    hint=f"Configured queues: {', '.join(queues) or '(none)'}.",
                )
                continue
            routes.append(Route(queue=queue, tag=spec.get("tag"), header=spec.get("header"), value=spec.get("value")))
        return tuple(routes)

    def read_pools(self, raw: Any, queues: Mapping[str, QueueConfig]) -> dict[str, PoolConfig]:
        if raw is None:
            # One pool per queue, so each priority scales on its own.
            return {name: PoolConfig(name=name, queues=(name,)) for name in queues}
        if not isinstance(raw, Mapping):
            self.problem("mailqueue.E011", "MAILQUEUE['POOLS'] must be a dict.")
            return {}
        pools = {}
        for name, spec in raw.items():
            where = f"MAILQUEUE['POOLS'][{name!r}]"
            if not isinstance(spec, Mapping):
                self.problem("mailqueue.E011", f"{where} must be a dict.")
                continue
            self.unknown_keys(where, spec, POOL_KEYS)
            pool_queues = spec.get("queues") or [name]
            if isinstance(pool_queues, str):
                pool_queues = [pool_queues]
            unknown = [queue for queue in pool_queues if queue not in queues]
            if unknown:
                self.problem(
                    "mailqueue.E011",
                    f"{where} consumes unknown queue(s) {', '.join(map(repr, unknown))}.",
                    hint=f"Configured queues: {', '.join(queues)}.",
                )
            options = {}
            for key in ("processes", "threads"):
                if key in spec and self.positive_int(f"{where}[{key!r}]", spec[key]):
                    options[key] = spec[key]
            pools[name] = PoolConfig(name=name, queues=tuple(pool_queues), **options)
        consumed = {queue for pool in pools.values() for queue in pool.queues}
        for queue in queues:
            if queue not in consumed:
                self.problem(
                    "mailqueue.E011",
                    f"Queue {queue!r} is in no pool of MAILQUEUE['POOLS'], so no worker would ever deliver it.",
                    hint=f"Add it to a pool's 'queues', e.g. {{{queue!r}: {{'queues': [{queue!r}]}}}}.",
                )
        return pools

    def check_mailers(self, queues: Mapping[str, QueueConfig]) -> None:
        mailers = _mailers()
        for queue in queues.values():
            for alias in queue.providers:
                where = f"MAILQUEUE['QUEUES'][{queue.name!r}]"
                if alias not in mailers:
                    self.problem(
                        "mailqueue.E004",
                        f"{where} delivers through {alias!r}, which is not in MAILERS.",
                        hint=f"Add MAILERS[{alias!r}] with a delivering BACKEND (SMTP, anymail, ...).",
                    )
                elif is_queued_mailer(alias):
                    self.problem(
                        "mailqueue.E005",
                        f"{where} delivers through {alias!r}, which is itself a queued mailer: "
                        "mail would go round in circles.",
                        hint="Providers must be delivering backends (SMTP, anymail, ...).",
                    )
        for alias, entry in queued_mailers().items():
            options = entry.get("OPTIONS") or {}
            if not isinstance(options.get("on_commit", False), bool):
                self.problem("mailqueue.E006", f"MAILERS[{alias!r}] OPTIONS 'on_commit' must be True or False.")
            target = options.get("queue")
            if target is not None and target not in queues:
                self.problem(
                    "mailqueue.E006",
                    f"MAILERS[{alias!r}] enqueues onto {target!r}, which is not in MAILQUEUE['QUEUES'].",
                    hint=f"Configured queues: {', '.join(queues) or '(none)'}.",
                )


def find_problems() -> list[Problem]:
    """Every problem in the current MAILQUEUE/MAILERS settings (empty when valid)."""
    reader = _Reader()
    reader.read(_raw_setting())
    return reader.problems


@cache
def get_config() -> MailQueueConfig:
    """The validated configuration, read once per settings change."""
    reader = _Reader()
    config = reader.read(_raw_setting())
    if reader.problems:
        first = reader.problems[0]
        more = f" (and {len(reader.problems) - 1} more; run manage.py check)" if len(reader.problems) > 1 else ""
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
