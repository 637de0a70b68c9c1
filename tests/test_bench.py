"""The benchmark harness runs (tiny sizes; timings are never asserted)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_bench_smoke_run_prints_ratios(redis_url) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--redis-url", redis_url],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    assert "ratio (ours/locmem) median" in result.stdout
    assert "messages/s" in result.stdout
