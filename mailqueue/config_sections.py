"""Readers for the MAILQUEUE sections: QUEUES, PROVIDERS (and their rate limits), ROUTES, POOLS.

Each reader turns one raw section into values from ``mailqueue.settings_values`` and records what is
wrong in a ``Problems``; ``mailqueue.config_reader`` runs them and checks them against MAILERS.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from django.utils.module_loading import import_string

from .settings_values import (
    LOG_RECIPIENTS,
    MONITOR_FLAGS,
    STRATEGIES,
    LogConfig,
    MonitorConfig,
    PoolConfig,
    ProviderConfig,
    QueueConfig,
    Quota,
    RateLimit,
    Route,
    Strategy,
    default,
)

#: Dramatiq's own rule for queue names (they become Redis key parts).
QUEUE_NAME_RE = re.compile(r"[a-zA-Z_][a-zA-Z0-9._-]*")
#: A Django permission as ``User.has_perm`` takes it: "app_label.codename".
PERMISSION_RE = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\.[a-zA-Z0-9_]+")
NAME_HINT = "Use letters, digits, '.', '_' or '-', starting with a letter or '_'."

#: ``"14/s"``, ``"50000/d"``: a count per unit of time.
RATE_RE = re.compile(r"\s*(\d+)\s*/\s*(s|sec|second|m|min|minute|h|hour|d|day)\s*")
RATE_UNITS = {"s": 1, "sec": 1, "second": 1, "m": 60, "min": 60, "minute": 60, "h": 3600, "hour": 3600}
RATE_UNITS |= {"d": 86400, "day": 86400}

#: The periods a quota can have: a calendar hour or day.
QUOTA_UNITS = {"h": 3600, "hour": 3600, "d": 86400, "day": 86400}

QUEUE_KEYS = frozenset(
    {"providers", "max_retries", "min_backoff", "max_backoff", "time_limit", "strategy", "weights", "latency_budget"}
)
PROVIDER_KEYS = frozenset(
    {"attempts", "wait_min", "wait_max", "rate_limit", "max_concurrency", "failure_threshold", "cooldown", "quota"}
)
RATE_KEYS = frozenset({"rate", "burst"})
POOL_KEYS = frozenset({"queues", "processes", "threads"})
ROUTE_KEYS = frozenset({"queue", "tag", "header", "value", "callable"})
LOG_KEYS = frozenset({"ENABLED", "STREAM_MAXLEN", "RECIPIENTS", "RETENTION_DAYS", "BATCH_SIZE", "BATCH_WAIT"})
MONITOR_KEYS = frozenset({"COUNTERS", "PERMISSION", "METRICS_TOKEN", "REFRESH", "SCALE_TARGET"})


@dataclass(frozen=True)
class Problem:
    """One configuration mistake, phrased as what to fix."""

    id: str
    msg: str
    hint: str | None = None


class Problems:
    """Collects every problem, and checks the kinds of value many settings share."""

    def __init__(self) -> None:
        self.found: list[Problem] = []

    def add(self, id: str, msg: str, hint: str | None = None) -> None:
        self.found.append(Problem(id, msg, hint))

    def integer(self, where: str, value: Any, *, minimum: int, fallback: Any) -> bool:
        """True when ``value`` is an int >= ``minimum``; ``fallback`` is what leaving it out gives."""
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            instead = "no limit" if fallback is None else f"the default, {fallback!r}"
            self.add(
                "mailqueue.E015",
                f"{where} must be an integer >= {minimum}, not {value!r}.",
                hint=f"Set a whole number of at least {minimum}, or leave it out for {instead}.",
            )
            return False
        return True

    def integers(
        self, where: str, spec: Mapping[str, Any], value_type: type, minimums: dict[str, int]
    ) -> dict[str, Any]:
        """The valid integer keys of ``spec``, by field of ``value_type`` (a key is its field, lower-cased)."""
        return {
            key.lower(): spec[key]
            for key, minimum in minimums.items()
            if key in spec
            and self.integer(f"{where}[{key!r}]", spec[key], minimum=minimum, fallback=default(value_type, key.lower()))
        }

    def seconds(self, where: str, value: Any, *, fallback: float) -> float | None:
        """``value`` as float seconds, or None (and a problem) when it is not a finite number >= 0.

        Infinity or NaN would pass a comparison and then fail at run time, on every message (turned into
        milliseconds for Redis, ``math.ceil`` raises OverflowError or ValueError).
        """
        if isinstance(value, float) and not math.isfinite(value):
            self.add(
                "mailqueue.E016",
                f"{where} must be a finite number of seconds, not {value!r}.",
                hint=f"Set a number of seconds, or leave it out for the default, {fallback:g}.",
            )
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            self.add(
                "mailqueue.E016",
                f"{where} must be seconds >= 0 (an int or a float), not {value!r}.",
                hint=f"Set a number of seconds, or leave it out for the default, {fallback:g}.",
            )
            return None
        return float(value)

    def unknown_keys(self, where: str, given: Mapping[str, Any], allowed: frozenset[str]) -> None:
        unknown = sorted(set(given) - allowed)
        if unknown:
            self.add(
                "mailqueue.E001",
                f"{where} has unknown key(s) {', '.join(map(repr, unknown))}.",
                hint=f"Allowed keys: {', '.join(sorted(allowed))}.",
            )


def read_queues(problems: Problems, raw: Any) -> dict[str, QueueConfig]:
    if not raw or not isinstance(raw, Mapping):
        problems.add(
            "mailqueue.E002",
            "MAILQUEUE['QUEUES'] must name at least one queue.",
            hint='e.g. "QUEUES": {"critical": {"providers": ["postmark", "ses"]}}.',
        )
        return {}
    queues = {}
    for name, spec in raw.items():
        where = f"MAILQUEUE['QUEUES'][{name!r}]"
        if not isinstance(name, str) or not QUEUE_NAME_RE.fullmatch(name):
            problems.add("mailqueue.E008", f"Queue name {name!r} is not valid.", hint=NAME_HINT)
            continue
        if not isinstance(spec, Mapping):
            problems.add("mailqueue.E001", f"{where} must be a dict.")
            continue
        problems.unknown_keys(where, spec, QUEUE_KEYS)
        providers = spec.get("providers")
        if isinstance(providers, str):
            providers = [providers]
        if not providers:
            problems.add(
                "mailqueue.E003",
                f"{where} has no providers, so nothing could deliver its mail.",
                hint='Add "providers": [...] with one or more MAILERS aliases, primary first.',
            )
            providers = []
        minimums = {"max_retries": 0, "min_backoff": 1, "max_backoff": 1, "time_limit": 1}
        queue = QueueConfig(
            name=name,
            providers=tuple(providers),
            **problems.integers(where, spec, QueueConfig, minimums),
            **read_distribution(problems, where, spec, tuple(providers)),
        )
        if queue.min_backoff > queue.max_backoff:
            problems.add(
                "mailqueue.E020",
                f"{where}: min_backoff ({queue.min_backoff} ms) is larger than max_backoff ({queue.max_backoff} ms).",
                hint="Lower min_backoff or raise max_backoff: the first retry delay cannot exceed the longest.",
            )
        queues[name] = queue
    return queues


def read_distribution(
    problems: Problems, where: str, spec: Mapping[str, Any], providers: tuple[str, ...]
) -> dict[str, Any]:
    """A queue's strategy and what it takes: weights ("weighted"), a latency budget ("spill-over")."""
    options: dict[str, Any] = {}
    strategy = spec.get("strategy", default(QueueConfig, "strategy"))
    if strategy not in STRATEGIES:
        problems.add(
            "mailqueue.E027",
            f"{where}['strategy'] is {strategy!r}.",
            hint='Use "failover" (the first provider, the next only when it fails), "weighted" (each message '
            'drawn by weight) or "spill-over" (the first that can take it within latency_budget).',
        )
        return options
    options["strategy"] = strategy
    if "weights" in spec:
        weights = read_weights(problems, where, spec["weights"], providers, strategy)
        if weights:
            options["weights"] = weights
    elif strategy == "weighted":
        options["weights"] = (1,) * len(providers)  # an even split
    if "latency_budget" in spec:
        if strategy != "spill-over":
            problems.add(
                "mailqueue.E029",
                f'{where} has a latency_budget, which only a "spill-over" queue uses; its strategy is {strategy!r}.',
                hint='Set "strategy": "spill-over", or remove latency_budget.',
            )
        budget = problems.seconds(
            f"{where}['latency_budget']", spec["latency_budget"], fallback=default(QueueConfig, "latency_budget")
        )
        if budget is not None:
            options["latency_budget"] = budget
    return options


