"""The values the MAILQUEUE setting is read into: frozen, typed, and the one home of every default.

Nothing here reads settings or validates; ``mailqueue.config_reader`` does that and takes each
default from these types (``default()``), so a default is written once, on its field.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, Literal, get_args

#: What the backend does when Redis refuses a batch: keep it in the outbox table, or raise.
BROKER_FAILURE_POLICIES = ("outbox", "raise")
#: What the message log keeps of each recipient: the address, a SHA-256 of it, or nothing.
LOG_RECIPIENTS = ("store", "hash", "off")
#: How a queue picks each message's provider: the first in order (the others only when it fails), a draw by
#: weight, or the first in order that can take it within the queue's latency budget.
Strategy = Literal["failover", "weighted", "spill-over"]
STRATEGIES: tuple[Strategy, ...] = get_args(Strategy)


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
    strategy: Strategy = "failover"
    #: "weighted": one weight per provider, in the order of ``providers`` (0: only ever a failover).
    weights: tuple[int, ...] = ()
    #: "spill-over": seconds from ``send_mail()`` a message may wait for a provider before going to the next.
    latency_budget: float = 2.0

    def weight(self, alias: str) -> int:
        """``alias``'s weight in the draw; 0 for every provider unless the strategy is "weighted"."""
        if not self.weights or alias not in self.providers:
            return 0
        return self.weights[self.providers.index(alias)]


@dataclass(frozen=True, kw_only=True)
class RateLimit:
    """``count`` sends per ``period`` seconds, spaced evenly; ``burst`` of them may go at once.

    With ``burst`` B, any window of one period holds at most count + B sends (count + B - 1 as the
    script grants them; a send reaches the provider a little after its grant, which can add one).
    """

    count: int
    period: int
    #: 1: never more than ``count`` sends in any window of one period.
    burst: int = 1

    @property
    def interval(self) -> float:
        """Seconds between two sends at the sustained rate."""
        return self.period / self.count

    def __str__(self) -> str:
        return f"{self.count}/{self.period}s (burst {self.burst})"


@dataclass(frozen=True, kw_only=True)
class Quota:
    """At most ``count`` sends per calendar ``period`` (an hour or a UTC day, on Redis's clock).

    Unlike a RateLimit, which spaces sends evenly, a quota can be used up in minutes; it then starts again whole.
    """

    count: int
    period: int

    def __str__(self) -> str:
        return f"{self.count}/{'d' if self.period == 86400 else 'h'}"


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
    #: Sends per calendar hour or day; a provider whose quota is spent is skipped until the next period.
    quota: Quota | None = None
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
class LogConfig:
    """The message log (MAILQUEUE["LOG"]): events on a Redis stream, written to the database by the log writer."""

    #: False: nothing is appended to the stream (the log shows nothing new).
    enabled: bool = True
    #: The stream is trimmed to about this many entries (XADD MAXLEN ~): its bound while the writer is down.
    stream_maxlen: int = 1_000_000
    #: One of LOG_RECIPIENTS; applied by the writer (the stream itself holds the addresses).
    recipients: str = "store"
    #: Days a message stays in the log before ``manage.py mailqueue prune`` deletes it.
    retention_days: int = 30
    #: Events the writer reads and writes per batch.
    batch_size: int = 500
    #: Milliseconds the writer lets a short batch fill before writing it: fewer, larger statements under a
    #: steady trickle (the log's rows arrive this much later; 0 writes every read at once).
    batch_wait: int = 500


#: What MONITOR["PERMISSION"] may name besides a permission ("app_label.codename").
MONITOR_FLAGS = ("is_staff", "is_superuser")


@dataclass(frozen=True, kw_only=True)
class MonitorConfig:
    """The operator's view (MAILQUEUE["MONITOR"]): the dashboard, /metrics and the cluster counters behind them."""

    #: False: the workers keep no counters or histograms in Redis (/metrics then has the gauges only).
    counters: bool = True
    #: Who may see the dashboard and /metrics with a session: "is_staff", "is_superuser", or a permission
    #: ("mailqueue.view_message"). An inactive user never may.
    permission: str = "is_staff"
    #: A bearer token that lets a scraper read /metrics without a session (None: sessions only).
    metrics_token: str | None = None
    #: Seconds between the dashboard's refreshes.
    refresh: float = 5.0
    #: Seconds within which the desired-workers gauge aims to clear a queue's backlog.
    scale_target: float = 60.0


@dataclass(frozen=True, kw_only=True)
class MailQueueConfig:
    """Everything mailqueue reads from settings, validated.

    Each top-level MAILQUEUE key is the upper-case name of one field here (``DEDUP_WINDOW`` ->
    ``dedup_window``).
    """

    broker_url: str = "redis://127.0.0.1:6379/0"
    broker_options: Mapping[str, Any] = field(default_factory=dict)
    namespace: str = "mailqueue"
    queues: Mapping[str, QueueConfig] = field(default_factory=dict)
    providers: Mapping[str, ProviderConfig] = field(default_factory=dict)
    #: Used when QUEUES has a queue of this name; otherwise the first queue is the default.
    default_queue: str = "default"
    routes: tuple[Route, ...] = ()
    on_commit: bool = True
    on_commit_using: str = "default"
    max_message_bytes: int = 25 * 1024 * 1024
    pools: Mapping[str, PoolConfig] = field(default_factory=dict)
    #: One of BROKER_FAILURE_POLICIES.
    on_broker_failure: str = "outbox"
    outbox_database: str = "default"
    #: After a send timed out waiting for Redis, how long this process's sends skip Redis (straight to the
    #: outbox, or BrokerUnavailable with "raise") before one send probes it again (s); 0: never skip.
    broker_cooldown: float = 10.0
    #: How long an idempotency key or a delivered envelope id is remembered (seconds).
    dedup_window: int = 24 * 3600
    #: Longest a worker thread sleeps for a rate-limit token before re-scheduling the message (s).
    rate_limit_max_wait: float = 1.0
    #: Dramatiq: ms without a heartbeat before a worker is taken for dead and its unacknowledged
    #: messages are requeued. Every worker heartbeats from a thread of its own each RECOVERY_INTERVAL,
    #: so a busy worker (all threads in slow sends) still beats; 10 s leaves ten beats of margin.
    heartbeat_timeout: int = 10_000
    #: ms between two runs of a worker's keepalive thread: it heartbeats, then puts back the
    #: messages of every worker whose heartbeat is older than HEARTBEAT_TIMEOUT.
    recovery_interval: int = 1_000
    #: Dramatiq: per million broker commands, how many also run Dramatiq's own recovery (its default
    #: is 1,000). Off: the keepalive recovers on its timer, and Dramatiq's would also take live workers
    #: for dead after a Redis-wide pause, which the keepalive's grace prevents (workers/dramatiq_redis.py).
    maintenance_chance: int = 0
    log: LogConfig = field(default_factory=LogConfig)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)

    def provider(self, alias: str) -> ProviderConfig:
        """Settings for a provider, with defaults for one not listed in PROVIDERS."""
        return self.providers.get(alias) or ProviderConfig(alias=alias)


def default(value_type: type, name: str) -> Any:
    """The default ``value_type`` declares for its field ``name``, so the reader never repeats it."""
    for each in fields(value_type):
        if each.name == name:
            if each.default is not MISSING:
                return each.default
            if each.default_factory is not MISSING:
                return each.default_factory()
            raise TypeError(f"{value_type.__name__}.{name} has no default")
    raise TypeError(f"{value_type.__name__} has no field {name!r}")
