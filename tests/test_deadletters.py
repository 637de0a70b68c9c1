"""mailqueue/deadletters.py: requeue and purge act on exactly the deaths that were read, in bounded calls."""

from __future__ import annotations

import dataclasses

import pytest

from mailqueue import deadletters
from mailqueue.deadletters import DeadLetterFilter
from mailqueue.keys import QueueKeys
from tests.test_dashboard import letter
from tests.test_idle_latency import _published

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_letter_that_died_again_after_it_was_read_is_left_for_a_fresh_look(smtp_setup, redis_client, namespace):
    first, second = letter("first", age=60), letter("second", age=60)
    read = list(deadletters.iter_dead("default"))
    # A colleague requeues "first"; it fails again at once: the same id, a later death, a new reason.
    assert deadletters.requeue([first]) == 1
    deadletters.record(dataclasses.replace(first, failed_at=first.failed_at + 30, reason="new reason"))
    assert deadletters.purge(read) == 1
    (left,) = deadletters.iter_dead("default")
    assert (left.id, left.reason) == (first.id, "new reason")
    assert second.id not in {each.id for each in deadletters.iter_dead("default")}


def test_a_selection_leaves_out_a_later_death_of_an_id_it_selected(smtp_setup):
    first = letter("first", age=60)
    selection = deadletters.select(DeadLetterFilter(queue="default"))
    deadletters.requeue([first])
    deadletters.record(dataclasses.replace(first, failed_at=first.failed_at + 30))
    assert deadletters.purge_selected(selection) == 0
    assert [each.id for each in deadletters.iter_dead("default")] == [first.id]


def test_a_requeue_of_large_messages_goes_in_calls_of_bounded_size(smtp_setup, redis_client, namespace, monkeypatch):
    sent = []
    original = deadletters._act_once
    monkeypatch.setattr(
        deadletters, "_act_once", lambda letters, encoded: sent.append(len(letters)) or original(letters, encoded)
    )
    monkeypatch.setattr(deadletters, "ACT_BYTES", 3_000)
    dead = [letter(f"m{n}", age=10) for n in range(9)]
    assert deadletters.requeue(dead) == 9
    assert len(sent) > 1 and sum(sent) == 9
    assert redis_client.llen(QueueKeys.of(namespace, "default").ready) == 9


def test_ids_are_read_by_rank_in_chunks_up_to_the_bound(smtp_setup, monkeypatch):
    monkeypatch.setattr(deadletters, "ID_CHUNK", 3)
    dead = [letter(f"m{n}", age=100 - n) for n in range(8)]
    selection = deadletters.select(DeadLetterFilter(queue="default", older_than=95.5))
    assert [letter_id for _, letter_id in selection.ids] == [each.id for each in dead[:5]]


def test_a_requeue_wakes_the_idle_workers_of_each_queue_it_refills(smtp_setup, redis_client, namespace):
    dead = [letter("a", queue="bulk"), letter("b", queue="bulk"), letter("c", queue="critical")]
    assert sorted(_published(redis_client, namespace, lambda: deadletters.requeue(dead))) == ["bulk", "critical"]
    assert _published(redis_client, namespace, lambda: deadletters.purge([letter("d")])) == []
