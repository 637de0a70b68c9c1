"""May this message go to one of these providers now, and to which? And, afterwards, how did it go?

Everything a provider's workers must agree on lives in Redis and changes in
one Lua script call per step, on Redis's clock (so hosts whose clocks differ
still share one limit):

* ``admit`` (before a send): was the envelope already delivered (a redelivery
  after a crash), or is another worker sending it right now? Which of the
  queue's providers takes it, by the queue's strategy (failover, weighted,
  spill-over): whose circuit is open, whose quota spent, who has a free
  concurrency slot? Which rate-limit token does this send get, and how long
  until it is due?
* ``settle`` (after the send): record the delivery, the provider's health
  (closing or opening its circuit) and its per-minute counters.

Both also keep the cluster's counters and histograms (``mailqueue.counters``:
deliveries, send and latency seconds, rate-limit waits) in the same calls.
Two round trips per delivered message, whatever is configured.
"""

from __future__ import annotations

import itertools
import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import redis
from dramatiq.common import current_millis
from tenacity import Retrying, retry_if_exception_type, stop_after_delay, wait_exponential

from mailqueue.client import LuaScript, redis_client
from mailqueue.conf import MailQueueConfig, ProviderConfig, QueueConfig
from mailqueue.counters import (
    LATENCY_BUCKETS,
    SEND_BUCKETS,
    bucket_of,
    counters_key,
    deliveries_field,
    latency_bucket_field,
    latency_sum_field,
    rate_limit_waits_field,
    send_bucket_field,
    send_sum_field,
)
from mailqueue.envelope import random_id
from mailqueue.keys import (
    STATS_TTL,
    ProviderKeys,
    delivered_key,
    events_key,
    heartbeats_key,
    keepalive_key,
    queue_sent_field,
    sending_key,
)