def read_weights(
    problems: Problems, where: str, raw: Any, providers: tuple[str, ...], strategy: Strategy
) -> tuple[int, ...]:
    """A weight per provider of the queue, in its order; () and a problem when they do not say that."""
    where = f"{where}['weights']"
    example = ", ".join(f"{alias!r}: 1" for alias in providers)
    if strategy != "weighted":
        problems.add(
            "mailqueue.E028",
            f'{where} is set, but only a "weighted" queue uses weights; its strategy is {strategy!r}.',
            hint='Set "strategy": "weighted", or remove weights.',
        )
        return ()
    if not isinstance(raw, Mapping):
        problems.add(
            "mailqueue.E028",
            f"{where} must be a dict of provider alias to weight, not {type(raw).__name__}.",
            hint=f"e.g. {{{example}}}.",
        )
        return ()
    unknown = [alias for alias in raw if alias not in providers]
    missing = [alias for alias in providers if alias not in raw]
    if unknown or missing:
        wrong = [f"names {', '.join(map(repr, unknown))}, not in the queue's providers"] if unknown else []
        wrong += [f"leaves out {', '.join(map(repr, missing))}"] if missing else []
        problems.add(
            "mailqueue.E028",
            f"{where} {' and '.join(wrong)}.",
            hint=f"Give every provider of the queue a weight (0: only a failover), e.g. {{{example}}}.",
        )
        return ()
    bad = [alias for alias in providers if isinstance(raw[alias], bool) or not isinstance(raw[alias], int)]
    bad += [alias for alias in providers if alias not in bad and raw[alias] < 0]
    if bad:
        problems.add(
            "mailqueue.E028",
            f"{where}[{bad[0]!r}] must be an integer >= 0, not {raw[bad[0]]!r}.",
            hint="A weight is a whole number: a provider with 3 gets three times the mail of one with 1.",
        )
        return ()
    if not any(raw[alias] for alias in providers):
        problems.add(
            "mailqueue.E028",
            f"{where} are all 0: no provider would ever be drawn.",
            hint="Give at least one provider a weight above 0.",
        )
        return ()
    return tuple(raw[alias] for alias in providers)


