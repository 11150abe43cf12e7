"""Optional: where the gateway spends its CPU on the JSON cache-miss path (py-spy, c=16).

Needs py-spy in the venv (``.venv/bin/pip install py-spy``). While wrk drives the gateway
(JSON, c=16), py-spy samples it 250 times a second and writes collapsed stacks. It pauses the
process for each sample (a few per cent of slowdown): ``--nonblocking`` reads the stacks while
they change and attributes leaves to the wrong callers. The tables list functions by self time
(the leaf of each sample), the gateway's own functions and whole modules by inclusive time, and
a few areas that are candidates for work. A flame graph goes to bench/results/ as well.
Profiled runs are not part of the throughput table.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from harness import RESULTS, VENV_BIN, Report, wrk_command

if TYPE_CHECKING:
    from run import Bench

_FRAME = re.compile(r"^(?P<func>.+?) \((?P<file>[^()]*?)(?::\d+)?\)$")


def _short_file(path: str) -> str:
    for marker in ("site-packages/", "/lib/python3", "/work/main/"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return path


def frame_name(frame: str) -> str:
    match = _FRAME.match(frame.strip())
    if not match:
        return frame.strip()
    return f"{match.group('func')} ({_short_file(match.group('file'))})"


@dataclass
class Summary:
    samples: int = 0
    self_time: Counter[str] = field(default_factory=Counter)  # leaf function
    gateway_inclusive: Counter[str] = field(default_factory=Counter)  # gateway functions
    module_inclusive: Counter[str] = field(default_factory=Counter)  # any frame in the file
    area_inclusive: Counter[str] = field(default_factory=Counter)  # see AREAS


# Areas: a sample counts for an area when a frame on its stack comes from one of these files.
AREAS: dict[str, tuple[str, ...]] = {
    "access log (logging + gateway/log.py)": ("logging/__init__.py", "gateway/log.py"),
    "Prometheus metrics (prometheus_client)": ("prometheus_client/",),
    "upstream HTTP client (aiohttp client)": (
        "aiohttp/client.py",
        "aiohttp/client_reqrep.py",
        "aiohttp/connector.py",
    ),
    "JSON (gateway/json_codec.py)": ("gateway/json_codec.py",),
    "request ids (uuid)": ("uuid.py",),
    "pattern matching (fnmatch)": ("fnmatch.py",),
    "quota (gateway/quota/)": ("gateway/quota/",),
    "cache (gateway/cache/)": ("gateway/cache/",),
    "auth (gateway/auth.py)": ("gateway/auth.py",),
}


def _module(name: str) -> str:
    return name[name.rfind("(") + 1 : -1] if name.endswith(")") else name


def summarize(collapsed: str) -> Summary:
    """Self and inclusive sample counts from py-spy's collapsed (raw) stacks."""
    summary = Summary()
    for line in collapsed.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [
            frame_name(f)
            for f in stack.split(";")
            if not f.startswith(("process ", "thread ("))  # with --subprocesses / --threads
        ]
        if not frames:
            continue
        summary.samples += count
        summary.self_time[frames[-1]] += count
        for name in set(frames):
            if "(gateway/" in name:
                summary.gateway_inclusive[name] += count
        modules = {_module(name) for name in frames}
        for module in modules:
            summary.module_inclusive[module] += count
        for area, markers in AREAS.items():
            if any(marker in module for module in modules for marker in markers):
                summary.area_inclusive[area] += count
    return summary


def profile_gateway(bench: Bench, report: Report, seconds: float = 10.0, top: int = 20) -> None:
    mode = os.environ.get("BENCH_PROFILE_MODE", "json")
    report.heading(f"Profile: gateway, {mode.upper()}, c=16 (py-spy)")
    # BENCH_PY_SPY: a py-spy installed elsewhere (the venv may be shared and not ours to change).
    py_spy = Path(os.environ.get("BENCH_PY_SPY") or VENV_BIN / "py-spy")
    target = os.environ.get("BENCH_PROFILE_TARGET", "gateway")
    gateway = next((r for r in bench.running if r.name == target), None)
    if gateway is None:
        report.note(f"no `{target}` target running: nothing to profile")
        return
    if not py_spy.exists():
        report.note("py-spy is not installed: .venv/bin/pip install py-spy")
        return
    workdir = bench.procs.workdir
    raw = workdir / "profile.txt"
    svg = RESULTS / f"profile-gateway-{mode}-c16.svg"
    RESULTS.mkdir(parents=True, exist_ok=True)
    script = bench.script(gateway, mode)
    for fmt_name, out in (("raw", raw), ("flamegraph", svg)):
        print(f"  profiling gateway ({fmt_name}, {seconds:g} s)", file=sys.stderr, flush=True)
        load = subprocess.Popen(
            wrk_command(bench.cores, gateway.url, script, 16, seconds + 2),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            time.sleep(0.5)
            done = subprocess.run(
                [
                    *bench.cores.taskset("load"),
                    str(py_spy),
                    "record",
                    "--pid",
                    str(gateway.main_pid),
                    "--duration",
                    str(int(seconds)),
                    "--rate",
                    "250",
                    "--format",
                    fmt_name,
                    "--output",
                    str(out),
                ],
                capture_output=True,
                text=True,
                timeout=seconds + 60,
                check=False,
            )
        finally:
            load.wait(timeout=seconds + 30)
        if done.returncode != 0:
            report.note(f"py-spy failed: {(done.stderr or done.stdout).strip()[:500]}")
            return
    summary = summarize(Path(raw).read_text())
    total = summary.samples
    if not total:
        report.note("py-spy recorded no samples")
        return
    for title, counter in (
        ("function (file), by self time", summary.self_time),
        ("gateway function, inclusive", summary.gateway_inclusive),
        (
            "module, inclusive (a sample counts once per file on its stack)",
            summary.module_inclusive,
        ),
        ("area, inclusive", summary.area_inclusive),
    ):
        # Frames on (nearly) every stack (the entry point, the event loop) say nothing.
        shown = [(name, n) for name, n in counter.most_common() if n < 0.98 * total][:top]
        report.table(
            [title, "% of samples"], [[name, f"{n / total * 100:.1f}"] for name, n in shown]
        )
    report.note(
        f"{total:,} samples of busy time (idle excluded); Python frames only, so time in C "
        "(uvloop, the HTTP parser, socket writes, orjson) is charged to the Python function "
        "that called it. Frames present in 98% or more of the samples are left out."
    )
    report.note(f"flame graph: {svg.relative_to(RESULTS.parent.parent)}")
