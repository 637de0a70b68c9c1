"""The dead-letter store: messages no provider could deliver, with their reason.

Kept in Redis per queue (a sorted set by time plus a hash of records) until an
operator requeues or purges them; nothing here expires on its own. Dramatiq's
own dead-letter set is not used: it keeps the payload as enqueued for the last
attempt, without that attempt's error, and expires after a week.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from . import eventlog
from .client import LuaScript, redis_client
from .conf import get_config
from .enqueue import EncodedMessage, encode
from .envelope import Envelope
from .exceptions import EnvelopeError
from .keys import QueueKeys, events_key, wake_channel
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
    #: Seconds: only letters that died at least this long ago (relative to the clock of whoever applies it).
    older_than: float | None = None
    #: Epoch seconds: only letters that died at or before this moment. Absolute, so a filter confirmed on the
    #: dashboard means the same letters when the server applies it again later (``older_than`` would slide).
    failed_before: float | None = None

    def matches(self, letter: DeadLetter, *, now: float | None = None) -> bool:
        return self.matches_fields(letter) and letter.failed_at <= self.newest(time.time() if now is None else now)

    def matches_fields(self, letter: DeadLetter) -> bool:
        """Everything but the age (which a scan answers from the sorted set before reading any record)."""
        if self.queue is not None and letter.queue != self.queue:
            return False
        if self.provider is not None and letter.provider != self.provider:
            return False
        return self.error_type is None or letter.error_type == self.error_type

    @property
    def reads_records(self) -> bool:
        """Whether matching needs each letter's record; queue and age are answered by the sorted sets alone."""
        return self.provider is not None or self.error_type is not None

    def newest(self, now: float) -> float:
        """The latest time of death a matching letter may have."""
        relative = math.inf if self.older_than is None else now - self.older_than
        return min(relative, math.inf if self.failed_before is None else self.failed_before)


def _score(bound: float) -> str | float:
    return "+inf" if math.isinf(bound) else bound


#: Records per HMGET (and ids per ZRANGEBYSCORE) while scanning: a filter over a large store must not become one
#: command that stalls Redis, nor one list of every payload in this process.
SCAN_CHUNK = 500
#: Ids per ZRANGEBYSCORE when only the ids are read (fingerprinting a queue-and-age selection): they are small.
ID_CHUNK = 5000


def _id_chunks(keys: QueueKeys, newest: float, *, size: int) -> Iterator[list[tuple[str, float]]]:
    """The (id, time of death) of ``keys``' letters up to ``newest``, in sorted-set order, ``size`` at a time.

    Paged by score, not by offset: a letter removed meanwhile (a colleague's requeue) does not shift the pages,
    so none is skipped. The ids already returned at the page's lowest score are asked for again and dropped.
    """
    client = redis_client()
    low: float | None = None
    seen_at_low: set[str] = set()
    while True:
        asked = size + len(seen_at_low)
        found: list[tuple[bytes | str, float]] = client.zrangebyscore(  # type: ignore[assignment]
            keys.dead, "-inf" if low is None else low, _score(newest), start=0, num=asked, withscores=True
        )
        page = [(member.decode() if isinstance(member, bytes) else member, float(score)) for member, score in found]
        fresh = [(member, score) for member, score in page if not (score == low and member in seen_at_low)]
        if fresh:
            yield fresh
        if len(page) < asked:
            return
        last = page[-1][1]
        seen_at_low = (seen_at_low if last == low else set()) | {member for member, score in page if score == last}
        low = last


def _records(keys: QueueKeys, ids: list[str]) -> list[DeadLetter]:
    """The records of ``ids`` (one HMGET), skipping those requeued or purged since the ids were read."""
    return [DeadLetter(**json.loads(raw)) for raw in redis_client().hmget(keys.dead_messages, ids) if raw is not None]