#: KEYS: delivered, sending claim, Dramatiq's heartbeats, the keepalive marks, the cluster counters' hash,
#: then per candidate provider: its circuit, in-flight set, quota hash and one bucket per rate limit.
#: ARGV: lease token, in-flight lease ms, longest wait for a token in ms, claim token, the worker's clock
#: in ms, the heartbeat timeout in ms, a claim of this worker's that sent nothing ("" if none), the
#: strategy ("failover", "weighted", "spill-over"), the draw (a number in [0, 1), "weighted"), the latency
#: budget left in ms ("spill-over"), the number of candidates, "1" to count rate-limit waits ("" not to:
#: MONITOR["COUNTERS"] off), then per candidate: weight, alias, its rate-limit waits' field in the counters'
#: hash, probe lease ms, max concurrency (0: none), quota count (0: none), quota period ms, number of rate
#: limits, then (interval ms, burst) per rate limit.
#: A claim held by a worker whose heartbeat is older than the timeout (or gone) is a dead worker's: it is
#: taken over, as is the claim that sent nothing; except after a gap in every worker's keepalive (Redis
#: was away, see RECOVER in workers/dramatiq_redis.py), when a stale heartbeat says nothing: until the
#: grace ends, or while the gap lasts, every owner counts as alive (the copy asks again one heartbeat
#: timeout after the grace, not when the claim expires).
#: A candidate whose circuit is open (or whose probe is in flight), or whose quota is spent, is skipped.
#: Of the others, "failover" takes the first, "weighted" draws one by weight (the first if every weight
#: left is 0), and either waits for it; "spill-over" takes the first that has a token within the budget
#: (or asks again later for one that will, beyond the longest wait), and when none will, the one whose
#: token comes soonest.
#: Every "go" puts the send in the provider's in-flight set (lease token -> lease expiry), whether or not it
#: has a max concurrency, so the dashboard can show the concurrency in use for all; expired leases (a worker
#: that died mid-send) are pruned first. A "go" that must wait for its token, and a "later", count one
#: rate-limit wait for the provider.
#: Returns {outcome, number, text, provider, skipped, reopens}: {"delivered", 0, provider, "", "", 0},
#: {"claimed", retry ms, "", "", "", 0}, {"open", retry ms, "", "", skipped, reopens}, {"busy", 0, "",
#: provider, skipped, reopens}, {"later", wait ms, "", provider, skipped, reopens}, or {"go", wait in µs,
#: "closed" | "probe", provider, skipped, reopens}; skipped lists "alias:open" or "alias:quota",
#: comma-separated, and reopens is the ms until the first of them may be asked again (0: none skipped).
ADMIT_SCRIPT = """
local delivered = redis.call("get", KEYS[1])
if delivered then return {"delivered", 0, delivered, "", "", 0} end
local clock = redis.call("time")
local now = tonumber(clock[1]) * 1000 + tonumber(clock[2]) / 1000
local holder = redis.call("get", KEYS[2])
if holder and holder ~= ARGV[4] and holder ~= ARGV[7] then
  local owner = string.match(holder, "@(.+)$")
  local alive = not owner
  local wait = math.max(redis.call("pttl", KEYS[2]), 1)
  if owner then
    local beat = redis.call("zscore", KEYS[3], owner)
    alive = beat and tonumber(beat) >= tonumber(ARGV[5]) - tonumber(ARGV[6])
  end
  if not alive then
    local marks = redis.call("hmget", KEYS[4], "last", "grace_until", "gap")
    local last, grace_until = tonumber(marks[1]), tonumber(marks[2]) or 0
    alive = (last and now - last > tonumber(marks[3])) or now < grace_until
    -- Ask again once the owner's heartbeat tells the truth, not when its claim expires (the time limit).
    if alive then wait = math.min(wait, math.ceil(math.max(grace_until - now, 0)) + tonumber(ARGV[6])) end
  end
  if alive then return {"claimed", wait, "", "", "", 0} end
end

local strategy, max_wait, budget = ARGV[8], tonumber(ARGV[3]), tonumber(ARGV[10])
local counting = ARGV[12] ~= ""
local candidates = {}
local a, k = 13, 6
for c = 1, tonumber(ARGV[11]) do
  local limits = tonumber(ARGV[a + 7])
  candidates[c] = {weight = tonumber(ARGV[a]), alias = ARGV[a + 1], waits = ARGV[a + 2],
    cooldown = tonumber(ARGV[a + 3]), concurrency = tonumber(ARGV[a + 4]), quota = tonumber(ARGV[a + 5]),
    period = tonumber(ARGV[a + 6]), limits = limits, arg = a + 8, key = k}
  a = a + 8 + 2 * limits
  k = k + 3 + limits
end

local skipped, soonest = {}, nil
local function answer(outcome, number, text, provider)
  return {outcome, number, text, provider, table.concat(skipped, ","), math.ceil(soonest or 0)}
end

-- The send waits for a rate-limit token (sleeping on it, or asking again later): counted in this same call.
local function waited(c)
  if counting then redis.call("hincrby", KEYS[5], c.waits, 1) end
end

-- Too long to sleep on: nothing is reserved, ask again later.
local function later(c, wait)
  waited(c)
  return answer("later", math.ceil(wait), "", c.alias)
end

-- May the candidate be sent to at all: its circuit closed or a probe due, its quota not spent?
local function usable(c)
  local circuit = redis.call("hmget", KEYS[c.key], "state", "reopen_at", "probe_until")
  local blocked_until, reason = nil, "open"
  c.role = "closed"
  if circuit[1] == "open" then
    local reopen_at = tonumber(circuit[2]) or 0
    if now < reopen_at then blocked_until = reopen_at end
    c.role = "probe"
  elseif circuit[1] == "half-open" then
    local probe_until = tonumber(circuit[3]) or 0
    if now < probe_until then blocked_until = probe_until end
    c.role = "probe"
  end
  if not blocked_until and c.quota > 0 then
    -- Calendar periods on Redis's clock: a day starts at midnight UTC.
    c.window = math.floor(now / c.period)
    local used = redis.call("hmget", KEYS[c.key + 2], "window", "used")
    if tonumber(used[1]) == c.window and (tonumber(used[2]) or 0) >= c.quota then
      blocked_until, reason = (c.window + 1) * c.period, "quota"
    end
  end
  if not blocked_until then return true end
  skipped[#skipped + 1] = c.alias .. ":" .. reason
  soonest = math.min(soonest or (blocked_until - now), blocked_until - now)
  return false
end

-- GCRA: a bucket's theoretical arrival time (tat) advances by one interval per
-- send; a send may go at tat - (burst - 1) * interval. The wait until every limit
-- grants the candidate a token (nil when no concurrency slot is free).
local function capacity(c)
  if c.concurrency > 0 then
    redis.call("zremrangebyscore", KEYS[c.key + 1], "-inf", now)
    if redis.call("zcard", KEYS[c.key + 1]) >= c.concurrency then return nil end
  end
  local wait = 0
  c.tats = {}
  for j = 0, c.limits - 1 do
    local interval, burst = tonumber(ARGV[c.arg + 2 * j]), tonumber(ARGV[c.arg + 2 * j + 1])
    local tat = math.max(tonumber(redis.call("get", KEYS[c.key + 3 + j])) or now, now)
    wait = math.max(wait, tat - (burst - 1) * interval - now)
    c.tats[j] = tat + interval
  end
  c.wait = wait
  return wait
end

-- Reserve the slot even if it is in the future (the wait is short): threads then
-- sleep until their own slot and the sustained rate is exact.
local function take(c)
  for j = 0, c.limits - 1 do
    redis.call("set", KEYS[c.key + 3 + j], tostring(c.tats[j]), "px", math.ceil(c.tats[j] - now) + 1000)
  end
  if c.quota > 0 then
    if tonumber(redis.call("hget", KEYS[c.key + 2], "window")) == c.window then
      redis.call("hincrby", KEYS[c.key + 2], "used", 1)
    else
      redis.call("hset", KEYS[c.key + 2], "window", tostring(c.window), "used", 1)
    end
    redis.call("expire", KEYS[c.key + 2], math.ceil(2 * c.period / 1000))
  end
  redis.call("set", KEYS[2], ARGV[4], "px", ARGV[2])
  -- capacity() pruned the set already when it had a limit to check.
  if c.concurrency == 0 then redis.call("zremrangebyscore", KEYS[c.key + 1], "-inf", now) end
  redis.call("zadd", KEYS[c.key + 1], now + tonumber(ARGV[2]), ARGV[1])
  if c.wait > 0 then waited(c) end
  if c.role == "probe" then
    redis.call("hset", KEYS[c.key], "state", "half-open", "probe_until", tostring(now + c.cooldown))
  end
  return answer("go", math.floor(c.wait * 1000), c.role, c.alias)
end

-- The one provider chosen waits for its token, or asks again later.
local function wait_for(c)
  local wait = capacity(c)
  if not wait then return answer("busy", 0, "", c.alias) end
  if wait > max_wait then return later(c, wait) end
  return take(c)
end

if strategy == "weighted" then
  local eligible, total = {}, 0
  for _, c in ipairs(candidates) do
    if usable(c) then
      eligible[#eligible + 1] = c
      total = total + c.weight
    end
  end
  if #eligible == 0 then return answer("open", math.ceil(soonest), "", "") end
  local chosen, point = eligible[1], tonumber(ARGV[9]) * total
  if total > 0 then
    for _, c in ipairs(eligible) do
      if c.weight > 0 then
        chosen = c
        point = point - c.weight
        if point < 0 then break end
      end
    end
  end
  return wait_for(chosen)
elseif strategy == "spill-over" then
  local soonest_token, busy = nil, nil
  for _, c in ipairs(candidates) do
    if usable(c) then
      local wait = capacity(c)
      if not wait then
        busy = busy or c
      elseif wait <= budget then
        if wait <= max_wait then return take(c) end
        return later(c, wait)
      elseif not soonest_token or wait < soonest_token.wait then
        soonest_token = c
      end
    end
  end
  -- Every provider is at its limit: the message waits as it would for one.
  if soonest_token then
    if soonest_token.wait <= max_wait then return take(soonest_token) end
    return later(soonest_token, soonest_token.wait)
  end
  if busy then return answer("busy", 0, "", busy.alias) end
  return answer("open", math.ceil(soonest), "", "")
end
for _, c in ipairs(candidates) do
  if usable(c) then return wait_for(c) end
end
return answer("open", math.ceil(soonest), "", "")
"""

