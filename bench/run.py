"""The benchmark's entry point: ``.venv/bin/python bench/run.py [--quick]`` (or ``make bench``).

Sets everything up (nginx and wrk from Debian if missing), measures every target side by side
in one run, prints plain-text tables and writes them to bench/results/latest.md (+ .json).
Every process it starts is stopped at the end, on errors and Ctrl-C too.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from harness import (
    RESULTS,
    BenchError,
    Cores,
    Processes,
    Report,
    WrkResult,
    cores_seconds,
    cpu_seconds,
    fmt,
    redis_calls_delta,
    redis_commandstats,
    rss_mib,
    run_wrk,
    signed,
    status_kib,
    terminate_on_sigterm,
    write_wrk_script,
)
from peers import PeerUnavailable
from targets import (
    ConfigRejected,
    Running,
    Target,
    load_targets,
    request_body,
    select_targets,
    start_target,
    use_gateway_ref,
    verify_target,
)
from upstream import Nginx, ensure_tools, start_nginx

UPSTREAM_KEY = "sk-bench-upstream-key"


@dataclass
class Settings:
    quick: bool
    seconds: float
    warmup: float
    connections: list[int]
    modes: list[str]
    targets: str | None
    peers: bool
    passes: int
    stream_latency: bool
    memory: bool
    memory_requests: int
    memory_unique: int
    memory_streams: int
    profile: bool
    keep_tmp: bool
    gateway_ref: str | None


def _env_float(name: str, default: float) -> float:
    value = os.environ.get(name)
    return float(value) if value else default


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value else default


def parse_args(argv: Sequence[str] | None = None) -> Settings:
    parser = argparse.ArgumentParser(
        description="Gateway benchmark: nginx upstream, wrk, side-by-side ratios.",
        epilog="Environment: BENCH_SECONDS, BENCH_WARMUP, BENCH_CONNECTIONS, BENCH_MODES, "
        "BENCH_TARGETS, BENCH_PEERS=1, BENCH_PASSES, BENCH_MEMORY_REQUESTS, BENCH_MEMORY_UNIQUE, "
        "BENCH_STREAMS, BENCH_GATEWAY_REF (flags win).",
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 s per point, c=16")
    parser.add_argument("--seconds", type=float, help="seconds per point (default 5, quick 2)")
    parser.add_argument("--warmup", type=float, help="warm-up seconds per target (default 1)")
    parser.add_argument("--connections", help="comma list (default 1,16,64; quick 16)")
    parser.add_argument("--modes", help="comma list of json,sse (default both)")
    parser.add_argument("--targets", help="comma list of targets.yaml names, or all")
    parser.add_argument(
        "--peers",
        action="store_true",
        help="add the peer gateways (TensorZero, LiteLLM, Portkey; installed on first use)",
    )
    parser.add_argument("--passes", type=int, help="repeat the matrix; median RPS pass is kept")
    parser.add_argument("--no-stream-latency", action="store_true")
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--memory-requests", type=int, help="default 100000 (quick 20000)")
    parser.add_argument(
        "--memory-unique",
        type=int,
        help="unique cacheable requests of the memory test (default 200000, quick 20000)",
    )
    parser.add_argument("--streams", type=int, help="concurrent streams of the memory test (1000)")
    parser.add_argument(
        "--profile", action="store_true", help="py-spy the gateway on JSON c=16 (needs py-spy)"
    )
    parser.add_argument("--keep-tmp", action="store_true", help="keep the temp dir (logs)")
    parser.add_argument(
        "--gateway-ref",
        help="benchmark the gateway code of this git ref instead of the work tree",
    )
    args = parser.parse_args(argv)
    quick = bool(args.quick)
    connections = (
        args.connections or os.environ.get("BENCH_CONNECTIONS") or ("16" if quick else "1,16,64")
    )
    modes = args.modes or os.environ.get("BENCH_MODES") or "json,sse"
    settings = Settings(
        quick=quick,
        seconds=args.seconds or _env_float("BENCH_SECONDS", 2.0 if quick else 5.0),
        warmup=args.warmup if args.warmup is not None else _env_float("BENCH_WARMUP", 1.0),
        connections=[int(c) for c in connections.split(",") if c.strip()],
        modes=[m.strip() for m in modes.split(",") if m.strip()],
        targets=args.targets or os.environ.get("BENCH_TARGETS") or None,
        peers=bool(args.peers) or os.environ.get("BENCH_PEERS", "") not in ("", "0"),
        passes=args.passes or _env_int("BENCH_PASSES", 1),
        stream_latency=not args.no_stream_latency,
        memory=not args.no_memory,
        memory_requests=args.memory_requests
        or _env_int("BENCH_MEMORY_REQUESTS", 20_000 if quick else 100_000),
        memory_unique=args.memory_unique
        if args.memory_unique is not None
        else _env_int("BENCH_MEMORY_UNIQUE", 20_000 if quick else 200_000),
        memory_streams=args.streams or _env_int("BENCH_STREAMS", 1000),
        profile=bool(args.profile),
        keep_tmp=bool(args.keep_tmp),
        gateway_ref=args.gateway_ref or os.environ.get("BENCH_GATEWAY_REF") or None,
    )
    if set(settings.modes) - {"json", "sse"}:
        parser.error("--modes takes json and/or sse")
    return settings


# ---------------------------------------------------------------------------------------------
# One measured point


@dataclass
class Point:
    target: str
    mode: str
    connections: int
    wrk: WrkResult
    wall: float
    sut_cpu: float
    load_cpu: float
    upstream_requests: int
    sut_core_busy: float = 0.0
    sut_core_idle: float = 0.0
    redis_calls: dict[str, int] | None = None

    @property
    def other_on_sut_core(self) -> float:
        """CPU seconds that processes other than the target used on its core."""
        return max(0.0, self.sut_core_busy - self.sut_cpu)

    @property
    def rps(self) -> float:
        return self.wrk.rps

    @property
    def cpu_per_request_us(self) -> float | None:
        return self.sut_cpu / self.wrk.requests * 1e6 if self.wrk.requests else None

    @property
    def upstream_per_request(self) -> float | None:
        return self.upstream_requests / self.wrk.requests if self.wrk.requests else None

    @property
    def redis_per_request(self) -> float | None:
        if self.redis_calls is None or not self.wrk.requests:
            return None
        return sum(self.redis_calls.values()) / self.wrk.requests


def redis_calls_of(ports: Sequence[int]) -> dict[str, int]:
    """Calls per command, summed over every server of a target (the primaries of a cluster)."""
    total: Counter[str] = Counter()
    for port in ports:
        total.update(redis_commandstats(port))
    return dict(total)


@dataclass
class Bench:
    settings: Settings
    cores: Cores
    procs: Processes
    nginx: Nginx
    base_request: dict[str, Any]
    gateway_code: str = "work tree"
    running: list[Running] = field(default_factory=list)
    scripts: dict[tuple[str, str], Path] = field(default_factory=dict)

    def script(self, running: Running, mode: str) -> Path:
        key = (running.name, mode)
        if key not in self.scripts:
            self.scripts[key] = write_wrk_script(
                self.procs.workdir / f"wrk-{running.name}-{mode}.lua".replace("+", "_"),
                request_body(self.base_request, running.target, mode),
                running.headers(mode),
                unique=running.target.unique_bodies,
            )
        return self.scripts[key]

    def measure(self, running: Running, mode: str, connections: int, seconds: float) -> Point:
        sut_pids = running.pids()
        nginx_pids = self.nginx.proc.pids()
        redis_pids = running.redis_pids() if running.redis_pids else []
        load_pids = list(dict.fromkeys([*nginx_pids, *redis_pids]))
        served_before = self.nginx.requests_counter()
        redis_before = redis_calls_of(running.redis_ports) if running.redis_ports else None
        sut_before, load_before = cpu_seconds(sut_pids), cpu_seconds(load_pids)
        busy_before, idle_before = cores_seconds(self.cores.sut)
        started = time.monotonic()
        result, wrk_cpu = run_wrk(
            self.cores, running.url, self.script(running, mode), connections, seconds
        )
        wall = time.monotonic() - started
        sut_cpu = cpu_seconds(sut_pids) - sut_before
        load_cpu = cpu_seconds(load_pids) - load_before + wrk_cpu
        busy_after, idle_after = cores_seconds(self.cores.sut)
        core_busy, core_idle = busy_after - busy_before, idle_after - idle_before
        upstream = self.nginx.requests_counter() - served_before - 1  # the 2nd read counts itself
        redis_calls = None
        if redis_before is not None:
            redis_calls = redis_calls_delta(redis_before, redis_calls_of(running.redis_ports))
        if running.target.kind == "nginx":  # nginx is on the load core: nothing to compare
            core_busy = sut_cpu
        return Point(
            running.name,
            mode,
            connections,
            result,
            wall,
            sut_cpu,
            load_cpu,
            upstream,
            core_busy,
            core_idle,
            redis_calls,
        )


NOISE_LIMIT = 0.05  # share of the target's core that other processes may take
NOISE_RETRIES = 2


def noise(point: Point) -> float:
    return point.other_on_sut_core / point.wall if point.wall else 0.0


def run_matrix(bench: Bench, report: Report) -> list[Point]:
    settings = bench.settings
    for running in bench.running:
        if settings.warmup > 0:
            print(f"  warm-up {running.name} ({settings.warmup:g} s)", file=sys.stderr)
            for mode in settings.modes:
                if mode in running.modes:
                    bench.measure(running, mode, 16, settings.warmup / len(settings.modes))
    chosen: list[Point] = []
    runs = sum(1 for r in bench.running for m in settings.modes if m in r.modes)
    total = runs * len(settings.connections) * settings.passes
    done = 0
    for mode in settings.modes:
        for connections in settings.connections:
            for running in bench.running:
                if mode not in running.modes:
                    continue
                passes: list[Point] = []
                for _ in range(settings.passes):
                    done += 1
                    point = bench.measure(running, mode, connections, settings.seconds)
                    for _retry in range(NOISE_RETRIES):
                        if noise(point) <= NOISE_LIMIT:
                            break
                        print(
                            f"  {running.name} {mode} c={connections}: other processes took "
                            f"{noise(point) * 100:.0f}% of the target's core; measuring again",
                            file=sys.stderr,
                        )
                        again = bench.measure(running, mode, connections, settings.seconds)
                        point = min(point, again, key=noise)
                    print(
                        f"  [{done}/{total}] {running.name:<20} {mode:<4} c={connections:<3} "
                        f"{point.rps:>9,.0f} req/s  p50 {point.wrk.p50_ms:.3f} ms",
                        file=sys.stderr,
                        flush=True,
                    )
                    passes.append(point)
                passes.sort(key=lambda p: p.rps)
                chosen.append(passes[len(passes) // 2])
    return chosen


def matrix_table(bench: Bench, points: list[Point], report: Report) -> None:
    index = {(p.target, p.mode, p.connections): p for p in points}
    direct = next((r.name for r in bench.running if r.target.kind == "nginx"), None)
    bare = next((r.name for r in bench.running if r.target.kind == "bare"), None)
    with_redis = any(p.redis_calls is not None for p in points)
    headers = [
        "target",
        "mode",
        "conns",
        "RPS",
        "p50 ms",
        "p99 ms",
        "+p50 vs direct ms",
        "CPU/req us",
        "x bare RPS",
        "SUT core %",
        "load core %",
        "SUT core idle %",
        "upstream/req",
    ]
    if with_redis:
        headers.append("redis cmd/req")
    headers.append("errors")
    rows: list[list[str]] = []
    for mode in bench.settings.modes:
        for connections in bench.settings.connections:
            ref = index.get((direct, mode, connections)) if direct else None
            floor = index.get((bare, mode, connections)) if bare else None
            for running in bench.running:
                p = index.get((running.name, mode, connections))
                if p is None:
                    continue
                is_direct = running.name == direct
                row = [
                    p.target,
                    p.mode,
                    str(p.connections),
                    fmt(p.rps),
                    fmt(p.wrk.p50_ms, 3),
                    fmt(p.wrk.p99_ms, 3),
                    "-" if is_direct or ref is None else signed(p.wrk.p50_ms - ref.wrk.p50_ms, 3),
                    fmt(p.cpu_per_request_us, 1),
                    "-" if floor is None or not floor.rps else f"{p.rps / floor.rps:.2f}",
                    fmt(p.sut_cpu / p.wall * 100 if p.wall else None),
                    fmt(p.load_cpu / p.wall / len(bench.cores.load) * 100 if p.wall else None),
                    "-"
                    if is_direct or not bench.cores.pinned
                    else fmt(p.sut_core_idle / p.wall * 100),
                    "-" if is_direct else fmt(p.upstream_per_request, 2),
                ]
                if with_redis:
                    row.append(fmt(p.redis_per_request, 2))
                row.append(str(p.wrk.errors))
                rows.append(row)
    report.table(headers, rows, left=2)


def check_points(bench: Bench, points: list[Point], report: Report) -> list[str]:
    problems: list[str] = []
    targets = {r.name: r.target for r in bench.running}
    for p in points:
        if p.wrk.errors:
            problems.append(
                f"{p.target} {p.mode} c={p.connections}: {p.wrk.errors} errors "
                f"({p.wrk.error_detail})"
            )
        expected = targets[p.target].expect_upstream_per_request
        actual = p.upstream_per_request
        # Requests still in flight when wrk stops reached the upstream but are not in wrk's
        # count: up to one per connection, which matters for a slow target.
        slack = 0.05 + (p.connections / p.wrk.requests if p.wrk.requests else 0.0)
        if expected is not None and actual is not None and abs(actual - expected) > slack:
            problems.append(
                f"{p.target} {p.mode} c={p.connections}: {actual:.2f} upstream requests per "
                f"request, expected {expected:g}"
            )
        if bench.cores.pinned and noise(p) > NOISE_LIMIT:
            report.note(
                f"NOISE: during {p.target} {p.mode} c={p.connections}, other processes took "
                f"{noise(p) * 100:.0f}% of the target's core (after {NOISE_RETRIES} retries)"
            )
    return problems


def redis_table(points: list[Point], report: Report) -> None:
    """Redis commands per request, by command, over all the points of each Redis target."""
    calls: dict[str, Counter[str]] = {}
    requests: Counter[str] = Counter()
    for p in points:
        if p.redis_calls is not None:
            calls.setdefault(p.target, Counter()).update(p.redis_calls)
            requests[p.target] += p.wrk.requests
    if not calls:
        return
    report.heading("Redis commands per request")
    rows = []
    for target, counter in calls.items():
        n = max(1, requests[target])
        detail = ", ".join(f"{cmd} {count / n:.2f}" for cmd, count in counter.most_common())
        rows.append([target, f"{sum(counter.values()) / n:.2f}", detail or "-"])
    report.table(["target", "per request", "by command (INFO commandstats deltas)"], rows)


def rss_table(bench: Bench, report: Report) -> None:
    rows = []
    for running in bench.running:
        pids = running.pids()
        peak = [status_kib(pid, "VmHWM") for pid in pids]
        known = [v for v in peak if v is not None]
        rows.append(
            [
                running.name,
                str(len(pids)),
                fmt(rss_mib(pids), 1),
                fmt(sum(known) / 1024 if known else None, 1),
            ]
        )
    report.table(["target", "processes", "RSS after runs MiB", "peak RSS (VmHWM) MiB"], rows)


def environment_lines(bench: Bench) -> list[str]:
    version = _first_line
    return [
        f"date: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}; host: {platform.node()}, "
        f"{os.cpu_count()} CPUs, Python {platform.python_version()}",
        f"gateway code: {bench.gateway_code}",
        f"pinning: {bench.cores.describe()}",
        f"upstream: {version(['nginx', '-v'])} (1 worker), static bodies; load: "
        f"{version(['wrk', '-v'])}",
        f"points: {bench.settings.seconds:g} s each after a {bench.settings.warmup:g} s "
        f"warm-up per target, closed loop over keep-alive connections, "
        f"{bench.settings.passes} pass(es)",
    ]


# ---------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    settings = parse_args(argv)
    catalogue = load_targets()
    selected = select_targets(catalogue.targets, settings.targets, peers=settings.peers)
    report = Report()
    cores = Cores.detect()
    started = time.monotonic()
    ensure_tools(
        with_redis=any(t.redis or t.redis_cluster for t in selected)
        or (settings.memory and settings.memory_unique > 0)
    )
    workdir = Path(tempfile.mkdtemp(prefix="gateway-bench-"))
    procs = Processes(workdir)
    exit_code = 0
    try:
        with terminate_on_sigterm():
            if cores.pinned:
                os.sched_setaffinity(0, set(cores.load))  # this script stays off the SUT core
            gateway_code = describe_work_tree()
            if settings.gateway_ref:
                commit = use_gateway_ref(settings.gateway_ref, workdir)
                gateway_code = f"git ref {settings.gateway_ref} ({commit})"
            nginx = start_nginx(procs, cores)
            bench = Bench(settings, cores, procs, nginx, catalogue.request, gateway_code)
            skipped = start_all(bench, selected)
            title = "Gateway benchmark" + (" (quick)" if settings.quick else "")
            report.markdown.append(f"# {title}\n")
            print(title)
            for line in environment_lines(bench):
                report.note(line)
            report.heading("Throughput and latency, side by side")
            points = run_matrix(bench, report)
            matrix_table(bench, points, report)
            explain_matrix(report)
            for name, why in skipped:
                report.note(f"skipped {name}: {why}")
            problems = check_points(bench, points, report)
            for problem in problems:
                report.note(f"CHECK FAILED: {problem}")
            exit_code = 1 if problems else 0
            redis_table(points, report)
            report.heading("Memory of each target after the runs")
            rss_table(bench, report)
            report.data["points"] = [point_data(p) for p in points]
            if settings.profile:
                from hotpath import profile_gateway

                profile_gateway(bench, report)
            for running in list(bench.running):
                if running.target.kind != "nginx":
                    stop_running(bench, running)
            if settings.stream_latency:
                from stream_latency import run_stream_latency

                run_stream_latency(procs, cores, report, quick=settings.quick)
            if settings.memory:
                from memory import run_memory

                run_memory(
                    procs,
                    cores,
                    report,
                    nginx=nginx,
                    streams=settings.memory_streams,
                    requests=settings.memory_requests,
                    unique=settings.memory_unique,
                )
            elapsed = time.monotonic() - started
            report.heading("Run")
            report.note(f"whole run: {elapsed:.0f} s")
            write_results(report, settings)
    except BenchError as exc:
        print(f"\nbench failed: {exc}", file=sys.stderr)
        exit_code = 2
    except (KeyboardInterrupt, SystemExit):
        print("\nbench interrupted; stopping everything", file=sys.stderr)
        exit_code = 130
    finally:
        procs.stop_all()
        if settings.keep_tmp:
            print(f"temp dir kept: {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return exit_code


def _first_line(argv: list[str]) -> str:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
        lines = (done.stdout + done.stderr).strip().splitlines()
        return lines[0] if lines else ""
    return "?"


def describe_work_tree() -> str:
    repo = str(Path(__file__).resolve().parent.parent)
    commit = _first_line(["git", "-C", repo, "rev-parse", "--short", "HEAD"])
    dirty = _first_line(["git", "-C", repo, "status", "--porcelain", "--", "gateway"])
    return f"work tree at {commit}" + (" + uncommitted changes in gateway/" if dirty else "")


def start_all(bench: Bench, selected: list[Target]) -> list[tuple[str, str]]:
    skipped: list[tuple[str, str]] = []
    for target in selected:
        print(f"  starting {target.name}", file=sys.stderr)
        try:
            running = start_target(bench.procs, bench.cores, target, bench.nginx, UPSTREAM_KEY)
        except ConfigRejected as exc:
            reason = "config rejected by `gateway check-config`: " + " ".join(str(exc).split())
            print(f"  skipping {target.name}: {reason}", file=sys.stderr)
            skipped.append((target.name, reason))
            continue
        except PeerUnavailable as exc:
            reason = "could not be installed or started here: " + " ".join(str(exc).split())
            print(f"  skipping {target.name}: {reason}", file=sys.stderr)
            skipped.append((target.name, reason))
            continue
        modes: list[str] = []
        for mode in bench.settings.modes:
            try:
                verify_target(running, bench.base_request, mode)
            except (BenchError, OSError) as exc:
                if target.kind != "peer":
                    raise
                # A peer's own defect is a finding about the peer, not a failed run.
                reason = "wrong answer: " + " ".join(str(exc).split())
                print(f"  skipping {target.name} in {mode} mode: {reason}", file=sys.stderr)
                skipped.append((f"{target.name} ({mode})", reason))
                continue
            modes.append(mode)
        running.modes = tuple(modes)
        bench.running.append(running)
        if not modes:
            stop_running(bench, running)
    if not any(r.target.kind == "nginx" for r in bench.running):
        raise BenchError("the direct (nginx) target is needed as the reference")
    return skipped


def stop_running(bench: Bench, running: Running) -> None:
    for managed in list(bench.procs.started):
        if managed.pid == running.main_pid or managed.name.startswith(f"{running.name}-redis"):
            bench.procs.stop(managed)
    bench.running.remove(running)


def explain_matrix(report: Report) -> None:
    for line in (
        "RPS and latency from wrk (closed loop: each connection sends its next request when the "
        "last one is answered). p50/p99 are wrk's latency percentiles.",
        "+p50 vs direct: the target's median minus nginx's at the same mode and connections. "
        "At c=1 it is the per-hop overhead; at c>=16 it is mostly queueing (latency = "
        "connections / RPS), i.e. another view of throughput.",
        "CPU/req: utime+stime of the process under test (from /proc/<pid>/stat) over the run, "
        "divided by the requests wrk counted.",
        "x bare RPS: RPS divided by the bare aiohttp proxy's at the same point (1.00 = as fast "
        "as the floor).",
        "SUT core %: CPU of the process under test / wall time (100 = its core is the limit). "
        "load core %: wrk + nginx (+ Redis) CPU / wall time on the load core(s); near 100 "
        "means the load side, not the target, is the limit. SUT core idle %: idle time of the "
        "target's core (/proc/stat); near 0 = the core is saturated (the target plus the "
        "kernel's network work on its behalf).",
        "upstream/req: requests nginx counted (stub_status) per request wrk counted: 1 on a "
        "cache miss, 0 on a cache hit.",
    ):
        report.note(line)


def point_data(point: Point) -> dict[str, Any]:
    data = asdict(point)
    data["wrk"].pop("output", None)
    data["rps"] = point.rps
    data["cpu_per_request_us"] = point.cpu_per_request_us
    return data


def write_results(report: Report, settings: Settings) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    text = "\n".join(report.markdown) + "\n"
    stamp = time.strftime("%Y%m%d-%H%M%S")
    suffix = "-quick" if settings.quick else ""
    (RESULTS / "latest.md").write_text(text)
    (RESULTS / f"{stamp}{suffix}.md").write_text(text)
    (RESULTS / "latest.json").write_text(
        json.dumps({"settings": asdict(settings), **report.data}, indent=2, default=str)
    )
    print(f"\nwritten: {RESULTS / 'latest.md'} (and {stamp}{suffix}.md, latest.json)")


if __name__ == "__main__":
    raise SystemExit(main())