def _matching_chunks(where: DeadLetterFilter, newest: float) -> Iterator[tuple[str, list[DeadLetter]]]:
    """Per chunk: a queue, and the letters of it ``where`` matches, oldest first (sorted-set order)."""
    namespace = get_config().namespace
    for name in _queues(where.queue):
        keys = QueueKeys.of(namespace, name)
        for chunk in _id_chunks(keys, newest, size=SCAN_CHUNK):
            letters = _records(keys, [member for member, _ in chunk])
            yield name, [letter for letter in letters if where.matches_fields(letter)]


def matching(where: DeadLetterFilter, *, now: float | None = None) -> Iterator[DeadLetter]:
    """The dead letters ``where`` matches, oldest first within each queue, read SCAN_CHUNK at a time.

    The age bounds are a ZRANGEBYSCORE on each queue's sorted set, so letters younger than them are never read;
    provider and error class are matched on the records read.
    """
    newest = where.newest(time.time() if now is None else now)
    for _, letters in _matching_chunks(where, newest):
        yield from letters


def iter_dead(queue: str | None = None, *, older_than: float | None = None) -> Iterator[DeadLetter]:
    """Dead letters, oldest first, optionally for one queue or older than N seconds."""
    return matching(DeadLetterFilter(queue=queue, older_than=older_than))


class Fingerprint:
    """A sha256 over (queue, id) pairs in the order the scan meets them, and their count.

    What the dashboard shows an operator and what the server acts on are compared by this: the same count of
    different letters (one requeued by a colleague, another recorded since) is told apart.
    """

    def __init__(self) -> None:
        self._hash = hashlib.sha256()
        self.count = 0

    def add(self, queue: str, letter_id: str | bytes) -> None:
        # Newline-separated: neither a queue name nor a message id holds one.
        member = letter_id if isinstance(letter_id, bytes) else letter_id.encode()
        self._hash.update(queue.encode() + b"\n" + member + b"\n")
        self.count += 1

    @property
    def digest(self) -> str:
        return self._hash.hexdigest()


def _ids_only(keys: QueueKeys, newest: float) -> Iterator[list[bytes | str]]:
    """``keys``' letter ids up to ``newest`` in sorted-set order, ID_CHUNK a command, without their scores.

    The letters up to ``newest`` are the set's first ZCOUNT ranks, read by rank (ZRANGE by index: each command
    costs its own chunk, where an offset would walk the set from its start again); without the scores, which
    redis-py would turn into floats at six times the cost of the ids. A letter removed meanwhile shifts the ranks,
    which changes the fingerprint, so an action refuses instead of guessing.
    """
    client = redis_client()
    total = int(client.zcount(keys.dead, "-inf", _score(newest)))
    for start in range(0, total, ID_CHUNK):
        found: list[bytes | str] = client.zrange(keys.dead, start, min(start + ID_CHUNK, total) - 1)  # type: ignore[assignment]
        if found:
            yield found


@dataclass(frozen=True, kw_only=True, slots=True)
class Selection:
    """The letters a filter matched at one moment, by id only (their payloads stay in Redis until acted on)."""

    #: (queue, id) in scan order.
    ids: list[tuple[str, str]]
    digest: str
    #: The latest time of death selected: a later death of one of the ids is not part of the selection.
    newest: float = math.inf

    @property
    def count(self) -> int:
        return len(self.ids)


def select(where: DeadLetterFilter, *, now: float | None = None) -> Selection:
    """The ids ``where`` matches now, with their fingerprint: what "act on all matching" acts on, once confirmed.

    Records are read only for a provider or error class filter, SCAN_CHUNK at a time, and not kept.
    """
    newest = where.newest(time.time() if now is None else now)
    fingerprint = Fingerprint()
    ids: list[tuple[str, str]] = []
    # The latest death selected: acting, a later death of one of these ids (requeued, dead again) is left alone.
    latest = -math.inf
    if where.reads_records:
        for name, letters in _matching_chunks(where, newest):
            for letter in letters:
                fingerprint.add(name, letter.id)
                ids.append((name, letter.id))
                latest = max(latest, letter.failed_at)
    else:
        namespace = get_config().namespace
        for name in _queues(where.queue):
            keys = QueueKeys.of(namespace, name)
            last: bytes | str | None = None
            for chunk in _ids_only(keys, newest):
                for member in chunk:
                    fingerprint.add(name, member)
                    ids.append((name, member.decode() if isinstance(member, bytes) else member))
                last = chunk[-1]
            if last is not None:
                # In sorted-set order the last id died last; gone meanwhile, the bound itself stands.
                score = redis_client().zscore(keys.dead, last)
                latest = max(latest, newest if score is None else float(score))
    return Selection(ids=ids, digest=fingerprint.digest, newest=min(newest, latest) if ids else newest)


