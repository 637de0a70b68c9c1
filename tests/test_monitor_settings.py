"""MAILQUEUE["MONITOR"]: each mistake is a system check that says what to fix, and who may monitor.

The checks run through Django's check framework (``run_checks`` with the ``mailqueue`` tag, as ``manage.py
check`` does); ``may_monitor`` is asked about real users in the test database.
"""

from __future__ import annotations

import pytest
from django.contrib.auth.models import AnonymousUser, Permission
from django.core import checks
from django.core.management import call_command
from django.core.management.base import SystemCheckError

from mailqueue.access import may_monitor
from mailqueue.conf import get_config
from mailqueue.exceptions import MailQueueImproperlyConfigured
from mailqueue.settings_values import MonitorConfig

SMTP = {"BACKEND": "django.core.mail.backends.smtp.EmailBackend", "OPTIONS": {"host": "127.0.0.1", "timeout": 5}}
MAILERS = {"default": {"BACKEND": "mailqueue.backend.EmailBackend"}, "smtp": SMTP}
TOKEN = "0123456789abcdef-0123456789abcdef"


def configure(settings, monitor: object = None, *, leave_out: bool = False) -> None:
    settings.MAILERS = MAILERS
    settings.MAILQUEUE = {"QUEUES": {"default": {"providers": ["smtp"]}}}
    if not leave_out:
        settings.MAILQUEUE = {**settings.MAILQUEUE, "MONITOR": monitor}


def reported(settings, monitor: object) -> dict[str, list[checks.CheckMessage]]:
    """What ``manage.py check --tag mailqueue`` finds, by check id."""
    configure(settings, monitor)
    found: dict[str, list[checks.CheckMessage]] = {}
    for message in checks.run_checks(tags=["mailqueue"]):
        found.setdefault(message.id or "", []).append(message)
    return found


@pytest.mark.parametrize(
    ("monitor", "code", "fragment", "hint"),
    [
        ([("COUNTERS", False)], "mailqueue.E031", "MAILQUEUE['MONITOR'] must be a dict, not list", None),
        (True, "mailqueue.E031", "MAILQUEUE['MONITOR'] must be a dict, not bool", None),
        (
            {"COUNTERS": "yes"},
            "mailqueue.E031",
            "MAILQUEUE['MONITOR']['COUNTERS'] must be True or False, not 'yes'",
            "False stops the workers from keeping delivery counters",
        ),
        ({"COUNTERS": 1}, "mailqueue.E031", "['COUNTERS'] must be True or False, not 1", None),
        ({"PERMISSION": "staff"}, "mailqueue.E032", "MAILQUEUE['MONITOR']['PERMISSION'] is 'staff'", '"is_staff"'),
        ({"PERMISSION": "is_active"}, "mailqueue.E032", "['PERMISSION'] is 'is_active'", "app_label.codename"),
        ({"PERMISSION": "mailqueue.view message"}, "mailqueue.E032", "is 'mailqueue.view message'", None),
        ({"PERMISSION": ""}, "mailqueue.E032", "['PERMISSION'] is ''", None),
        ({"PERMISSION": None}, "mailqueue.E032", "['PERMISSION'] is None", None),
        ({"PERMISSION": ["is_staff"]}, "mailqueue.E032", "['PERMISSION'] is ['is_staff']", None),
        (
            {"METRICS_TOKEN": "short"},
            "mailqueue.E033",
            "['METRICS_TOKEN'] must be a string of at least 16 characters",
            "secrets.token_urlsafe(32)",
        ),
        ({"METRICS_TOKEN": f" {TOKEN}"}, "mailqueue.E033", "without surrounding spaces", None),
        ({"METRICS_TOKEN": f"{TOKEN}\n"}, "mailqueue.E033", "without surrounding spaces", None),
        ({"METRICS_TOKEN": 1234567890123456789}, "mailqueue.E033", "['METRICS_TOKEN'] must be a string", None),
        ({"METRICS_TOKEN": TOKEN.encode()}, "mailqueue.E033", "['METRICS_TOKEN'] must be a string", None),
        ({"REFRESH": 0.2}, "mailqueue.E016", "['REFRESH'] must be at least 0.5 seconds, not 0.2", "default, 5"),
        ({"REFRESH": 0}, "mailqueue.E016", "['REFRESH'] must be at least 0.5 seconds, not 0", None),
        ({"REFRESH": -5}, "mailqueue.E016", "['REFRESH'] must be seconds >= 0 (an int or a float), not -5", None),
        ({"REFRESH": float("inf")}, "mailqueue.E016", "['REFRESH'] must be a finite number of seconds, not inf", None),
        ({"REFRESH": float("nan")}, "mailqueue.E016", "['REFRESH'] must be a finite number of seconds, not nan", None),
        ({"REFRESH": "5"}, "mailqueue.E016", "['REFRESH'] must be seconds >= 0 (an int or a float), not '5'", None),
        ({"REFRESH": True}, "mailqueue.E016", "['REFRESH'] must be seconds >= 0 (an int or a float), not True", None),
        (
            {"SCALE_TARGET": 0.5},
            "mailqueue.E016",
            "['SCALE_TARGET'] must be at least 1 seconds, not 0.5",
            "default, 60",
        ),
        (
            {"SCALE_TARGET": float("inf")},
            "mailqueue.E016",
            "['SCALE_TARGET'] must be a finite number of seconds, not inf",
            None,
        ),
        ({"SCALE_TARGET": None}, "mailqueue.E016", "['SCALE_TARGET'] must be seconds >= 0", None),
        (
            {"REFRESH": 5, "TOKEN": TOKEN},
            "mailqueue.E001",
            "MAILQUEUE['MONITOR'] has unknown key(s) 'TOKEN'",
            "COUNTERS, METRICS_TOKEN, PERMISSION, REFRESH, SCALE_TARGET",
        ),
        ({"refresh": 5}, "mailqueue.E001", "has unknown key(s) 'refresh'", None),
    ],
)
def test_each_monitor_mistake_is_a_system_check_error(settings, monitor, code, fragment, hint) -> None:
    found = reported(settings, monitor)
    assert list(found) == [code], found
    [error] = found[code]
    assert error.level == checks.ERROR
    assert fragment in error.msg
    if hint is not None:
        assert hint in (error.hint or "")


