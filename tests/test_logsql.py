"""The log writer's statements on SQLite and on the real PostgreSQL: what they store is ``logrows.combine``'s result.

Batches of random message histories are written in a shuffled order, through
the upsert statements of each database and through the ORM path (the one other
databases take); the rows read back must equal the Python rule book's.
"""

from __future__ import annotations

import random

import pytest
from django.conf import settings
from django.db import connections, transaction

from mailqueue.logrows import fold
from mailqueue.logsql import OrmStatements, PostgresStatements, UpsertStatements, statements_for, stored_row
from mailqueue.models import Message, MessageEvent, MessageRecipient
from tests.test_logrows import T, batches_of, history, written

DATABASES = ["default", *(["postgres"] if "postgres" in settings.DATABASES else [])]
if "postgres" not in settings.DATABASES:
    DATABASES.append(pytest.param("postgres", marks=pytest.mark.skip(reason="no PostgreSQL answers")))


@pytest.mark.django_db(databases=["default", "postgres"] if "postgres" in settings.DATABASES else ["default"])
@pytest.mark.parametrize("path", ["upsert", "orm"])
@pytest.mark.parametrize("using", DATABASES)
def test_what_the_statements_store_is_what_the_rules_say(using: str, path: str) -> None:
    rng = random.Random(f"{using}-{path}")
    events = [event for index in range(40) for event in history(rng, f"m{index:02}", T + 1000 * index)]
    for index, event in enumerate(events):
        if event["k"] == "queued":
            event["to"] = [f"User{index}@Example.com"]
            event["bcc"] = ["audit@example.org"]
    batches = batches_of(rng, events)
    rng.shuffle(batches)
    statements = statements_for(using) if path == "upsert" else OrmStatements(connections[using])
    for batch in batches:
        with transaction.atomic(using=using):
            statements.write(fold(batch, recipients="store"))
        if rng.random() < 0.2:  # a batch written again (its writer died before acknowledging it)
            with transaction.atomic(using=using):
                statements.write(fold(batch, recipients="store"))

    expected = written(batches)
    stored = {message.envelope_id: stored_row(message) for message in Message.objects.using(using)}
    assert stored == expected
    assert MessageEvent.objects.using(using).count() == len(events)
    assert MessageRecipient.objects.using(using).count() == 2 * len(expected)
    assert set(MessageRecipient.objects.using(using).values_list("domain", flat=True)) == {"example.com", "example.org"}


@pytest.mark.django_db(databases=["default", "postgres"] if "postgres" in settings.DATABASES else ["default"])
@pytest.mark.parametrize("using", DATABASES)
def test_each_database_gets_its_statements(using: str) -> None:
    statements = statements_for(using)
    assert type(statements) is (PostgresStatements if using == "postgres" else UpsertStatements)
    batch = fold(
        [(f"{T}-{i}", {"k": "queued", "id": f"x{i}", "t": T + i, "q": "default", "m": "m", "z": 1}) for i in range(3)],
        recipients="store",
    )
    with transaction.atomic(using=using):
        # One statement for the messages, one for the events: no recipients here, no read.
        assert statements.write(batch) == 2