def read_providers(problems: Problems, raw: Any) -> dict[str, ProviderConfig]:
    if not isinstance(raw, Mapping):
        problems.add("mailqueue.E001", "MAILQUEUE['PROVIDERS'] must be a dict.")
        return {}
    providers = {}
    for alias, spec in raw.items():
        where = f"MAILQUEUE['PROVIDERS'][{alias!r}]"
        if not isinstance(spec, Mapping):
            problems.add("mailqueue.E001", f"{where} must be a dict.")
            continue
        problems.unknown_keys(where, spec, PROVIDER_KEYS)
        minimums = {"attempts": 1, "max_concurrency": 1, "failure_threshold": 1}
        options = problems.integers(where, spec, ProviderConfig, minimums)
        for key in ("wait_min", "wait_max", "cooldown"):
            if key not in spec:
                continue
            seconds = problems.seconds(f"{where}[{key!r}]", spec[key], fallback=default(ProviderConfig, key))
            if key == "cooldown" and seconds == 0:
                problems.add(
                    "mailqueue.E022",
                    f"{where}['cooldown'] must be more than 0 seconds.",
                    hint="To keep a flaky provider in use, raise its failure_threshold instead.",
                )
            elif seconds is not None:
                options[key] = seconds
        if "rate_limit" in spec:
            options["rate_limits"] = read_rate_limits(problems, f"{where}['rate_limit']", spec["rate_limit"])
        if "quota" in spec:
            options["quota"] = read_quota(problems, f"{where}['quota']", spec["quota"])
        provider = providers[alias] = ProviderConfig(alias=alias, **options)
        if provider.wait_min > provider.wait_max:
            problems.add(
                "mailqueue.E021",
                f"{where}: wait_min ({provider.wait_min:g} s) is larger than wait_max ({provider.wait_max:g} s).",
                hint="Lower wait_min or raise wait_max: the first wait between tries cannot exceed the longest.",
            )
    return providers


def read_rate_limits(problems: Problems, where: str, raw: Any) -> tuple[RateLimit, ...]:
    limits = []
    for item in raw if isinstance(raw, (list, tuple)) else [raw]:
        spec, burst = item, None
        if isinstance(item, Mapping):
            problems.unknown_keys(where, item, RATE_KEYS)
            spec, burst = item.get("rate"), item.get("burst")
        match = RATE_RE.fullmatch(spec) if isinstance(spec, str) else None
        if match is None or int(match[1]) < 1:
            problems.add(
                "mailqueue.E014",
                f"{where} has {spec!r}, which is not a rate.",
                hint='Write a count per unit: "14/s", "600/m", "50000/d", or {"rate": "50/s", "burst": 10}.',
            )
            continue
        if burst is None:
            limits.append(RateLimit(count=int(match[1]), period=RATE_UNITS[match[2]]))
        elif problems.integer(f"{where} burst", burst, minimum=1, fallback=default(RateLimit, "burst")):
            limits.append(RateLimit(count=int(match[1]), period=RATE_UNITS[match[2]], burst=burst))
    return tuple(limits)


