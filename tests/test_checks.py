"""System checks name each misconfiguration and say what to fix."""

from __future__ import annotations

import pytest
from django.core.mail import send_mail
from django.core.management import call_command
from django.core.management.base import SystemCheckError

from mailqueue.checks import check_configuration
from mailqueue.conf import RateLimit, get_config
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
        ({"QUEUES": {"default": {"providers": ["smtp"], "max_retries": -1}}}, None, "mailqueue.E010", "max_retries"),
        (
            {"QUEUES": {"default": {"providers": ["smtp"]}}, "POOLS": {"p": {"queues": ["nope"]}}},
            None,
            "mailqueue.E011",
            "unknown queue(s) 'nope'",
        ),
        (
            {"QUEUES": {"default": {"providers": ["smtp"], "min_backoff": 10, "max_backoff": 5}}},
            None,
            "mailqueue.E010",
            "min_backoff is larger",
        ),
        (
            {"QUEUES": {"default": {"providers": ["smtp"]}}, "PROVIDERS": {"smtp": {"wait_min": 3, "wait_max": 1}}},
            None,
            "mailqueue.E010",
            "wait_min is larger",
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
            "mailqueue.E010",
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
            "mailqueue.E010",
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
            "mailqueue.E010",
            "max_concurrency",
        ),
        (
            {"QUEUES": {"default": {"providers": ["smtp"]}}, "PROVIDERS": {"smtp": {"cooldown": -1}}},
            None,
            "mailqueue.E010",
            "cooldown",
        ),
        (
            {"QUEUES": {"default": {"providers": ["smtp"]}}, "DEDUP_WINDOW": 0},
            None,
            "mailqueue.E010",
            "DEDUP_WINDOW",
        ),
        (
            {"QUEUES": {"default": {"providers": ["smtp"]}}, "RATE_LIMIT_MAX_WAIT": "1s"},
            None,
            "mailqueue.E010",
            "RATE_LIMIT_MAX_WAIT",
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
            "mailqueue.E010",
            "must be more than 0 seconds",
        ),
        (
            {
                "QUEUES": {"default": {"providers": ["smtp"], "time_limit": 1000}},
                "PROVIDERS": {"smtp": {"rate_limit": "5/s"}},
                "RATE_LIMIT_MAX_WAIT": 2,
            },
            None,
            "mailqueue.E010",
            "is not below the time_limit of queue 'default'",
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
