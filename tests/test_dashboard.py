"""The dashboard's views: who may see them, the JSON they answer, and the dead letters they filter, requeue and purge.

Django's test client against real Redis (this test's namespace); dead letters are recorded through the store's own
API with real envelopes, or made by a real worker against a real SMTP server that refuses the recipient.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from django.contrib.auth.models import Permission
from django.core.mail import EmailMessage, send_mail, send_mass_mail
from django.test import Client
from django.urls import include, path, reverse
from django.utils import timezone

from mailqueue import deadletters, eventlog, views
from mailqueue.deadletters import DeadLetter, DeadLetterFilter
from mailqueue.envelope import Envelope
from mailqueue.keys import QueueKeys, events_key
from mailqueue.models import Message, Status
from mailqueue.signals import MessageRequeued
from tests.redis_server import RedisServer
from tests.test_backend import CountingConnection
from tests.test_redis_access import WEB_RULE, add_user

PAGE = reverse("mailqueue:dashboard")
OVERVIEW = reverse("mailqueue:dashboard-json")
DEAD = reverse("mailqueue:dead-letters-json")
REQUEUE = reverse("mailqueue:dead-letters-requeue")
PURGE = reverse("mailqueue:dead-letters-purge")

QUEUE_FIELDS = {
    "queue", "pool", "processes", "threads", "strategy", "ready", "in_progress", "delayed", "dead",
    "oldest_enqueued_at", "oldest_age", "sent_1m", "sent_1h", "desired_workers",
}  # fmt: skip
PROVIDER_FIELDS = {
    "provider", "state", "failures", "probe_in", "sent_5m", "failed_5m", "sent_1h", "failed_1h", "in_flight",
    "max_concurrency", "rate_limits", "quota", "quota_used", "quota_left", "quota_resets_in",
}  # fmt: skip


def user(django_user_model, name: str, *, perms: tuple[str, ...] = (), **flags: bool) -> Any:
    made = django_user_model.objects.create_user(name, f"{name}@example.com", "pw", **flags)
    for perm in perms:
        made.user_permissions.add(Permission.objects.get(codename=perm, content_type__app_label="mailqueue"))
    return made


def as_user(who: Any) -> Client:
    client = Client()
    if who is not None:
        client.force_login(who)
    return client


def letter(
    subject: str, *, queue: str = "default", provider: str | None = "smtp", error: str = "X", age: float = 0.0
) -> DeadLetter:
    """A dead letter with a real envelope, recorded in this test's namespace, that died ``age`` seconds ago."""
    envelope = Envelope.from_message(EmailMessage(subject, "b", None, ["ann@example.com"]), queue=queue, mailer="x")
    dead = DeadLetter(
        id=envelope.id,
        queue=queue,
        reason=f"{error} for {subject}",
        error_type=error,
        failed_at=time.time() - age,
        attempts=3,
        payload=envelope.encode(),
        provider=provider,
    )
    deadletters.record(dead)
    return dead


@pytest.fixture
def letters(smtp_setup) -> dict[str, DeadLetter]:
    return {
        "a": letter("a", error="SMTPRecipientsRefused", age=3 * 3600),
        "b": letter("b", error="AllProvidersFailed", age=600),
        "c": letter("c", queue="bulk", provider="ses", error="SMTPRecipientsRefused", age=2 * 3600),
        "d": letter("d", queue="critical", provider=None, error="EnvelopeError", age=30),
    }


def confirmed(client: Client, params: dict[str, str]) -> dict[str, str]:
    """What the page posts to act on all the letters ``params`` lists now: the filter, its count, as_of and digest."""
    listing = client.get(DEAD, params).json()
    pinned = {"failed_before": repr(listing["as_of"])} if listing["as_of"] is not None else {}
    return {**params, **pinned, "count": str(listing["total"]), "digest": listing["digest"]}


def subjects(response) -> list[str]:
    assert response.status_code == 200, response.content
    return [row["subject"] for row in response.json()["letters"]]


# ---- who may look -----------------------------------------------------------------------------------------------

MATRIX = [
    # who, flags, permission setting, page status, JSON status
    ("anonymous", None, None, 302, 401),
    ("a user", {}, None, 403, 403),
    ("inactive staff", {"is_staff": True, "is_active": False}, None, 302, 401),
    ("staff", {"is_staff": True}, None, 200, 200),
    ("superuser", {"is_staff": True, "is_superuser": True}, None, 200, 200),
    ("staff", {"is_staff": True}, "is_superuser", 403, 403),
    ("superuser", {"is_staff": True, "is_superuser": True}, "is_superuser", 200, 200),
    ("staff without the permission", {"is_staff": True}, "mailqueue.view_message", 403, 403),
    ("a user with the permission", {"perms": ("view_message",)}, "mailqueue.view_message", 200, 200),
]


