"""May this message go to this provider now? And, afterwards, how did it go?

Everything a provider's workers must agree on lives in Redis and changes in
one Lua script call per step, on Redis's clock (so hosts whose clocks differ
still share one limit):

* ``admit`` (before a send): was the envelope already delivered (a redelivery
  after a crash), or is another worker sending it right now? Is the provider's circuit open? Is a concurrency slot free?
  Which rate-limit token does this send get, and how long until it is due?
* ``settle`` (after the send): record the delivery, the provider's health
  (closing or opening its circuit) and its per-minute counters.

Two round trips per delivered message, whatever is configured.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Literal

import redis
from dramatiq.common import current_millis
from tenacity import Retrying, retry_if_exception_type, stop_after_delay, wait_exponential

from mailqueue.client import LuaScript, redis_client
from mailqueue.conf import MailQueueConfig, ProviderConfig, QueueConfig
from mailqueue.envelope import random_id
from mailqueue.keys import (
    STATS_TTL,
    ProviderKeys,
    delivered_key,
    events_key,
    heartbeats_key,
    keepalive_key,
    sending_key,
)

#: KEYS: delivered, circuit, in-flight, sending claim, Dramatiq's heartbeats, the keepalive marks, then one
#: bucket per rate limit.
#: ARGV: lease token, in-flight lease ms, probe lease ms, max concurrency (0: none),
#: longest wait for a token in ms, claim token, the worker's clock in ms, the heartbeat
#: timeout in ms, a claim of this worker's that sent nothing ("" if none), then (interval ms,
#: burst) per rate limit. A claim held by a worker whose heartbeat is older than the timeout
#: (or gone) is a dead worker's: it is taken over, as is the claim that sent nothing; except after a gap in
#: every worker's keepalive (Redis was away, see RECOVER in workers/dramatiq_redis.py), when a stale heartbeat
#: says nothing: until the grace ends, or while the gap lasts, every owner counts as alive (the copy asks
#: again one heartbeat timeout after the grace, not when the claim expires).
#: Returns {outcome, number, text}: {"delivered", 0, provider}, {"claimed", retry ms, ""},
#: {"open", retry ms, ""}, {"busy", 0, ""}, {"later", wait ms, ""}, or
#: {"go", wait in µs, "closed" | "probe"}.
ADMIT_SCRIPT = """
local delivered = redis.call("get", KEYS[1])
if delivered then return {"delivered", 0, delivered} end
local clock = redis.call("time")
local now = tonumber(clock[1]) * 1000 + tonumber(clock[2]) / 1000
local holder = redis.call("get", KEYS[4])
if holder and holder ~= ARGV[6] and holder ~= ARGV[9] then
  local owner = string.match(holder, "@(.+)$")
  local alive = not owner
  local wait = math.max(redis.call("pttl", KEYS[4]), 1)
  if owner then
    local beat = redis.call("zscore", KEYS[5], owner)
    alive = beat and tonumber(beat) >= tonumber(ARGV[7]) - tonumber(ARGV[8])
  end
  if not alive then
    local marks = redis.call("hmget", KEYS[6], "last", "grace_until", "gap")
    local last, grace_until = tonumber(marks[1]), tonumber(marks[2]) or 0
    alive = (last and now - last > tonumber(marks[3])) or now < grace_until
    -- Ask again once the owner's heartbeat tells the truth, not when its claim expires (the time limit).
    if alive then wait = math.min(wait, math.ceil(math.max(grace_until - now, 0)) + tonumber(ARGV[8])) end
  end
  if alive then return {"claimed", wait, ""} end
end

local role = "closed"
local circuit = redis.call("hmget", KEYS[2], "state", "reopen_at", "probe_until")
if circuit[1] == "open" then
  local reopen_at = tonumber(circuit[2]) or 0
  if now < reopen_at then return {"open", math.ceil(reopen_at - now), ""} end
  role = "probe"
elseif circuit[1] == "half-open" then
  local probe_until = tonumber(circuit[3]) or 0
  if now < probe_until then return {"open", math.ceil(probe_until - now), ""} end
  role = "probe"
end

local concurrency = tonumber(ARGV[4])
if concurrency > 0 then
  redis.call("zremrangebyscore", KEYS[3], "-inf", now)
  if redis.call("zcard", KEYS[3]) >= concurrency then return {"busy", 0, ""} end
end

