"""Memory of the gateway: many open streams at once, and growth over many requests (repeated,
and unique cacheable ones).

1. Open streams: N (default 1,000) concurrent streams through a gateway to the project's mock
   upstream, which paces them slowly (``x-mock-chunk-delay-ms``) so they all stay open
   together. The gateway's RSS is sampled every 100 ms; reported: before, the peak while
   streams were open (and how many were open then), and after they all finished.
2. Many requests: a fresh gateway in front of the nginx upstream; wrk (c=64, JSON) until
   nginx has served M requests (default 100,000); RSS fresh, after a 1 s warm-up, the peak,
   and after the M requests: growth after warm-up is what a leak would look like.
3. Unique cacheable requests (bench/memory_cache.py): a fresh gateway with the response cache
   on and a private Redis; wrk (c=64) with a distinct deterministic request every time until U
   requests (default 200,000) were answered; RSS fresh, warm, half-way and at the end.

Run alone: ``.venv/bin/python bench/memory.py [--streams N] [--requests M] [--unique U]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import uvloop
from harness import (
    HOST,
    BenchError,
    Cores,
    Processes,
    Report,
    fmt,
    parse_wrk,
    status_kib,
    terminate_on_sigterm,
    write_wrk_script,
    wrk_command,
)
from targets import start_gateway, start_mock_upstream
from upstream import Nginx, ensure_tools, start_nginx

STREAM_CHUNK_DELAY_MS = 1000
STREAM_TOKENS = 8  # about 11 events: a stream stays open for ~10 s


def rss(pid: int) -> float:
    return (status_kib(pid, "VmRSS") or 0) / 1024


def hwm(pid: int) -> float:
    return (status_kib(pid, "VmHWM") or 0) / 1024


def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


@dataclass
class StreamState:
    open: int = 0
    finished: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)


@dataclass
class StreamsResult:
    peak_rss: float  # MiB
    max_open: int  # most streams open at once
    rss_at_max_open: float  # MiB, first sample with max_open streams open
    seconds_to_open: float  # until every stream had its first event (nan if never)


async def hold_streams(url: str, token: str, streams: int, pid: int) -> StreamsResult:
    """Open the streams at once and sample the gateway's RSS every 100 ms until they end."""
    body = json.dumps(
        {
            "model": "gpt-4o-mini",
            "stream": True,
            "messages": [{"role": "user", "content": "Keep this stream open."}],
        }
    ).encode()
    headers = {
        "Content-Type": "application/json",
        "Authorization": f"Bearer {token}",
        "x-mock-chunk-delay-ms": str(STREAM_CHUNK_DELAY_MS),
        "x-mock-completion-tokens": str(STREAM_TOKENS),
    }
    state = StreamState()
    all_open = asyncio.Event()
    started = time.monotonic()
    opened_at: list[float] = []

    async def one(session: aiohttp.ClientSession) -> None:
        try:
            async with session.post(url, data=body, headers=headers) as response:
                if response.status != 200:
                    raise BenchError(f"HTTP {response.status}")
                first = True
                async for _ in response.content.iter_any():
                    if first:
                        first = False
                        state.open += 1
                        if state.open + state.finished >= streams:
                            opened_at.append(time.monotonic() - started)
                            all_open.set()
                if not first:
                    state.open -= 1
                state.finished += 1
        except (aiohttp.ClientError, TimeoutError, BenchError) as exc:
            state.failed += 1
            state.finished += 1
            if len(state.errors) < 5:
                state.errors.append(f"{type(exc).__name__}: {exc}")

    samples: list[tuple[int, float]] = []

    async def sample() -> None:
        while True:
            samples.append((state.open, rss(pid)))
            await asyncio.sleep(0.1)

    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        sampler = asyncio.create_task(sample())
        tasks = [asyncio.create_task(one(session)) for _ in range(streams)]
        await asyncio.gather(*tasks)
        sampler.cancel()
    if state.failed:
        raise BenchError(f"{state.failed} of {streams} streams failed: {state.errors}")
    max_open = max(count for count, _ in samples)
    return StreamsResult(
        peak_rss=max(value for _, value in samples),
        max_open=max_open,
        rss_at_max_open=next(value for count, value in samples if count == max_open),
        seconds_to_open=opened_at[0] if opened_at else float("nan"),
    )


def phase_streams(procs: Processes, cores: Cores, report: Report, streams: int) -> list[str]:
    mock_key = "sk-mock-" + secrets.token_hex(8)
    mock, mock_port = start_mock_upstream(procs, cores, mock_key)
    gateway = start_gateway(
        procs,
        cores,
        "gateway-memory-streams",
        upstream_base_url=f"http://{HOST}:{mock_port}/v1",
        upstream_key=mock_key,
        overlay={"upstream": {"max_connections": max(1000, streams)}},
    )
    pid = gateway.proc.pid
    print(f"  memory: {streams} concurrent streams", file=sys.stderr, flush=True)
    before = rss(pid)
    result = uvloop.run(
        hold_streams(f"{gateway.base_url}/chat/completions", gateway.token, streams, pid)
    )
    time.sleep(1.0)
    after = rss(pid)
    row = [
        f"{streams:,} concurrent streams",
        fmt(before, 1),
        f"{fmt(result.peak_rss, 1)} ({result.max_open:,} open at most)",
        fmt(hwm(pid), 1),
        fmt(after, 1),
        fmt((result.rss_at_max_open - before) * 1024 / max(1, result.max_open), 1) + " KiB/stream",
    ]
    report.data["memory_streams"] = {
        "streams": streams,
        "rss_before_mib": before,
        "rss_peak_mib": result.peak_rss,
        "max_open": result.max_open,
        "rss_at_max_open_mib": result.rss_at_max_open,
        "rss_after_mib": after,
        "seconds_to_open_all": result.seconds_to_open,
    }
    procs.stop(gateway.proc)
    procs.stop(mock)
    return row