@dataclass(frozen=True, kw_only=True, slots=True)
class DeadLetterPage:
    """The newest letters a filter matches, and how many it matches in all, with their fingerprint.

    ``as_of`` is the newest time of death among all matched (None when none): the filter with ``failed_before``
    set to it names the same letters later, however many die meanwhile, and ``digest`` tells whether it still does.
    """

    letters: list[DeadLetter]
    total: int
    digest: str
    as_of: float | None


def newest_matching(where: DeadLetterFilter, *, limit: int = 100, now: float | None = None) -> DeadLetterPage:
    """Up to ``limit`` letters ``where`` matches, newest first, with the count and fingerprint of all it matches.

    Filtered by queue and age only, the page is three round trips (ZCOUNT per queue, the newest ids per queue as
    the last ``limit`` of the range with their times, their records) and the fingerprint reads the matching ids
    up to the newest of those times, ID_CHUNK a command, never their records; a provider or error class filter
    reads every record of the queues in range, SCAN_CHUNK at a time, keeping only the newest ``limit`` per queue.
    Only commands the web processes' ACL grants (docs/operating.md) are used: ZRANGEBYSCORE with an offset, not
    ZREVRANGEBYSCORE.
    """
    newest = where.newest(time.time() if now is None else now)
    fingerprint = Fingerprint()
    namespace = get_config().namespace
    if where.reads_records:
        kept: dict[str, deque[DeadLetter]] = {}
        as_of: float | None = None
        for name, letters in _matching_chunks(where, newest):
            shown = kept.setdefault(name, deque(maxlen=limit))  # oldest first: earlier letters fall off the page
            for letter in letters:
                fingerprint.add(name, letter.id)
                shown.append(letter)
                as_of = letter.failed_at if as_of is None else max(as_of, letter.failed_at)
        page = sorted((letter for shown in kept.values() for letter in shown), key=lambda x: x.failed_at, reverse=True)
        return DeadLetterPage(letters=page[:limit], total=fingerprint.count, digest=fingerprint.digest, as_of=as_of)
    names = list(_queues(where.queue))
    queues = [QueueKeys.of(namespace, name) for name in names]
    bound = _score(newest)
    with redis_client().pipeline(transaction=False) as pipe:
        for keys in queues:
            pipe.zcount(keys.dead, "-inf", bound)
        counts = [int(count) for count in pipe.execute()]
    with redis_client().pipeline(transaction=False) as pipe:
        for keys, count in zip(queues, counts, strict=True):
            pipe.zrangebyscore(keys.dead, "-inf", bound, start=max(count - limit, 0), num=limit, withscores=True)
        ranges = pipe.execute()
    candidates = sorted(
        ((score, index, member) for index, found in enumerate(ranges) for member, score in found),
        reverse=True,
    )[:limit]
    # Everything fingerprinted died no later than the newest letter listed: one recorded since is in neither.
    as_of = candidates[0][0] if candidates else None
    if as_of is not None:
        for name, keys in zip(names, queues, strict=True):
            for chunk in _ids_only(keys, as_of):
                for member in chunk:
                    fingerprint.add(name, member)
    with redis_client().pipeline(transaction=False) as pipe:
        for _, index, member in candidates:
            pipe.hget(queues[index].dead_messages, member)
        records = pipe.execute()
    letters = [DeadLetter(**json.loads(raw)) for raw in records if raw is not None]
    return DeadLetterPage(letters=letters, total=fingerprint.count, digest=fingerprint.digest, as_of=as_of)


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