-- GCRA: a bucket's theoretical arrival time (tat) advances by one interval per
-- send; a send may go at tat - (burst - 1) * interval. Reserve the slot even if
-- it is in the future, as long as the wait is short: threads then sleep until
-- their own slot and the sustained rate is exact.
local wait = 0
local tats = {}
for i = 7, #KEYS do
  local interval = tonumber(ARGV[10 + 2 * (i - 7)])
  local burst = tonumber(ARGV[11 + 2 * (i - 7)])
  local tat = math.max(tonumber(redis.call("get", KEYS[i])) or now, now)
  wait = math.max(wait, tat - (burst - 1) * interval - now)
  tats[i] = tat + interval
end
-- Too long to sleep on: nothing is reserved, the message asks again after the wait.
if wait > tonumber(ARGV[5]) then return {"later", math.ceil(wait), ""} end
for i = 7, #KEYS do
  redis.call("set", KEYS[i], tostring(tats[i]), "px", math.ceil(tats[i] - now) + 1000)
end
redis.call("set", KEYS[4], ARGV[6], "px", ARGV[2])
if concurrency > 0 then redis.call("zadd", KEYS[3], now + tonumber(ARGV[2]), ARGV[1]) end
if role == "probe" then
  redis.call("hset", KEYS[2], "state", "half-open", "probe_until", tostring(now + tonumber(ARGV[3])))
end
return {"go", math.floor(wait * 1000), role}
"""

#: KEYS: delivered, circuit, in-flight, this minute's counters, sending claim, the message
#: log's stream, and with an early acknowledgement Dramatiq's in-progress set, message hash
#: and heartbeats.
#: ARGV: outcome ("sent", "failed", "rejected", "aborted"), provider alias, lease token,
#: dedup window s, failure threshold, cooldown ms, counters' ttl s, the stream's MAXLEN, the
#: message log's event ("" for none), and with an early acknowledgement the Redis message id,
#: the worker's broker id and its clock in ms. The event is appended first, whatever the
#: outcome; a "sent" event only when the delivery record is not there yet: a settle run
#: again (its reply lost) logs the delivery once.
#: "failed" is a transient provider failure (it counts towards opening the circuit);
#: "rejected" means the provider answered but refused this message (it is up);
#: "faulted" means the message itself is at fault (it cannot be rendered, addressed,
#: or the provider's checks refused its content): no evidence about the provider, so
#: the circuit is left as it is, except that a probe that was one hands the probe on;
#: "aborted" only releases the in-flight slot. "sent" also drops the sending claim,
#: which the delivery record replaces. Each outcome but "aborted" is counted in this
#: minute's counters under its own name ("sent", "failed", "rejected", "faulted").
#: Returns {the circuit's state, 1 if the Dramatiq message was acknowledged here else 0}.
SETTLE_SCRIPT = """
local outcome = ARGV[1]
local acked = 0
redis.call("zrem", KEYS[3], ARGV[3])
if ARGV[9] ~= "" and not (outcome == "sent" and redis.call("exists", KEYS[1]) == 1) then
  redis.call("xadd", KEYS[6], "maxlen", "~", ARGV[8], "*", "e", ARGV[9])
end
if outcome == "aborted" then return {redis.call("hget", KEYS[2], "state") or "closed", acked} end
if outcome == "faulted" then
  redis.call("hincrby", KEYS[4], "faulted", 1)
  redis.call("expire", KEYS[4], ARGV[7])
  local state = redis.call("hget", KEYS[2], "state") or "closed"
  if state == "half-open" then redis.call("hset", KEYS[2], "probe_until", "0") end
  return {state, acked}
end
local clock = redis.call("time")
local now = tonumber(clock[1]) * 1000 + tonumber(clock[2]) / 1000
if outcome == "sent" then
  redis.call("set", KEYS[1], ARGV[2], "ex", ARGV[4])
  redis.call("del", KEYS[5])
  if #KEYS == 9 then
    -- Dramatiq's own ack (dispatch.lua), done here to save the worker a round trip.
    redis.call("zadd", KEYS[9], ARGV[12], ARGV[11])
    if redis.call("srem", KEYS[7], ARGV[10]) > 0 then
      redis.call("hdel", KEYS[8], ARGV[10])
      acked = 1
    end
  end
end
redis.call("hincrby", KEYS[4], outcome, 1)
redis.call("expire", KEYS[4], ARGV[7])