def run_wrk_until(
    cores: Cores,
    nginx: Nginx,
    url: str,
    script: Path,
    requests: int,
    pid: int,
    cap_seconds: float,
    *,
    samples: list[tuple[int, float]] | None = None,
) -> tuple[int, float, float]:
    """wrk (c=64) until nginx has served ``requests``; returns (done, seconds, peak RSS MiB).

    ``samples`` receives (requests nginx served so far, RSS MiB) every 250 ms.
    """
    start_count = nginx.requests_counter()
    command = wrk_command(cores, url, script, 64, cap_seconds)
    started = time.monotonic()
    wrk = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak = 0.0
    try:
        while wrk.poll() is None:
            now = rss(pid)
            peak = max(peak, now)
            served = nginx.requests_counter() - start_count
            if samples is not None:
                samples.append((served, now))
            if served >= requests:
                wrk.send_signal(signal.SIGINT)  # wrk stops and prints its summary
                break
            time.sleep(0.25)
        output, _ = wrk.communicate(timeout=30)
    finally:
        if wrk.poll() is None:
            wrk.kill()
            wrk.wait()
    result = parse_wrk(output)
    if result.errors:
        raise BenchError(f"memory run: wrk saw {result.errors} errors ({result.error_detail})")
    return result.requests, time.monotonic() - started, peak


def phase_requests(
    procs: Processes, cores: Cores, report: Report, nginx: Nginx, requests: int
) -> list[str]:
    gateway = start_gateway(
        procs,
        cores,
        "gateway-memory-requests",
        upstream_base_url=nginx.base_url,
        upstream_key="sk-bench-upstream-key",
    )
    pid = gateway.proc.pid
    url = f"{gateway.base_url}/chat/completions"
    script = write_wrk_script(
        procs.workdir / "wrk-memory.lua",
        json.dumps(
            {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hello."}]}
        ).encode(),
        {"Content-Type": "application/json", "Authorization": f"Bearer {gateway.token}"},
    )
    fresh = rss(pid)
    run_wrk_until(cores, nginx, url, script, 10**9, pid, 1.0)  # warm-up: 1 s
    warm = rss(pid)
    print(f"  memory: {requests:,} JSON requests at c=64", file=sys.stderr, flush=True)
    done, seconds, peak = run_wrk_until(
        cores, nginx, url, script, requests, pid, max(60.0, requests / 200)
    )
    time.sleep(0.5)
    after = rss(pid)
    row = [
        f"{done:,} JSON requests (c=64)",
        f"{fmt(fresh, 1)} fresh / {fmt(warm, 1)} warm",
        fmt(max(peak, after), 1),
        fmt(hwm(pid), 1),
        fmt(after, 1),
        f"{(after - warm) * 1024 / max(1, done) * 10_000:+.1f} KiB/10k req",
    ]
    report.data["memory_requests"] = {
        "requests": done,
        "seconds": seconds,
        "rss_fresh_mib": fresh,
        "rss_warm_mib": warm,
        "rss_after_mib": after,
    }
    procs.stop(gateway.proc)
    return row


def run_memory(
    procs: Processes,
    cores: Cores,
    report: Report,
    *,
    nginx: Nginx,
    streams: int,
    requests: int,
    unique: int = 0,
) -> None:
    raise_fd_limit()
    report.heading("Gateway memory (RSS, MiB)")
    rows = []
    if streams > 0:
        rows.append(phase_streams(procs, cores, report, streams))
    if requests > 0:
        rows.append(phase_requests(procs, cores, report, nginx, requests))
    if rows:
        memory_table(report, rows)
    if unique > 0:
        from memory_cache import phase_unique_cache  # it imports this module

        phase_unique_cache(procs, cores, report, nginx, unique)


def memory_table(report: Report, rows: list[list[str]]) -> None:
    report.table(["test", "before", "peak (sampled)", "VmHWM", "after", "growth"], rows)
    for line in (
        f"Streams: upstream = the project's mock pacing events {STREAM_CHUNK_DELAY_MS} ms "
        f"apart ({STREAM_TOKENS} tokens: ~{STREAM_TOKENS + 3} events), so streams overlap; "
        "growth = (RSS when the most streams were open - before) / that number of streams. "
        "After: RSS once they all ended (CPython keeps freed memory for reuse).",
        "Requests: growth = (after - warm) per 10k requests; near 0 means no leak on this path. "
        "RSS from /proc/<pid>/status (VmRSS; VmHWM = the kernel's peak).",
    ):
        report.note(line)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--streams", type=int, default=1000, help="concurrent streams of phase 1 (0 skips)"
    )
    parser.add_argument(
        "--requests", type=int, default=100_000, help="repeated JSON requests of phase 2 (0 skips)"
    )
    parser.add_argument(
        "--unique",
        type=int,
        default=200_000,
        help="unique cacheable requests of phase 3 (default 200000; 0 skips)",
    )
    args = parser.parse_args(argv)
    cores = Cores.detect()
    ensure_tools(with_redis=args.unique > 0)
    workdir = Path(tempfile.mkdtemp(prefix="gateway-bench-memory-"))
    procs = Processes(workdir)
    try:
        with terminate_on_sigterm():
            if cores.pinned:
                os.sched_setaffinity(0, set(cores.load))
            nginx = start_nginx(procs, cores)
            run_memory(
                procs,
                cores,
                Report(),
                nginx=nginx,
                streams=args.streams,
                requests=args.requests,
                unique=args.unique,
            )
    except BenchError as exc:
        print(f"failed: {exc}", file=sys.stderr)
        return 2
    finally:
        procs.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
