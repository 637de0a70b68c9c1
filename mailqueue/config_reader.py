"""Reads the MAILQUEUE and MAILERS settings into a ``MailQueueConfig``, collecting every problem.

``read_config()`` is the single place that knows what a valid configuration is: the system check
reports its problems at startup, and ``mailqueue.conf.get_config()`` refuses to hand out a
configuration that has any. The top-level keys are read here, the sections in
``mailqueue.config_sections``. Every problem id is documented in docs/configuration.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from django.conf import settings
from redis.connection import parse_url

from .config_sections import (
    NAME_HINT,
    QUEUE_NAME_RE,
    Problem,
    Problems,
    read_log,
    read_monitor,
    read_pools,
    read_providers,
    read_queues,
    read_routes,
)
from .settings_values import BROKER_FAILURE_POLICIES, MailQueueConfig, default

#: The dotted paths that make a MAILERS entry a queued mailer.
QUEUED_BACKENDS = frozenset({"mailqueue.backend.EmailBackend", "mailqueue.backend.QueuedEmailBackend"})


def mailers_setting() -> Mapping[str, Any]:
    """Django's MAILERS setting, or an empty one."""
    return getattr(settings, "MAILERS", {}) or {}


def is_queued_mailer(alias: str) -> bool:
    """True when MAILERS[alias] is one of mailqueue's own backends."""
    entry = mailers_setting().get(alias)
    return isinstance(entry, Mapping) and entry.get("BACKEND") in QUEUED_BACKENDS


def queued_mailers() -> dict[str, Mapping[str, Any]]:
    """MAILERS entries whose backend is mailqueue's, by alias."""
    return {alias: entry for alias, entry in mailers_setting().items() if is_queued_mailer(alias)}


#: Each is the upper-case name of a MailQueueConfig field (tests/test_conf.py holds them to it).
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
        "BROKER_COOLDOWN",
        "DEDUP_WINDOW",
        "RATE_LIMIT_MAX_WAIT",
        "HEARTBEAT_TIMEOUT",
        "RECOVERY_INTERVAL",
        "MAINTENANCE_CHANCE",
        "LOG",
        "MONITOR",
    }
)


def read_config() -> tuple[MailQueueConfig, list[Problem]]:
    """The configuration in settings, and every problem in it (none when it is valid).

    A value with a problem is left out, so the config holds the value type's default there: use
    the config only when the list is empty.
    """
    reader = _Reader()
    config = reader.read(getattr(settings, "MAILQUEUE", None))
    return config, reader.problems.found


def find_problems() -> list[Problem]:
    """Every problem in the current MAILQUEUE/MAILERS settings (empty when valid)."""
    return read_config()[1]