local state = redis.call("hget", KEYS[2], "state") or "closed"
if outcome == "failed" then
  local failures = redis.call("hincrby", KEYS[2], "failures", 1)
  if state == "half-open" or (state == "closed" and failures >= tonumber(ARGV[5])) then
    redis.call("hset", KEYS[2], "state", "open", "opened_at", tostring(now),
      "reopen_at", tostring(now + tonumber(ARGV[6])))
    redis.call("hdel", KEYS[2], "probe_until")
    return {"open", acked}
  end
  return {state, acked}
end
if state ~= "closed" then
  redis.call("hset", KEYS[2], "state", "closed", "failures", 0, "closed_at", tostring(now))
  redis.call("hdel", KEYS[2], "reopen_at", "probe_until")
elseif redis.call("hget", KEYS[2], "failures") ~= "0" then
  redis.call("hset", KEYS[2], "failures", 0)
end
return {"closed", acked}
"""

#: KEYS: sending claim; ARGV: claim token. Drops the claim if it is still ours.
RELEASE_SCRIPT = """
if redis.call("get", KEYS[1]) == ARGV[1] then return redis.call("del", KEYS[1]) end
return 0
"""

#: Seconds to keep trying to record a delivery while Redis is away.
SENT_RECORD_PATIENCE = 60.0

#: Claims of this process whose ``admit`` got no reply (Redis timed out or dropped the connection):
#: Redis may have run the call later and set the claim, though the attempt sent nothing. By envelope
#: id, the claim. The next attempt here takes such a claim over, and the keepalive thread drops the
#: rest once Redis answers again; left alone, each would hold its message back for the time limit.
_unanswered: dict[str, str] = {}
#: At most this many are remembered (a long outage under heavy traffic).
UNANSWERED_LIMIT = 10_000

Outcome = Literal["go", "delivered", "claimed", "open", "busy", "later"]
Result = Literal["sent", "failed", "rejected", "faulted", "aborted"]


@dataclass(frozen=True, slots=True)
class Admission:
    """The answer of ``admit``: go (after ``wait`` seconds), or why not and for how long."""

    outcome: Outcome
    #: go: seconds to sleep until the reserved token is due; otherwise seconds until worth asking again.
    wait: float
    #: delivered: the provider that took it earlier; go: "closed" or "probe" (the half-open trial send).
    detail: str
    #: Identifies this send's in-flight slot, released by ``settle``.
    token: str


@dataclass(frozen=True, slots=True)
class AckTarget:
    """The Dramatiq message a "sent" record also acknowledges, in the same script call.

    Built by the Dramatiq adapter (``workers.dramatiq_redis.ack_target``): the
    worker's in-progress set, the queue's message hash, the heartbeats set,
    the message's Redis id and the worker's broker id.
    """

    in_progress: str
    messages: str
    heartbeats: str
    redis_id: str
    broker_id: str


@dataclass(frozen=True, slots=True)
class Settled:
    """The answer of ``settle``: the provider's circuit state, and whether the Dramatiq message was acked."""

    circuit: str
    acked: bool


ADMIT = LuaScript(ADMIT_SCRIPT)
SETTLE = LuaScript(SETTLE_SCRIPT)
RELEASE = LuaScript(RELEASE_SCRIPT)


def new_claim(owner: str | None = None) -> str:
    """A token naming one delivery attempt: it claims the envelope while that attempt sends.

    ``owner`` is the Dramatiq broker id of the worker making the attempt: once
    that worker's heartbeat expires, its claim no longer holds other copies back.
    Without one the claim holds until it expires (the queue's time limit).
    """
    return f"{random_id()}@{owner}" if owner else random_id()


