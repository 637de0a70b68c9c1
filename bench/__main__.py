"""``python -m bench [--smoke]``: run the benchmarks and print ratios against same-run baselines."""

from __future__ import annotations

import argparse
import os
import sys

import django


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: only checks that the harness works")
    parser.add_argument("--redis-url", default=os.environ.get("MAILQUEUE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0"))
    args = parser.parse_args()
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
    django.setup()
    from bench import enqueue  # noqa: PLC0415  (imports Django mail machinery: after setup)

    count, batch = (50, 100) if args.smoke else (5000, 10000)
    for line in enqueue.run(args.redis_url, count, batch):
        print(line)  # noqa: T201
    sys.stdout.flush()


if __name__ == "__main__":
    main()
