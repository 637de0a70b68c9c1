"""``manage.py mailqueue``: status, dead letters, requeue and purge, the outbox relay, the log writer, prune, and
the Prometheus metrics served on a port of their own."""

from __future__ import annotations

import argparse
import json
import signal
import socket
import socketserver
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import redis
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DatabaseError, close_old_connections

from mailqueue import deadletters, metrics, outbox, retention
from mailqueue.client import access_problem, exchange, redacted_url
from mailqueue.conf import get_config
from mailqueue.exceptions import BrokerAccessDenied, BrokerUnavailable, EnvelopeError
from mailqueue.logwriter import LogWriter
from mailqueue.monitoring import HEALTH_FIELDS, overview, queue_distribution

DEPTH_COLUMNS = ("queue", "ready", "in_progress", "delayed", "dead")
#: After the depth: how long the oldest waiting message has waited, and what the queue sent lately.
FLOW_COLUMNS = ("oldest", "sent_1m", "sent_1h")
#: The overview's figures behind FLOW_COLUMNS, as ``status --json`` names them.
FLOW_FIELDS = ("oldest_age", "sent_1m", "sent_1h")
HEALTH_COLUMNS = (
    "provider", "state", "failures", "probe_in", "sent_5m", "failed_5m", "sent_1h", "failed_1h", "quota_left"
)  # fmt: skip
DISTRIBUTION_COLUMNS = ("queue", "strategy", "provider", "target", "share_5m")


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
            "status",
            help="each queue's depth, oldest waiting message and throughput, each provider's health and quota, "
            "each queue's strategy and providers' shares, and mail waiting in the outbox",
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
        log = sub.add_parser(
            "log", help="write the message log: events from Redis into the database; runs until stopped"
        )
        log.add_argument("--once", action="store_true", help="write what is waiting now, then exit")
        log.add_argument("--batch", type=int, metavar="N", help="stream entries per transaction (LOG BATCH_SIZE)")
        log.add_argument(
            "--claim-idle",
            type=float,
            default=60.0,
            metavar="SECONDS",
            help="take over entries another writer left unacknowledged this long (it died)",
        )
        prune = sub.add_parser("prune", help="delete logged messages older than the retention, in short batches")
        prune.add_argument("--days", type=float, metavar="N", help="keep this many days (LOG RETENTION_DAYS)")
        prune.add_argument("--batch", type=int, default=5000, metavar="N", help="messages per transaction")
        served = sub.add_parser(
            "metrics",
            help="serve the Prometheus metrics (the web app's /metrics) on a port of their own; runs until stopped",
        )
        served.add_argument("--addr", default="127.0.0.1", help="address to listen on (default: this host only)")
        served.add_argument("--port", type=int, default=9808, help="port to listen on (0: any free one)")

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
            # One reading for the queues, the providers and the writer; it leaves out an outbox it cannot count.
            seen = overview().as_dict()
            depths: list[dict[str, Any]] | None = [
                {name: queue[name] for name in (*DEPTH_COLUMNS, *FLOW_FIELDS)} for queue in seen["queues"]
            ]
            health: list[dict[str, Any]] | None = [
                {name: provider[name] for name in HEALTH_FIELDS} for provider in seen["providers"]
            ]
            spread: list[dict[str, Any]] | None = [queue.as_dict() for queue in queue_distribution()]
            lag: dict[str, Any] | None = seen["writer"]
            problem = None
        except redis.RedisError as error:
            # An operator's first question during an outage: no traceback, the URL (password hidden) and the error.
            depths = health = spread = lag = None
            problem = {
                "url": redacted_url(get_config().broker_url),
                "error": str(error).rstrip(".") or type(error).__name__,
                "fix": access_problem(error),
            }
        if json:
            self.stdout.write(
                _dumps(
                    {
                        "queues": depths,
                        "providers": health,
                        "distribution": spread,
                        "outbox": waiting,
                        "outbox_reason": reason,
                        "log": lag,
                    }
                    | ({"redis": problem} if problem else {})
                )
            )
        else:
            if depths is not None and health is not None and spread is not None:
                self.stdout.write(_table([[*DEPTH_COLUMNS, *FLOW_COLUMNS], *map(_queue_row, depths)]))
                self.stdout.write("")
                self.stdout.write(_table([list(HEALTH_COLUMNS), *map(_health_row, health)]))
                self.stdout.write("")
                rows = [_share_row(queue, share) for queue in spread for share in queue["providers"]]
                self.stdout.write(_table([list(DISTRIBUTION_COLUMNS), *rows]))
                self.stdout.write("")
            self.stdout.write(f"outbox: {waiting} message(s) waiting for Redis")
            if reason:
                self.stdout.write(f"outbox: latest reason: {reason}")
            if lag is not None:
                self.stdout.write(_lag_line(lag))
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

    def handle_log(
        self, *, once: bool = False, batch: int | None = None, claim_idle: float = 60.0, **options: Any
    ) -> None:
        """Run the log writer; SIGTERM or SIGINT stop it after the batch in hand is written and acknowledged."""
        writer = LogWriter.from_settings(batch_size=batch, claim_idle_ms=int(claim_idle * 1000))
        if once:
            total = writer.drain()
            self.stdout.write(_written_line(total))
            return
        stopping: list[int] = []
        previous = {number: signal.signal(number, lambda number, frame: stopping.append(number)) for number in STOPS}
        self.stdout.write(f"log writer {writer.consumer}: writing {writer.key} to the database")
        try:
            writer.ensure_group()
            while not stopping:
                try:
                    writer.step()
                except (redis.RedisError, DatabaseError) as error:
                    # Nothing was acknowledged: the entries stay pending and this writer (or another) writes them again.
                    self.stderr.write(f"log writer: {type(error).__name__}: {error}; retrying in 1s")
                    close_old_connections()
                    time.sleep(1.0)
        finally:
            for number, handler in previous.items():
                signal.signal(number, handler)
        self.stdout.write(_written_line(writer.total))

    def handle_prune(self, *, days: float | None = None, batch: int = 5000, **options: Any) -> None:
        if batch < 1:
            raise CommandError("--batch must be at least 1")
        keep = get_config().log.retention_days if days is None else days
        started = time.monotonic()
        pruned = retention.prune(days=keep, batch=batch)
        self.stdout.write(
            f"pruned {pruned.messages} message(s), {pruned.recipients} recipient(s), {pruned.events} event(s) "
            f"older than {keep:g} day(s) in {pruned.batches} batch(es), {time.monotonic() - started:.2f}s"
        )

    def handle_metrics(self, *, addr: str = "127.0.0.1", port: int = 9808, **options: Any) -> None:
        """Serve the metrics until SIGTERM or SIGINT; with MONITOR["METRICS_TOKEN"] set, only to requests bearing it."""
        try:
            server_class = _MetricsServer6 if ":" in addr else _MetricsServer
            server = make_server(addr, port, metrics.wsgi_app, server_class=server_class, handler_class=_Quiet)
        except OSError as error:
            raise CommandError(f"cannot listen on {addr}:{port}: {error}") from error
        stopping: list[int] = []
        previous = {number: signal.signal(number, lambda number, frame: stopping.append(number)) for number in STOPS}
        host = f"[{addr}]" if ":" in addr else addr
        self.stdout.write(f"serving metrics on http://{host}:{server.server_port}/metrics")
        if get_config().monitor.metrics_token is None and addr not in ("127.0.0.1", "::1", "localhost"):
            self.stderr.write("no MONITOR['METRICS_TOKEN']: anyone who reaches this address can read the metrics")
        self.stdout.flush()
        try:
            while not stopping:
                server.handle_request()  # returns after server.timeout when no request came: the loop sees a stop
        finally:
            server.server_close()
            for number, handler in previous.items():
                signal.signal(number, handler)
        self.stdout.write("metrics server stopped")

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


