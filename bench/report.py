"""The printed result: Markdown tables of every system's figures, the floors, and the targets as ratios."""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from .harness import Drain
from .logged_drain import KEEPS_UP_S, LoggedDrains, WriterRun

SYSTEM_ORDER = (
    "mailqueue",
    "django-smtp",
    "django-dramatiq-email",
    "django-celery-email",
    "django-post-office",
    "django-mailer",
)
LABELS = {"django-smtp": "Django SMTP backend (synchronous)", "mailqueue": "**mailqueue**"}


@dataclass(frozen=True)
class Failed:
    """A figure that could not be measured, and why."""

    reason: str


class Notes:
    """Footnotes for cells that hold no figure."""

    def __init__(self) -> None:
        self.reasons: list[str] = []

    def mark(self, failed: Failed) -> str:
        if failed.reason not in self.reasons:
            self.reasons.append(failed.reason)
        return f"n/a [{self.reasons.index(failed.reason) + 1}]"


def _get(results: dict[str, Any], *path: str) -> Any:
    value: Any = results
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


def _number(value: float | None, digits: int = 0) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def _cell(value: Any, notes: Notes, shown: Any) -> str:
    if isinstance(value, Failed):
        return notes.mark(value)
    if value is None:
        return "—"
    return str(shown(value))


def _drain_cell(value: Any, notes: Notes) -> str:
    if isinstance(value, Failed):
        return notes.mark(value)
    if not isinstance(value, Drain):
        return "—"
    mark = "" if value.exact else f" ✗ {value.unique}/{value.count}, {value.duplicates} dup"
    return f"{value.rate:,.0f}{mark}"


def _rate(value: Any) -> float | None:
    return value.rate if isinstance(value, Drain) else None


def _ratio(top: float | None, bottom: float | None) -> float | None:
    return top / bottom if top is not None and bottom else None


def render(
    results: dict[str, Any], *, sizes: Any, args: argparse.Namespace, database: str, elapsed: float
) -> Iterator[str]:
    notes = Notes()
    yield f"## Results: {time.strftime('%Y-%m-%d %H:%M')}, one run of `python -m bench` ({elapsed / 60:.1f} min)"
    yield ""
    yield (
        f"{os.cpu_count()} cores, {platform.python_implementation()} {platform.python_version()}, "
        f"{platform.system()} {platform.release()}; workers: {args.threads} threads per process; "
        f"database (peers' queues, the message log): {database}. Sizes: send_mail N={sizes.latency}, "
        f"batch N={sizes.batch}, drains N={sizes.small} small / N={sizes.large} with a 100 KB attachment."
    )
    yield ""
    if set(results) <= {"idle", "log"}:  # --only-idle, --only-log
        yield from _idle(results, notes)
        yield from _log(results, notes)
        if "log" in results:
            yield "| Target | Figure (this run) | Goal | |"
            yield "|---|--:|--:|---|"
            yield from _log_targets(results)
        yield from _notes(notes)
        return
    yield (
        "| System | Django | send_mail median µs | p99 µs | batch msg/s | SMTP drain msg/s, 1 proc | 2 procs "
        "| 100 KB, 1 proc | 100 KB, 2 procs | worker CPU µs/msg | Redis bytes/msg |"
    )
    yield "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|"
    for name in SYSTEM_ORDER:
        system = results.get(name)
        if system is None:
            continue
        if "failed" in system:
            yield f"| {LABELS.get(name, name)} | " + " | ".join([notes.mark(system["failed"])] * 10) + " |"
            continue
        latency = system.get("latency")
        small = system.get("drain_small_1")
        cpu = small.cpu_us if isinstance(small, Drain) else None
        redis_bytes = small.redis_bytes / small.count if isinstance(small, Drain) and small.redis_bytes else None
        cells = [
            _cell(system.get("django"), notes, str),
            _cell(latency, notes, lambda value: _number(value["median_us"])),
            _cell(latency, notes, lambda value: _number(value["p99_us"])),
            _cell(system.get("batch"), notes, lambda value: _number(value["rate"])) if "batch" in system else "(sends)",
            _drain_cell(system.get("drain_small_1"), notes),
            _drain_cell(system.get("drain_small_2"), notes),
            _drain_cell(system.get("drain_large_1"), notes),
            _drain_cell(system.get("drain_large_2"), notes),
            _number(cpu),
            _number(redis_bytes),
        ]
        yield f"| {LABELS.get(name, name)} | " + " | ".join(cells) + " |"
    yield ""
    yield "Every drain is checked at the sink by Message-ID: ✗ marks a run that lost or duplicated messages."
    yield "The 2-process figure for the synchronous backend is two processes each sending half over its own connection."
    yield ""
    yield from _cpu_accounting(results)
    yield from _log(results, notes)
    yield from _idle(results, notes)
    yield from _floors(results, notes)
    yield from _targets(results, notes)
    yield from _notes(notes)