@pytest.mark.django_db
@pytest.mark.parametrize(("who", "flags", "permission", "page_status", "json_status"), MATRIX)
def test_who_may_see_the_dashboard(
    configure, smtp_server, django_user_model, who, flags, permission, page_status, json_status
) -> None:
    monitor = {"PERMISSION": permission} if permission else {}
    configure(providers={"smtp": smtp_server.mailer()}, MONITOR=monitor)
    letter("secret subject")
    client = as_user(None if flags is None else user(django_user_model, "someone", **flags))

    page = client.get(PAGE)
    assert page.status_code == page_status
    if page_status == 302:
        assert page["Location"] == f"{reverse('admin:login')}?next={PAGE}"
    for url in (OVERVIEW, DEAD):
        response = client.get(url)
        assert response.status_code == json_status, url
        if json_status != 200:
            assert set(response.json()) == {"error"}  # no figures, no letters
            assert b"secret subject" not in response.content
    if json_status != 200:
        for url in (REQUEUE, PURGE, reverse("mailqueue:dead-letter-requeue", args=["x"])):
            refused = client.post(url, {"count": 1})
            assert refused.status_code == json_status and set(refused.json()) == {"error"}
        assert [dead.subject for dead in deadletters.iter_dead()] == ["secret subject"]


#: A project that mounts the dashboard and has no admin (``pytest.mark.urls`` below).
urlpatterns = [path("mailqueue/", include("mailqueue.urls"))]


@pytest.mark.django_db
@pytest.mark.urls(__name__)
def test_without_the_admin_the_page_sends_to_the_login_url_and_still_works(
    smtp_setup, client, admin_user, settings
) -> None:
    settings.LOGIN_URL = "/accounts/login/"
    assert client.get(PAGE)["Location"] == f"/accounts/login/?next={PAGE}"
    client.force_login(admin_user)
    page = client.get(PAGE)
    assert page.status_code == 200 and "/admin/" not in page.content.decode()


@pytest.mark.django_db
def test_the_admin_links_to_the_dashboard_for_those_who_may_see_it(smtp_setup, admin_client, settings) -> None:
    changelist = admin_client.get(reverse("admin:mailqueue_message_changelist")).content.decode()
    assert f'<a href="{PAGE}">Live dashboard</a>' in changelist
    assert f'href="{PAGE}"' in admin_client.get(reverse("admin:app_list", args=["mailqueue"])).content.decode()
    settings.MAILQUEUE = {**settings.MAILQUEUE, "MONITOR": {"PERMISSION": "mailqueue.no_such_permission"}}
    # A superuser has every permission: the configured permission is checked with has_perm.
    assert "Live dashboard" in admin_client.get(reverse("admin:mailqueue_message_changelist")).content.decode()


@pytest.mark.django_db
def test_the_changelist_shows_no_link_to_staff_the_dashboard_refuses(smtp_setup, django_user_model, settings) -> None:
    settings.MAILQUEUE = {**settings.MAILQUEUE, "MONITOR": {"PERMISSION": "is_superuser"}}
    client = as_user(user(django_user_model, "staff", perms=("view_message",), is_staff=True))
    page = client.get(reverse("admin:mailqueue_message_changelist"))
    assert page.status_code == 200 and "Live dashboard" not in page.content.decode()


@pytest.mark.django_db
def test_the_demo_page_links_to_the_dashboard_and_names_the_login_to_use(smtp_setup, client) -> None:
    page = client.get(reverse("index")).content.decode()
    assert f'href="{PAGE}"' in page and "demo_admin" in page and "make run" in page


# ---- the live figures -------------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_page_carries_the_refresh_and_the_urls_its_script_polls(smtp_setup, admin_client, settings) -> None:
    settings.MAILQUEUE = {**settings.MAILQUEUE, "MONITOR": {"REFRESH": 2.5}}
    page = admin_client.get(PAGE).content.decode()
    assert 'data-refresh="2.500000"' in page
    assert f'data-overview-url="{OVERVIEW}"' in page and f'data-dead-url="{DEAD}"' in page
    assert "mailqueue/dashboard.js" in page and "csrfmiddlewaretoken" in page
    assert "<script>" not in page  # nothing inline: the data travels as attributes and JSON