#: KEYS: the message log's stream, then per letter its dead set and dead records hash and, to requeue, the
#: messages hash and ready list of the queue it goes back to. ARGV: the stream's MAXLEN, the keys per letter (2 to
#: purge, 4 to requeue), then per letter its id, the latest time of death it may have (the one read, just above)
#: and, to requeue, its redis id, message data and ``requeued`` event (or ""). A letter is acted on only if this
#: call removed it from the dead set, and only the death that was read: two operators (or a double click) acting
#: on the same letters at once push each message once and each call reports only its own, and a letter that a
#: colleague requeued and that died again meanwhile (same id, a later death) is left for a fresh look.
#: Returns the ids acted on.
ACT_SCRIPT = """
local per = tonumber(ARGV[2])
local step = per == 4 and 5 or 2
local done = {}
local arg = 3
for key = 2, #KEYS, per do
  local id = ARGV[arg]
  local died = tonumber(redis.call("zscore", KEYS[key], id))
  if died and died <= tonumber(ARGV[arg + 1]) and redis.call("zrem", KEYS[key], id) == 1 then
    redis.call("hdel", KEYS[key + 1], id)
    if per == 4 then
      redis.call("hset", KEYS[key + 2], ARGV[arg + 2], ARGV[arg + 3])
      redis.call("rpush", KEYS[key + 3], ARGV[arg + 2])
      if ARGV[arg + 4] ~= "" then
        redis.call("xadd", KEYS[1], "maxlen", "~", ARGV[1], "*", "e", ARGV[arg + 4])
      end
    end
    done[#done + 1] = id
  end
  arg = arg + step
end
return done
"""
ACT = LuaScript(ACT_SCRIPT)

#: Most bytes of requeued messages one ACT call carries: 500 letters with large attachments must not become one
#: command beyond Redis's query buffer limit (1 GB by default), nor one that stalls it.
ACT_BYTES = 16 * 1024 * 1024
#: Slack on a letter's time of death as read: the float printed and parsed again, never a later death.
DIED_SLACK = 0.001


def _act(letters: list[DeadLetter], *, requeue: bool) -> list[DeadLetter]:
    """Purge or requeue ``letters``; return those these calls removed (not someone else).

    One script call, or several when the requeued messages add up to more than ACT_BYTES.
    """
    if not letters:
        return []
    # Encoded before anything is removed: an unreadable payload raises here, with nothing done. Stamped with
    # now: the queue's "oldest waiting" counts from the requeue, not from the send_mail() days ago.
    now = time.time()
    encoded = [encode(Envelope.decode(letter.payload), ready_at=now) for letter in letters] if requeue else []
    done: list[DeadLetter] = []
    start, size = 0, 0
    for index in range(len(letters)):
        size += len(encoded[index].data) if requeue else 0
        if size > ACT_BYTES and index > start:
            done += _act_once(letters[start:index], encoded[start:index])
            start, size = index, len(encoded[index].data)
    done += _act_once(letters[start:], encoded[start:])
    return done


def _act_once(letters: list[DeadLetter], encoded: list[EncodedMessage]) -> list[DeadLetter]:
    """One ACT call over ``letters`` (requeued as ``encoded`` when given, else purged)."""
    config = get_config()
    namespace = config.namespace
    requeue = bool(encoded)
    keys: list[Any] = [events_key(namespace)]
    args: list[Any] = [config.log.stream_maxlen, 4 if requeue else 2]
    queued: dict[str, MessageRequeued] = {}
    for index, letter in enumerate(letters):
        dead = QueueKeys.of(namespace, letter.queue)
        keys += [dead.dead, dead.dead_messages]
        args += [letter.id, repr(letter.failed_at + DIED_SLACK)]
        if requeue:
            message = encoded[index]
            ready = QueueKeys.of(namespace, message.queue)
            keys += [ready.messages, ready.ready]
            event = eventlog.requeued(message.envelope_id, message.queue) if config.log.enabled else b""
            args += [message.redis_id, message.data, event]
            queued[letter.id] = MessageRequeued(envelope_id=message.envelope_id, queue=message.queue)
    done = {raw.decode() if isinstance(raw, bytes) else raw for raw in ACT(keys, args)}
    woken = {queued[letter_id].queue for letter_id in done if letter_id in queued}
    if woken:
        _wake(namespace, woken)
    for letter_id, requeued in queued.items():
        if letter_id in done:
            announce(requeued)
    return [letter for letter in letters if letter.id in done]