def admit(
    envelope_id: str, provider: ProviderConfig, queue: QueueConfig, config: MailQueueConfig, claim: str | None = None
) -> Admission:
    """Ask whether ``envelope_id`` may be sent through ``provider`` now, reserving what it needs.

    ``claim`` (from ``new_claim``) names the attempt; a go claims the envelope
    for the queue's time limit, so another copy of it (a redelivery while this
    attempt still runs) waits instead of sending too.
    """
    limits = provider.rate_limits
    keys = ProviderKeys.of(config.namespace, provider.alias)
    token = random_id()
    rate_args: list[float] = []
    for limit in limits:
        rate_args += (limit.interval * 1000, limit.burst)
    unanswered = _unanswered.get(envelope_id, "")
    try:
        outcome, number, detail = ADMIT(
            [
                delivered_key(config.namespace, envelope_id),
                keys.circuit,
                keys.in_flight,
                sending_key(config.namespace, envelope_id),
                heartbeats_key(config.namespace),
                keepalive_key(config.namespace),
                *(keys.rate(limit.count, limit.period, limit.burst) for limit in limits),
            ],
            args=[
                token,
                queue.time_limit,
                math.ceil(provider.cooldown * 1000),
                provider.max_concurrency or 0,
                math.ceil(config.rate_limit_max_wait * 1000),
                claim or token,
                current_millis(),
                config.heartbeat_timeout,
                unanswered,
                *rate_args,
            ],
        )
    except (redis.ConnectionError, redis.TimeoutError):
        if len(_unanswered) < UNANSWERED_LIMIT:
            _unanswered[envelope_id] = claim or token
        raise
    if unanswered and outcome == b"go":
        _unanswered.pop(envelope_id, None)  # taken over
    outcome = outcome.decode()
    scale = 1_000_000 if outcome == "go" else 1000
    return Admission(outcome=outcome, wait=int(number) / scale, detail=detail.decode(), token=token)


def settle(
    admission: Admission,
    envelope_id: str,
    provider: ProviderConfig,
    result: Result,
    config: MailQueueConfig,
    ack: AckTarget | None = None,
    event: bytes = b"",
) -> Settled:
    """Record how the send went: the provider's circuit state afterwards, and whether ``ack`` was acknowledged.

    A delivery record is what stops a redelivered message from being sent
    twice (and "sent" frees the provider's concurrency slot), so recording it
    is retried through a Redis outage of up to SENT_RECORD_PATIENCE seconds;
    the message's acknowledgement waits for Redis anyway. With ``ack``, a
    "sent" also acknowledges the Dramatiq message in the same call. ``event``
    (from ``mailqueue.eventlog``) is appended to the message log's stream in
    that call too.
    """
    keys = ProviderKeys.of(config.namespace, provider.alias)
    script_keys = [
        delivered_key(config.namespace, envelope_id),
        keys.circuit,
        keys.in_flight,
        keys.stats(int(time.time() // 60)),
        sending_key(config.namespace, envelope_id),
        events_key(config.namespace),
    ]
    script_args: list[Any] = [
        result,
        provider.alias,
        admission.token,
        config.dedup_window,
        provider.failure_threshold,
        math.ceil(provider.cooldown * 1000),
        STATS_TTL,
        config.log.stream_maxlen,
        event,
    ]
    if ack is not None and result == "sent":
        script_keys += (ack.in_progress, ack.messages, ack.heartbeats)
        script_args += (ack.redis_id, ack.broker_id, current_millis())
    try:
        state, acked = SETTLE(script_keys, script_args)
    except (redis.ConnectionError, redis.TimeoutError):
        if result != "sent":
            raise
        retrying = Retrying(
            stop=stop_after_delay(SENT_RECORD_PATIENCE),
            wait=wait_exponential(multiplier=0.2, max=5),
            retry=retry_if_exception_type((redis.ConnectionError, redis.TimeoutError)),
            reraise=True,
        )
        for attempt in retrying:
            with attempt:
                state, acked = SETTLE(script_keys, script_args)
    return Settled(circuit=state.decode() if isinstance(state, bytes) else str(state), acked=bool(acked))


def unanswered_claims() -> int:
    """How many claims of this process got no reply from Redis (see ``_unanswered``)."""
    return len(_unanswered)


def release_unanswered(namespace: str) -> int:
    """Drop the claims whose ``admit`` got no reply (see ``_unanswered``); how many were still held.

    Called by the keepalive thread once Redis has answered it twice in a row:
    a call Redis ran late, it ran when it resumed, before those answers.
    """
    dropped = 0
    for envelope_id, claim in list(_unanswered.items()):
        dropped += int(RELEASE([sending_key(namespace, envelope_id)], [claim]))
        _unanswered.pop(envelope_id, None)
    return dropped


def release(envelope_id: str, claim: str, config: MailQueueConfig) -> None:
    """Drop this attempt's claim on the envelope (it was not delivered): the next attempt may send."""
    RELEASE([sending_key(config.namespace, envelope_id)], [claim])


def delivered_via(envelope_id: str, config: MailQueueConfig) -> str | None:
    """The provider the delivery record names for ``envelope_id``; None if there is none or Redis cannot say."""
    try:
        provider = redis_client().get(delivered_key(config.namespace, envelope_id))
    except redis.RedisError:
        return None
    return provider.decode() if isinstance(provider, bytes) else provider