def test_every_monitor_mistake_is_reported_at_once(settings) -> None:
    found = reported(
        settings,
        {"COUNTERS": "no", "PERMISSION": "root", "METRICS_TOKEN": "x", "REFRESH": 0.1, "SCALE_TARGET": -1, "X": 1},
    )
    assert sorted(found) == ["mailqueue.E001", "mailqueue.E016", "mailqueue.E031", "mailqueue.E032", "mailqueue.E033"]
    assert len(found["mailqueue.E016"]) == 2  # REFRESH and SCALE_TARGET each


def test_manage_py_check_fails_and_sending_refuses_on_a_monitor_mistake(settings) -> None:
    configure(settings, {"PERMISSION": "staff"})
    with pytest.raises(SystemCheckError, match="mailqueue.E032"):
        call_command("check")
    with pytest.raises(MailQueueImproperlyConfigured, match="mailqueue.E032"):
        get_config()


@pytest.mark.parametrize(
    ("monitor", "expected"),
    [
        (None, MonitorConfig()),
        ({}, MonitorConfig()),
        (
            {
                "COUNTERS": False,
                "PERMISSION": "mailqueue.view_message",
                "METRICS_TOKEN": TOKEN,
                "REFRESH": 2,
                "SCALE_TARGET": 30,
            },
            MonitorConfig(
                counters=False,
                permission="mailqueue.view_message",
                metrics_token=TOKEN,
                refresh=2.0,
                scale_target=30.0,
            ),
        ),
        # The lowest values allowed, and the two flags besides a permission.
        ({"REFRESH": 0.5, "SCALE_TARGET": 1}, MonitorConfig(refresh=0.5, scale_target=1.0)),
        ({"PERMISSION": "is_superuser", "METRICS_TOKEN": None}, MonitorConfig(permission="is_superuser")),
        ({"PERMISSION": "is_staff", "COUNTERS": True}, MonitorConfig()),
    ],
)
def test_valid_monitor_settings_land_in_get_config(settings, monitor, expected) -> None:
    assert reported(settings, monitor) == {}
    monitor_config = get_config().monitor
    assert monitor_config == expected
    assert isinstance(monitor_config.refresh, float)
    assert isinstance(monitor_config.scale_target, float)


def test_leaving_monitor_out_gives_the_value_types_defaults(settings) -> None:
    configure(settings, leave_out=True)
    assert checks.run_checks(tags=["mailqueue"]) == []
    assert get_config().monitor == MonitorConfig()
    assert (MonitorConfig().counters, MonitorConfig().permission, MonitorConfig().metrics_token) == (
        True,
        "is_staff",
        None,
    )
    assert (MonitorConfig().refresh, MonitorConfig().scale_target) == (5.0, 60.0)


# --- who may monitor -------------------------------------------------------------------------------------------


@pytest.fixture
def people(django_user_model) -> dict[str, object]:
    """One user of each kind, created in the test database."""
    create = django_user_model.objects.create_user
    viewer = create("viewer", "viewer@example.com", "pw")
    viewer.user_permissions.add(Permission.objects.get(content_type__app_label="mailqueue", codename="view_message"))
    return {
        "anonymous": AnonymousUser(),
        "inactive staff": create("gone", "gone@example.com", "pw", is_staff=True, is_active=False),
        "inactive superuser": django_user_model.objects.create_superuser(
            "old-root", "old-root@example.com", "pw", is_active=False
        ),
        "user": create("ann", "ann@example.com", "pw"),
        "staff": create("bob", "bob@example.com", "pw", is_staff=True),
        "superuser": django_user_model.objects.create_superuser("root", "root@example.com", "pw"),
        # Not staff: the permission alone is what lets them in when PERMISSION names it.
        "viewer": django_user_model.objects.get(pk=viewer.pk),  # fresh: no permission cache from before the grant
    }


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("permission", "allowed"),
    [
        (None, {"staff", "superuser"}),  # MONITOR left out: is_staff (create_superuser makes a staff user)
        ("is_staff", {"staff", "superuser"}),
        ("is_superuser", {"superuser"}),
        ("mailqueue.view_message", {"viewer", "superuser"}),  # has_perm: a superuser has every permission
        ("mailqueue.delete_message", {"superuser"}),
    ],
)
def test_may_monitor_follows_the_configured_permission(settings, people, permission, allowed) -> None:
    configure(settings, {} if permission is None else {"PERMISSION": permission})
    decided = {name for name, user in people.items() if may_monitor(user)}
    assert decided == allowed
    assert may_monitor(None) is False


@pytest.mark.django_db
def test_may_monitor_reads_the_setting_when_asked(settings, people) -> None:
    """A changed setting applies at once (get_config is rebuilt on setting_changed), not at the next restart."""
    configure(settings, {"PERMISSION": "is_staff"})
    assert may_monitor(people["staff"]) is True
    configure(settings, {"PERMISSION": "is_superuser"})
    assert may_monitor(people["staff"]) is False
    assert may_monitor(people["superuser"]) is True