@pytest.mark.django_db
def test_the_json_is_the_overview_with_the_queues_as_they_are(
    smtp_setup, admin_client, django_capture_on_commit_callbacks
) -> None:
    with django_capture_on_commit_callbacks(execute=True):
        for number in range(3):
            send_mail(f"s{number}", "b", None, ["ann@example.com"])
    letter("dead one")
    data = admin_client.get(OVERVIEW).json()
    assert set(data) == {"at", "refresh", "queues", "providers", "outbox", "writer"}
    assert abs(data["at"] - time.time()) < 5 and data["refresh"] == 5.0
    queues = {queue["queue"]: queue for queue in data["queues"]}
    assert list(queues) == ["critical", "default", "bulk"]
    assert all(set(queue) == QUEUE_FIELDS for queue in data["queues"])
    assert (queues["default"]["ready"], queues["default"]["dead"], queues["bulk"]["ready"]) == (3, 1, 0)
    assert 0 <= queues["default"]["oldest_age"] < 10 and queues["bulk"]["oldest_age"] is None
    (provider,) = data["providers"]
    assert set(provider) >= PROVIDER_FIELDS and provider["provider"] == "smtp" and provider["state"] == "closed"
    assert set(data["outbox"]) == {"waiting", "oldest_at", "oldest_age"} and data["outbox"]["waiting"] == 0
    assert {"stream_length", "undelivered", "pending", "oldest_age", "group_exists", "unwritten"} <= set(data["writer"])


@pytest.mark.django_db
def test_the_json_takes_the_same_round_trips_however_full_the_queues(configure, smtp_server, admin_client) -> None:
    configure(
        providers={"smtp": smtp_server.mailer()},
        BROKER_OPTIONS={"connection_class": CountingConnection},
        ON_COMMIT=False,
    )

    def round_trips() -> int:
        admin_client.get(OVERVIEW)  # opens the pooled connection
        CountingConnection.sent = 0
        assert admin_client.get(OVERVIEW).status_code == 200
        return CountingConnection.sent

    empty = round_trips()
    send_mass_mail([(f"s{number}", "b", None, ["ann@example.com"]) for number in range(200)])
    for number in range(200):
        letter(f"dead {number}")
    full = round_trips()
    queues = {queue["queue"]: queue for queue in admin_client.get(OVERVIEW).json()["queues"]}
    assert (queues["default"]["ready"], queues["default"]["dead"]) == (200, 200)
    assert full == empty, (empty, full)
    assert empty <= 4


@pytest.mark.django_db
def test_the_json_answers_503_with_no_figures_when_redis_is_unreachable(configure, smtp_server, admin_client) -> None:
    configure(providers={"smtp": smtp_server.mailer()}, BROKER_URL="redis://127.0.0.1:1/0")
    for url in (OVERVIEW, DEAD):
        response = admin_client.get(url)
        assert response.status_code == 503, url
        assert set(response.json()) == {"error"} and "Redis" in response.json()["error"]
    assert admin_client.get(PAGE).status_code == 200  # the page itself loads, and says its figures are stale


@pytest.mark.django_db
def test_a_redis_user_without_the_rights_is_told_apart_from_an_outage(
    configure, smtp_server, acl_server, namespace, admin_client
) -> None:
    narrow = add_user(acl_server, "narrow-web", WEB_RULE.replace("+eval ", ""), namespace)
    configure(providers={"smtp": smtp_server.mailer()}, BROKER_URL=narrow)
    response = admin_client.get(OVERVIEW)
    assert response.status_code == 503 and "lacks a permission" in response.json()["error"]


# ---- dead letters -----------------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_dead_letters_are_listed_newest_first_with_what_an_operator_acts_on(letters, admin_client) -> None:
    Message.objects.create(
        envelope_id=letters["a"].id, queue="default", mailer="x", status=Status.DEAD, queued_at=timezone.now()
    )
    response = admin_client.get(DEAD)
    assert subjects(response) == ["d", "b", "c", "a"]
    body = response.json()
    assert body["total"] == 4 and body["limit"] == views.DEAD_LETTERS_SHOWN
    rows = {row["subject"]: row for row in body["letters"]}
    assert rows["c"] | {"age": 0, "failed_at": 0} == {
        "id": letters["c"].id,
        "queue": "bulk",
        "provider": "ses",
        "error_type": "SMTPRecipientsRefused",
        "reason": "SMTPRecipientsRefused for c",
        "attempts": 3,
        "failed_at": 0,
        "age": 0,
        "subject": "c",
        "log_url": None,
    }
    assert 2 * 3600 <= rows["c"]["age"] < 2 * 3600 + 10
    assert rows["a"]["log_url"] == reverse("admin:mailqueue_message_change", args=[letters["a"].id])
    assert b"ann@example.com" not in response.content  # the payload (recipients, body) never leaves the server


