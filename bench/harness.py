"""Shared machinery of the benchmark: processes, CPU pinning, /proc readings, wrk, Redis, tables.

Every process is started through :class:`Processes`, in its own process group, with
``PR_SET_PDEATHSIG`` so that it dies with the harness even if the harness is killed hard; the
normal path is :meth:`Processes.stop_all` in a ``finally`` block (SIGTERM to the group, then
SIGKILL). Nothing here talks to any address but 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import math
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
RESULTS = BENCH / "results"
VENV_BIN = REPO / ".venv" / "bin"
HOST = "127.0.0.1"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024


class BenchError(RuntimeError):
    """A set-up step failed; the message says which and why."""


# ---------------------------------------------------------------------------------------------
# Cores


@dataclass(frozen=True, slots=True)
class Cores:
    """Which CPUs the load side (wrk, nginx, Redis, this script) and the process under test use."""

    load: tuple[int, ...]
    sut: tuple[int, ...]
    pinned: bool

    @classmethod
    def detect(cls) -> Cores:
        available = sorted(os.sched_getaffinity(0))
        if len(available) < 2:
            return cls(tuple(available), tuple(available), pinned=False)
        # The process under test is one Python process: one core is all it can use.
        return cls(tuple(available[:-1]), (available[-1],), pinned=True)

    def taskset(self, which: str) -> list[str]:
        if not self.pinned:
            return []
        cpus = self.load if which == "load" else self.sut
        return ["taskset", "-c", ",".join(str(c) for c in cpus)]

    def describe(self) -> str:
        if not self.pinned:
            return "not pinned (fewer than 2 cores: load generator and process under test share)"
        load = ",".join(map(str, self.load))
        sut = ",".join(map(str, self.sut))
        return (
            f"load generator + upstream (+ Redis, this script) on CPU {load}; "
            f"process under test on CPU {sut}"
        )


# ---------------------------------------------------------------------------------------------
# Processes


def _child_setup() -> None:  # pragma: no cover - runs in the forked child
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: die if the harness dies


@dataclass
class Managed:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def pids(self) -> list[int]:
        """This process and all its descendants (nginx's master and worker, say)."""
        return [self.pid, *descendants(self.pid)]


@dataclass
class Processes:
    """Starts processes and guarantees they are all stopped (call stop_all in a finally)."""

    workdir: Path
    started: list[Managed] = field(default_factory=list)

    def start(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> Managed:
        log_path = self.workdir / f"{name}.log"
        log: IO[bytes] = log_path.open("wb")
        try:
            popen = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=dict(env) if env is not None else None,
                cwd=cwd,
                start_new_session=True,  # its own process group: stop_all kills the group
                preexec_fn=_child_setup,
            )
        finally:
            log.close()
        managed = Managed(name, popen, log_path)
        self.started.append(managed)
        return managed

    def stop(self, managed: Managed, grace: float = 5.0) -> None:
        if managed.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(managed.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                managed.popen.wait(timeout=grace)
        # Whatever is left in the group (forked workers) goes too.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(managed.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            managed.popen.wait(timeout=grace)
        if managed in self.started:
            self.started.remove(managed)

    def stop_all(self) -> None:
        for managed in reversed(list(self.started)):
            self.stop(managed)


@contextlib.contextmanager
def terminate_on_sigterm() -> Iterator[None]:
    """Turn SIGTERM/SIGHUP into SystemExit so that ``finally`` blocks run (Ctrl-C already does)."""

    def handler(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGHUP)}
    # Ctrl-C raises KeyboardInterrupt even when the shell started us with SIGINT ignored.
    previous[signal.SIGINT] = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


# ---------------------------------------------------------------------------------------------
# Ports and readiness


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for_port(port: int, proc: Managed, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            raise BenchError(f"{proc.name} exited during start-up:\n{proc.log_tail()}")
        with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=0.5):
            return
        time.sleep(0.05)
    raise BenchError(f"{proc.name} did not listen on {HOST}:{port} within {timeout} s")


@dataclass(frozen=True, slots=True)
class HttpReply:
    status: int
    headers: dict[str, str]
    body: bytes


def http(
    method: str,
    url: str,
    *,
    body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    timeout: float = 10.0,
) -> HttpReply:
    """One plain HTTP exchange (stdlib only), for checks: never used to measure anything."""
    if not url.startswith(f"http://{HOST}:"):
        raise BenchError(f"refusing a non-loopback URL: {url}")
    request = urllib.request.Request(url, data=body, method=method, headers=dict(headers or {}))
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return HttpReply(
                response.status,
                {k.lower(): v for k, v in response.headers.items()},
                response.read(),
            )
    except urllib.error.HTTPError as exc:
        return HttpReply(exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read())


def wait_for_http(url: str, proc: Managed, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if not proc.alive():
            raise BenchError(f"{proc.name} exited during start-up:\n{proc.log_tail()}")
        try:
            reply = http("GET", url, timeout=1.0)
            if reply.status == 200:
                return
            last = f"HTTP {reply.status}"
        except OSError as exc:
            last = str(exc)
        time.sleep(0.1)
    raise BenchError(f"{proc.name}: {url} not ready within {timeout} s ({last})")


# ---------------------------------------------------------------------------------------------
# Debian packages


def ensure_debian_packages(wanted: Mapping[str, Sequence[str]]) -> None:
    """``{binary: [package, fallback...]}``: apt-get install what is missing (only that)."""
    missing = {binary: pkgs for binary, pkgs in wanted.items() if find_binary(binary) is None}
    if not missing:
        return
    if os.geteuid() != 0:
        raise BenchError(
            "missing "
            + ", ".join(missing)
            + "; install them: apt-get install -y "
            + " ".join(p[0] for p in missing.values())
        )
    print("installing from Debian packages: " + ", ".join(missing), file=sys.stderr)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    # Keep the packages from starting their own daemons (nginx would listen on :80): a
    # policy-rc.d that refuses, created only if there is none, removed afterwards.
    policy = Path("/usr/sbin/policy-rc.d")
    created = False
    if not policy.exists():
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
        created = True
    try:
        subprocess.run(["apt-get", "update", "-qq"], check=False, env=env, timeout=300)
        for binary, packages in missing.items():
            for package in packages:
                done = subprocess.run(
                    ["apt-get", "install", "-y", "-qq", "--no-install-recommends", package],
                    env=env,
                    stdout=subprocess.DEVNULL,
                    check=False,
                    timeout=600,
                )
                if done.returncode == 0 and find_binary(binary) is not None:
                    break
            else:
                raise BenchError(f"could not install {binary} (tried {', '.join(packages)})")
    finally:
        if created:
            policy.unlink(missing_ok=True)


def find_binary(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for directory in ("/usr/sbin", "/usr/local/sbin", "/sbin"):
        candidate = Path(directory) / name
        if candidate.exists():
            return str(candidate)
    return None


# ---------------------------------------------------------------------------------------------
# /proc


def _stat_fields(pid: int) -> list[str]:
    text = Path(f"/proc/{pid}/stat").read_text()
    # The command name may contain spaces and parentheses: split after the last ')'.
    return text[text.rindex(")") + 2 :].split()


def cpu_seconds(pids: Sequence[int]) -> float:
    """utime + stime of these processes, in seconds (vanished ones count as 0)."""
    ticks = 0
    for pid in pids:
        with contextlib.suppress(OSError, ValueError):
            fields = _stat_fields(pid)
            ticks += int(fields[11]) + int(fields[12])  # fields 14 and 15 of proc(5)
    return ticks / CLK_TCK


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            ppid = int(_stat_fields(int(entry.name))[1])
            children.setdefault(ppid, []).append(int(entry.name))
    out: list[int] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def status_kib(pid: int, key: str) -> int | None:
    """A ``kB`` field of /proc/<pid>/status: VmRSS (now) or VmHWM (peak)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def rss_mib(pids: Sequence[int]) -> float | None:
    values = [status_kib(pid, "VmRSS") for pid in pids]
    known = [v for v in values if v is not None]
    return sum(known) / 1024 if known else None


def cores_seconds(cpus: Sequence[int]) -> tuple[float, float]:
    """(busy, idle) seconds of these CPUs from /proc/stat.

    busy = user + nice + system + irq + softirq: a process's own CPU time may include the
    softirq work done on its behalf, so leaving those out would understate the busy time.
    """
    wanted = {f"cpu{c}" for c in cpus}
    busy = idle = 0
    for line in Path("/proc/stat").read_text().splitlines():
        fields = line.split()
        if fields and fields[0] in wanted:
            busy += sum(int(v) for v in fields[1:4]) + int(fields[6]) + int(fields[7])
            idle += int(fields[4]) + int(fields[5])
    return busy / CLK_TCK, idle / CLK_TCK


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# ---------------------------------------------------------------------------------------------
# wrk


LUA_TEMPLATE = """\
-- generated by bench/run.py
wrk.method = "POST"
wrk.body = [==[{body}]==]
{headers}
{unique}
done = function(summary, latency, requests)
  io.write(string.format(
    "BENCH_RESULT requests=%d duration_us=%d p50_us=%.1f p99_us=%.1f status_errors=%d "
      .. "connect=%d read=%d write=%d timeout=%d\\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    summary.errors.status, summary.errors.connect, summary.errors.read,
    summary.errors.write, summary.errors.timeout))
end
"""

# A unique body per request: the marker becomes "<run nonce>-<thread>-<counter>" (the nonce is
# the script argument, fresh for every wrk run), so no two requests of a whole bench are alike.
# Each wrk thread runs its own copy of the script with its own counter: ``setup`` (run once per
# thread, in the main Lua state) numbers the threads so that their counters cannot collide.
UNIQUE_LUA = """\
local counter = 0
local nonce = ""
local threads = 0
local before, after = wrk.body:match("^(.-)__BENCH_UNIQUE__(.*)$")
setup = function(thread)
  threads = threads + 1
  thread:set("bench_thread", threads)
end
init = function(args)
  nonce = (args[1] or "") .. "-" .. tostring(bench_thread or 0)
end
request = function()
  counter = counter + 1
  return wrk.format(nil, nil, nil, before .. nonce .. "-" .. tostring(counter) .. after)
end
"""


def _lua_string(value: str) -> str:
    return json.dumps(value)  # a JSON string literal is a valid Lua string literal here


def write_wrk_script(
    path: Path,
    body: bytes,
    headers: Mapping[str, str],
    *,
    unique: bool = False,
) -> Path:
    text = body.decode()
    if "]==]" in text:
        raise BenchError("request body cannot contain ]==]")
    lines = "\n".join(
        f"wrk.headers[{_lua_string(k)}] = {_lua_string(v)}" for k, v in headers.items()
    )
    path.write_text(
        LUA_TEMPLATE.format(
            body=text,
            headers=lines,
            unique=UNIQUE_LUA if unique else "",
        )
    )
    return path


@dataclass(frozen=True, slots=True)
class WrkResult:
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    errors: int
    error_detail: str
    output: str

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else 0.0


_RESULT_LINE = re.compile(r"^BENCH_RESULT (.*)$", re.MULTILINE)
_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}


def parse_wrk(output: str) -> WrkResult:
    """Exact numbers from the Lua ``done`` hook; the ``--latency`` text is the fallback."""
    match = _RESULT_LINE.search(output)
    if match:
        values = dict(item.split("=", 1) for item in match.group(1).split())
        errors = {
            k: int(values[k]) for k in ("status_errors", "connect", "read", "write", "timeout")
        }
        return WrkResult(
            requests=int(values["requests"]),
            seconds=int(values["duration_us"]) / 1e6,
            p50_ms=float(values["p50_us"]) / 1000,
            p99_ms=float(values["p99_us"]) / 1000,
            errors=sum(errors.values()),
            error_detail=", ".join(f"{k} {v}" for k, v in errors.items() if v),
            output=output,
        )
    return _parse_wrk_text(output)


def _latency_ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text.strip())
    if not match:
        raise BenchError(f"cannot parse a wrk latency: {text!r}")
    return float(match.group(1)) * _UNITS_MS[match.group(2)]


def _parse_wrk_text(output: str) -> WrkResult:
    done = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m)", output)
    p50 = re.search(r"^\s*50%\s+(\S+)", output, re.MULTILINE)
    p99 = re.search(r"^\s*99%\s+(\S+)", output, re.MULTILINE)
    if not (done and p50 and p99):
        raise BenchError(f"cannot parse wrk's output:\n{output}")
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    socket_errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    errors = int(non2xx.group(1)) if non2xx else 0
    if socket_errors:
        errors += sum(int(g) for g in socket_errors.groups())
    return WrkResult(
        requests=int(done.group(1)),
        seconds=_latency_ms(done.group(2) + done.group(3)) / 1000,
        p50_ms=_latency_ms(p50.group(1)),
        p99_ms=_latency_ms(p99.group(1)),
        errors=errors,
        error_detail="see wrk output" if errors else "",
        output=output,
    )


def wrk_command(
    cores: Cores, url: str, script: Path, connections: int, seconds: float
) -> list[str]:
    """The wrk command line; a fresh nonce is passed to the script (see UNIQUE_LUA)."""
    threads = max(1, min(len(cores.load) if cores.pinned else 1, connections))
    return [
        *cores.taskset("load"),
        find_binary("wrk") or "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        "--timeout",
        "10s",
        "--latency",
        "-s",
        str(script),
        url,
        "--",
        uuid.uuid4().hex[:12],
    ]


def run_wrk(
    cores: Cores, url: str, script: Path, connections: int, seconds: float
) -> tuple[WrkResult, float]:
    """Run wrk to completion; returns its result and its own CPU seconds (from rusage)."""
    before = children_cpu_seconds()
    done = subprocess.run(
        wrk_command(cores, url, script, connections, seconds),
        capture_output=True,
        text=True,
        timeout=seconds + 60,
        check=False,
    )
    wrk_cpu = children_cpu_seconds() - before
    if done.returncode != 0:
        raise BenchError(f"wrk failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return parse_wrk(done.stdout + done.stderr), wrk_cpu


# ---------------------------------------------------------------------------------------------
# Redis


def start_redis(procs: Processes, cores: Cores, name: str = "redis") -> tuple[Managed, int]:
    binary = find_binary("redis-server")
    if binary is None:
        raise BenchError("redis-server is not installed")
    port = free_port()
    workdir = procs.workdir / name
    workdir.mkdir(exist_ok=True)
    proc = procs.start(
        name,
        [
            *cores.taskset("load"),
            binary,
            "--port",
            str(port),
            "--bind",
            HOST,
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
            "--daemonize",
            "no",
            "--protected-mode",
            "yes",
        ],
    )
    wait_for_port(port, proc)
    return proc, port


CLUSTER_BUS_OFFSET = 10000  # a cluster node also listens on port + 10000 (the cluster bus)


def _cluster_port(taken: set[int]) -> int:
    for _ in range(200):
        port = free_port()
        bus = port + CLUSTER_BUS_OFFSET
        if port in taken or bus in taken or bus >= 65536:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((HOST, bus))
            except OSError:
                continue
        return port
    raise BenchError("no free port pair for a Redis Cluster node")


def start_redis_cluster(
    procs: Processes, cores: Cores, name: str, size: int = 3
) -> tuple[list[Managed], list[int]]:
    """``size`` primaries (no replicas) on loopback, joined with ``redis-cli --cluster create``,
    on the load core like the single Redis; returns once every node says cluster_state:ok."""
    binary, cli = find_binary("redis-server"), find_binary("redis-cli")
    if binary is None or cli is None:
        raise BenchError("redis-server and redis-cli are needed for a Redis Cluster target")
    nodes: list[Managed] = []
    ports: list[int] = []
    for i in range(size):
        port = _cluster_port(set(ports) | {p + CLUSTER_BUS_OFFSET for p in ports})
        workdir = procs.workdir / f"{name}{i}"
        workdir.mkdir(exist_ok=True)
        proc = procs.start(
            f"{name}{i}",
            [
                *cores.taskset("load"),
                binary,
                "--port", str(port),
                "--bind", HOST,
                "--save", "",
                "--appendonly", "no",
                "--dir", str(workdir),
                "--daemonize", "no",
                "--protected-mode", "yes",
                "--cluster-enabled", "yes",
                "--cluster-config-file", str(workdir / "nodes.conf"),
                "--cluster-node-timeout", "5000",
            ],
        )  # fmt: skip
        wait_for_port(port, proc)
        nodes.append(proc)
        ports.append(port)
    nodes_arg = [f"{HOST}:{p}" for p in ports]
    subprocess.run(
        [cli, "--cluster", "create", *nodes_arg, "--cluster-replicas", "0", "--cluster-yes"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    deadline = time.monotonic() + 30
    for port in ports:
        while True:
            info = subprocess.run(
                [cli, "-h", HOST, "-p", str(port), "cluster", "info"],
                capture_output=True,
                text=True,
                timeout=10,
                check=False,
            ).stdout
            if "cluster_state:ok" in info and f"cluster_known_nodes:{size}" in info:
                break
            if time.monotonic() > deadline:
                raise BenchError(f"Redis Cluster node {port} not ok: {info[:300]}")
            time.sleep(0.05)  # polling the nodes' own state
    return nodes, ports


def redis_commandstats(port: int) -> dict[str, int]:
    """Calls per command from ``INFO commandstats`` (the INFO calls themselves excluded)."""
    cli = find_binary("redis-cli") or "redis-cli"
    done = subprocess.run(
        [cli, "-h", HOST, "-p", str(port), "info", "commandstats"],
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
    )
    calls: dict[str, int] = {}
    for line in done.stdout.splitlines():
        match = re.match(r"cmdstat_([^:]+):calls=(\d+)", line.strip())
        if match and match.group(1) != "info":
            calls[match.group(1)] = int(match.group(2))
    return calls


def redis_calls_delta(before: Mapping[str, int], after: Mapping[str, int]) -> dict[str, int]:
    return {
        cmd: after[cmd] - before.get(cmd, 0) for cmd in after if after[cmd] - before.get(cmd, 0)
    }


# ---------------------------------------------------------------------------------------------
# Tables


def fmt(value: float | int | None, digits: int = 0, suffix: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, int) and digits == 0:
        return f"{value:,}{suffix}"
    return f"{value:,.{digits}f}{suffix}"


def signed(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:+.{digits}f}"


def text_table(headers: Sequence[str], rows: Sequence[Sequence[str]], left: int = 1) -> str:
    """Plain text; the first ``left`` columns are left-aligned, the rest right-aligned."""
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]

    def line(cells: Sequence[str]) -> str:
        parts = [
            cell.ljust(w) if i < left else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "  ".join(parts).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(headers), rule, *(line(r) for r in rows)])


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]], left: int = 1) -> str:
    align = ["---" if i < left else "---:" for i in range(len(headers))]
    out = ["| " + " | ".join(headers) + " |", "| " + " | ".join(align) + " |"]
    out += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(out)


@dataclass
class Report:
    """Sections printed as plain text and collected as Markdown for bench/results/."""

    markdown: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)

    def heading(self, title: str) -> None:
        print(f"\n{title}\n{'=' * len(title)}", flush=True)
        self.markdown.append(f"\n## {title}\n")

    def text(self, text: str) -> None:
        print(text, flush=True)
        self.markdown.append(text + "\n")

    def table(self, headers: Sequence[str], rows: Sequence[Sequence[str]], left: int = 1) -> None:
        print(text_table(headers, rows, left), flush=True)
        self.markdown.append(markdown_table(headers, rows, left) + "\n")

    def note(self, text: str) -> None:
        """Printed and kept as a Markdown bullet list item."""
        print(f"  * {text}", flush=True)
        self.markdown.append(f"- {text}")


def percentile(values: Sequence[float], pct: float) -> float | None:
    """Nearest-rank percentile; None for an empty sequence."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(pct / 100 * len(ordered))))
    return ordered[rank - 1]


def venv_bin(name: str) -> str:
    candidate = VENV_BIN / name
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if found is None:
        raise BenchError(f"{name} not found in {VENV_BIN} (run: make install)")
    return found