def _notes(notes: Notes) -> Iterator[str]:
    if notes.reasons:
        yield ""
        yield "Not measured:"
        for index, reason in enumerate(notes.reasons, 1):
            yield f"{index}. {reason}"


def _cpu_accounting(results: dict[str, Any]) -> Iterator[str]:
    """Where each small-message drain spent CPU: on 2 cores, the sink and Redis share them with the workers."""
    rows = []
    for name in SYSTEM_ORDER:
        for processes in (1, 2):
            run = _get(results, name, f"drain_small_{processes}")
            if isinstance(run, Drain) and run.cpu_us is not None:
                total = sum(value or 0.0 for value in (run.cpu_us, run.sink_cpu_us, run.redis_cpu_us))
                busy = "—" if run.machine_busy is None else f"{run.machine_busy:.0%}"
                rows.append(
                    f"| {LABELS.get(name, name)} | {processes} | {_number(run.rate)} | {_number(run.cpu_us)} "
                    f"| {_number(run.sink_cpu_us)} | {_number(run.redis_cpu_us)} | {_number(total)} | {busy} |"
                )
    if not rows:
        return
    yield (
        "| Small-message drain: CPU µs per message | procs | msg/s | workers | sink | Redis | sum "
        "| machine busy (all cores) |"
    )
    yield "|---|--:|--:|--:|--:|--:|--:|--:|"
    yield from rows
    yield ""
    yield (
        f"The machine has {os.cpu_count()} cores for the workers, the sink and Redis together: a drain whose machine "
        "busy share nears 100% is bounded by CPU, and more worker processes cannot make it faster."
    )
    yield ""