@pytest.mark.django_db
def test_staff_who_may_not_see_the_log_get_no_links_to_it(letters, django_user_model) -> None:
    Message.objects.create(
        envelope_id=letters["a"].id, queue="default", mailer="x", status=Status.DEAD, queued_at=timezone.now()
    )
    rows = as_user(user(django_user_model, "staff", is_staff=True)).get(DEAD).json()["letters"]
    assert [row["log_url"] for row in rows] == [None] * 4


FILTERS = [
    ({"queue": "default"}, ["b", "a"]),
    ({"provider": "smtp"}, ["b", "a"]),
    ({"error_type": "SMTPRecipientsRefused"}, ["c", "a"]),
    ({"older_than": "3600"}, ["c", "a"]),
    ({"older_than": "60"}, ["b", "c", "a"]),
    ({"queue": "default", "older_than": "3600"}, ["a"]),
    ({"provider": "ses", "error_type": "SMTPRecipientsRefused"}, ["c"]),
    ({"provider": "smtp", "older_than": str(4 * 3600)}, []),
    ({"queue": "", "provider": "", "error_type": " ", "older_than": ""}, ["d", "b", "c", "a"]),
]


@pytest.mark.django_db
@pytest.mark.parametrize(("params", "expected"), FILTERS)
def test_the_filter_narrows_the_list_and_its_total(letters, admin_client, params, expected) -> None:
    response = admin_client.get(DEAD, params)
    assert subjects(response) == expected
    assert response.json()["total"] == len(expected)


@pytest.mark.django_db
@pytest.mark.parametrize(
    "params",
    [{"queue": "nope"}, {"older_than": "-1"}, {"older_than": "soon"}, {"older_than": "inf"}, {"provider": "p" * 201}],
)
def test_a_filter_that_cannot_be_used_is_refused_with_why(letters, admin_client, params) -> None:
    response = admin_client.get(DEAD, params)
    assert response.status_code == 400
    assert next(iter(params)) in response.json()["error"]
    assert admin_client.post(REQUEUE, {**params, "count": 1}).status_code == 400
    assert len(list(deadletters.iter_dead())) == 4


@pytest.mark.django_db
@pytest.mark.parametrize("params", [{}, {"error_type": "SMTPRecipientsRefused"}])
def test_the_list_is_capped_and_the_total_counts_them_all(letters, admin_client, monkeypatch, params) -> None:
    monkeypatch.setattr(views, "DEAD_LETTERS_SHOWN", 1)
    response = admin_client.get(DEAD, params)
    expected = ["d"] if not params else ["c"]
    assert subjects(response) == expected
    assert response.json()["total"] == (4 if not params else 2)


def test_the_filter_matches_each_field_and_the_age_on_the_given_clock(smtp_setup) -> None:
    dead = DeadLetter(
        id="i", queue="q", reason="r", error_type="E", failed_at=1000.0, attempts=1, payload={}, provider="p"
    )
    assert DeadLetterFilter().matches(dead)
    assert DeadLetterFilter(queue="q", provider="p", error_type="E", older_than=100).matches(dead, now=1100.0)
    assert not DeadLetterFilter(older_than=100).matches(dead, now=1099.0)
    assert not DeadLetterFilter(queue="other").matches(dead)
    assert not DeadLetterFilter(provider="other").matches(dead)
    assert not DeadLetterFilter(error_type="Other").matches(dead)
    assert not DeadLetterFilter(provider="p").matches(DeadLetter(**{**dead.to_json(), "provider": None}))


@pytest.mark.django_db
def test_requeue_all_matching_requeues_what_the_filter_matches_and_nothing_else(letters, admin_client) -> None:
    response = admin_client.post(REQUEUE, confirmed(admin_client, {"queue": "default", "older_than": "3600"}))
    assert response.status_code == 200
    assert response.json() == {"matching": 1, "requeued": 1, "unreadable": []}
    assert sorted(dead.subject for dead in deadletters.iter_dead()) == ["b", "c", "d"]
    queues = {queue["queue"]: queue for queue in admin_client.get(OVERVIEW).json()["queues"]}
    assert (queues["default"]["ready"], queues["default"]["dead"]) == (1, 1)


@pytest.mark.django_db
def test_nothing_is_done_when_the_confirmed_count_is_not_what_matches_now(letters, admin_client) -> None:
    seen = confirmed(admin_client, {"error_type": "SMTPRecipientsRefused"})
    assert seen["count"] == "2"
    for url in (REQUEUE, PURGE):
        response = admin_client.post(url, {**seen, "count": "1"})
        assert response.status_code == 409
        assert response.json()["matching"] == 2 and "nothing done" in response.json()["error"]
        assert admin_client.post(url, {**seen, "count": ""}).status_code == 400  # no count
        assert admin_client.post(url, {**seen, "digest": ""}).status_code == 400  # no digest
    assert len(list(deadletters.iter_dead())) == 4
    deadletters.purge([letters["c"]])  # a colleague purges one of the two the operator saw
    assert admin_client.post(PURGE, seen).json()["matching"] == 1
    assert len(list(deadletters.iter_dead())) == 3


