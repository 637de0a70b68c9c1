"""Folding events into rows: the same rows whatever order the batches come in."""

from __future__ import annotations

import dataclasses
import random
from typing import Any

import pytest

from mailqueue.logrows import MessageRow, combine, fold

T = 1_800_000_000_000

#: Every field of a row: its events decide all of them, whatever order their batches are written in.
ORDER_FREE = tuple(field.name for field in dataclasses.fields(MessageRow))


def history(rng: random.Random, envelope_id: str, start: int) -> list[dict[str, Any]]:
    """One message's events as the pipeline can make them: failovers, retries, a requeue to another queue, a
    relay, a delivery made twice (at-least-once), and steps that share a millisecond."""
    t = start
    queue = rng.choice(("default", "bulk"))
    events: list[dict[str, Any]] = [
        {
            "k": "queued",
            "id": envelope_id,
            "t": t,
            "q": queue,
            "m": "default",
            "s": f"Hello {envelope_id}",
            "f": "shop@example.com",
            "to": ["a@example.com"],
            "z": 900,
            "c": t - 3,
        }
    ]
    if rng.random() < 0.2:
        events.append({"k": "relayed", "id": envelope_id, "t": t + rng.choice((0, 2)), "q": queue})
    attempt = 0
    for _ in range(rng.randint(0, 4)):
        attempt += 1
        t += rng.choice((0, 1, 7))
        for provider in rng.sample(("ses", "postmark", "smtp"), rng.randint(0, 2)):  # a failover: same ms or not
            t += rng.choice((0, 0, 1))
            events.append(
                {"k": "attempt_failed", "id": envelope_id, "t": t, "p": provider, "n": attempt, "r": f"{provider} busy"}
            )
        t += rng.choice((0, 2))
        events.append({"k": "deferred", "id": envelope_id, "t": t, "n": attempt, "r": f"retry {attempt}"})
    t += rng.choice((0, 1, 5))
    ending = rng.choice(("sent", "sent twice", "dead", "requeued-sent"))
    if ending.startswith("sent"):
        events.append({"k": "sent", "id": envelope_id, "t": t, "p": "smtp", "n": attempt + 1, "pid": f"<{t}@x>"})
        if ending == "sent twice":  # a worker died after the send, before its record: another sent it again
            t += rng.choice((0, 3))
            events.append({"k": "sent", "id": envelope_id, "t": t, "p": "ses", "n": attempt + 2, "pid": f"<{t}@ses>"})
    else:
        events.append({"k": "failed", "id": envelope_id, "t": t, "n": attempt + 1, "r": "550 no", "p": "ses"})
        events.append({"k": "dead", "id": envelope_id, "t": t, "n": attempt + 1, "r": "550 no", "p": "ses"})
        if ending == "requeued-sent":
            t += rng.choice((1, 3))
            events.append({"k": "requeued", "id": envelope_id, "t": t, "q": "default" if queue == "bulk" else "bulk"})
            t += rng.choice((0, 4))
            events.append({"k": "sent", "id": envelope_id, "t": t, "p": "smtp", "n": 1, "pid": f"<{t}@x>"})
    return events


def batches_of(rng: random.Random, events: list[dict[str, Any]]) -> list[list[tuple[str, dict[str, Any]]]]:
    """The stream entries cut into batches of random sizes."""
    entries = [(f"{T}-{index}", event) for index, event in enumerate(events)]
    batches = []
    while entries:
        size = rng.randint(1, 4)
        batches.append(entries[:size])
        entries = entries[size:]
    return batches


def written(batches: list[list[tuple[str, dict[str, Any]]]]) -> dict[str, MessageRow]:
    """What the upserts leave: each batch folded, then combined with what is stored, in the given order."""
    stored: dict[str, MessageRow] = {}
    for batch in batches:
        for envelope_id, row in fold(batch, recipients="off").messages.items():
            stored[envelope_id] = combine(stored[envelope_id], row) if envelope_id in stored else row
    return stored


@pytest.mark.parametrize("seed", range(40))
def test_batches_in_any_order_give_the_rows_of_the_stream_in_order(seed: int) -> None:
    rng = random.Random(seed)
    events = [event for index in range(5) for event in history(rng, f"m{index}", T + 1000 * index)]
    batches = batches_of(rng, events)
    in_order = written(batches)
    shuffled = batches[:]
    rng.shuffle(shuffled)
    out_of_order = written(shuffled)
    for envelope_id, expected in in_order.items():
        got = out_of_order[envelope_id]
        assert {name: getattr(got, name) for name in ORDER_FREE} == {
            name: getattr(expected, name) for name in ORDER_FREE
        }, envelope_id


def test_the_row_of_a_message_that_was_dead_then_requeued_and_sent() -> None:
    events = [
        {"k": "queued", "id": "m", "t": T, "q": "bulk", "m": "news", "s": "S", "f": "f@x.com", "z": 5, "c": T - 1},
        {"k": "attempt_failed", "id": "m", "t": T + 1, "p": "ses", "n": 1, "r": "503 busy"},
        {"k": "failed", "id": "m", "t": T + 2, "n": 1, "r": "550 gone", "p": "ses"},
        {"k": "dead", "id": "m", "t": T + 2, "n": 1, "r": "550 gone", "p": "ses"},
        {"k": "requeued", "id": "m", "t": T + 9, "q": "default"},
        {"k": "sent", "id": "m", "t": T + 10, "p": "smtp", "n": 1, "pid": "<p@x>"},
    ]
    row = fold([(f"{T}-{i}", event) for i, event in enumerate(events)], recipients="off").messages["m"]
    assert (row.status, row.status_ms, row.queue, row.mailer) == ("sent", T + 10, "default", "news")
    assert (row.provider, row.provider_message_id, row.attempts) == ("smtp", "<p@x>", 1)
    assert (row.first_attempt_ms, row.sent_ms, row.updated_ms) == (T + 1, T + 10, T + 10)
    assert (row.last_error, row.last_error_ms) == ("550 gone", T + 2)


def test_a_tie_goes_to_the_further_status() -> None:
    stored = MessageRow(envelope_id="m", status="dead", status_ms=T, updated_ms=T)
    same_time_failed = MessageRow(envelope_id="m", status="failed", status_ms=T, updated_ms=T)
    assert combine(stored, same_time_failed).status == "dead"
    assert combine(same_time_failed, stored).status == "dead"


def test_a_batch_without_a_status_event_keeps_the_stored_status() -> None:
    stored = MessageRow(envelope_id="m", status="sent", status_ms=T + 5, updated_ms=T + 5, sent_ms=T + 5)
    attempt_only = fold(
        [("1-0", {"k": "attempt_failed", "id": "m", "t": T + 9, "p": "ses", "n": 2, "r": "x"})], recipients="off"
    ).messages["m"]
    assert attempt_only.status_ms is None
    merged = combine(stored, attempt_only)
    assert (merged.status, merged.updated_ms, merged.attempts, merged.last_error) == ("sent", T + 9, 2, "x")
