"""The dead-letter store: messages no provider could deliver, with their reason.

Kept in Redis per queue (a sorted set by time plus a hash of records) until an
operator requeues or purges them; nothing here expires on its own. Dramatiq's
own dead-letter set is not used: it keeps the payload as enqueued for the last
attempt, without that attempt's error, and expires after a week.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from . import eventlog
from .client import LuaScript, redis_client
from .conf import get_config
from .enqueue import encode
from .envelope import Envelope
from .exceptions import EnvelopeError
from .keys import QueueKeys, events_key
from .signals import MessageRequeued, announce


@dataclass(frozen=True, kw_only=True, slots=True)
class DeadLetter:
    """One dead-lettered message and why it died."""

    id: str
    queue: str
    reason: str
    error_type: str
    failed_at: float
    attempts: int
    payload: Any
    provider: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "queue": self.queue,
            "reason": self.reason,
            "error_type": self.error_type,
            "failed_at": self.failed_at,
            "attempts": self.attempts,
            "provider": self.provider,
            "payload": self.payload,
        }

    @property
    def subject(self) -> str:
        """The message subject, when the payload is a readable envelope."""
        try:
            return str(Envelope.decode(self.payload).message.get("subject", ""))
        except EnvelopeError:
            return ""


#: KEYS: the dead set, the dead records hash, the message log's stream. ARGV: id, time, record,
#: the stream's MAXLEN, the ``dead`` event or "". The event is appended only when the id was not
#: in the set already: a record written twice (the time limit interrupted the first write) logs once.
RECORD_SCRIPT = """
local added = redis.call("zadd", KEYS[1], ARGV[2], ARGV[1])
redis.call("hset", KEYS[2], ARGV[1], ARGV[3])
if added == 1 and ARGV[5] ~= "" then
  redis.call("xadd", KEYS[3], "maxlen", "~", ARGV[4], "*", "e", ARGV[5])