@pytest.mark.django_db
@pytest.mark.parametrize("url", [REQUEUE, PURGE])
def test_the_same_count_of_other_letters_is_refused(letters, admin_client, url) -> None:
    """The review's case: provider=ses shows 3; one is requeued by its row button, another ses letter dies."""
    for name in ("ses 1", "ses 2"):
        letter(name, queue="bulk", provider="ses", age=300)
    seen = confirmed(admin_client, {"provider": "ses"})
    assert seen["count"] == "3"
    ses = [dead for dead in deadletters.iter_dead() if dead.provider == "ses"]
    assert admin_client.post(reverse("mailqueue:dead-letter-requeue", args=[ses[0].id])).json() == {"requeued": 1}
    # Its worker stamped its time of death before the listing, and recorded it after: inside the confirmed bound.
    late = letter("late ses", queue="bulk", provider="ses", age=400)
    response = admin_client.post(url, seen)
    assert response.status_code == 409, response.content
    assert response.json()["matching"] == 3 and "not the ones listed" in response.json()["error"]
    assert late.id in {dead.id for dead in deadletters.iter_dead()}  # nobody saw it: it stays
    assert len(list(deadletters.iter_dead())) == 6


@pytest.mark.django_db
@pytest.mark.parametrize("url", [REQUEUE, PURGE])
def test_letters_that_die_after_the_listing_neither_refuse_the_action_nor_are_touched(
    letters, admin_client, url
) -> None:
    seen = confirmed(admin_client, {"error_type": "SMTPRecipientsRefused"})
    newer = [letter(f"new {number}", error="SMTPRecipientsRefused") for number in range(3)]  # a steady trickle
    response = admin_client.post(url, seen)
    assert response.status_code == 200, response.content
    assert response.json()["matching"] == 2
    left = {dead.id for dead in deadletters.iter_dead()}
    assert left == {letters["b"].id, letters["d"].id} | {dead.id for dead in newer}


@pytest.mark.django_db
def test_a_letter_crossing_the_age_boundary_while_the_operator_confirms_is_left_alone(letters, admin_client) -> None:
    """``older_than`` is turned into an absolute bound once, at the listing; the server does not slide it."""
    crossing = letter("crossing", age=59.0)
    seen = confirmed(admin_client, {"older_than": "60"})
    assert seen["count"] == "3"  # a, b, c: not yet "crossing"
    time.sleep(1.2)  # the confirm dialog is open; "crossing" is now older than 60 s too
    assert admin_client.get(DEAD, {"older_than": "60"}).json()["total"] == 4
    response = admin_client.post(PURGE, seen)
    assert response.status_code == 200 and response.json() == {"matching": 3, "purged": 3}
    assert {dead.id for dead in deadletters.iter_dead()} == {crossing.id, letters["d"].id}


@pytest.mark.django_db
def test_the_listing_pins_its_letters_by_their_newest_death_and_a_digest_of_their_ids(letters, admin_client) -> None:
    body = admin_client.get(DEAD, {"queue": "default"}).json()
    assert body["as_of"] == letters["b"].failed_at  # the newest of a and b, exactly (it is posted back)
    expected = hashlib.sha256(f"default\n{letters['a'].id}\ndefault\n{letters['b'].id}\n".encode()).hexdigest()
    assert body["digest"] == expected
    by_record = admin_client.get(DEAD, {"queue": "default", "provider": "smtp"}).json()  # read through the records
    assert (by_record["digest"], by_record["as_of"]) == (expected, body["as_of"])
    assert admin_client.get(DEAD, {"queue": "default", "provider": "nobody"}).json()["as_of"] is None


@pytest.mark.django_db
def test_purge_all_matching_deletes_what_the_filter_matches(letters, admin_client) -> None:
    response = admin_client.post(PURGE, confirmed(admin_client, {"provider": "ses"}))
    assert response.json() == {"matching": 1, "purged": 1}
    assert sorted(dead.subject for dead in deadletters.iter_dead()) == ["a", "b", "d"]
    assert admin_client.post(PURGE, confirmed(admin_client, {})).json() == {"matching": 3, "purged": 3}
    assert list(deadletters.iter_dead()) == []


