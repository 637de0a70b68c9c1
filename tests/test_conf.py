"""The settings modules: defaults live on the value types, and the modules import in one direction."""

from __future__ import annotations

import ast
from dataclasses import fields, replace
from pathlib import Path

import pytest

from mailqueue import conf, config_reader, config_sections, settings_values
from mailqueue.conf import get_config
from mailqueue.config_reader import TOP_LEVEL_KEYS
from mailqueue.settings_values import (
    LogConfig,
    MailQueueConfig,
    PoolConfig,
    ProviderConfig,
    QueueConfig,
    RateLimit,
    default,
)

SMTP = {"BACKEND": "django.core.mail.backends.smtp.EmailBackend", "OPTIONS": {"host": "127.0.0.1", "timeout": 5}}


def configure(settings, mailqueue) -> MailQueueConfig:
    settings.MAILERS = {"default": {"BACKEND": "mailqueue.backend.EmailBackend"}, "smtp": SMTP}
    settings.MAILQUEUE = mailqueue
    return get_config()


def test_a_minimal_setting_reads_into_the_value_types_defaults(settings) -> None:
    config = configure(settings, {"QUEUES": {"default": {"providers": "smtp"}}, "PROVIDERS": {"smtp": {}}})
    default_queue = QueueConfig(name="default", providers=("smtp",))
    assert config == replace(
        MailQueueConfig(),
        queues={"default": default_queue},
        providers={"smtp": ProviderConfig(alias="smtp")},
        pools={"default": PoolConfig(name="default", queues=("default",))},
    )


def test_a_rate_limit_without_burst_gets_the_value_types_burst(settings) -> None:
    config = configure(
        settings, {"QUEUES": {"default": {"providers": ["smtp"]}}, "PROVIDERS": {"smtp": {"rate_limit": "5/s"}}}
    )
    assert config.provider("smtp").rate_limits == (RateLimit(count=5, period=1, burst=default(RateLimit, "burst")),)


def test_every_top_level_key_is_a_config_field_in_upper_case() -> None:
    # The reader maps a key to its field by lower-casing it; a key without a field would be lost.
    assert {field.name.upper() for field in fields(MailQueueConfig)} == TOP_LEVEL_KEYS


def test_default_reads_plain_and_factory_defaults_and_refuses_the_rest() -> None:
    assert default(QueueConfig, "min_backoff") == 15_000
    assert default(MailQueueConfig, "broker_options") == {}
    with pytest.raises(TypeError, match="has no default"):
        default(QueueConfig, "name")
    with pytest.raises(TypeError, match="has no field 'nope'"):
        default(QueueConfig, "nope")


def _package_imports(module: object) -> set[str]:
    """The mailqueue modules ``module`` imports at its top level."""
    tree = ast.parse(Path(module.__file__).read_text())  # type: ignore[attr-defined]
    found = set()
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module:
            found.add(node.module)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("mailqueue."):
            found.add(node.module.removeprefix("mailqueue."))  # type: ignore[union-attr]
    return found


def test_the_settings_modules_import_in_one_direction() -> None:
    # values <- sections <- reader <- conf: get_config needs the reader, the reader needs the values,
    # and nothing points back, so no import has to hide inside a function.
    assert _package_imports(settings_values) == set()
    assert _package_imports(config_sections) == {"settings_values"}
    assert _package_imports(config_reader) == {"config_sections", "settings_values"}
    assert _package_imports(conf) == {"config_reader", "exceptions", "settings_values"}


@pytest.mark.parametrize(
    "name",
    [
        "MailQueueConfig",
        "QueueConfig",
        "ProviderConfig",
        "PoolConfig",
        "RateLimit",
        "Quota",
        "Route",
        "get_config",
        "on_config_reset",
        "django_setting",
        "HOT_DJANGO_SETTINGS",
    ],
)
def test_names_other_modules_import_from_conf_are_still_there(name) -> None:
    assert name in conf.__all__
    assert getattr(conf, name) is not None


def test_the_log_section_reads_into_a_frozen_log_config(settings) -> None:
    log = {
        "ENABLED": False,
        "STREAM_MAXLEN": 5000,
        "RECIPIENTS": "hash",
        "RETENTION_DAYS": 7,
        "BATCH_SIZE": 100,
        "BATCH_WAIT": 0,
    }
    config = configure(settings, {"QUEUES": {"default": {"providers": "smtp"}}, "LOG": log})
    assert config.log == LogConfig(
        enabled=False, stream_maxlen=5000, recipients="hash", retention_days=7, batch_size=100, batch_wait=0
    )
    assert configure(settings, {"QUEUES": {"default": {"providers": "smtp"}}}).log == LogConfig()


def test_a_queue_without_a_strategy_is_a_failover_chain_with_the_value_types_defaults(settings) -> None:
    queue = configure(settings, {"QUEUES": {"default": {"providers": "smtp"}}}).queues["default"]
    assert (queue.strategy, queue.weights, queue.latency_budget) == (
        default(QueueConfig, "strategy"),
        default(QueueConfig, "weights"),
        default(QueueConfig, "latency_budget"),
    )
    assert queue.strategy == "failover" and queue.weight("smtp") == 0


def test_a_spill_over_queue_without_a_budget_gets_the_value_types_budget(settings) -> None:
    spec = {"QUEUES": {"default": {"providers": "smtp", "strategy": "spill-over"}}}
    assert configure(settings, spec).queues["default"].latency_budget == default(QueueConfig, "latency_budget")
