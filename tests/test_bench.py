"""The benchmark harness runs end to end (tiny sizes, no peers; timings are never asserted)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_bench_smoke_run_prints_the_tables(redis_url) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--redis-url", redis_url],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,  # on a loaded 2-core machine it took 100 s, a third of it starting worker pools
    )
    assert result.returncode == 0, result.stderr
    assert "| **mailqueue** | 6.1" in result.stdout
    assert "Django locmem `send_mail()` median" in result.stdout
    assert "| Django SMTP backend (synchronous), the same sends |" in result.stdout  # the idle-latency row
    # Every drain of the smoke run delivered each message exactly once.
    exactly_once = re.search(
        r"\| No message lost or duplicated, every drain \| (\d+) of (\d+) exact \| all \| met \|", result.stdout
    )
    assert exactly_once, result.stdout
    assert int(exactly_once[2]) >= 3
    # The message-log row: a drain with the log off and one with a writer running, both printed, and what the
    # writer left in the database (PostgreSQL here, SQLite without it) is one sent row per message drained.
    assert '| off (`LOG["ENABLED"] = False`), no writer |' in result.stdout
    logged = re.search(r"\| on, one writer \(`manage.py mailqueue log`\) \|(.*)\|$", result.stdout, re.MULTILINE)
    assert logged, result.stdout
    assert logged[1].rstrip().endswith("| 40 / 40"), logged[0]
    assert "| Log rows: one sent row per message drained, log off appends nothing | correct | all | met |" in (
        result.stdout
    )