end
return added
"""
RECORD = LuaScript(RECORD_SCRIPT)


def record(letter: DeadLetter) -> None:
    """Store ``letter``, and append its ``dead`` event; recording the same id twice keeps one (the latest)."""
    config = get_config()
    keys = QueueKeys.of(config.namespace, letter.queue)
    event = eventlog.dead(letter.id, letter.attempts, letter.reason, letter.provider) if config.log.enabled else b""
    RECORD(
        [keys.dead, keys.dead_messages, events_key(config.namespace)],
        [letter.id, letter.failed_at, json.dumps(letter.to_json()), config.log.stream_maxlen, event],
    )


def _queues(queue: str | None) -> Iterable[str]:
    return [queue] if queue else list(get_config().queues)


@dataclass(frozen=True, kw_only=True, slots=True)
class DeadLetterFilter:
    """Which dead letters an operator means (the dashboard's filter); a field left None matches every letter."""

    queue: str | None = None
    provider: str | None = None
    #: The exception class the last attempt ended with ("SMTPRecipientsRefused").
    error_type: str | None = None
    #: Seconds: only letters that died at least this long ago.
    older_than: float | None = None

    def matches(self, letter: DeadLetter, *, now: float | None = None) -> bool:
        if self.queue is not None and letter.queue != self.queue:
            return False
        if self.provider is not None and letter.provider != self.provider:
            return False
        if self.error_type is not None and letter.error_type != self.error_type:
            return False
        return self.older_than is None or letter.failed_at <= self.newest(time.time() if now is None else now)

    @property
    def reads_records(self) -> bool:
        """Whether matching needs each letter's record; queue and age are answered by the sorted sets alone."""
        return self.provider is not None or self.error_type is not None

    def newest(self, now: float) -> float:
        """The latest time of death a matching letter may have."""
        return math.inf if self.older_than is None else now - self.older_than


def _score(bound: float) -> str | float:
    return "+inf" if math.isinf(bound) else bound


#: Records per HMGET while scanning: a filter over a large store must not become one command that stalls Redis.
SCAN_CHUNK = 500


def _scan(keys: QueueKeys, ids: list[Any]) -> Iterator[DeadLetter]:
    client = redis_client()
    for start in range(0, len(ids), SCAN_CHUNK):
        for raw in client.hmget(keys.dead_messages, ids[start : start + SCAN_CHUNK]):
            if raw is not None:  # requeued or purged since the ids were read
                yield DeadLetter(**json.loads(raw))


def matching(where: DeadLetterFilter, *, now: float | None = None) -> Iterator[DeadLetter]:
    """The dead letters ``where`` matches, oldest first within each queue.

    The age bound is a ZRANGEBYSCORE on each queue's sorted set, so letters younger than it are never read;
    provider and error class are matched on the records read.
    """
    now = time.time() if now is None else now
    namespace = get_config().namespace
    newest = _score(where.newest(now))
    for name in _queues(where.queue):
        keys = QueueKeys.of(namespace, name)
        ids: list[Any] = list(redis_client().zrangebyscore(keys.dead, "-inf", newest))
        for letter in _scan(keys, ids):
            if where.matches(letter, now=now):
                yield letter


def iter_dead(queue: str | None = None, *, older_than: float | None = None) -> Iterator[DeadLetter]:
    """Dead letters, oldest first, optionally for one queue or older than N seconds."""
    return matching(DeadLetterFilter(queue=queue, older_than=older_than))


@dataclass(frozen=True, kw_only=True, slots=True)
class DeadLetterPage:
    """The newest letters a filter matches, and how many it matches in all."""

    letters: list[DeadLetter]
    total: int


def newest_matching(where: DeadLetterFilter, *, limit: int = 100, now: float | None = None) -> DeadLetterPage:
    """Up to ``limit`` letters ``where`` matches, newest first, with the count of all it matches.

    Filtered by queue and age only, this is three round trips whatever the store holds (ZCOUNT per queue, the
    newest ids per queue as the last ``limit`` of the range, their records); a provider or error class filter
    reads every record of the queues in range, SCAN_CHUNK at a time. Only commands the web processes' ACL
    already grants (docs/operating.md) are used: ZRANGEBYSCORE with an offset, not ZREVRANGEBYSCORE.
    """
    now = time.time() if now is None else now
    namespace = get_config().namespace
    newest = _score(where.newest(now))
    queues = [QueueKeys.of(namespace, name) for name in _queues(where.queue)]
    if where.reads_records:
        total = 0
        kept: list[DeadLetter] = []
        for keys in queues:
            ids: list[Any] = list(redis_client().zrangebyscore(keys.dead, "-inf", newest))
            found = [letter for letter in _scan(keys, ids) if where.matches(letter, now=now)]
            total += len(found)
            kept.extend(found[-limit:])  # oldest first: no earlier letter of this queue can make the page
        kept.sort(key=lambda letter: letter.failed_at, reverse=True)
        return DeadLetterPage(letters=kept[:limit], total=total)
    with redis_client().pipeline(transaction=False) as pipe:
        for keys in queues:
            pipe.zcount(keys.dead, "-inf", newest)
        counts = [int(count) for count in pipe.execute()]
    with redis_client().pipeline(transaction=False) as pipe:
        for keys, count in zip(queues, counts, strict=True):
            pipe.zrangebyscore(keys.dead, "-inf", newest, start=max(count - limit, 0), num=limit, withscores=True)
        ranges = pipe.execute()
    candidates = sorted(
        ((score, index, member) for index, found in enumerate(ranges) for member, score in found),
        reverse=True,
    )[:limit]
    with redis_client().pipeline(transaction=False) as pipe:
        for _, index, member in candidates:
            pipe.hget(queues[index].dead_messages, member)
        records = pipe.execute()
    letters = [DeadLetter(**json.loads(raw)) for raw in records if raw is not None]
    return DeadLetterPage(letters=letters, total=sum(counts))


#: Ids per HMGET in ``find``: a "select all" over a large log must not become one command that stalls Redis.
FIND_CHUNK = 1000


def find(envelope_ids: Iterable[str]) -> dict[str, DeadLetter]:
    """The dead letters of these envelopes, by envelope id, read in one round trip.

    A letter is stored under its Dramatiq message id, which for every message
    mailqueue queues is its envelope id; so this reads each configured queue's
    records directly (HMGET, 1,000 ids a command), never scanning the dead letters.
    """
    wanted = sorted(set(envelope_ids))
    found: dict[str, DeadLetter] = {}
    if not wanted:
        return found
    namespace = get_config().namespace
    chunks = [wanted[start : start + FIND_CHUNK] for start in range(0, len(wanted), FIND_CHUNK)]
    with redis_client().pipeline(transaction=False) as pipe:
        for name in _queues(None):
            for chunk in chunks:
                pipe.hmget(QueueKeys.of(namespace, name).dead_messages, chunk)
        replies = iter(pipe.execute())
    for _ in _queues(None):
        for chunk in chunks:
            for envelope_id, raw in zip(chunk, next(replies), strict=True):
                if raw is not None:
                    found[envelope_id] = DeadLetter(**json.loads(raw))
    return found


def count(queue: str) -> int:
    """How many messages of ``queue`` are dead-lettered."""
    return int(redis_client().zcard(QueueKeys.of(get_config().namespace, queue).dead))


def _remove(letters: Iterable[DeadLetter], *, requeue: bool) -> int:
    letters = list(letters)
    if not letters:
        return 0
    config = get_config()
    namespace = config.namespace
    requeued = []
    with redis_client().pipeline(transaction=True) as pipe:
        for letter in letters:
            keys = QueueKeys.of(namespace, letter.queue)
            pipe.zrem(keys.dead, letter.id)
            pipe.hdel(keys.dead_messages, letter.id)
            if requeue:
                encoded = encode(Envelope.decode(letter.payload), ready_at=time.time())
                ready = QueueKeys.of(namespace, encoded.queue)
                pipe.hset(ready.messages, encoded.redis_id, encoded.data)
                pipe.rpush(ready.ready, encoded.redis_id)
                if config.log.enabled:
                    entry = eventlog.requeued(encoded.envelope_id, encoded.queue)
                    pipe.xadd(
                        events_key(namespace),
                        {eventlog.FIELD: entry},
                        maxlen=config.log.stream_maxlen,
                        approximate=True,
                    )
                requeued.append(MessageRequeued(envelope_id=encoded.envelope_id, queue=encoded.queue))
        pipe.execute()
    for event in requeued:
        announce(event)
    return len(letters)


def requeue(letters: Iterable[DeadLetter]) -> int:
    """Put dead letters back on their queues with a fresh retry budget.

    Raises EnvelopeError for a payload that cannot be read (purge those instead).
    """
    return _remove(letters, requeue=True)


def purge(letters: Iterable[DeadLetter]) -> int:
    """Delete dead letters for good."""
    return _remove(letters, requeue=False)


def requeue_readable(letters: Iterable[DeadLetter], *, chunk: int = SCAN_CHUNK) -> tuple[int, list[DeadLetter]]:
    """Requeue every letter whose payload reads, ``chunk`` a transaction; return how many, and those that do not.

    For "requeue all matching": one unreadable letter must not hold back the others (``requeue`` refuses a
    whole batch), and thousands of letters must not be one MULTI that stalls Redis.
    """
    readable: list[DeadLetter] = []
    unreadable: list[DeadLetter] = []
    for letter in letters:
        try:
            Envelope.decode(letter.payload)
        except EnvelopeError:
            unreadable.append(letter)
        else:
            readable.append(letter)
    requeued = sum(requeue(readable[start : start + chunk]) for start in range(0, len(readable), chunk))
    return requeued, unreadable


def purge_all(letters: Iterable[DeadLetter], *, chunk: int = SCAN_CHUNK) -> int:
    """Purge ``letters``, ``chunk`` a transaction."""
    letters = list(letters)
    return sum(purge(letters[start : start + chunk]) for start in range(0, len(letters), chunk))
