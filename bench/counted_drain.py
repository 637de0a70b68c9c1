"""The SMTP drain with the cluster counters kept, beside the same drain with them off, in one run.

Issue 12's cost row: mailqueue's workers drain N small messages with ``MONITOR["COUNTERS"] = False`` and with
it True (the default), everything else as a user gets it. Runs alternate (off, on, then on, off) so the
machine's drift does not favour one side. After each run the counters' hash is read back: with the counters
on it must hold one delivery, one send-duration sample and one latency sample per message drained; with them
off it must not exist. The issue's target: the counters keep the drain within 5% of its rate without them.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from mailqueue.counters import (
    INF,
    LATENCY_BUCKETS,
    SEND_BUCKETS,
    bucket_label,
    counters_key,
    deliveries_field,
    latency_bucket_field,
    send_bucket_field,
)

from .harness import BenchError, Drain, Services, drain, off_on_rates, off_on_ratio
from .systems import System

#: The queue and the provider alias every bench drain goes through (bench.settings).
QUEUE, PROVIDER = "default", "provider"
#: The issue's goal: the rate with counters is at least this share of the rate without.
TARGET = 0.95


@dataclass(frozen=True, kw_only=True)
class Counted:
    """What the counters' hash held after one drain with the counters on (None: the hash did not exist)."""

    sent: int
    send_samples: int
    latency_samples: int


@dataclass(frozen=True, kw_only=True)
class CountedDrains:
    """The row: drains with the counters off and on, alternating, same messages and workers."""

    count: int
    threads: int
    #: ("off", drain, None) or ("on", drain, what the hash held), in the order they ran.
    runs: tuple[tuple[str, Drain, Counted | None], ...]
    #: Why a run does not count: a hash written with the counters off, or counts that do not match the drain.
    problems: tuple[str, ...] = ()

    def rates(self, side: str) -> list[float]:
        return off_on_rates(self.runs, side)

    @property
    def ratio(self) -> float | None:
        return off_on_ratio(self.runs)

    @property
    def correct(self) -> bool:
        return not self.problems and all(run.exact for _, run, _ in self.runs)


def _read_counters(services: Services, system: System) -> Counted | None:
    """The counts the workers left for the bench's one (queue, provider); None when the hash is absent."""
    client = services.redis(system)
    try:
        found = client.hgetall(counters_key(services.namespace(system)))
    finally:
        client.close()
    if not found:
        return None
    values = {field.decode(): float(value) for field, value in found.items()}
    send = [send_bucket_field(PROVIDER, bucket_label(bound)) for bound in SEND_BUCKETS] + [
        send_bucket_field(PROVIDER, INF)
    ]
    latency = [latency_bucket_field(QUEUE, PROVIDER, bucket_label(bound)) for bound in LATENCY_BUCKETS] + [
        latency_bucket_field(QUEUE, PROVIDER, INF)
    ]
    return Counted(
        sent=int(values.get(deliveries_field(QUEUE, PROVIDER, "sent"), 0)),
        send_samples=int(sum(values.get(field, 0) for field in send)),
        latency_samples=int(sum(values.get(field, 0) for field in latency)),
    )


def measure(services: Services, system: System, *, count: int, threads: int, rounds: int) -> CountedDrains:
    """``rounds`` pairs of drains, off then on, then on then off, ...: N small messages, 1 worker process each."""
    runs: list[tuple[str, Drain, Counted | None]] = []
    problems: list[str] = []
    for round_ in range(rounds):
        for side in ("off", "on") if round_ % 2 == 0 else ("on", "off"):
            # drain() empties the namespace first: what the hash holds afterwards is this run's alone.
            run = drain(
                services, system, count=count, size="small", processes=1, threads=threads,
                settings={"BENCH_COUNTERS": side},
            )  # fmt: skip
            counted = _read_counters(services, system)
            if side == "off":
                if counted is not None:
                    problems.append(f"run {len(runs) + 1}: the counters' hash was written with the counters off")
                runs.append((side, run, None))
                continue
            if counted is None:
                raise BenchError("no counters' hash after a drain with the counters on")
            if not counted.sent == counted.send_samples == counted.latency_samples == run.unique:
                problems.append(
                    f"run {len(runs) + 1}: {counted.sent} sent, {counted.send_samples} send and "
                    f"{counted.latency_samples} latency samples counted for {run.unique} messages drained"
                )
            runs.append((side, run, counted))
    return CountedDrains(count=count, threads=threads, runs=tuple(runs), problems=tuple(problems))


def _number(value: float | None, digits: int = 0) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def render(result: Any) -> Iterator[str]:
    """The row's table, its ratio against the issue's target, and any problem; or why it was not measured."""
    if result is None:
        return
    if not isinstance(result, CountedDrains):
        yield f"SMTP drain with the cluster counters: not measured ({result})"
        yield ""
        return
    yield ""
    yield (
        f"| SMTP drain, cluster counters off vs on ({result.count:,} small, 1 process × {result.threads} threads) "
        "| msg/s | worker CPU µs/msg | Redis CPU µs/msg | counted: sent / send / latency samples |"
    )
    yield "|---|--:|--:|--:|--:|"
    for side, run, counted in result.runs:
        exact = "" if run.exact else f" ✗ {run.unique}/{run.count}, {run.duplicates} dup"
        label = '| off (`MONITOR["COUNTERS"] = False`) |' if side == "off" else "| on (the default) |"
        samples = (
            "— (no hash)"
            if counted is None
            else f"{counted.sent:,} / {counted.send_samples:,} / {counted.latency_samples:,}"
        )
        cells = [f"{run.rate:,.0f}{exact}", _number(run.cpu_us), _number(run.redis_cpu_us), samples]
        yield f"{label} " + " | ".join(cells) + " |"
    yield ""
    on, off = result.rates("on"), result.rates("off")
    ratio = result.ratio
    met = "—" if ratio is None else ("met" if ratio >= TARGET else "**missed**")
    yield (
        f"Counters on ÷ off: **{_number(ratio, 3)}×** (mean {_number(sum(on) / len(on) if on else None)} against "
        f"{_number(sum(off) / len(off) if off else None)} msg/s, runs alternating "
        f"{', '.join(side for side, _, _ in result.runs)}; target ≥ {TARGET:.2f}×: {met}). "
        f"Counts match the drains: {'yes' if result.correct else '**no**'}."
    )
    for problem in result.problems:
        yield f"✗ {problem}"
    yield ""
