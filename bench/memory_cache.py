"""Memory of the gateway over many unique cacheable requests (bench/memory.py, phase 3).

A fresh gateway with the response cache on, configured like the ``gateway-cache-miss`` target
of targets.yaml (a private Redis, temperature 0, a unique marker per request): every request
is a miss whose response is stored, in Redis and in the gateway's in-process first level.
wrk (c=64) runs until nginx has served N requests; RSS is sampled every 250 ms. The first
level is bounded by the bytes of its entries, so RSS may grow until it is full; what must stay
flat is RSS after that, measured here from the half-way point to the end.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

from harness import (
    HOST,
    BenchError,
    Cores,
    Processes,
    Report,
    find_binary,
    fmt,
    http,
    start_redis,
    venv_bin,
    write_wrk_script,
)
from memory import hwm, rss, run_wrk_until
from targets import (
    UNIQUE_MARKER,
    deep_merge,
    gateway_env,
    load_targets,
    request_body,
    request_headers,
    start_gateway,
)
from upstream import Nginx

TARGET = "gateway-cache-miss"


@dataclass(frozen=True, slots=True)
class FirstLevel:
    """The in-process first level of the gateway being run (gateway/cache/service.py)."""

    max_bytes: int | None  # None: that gateway has no such constant (an older --gateway-ref)
    ttl_seconds: float | None


def first_level() -> FirstLevel:
    """Read from the gateway code that runs (the work tree or --gateway-ref), not assumed."""
    done = subprocess.run(
        [
            venv_bin("python"),
            "-c",
            "from gateway.cache.service import L1_MAX_BYTES, L1_TTL_SECONDS;"
            "print(L1_MAX_BYTES, L1_TTL_SECONDS)",
        ],
        env=gateway_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if done.returncode != 0:
        return FirstLevel(None, None)
    size, ttl = done.stdout.split()
    return FirstLevel(int(size), float(ttl))


def redis_key_counts(port: int) -> dict[str, int]:
    """DBSIZE, and the cache entries and single-flight locks counted by SCAN."""
    cli = find_binary("redis-cli")
    if cli is None:
        raise BenchError("redis-cli is needed to count the cache entries")
    base = [cli, "-h", HOST, "-p", str(port)]

    def run(*args: str) -> str:
        return subprocess.run(
            [*base, *args], capture_output=True, text=True, timeout=120, check=True
        ).stdout

    return {
        "dbsize": int(run("dbsize").strip()),
        "entries": len(run("--scan", "--pattern", "*:cache:v1:*").split()),
        "locks": len(run("--scan", "--pattern", "*:cachelock:v1:*").split()),
    }


def cache_lookups(metrics_url: str) -> dict[str, int]:
    """gateway_cache_lookups_total by result, from the gateway's /metrics."""
    reply = http("GET", metrics_url, timeout=30)
    found = re.findall(
        r'^gateway_cache_lookups_total\{result="(\w+)"\} ([\d.e+]+)$',
        reply.body.decode(errors="replace"),
        re.MULTILINE,
    )
    return {result: int(float(value)) for result, value in found}


def at_least(samples: Sequence[tuple[int, float]], served: int) -> float | None:
    """RSS of the first sample taken once ``served`` requests had been served."""
    return next((value for count, value in samples if count >= served), None)