@pytest.mark.django_db
def test_an_unreadable_letter_does_not_hold_back_the_others(letters, admin_client) -> None:
    broken = DeadLetter(**{**letter("x", queue="critical").to_json(), "payload": {"not": "an envelope"}})
    deadletters.record(broken)
    response = admin_client.post(REQUEUE, confirmed(admin_client, {"queue": "critical"}))
    assert response.json() == {"matching": 2, "requeued": 1, "unreadable": [broken.id]}
    assert [dead.id for dead in deadletters.iter_dead("critical")] == [broken.id]
    one = admin_client.post(reverse("mailqueue:dead-letter-requeue", args=[broken.id]))
    assert one.status_code == 422 and "purge" in one.json()["error"]


@pytest.mark.django_db
def test_one_letter_is_requeued_by_its_id(letters, admin_client) -> None:
    url = reverse("mailqueue:dead-letter-requeue", args=[letters["b"].id])
    assert admin_client.post(url).json() == {"requeued": 1}
    assert sorted(dead.subject for dead in deadletters.iter_dead()) == ["a", "c", "d"]
    gone = admin_client.post(url)
    assert gone.status_code == 404 and "already" in gone.json()["error"]
    assert admin_client.get(url).status_code == 405


@pytest.mark.django_db
def test_acting_takes_the_admins_permissions_for_requeue_and_purge(letters, django_user_model) -> None:
    looker = as_user(user(django_user_model, "looker", is_staff=True))
    page = looker.get(PAGE).content.decode()
    assert 'id="requeue-all"' not in page and 'id="purge-all"' not in page
    assert looker.post(REQUEUE, {"count": "4"}).status_code == 403
    assert looker.post(PURGE, {"count": "4"}).status_code == 403
    assert looker.post(reverse("mailqueue:dead-letter-requeue", args=[letters["a"].id])).status_code == 403
    requeuer = as_user(user(django_user_model, "requeuer", perms=("change_message",), is_staff=True))
    assert requeuer.post(PURGE, {"count": "4"}).status_code == 403
    assert len(list(deadletters.iter_dead())) == 4
    assert requeuer.post(REQUEUE, confirmed(requeuer, {"queue": "bulk"})).json()["requeued"] == 1


@pytest.mark.django_db
def test_the_actions_need_the_csrf_token_the_page_carries(letters, admin_user) -> None:
    client = Client(enforce_csrf_checks=True)
    client.force_login(admin_user)
    assert client.post(PURGE, {"count": "4"}).status_code == 403
    assert client.post(REQUEUE, {"count": "4"}).status_code == 403
    assert len(list(deadletters.iter_dead())) == 4
    page = client.get(PAGE)
    token = page.context["csrf_token"]
    assert f'value="{token}"' in page.content.decode()
    response = client.post(PURGE, confirmed(client, {"provider": "ses"}), headers={"X-CSRFToken": str(token)})
    assert response.status_code == 200 and response.json()["purged"] == 1


@pytest.mark.django_db(transaction=True)
def test_requeued_from_the_dashboard_real_dead_letters_are_delivered(
    smtp_setup, run_worker: Callable[..., Any], admin_client
) -> None:
    smtp_setup.handler.rcpt_replies["gone@example.com"] = "550 no such user"
    for subject in ("first", "second"):
        EmailMessage(subject, "b", None, ["gone@example.com"]).send()
    with run_worker() as worker:
        worker.drain()
    listed = admin_client.get(DEAD, {"queue": "default"}).json()
    assert listed["total"] == 2 and {row["provider"] for row in listed["letters"]} == {"smtp"}
    (error_type,) = {row["error_type"] for row in listed["letters"]}
    assert "gone@example.com" in listed["letters"][0]["reason"]

    smtp_setup.handler.rcpt_replies.clear()
    response = admin_client.post(REQUEUE, confirmed(admin_client, {"queue": "default", "error_type": error_type}))
    assert response.json() == {"matching": 2, "requeued": 2, "unreadable": []}
    with run_worker() as worker:
        worker.drain()
    assert sorted(mail.parsed["Subject"] for mail in smtp_setup.wait_for(2)) == ["first", "second"]
    queues = {queue["queue"]: queue for queue in admin_client.get(OVERVIEW).json()["queues"]}
    assert queues["default"]["dead"] == 0 and queues["default"]["sent_1m"] == 2


@pytest.fixture
def acl_server(tmp_path) -> Iterator[RedisServer]:
    """A private redis-server, where ACL users can be made without touching the shared one's."""
    server = RedisServer(tmp_path).start()
    yield server
    server.stop()


