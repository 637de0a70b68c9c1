"""``python -m bench.publish_cost``: what the wake-up PUBLISH adds to ``send_mail()``'s one script call.

The enqueue script publishes on the queue's wake channel when its push finds the
queue empty (the idle case, mailqueue/enqueue.py). This times the enqueue of one
small message with that script beside the same script without the PUBLISH, in the
same process, interleaved rounds, the ready list emptied before every call (so the
new script publishes every time), with 0, 1 and 4 subscribed connections (a
subscriber per worker process). It starts a private ``redis-server`` unless
``--redis-url`` is given (then it writes only keys under ``mqbench-<id>-publish:``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import uuid
from typing import Any

import django

from .batch_paths import redis_url

#: The PUBLISH statement of mailqueue.enqueue.ENQUEUE_SCRIPT: removed for the script without it.
PUBLISH_STATEMENT = """  if #ids > 0 and length == #ids then
    -- pcall: a refused PUBLISH (an ACL without the channel) must not fail a push already written.
    redis.pcall("publish", ARGV[queues + queue + 2], "")
  end
"""


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.publish_cost", description=__doc__)
    parser.add_argument("--redis-url", help="use this Redis (keys under mqbench-<id>-publish:), not a private one")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--calls", type=int, default=250, help="calls per round and script")
    args = parser.parse_args()
    namespace = f"mqbench-{uuid.uuid4().hex[:8]}-publish"
    with redis_url(args.redis_url) as url:
        os.environ.update(BENCH_REDIS_URL=url, BENCH_NAMESPACE=namespace, DJANGO_SETTINGS_MODULE="bench.settings")
        django.setup()
        measure(url, namespace, args.rounds, args.calls)


def measure(url: str, namespace: str, rounds: int, calls: int) -> None:
    # After django.setup(): mailqueue reads its settings when imported.
    import redis  # noqa: PLC0415
    from django.core.mail import EmailMessage  # noqa: PLC0415

    from mailqueue.client import LuaScript  # noqa: PLC0415
    from mailqueue.enqueue import ENQUEUE, ENQUEUE_SCRIPT, encode  # noqa: PLC0415
    from mailqueue.envelope import Envelope  # noqa: PLC0415
    from mailqueue.keys import QueueKeys, events_key, wake_channel  # noqa: PLC0415

    if PUBLISH_STATEMENT not in ENQUEUE_SCRIPT:
        sys.exit("bench.publish_cost: the enqueue script's PUBLISH statement changed; update PUBLISH_STATEMENT")
    without = LuaScript(ENQUEUE_SCRIPT.replace(PUBLISH_STATEMENT, ""))
    keys = QueueKeys.of(namespace, "default")
    channel = wake_channel(namespace, "default")
    events = events_key(namespace)  # no events are passed: the PUBLISH alone is measured
    message = EmailMessage("Your receipt", "Thanks for your order.", "shop@example.com", ["ann@example.com"])
    client = redis.Redis.from_url(url)

    def run(script: Any) -> list[float]:
        samples = []
        for _ in range(calls):
            client.delete(keys.ready)  # as a worker leaves an idle queue: the push finds it empty
            item = encode(Envelope.from_message(message, queue="default", mailer="default"))
            began = time.perf_counter_ns()
            script([events, keys.messages, keys.ready], [86400, 1000, 1, channel, item.redis_id, item.data, "", ""])
            samples.append((time.perf_counter_ns() - began) / 1000)
        return samples

    print(f"Python {sys.version.split()[0]}, {os.cpu_count()} cores; {rounds} rounds of {calls} calls per script")  # noqa: T201
    print("| subscribers | without PUBLISH, median µs | with PUBLISH | difference | p90 without | p90 with |")  # noqa: T201
    print("|--:|--:|--:|--:|--:|--:|")  # noqa: T201
    for count in (0, 1, 4):
        subscribers = []
        for _ in range(count):
            pubsub = client.pubsub()
            pubsub.subscribe(channel)
            pubsub.get_message(timeout=1)
            subscribers.append(pubsub)
        for script in (ENQUEUE, without):  # warm-up: scripts loaded, connection open
            run(script)
        times: dict[str, list[float]] = {"with": [], "without": []}
        for index in range(rounds):
            order = (("with", ENQUEUE), ("without", without))
            for name, script in order if index % 2 else order[::-1]:
                times[name] += run(script)
            client.delete(keys.messages)
            for pubsub in subscribers:  # read what they were sent, as a worker's subscriber thread does
                while pubsub.get_message(timeout=0):
                    pass
        base, new = statistics.median(times["without"]), statistics.median(times["with"])
        p90 = {name: statistics.quantiles(values, n=10)[-1] for name, values in times.items()}
        print(  # noqa: T201
            f"| {count} | {base:.1f} | {new:.1f} | {new - base:+.1f} µs ({new / base - 1:+.0%}) "
            f"| {p90['without']:.1f} | {p90['with']:.1f} |"
        )
        for pubsub in subscribers:
            pubsub.close()
    publish = client.info("commandstats").get("cmdstat_publish", {})
    print(f"\nRedis's own time per PUBLISH (INFO commandstats): {publish.get('usec_per_call', 0):.2f} µs")  # noqa: T201
    client.delete(keys.messages, keys.ready)
    client.close()


if __name__ == "__main__":
    main()
