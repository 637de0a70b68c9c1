"""``python -m bench.wire``: what mailqueue.client's fast path buys, against its public fallback and redis-py's Script.

Times N calls of one trivial script (``return 1``, sent with EVALSHA) three ways, in the same run,
interleaved round by round so that a busy machine slows all three alike:

- ``fast``: ``mailqueue.client.LuaScript`` on the fast path (``Wire``: the socket and hiredis directly);
- ``public``: the same ``LuaScript`` on the fallback (``PublicWire``: redis-py's public Connection API);
- ``redis-py Script``: ``Redis.register_script()``, through the client's pool, retry and command layers.

Prints, per call, the median over the rounds of wall time and of this process's CPU time (Redis's own
work is in another process, so CPU time is what the client costs), and each as a ratio to the fast path.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import django
import redis
from django.conf import settings

from mailqueue import client

SOURCE = "return 1"


def configure(redis_url: str) -> None:
    settings.configure(
        MAILERS={
            "default": {"BACKEND": "mailqueue.backend.EmailBackend", "OPTIONS": {"queue": "default"}},
            "locmem": {"BACKEND": "django.core.mail.backends.locmem.EmailBackend"},
        },
        DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
        MAILQUEUE={"BROKER_URL": redis_url, "QUEUES": {"default": {"providers": ["locmem"]}}},
    )
    django.setup()


def on_path(path: str) -> Callable[[], Any]:
    """A call of the script on this thread's connection, on ``path`` (``fast`` or ``public``)."""
    script = client.LuaScript(SOURCE)

    def call() -> Any:
        return script([], [])

    def switch() -> Callable[[], Any]:
        if path == "public":
            os.environ[client.WIRE_ENV] = "public"
        else:
            os.environ.pop(client.WIRE_ENV, None)
        client.redis_client.cache_clear()  # this thread's connection is made again, on that path
        call()
        if client.wire_path() != path:
            raise SystemExit(f"asked for the {path} path, got {client.wire_path()}")
        return call

    return switch


def redis_py_script() -> Callable[[], Any]:
    script = client.redis_client().register_script(SOURCE)

    def start() -> Callable[[], Any]:
        script()  # loads it, and opens the pool's connection
        return lambda: script()

    return start


def time_calls(call: Callable[[], Any], calls: int) -> tuple[float, float]:
    """Wall and CPU seconds per call, over ``calls`` calls."""
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(calls):
        call()
    return (time.perf_counter() - wall) / calls, (time.process_time() - cpu) / calls


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis-url", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    parser.add_argument("--calls", type=int, default=20_000, help="calls per round and way (default 20,000)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds, each timing every way once (default 5)")
    args = parser.parse_args(argv)
    configure(args.redis_url)

    ways = {"fast": on_path("fast"), "public": on_path("public"), "redis-py Script": redis_py_script()}
    figures: dict[str, list[tuple[float, float]]] = {name: [] for name in ways}
    for _ in range(args.rounds):
        for name, start in ways.items():
            figures[name].append(time_calls(start(), args.calls))

    wall = {name: statistics.median(f[0] for f in rows) * 1e6 for name, rows in figures.items()}
    cpu = {name: statistics.median(f[1] for f in rows) * 1e6 for name, rows in figures.items()}
    out = sys.stdout
    out.write(f"`python -m bench.wire --calls {args.calls} --rounds {args.rounds}`: EVALSHA of `{SOURCE}`, ")
    out.write(f"median of {args.rounds} rounds, Python {sys.version.split()[0]}, redis-py {redis.__version__}")
    out.write(f" ({'with' if client.HAVE_HIREDIS else 'without'} hiredis)\n\n")
    out.write("| Way | wall µs/call | CPU µs/call | wall vs fast | CPU vs fast |\n|---|---:|---:|---:|---:|\n")
    for name in ways:
        out.write(
            f"| {name} | {wall[name]:.1f} | {cpu[name]:.1f} | "
            f"{wall[name] / wall['fast']:.2f}× | {cpu[name] / cpu['fast']:.2f}× |\n"
        )


if __name__ == "__main__":
    main()