@pytest.mark.django_db
def test_the_dashboard_needs_no_command_the_web_processes_acl_does_not_grant(
    configure, smtp_server, acl_server, namespace, admin_client
) -> None:
    """docs/operating.md's ACL for web processes covers every read and action of the dashboard."""
    configure(providers={"smtp": smtp_server.mailer()}, BROKER_URL=acl_server.url, ON_COMMIT=False)
    for name in ("a", "b", "c"):
        letter(name, error="SMTPRecipientsRefused" if name != "b" else "X", age=100)
    send_mail("waiting", "b", None, ["ann@example.com"])
    web = add_user(acl_server, "mailqueue-web", WEB_RULE, namespace)
    configure(providers={"smtp": smtp_server.mailer()}, BROKER_URL=web, ON_COMMIT=False)

    assert admin_client.get(OVERVIEW).status_code == 200
    assert subjects(admin_client.get(DEAD)) == ["c", "b", "a"]
    assert subjects(admin_client.get(DEAD, {"error_type": "X", "older_than": "60"})) == ["b"]
    first = deadletters.newest_matching(DeadLetterFilter(error_type="SMTPRecipientsRefused")).letters[0]
    assert admin_client.post(reverse("mailqueue:dead-letter-requeue", args=[first.id])).status_code == 200
    requeue = confirmed(admin_client, {"error_type": "SMTPRecipientsRefused"})
    assert admin_client.post(REQUEUE, requeue).status_code == 200
    assert admin_client.post(PURGE, confirmed(admin_client, {})).json() == {"matching": 1, "purged": 1}
    queues = {queue["queue"]: queue for queue in admin_client.get(OVERVIEW).json()["queues"]}
    assert (queues["default"]["ready"], queues["default"]["dead"]) == (3, 0)


# ---- acting on letters twice at once ----------------------------------------------------------------------------


def requeued_events(redis_client: Any, namespace: str) -> list[str]:
    stream = [eventlog.decode(fields) for _, fields in redis_client.xrange(events_key(namespace))]
    return [event["id"] for event in stream if event["k"] == "requeued"]


@pytest.mark.django_db
def test_requeueing_letters_another_request_already_requeued_pushes_nothing(
    letters, redis_client, namespace, recorder
) -> None:
    """Two requests that read the same letters (a double click, two operators) each push only what they removed."""
    held = list(deadletters.iter_dead("default"))  # what both requests read before either acted
    assert deadletters.requeue(held) == 2
    assert deadletters.requeue(held) == 0
    assert deadletters.requeue_readable(held) == (0, [])
    ready = QueueKeys.of(namespace, "default")
    assert redis_client.llen(ready.ready) == 2 and redis_client.hlen(ready.messages) == 2
    assert sorted(requeued_events(redis_client, namespace)) == sorted(dead.id for dead in held)
    assert sorted(event.envelope_id for event in recorder.of(MessageRequeued)) == sorted(dead.id for dead in held)
    assert deadletters.purge(held) == 0  # requeued already: nothing left to purge, and none counted
    assert deadletters.purge(list(deadletters.iter_dead())) == 2
    assert deadletters.purge([letters["c"]]) == 0


@pytest.mark.django_db(transaction=True)
def test_concurrent_requeues_of_the_same_letters_push_each_message_once(smtp_setup, redis_client, namespace) -> None:
    for number in range(300):
        letter(f"m{number}")
    held = list(deadletters.iter_dead())
    start = threading.Barrier(4)

    def requeue_all() -> int:
        start.wait()
        return deadletters.requeue(held, chunk=50)

    with ThreadPoolExecutor(4) as pool:
        counts = list(pool.map(lambda _: requeue_all(), range(4)))
    assert sum(counts) == 300, counts
    ready = QueueKeys.of(namespace, "default")
    assert redis_client.llen(ready.ready) == 300 and redis_client.zcard(ready.dead) == 0
    assert len(requeued_events(redis_client, namespace)) == 300


@pytest.mark.django_db
def test_a_second_click_on_a_rows_requeue_is_told_the_letter_is_gone(letters, admin_client, redis_client, namespace):
    url = reverse("mailqueue:dead-letter-requeue", args=[letters["b"].id])
    held = deadletters.find([letters["b"].id])[letters["b"].id]
    assert admin_client.post(url).json() == {"requeued": 1}
    assert deadletters.requeue_readable([held]) == (0, [])  # the slower request of a double click
    assert redis_client.llen(QueueKeys.of(namespace, "default").ready) == 1


# ---- the match scan streams -------------------------------------------------------------------------------------


@pytest.fixture
def spied_ranges(monkeypatch) -> list[int]:
    """The size of every ZRANGEBYSCORE and ZRANGE reply the dead-letter store reads (the shared client, wrapped)."""
    sizes: list[int] = []
    client = deadletters.redis_client()

    def spy(name: str) -> None:
        real = getattr(client, name)

        def read(*args: Any, **kwargs: Any) -> Any:
            found = real(*args, **kwargs)
            sizes.append(len(found))
            return found

        monkeypatch.setattr(client, name, read)

    spy("zrangebyscore")
    spy("zrange")
    return sizes


