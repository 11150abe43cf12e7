"""Streaming latency: does the gateway delay, hold back or batch stream chunks?

The upstream is the project's mock (``gateway mock-upstream``) emitting one SSE event every
20 ms (request header ``x-mock-chunk-delay-ms: 20``). An aiohttp client timestamps each event
as it arrives, for streams sent directly to the mock and through the gateway at the same time.

Method (we cannot timestamp an event at the upstream, so streams are compared in pairs):

- every round starts, at once, C streams straight to the mock ("A"), C more straight to the
  mock ("B") and C through the gateway ("G"); stream j of A is paired with stream j of G
  (gateway vs direct) and with stream j of B (direct vs direct: the noise floor: the
  upstream's own pacing jitter and the client's, with no gateway involved);
- first event: (t_G0 - start_G) - (t_A0 - start_A): the added time to first byte;
- added delay of chunk i: (t_Gi - t_G0) - (t_Ai - t_A0), i >= 1: how much later chunk i
  arrives through the gateway relative to its own stream's first chunk. A gateway that
  buffers shows it here, whatever its first-byte overhead;
- "batched": events that arrived in the same socket read as the previous event.

Run alone: ``.venv/bin/python bench/stream_latency.py [--quick]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
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
    percentile,
    signed,
    terminate_on_sigterm,
)
from targets import start_gateway, start_mock_upstream

CHUNK_DELAY_MS = 20
COMPLETION_TOKENS = 12  # role + 12 content + finish + usage events, then [DONE]


@dataclass
class Timing:
    start: float
    events: list[float]
    batched: int


async def timed_stream(
    session: aiohttp.ClientSession, url: str, headers: dict[str, str], body: bytes
) -> Timing:
    start = time.perf_counter()
    events: list[float] = []
    batched = 0
    buffer = b""
    async with session.post(url, data=body, headers=headers) as response:
        if response.status != 200:
            raise BenchError(f"{url}: HTTP {response.status}: {await response.text()}")
        async for chunk in response.content.iter_any():
            now = time.perf_counter()
            buffer += chunk
            in_this_read = 0
            while (end := buffer.find(b"\n\n")) >= 0:
                event, buffer = buffer[:end], buffer[end + 2 :]
                if event.strip():
                    events.append(now)
                    in_this_read += 1
            batched += max(0, in_this_read - 1)
    return Timing(start, events, batched)


@dataclass
class Comparison:
    first: list[float]
    relative: list[float]
    count_mismatch: int


def compare(pairs: Sequence[tuple[Timing, Timing]]) -> Comparison:
    """Milliseconds: positive = the second stream of the pair is later."""
    first: list[float] = []
    relative: list[float] = []
    mismatch = 0
    for ref, other in pairs:
        if len(ref.events) != len(other.events) or not ref.events:
            mismatch += 1
            continue
        first.append(((other.events[0] - other.start) - (ref.events[0] - ref.start)) * 1000)
        for i in range(1, len(ref.events)):
            relative.append(
                ((other.events[i] - other.events[0]) - (ref.events[i] - ref.events[0])) * 1000
            )
    return Comparison(first, relative, mismatch)


async def measure(
    direct_url: str,
    gateway_url: str,
    mock_key: str,
    token: str,
    concurrency: int,
    rounds: int,
) -> tuple[list[tuple[Timing, Timing]], list[tuple[Timing, Timing]], list[Timing]]:
    body = json.dumps(
        {
            "model": "gpt-4o-mini",
            "stream": True,
            # Asked for by the client, so the gateway relays every event unchanged.
            "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": "Stream something, please."}],
        }
    ).encode()
    common = {
        "Content-Type": "application/json",
        "x-mock-chunk-delay-ms": str(CHUNK_DELAY_MS),
        "x-mock-completion-tokens": str(COMPLETION_TOKENS),
    }
    direct_headers = {**common, "Authorization": f"Bearer {mock_key}"}
    gateway_headers = {**common, "Authorization": f"Bearer {token}"}
    gateway_vs_direct: list[tuple[Timing, Timing]] = []
    direct_vs_direct: list[tuple[Timing, Timing]] = []
    gateway_timings: list[Timing] = []
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        # One unmeasured round opens the connections.
        await asyncio.gather(
            *(
                timed_stream(session, u, h, body)
                for u, h in [(direct_url, direct_headers), (gateway_url, gateway_headers)]
                * concurrency
            )
        )
        for _ in range(rounds):
            a = [
                timed_stream(session, direct_url, direct_headers, body) for _ in range(concurrency)
            ]
            b = [
                timed_stream(session, direct_url, direct_headers, body) for _ in range(concurrency)
            ]
            g = [
                timed_stream(session, gateway_url, gateway_headers, body)
                for _ in range(concurrency)
            ]
            results = await asyncio.gather(*a, *b, *g)
            ra, rb, rg = (
                results[:concurrency],
                results[concurrency : 2 * concurrency],
                results[2 * concurrency :],
            )
            gateway_vs_direct += list(zip(ra, rg, strict=True))
            direct_vs_direct += list(zip(ra, rb, strict=True))
            gateway_timings += rg
    return gateway_vs_direct, direct_vs_direct, gateway_timings


def run_stream_latency(procs: Processes, cores: Cores, report: Report, *, quick: bool) -> None:
    mock_key = "sk-mock-" + secrets.token_hex(8)
    mock, mock_port = start_mock_upstream(procs, cores, mock_key)
    gateway = start_gateway(
        procs,
        cores,
        "gateway-stream-latency",
        upstream_base_url=f"http://{HOST}:{mock_port}/v1",
        upstream_key=mock_key,
    )
    direct_url = f"http://{HOST}:{mock_port}/v1/chat/completions"
    gateway_url = f"{gateway.base_url}/chat/completions"
    plan = [(1, 10), (16, 3)] if quick else [(1, 30), (16, 8)]
    report.heading("Streaming: per-chunk added delay (gateway vs direct)")
    rows: list[list[str]] = []
    data: list[dict[str, object]] = []
    for concurrency, rounds in plan:
        print(f"  stream latency c={concurrency}: {rounds} rounds", file=sys.stderr, flush=True)
        gvd, dvd, gateway_timings = uvloop.run(
            measure(direct_url, gateway_url, mock_key, gateway.token, concurrency, rounds)
        )
        for label, pairs in (("gateway vs direct", gvd), ("direct vs direct (noise)", dvd)):
            cmp = compare(pairs)
            rows.append(
                [
                    label,
                    str(concurrency),
                    str(len(pairs)),
                    signed(percentile(cmp.first, 50)),
                    signed(percentile(cmp.first, 99)),
                    signed(percentile(cmp.relative, 50)),
                    signed(percentile(cmp.relative, 99)),
                    signed(max(cmp.relative) if cmp.relative else None),
                    str(sum(t.batched for _, t in pairs)),
                    str(cmp.count_mismatch),
                ]
            )
            data.append(
                {
                    "label": label,
                    "concurrency": concurrency,
                    "streams": len(pairs),
                    "first_ms": cmp.first,
                    "relative_ms_p50": percentile(cmp.relative, 50),
                    "relative_ms_p99": percentile(cmp.relative, 99),
                }
            )
        gaps = [
            (t.events[i] - t.events[i - 1]) * 1000
            for t in gateway_timings
            for i in range(1, len(t.events))
        ]
        if gaps:
            report.note(
                f"c={concurrency}: through the gateway, the median gap between events is "
                f"{fmt(statistics.median(gaps), 2)} ms (upstream pace {CHUNK_DELAY_MS} ms); "
                f"{len(gateway_timings[0].events)} events per stream"
            )
    report.table(
        [
            "pair",
            "conc",
            "streams",
            "+first event p50 ms",
            "p99 ms",
            "+chunk i p50 ms",
            "p99 ms",
            "max ms",
            "batched events",
            "count mismatch",
        ],
        rows,
    )
    for line in (
        "Each round sends C streams directly to the mock (A), C more directly (B) and C through "
        "the gateway (G), all at once. Chunks cannot be timestamped at the upstream, so streams "
        "are paired: +first event = G's (or B's) time to first event minus A's; +chunk i = "
        "(t_i - t_0) of G minus (t_i - t_0) of A, over every chunk i >= 1, i.e. the delay the "
        "gateway adds to a chunk beyond its first-byte overhead (negative: the first chunk was "
        "held longer than the later ones).",
        "'direct vs direct' is the same computation between two direct streams: the noise "
        "floor (the mock's asyncio.sleep pacing and the client's own jitter). Gateway numbers "
        "at or near it mean no added delay that this method can see.",
        "batched events: events that reached the client in the same read as the previous one "
        "(0 = every chunk was relayed on its own).",
    ):
        report.note(line)
    report.data["stream_latency"] = data
    procs.stop(gateway.proc)
    procs.stop(mock)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    cores = Cores.detect()
    workdir = Path(tempfile.mkdtemp(prefix="gateway-bench-stream-"))
    procs = Processes(workdir)
    try:
        with terminate_on_sigterm():
            if cores.pinned:
                os.sched_setaffinity(0, set(cores.load))
            run_stream_latency(procs, cores, Report(), quick=args.quick)
    except BenchError as exc:
        print(f"failed: {exc}", file=sys.stderr)
        return 2
    finally:
        procs.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