def _seconds(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"


def _log(results: dict[str, Any], notes: Notes) -> Iterator[str]:
    """The SMTP drain with the message log written by one writer, beside the same drain with the log off."""
    logged = results.get("log")
    if logged is None:
        return
    if isinstance(logged, Failed):
        yield f"SMTP drain with the message log: {notes.mark(logged)}"
        yield ""
        return
    yield (
        f"| SMTP drain, message log off vs on ({logged.count:,} small, {logged.processes} process × "
        f"{logged.threads} threads; log in {logged.database}) | msg/s | worker CPU µs/msg | writer CPU µs/event "
        "| events unwritten, max | oldest unwritten, max s | all written, s after the last delivery "
        "| events / statement | log rows: sent / drained |"
    )
    yield "|---|--:|--:|--:|--:|--:|--:|--:|--:|"
    for _, run, writer in logged.runs:
        exact = "" if run.exact else f" ✗ {run.unique}/{run.count}, {run.duplicates} dup"
        cells = [f"{run.rate:,.0f}{exact}", _number(run.cpu_us)]
        if writer is None:
            yield '| off (`LOG["ENABLED"] = False`), no writer | ' + " | ".join([*cells, *["—"] * 6]) + " |"
            continue
        caught_up = _caught_up(writer)
        rows = f"{writer.sent:,} / {writer.expected:,}" + (
            "" if writer.rows_match else f" ✗ ({writer.messages:,} rows, {writer.events:,} events)"
        )
        cells += [
            _number(writer.cpu_us),
            _number(writer.max_unwritten),
            _seconds(writer.max_oldest_s),
            caught_up,
            _number(writer.per_statement, 1),
            rows,
        ]  # fmt: skip
        yield "| on, one writer (`manage.py mailqueue log`) | " + " | ".join(cells) + " |"
    yield ""
    on, off = logged.rates("on"), logged.rates("off")
    ratio = logged.ratio
    yield (
        f"Log on ÷ off: **{_number(ratio, 2)}×** (mean {_number(sum(on) / len(on) if on else None)} against "
        f"{_number(sum(off) / len(off) if off else None)} msg/s, runs alternating "
        f"{', '.join(side for side, _, _ in logged.runs)}; target ≥ 0.90×)."
    )
    # The writer's CPU for both events of a message, at the rate its drain ran: how much of a core logging takes.
    costs = [
        (writer.cpu_us * writer.entries / writer.expected, run.rate)
        for _, run, writer in logged.runs
        if writer is not None and writer.cpu_us is not None and writer.expected
    ]
    if costs:
        per_message, rate = max(costs, key=lambda cost: cost[0] * cost[1])
        yield (
            f"Each message puts two events on the stream (queued by the fill, sent by the worker). The writer spent "
            f"up to {_number(per_message)} µs of CPU a message: {per_message * rate / 1e6:.0%} of one core at "
            f"{_number(rate)} msg/s."
        )
    for problem in logged.problems:
        yield f"✗ {problem}"
    yield ""


def _caught_up(writer: WriterRun) -> str:
    if writer.caught_up_s is None:
        return "never"
    return _seconds(writer.caught_up_s) if writer.caught_up_timed else f"≤ {_seconds(writer.caught_up_s)}"


def _log_targets(results: dict[str, Any]) -> Iterator[str]:
    logged = results.get("log")
    if not isinstance(logged, LoggedDrains):
        return
    ratio = logged.ratio
    yield _row("SMTP drain with the message log written vs log off", f"{_number(ratio, 2)}×", "≥ 0.90×",
               None if ratio is None else ratio >= 0.9)  # fmt: skip
    writers = logged.writers
    if writers:
        worst_age = max((writer.max_oldest_s or 0.0) for writer in writers)
        latest = max(writers, key=lambda writer: float("inf") if writer.caught_up_s is None else writer.caught_up_s)
        figure = (
            f"oldest unwritten {worst_age:.2f} s at most; all written {_caught_up(latest)} s after the last delivery"
        )
        yield _row("Log writer keeps up at that rate", figure, f"both ≤ {KEEPS_UP_S:g} s",
                   all(writer.keeps_up for writer in writers))  # fmt: skip
    yield _row("Log rows: one sent row per message drained, log off appends nothing",
               "correct" if logged.correct else "**wrong**", "all", logged.correct)  # fmt: skip


def _row(name: str, figure: str, goal: str, met: bool | None) -> str:
    verdict = "—" if met is None else ("met" if met else "**missed**")
    return f"| {name} | {figure} | {goal} | {verdict} |"


def _idle_cells(phase: Any) -> str:
    if not isinstance(phase, dict):
        return "— | — | — | —"
    figures = (f"{phase[key]:.1f}" for key in ("p50_ms", "p99_ms", "max_ms"))
    return " | ".join((*figures, str(phase["count"])))


def _idle(results: dict[str, Any], notes: Notes) -> Iterator[str]:
    """Send -> provider accepted on an idle pool, beside Django's synchronous send in the same run."""
    idle = results.get("idle")
    if idle is None:
        return
    if isinstance(idle, Failed):
        yield f"Idle latency: {notes.mark(idle)}"
        yield ""
        return
    ours, django = idle.get("mailqueue", {}), idle.get("django", {})
    interval = ours.get("interval", 0.25)
    yield "| Idle latency: `send()` to the SMTP sink accepting it, ms | p50 | p99 | max | sends |"
    yield "|---|--:|--:|--:|--:|"
    steady = _idle_cells(ours.get("steady"))
    yield f"| **mailqueue**, one send every {interval * 1000:.0f} ms, one idle pool | {steady} |"
    yield f"| Django SMTP backend (synchronous), the same sends | {_idle_cells(django.get('steady'))} |"
    if "quiet" in ours:
        yield f"| **mailqueue**, each send after {ours['quiet_s']:g} s of silence | {_idle_cells(ours['quiet'])} |"
    if "minute" in ours:
        yield f"| **mailqueue**, one send after {ours['long_quiet_s']:g} s of silence | {_idle_cells(ours['minute'])} |"
    busy = idle.get("busy")
    if isinstance(busy, dict):
        left = f"{busy['backlog_left']:,} of {busy['backlog']:,} bulk messages still queued at the last one"
        cells = _idle_cells(busy.get("steady"))
        yield f"| **mailqueue**, `critical` while another pool drains `bulk` ({left}) | {cells} |"
    yield ""


def _floors(results: dict[str, Any], notes: Notes) -> Iterator[str]:
    floors = results.get("floors", {})
    ours = results.get("mailqueue", {})
    yield "| Floor (same run) | Figure | mailqueue | mailqueue ÷ floor |"
    yield "|---|--:|--:|--:|"
    redis = floors.get("redis")
    median = _get(ours, "latency", "median_us")
    if isinstance(redis, dict):
        round_trip = 1e6 / redis["lpush_c1"] if redis.get("lpush_c1") else None
        yield (
            f"| redis-benchmark LPUSH, 1 client: one round trip | {_number(round_trip)} µs | send_mail median "
            f"{_number(median)} µs | {_number(_ratio(median, round_trip), 2)}× |"
        )
        yield f"| redis-benchmark RPOP, 1 client | {_number(redis.get('rpop_c1'))} ops/s | | |"
        rates = f"{_number(redis.get('lpush_c50'))} / {_number(redis.get('rpop_c50'))}"
        yield f"| redis-benchmark LPUSH / RPOP, 50 clients | {rates} ops/s | | |"
    else:
        yield f"| redis-benchmark | {_cell(redis, notes, str)} | | |"
    locmem = _get(results, "locmem", "latency", "median_us")
    yield (
        f"| Django locmem `send_mail()` median | {_number(locmem)} µs | {_number(median)} µs "
        f"| {_number(_ratio(median, locmem), 2)}× |"
    )
    for size, label, key in (("small", "small", "drain_small_1"), ("large", "100 KB", "drain_large_1")):
        floor = floors.get(f"smtplib_{size}")
        ours_rate = _rate(ours.get(key))
        if isinstance(floor, dict):
            yield (
                f"| raw smtplib, pre-rendered {label} messages ({floor['message_bytes']:,} bytes), one connection "
                f"| {_number(floor['rate'])} msg/s | {_number(ours_rate)} msg/s (1 proc) "
                f"| {_number(_ratio(ours_rate, floor['rate']), 2)}× |"
            )
            render_us = _number(floor["render_us"])
            yield f"| Django rendering of that message (`message().as_bytes()`) | {render_us} µs | | |"
        else:
            yield f"| raw smtplib, {label} | {_cell(floor, notes, str)} | | |"
    for key, label in (("rendering", "small"), ("rendering_large", "100 KB")):
        stretch = floors.get(key)
        if isinstance(stretch, dict):
            yield (
                f"| Django rendering of a queued {label} message (`message(policy=SMTP).as_bytes()`) "
                f"| {_number(stretch['django_us'])} µs | worker's `workers.rendering` "
                f"{_number(stretch['ours_us'], 1)} µs, {stretch['identical']} of {stretch['count']} identical "
                f"| {_number(_ratio(stretch['ours_us'], stretch['django_us']), 3)}× |"
            )
        elif stretch is not None:
            yield f"| worker's rendering beside Django's, {label} | {_cell(stretch, notes, str)} | | |"
    esp, esp_sync = ours.get("esp"), _get(results, "django-smtp", "esp_sync")
    yield (
        f"| anymail Postmark backend, synchronous, one session | {_drain_cell(esp_sync, notes)} msg/s "
        f"| {_drain_cell(esp, notes)} msg/s (1 proc) | {_number(_ratio(_rate(esp), _rate(esp_sync)), 2)}× |"
    )
    soak = ours.get("soak")
    if isinstance(soak, Drain) and soak.rss_samples:
        yield from _soak(soak)
    elif isinstance(soak, Failed):
        yield f"| worker RSS soak | {notes.mark(soak)} | | |"
    for size, label in (("small", "small"), ("large", "100 KB")):
        run, floor = ours.get(f"drain_{size}_1"), floors.get(f"smtplib_{size}")
        if isinstance(run, Drain) and run.redis_bytes and isinstance(floor, dict):
            per_message = run.redis_bytes / run.count
            yield (
                f"| Redis bytes per queued {label} message vs its MIME size | {floor['message_bytes']:,} bytes "
                f"| {per_message:,.0f} bytes | {per_message / floor['message_bytes']:.2f}× |"
            )
    yield ""


def _soak(soak: Drain) -> Iterator[str]:
    samples = [sample for sample in soak.rss_samples if sample[0] > 0]
    if not samples:
        return
    early = next((rss for received, rss in samples if received >= soak.count * 0.1), samples[0][1])
    late = samples[-1][1]
    yield (
        f"| worker RSS over a drain of {soak.count:,} messages (1 process) | {early / 2**20:,.1f} MiB at 10% "
        f"| {late / 2**20:,.1f} MiB at {samples[-1][0]:,} | {late / early:.2f}× |"
    )
    status = "exactly once" if soak.exact else f"✗ {soak.unique}/{soak.count}, {soak.duplicates} dup"
    yield f"| that drain: rate, delivery | {soak.rate:,.0f} msg/s | {status} | |"


def _targets(results: dict[str, Any], notes: Notes) -> Iterator[str]:
    ours = results.get("mailqueue", {})
    median = _get(ours, "latency", "median_us")
    p99 = _get(ours, "latency", "p99_us")
    locmem = _get(results, "locmem", "latency", "median_us")
    batch_rate = _get(ours, "batch", "rate")
    smtp_1 = _rate(_get(results, "django-smtp", "drain_small_1"))
    ours_1, ours_2 = _rate(ours.get("drain_small_1")), _rate(ours.get("drain_small_2"))
    peers = [name for name in SYSTEM_ORDER[1:] if name in results and "failed" not in results[name]]
    peer_medians = {name: _get(results, name, "latency", "median_us") for name in peers}
    peer_drains = {
        name: max(filter(None, (_rate(results[name].get(f"drain_small_{p}")) for p in (1, 2))), default=None)
        for name in peers
    }
    drains = [
        value for system in results.values() if isinstance(system, dict) for value in system.values()
        if isinstance(value, Drain)
    ]  # fmt: skip
    logged = results.get("log")
    if isinstance(logged, LoggedDrains):
        drains += [run for _, run, _ in logged.runs]
    row = _row

    yield "| Target | Figure (this run) | Goal | |"
    yield "|---|--:|--:|---|"
    ratio = _ratio(median, locmem)
    yield row("Enqueue median vs Django locmem `send_mail`", f"{_number(ratio, 2)}×", "≤ 0.30×",
              None if ratio is None else ratio <= 0.3)  # fmt: skip
    slowest_ok = [value for value in peer_medians.values() if value is not None]
    fastest_peer = min(slowest_ok, default=None)
    yield row("Enqueue median vs the fastest peer's", f"{_number(_ratio(median, fastest_peer), 2)}×", "< 1×",
              None if median is None or fastest_peer is None else median < fastest_peer)  # fmt: skip
    yield row("Enqueue p99", f"{_number(p99)} µs", "< 1,000 µs", None if p99 is None else p99 < 1000)
    per_message = 1e6 / batch_rate if batch_rate else None
    batch_gain = _ratio(median, per_message)
    yield row("Batch enqueue vs single `send_mail`, per message", f"{_number(batch_gain, 1)}× faster", "≥ 10×",
              None if batch_gain is None else batch_gain >= 10)  # fmt: skip
    ratio = _ratio(ours_1, smtp_1)
    yield row("SMTP drain, 1 process, vs Django SMTP backend on one connection", f"{_number(ratio, 2)}×", "≥ 0.90×",
              None if ratio is None else ratio >= 0.9)  # fmt: skip
    ratio = _ratio(ours_2, ours_1)
    yield row(
        "SMTP drain, 2 processes vs 1", f"{_number(ratio, 2)}×", "≥ 1.6×", None if ratio is None else ratio >= 1.6
    )
    best_ours = max(filter(None, (ours_1, ours_2)), default=None)
    queued_peers = {name: rate for name, rate in peer_drains.items() if name != "django-smtp" and rate is not None}
    best_peer = max(queued_peers.values(), default=None)
    yield row("SMTP drain vs the fastest queued peer (best of 1 and 2 processes)",
              f"{_number(_ratio(best_ours, best_peer), 2)}×", "> 1×",
              None if best_ours is None or best_peer is None else best_ours > best_peer)  # fmt: skip
    exact = all(value.exact for value in drains)
    lossy = [value for value in drains if not value.exact]
    yield row("No message lost or duplicated, every drain", f"{len(drains) - len(lossy)} of {len(drains)} exact",
              "all", exact if drains else None)  # fmt: skip
    yield from _log_targets(results)
    soak = ours.get("soak")
    if isinstance(soak, Drain) and soak.rss_samples:
        samples = [rss for received, rss in soak.rss_samples if received >= soak.count * 0.1]
        growth = samples[-1] / samples[0] if samples else None
        yield row("Worker RSS, end of soak vs 10% in", f"{_number(growth, 2)}×", "≤ 1.10× (flat)",
                  None if growth is None else growth <= 1.1)  # fmt: skip
    idle = results.get("idle")
    if isinstance(idle, dict):
        for label, phase in (
            ("one send every 250 ms", _get(idle, "mailqueue", "steady")),
            ("after a quiet spell", _get(idle, "mailqueue", "quiet")),
            ("after a long silence", _get(idle, "mailqueue", "minute")),
            ("`critical` behind a `bulk` drain", _get(idle, "busy", "steady")),
        ):
            if isinstance(phase, dict):
                figure = f"p50 {phase['p50_ms']:.1f} ms, p99 {phase['p99_ms']:.1f} ms"
                met = phase["p50_ms"] <= 5 and phase["p99_ms"] <= 20
                yield row(f"Idle send -> provider, {label}", figure, "p50 ≤ 5 ms, p99 ≤ 20 ms", met)
    for key, label in (("rendering", "small"), ("rendering_large", "100 KB")):
        stretch = _get(results, "floors", key)
        name = f"Stretch: byte-identical MIME faster than Django's rendering, {label}"
        if isinstance(stretch, dict):
            identical = stretch["identical"] == stretch["shortcut"] == stretch["count"]
            gain = _ratio(stretch["django_us"], stretch["ours_us"])
            figure = f"{_number(gain, 0)}× faster, {stretch['identical']} of {stretch['count']} identical"
            yield row(name, figure, "identical, > 1×", identical and gain is not None and gain > 1)
        else:
            yield row(name, "not measured", "", None)