def read_quota(problems: Problems, where: str, raw: Any) -> Quota | None:
    """``"50000/d"``: a count per calendar day or hour."""
    match = RATE_RE.fullmatch(raw) if isinstance(raw, str) else None
    if match is None or match[2] not in QUOTA_UNITS or int(match[1]) < 1:
        problems.add(
            "mailqueue.E030",
            f"{where} is {raw!r}, which is not a quota.",
            hint='Write a count per calendar day or hour, e.g. "50000/d" or "2000/h" (a pace is a rate_limit).',
        )
        return None
    return Quota(count=int(match[1]), period=QUOTA_UNITS[match[2]])


def read_routes(problems: Problems, raw: Any, queues: Mapping[str, QueueConfig]) -> tuple[Route, ...]:
    if not isinstance(raw, (list, tuple)):
        problems.add("mailqueue.E009", "MAILQUEUE['ROUTES'] must be a list of rules.")
        return ()
    routes = []
    for index, item in enumerate(raw):
        where = f"MAILQUEUE['ROUTES'][{index}]"
        spec = {"callable": item} if isinstance(item, str) else item
        if not isinstance(spec, Mapping):
            problems.add("mailqueue.E009", f"{where} must be a dict or a dotted path.")
            continue
        problems.unknown_keys(where, spec, ROUTE_KEYS)
        matchers = [key for key in ("tag", "header", "callable") if key in spec]
        if len(matchers) != 1:
            problems.add(
                "mailqueue.E009",
                f"{where} must have exactly one of 'tag', 'header' or 'callable'.",
                hint='e.g. {"tag": "newsletter", "queue": "bulk"}.',
            )
            continue
        if "callable" in spec:
            path = spec["callable"]
            if not (callable(path) or isinstance(path, str)):
                problems.add("mailqueue.E009", f"{where}: 'callable' must be a dotted path or a callable.")
                continue
            try:
                function = path if callable(path) else import_string(path)
            except ImportError as error:
                problems.add("mailqueue.E009", f"{where}: cannot import {path!r}: {error}")
                continue
            routes.append(Route(queue=None, function=function))
            continue
        queue = spec.get("queue")
        if queue not in queues:
            problems.add(
                "mailqueue.E009",
                f"{where} routes to {queue!r}, which is not in QUEUES.",
                hint=f"Configured queues: {', '.join(queues) or '(none)'}.",
            )
            continue
        routes.append(Route(queue=queue, tag=spec.get("tag"), header=spec.get("header"), value=spec.get("value")))
    return tuple(routes)


def read_pools(problems: Problems, raw: Any, queues: Mapping[str, QueueConfig]) -> dict[str, PoolConfig]:
    if raw is None:
        # One pool per queue, so each priority scales on its own.
        return {name: PoolConfig(name=name, queues=(name,)) for name in queues}
    if not isinstance(raw, Mapping):
        problems.add("mailqueue.E011", "MAILQUEUE['POOLS'] must be a dict.")
        return {}
    pools = {}
    for name, spec in raw.items():
        where = f"MAILQUEUE['POOLS'][{name!r}]"
        if not isinstance(spec, Mapping):
            problems.add("mailqueue.E011", f"{where} must be a dict.")
            continue
        problems.unknown_keys(where, spec, POOL_KEYS)
        pool_queues = spec.get("queues") or [name]
        if isinstance(pool_queues, str):
            pool_queues = [pool_queues]
        unknown = [queue for queue in pool_queues if queue not in queues]
        if unknown:
            problems.add(
                "mailqueue.E011",
                f"{where} consumes unknown queue(s) {', '.join(map(repr, unknown))}.",
                hint=f"Configured queues: {', '.join(queues)}.",
            )
        options = problems.integers(where, spec, PoolConfig, {"processes": 1, "threads": 1})
        pools[name] = PoolConfig(name=name, queues=tuple(pool_queues), **options)
    consumed = {queue for pool in pools.values() for queue in pool.queues}
    for queue in queues:
        if queue not in consumed:
            problems.add(
                "mailqueue.E011",
                f"Queue {queue!r} is in no pool of MAILQUEUE['POOLS'], so no worker would ever deliver it.",
                hint=f"Add it to a pool's 'queues', e.g. {{{queue!r}: {{'queues': [{queue!r}]}}}}.",
            )
    return pools