class _Reader:
    """Reads the top-level keys; each section goes to its reader in ``config_sections``."""

    def __init__(self) -> None:
        self.problems = Problems()

    def read(self, raw: Any) -> MailQueueConfig:
        if raw is None:
            self.problems.add(
                "mailqueue.E002",
                "The MAILQUEUE setting is missing.",
                hint='Add MAILQUEUE = {"QUEUES": {"default": {"providers": ["smtp"]}}} '
                "naming MAILERS aliases that deliver mail.",
            )
            return MailQueueConfig()
        if not isinstance(raw, Mapping):
            self.problems.add("mailqueue.E001", f"MAILQUEUE must be a dict, not {type(raw).__name__}.")
            return MailQueueConfig()
        self.problems.unknown_keys("MAILQUEUE", raw, TOP_LEVEL_KEYS)
        values: dict[str, Any] = {}
        # An empty BROKER_URL means the default too (an unset environment variable).
        if raw.get("BROKER_URL") and self.check_broker_url(raw["BROKER_URL"]):
            values["broker_url"] = raw["BROKER_URL"]
        broker_options = raw.get("BROKER_OPTIONS", {})
        if not isinstance(broker_options, Mapping):
            self.problems.add("mailqueue.E001", "MAILQUEUE['BROKER_OPTIONS'] must be a dict.")
        else:
            if "protocol" in broker_options:
                self.check_protocol("MAILQUEUE['BROKER_OPTIONS']['protocol']", broker_options["protocol"])
            values["broker_options"] = dict(broker_options)
        if "NAMESPACE" in raw:
            if isinstance(raw["NAMESPACE"], str) and QUEUE_NAME_RE.fullmatch(raw["NAMESPACE"]):
                values["namespace"] = raw["NAMESPACE"]
            else:
                self.problems.add(
                    "mailqueue.E008",
                    f"MAILQUEUE['NAMESPACE'] {raw['NAMESPACE']!r} is not a valid Redis key prefix.",
                    hint=NAME_HINT,
                )

        queues = values["queues"] = read_queues(self.problems, raw.get("QUEUES"))
        values["providers"] = read_providers(self.problems, raw.get("PROVIDERS", {}))
        named_default = default(MailQueueConfig, "default_queue")
        default_queue = values["default_queue"] = raw.get("DEFAULT_QUEUE") or (
            named_default if named_default in queues or not queues else next(iter(queues))
        )
        if queues and default_queue not in queues:
            self.problems.add(
                "mailqueue.E008",
                f"MAILQUEUE['DEFAULT_QUEUE'] is {default_queue!r}, which is not in QUEUES.",
                hint=f"Configured queues: {', '.join(queues)}.",
            )
        values["routes"] = read_routes(self.problems, raw.get("ROUTES", ()), queues)
        values |= self.problems.integers("MAILQUEUE", raw, MailQueueConfig, {"MAX_MESSAGE_BYTES": 1})
        if "ON_COMMIT" in raw:
            if isinstance(raw["ON_COMMIT"], bool):
                values["on_commit"] = raw["ON_COMMIT"]
            else:
                self.problems.add(
                    "mailqueue.E018",
                    f"MAILQUEUE['ON_COMMIT'] must be True or False, not {raw['ON_COMMIT']!r}.",
                    hint="True enqueues when the transaction commits; False enqueues at once.",
                )
        if "ON_COMMIT_USING" in raw:
            values["on_commit_using"] = raw["ON_COMMIT_USING"]
        values["pools"] = read_pools(self.problems, raw.get("POOLS"), queues)
        databases = getattr(settings, "DATABASES", {})
        values |= self.read_durability(raw, databases)
        values["log"] = read_log(self.problems, raw.get("LOG"))
        values["monitor"] = read_monitor(self.problems, raw.get("MONITOR"))

        config = MailQueueConfig(**values)
        self.check_on_commit_database(config, databases)
        self.check_rate_limit_wait(config)
        self.check_heartbeat(config)
        check_mailers(self.problems, config)
        return config

    def read_durability(self, raw: Mapping[str, Any], databases: Mapping[str, Any]) -> dict[str, Any]:
        """The outbox, duplicate suppression, rate-limit wait and Dramatiq recovery settings."""
        options: dict[str, Any] = {}
        policy = raw.get("ON_BROKER_FAILURE", default(MailQueueConfig, "on_broker_failure"))
        if policy not in BROKER_FAILURE_POLICIES:
            self.problems.add(
                "mailqueue.E013",
                f"MAILQUEUE['ON_BROKER_FAILURE'] is {policy!r}.",
                hint='Use "outbox" (keep the mail in the database and relay it) or "raise".',
            )
        else:
            options["on_broker_failure"] = policy
        outbox_database = raw.get("OUTBOX_DATABASE", default(MailQueueConfig, "outbox_database"))
        if not isinstance(outbox_database, str):
            self.problems.add(
                "mailqueue.E013", f"MAILQUEUE['OUTBOX_DATABASE'] must be a DATABASES alias, not {outbox_database!r}."
            )
        else:
            options["outbox_database"] = outbox_database
            if policy == "outbox" and outbox_database not in databases:
                self.problems.add(
                    "mailqueue.E013",
                    f"MAILQUEUE['OUTBOX_DATABASE'] is {outbox_database!r}, not a DATABASES alias, so mail "
                    "accepted while Redis is away would have nowhere to wait.",
                    hint='Name a DATABASES alias, or set ON_BROKER_FAILURE to "raise".',
                )
        minimums = {"DEDUP_WINDOW": 1, "HEARTBEAT_TIMEOUT": 1, "RECOVERY_INTERVAL": 1, "MAINTENANCE_CHANCE": 0}
        options |= self.problems.integers("MAILQUEUE", raw, MailQueueConfig, minimums)
        if "BROKER_COOLDOWN" in raw:
            fallback = default(MailQueueConfig, "broker_cooldown")
            cooldown = self.problems.seconds("MAILQUEUE['BROKER_COOLDOWN']", raw["BROKER_COOLDOWN"], fallback=fallback)
            if cooldown is not None:
                options["broker_cooldown"] = cooldown
        if "RATE_LIMIT_MAX_WAIT" in raw:
            fallback = default(MailQueueConfig, "rate_limit_max_wait")
            wait = self.problems.seconds(
                "MAILQUEUE['RATE_LIMIT_MAX_WAIT']", raw["RATE_LIMIT_MAX_WAIT"], fallback=fallback
            )
            if wait is not None:
                options["rate_limit_max_wait"] = wait
        return options

    def check_on_commit_database(self, config: MailQueueConfig, databases: Mapping[str, Any]) -> None:
        wants_on_commit = config.on_commit or any(
            (entry.get("OPTIONS") or {}).get("on_commit") for entry in queued_mailers().values()
        )
        using = config.on_commit_using
        if wants_on_commit and not (isinstance(using, str) and using in databases):
            self.problems.add(
                "mailqueue.E019",
                f"MAILQUEUE['ON_COMMIT_USING'] is {using!r}, not a DATABASES alias.",
                hint="Name a DATABASES alias, or set ON_COMMIT to False if the project has no database.",
            )

    def check_rate_limit_wait(self, config: MailQueueConfig) -> None:
        """A wait for a token must fit in one attempt, or the time limit kills the attempt instead."""
        for queue in config.queues.values():
            limited = [
                alias
                for alias in queue.providers
                if alias in config.providers
                and (config.providers[alias].rate_limits or config.providers[alias].max_concurrency)
            ]
            if limited and config.rate_limit_max_wait * 1000 >= queue.time_limit:
                self.problems.add(
                    "mailqueue.E023",
                    f"MAILQUEUE['RATE_LIMIT_MAX_WAIT'] ({config.rate_limit_max_wait:g} s) is not below the "
                    f"time_limit of queue {queue.name!r} ({queue.time_limit} ms), whose provider {limited[0]!r} "
                    "is limited: waiting for a token could use up the whole attempt.",
                    hint=f"Lower RATE_LIMIT_MAX_WAIT or raise MAILQUEUE['QUEUES'][{queue.name!r}]['time_limit'].",
                )

    def check_protocol(self, where: str, value: Any) -> bool:
        """mailqueue.client sets protocol=2 on every connection: RESP3 (redis-py 8's default) is refused here."""
        # mailqueue.client.Wire reads RESP2 replies; RESP3 adds push messages and attribute types it does not read.
        if str(value) == "2":
            return True
        self.problems.add(
            "mailqueue.E017",
            f"{where} must be 2 (RESP2), not {value!r}.",
            hint="Leave 'protocol' out (mailqueue sets 2 on every connection it makes) or set it to 2: "
            "mailqueue reads RESP2 replies itself.",
        )
        return False

    def check_heartbeat(self, config: MailQueueConfig) -> None:
        """A worker heartbeats once per RECOVERY_INTERVAL: one late beat must not make it look dead."""
        if config.heartbeat_timeout < 2 * config.recovery_interval:
            self.problems.add(
                "mailqueue.E024",
                f"MAILQUEUE['HEARTBEAT_TIMEOUT'] ({config.heartbeat_timeout} ms) is less than twice "
                f"RECOVERY_INTERVAL ({config.recovery_interval} ms): a live worker, which heartbeats once per "
                "RECOVERY_INTERVAL, would be taken for dead after a single late beat.",
                hint="Keep HEARTBEAT_TIMEOUT at five or more RECOVERY_INTERVALs (the defaults are 10000 and 1000).",
            )

    def check_broker_url(self, url: Any) -> bool:
        try:
            if not isinstance(url, str):
                raise ValueError(f"expected a string, got {type(url).__name__}")
            options = parse_url(url)  # type: ignore[no-untyped-call]
        except ValueError as error:
            self.problems.add(
                "mailqueue.E007",
                f"MAILQUEUE['BROKER_URL'] {url!r} is not a Redis URL: {error}",
                hint="Use e.g. redis://127.0.0.1:6379/0, rediss://host:6380/0 or unix:///path/redis.sock.",
            )
            return False
        # In the URL it would win over the protocol=2 that mailqueue.client sets.
        return "protocol" not in options or self.check_protocol(
            "The 'protocol' parameter of MAILQUEUE['BROKER_URL']", options["protocol"]
        )


