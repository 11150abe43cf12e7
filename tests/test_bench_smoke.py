"""The benchmark still runs end to end (a short smoke run; no thresholds: numbers on a shared
CI machine say nothing, the full `make bench` is for that)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def test_bench_smoke_run_prints_the_side_by_side_table(tmp_path: Path) -> None:
    if not (shutil.which("nginx") and shutil.which("wrk")) and os.geteuid() != 0:
        pytest.skip("nginx and wrk are missing and only root can install them")
    result = subprocess.run(
        [
            sys.executable, "bench/run.py",
            "--seconds", "1", "--warmup", "0.3", "--connections", "4", "--modes", "json,sse",
            "--no-memory", "--no-stream-latency",
        ],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    table = result.stdout
    for row in ("direct", "bare-proxy", "gateway", "gateway+redis", "gateway+redis-cluster"):
        assert f"\n{row} " in table
    assert "x bare RPS" in table and "CHECK FAILED" not in table