def read_log(problems: Problems, raw: Any) -> LogConfig:
    """MAILQUEUE['LOG']: the message log's stream and writer."""
    where = "MAILQUEUE['LOG']"
    if raw is None:
        return LogConfig()
    if not isinstance(raw, Mapping):
        problems.add("mailqueue.E025", f"{where} must be a dict, not {type(raw).__name__}.")
        return LogConfig()
    problems.unknown_keys(where, raw, LOG_KEYS)
    minimums = {"STREAM_MAXLEN": 1, "RETENTION_DAYS": 1, "BATCH_SIZE": 1, "BATCH_WAIT": 0}
    options = problems.integers(where, raw, LogConfig, minimums)
    if "ENABLED" in raw:
        if isinstance(raw["ENABLED"], bool):
            options["enabled"] = raw["ENABLED"]
        else:
            problems.add(
                "mailqueue.E025",
                f"{where}['ENABLED'] must be True or False, not {raw['ENABLED']!r}.",
                hint="False stops the enqueue and the workers from appending events: the log records nothing new.",
            )
    if "RECIPIENTS" in raw:
        if raw["RECIPIENTS"] in LOG_RECIPIENTS:
            options["recipients"] = raw["RECIPIENTS"]
        else:
            problems.add(
                "mailqueue.E026",
                f"{where}['RECIPIENTS'] is {raw['RECIPIENTS']!r}.",
                hint='Use "store" (addresses, searchable), "hash" (a SHA-256 of each address, searchable by '
                'the exact address) or "off" (no recipients kept).',
            )
    return LogConfig(**options)


def read_monitor(problems: Problems, raw: Any) -> MonitorConfig:
    """MAILQUEUE['MONITOR']: the dashboard, /metrics and the workers' cluster counters."""
    where = "MAILQUEUE['MONITOR']"
    if raw is None:
        return MonitorConfig()
    if not isinstance(raw, Mapping):
        problems.add("mailqueue.E031", f"{where} must be a dict, not {type(raw).__name__}.")
        return MonitorConfig()
    problems.unknown_keys(where, raw, MONITOR_KEYS)
    options: dict[str, Any] = {}
    if "COUNTERS" in raw:
        if isinstance(raw["COUNTERS"], bool):
            options["counters"] = raw["COUNTERS"]
        else:
            problems.add(
                "mailqueue.E031",
                f"{where}['COUNTERS'] must be True or False, not {raw['COUNTERS']!r}.",
                hint="False stops the workers from keeping delivery counters and histograms in Redis.",
            )
    permission = raw.get("PERMISSION", MonitorConfig.permission)
    if isinstance(permission, str) and (permission in MONITOR_FLAGS or PERMISSION_RE.fullmatch(permission)):
        options["permission"] = permission
    else:
        problems.add(
            "mailqueue.E032",
            f"{where}['PERMISSION'] is {permission!r}.",
            hint='Use "is_staff" (the default), "is_superuser", or a permission as "app_label.codename".',
        )
    token = raw.get("METRICS_TOKEN")
    if token is None or (isinstance(token, str) and len(token) >= 16 and token == token.strip()):
        options["metrics_token"] = token
    else:
        problems.add(
            "mailqueue.E033",
            f"{where}['METRICS_TOKEN'] must be a string of at least 16 characters without surrounding spaces.",
            hint="Generate one (python -c 'import secrets; print(secrets.token_urlsafe(32))') and read it from "
            "the environment; leave it out (None) to allow only staff sessions.",
        )
    for key, minimum in (("REFRESH", 0.5), ("SCALE_TARGET", 1.0)):
        if key in raw:
            seconds = problems.seconds(f"{where}[{key!r}]", raw[key], fallback=default(MonitorConfig, key.lower()))
            if seconds is not None and seconds < minimum:
                problems.add(
                    "mailqueue.E016",
                    f"{where}[{key!r}] must be at least {minimum:g} seconds, not {raw[key]!r}.",
                    hint=f"Leave it out for the default, {default(MonitorConfig, key.lower()):g}.",
                )
            elif seconds is not None:
                options[key.lower()] = seconds
    return MonitorConfig(**options)
