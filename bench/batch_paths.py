"""``python -m bench.batch_paths``: a batch enqueue by the Lua script beside the same batch by MULTI/EXEC.

mailqueue enqueues every batch with one Lua script call. Until issue 9 it had a
second path: from 16 unguarded messages, ``MULTI`` / ``HSET`` / ``RPUSH`` /
``EXEC``, which Redis runs without copying every argument into Lua. This script
keeps that path (``push_by_transaction`` below, as it was) so that what a second
code path would buy stays measurable: it times ``send_messages()`` of a
10,000-message and a 100-message batch through both paths in the same process
and the same minutes, rounds interleaved, beside the median single ``send_mail()``,
and prints the ratios (the batch target: a batch message at least 10x cheaper
than a single send). It starts a private ``redis-server`` unless ``--redis-url``
is given (then it writes only keys under ``mqbench-<id>-batch-paths:``).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import django
import redis

from .harness import _delete_matching, _start_redis, _stop

#: One push: what ``mailqueue.backend`` calls with the encoded batch.
Push = Callable[[Sequence[Any]], int]


@contextlib.contextmanager
def redis_url(given: str | None) -> Iterator[str]:
    """``given``, or a private redis-server's URL for as long as the block runs."""
    if given:
        yield given
        return
    with tempfile.TemporaryDirectory(prefix="mqbench-") as work_dir:
        url, server = _start_redis(Path(work_dir), Path(work_dir) / "redis-start.log")
        try:
            yield url
        finally:
            _stop(server)


def push_by_transaction(batch: Sequence[Any]) -> int:
    """The removed second path: the batch as MULTI, one HSET and one RPUSH per queue, EXEC; one round trip."""
    # After django.setup(): mailqueue reads its settings when imported.
    from mailqueue.client import exchange  # noqa: PLC0415
    from mailqueue.conf import get_config  # noqa: PLC0415
    from mailqueue.keys import QueueKeys  # noqa: PLC0415

    namespace = get_config().namespace
    by_queue: dict[str, list[Any]] = {}
    for item in batch:
        by_queue.setdefault(item.queue, []).append(item)
    commands: list[tuple[Any, ...]] = [("MULTI",)]
    for queue, items in by_queue.items():
        keys = QueueKeys.of(namespace, queue)
        fields: list[str | bytes] = []
        for item in items:
            fields += (item.redis_id, item.data)
        commands.append(("HSET", keys.messages, *fields))
        commands.append(("RPUSH", keys.ready, *(item.redis_id for item in items)))
    commands.append(("EXEC",))

    def receive(wire: Any) -> list[Any]:
        for _ in range(len(commands) - 1):
            wire.read()  # OK, then QUEUED for each command
        replies: list[Any] = wire.read()
        return replies

    replies = exchange(commands, receive)
    failed = next((reply for reply in replies if isinstance(reply, redis.ResponseError)), None)
    if failed is not None:
        raise failed
    return len(batch)


def measure(args: argparse.Namespace, client: redis.Redis, namespace: str) -> dict[str, Any]:
    """Per-message µs of each batch size through each path, and the single send_mail() median."""
    from django.core.mail import mailers, send_mail  # noqa: PLC0415  (after django.setup())

    import mailqueue.backend  # noqa: PLC0415
    from bench.driver import message  # noqa: PLC0415  (the messages every bench run sends)

    paths: dict[str, Push] = {"script": mailqueue.backend.push, "MULTI/EXEC": push_by_transaction}
    backend = mailers["default"]

    def batch_us(path: str, size: int, run: str) -> float:
        mailqueue.backend.push = paths[path]  # what push_or_keep() calls
        try:
            batch = [message(run, index, "small") for index in range(size)]
            began = time.perf_counter()
            backend.send_messages(batch)
            elapsed = time.perf_counter() - began
            queued = client.llen(f"{namespace}:default")
            if queued != size:
                raise RuntimeError(f"{path}: {queued} of {size} messages reached the queue")
            return elapsed / size * 1e6
        finally:
            mailqueue.backend.push = paths["script"]
            _delete_matching(client, f"{namespace}:*")

    for path in paths:  # warm-up, untimed, as `python -m bench` does: caches, the script load
        batch_us(path, 1000, f"warmup-{path}")
    samples: dict[tuple[str, int], list[float]] = {(path, size): [] for path in paths for size in args.sizes}
    for round_ in range(args.rounds):
        for size in args.sizes:
            repeats = max(args.messages_per_round // size, 1)
            for path in paths if round_ % 2 == 0 else reversed(paths):  # neither path always goes first
                for repeat in range(repeats):
                    samples[path, size].append(batch_us(path, size, f"{path}-{size}-{round_}-{repeat}"))

    single = []
    for index in range(args.single + 50):
        began = time.perf_counter_ns()
        send_mail("Your receipt", "Thanks for your order.", "shop@example.com", ["ann@example.com"])
        if index >= 50:  # the first 50 are a warm-up, as in `python -m bench`
            single.append((time.perf_counter_ns() - began) / 1000)
    _delete_matching(client, f"{namespace}:*")
    return {
        "batch_us": {key: statistics.median(values) for key, values in samples.items()},
        "single_us": statistics.median(single),
    }


def report(results: dict[str, Any], args: argparse.Namespace) -> Iterator[str]:
    single = results["single_us"]
    yield f"Python {sys.version.split()[0]}, Django {django.get_version()}, {os.cpu_count()} cores"
    yield f"{args.rounds} rounds, medians of each batch's µs per message"
    yield f"single send_mail() median: {single:,.1f} µs ({args.single} calls)"
    yield ""
    yield (
        "| batch | script µs/msg | MULTI/EXEC µs/msg | script ÷ MULTI/EXEC "
        "| batch vs single, script | batch vs single, MULTI/EXEC |"
    )
    yield "|--:|--:|--:|--:|--:|--:|"
    for size in args.sizes:
        script, multi = results["batch_us"]["script", size], results["batch_us"]["MULTI/EXEC", size]
        yield (
            f"| {size:,} | {script:.1f} | {multi:.1f} | {script / multi:.2f}× "
            f"| {single / script:.1f}× | {single / multi:.1f}× |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.batch_paths", description=__doc__)
    parser.add_argument("--redis-url", help="use this Redis (keys under mqbench-<id>-batch-paths:) instead")
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100], help="batch sizes (messages)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds; each times every size through both paths")
    parser.add_argument(
        "--messages-per-round", type=int, default=10_000, help="a small batch is repeated up to this many messages"
    )
    parser.add_argument("--single", type=int, default=2_000, help="single send_mail() calls for the median")
    args = parser.parse_args()

    namespace = f"mqbench-{uuid.uuid4().hex[:8]}-batch-paths"
    with redis_url(args.redis_url) as url:
        os.environ.update(DJANGO_SETTINGS_MODULE="bench.settings", BENCH_SYSTEM="mailqueue")
        os.environ.update(BENCH_REDIS_URL=url, BENCH_NAMESPACE=namespace)
        django.setup()
        client = redis.Redis.from_url(url)
        try:
            results = measure(args, client, namespace)
        finally:
            _delete_matching(client, f"{namespace}:*")
            client.close()
    for line in report(results, args):
        print(line)  # noqa: T201


if __name__ == "__main__":
    main()