def phase_unique_cache(
    procs: Processes, cores: Cores, report: Report, nginx: Nginx, requests: int
) -> None:
    targets = load_targets()
    target = next((t for t in targets.targets if t.name == TARGET), None)
    if target is None or not target.unique_bodies:
        raise BenchError(f"targets.yaml: the memory test needs the {TARGET} target (unique)")
    _, redis_port = start_redis(procs, cores, "gateway-memory-cache-redis")
    overlay = deep_merge(target.config, {"store": {"redis_url": f"redis://{HOST}:{redis_port}/0"}})
    gateway = start_gateway(
        procs,
        cores,
        "gateway-memory-cache",
        upstream_base_url=nginx.base_url,
        upstream_key="sk-bench-upstream-key",
        overlay=overlay,
    )
    pid = gateway.proc.pid
    url = f"{gateway.base_url}/chat/completions"
    body = request_body(targets.request, target, "json")
    headers = request_headers(target, "json", gateway.token)
    probe = http("POST", url, body=body.replace(UNIQUE_MARKER.encode(), b"probe"), headers=headers)
    if probe.status != 200 or probe.headers.get("x-gateway-cache") != "miss":
        raise BenchError(
            f"memory (unique): the probe got HTTP {probe.status}, x-gateway-cache "
            f"{probe.headers.get('x-gateway-cache')}: {probe.body[:200]!r}"
        )
    level = first_level()
    fill = level.max_bytes // len(probe.body) if level.max_bytes else None
    script = write_wrk_script(procs.workdir / "wrk-memory-cache.lua", body, headers, unique=True)
    fresh = rss(pid)
    warm_done, _, _ = run_wrk_until(cores, nginx, url, script, 10**9, pid, 1.0)  # 1 s warm-up
    warm = rss(pid)
    print(f"  memory: {requests:,} unique cacheable requests at c=64", file=sys.stderr, flush=True)
    samples: list[tuple[int, float]] = []
    done, seconds, peak = run_wrk_until(
        cores, nginx, url, script, requests, pid, max(60.0, requests / 100), samples=samples
    )
    time.sleep(0.5)
    end = rss(pid)
    half = at_least(samples, requests // 2)
    growth = (end - half) / half * 100 if half else None
    keys = redis_key_counts(redis_port)
    lookups = cache_lookups(f"http://{HOST}:{gateway.port}/metrics")
    rows = [
        [
            f"{done:,} unique cacheable (c=64)",
            fmt(fresh, 1),
            fmt(warm, 1),
            fmt(half, 1),
            fmt(end, 1),
            fmt(max(peak, end), 1),
            fmt(hwm(pid), 1),
            "-" if growth is None else f"{growth:+.1f} %",
            f"{keys['entries']:,}",
        ]
    ]
    report.data["memory_unique_cache"] = {
        "requests": done,
        "target_requests": requests,
        "seconds": seconds,
        "rss_fresh_mib": fresh,
        "rss_warm_mib": warm,
        "rss_half_mib": half,
        "rss_end_mib": end,
        "rss_at_first_level_full_mib": at_least(samples, fill) if fill else None,
        "growth_half_to_end_pct": growth,
        "first_level_max_bytes": level.max_bytes,
        "response_bytes": len(probe.body),
        "redis": keys,
        "answered": 1 + warm_done + done,
        "cache_lookups": lookups,
        "samples": samples[:: max(1, len(samples) // 50)],
    }
    procs.stop(gateway.proc)
    report.table(
        [
            "unique requests",
            "fresh",
            "warm",
            "half-way",
            "end",
            "peak",
            "VmHWM",
            "half->end",
            "Redis entries",
        ],
        rows,
    )
    answered = 1 + warm_done + done  # the probe, the warm-up and the measured run
    for line in notes(
        level, len(probe.body), fill, requests, warm, samples, keys, lookups, answered
    ):
        report.note(line)


def notes(
    level: FirstLevel,
    response_bytes: int,
    fill: int | None,
    requests: int,
    warm: float,
    samples: Sequence[tuple[int, float]],
    keys: dict[str, int],
    lookups: dict[str, int],
    answered: int,
) -> list[str]:
    out = [
        f"Unique: a fresh gateway configured like the {TARGET} target (response cache on, a "
        "private Redis, temperature 0, a unique marker per request: every request is a miss "
        "that is stored); wrk c=64 until nginx served the requests; RSS sampled every 250 ms. "
        "half->end = (end - half-way) / half-way; the issue's goal is within 5 %.",
    ]
    if level.max_bytes is None:
        out.append("First level: this gateway has no L1_MAX_BYTES (gateway/cache/service.py).")
    else:
        mib = level.max_bytes / 1024 / 1024
        at_fill = at_least(samples, fill) if fill else None
        out.append(
            f"First level (in-process LRU, L1_MAX_BYTES in gateway/cache/service.py, a "
            f"constant, not a config key): bounded by {mib:g} MiB of response bytes; "
            f"{level.ttl_seconds:g} s TTL, but expired entries leave only when read or pushed "
            f"out by that bound. With {response_bytes:,}-byte responses it holds ~{fill:,} "
            f"entries, so RSS grows until ~{fill:,} requests ("
            + (
                f"RSS then: {fmt(at_fill, 1)} MiB, "
                f"{(at_fill - warm) * 1024 / fill:.1f} KiB per entry above warm"
                if at_fill and fill
                else "not reached in this run"
            )
            + "); "
            "the flatness that matters is after it filled, i.e. half-way -> end."
        )
        if fill is not None and requests // 2 < fill:
            out.append(
                f"WARNING: half-way ({requests // 2:,} requests) is before the first level "
                f"filled (~{fill:,}): half->end includes filling it; use N >= {2 * fill:,}."
            )
    # A JSON response is stored before it is sent, so every answered request left an entry;
    # requests cut off when wrk stopped were misses that were never stored.
    hits, misses = lookups.get("hit", 0), lookups.get("miss", 0)
    distinct = hits == 0 and keys["entries"] >= answered
    out.append(
        f"Redis at the end: DBSIZE {keys['dbsize']:,}, {keys['entries']:,} cache entries, "
        f"{keys['locks']:,} locks left, for {answered:,} answered requests (probe and warm-up "
        f"included); the gateway counted {misses:,} misses (the {misses - keys['entries']:,} "
        f"more were cut off when wrk stopped) and {hits:,} hits: "
        + (
            "one entry per answered request, every key distinct."
            if distinct
            else "CHECK FAILED: fewer entries than answers, or hits: keys were not all distinct."
        )
    )
    return out