#: The signals that stop the log writer and the metrics server cleanly.
STOPS = (signal.SIGTERM, signal.SIGINT)


class _MetricsServer(socketserver.ThreadingMixIn, WSGIServer):
    """A thread per scrape (a slow one must not hold up the next), none left behind at exit."""

    daemon_threads = True
    #: Seconds handle_request() waits for a request before the serving loop looks at the stop signals again.
    timeout = 0.5


class _MetricsServer6(_MetricsServer):
    address_family = socket.AF_INET6


class _Quiet(WSGIRequestHandler):
    """No access log line per scrape (Prometheus scrapes every 15 s, forever)."""

    def log_message(self, format: str, *args: Any) -> None:
        pass


def _written_line(total: Any) -> str:
    return (
        f"wrote {total.entries} event(s): {total.messages} message upsert(s), {total.events} event(s), "
        f"{total.recipients} recipient(s), {total.skipped} skipped, in {total.statements} statement(s)"
    )


def _lag_line(lag: dict[str, Any]) -> str:
    if not lag["group_exists"]:
        return f"log: no writer has run yet; {lag['stream_length']} event(s) in the stream"
    oldest = "-" if lag["oldest_age"] is None else f"{lag['oldest_age']:.1f}s"
    unwritten = "unknown" if lag["unwritten"] is None else lag["unwritten"]
    return (
        f"log: {unwritten} event(s) not yet written ({lag['pending']} pending, {_cell(lag['undelivered'])} not yet "
        f"read); oldest {oldest}; {lag['stream_length']} in the stream"
    )


def _queue_row(row: dict[str, Any]) -> list[str]:
    return [_cell(row[column]) for column in DEPTH_COLUMNS] + [
        _age(row["oldest_age"]),
        _cell(row["sent_1m"]),
        _cell(row["sent_1h"]),
    ]


def _age(seconds: float | None) -> str:
    """A wait as an operator reads it at a glance: "3.2s", "12m05s", "3h07m"; "-" when nothing waits."""
    if seconds is None:
        return "-"
    if seconds < 100:
        return f"{seconds:.1f}s"
    whole = int(seconds)
    if whole < 7200:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"


def _health_row(row: dict[str, Any]) -> list[str]:
    # "49920 of 50000/d": what is left of the quota (a bare "49920/50000/d" read as a fraction of a rate).
    quota = f"{row['quota_left']} of {row['quota']}" if row["quota"] else None
    return [_cell(row[column]) for column in HEALTH_COLUMNS[:-1]] + [_cell(quota)]


def _share_row(queue: dict[str, Any], share: dict[str, Any]) -> list[str]:
    """One provider of a queue: the strategy (with its budget), the share aimed at and the share it had."""
    strategy = queue["strategy"]
    if queue["latency_budget"] is not None:
        strategy += f"({queue['latency_budget']:g}s)"
    return [queue["queue"], strategy, share["provider"], _percent(share["target"]), _percent(share["share_5m"])]


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.1f}"
    return str(value)


def _dumps(data: Any) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False)
