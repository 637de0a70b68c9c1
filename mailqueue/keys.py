"""Every Redis key mailqueue uses, named in one place.

Queue keys follow Dramatiq's own layout (so its workers consume what we push),
and Dramatiq's worker bookkeeping (in-progress sets, heartbeats) is named here
too, for the scripts that touch it; the rest are mailqueue's: dead letters,
enqueue and delivery records, and each provider's shared state (rate-limit
buckets, in-flight sends, circuit, stats, quota).
"""

from __future__ import annotations

from dataclasses import dataclass

#: Per-minute provider counters are kept this long (seconds): an hour of history, plus slack.
STATS_TTL = 3900


@dataclass(frozen=True, slots=True)
class QueueKeys:
    """Dramatiq's Redis key layout for one queue, plus mailqueue's dead letters."""

    ready: str
    messages: str
    delayed: str
    delayed_messages: str
    dead: str
    dead_messages: str

    @classmethod
    def of(cls, namespace: str, queue: str) -> QueueKeys:
        base = f"{namespace}:{queue}"
        return cls(
            ready=base,
            messages=f"{base}.msgs",
            delayed=f"{base}.DQ",
            delayed_messages=f"{base}.DQ.msgs",
            dead=f"{namespace}:dead:{queue}",
            dead_messages=f"{namespace}:dead:{queue}.msgs",
        )


@dataclass(frozen=True, slots=True)
class ProviderKeys:
    """A provider's state shared by every worker on every host."""

    alias: str
    #: Hash: state (closed/open/half-open), consecutive failures, reopen and probe deadlines.
    circuit: str
    #: Sorted set of in-flight sends (member: a lease token; score: lease expiry in ms).
    in_flight: str
    #: Prefix of one string per rate limit: its theoretical arrival time (GCRA), in ms.
    rate_prefix: str
    #: Prefix of one hash per minute: sent / failed / rejected / faulted counters, and what was sent for each
    #: queue (``queue_sent_field``).
    stats_prefix: str
    #: Hash: the quota's current period (its number since the epoch) and the sends admitted in it.
    quota: str

    @classmethod
    def of(cls, namespace: str, alias: str) -> ProviderKeys:
        base = f"{namespace}:provider:{alias}"
        return cls(
            alias=alias,
            circuit=f"{base}:circuit",
            in_flight=f"{base}:in-flight",
            rate_prefix=f"{base}:rate:",
            stats_prefix=f"{base}:stats:",
            quota=f"{base}:quota",
        )

    def rate(self, count: int, period: int, burst: int) -> str:
        """One bucket per distinct limit: adding or reordering limits never mixes their state."""
        return f"{self.rate_prefix}{count}/{period}/{burst}"

    def stats(self, minute: int) -> str:
        return f"{self.stats_prefix}{minute}"


def queue_sent_field(queue: str) -> str:
    """The field of a provider's per-minute counters counting what it sent for ``queue`` (queue names hold no ':')."""
    return f"sent:{queue}"


def delivered_key(namespace: str, envelope_id: str) -> str:
    """Set when a provider accepted the envelope: a redelivery is then not sent again."""
    return f"{namespace}:delivered:{envelope_id}"


def sending_key(namespace: str, envelope_id: str) -> str:
    """Held by the worker sending the envelope now: another copy of it waits instead of sending too."""
    return f"{namespace}:sending:{envelope_id}"


def enqueued_key(namespace: str, envelope_id: str) -> str:
    """Set by a guarded push: the same envelope id pushed again within the window is not queued twice."""
    return f"{namespace}:enqueued:{envelope_id}"


def in_progress_key(namespace: str, broker_id: str, queue: str) -> str:
    """Dramatiq's set of the Redis message ids one worker fetched from ``queue`` and has not acknowledged."""
    return f"{namespace}:__acks__.{broker_id}.{queue}"


def heartbeats_key(namespace: str) -> str:
    """Dramatiq's sorted set of worker ids by last heartbeat (ms): a stale one's messages are requeued."""
    return f"{namespace}:__heartbeats__"


def keepalive_key(namespace: str) -> str:
    """When (Redis's clock, ms) any worker last heartbeat, and until when a grace after a gap holds nobody dead."""
    return f"{namespace}:keepalive"


def wake_channel(namespace: str, queue: str) -> str:
    """The pub/sub channel the enqueue publishes on after queueing onto ``queue``: idle consumers wake at once."""
    return f"{namespace}:wake:{queue}"


def events_key(namespace: str) -> str:
    """The message log's stream: compact events the enqueue and the workers append, the log writer reads."""
    return f"{namespace}:events"