def _wake(namespace: str, queues: set[str]) -> None:
    """Tell the queues' idle workers that mail is back (as the enqueue does), rather than leave it to their poll.

    A PUBLISH the Redis user may not make changes nothing: the requeue is done, and the workers' poll finds it.
    """
    with redis_client().pipeline(transaction=False) as pipe:
        for queue in sorted(queues):
            pipe.publish(wake_channel(namespace, queue), "")
        pipe.execute(raise_on_error=False)


def _in_chunks(letters: Iterable[DeadLetter], chunk: int) -> Iterator[list[DeadLetter]]:
    batch: list[DeadLetter] = []
    for letter in letters:
        batch.append(letter)
        if len(batch) == chunk:
            yield batch
            batch = []
    if batch:
        yield batch


def requeue(letters: Iterable[DeadLetter], *, chunk: int = SCAN_CHUNK) -> int:
    """Put dead letters back on their queues with a fresh retry budget; return how many this call put back.

    A letter already requeued or purged (by someone else, meanwhile) is skipped, not pushed twice. Raises
    EnvelopeError for a payload that cannot be read, before anything is done (purge those instead).
    """
    letters = list(letters)
    for letter in letters:
        Envelope.decode(letter.payload)
    return sum(len(_act(batch, requeue=True)) for batch in _in_chunks(letters, chunk))


def purge(letters: Iterable[DeadLetter], *, chunk: int = SCAN_CHUNK) -> int:
    """Delete dead letters for good, ``chunk`` a script call; return how many this call deleted."""
    return sum(len(_act(batch, requeue=False)) for batch in _in_chunks(letters, chunk))


def requeue_readable(letters: Iterable[DeadLetter], *, chunk: int = SCAN_CHUNK) -> tuple[int, list[DeadLetter]]:
    """Requeue every letter whose payload reads, ``chunk`` a script call; return how many, and those that do not.

    For "requeue all matching": one unreadable letter must not hold back the others (``requeue`` refuses a
    whole batch), and thousands of letters must not be one call that stalls Redis.
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
    return requeue(readable, chunk=chunk), unreadable


def _selected_letters(selection: Selection) -> Iterator[list[DeadLetter]]:
    """The records of ``selection``'s ids, SCAN_CHUNK per HMGET; those acted on (or dead again) meanwhile are left
    out."""
    namespace = get_config().namespace
    start = 0
    while start < len(selection.ids):
        queue = selection.ids[start][0]
        end = start
        while end < len(selection.ids) and end - start < SCAN_CHUNK and selection.ids[end][0] == queue:
            end += 1
        letters = _records(QueueKeys.of(namespace, queue), [letter_id for _, letter_id in selection.ids[start:end]])
        # A letter requeued by someone else that died again since is a later death, not the one selected.
        yield [letter for letter in letters if letter.failed_at <= selection.newest]
        start = end


def requeue_selected(selection: Selection) -> tuple[int, list[DeadLetter]]:
    """Requeue the letters of ``selection`` that still are dead, SCAN_CHUNK at a time; as ``requeue_readable``."""
    requeued = 0
    unreadable: list[DeadLetter] = []
    for letters in _selected_letters(selection):
        done, unread = requeue_readable(letters)
        requeued += done
        unreadable += unread
    return requeued, unreadable


def purge_selected(selection: Selection) -> int:
    """Purge the letters of ``selection`` that still are dead; return how many this call deleted."""
    return sum(purge(letters) for letters in _selected_letters(selection))
