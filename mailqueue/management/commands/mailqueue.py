"""``manage.py mailqueue``: status, dead letters, requeue and purge, and the outbox relay."""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import redis
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DatabaseError, close_old_connections

from mailqueue import deadletters, outbox
from mailqueue.client import access_problem, exchange, redacted_url
from mailqueue.conf import get_config
from mailqueue.exceptions import BrokerAccessDenied, BrokerUnavailable, EnvelopeError
from mailqueue.monitoring import provider_health, queue_depths

DEPTH_COLUMNS = ("queue", "ready", "in_progress", "delayed", "dead")
HEALTH_COLUMNS = ("provider", "state", "failures", "probe_in", "sent_5m", "failed_5m", "sent_1h", "failed_1h")


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
        status = sub.add_parser(
            "status", help="queue depth per queue, each provider's health, and mail waiting in the outbox"
        )
        status.add_argument("--json", action="store_true", help="machine-readable output")
        dead = sub.add_parser("dead", help="list dead-lettered messages with their reason")
        dead.add_argument("--queue", help="only this queue")
        dead.add_argument("--json", action="store_true", help="machine-readable output, payloads included")
        _add_selectors(sub.add_parser("requeue", help="put dead letters back on their queue"))
        _add_selectors(sub.add_parser("purge", help="delete dead letters for good"))
        relay = sub.add_parser(
            "relay", help="push mail kept in the outbox (Redis was away) to Redis; runs until stopped"
        )
        relay.add_argument("--once", action="store_true", help="relay what is waiting now, then exit")
        relay.add_argument("--interval", type=float, default=1.0, metavar="SECONDS", help="pause when idle")

    def handle(self, *args: Any, action: str, **options: Any) -> None:
        queue = options.get("queue")
        if queue is not None and queue not in get_config().queues:
            raise CommandError(f"unknown queue {queue!r}; configured: {', '.join(get_config().queues)}")
        getattr(self, f"handle_{action}")(**options)

    def handle_status(self, *, json: bool = False, **options: Any) -> None:
        """Print queues, providers and the outbox; when Redis cannot be read, say which URL and why, and fail."""
        try:
            waiting: int | str = outbox.waiting()
            reason = outbox.latest_reason() if waiting else None
        except DatabaseError as error:
            waiting, reason = f"unknown ({error})", None
        try:
            # One PING on this thread's connection first: it fails once, where the pool's client would retry.
            exchange((("PING",),), lambda wire: wire.read())
            depths: list[dict[str, Any]] | None = [depth.as_dict() for depth in queue_depths()]
            health: list[dict[str, Any]] | None = [provider.as_dict() for provider in provider_health()]
            problem = None
        except redis.RedisError as error:
            # An operator's first question during an outage: no traceback, the URL (password hidden) and the error.
            depths = health = None
            problem = {
                "url": redacted_url(get_config().broker_url),
                "error": str(error).rstrip(".") or type(error).__name__,
                "fix": access_problem(error),
            }
        if json:
            self.stdout.write(
                _dumps(
                    {"queues": depths, "providers": health, "outbox": waiting, "outbox_reason": reason}
                    | ({"redis": problem} if problem else {})
                )
            )
        else:
            if depths is not None and health is not None:
                self.stdout.write(
                    _table([list(DEPTH_COLUMNS), *([_cell(row[column]) for column in DEPTH_COLUMNS] for row in depths)])
                )
                self.stdout.write("")
                self.stdout.write(
                    _table(
                        [list(HEALTH_COLUMNS), *([_cell(row[column]) for column in HEALTH_COLUMNS] for row in health)]
                    )
                )
                self.stdout.write("")
            self.stdout.write(f"outbox: {waiting} message(s) waiting for Redis")
            if reason:
                self.stdout.write(f"outbox: latest reason: {reason}")
        if problem:
            fix = f" Not an outage: {problem['fix']}." if problem["fix"] else ""
            raise CommandError(f"Redis at {problem['url']} cannot be read: {problem['error']}.{fix}")

    def handle_relay(self, *, once: bool = False, interval: float = 1.0, **options: Any) -> None:
        relayed = 0
        try:
            while True:
                try:
                    pushed = outbox.relay_batch()
                except (BrokerUnavailable, DatabaseError) as error:
                    if once:
                        raise CommandError(str(error)) from error
                    what = "Redis" if isinstance(error, BrokerUnavailable) else "The database"
                    if isinstance(error, BrokerAccessDenied):
                        what = "Redis refused mailqueue (fix the setting; the relay keeps trying):"
                    else:
                        what = f"{what} is unavailable,"
                    self.stderr.write(f"{what} retrying in {interval:g}s: {error}")
                    close_old_connections()
                    time.sleep(interval)
                    continue
                relayed += pushed
                if pushed:
                    self.stdout.write(f"relayed {pushed} message(s)")
                    continue
                if once:
                    break
                time.sleep(interval)
        except KeyboardInterrupt:
            pass
        stranded = outbox.stranded()
        if stranded:
            self.stderr.write(f"left in the outbox, their queue is no longer configured: {stranded}")
        self.stdout.write(f"relayed {relayed} message(s) in all")

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


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.1f}"
    return str(value)


def _dumps(data: Any) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False)