@pytest.mark.django_db
@pytest.mark.parametrize("params", [{"queue": "bulk"}, {"queue": "bulk", "error_type": "X"}])
def test_acting_on_all_matching_reads_the_letters_in_chunks(
    smtp_setup, admin_client, monkeypatch, spied_ranges, params
) -> None:
    monkeypatch.setattr(deadletters, "SCAN_CHUNK", 4)
    monkeypatch.setattr(deadletters, "ID_CHUNK", 4)
    made = [letter(f"m{number}", queue="bulk", age=100 - number) for number in range(11)]
    # Five died in the same instant: paging by time of death must neither skip nor repeat them.
    same = time.time() - 50
    for number in range(5):
        twin = letter(f"t{number}", queue="bulk")
        deadletters.record(DeadLetter(**{**twin.to_json(), "failed_at": same}))
        made.append(twin)
    seen = confirmed(admin_client, params)
    assert seen["count"] == "16"
    assert sorted(dead.id for dead in deadletters.matching(DeadLetterFilter(queue="bulk"))) == sorted(
        dead.id for dead in made
    )
    spied_ranges.clear()
    response = admin_client.post(REQUEUE, seen)
    assert response.json() == {"matching": 16, "requeued": 16, "unreadable": []}
    assert spied_ranges and max(spied_ranges) <= 4 + 5, spied_ranges  # a chunk, plus the same-instant ones re-read
    assert list(deadletters.iter_dead("bulk")) == []


def test_paging_by_time_of_death_skips_no_letter_removed_meanwhile(smtp_setup, monkeypatch) -> None:
    monkeypatch.setattr(deadletters, "SCAN_CHUNK", 3)
    made = [letter(f"m{number}", age=100 - number) for number in range(10)]
    visited = []
    for dead in deadletters.matching(DeadLetterFilter(queue="default")):
        visited.append(dead.id)
        deadletters.purge([dead])  # acting while scanning, as purge(iter_dead()) does
    assert visited == [dead.id for dead in made]


# ---- under a project's LoginRequiredMiddleware, and without its CsrfViewMiddleware --------------------------------

LOGIN_REQUIRED = "django.contrib.auth.middleware.LoginRequiredMiddleware"
CSRF_MIDDLEWARE = "django.middleware.csrf.CsrfViewMiddleware"


@pytest.mark.django_db
def test_login_required_middleware_lets_scrapers_and_the_json_answer_for_themselves(
    configure, smtp_server, settings, client
) -> None:
    configure(providers={"smtp": smtp_server.mailer()}, MONITOR={"METRICS_TOKEN": "t0ken-for-the-scraper"})
    settings.MIDDLEWARE = [*settings.MIDDLEWARE, LOGIN_REQUIRED]
    assert client.get(PAGE).status_code == 302  # the page itself still sends to a login
    scrape = client.get(reverse("mailqueue:metrics"), headers={"Authorization": "Bearer t0ken-for-the-scraper"})
    assert scrape.status_code == 200 and b"mailqueue_queue_messages" in scrape.content
    assert client.get(reverse("mailqueue:metrics")).status_code == 401
    for url in (OVERVIEW, DEAD):
        response = client.get(url)
        assert response.status_code == 401 and set(response.json()) == {"error"}, url
    for url in (REQUEUE, PURGE, reverse("mailqueue:dead-letter-requeue", args=["x"])):
        response = client.post(url, {"count": "1"})
        assert response.status_code == 401 and set(response.json()) == {"error"}, url


@pytest.mark.django_db
def test_the_actions_check_csrf_even_where_the_project_has_no_csrf_middleware(letters, admin_user, settings) -> None:
    settings.MIDDLEWARE = [name for name in settings.MIDDLEWARE if name != CSRF_MIDDLEWARE]
    client = Client(enforce_csrf_checks=True)
    client.force_login(admin_user)
    seen = confirmed(client, {"provider": "ses"})
    assert client.post(PURGE, seen).status_code == 403
    assert client.post(REQUEUE, seen).status_code == 403
    assert client.post(reverse("mailqueue:dead-letter-requeue", args=[letters["a"].id])).status_code == 403
    assert len(list(deadletters.iter_dead())) == 4
    token = client.get(PAGE).context["csrf_token"]
    response = client.post(PURGE, seen, headers={"X-CSRFToken": str(token)})
    assert response.status_code == 200 and response.json()["purged"] == 1
