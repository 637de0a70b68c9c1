"""System checks name each misconfiguration and say what to fix."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from django.core.mail import send_mail
from django.core.management import call_command
from django.core.management.base import SystemCheckError

from mailqueue.checks import check_configuration
from mailqueue.conf import Quota, RateLimit, get_config
from mailqueue.exceptions import MailQueueImproperlyConfigured

SMTP = {"BACKEND": "django.core.mail.backends.smtp.EmailBackend", "OPTIONS": {"host": "127.0.0.1", "timeout": 5}}
QUEUED = "mailqueue.backend.EmailBackend"


def errors(settings, mailqueue, mailers=None) -> dict[str, str]:
    settings.MAILERS = mailers if mailers is not None else {"default": {"BACKEND": QUEUED}, "smtp": SMTP}
    settings.MAILQUEUE = mailqueue
    found: dict[str, str] = {}
    for error in check_configuration():
        found[error.id] = f"{found[error.id]} | {error.msg}" if error.id in found else error.msg
    return found


def test_a_valid_configuration_has_no_errors(settings) -> None:
    assert errors(settings, {"QUEUES": {"default": {"providers": ["smtp"]}}}) == {}


@pytest.mark.parametrize(
    ("mailqueue", "mailers", "code", "fragment"),
    [
        (
            {"QUEUES": {"default": {"providers": ["smtp"]}}, "QUEUS": {}},
            None,
            "mailqueue.E001",
            "unknown key(s) 'QUEUS'",
        ),
        (None, None, "mailqueue.E002", "MAILQUEUE setting is missing"),
        ({"QUEUES": {}}, None, "mailqueue.E002", "must name at least one queue"),
        ({"QUEUES": {"default": {"providers": []}}}, None, "mailqueue.E003", "has no providers"),
        ({"QUEUES": {"default": {"providers": ["ses"]}}}, None, "mailqueue.E004", "'ses', which is not in MAILERS"),
        (
            {"QUEUES": {"default": {"providers": ["smtp"]}}, "PROVIDERS": {"ses": {}}},
            None,
            "mailqueue.E004",
            "not in MAILERS",
        ),
        ({"QUEUES": {"default": {"providers": ["default"]}}}, None, "mailqueue.E005", "itself a queued mailer"),
        (
            {"QUEUES": {"default": {"providers": ["smtp"]}}},
            {"default": {"BACKEND": QUEUED, "OPTIONS": {"queue": "critical"}}, "smtp": SMTP},
            "mailqueue.E006",
            "enqueues onto 'critical', which is not in MAILQUEUE['QUEUES']",
        ),
        (
            {"BROKER_URL": "http://nope", "QUEUES": {"default": {"providers": ["smtp"]}}},
            None,
            "mailqueue.E007",
            "not a Redis URL",
        ),
        ({"QUEUES": {"bad name!": {"providers": ["smtp"]}}}, None, "mailqueue.E008", "Queue name 'bad name!'"),
        (
            {"QUEUES": {"default": {"providers": ["smtp"]}}, "DEFAULT_QUEUE": "x"},
            None,
            "mailqueue.E008",
            "DEFAULT_QUEUE",
        ),
        (
            {"QUEUES": {"default": {"providers": ["smtp"]}}, "ROUTES": [{"tag": "n", "queue": "bulk"}]},
            None,
            "mailqueue.E009",
            "routes to 'bulk'",
        ),
        (
            {"QUEUES": {"default": {"providers": ["smtp"]}}, "ROUTES": ["no.such.module.fn"]},
            None,
            "mailqueue.E009",
            "cannot import",
        ),
        (
            {"QUEUES": {"default": {"providers": ["smtp"]}}, "ROUTES": [{"queue": "default"}]},
            None,
            "mailqueue.E009",
            "exactly one of",
        ),
        (
            {"QUEUES": {"default": {"providers": ["smtp"], "max_retries": -1}}},
            None,
            "mailqueue.E015",
            "max_retries'] must be an integer >= 0, not -1",
        ),
        (
            {"QUEUES": {"default": {"providers": ["smtp"]}}, "POOLS": {"p": {"queues": ["nope"]}}},
            None,
            "mailqueue.E011",
            "unknown queue(s) 'nope'",
        ),
        (
            {"QUEUES": {"default": {"providers": ["smtp"], "min_backoff": 10, "max_backoff": 5}}},
            None,
            "mailqueue.E020",
            "min_backoff (10 ms) is larger than max_backoff (5 ms)",
        ),
        (
            {"QUEUES": {"default": {"providers": ["smtp"]}}, "PROVIDERS": {"smtp": {"wait_min": 3, "wait_max": 1}}},
            None,
            "mailqueue.E021",
            "wait_min (3 s) is larger than wait_max (1 s)",
        ),
        (
            {"QUEUES": {"default": {"providers": ["smtp"]}}, "ROUTES": [{"callable": 42}]},
            None,
            "mailqueue.E009",
            "dotted path or a callable",
        ),
        (
            {
                "QUEUES": {"default": {"providers": ["smtp"]}, "bulk": {"providers": ["smtp"]}},
                "POOLS": {"p": {"queues": ["default"]}},
            },
            None,
            "mailqueue.E011",
            "Queue 'bulk' is in no pool",
        ),
        (
            {"QUEUES": {"default": {"providers": ["smtp"]}}},
            {"default": {"BACKEND": QUEUED, "OPTIONS": {"on_commit": "yes"}}, "smtp": SMTP},
            "mailqueue.E006",
            "'on_commit' must be True or False",
        ),
        (
            {"QUEUES": {"default": {"providers": ["smtp"]}}, "BROKER_OPTIONS": {"protocol": 3}},
            None,
            "mailqueue.E017",
            "['protocol'] must be 2 (RESP2), not 3",
        ),
        (
            {"QUEUES": {"default": {"providers": ["smtp"]}}, "ON_BROKER_FAILURE": "drop"},
            None,
            "mailqueue.E013",
            "MAILQUEUE['ON_BROKER_FAILURE'] is 'drop'",
        ),
        (
            {"QUEUES": {"default": {"providers": ["smtp"]}}, "OUTBOX_DATABASE": "nope"},
            None,
            "mailqueue.E013",
            "'nope', not a DATABASES alias",
        ),
        (
            {"QUEUES": {"default": {"providers": ["smtp"]}}, "PROVIDERS": {"smtp": {"rate_limit": "14 per sec"}}},
            None,
            "mailqueue.E014",
            "'14 per sec', which is not a rate",
        ),
        (
            {"QUEUES": {"default": {"providers": ["smtp"]}}, "PROVIDERS": {"smtp": {"rate_limit": "0/s"}}},
            None,
            "mailqueue.E014",
            "not a rate",
        ),
        (
            {
                "QUEUES": {"default": {"providers": ["smtp"]}},
                "PROVIDERS": {"smtp": {"rate_limit": {"rate": "5/s", "burst": 0}}},
            },
            None,
            "mailqueue.E015",
            "burst must be an integer >= 1",
        ),
        (
            {
                "QUEUES": {"default": {"providers": ["smtp"]}},
                "PROVIDERS": {"smtp": {"rate_limit": {"rate": "5/s", "brust": 2}}},
            },
            None,
            "mailqueue.E001",
            "unknown key(s) 'brust'",
        ),
        (
            {"QUEUES": {"default": {"providers": ["smtp"]}}, "PROVIDERS": {"smtp": {"max_concurrency": 0}}},
            None,
            "mailqueue.E015",
            "['max_concurrency'] must be an integer >= 1, not 0",
        ),
        (
            {"QUEUES": {"default": {"providers": ["smtp"]}}, "PROVIDERS": {"smtp": {"cooldown": -1}}},
            None,
            "mailqueue.E016",
            "['cooldown'] must be seconds >= 0 (an int or a float), not -1",
        ),
        (
            {"QUEUES": {"default": {"providers": ["smtp"]}}, "DEDUP_WINDOW": 0},
            None,
            "mailqueue.E015",
            "MAILQUEUE['DEDUP_WINDOW'] must be an integer >= 1, not 0",
        ),
        (
            {"QUEUES": {"default": {"providers": ["smtp"]}}, "RATE_LIMIT_MAX_WAIT": "1s"},
            None,
            "mailqueue.E016",
            "MAILQUEUE['RATE_LIMIT_MAX_WAIT'] must be seconds >= 0 (an int or a float), not '1s'",
        ),
        (
            {"QUEUES": {"default": {"providers": ["smtp"]}}, "OUTBOX_DATABASE": ["default"]},
            None,
            "mailqueue.E013",
            "must be a DATABASES alias",
        ),
        (
            {"QUEUES": {"default": {"providers": ["smtp"]}}, "PROVIDERS": {"smtp": {"cooldown": 0}}},
            None,
            "mailqueue.E022",
            "['cooldown'] must be more than 0 seconds",
        ),
        (
            {
                "QUEUES": {"default": {"providers": ["smtp"], "time_limit": 1000}},
                "PROVIDERS": {"smtp": {"rate_limit": "5/s"}},
                "RATE_LIMIT_MAX_WAIT": 2,
            },
            None,
            "mailqueue.E023",
            "is not below the time_limit of queue 'default'",
        ),
        # The specific codes that replaced the catch-all E010: one per kind of fix.
        (
            {
                "QUEUES": {"default": {"providers": ["smtp"], "time_limit": 0}},
                "POOLS": {"p": {"queues": ["default"], "processes": 0}},
            },
            None,
            "mailqueue.E015",
            "MAILQUEUE['POOLS']['p']['processes'] must be an integer >= 1, not 0",
        ),
        (
            {"QUEUES": {"default": {"providers": ["smtp"]}}, "MAX_MESSAGE_BYTES": 2.5},
            None,
            "mailqueue.E015",
            "MAILQUEUE['MAX_MESSAGE_BYTES'] must be an integer >= 1, not 2.5",
        ),
        (
            {"QUEUES": {"default": {"providers": ["smtp"]}}, "HEARTBEAT_TIMEOUT": True},
            None,
            "mailqueue.E015",
            "MAILQUEUE['HEARTBEAT_TIMEOUT'] must be an integer >= 1, not True",
        ),
        (
            {"QUEUES": {"default": {"providers": ["smtp"]}}, "RECOVERY_INTERVAL": 0},
            None,
            "mailqueue.E015",
            "MAILQUEUE['RECOVERY_INTERVAL'] must be an integer >= 1, not 0",
        ),
        (
            {"QUEUES": {"default": {"providers": ["smtp"]}}, "HEARTBEAT_TIMEOUT": 3000, "RECOVERY_INTERVAL": 2000},
            None,
            "mailqueue.E024",
            "MAILQUEUE['HEARTBEAT_TIMEOUT'] (3000 ms) is less than twice RECOVERY_INTERVAL (2000 ms)",
        ),
        (
            {"QUEUES": {"default": {"providers": ["smtp"]}}, "LOG": True},
            None,
            "mailqueue.E025",
            "MAILQUEUE['LOG'] must be a dict, not bool",
        ),
        (
            {"QUEUES": {"default": {"providers": ["smtp"]}}, "LOG": {"ENABLED": "no"}},
            None,
            "mailqueue.E025",
            "MAILQUEUE['LOG']['ENABLED'] must be True or False, not 'no'",
        ),
        (
            {"QUEUES": {"default": {"providers": ["smtp"]}}, "LOG": {"RECIPIENTS": "encrypt"}},
            None,
            "mailqueue.E026",
            "MAILQUEUE['LOG']['RECIPIENTS'] is 'encrypt'",
        ),
        (
            {"QUEUES": {"default": {"providers": ["smtp"]}}, "LOG": {"STREAM_MAXLEN": 0}},
            None,
            "mailqueue.E015",
            "MAILQUEUE['LOG']['STREAM_MAXLEN'] must be an integer >= 1, not 0",
        ),
        (
            {"QUEUES": {"default": {"providers": ["smtp"]}}, "LOG": {"BATCH_WAIT": -1}},
            None,
            "mailqueue.E015",
            "MAILQUEUE['LOG']['BATCH_WAIT'] must be an integer >= 0, not -1",
        ),
        (
            {"QUEUES": {"default": {"providers": ["smtp"]}}, "LOG": {"RETENTION": 7}},
            None,
            "mailqueue.E001",
            "MAILQUEUE['LOG'] has unknown key(s) 'RETENTION'",
        ),
        (
            {"QUEUES": {"default": {"providers": ["smtp"]}}, "MAINTENANCE_CHANCE": -1},
            None,
            "mailqueue.E015",
            "MAILQUEUE['MAINTENANCE_CHANCE'] must be an integer >= 0",
        ),
        (
            {"QUEUES": {"default": {"providers": ["smtp"]}}, "PROVIDERS": {"smtp": {"attempts": "3"}}},
            None,
            "mailqueue.E015",
            "['attempts'] must be an integer >= 1, not '3'",
        ),
        (
            {"QUEUES": {"default": {"providers": ["smtp"]}}, "PROVIDERS": {"smtp": {"wait_min": -0.5}}},
            None,
            "mailqueue.E016",
            "['wait_min'] must be seconds >= 0 (an int or a float), not -0.5",
        ),
        (
            {"QUEUES": {"default": {"providers": ["smtp"]}}, "ON_COMMIT": "yes"},
            None,
            "mailqueue.E018",
            "MAILQUEUE['ON_COMMIT'] must be True or False, not 'yes'",
        ),
        (
            {"QUEUES": {"default": {"providers": ["smtp"]}}, "ON_COMMIT_USING": "replica"},
            None,
            "mailqueue.E019",
            "MAILQUEUE['ON_COMMIT_USING'] is 'replica', not a DATABASES alias",
        ),
        (
            {"QUEUES": {"default": {"providers": ["smtp"]}}, "ON_COMMIT": False, "ON_COMMIT_USING": "replica"},
            {"default": {"BACKEND": QUEUED, "OPTIONS": {"on_commit": True}}, "smtp": SMTP},
            "mailqueue.E019",
            "'replica', not a DATABASES alias",
        ),
        # Only min_backoff given: it is compared with max_backoff's default (QueueConfig's, 1 h).
        (
            {"QUEUES": {"default": {"providers": ["smtp"], "min_backoff": 4_000_000}}},
            None,
            "mailqueue.E020",
            "min_backoff (4000000 ms) is larger than max_backoff (3600000 ms)",
        ),
        (
            {"QUEUES": {"default": {"providers": ["smtp"]}}, "PROVIDERS": {"smtp": {"wait_min": 5}}},
            None,
            "mailqueue.E021",
            "wait_min (5 s) is larger than wait_max (2 s)",
        ),
        (
            {
                "QUEUES": {"default": {"providers": ["smtp"], "time_limit": 500}},
                "PROVIDERS": {"smtp": {"max_concurrency": 2}},
            },
            None,
            "mailqueue.E023",
            "RATE_LIMIT_MAX_WAIT'] (1 s) is not below the time_limit of queue 'default' (500 ms)",
        ),
        (
            {"QUEUES": {"default": {"providers": ["smtp"], "strategy": "round-robin"}}},
            None,
            "mailqueue.E027",
            "MAILQUEUE['QUEUES']['default']['strategy'] is 'round-robin'",
        ),
        (
            {"QUEUES": {"default": {"providers": ["smtp"], "weights": {"smtp": 1}}}},
            None,
            "mailqueue.E028",
            "only a \"weighted\" queue uses weights; its strategy is 'failover'",
        ),
        (
            {
                "QUEUES": {
                    "default": {"providers": ["smtp", "b"], "strategy": "weighted", "weights": {"smtp": 1, "c": 2}}
                }
            },
            {"default": {"BACKEND": QUEUED}, "smtp": SMTP, "b": SMTP},
            "mailqueue.E028",
            "['weights'] names 'c', not in the queue's providers and leaves out 'b'",
        ),
        (
            {"QUEUES": {"default": {"providers": ["smtp"], "strategy": "weighted", "weights": {"smtp": 1.5}}}},
            None,
            "mailqueue.E028",
            "['weights']['smtp'] must be an integer >= 0, not 1.5",
        ),
        (
            {"QUEUES": {"default": {"providers": ["smtp"], "strategy": "weighted", "weights": {"smtp": 0}}}},
            None,
            "mailqueue.E028",
            "are all 0: no provider would ever be drawn",
        ),
        (
            {"QUEUES": {"default": {"providers": ["smtp"], "strategy": "weighted", "weights": ["smtp"]}}},
            None,
            "mailqueue.E028",
            "must be a dict of provider alias to weight, not list",
        ),
        (
            {"QUEUES": {"default": {"providers": ["smtp"], "latency_budget": 2}}},
            None,
            "mailqueue.E029",
            "has a latency_budget, which only a \"spill-over\" queue uses; its strategy is 'failover'",
        ),
        (
            {"QUEUES": {"default": {"providers": ["smtp"], "strategy": "spill-over", "latency_budget": -1}}},
            None,
            "mailqueue.E016",
            "['latency_budget'] must be seconds >= 0",
        ),
        (
            {"QUEUES": {"default": {"providers": ["smtp"], "strategy": "spill-over", "latency_budget": float("inf")}}},
            None,
            "mailqueue.E016",
            "['latency_budget'] must be a finite number of seconds, not inf",
        ),
        (
            {"QUEUES": {"default": {"providers": ["smtp"], "strategy": "spill-over", "latency_budget": float("nan")}}},
            None,
            "mailqueue.E016",
            "['latency_budget'] must be a finite number of seconds, not nan",
        ),
        (
            {"QUEUES": {"default": {"providers": ["smtp"]}}, "PROVIDERS": {"smtp": {"cooldown": float("inf")}}},
            None,
            "mailqueue.E016",
            "['cooldown'] must be a finite number of seconds, not inf",
        ),
        (
            {"QUEUES": {"default": {"providers": ["smtp"]}}, "PROVIDERS": {"smtp": {"wait_max": float("inf")}}},
            None,
            "mailqueue.E016",
            "['wait_max'] must be a finite number of seconds, not inf",
        ),
        (
            {"QUEUES": {"default": {"providers": ["smtp"]}}, "RATE_LIMIT_MAX_WAIT": float("inf")},
            None,
            "mailqueue.E016",
            "MAILQUEUE['RATE_LIMIT_MAX_WAIT'] must be a finite number of seconds, not inf",
        ),
        (
            {"QUEUES": {"default": {"providers": ["smtp"]}}, "BROKER_COOLDOWN": float("nan")},
            None,
            "mailqueue.E016",
            "MAILQUEUE['BROKER_COOLDOWN'] must be a finite number of seconds, not nan",
        ),
        (
            {"QUEUES": {"default": {"providers": ["smtp"]}}, "PROVIDERS": {"smtp": {"quota": "50000/week"}}},
            None,
            "mailqueue.E030",
            "MAILQUEUE['PROVIDERS']['smtp']['quota'] is '50000/week', which is not a quota",
        ),
        (
            {"QUEUES": {"default": {"providers": ["smtp"]}}, "PROVIDERS": {"smtp": {"quota": "100/s"}}},
            None,
            "mailqueue.E030",
            "is '100/s', which is not a quota",
        ),
        (
            {"QUEUES": {"default": {"providers": ["postmark"]}}},
            {"default": {"BACKEND": QUEUED}, "postmark": {"BACKEND": "anymail.backends.postmark.EmailBackend"}},
            "mailqueue.E012",
            "Provider MAILERS['postmark'] cannot be created",
        ),
    ],
)
def test_each_misconfiguration_is_reported(settings, mailqueue, mailers, code, fragment) -> None:
    found = errors(settings, mailqueue, mailers)
    assert code in found, found
    assert fragment in found[code]
    assert "mailqueue.E010" not in found, "the catch-all code is retired"


def test_a_provider_without_a_timeout_is_warned_about(settings) -> None:
    no_timeout = {"BACKEND": "django.core.mail.backends.smtp.EmailBackend", "OPTIONS": {"host": "127.0.0.1"}}
    with_timeout = {
        "BACKEND": "django.core.mail.backends.smtp.EmailBackend",
        "OPTIONS": {"host": "127.0.0.1", "timeout": 5},
    }
    found = errors(
        settings,
        {"QUEUES": {"default": {"providers": ["a", "b"]}}},
        {"default": {"BACKEND": QUEUED}, "a": no_timeout, "b": with_timeout},
    )
    assert list(found) == ["mailqueue.W001"]
    assert "MAILERS['a'] has no timeout" in found["mailqueue.W001"]


def test_manage_py_check_fails_on_misconfiguration(settings) -> None:
    settings.MAILERS = {"default": {"BACKEND": QUEUED}}
    settings.MAILQUEUE = {"QUEUES": {"default": {"providers": ["postmark"]}}}
    with pytest.raises(SystemCheckError, match="mailqueue.E004"):
        call_command("check")


def test_sending_with_a_broken_configuration_raises_improperly_configured(settings) -> None:
    settings.MAILERS = {"default": {"BACKEND": QUEUED}}
    settings.MAILQUEUE = {"QUEUES": {"default": {"providers": ["postmark"]}}}
    with pytest.raises(MailQueueImproperlyConfigured, match="mailqueue.E004"):
        send_mail("s", "b", None, ["a@example.com"])


def test_rate_limits_are_read_into_token_buckets(settings) -> None:
    errors(
        settings,
        {
            "QUEUES": {"default": {"providers": ["smtp"]}},
            "PROVIDERS": {"smtp": {"rate_limit": [{"rate": "14/s", "burst": 2}, "50000/day", "600 / m"]}},
        },
    )
    assert get_config().provider("smtp").rate_limits == (
        RateLimit(count=14, period=1, burst=2),
        RateLimit(count=50000, period=86400, burst=1),
        RateLimit(count=600, period=60, burst=1),
    )


def test_strategies_weights_budgets_and_quotas_are_read(settings) -> None:
    mailers = {"default": {"BACKEND": QUEUED}, "ses": SMTP, "sendgrid": SMTP, "postmark": SMTP}
    found = errors(
        settings,
        {
            "QUEUES": {
                "critical": {"providers": ["postmark", "ses"]},
                "bulk": {
                    "providers": ["ses", "sendgrid"],
                    "strategy": "weighted",
                    "weights": {"sendgrid": 1, "ses": 3},
                },
                "even": {"providers": ["ses", "sendgrid"], "strategy": "weighted"},
                "default": {"providers": ["ses", "sendgrid"], "strategy": "spill-over", "latency_budget": 0.5},
            },
            "PROVIDERS": {"ses": {"quota": "50000/d"}, "sendgrid": {"quota": "2000 / hour"}},
        },
        mailers,
    )
    assert found == {}
    config = get_config()
    critical, bulk, even, default = (config.queues[name] for name in ("critical", "bulk", "even", "default"))
    assert (critical.strategy, critical.weights) == ("failover", ())
    assert (bulk.strategy, bulk.weights, bulk.weight("ses"), bulk.weight("sendgrid")) == ("weighted", (3, 1), 3, 1)
    assert even.weights == (1, 1)
    assert (default.strategy, default.latency_budget) == ("spill-over", 0.5)
    assert config.provider("ses").quota == Quota(count=50000, period=86400)
    assert str(config.provider("sendgrid").quota) == "2000/h"
    assert config.provider("postmark").quota is None


def test_no_error_when_on_commit_is_off_and_its_database_is_unused(settings) -> None:
    found = errors(
        settings, {"QUEUES": {"default": {"providers": ["smtp"]}}, "ON_COMMIT": False, "ON_COMMIT_USING": "x"}
    )
    assert found == {}


def hints(settings, mailqueue) -> dict[str, str]:
    settings.MAILERS = {"default": {"BACKEND": QUEUED}, "smtp": SMTP}
    settings.MAILQUEUE = mailqueue
    return {error.msg: error.hint for error in check_configuration()}


@pytest.mark.parametrize(
    ("spec", "hint"),
    [
        ({"QUEUES": {"default": {"providers": ["smtp"], "max_retries": -1}}}, "or leave it out for the default, 10."),
        (
            {"QUEUES": {"default": {"providers": ["smtp"]}}, "PROVIDERS": {"smtp": {"max_concurrency": 0}}},
            "leave it out for no limit.",
        ),
        (
            {"QUEUES": {"default": {"providers": ["smtp"]}}, "PROVIDERS": {"smtp": {"cooldown": -1}}},
            "leave it out for the default, 30.",
        ),
        (
            {"QUEUES": {"default": {"providers": ["smtp"]}}, "RATE_LIMIT_MAX_WAIT": None},
            "leave it out for the default, 1.",
        ),
        ({"QUEUES": {"default": {"providers": ["smtp"]}}, "BROKER_OPTIONS": {"protocol": 3}}, "set it to 2"),
        (
            {"QUEUES": {"default": {"providers": ["smtp"]}}, "ON_COMMIT": 1},
            "True enqueues when the transaction commits",
        ),
        (
            {"QUEUES": {"default": {"providers": ["smtp"], "min_backoff": 9, "max_backoff": 8}}},
            "Lower min_backoff or raise max_backoff",
        ),
        (
            {
                "QUEUES": {"default": {"providers": ["smtp"], "time_limit": 1000}},
                "PROVIDERS": {"smtp": {"rate_limit": "5/s"}},
                "RATE_LIMIT_MAX_WAIT": 2,
            },
            "raise MAILQUEUE['QUEUES']['default']['time_limit']",
        ),
    ],
)
def test_each_new_problem_says_what_to_change(settings, spec, hint) -> None:
    found = hints(settings, spec)
    assert len(found) == 1, found
    assert hint in (next(iter(found.values())) or "")


def test_every_code_is_documented_and_every_documented_code_exists() -> None:
    root = Path(__file__).resolve().parent.parent
    section = (root / "docs" / "configuration.md").read_text().split("## System checks", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"^\| `(mailqueue\.[EW]\d{3})`", section, flags=re.MULTILINE))
    source = "".join(path.read_text() for path in (root / "mailqueue").glob("*.py"))
    raised = set(re.findall(r'"(mailqueue\.[EW]\d{3})"', source))
    assert "mailqueue.E010" not in raised
    assert documented == raised