#: KEYS: delivered, circuit, in-flight, this minute's counters, sending claim, the message
#: log's stream, the quota hash, the cluster counters' hash (mailqueue.counters), and with an
#: early acknowledgement Dramatiq's in-progress set, message hash and heartbeats.
#: ARGV: outcome ("sent", "failed", "rejected", "faulted", "aborted"), provider alias, lease
#: token, dedup window s, failure threshold, cooldown ms, counters' ttl s, the stream's
#: MAXLEN, the message log's event ("" for none), the quota's period in ms to give a send
#: back to (0: none), the field counting the queue's sends in this minute's counters ("" for
#: none), then the cluster counters' fields: the (queue, provider, outcome) deliveries field,
#: the provider's send-duration bucket field, sum field and seconds, the (queue, provider)
#: latency bucket field, sum field and seconds (each "" for none: not counted), and with an
#: early acknowledgement the Redis message id, the worker's broker id and its clock in ms.
#: The event is appended first, whatever the outcome, and the cluster counters added to; for
#: "sent" only when the delivery record is not there yet: a settle run again (its reply
#: lost) logs and counts the delivery once.
#: "failed" is a transient provider failure (it counts towards opening the circuit);
#: "rejected" means the provider answered but refused this message (it is up);
#: "faulted" means the message itself is at fault (it cannot be rendered, addressed,
#: or the provider's checks refused its content): no evidence about the provider, so
#: the circuit is left as it is, except that a probe that was one hands the probe on;
#: "aborted" only releases the in-flight slot. "sent" also drops the sending claim,
#: which the delivery record replaces. Each outcome but "aborted" is counted in this
#: minute's counters under its own name ("sent", "failed", "rejected", "faulted"), and
#: "sent" under the queue's field too: the queue's share of the provider's mail.
#: A quota period given ("aborted" or "faulted" only: the provider never saw the message)
#: gives back the send admission counted, if the count is still this period's on
#: Redis's clock (a send admitted in the period before counts in that one, not this).
#: Returns {the circuit's state, 1 if the Dramatiq message was acknowledged here else 0}.
SETTLE_SCRIPT = """
local outcome = ARGV[1]
local acked = 0
local first = not (outcome == "sent" and redis.call("exists", KEYS[1]) == 1)
redis.call("zrem", KEYS[3], ARGV[3])
if first then
  if ARGV[9] ~= "" then redis.call("xadd", KEYS[6], "maxlen", "~", ARGV[8], "*", "e", ARGV[9]) end
  if ARGV[12] ~= "" then redis.call("hincrby", KEYS[8], ARGV[12], 1) end
  if ARGV[13] ~= "" then
    redis.call("hincrby", KEYS[8], ARGV[13], 1)
    redis.call("hincrbyfloat", KEYS[8], ARGV[14], ARGV[15])
  end
  if ARGV[16] ~= "" then
    redis.call("hincrby", KEYS[8], ARGV[16], 1)
    redis.call("hincrbyfloat", KEYS[8], ARGV[17], ARGV[18])
  end
end
if ARGV[10] ~= "0" and (outcome == "aborted" or outcome == "faulted") then
  local clock = redis.call("time")
  local window = math.floor((tonumber(clock[1]) * 1000 + tonumber(clock[2]) / 1000) / tonumber(ARGV[10]))
  local quota = redis.call("hmget", KEYS[7], "window", "used")
  if tonumber(quota[1]) == window and (tonumber(quota[2]) or 0) > 0 then redis.call("hincrby", KEYS[7], "used", -1) end
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
  if ARGV[11] ~= "" then redis.call("hincrby", KEYS[4], ARGV[11], 1) end
  if #KEYS == 11 then
    -- Dramatiq's own ack (dispatch.lua), done here to save the worker a round trip.
    redis.call("zadd", KEYS[11], ARGV[21], ARGV[20])
    if redis.call("srem", KEYS[9], ARGV[19]) > 0 then
      redis.call("hdel", KEYS[10], ARGV[19])
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
    """The answer of ``admit``: go (after ``wait`` seconds) through ``provider``, or why not and for how long."""

    outcome: Outcome
    #: go: seconds to sleep until the reserved token is due; otherwise seconds until worth asking again.
    wait: float
    #: delivered: the provider that took it earlier; go: "closed" or "probe" (the half-open trial send).
    detail: str
    #: Identifies this send's in-flight slot, released by ``settle``.
    token: str
    #: go: the provider admitted; busy, later: the one at its limit ("" otherwise).
    provider: str = ""
    #: The candidates passed over, each with why: "open" (its circuit) or "quota" (spent for this period).
    skipped: tuple[tuple[str, str], ...] = ()
    #: Seconds until the first of ``skipped`` may be asked again (0 when none was skipped).
    reopens_in: float = 0.0
    #: The queue the message is sent from: ``settle`` counts a delivery in the queue's share of the provider's mail.
    queue: str = ""


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


#: The golden ratio's fractional part. The draws k·φ (mod 1), k = 1, 2, ..., fall evenly over [0, 1): each
#: process's shares follow the weights within a message or two, without any state shared through Redis.
GOLDEN = (math.sqrt(5) - 1) / 2
#: Each process starts its sequence elsewhere, so processes do not draw in step.
_draws = itertools.count(random.randrange(1 << 24))


def next_draw() -> float:
    """The next number in [0, 1) for a weighted draw."""
    return (next(_draws) * GOLDEN) % 1.0


#: Each provider's keys and arguments for ADMIT, by (namespace, alias), with the ProviderConfig they were made
#: from: a new configuration (a settings change) makes new ones. Looked up by two strings, not by hashing the
#: whole ProviderConfig, on every admission.
_candidates: dict[tuple[str, str], tuple[ProviderConfig, tuple[str, ...], tuple[Any, ...]]] = {}


def _candidate(provider: ProviderConfig, namespace: str) -> tuple[tuple[str, ...], tuple[Any, ...]]:
    """A provider's keys and arguments for ADMIT (its weight, which is the queue's, goes before them)."""
    cached = _candidates.get((namespace, provider.alias))
    if cached is not None and cached[0] is provider:
        return cached[1], cached[2]
    keys = ProviderKeys.of(namespace, provider.alias)
    quota = provider.quota
    args: list[Any] = [
        provider.alias,
        rate_limit_waits_field(provider.alias),
        math.ceil(provider.cooldown * 1000),
        provider.max_concurrency or 0,
        quota.count if quota else 0,
        quota.period * 1000 if quota else 0,
        len(provider.rate_limits),
    ]
    for limit in provider.rate_limits:
        args += (limit.interval * 1000, limit.burst)
    rates = tuple(keys.rate(limit.count, limit.period, limit.burst) for limit in provider.rate_limits)
    provider_keys = (keys.circuit, keys.in_flight, keys.quota, *rates)
    _candidates[(namespace, provider.alias)] = (provider, provider_keys, tuple(args))
    return provider_keys, tuple(args)


def admit(
    envelope_id: str,
    providers: ProviderConfig | Sequence[ProviderConfig],
    queue: QueueConfig,
    config: MailQueueConfig,
    claim: str | None = None,
    *,
    budget: float | None = None,
    draw: float | None = None,
) -> Admission:
    """Ask whether ``envelope_id`` may be sent now through one of ``providers``, and reserve what it needs.

    ``providers`` are the candidates, in the queue's order (one provider: just
    that one); the queue's strategy picks among them. ``budget`` is the
    seconds the message may still wait for a provider ("spill-over"; the
    queue's latency budget if not given), ``draw`` a number in [0, 1) for a
    "weighted" pick (the next of ``next_draw()`` if not given). ``claim``
    (from ``new_claim``) names the attempt; a go claims the envelope for the
    queue's time limit, so another copy of it (a redelivery while this
    attempt still runs) waits instead of sending too.
    """
    if isinstance(providers, ProviderConfig):
        providers = (providers,)
    token = random_id()
    keys: list[Any] = [
        delivered_key(config.namespace, envelope_id),
        sending_key(config.namespace, envelope_id),
        heartbeats_key(config.namespace),
        keepalive_key(config.namespace),
        counters_key(config.namespace),
    ]
    unanswered = _unanswered.get(envelope_id, "")
    args: list[Any] = [
        token,
        queue.time_limit,
        math.ceil(config.rate_limit_max_wait * 1000),
        claim or token,
        current_millis(),
        config.heartbeat_timeout,
        unanswered,
        queue.strategy,
        (next_draw() if draw is None else draw) if queue.strategy == "weighted" else 0,
        math.floor((queue.latency_budget if budget is None else budget) * 1000),
        len(providers),
        "1" if config.monitor.counters else "",
    ]
    for provider in providers:
        provider_keys, provider_args = _candidate(provider, config.namespace)
        keys += provider_keys
        args.append(queue.weight(provider.alias))
        args += provider_args
    try:
        outcome, number, detail, chosen, skipped, reopens = ADMIT(keys, args)
    except (redis.ConnectionError, redis.TimeoutError):
        if len(_unanswered) < UNANSWERED_LIMIT:
            _unanswered[envelope_id] = claim or token
        raise
    if unanswered and outcome == b"go":
        _unanswered.pop(envelope_id, None)  # taken over
    outcome = outcome.decode()
    scale = 1_000_000 if outcome == "go" else 1000
    return Admission(
        outcome=outcome,
        wait=int(number) / scale,
        detail=detail.decode(),
        token=token,
        provider=chosen.decode(),
        skipped=tuple(
            (alias, why) for alias, _, why in (each.partition(":") for each in skipped.decode().split(",") if each)
        ),
        reopens_in=int(reopens) / 1000,
        queue=queue.name,
    )


#: SETTLE's counter arguments when nothing is counted.
NOT_COUNTED = ("",) * 7


def counted(
    queue: str,
    alias: str,
    result: Result,
    config: MailQueueConfig,
    send_seconds: float | None,
    created_at: float | None,
    *,
    unsent: bool = False,
) -> tuple[str, ...]:
    """SETTLE's arguments for the cluster counters: which fields this attempt adds to, and by how much.

    Built here rather than in the script: the buckets and field names live
    once, in ``mailqueue.counters``, which ``/metrics`` reads them by. An
    "aborted" send never started and is not counted; the send duration is
    only taken when the provider was called (a "faulted" message it never saw
    was not); the latency only for a delivery.
    """
    if not config.monitor.counters or result == "aborted":
        return NOT_COUNTED
    deliveries = deliveries_field(queue, alias, result) if queue else ""
    send: tuple[str, str, str] = ("", "", "")
    if send_seconds is not None and not (result == "faulted" and unsent):
        seconds = max(send_seconds, 0.0)
        send = (send_bucket_field(alias, bucket_of(SEND_BUCKETS, seconds)), send_sum_field(alias), f"{seconds:.6f}")
    latency: tuple[str, str, str] = ("", "", "")
    if result == "sent" and created_at is not None and queue:
        # The web host's clock set created_at: one behind this one must not make a negative latency.
        seconds = max(time.time() - created_at, 0.0)
        latency = (
            latency_bucket_field(queue, alias, bucket_of(LATENCY_BUCKETS, seconds)),
            latency_sum_field(queue, alias),
            f"{seconds:.6f}",
        )
    return (deliveries, *send, *latency)


def settle(
    admission: Admission,
    envelope_id: str,
    provider: ProviderConfig,
    result: Result,
    config: MailQueueConfig,
    ack: AckTarget | None = None,
    event: bytes = b"",
    *,
    unsent: bool = False,
    send_seconds: float | None = None,
    created_at: float | None = None,
) -> Settled:
    """Record how the send went: the provider's circuit state afterwards, and whether ``ack`` was acknowledged.

    A delivery record is what stops a redelivered message from being sent
    twice (and "sent" frees the provider's concurrency slot), so recording it
    is retried through a Redis outage of up to SENT_RECORD_PATIENCE seconds;
    the message's acknowledgement waits for Redis anyway. With ``ack``, a
    "sent" also acknowledges the Dramatiq message in the same call. ``event``
    (from ``mailqueue.eventlog``) is appended to the message log's stream in
    that call too. ``unsent`` (an "aborted" or "faulted" result only) says the
    provider never saw the message: the send admission counted against its
    quota is given back, in the same call. ``send_seconds`` (how long the
    provider call took; None: none was made) and ``created_at`` (the
    envelope's, for a "sent" one's latency) feed the cluster counters, also
    in the same call (see ``counted``).
    """
    keys = ProviderKeys.of(config.namespace, provider.alias)
    script_keys = [
        delivered_key(config.namespace, envelope_id),
        keys.circuit,
        keys.in_flight,
        keys.stats(int(time.time() // 60)),
        sending_key(config.namespace, envelope_id),
        events_key(config.namespace),
        keys.quota,
        counters_key(config.namespace),
    ]
    # The provider never saw the message: the quota it was counted against is given back.
    given_back = provider.quota if unsent and result in ("aborted", "faulted") else None
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
        given_back.period * 1000 if given_back else 0,
        queue_sent_field(admission.queue) if admission.queue else "",
        *counted(admission.queue, provider.alias, result, config, send_seconds, created_at, unsent=unsent),
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
