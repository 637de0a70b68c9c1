"""``manage.py mailqueue``: queue depth, dead letters, requeue and purge."""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from mailqueue import deadletters
from mailqueue.conf import get_config
from mailqueue.exceptions import EnvelopeError
from mailqueue.monitoring import queue_depths

DEPTH_COLUMNS = ("queue", "ready", "in_progress", "delayed", "dead")


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows
    )


def _add_selectors(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--queue", help="only this queue")
    parser.add_argument("--id", dest="ids", action="append", default=[], help="only this message id (repeatable)")
    parser.add_argument("--older-than", type=float, metavar="SECONDS", help="only letters dead for longer than this")
    parser.add_argument("--all", action="store_true", help="every dead letter (required when no other selector)")


class Command(BaseCommand):
    help = "Inspect and operate mailqueue: status, dead, requeue, purge."

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True, parser_class=argparse.ArgumentParser)
        status = sub.add_parser("status", help="queue depth per queue (ready, in progress, delayed, dead)")
        status.add_argument("--json", action="store_true", help="machine-readable output")
        dead = sub.add_parser("dead", help="list dead-lettered messages with their reason")
        dead.add_argument("--queue", help="only this queue")
        dead.add_argument("--json", action="store_true", help="machine-readable output, payloads included")
        _add_selectors(sub.add_parser("requeue", help="put dead letters back on their queue"))
        _add_selectors(sub.add_parser("purge", help="delete dead letters for good"))

    def handle(self, *args: Any, action: str, **options: Any) -> None:
        queue = options.get("queue")
        if queue is not None and queue not in get_config().queues:
            raise CommandError(f"unknown queue {queue!r}; configured: {', '.join(get_config().queues)}")
        getattr(self, f"handle_{action}")(**options)

    def handle_status(self, *, json: bool = False, **options: Any) -> None:
        depths = queue_depths()
        if json:
            self.stdout.write(_dumps([depth.as_dict() for depth in depths]))
            return
        rows = [list(DEPTH_COLUMNS)]
        rows += [[str(depth.as_dict()[column]) for column in DEPTH_COLUMNS] for depth in depths]
        self.stdout.write(_table(rows))

    def handle_dead(self, *, queue: str | None = None, json: bool = False, **options: Any) -> None:
        letters = list(deadletters.iter_dead(queue))
        if json:
            self.stdout.write(_dumps([letter.to_json() for letter in letters]))
            return
        if not letters:
            self.stdout.write("no dead letters")
            return
        rows = [["id", "queue", "failed_at", "attempts", "subject", "reason"]]
        for letter in letters:
            failed_at = datetime.fromtimestamp(letter.failed_at, UTC).isoformat(timespec="seconds")
            rows.append(
                [letter.id, letter.queue, failed_at, str(letter.attempts), letter.subject[:40], letter.reason[:120]]
            )
        self.stdout.write(_table(rows))

    def _select(self, options: dict[str, Any]) -> Iterable[deadletters.DeadLetter]:
        ids, queue, older_than = options["ids"], options.get("queue"), options.get("older_than")
        if not (options["all"] or ids or queue or older_than is not None):
            raise CommandError("say which dead letters: --all, --id, --queue or --older-than")
        letters = deadletters.iter_dead(queue, older_than=older_than)
        return [letter for letter in letters if not ids or letter.id in ids]

    def handle_requeue(self, **options: Any) -> None:
        started = time.monotonic()
        try:
            count = deadletters.requeue(self._select(options))
        except EnvelopeError as error:
            raise CommandError(f"a selected dead letter cannot be requeued ({error}); purge it instead") from error
        self.stdout.write(f"requeued {count} message(s) in {time.monotonic() - started:.2f}s")

    def handle_purge(self, **options: Any) -> None:
        count = deadletters.purge(self._select(options))
        self.stdout.write(f"purged {count} message(s)")


def _dumps(data: Any) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False)