def check_mailers(problems: Problems, config: MailQueueConfig) -> None:
    """Every provider is a delivering mailer, and every queued mailer enqueues onto a configured queue."""
    queues = config.queues
    for alias in config.providers:
        if alias not in mailers_setting():
            problems.add(
                "mailqueue.E004", f"MAILQUEUE['PROVIDERS'][{alias!r}] names {alias!r}, which is not in MAILERS."
            )
    for queue in queues.values():
        where = f"MAILQUEUE['QUEUES'][{queue.name!r}]"
        for alias in queue.providers:
            if alias not in mailers_setting():
                problems.add(
                    "mailqueue.E004",
                    f"{where} delivers through {alias!r}, which is not in MAILERS.",
                    hint=f"Add MAILERS[{alias!r}] with a delivering BACKEND (SMTP, anymail, ...).",
                )
            elif is_queued_mailer(alias):
                problems.add(
                    "mailqueue.E005",
                    f"{where} delivers through {alias!r}, which is itself a queued mailer: "
                    "mail would go round in circles.",
                    hint="Providers must be delivering backends (SMTP, anymail, ...).",
                )
    for alias, entry in queued_mailers().items():
        options = entry.get("OPTIONS") or {}
        if not isinstance(options.get("on_commit", False), bool):
            problems.add("mailqueue.E006", f"MAILERS[{alias!r}] OPTIONS 'on_commit' must be True or False.")
        target = options.get("queue")
        if target is not None and target not in queues:
            problems.add(
                "mailqueue.E006",
                f"MAILERS[{alias!r}] enqueues onto {target!r}, which is not in MAILQUEUE['QUEUES'].",
                hint=f"Configured queues: {', '.join(queues) or '(none)'}.",
            )
