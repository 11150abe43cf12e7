"""Target definitions (bench/targets.yaml) and starting them: nginx, the bare proxy, gateways,
peer gateways (bench/peers.py)."""

from __future__ import annotations

import copy
import io
import json
import os
import secrets
import subprocess
import sys
import tarfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from harness import (
    BENCH,
    HOST,
    REPO,
    BenchError,
    Cores,
    Managed,
    Processes,
    free_port,
    http,
    start_redis,
    start_redis_cluster,
    venv_bin,
    wait_for_http,
    wait_for_port,
)
from peers import PEER_NAMES, fill, start_peer
from upstream import Nginx

TARGETS_FILE = BENCH / "targets.yaml"
UNIQUE_MARKER = "__BENCH_UNIQUE__"
TEAM = "bench"
KINDS = ("nginx", "bare", "gateway", "peer")
MODES = ("json", "sse")


@dataclass(frozen=True)
class Target:
    name: str
    kind: str
    description: str = ""
    default: bool = True
    redis: bool = False
    redis_cluster: bool = False
    config: dict[str, Any] = field(default_factory=dict)
    request: dict[str, Any] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    unique_bodies: bool = False
    expect_upstream_per_request: float | None = None
    # Peers only: which one, its pinned version, its config file's text ({upstream} and
    # {api_key} are filled in at start).
    peer: str = ""
    version: str = ""
    config_text: str = ""
    # Per mode: {"sse": {"request": {...}, "headers": {...}}} merged over request / headers.
    modes: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass(frozen=True)
class TargetFile:
    request: dict[str, Any]
    targets: list[Target]


def load_targets(path: Path = TARGETS_FILE) -> TargetFile:
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise BenchError(f"{path}: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("targets"), list):
        raise BenchError(f"{path}: needs a `targets` list")
    targets: list[Target] = []
    allowed = set(Target.__dataclass_fields__)
    for item in data["targets"]:
        if not isinstance(item, dict):
            raise BenchError(f"{path}: every target is a mapping")
        unknown = set(item) - allowed
        if unknown:
            raise BenchError(f"{path}: target {item.get('name')}: unknown keys {sorted(unknown)}")
        target = Target(**item)
        if target.kind not in KINDS:
            raise BenchError(f"{path}: target {target.name}: kind must be one of {KINDS}")
        if target.kind == "peer" and (target.peer not in PEER_NAMES or not target.version):
            raise BenchError(
                f"{path}: target {target.name}: a peer needs `peer` (one of {PEER_NAMES}) "
                "and a pinned `version`"
            )
        if set(target.modes) - set(MODES) or any(
            set(overlay) - {"request", "headers"} for overlay in target.modes.values()
        ):
            raise BenchError(
                f"{path}: target {target.name}: modes maps json/sse to request and headers"
            )
        targets.append(target)
    names = [t.name for t in targets]
    if len(set(names)) != len(names):
        raise BenchError(f"{path}: duplicate target names")
    return TargetFile(request=dict(data.get("request") or {}), targets=targets)


def select_targets(
    all_targets: Sequence[Target], spec: str | None, *, peers: bool = False
) -> list[Target]:
    """``None`` = the defaults; ``all``; or a comma list (direct and bare-proxy always added).

    ``peers`` adds every peer target to the selection.
    """
    if spec and spec.strip() == "all":
        return list(all_targets)
    if not spec:
        wanted = {t.name for t in all_targets if t.default}
    else:
        wanted = {name.strip() for name in spec.split(",") if name.strip()}
    if peers:
        wanted |= {t.name for t in all_targets if t.kind == "peer"}
    known = {t.name for t in all_targets}
    unknown = wanted - known
    if unknown:
        raise BenchError(f"unknown targets {sorted(unknown)}; known: {', '.join(sorted(known))}")
    # The reference rows are needed for the comparison columns.
    wanted |= {t.name for t in all_targets if t.kind in ("nginx", "bare")}
    return [t for t in all_targets if t.name in wanted]


def deep_merge(base: Mapping[str, Any], overlay: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(dict(base))
    for key, value in overlay.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def request_body(base: Mapping[str, Any], target: Target, mode: str) -> bytes:
    body = deep_merge(base, target.request)
    body = deep_merge(body, target.modes.get(mode, {}).get("request") or {})
    if mode == "sse":
        body["stream"] = True
    text = json.dumps(body, separators=(",", ":"))
    if target.unique_bodies and UNIQUE_MARKER not in text:
        raise BenchError(f"target {target.name}: unique_bodies needs {UNIQUE_MARKER} in the body")
    return text.encode()


def request_headers(
    target: Target, mode: str, token: str | None, fill_in: Callable[[str], str] = str
) -> dict[str, str]:
    """``fill_in`` puts run-time values (a peer's upstream URL) into the configured headers."""
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    if mode == "sse":
        headers["x-bench-mode"] = "sse"
    headers.update({k: fill_in(v) for k, v in target.headers.items()})
    mode_headers = target.modes.get(mode, {}).get("headers") or {}
    headers.update({k: fill_in(v) for k, v in mode_headers.items()})
    return headers


# ---------------------------------------------------------------------------------------------
# Gateway processes

_gateway_source: Path | None = None


def use_gateway_ref(ref: str, workdir: Path) -> str:
    """Run every gateway from ``ref`` (``git archive`` of gateway/) instead of the work tree.

    The venv's editable install is shadowed by PYTHONPATH; returns the resolved commit.
    """
    global _gateway_source
    commit = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", f"{ref}^{{commit}}"],
        capture_output=True,
        text=True,
        check=False,
    )
    if commit.returncode != 0:
        raise BenchError(f"not a git commit: {ref}: {commit.stderr.strip()}")
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", "--format=tar", ref, "gateway"],
        capture_output=True,
        check=True,
    )
    destination = workdir / "gateway-src"
    destination.mkdir()
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(destination, filter="data")
    _gateway_source = destination
    return commit.stdout.strip()


def gateway_env() -> dict[str, str]:
    # The work tree's code is put first too: the shared venv's editable install may point at
    # another checkout (a git worktree's bench would otherwise measure that one's code).
    source = _gateway_source if _gateway_source is not None else REPO
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(source), env.get("PYTHONPATH", "")) if p)
    return env


def base_gateway_config(upstream_base_url: str, upstream_key: str, port: int) -> dict[str, Any]:
    return {
        "upstream": {"base_url": upstream_base_url, "api_key": upstream_key},
        "auth": {"algorithms": ["HS256"], "hs_secret": secrets.token_urlsafe(48)},
        "server": {"host": HOST, "port": port, "shutdown_grace_seconds": 2},
        "logging": {"level": "INFO", "access_log": True},
        "teams": {TEAM: {"models": ["*"]}},
    }


def check_config(path: Path) -> str | None:
    """None when ``gateway check-config`` accepts the file, else its complaint."""
    done = subprocess.run(
        [venv_bin("gateway"), "check-config", str(path)],
        env=gateway_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if done.returncode == 0:
        return None
    return (done.stderr or done.stdout).strip()


def mint_token(path: Path) -> str:
    done = subprocess.run(
        [venv_bin("gateway"), "token", "--config", str(path), "--team", TEAM, "--ttl", "1d"],
        env=gateway_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if done.returncode != 0:
        raise BenchError(f"gateway token failed: {done.stderr.strip()}")
    return done.stdout.strip()


@dataclass
class GatewayProc:
    proc: Managed
    port: int
    token: str
    config_path: Path

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}/v1"


class ConfigRejected(BenchError):
    """The gateway does not accept a target's config (a key that does not exist yet)."""


def start_gateway(
    procs: Processes,
    cores: Cores,
    name: str,
    *,
    upstream_base_url: str,
    upstream_key: str,
    overlay: Mapping[str, Any] | None = None,
) -> GatewayProc:
    port = free_port()
    config = deep_merge(base_gateway_config(upstream_base_url, upstream_key, port), overlay or {})
    path = procs.workdir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    complaint = check_config(path)
    if complaint is not None:
        raise ConfigRejected(complaint)
    token = mint_token(path)
    proc = procs.start(
        name,
        [*cores.taskset("sut"), venv_bin("gateway"), "serve", "--config", str(path)],
        env=gateway_env(),
    )
    wait_for_http(f"http://{HOST}:{port}/readyz", proc)
    return GatewayProc(proc, port, token, path)


def start_mock_upstream(procs: Processes, cores: Cores, api_key: str) -> tuple[Managed, int]:
    """The project's own mock upstream (needed for x-mock-chunk-delay-ms), on the load core."""
    port = free_port()
    proc = procs.start(
        "mock-upstream",
        [
            *cores.taskset("load"),
            venv_bin("gateway"),
            "mock-upstream",
            "--host",
            HOST,
            "--port",
            str(port),
            "--api-key",
            api_key,
        ],
        env=gateway_env(),
    )
    wait_for_port(port, proc)
    return proc, port


# ---------------------------------------------------------------------------------------------
# Running targets


@dataclass
class Running:
    target: Target
    url: str
    token: str | None
    pids: Callable[[], list[int]]
    main_pid: int
    #: The Redis server(s) of the target: one, or every primary of its cluster.
    redis_ports: list[int] = field(default_factory=list)
    redis_pids: Callable[[], list[int]] | None = None
    # Peers: the run's values for the {upstream}/{api_key} placeholders of the headers.
    fill_in: Callable[[str], str] = str
    # The modes it answered correctly (a peer may fail one; it is then measured in the other).
    modes: tuple[str, ...] = MODES

    @property
    def name(self) -> str:
        return self.target.name

    def headers(self, mode: str) -> dict[str, str]:
        return request_headers(self.target, mode, self.token, self.fill_in)


def start_target(
    procs: Processes, cores: Cores, target: Target, nginx: Nginx, upstream_key: str
) -> Running:
    if target.kind == "nginx":
        return Running(target, nginx.url, None, nginx.proc.pids, nginx.proc.pid)
    if target.kind == "bare":
        port = free_port()
        proc = procs.start(
            target.name,
            [
                *cores.taskset("sut"),
                sys.executable,
                str(BENCH / "bare_proxy.py"),
                "--port",
                str(port),
                "--upstream",
                f"http://{HOST}:{nginx.port}",
            ],
        )
        wait_for_port(port, proc)
        return Running(
            target, f"http://{HOST}:{port}/v1/chat/completions", None, proc.pids, proc.pid
        )
    if target.kind == "peer":
        peer = start_peer(procs, cores, target, nginx.base_url, upstream_key)

        def fill_in(text: str) -> str:
            return fill(text, nginx.base_url, upstream_key)

        return Running(target, peer.url, None, peer.proc.pids, peer.proc.pid, fill_in=fill_in)
    overlay = copy.deepcopy(target.config)
    redis_ports: list[int] = []
    redis_procs: list[Managed] = []
    if target.redis_cluster:
        redis_procs, redis_ports = start_redis_cluster(procs, cores, f"{target.name}-redis")
    elif target.redis:
        redis_proc, redis_port = start_redis(procs, cores, f"{target.name}-redis")
        redis_procs, redis_ports = [redis_proc], [redis_port]
    if redis_ports:
        # One node's URL is enough: the gateway finds the rest of a cluster from it.
        url = f"redis://{HOST}:{redis_ports[0]}/0"
        overlay = deep_merge(overlay, {"store": {"redis_url": url}})
    gateway = start_gateway(
        procs,
        cores,
        target.name,
        upstream_base_url=nginx.base_url,
        upstream_key=upstream_key,
        overlay=overlay,
    )
    return Running(
        target,
        f"{gateway.base_url}/chat/completions",
        gateway.token,
        gateway.proc.pids,
        gateway.proc.pid,
        redis_ports=redis_ports,
        redis_pids=(lambda: [pid for r in redis_procs for pid in r.pids()])
        if redis_procs
        else None,
    )


def verify_target(running: Running, base_request: Mapping[str, Any], mode: str) -> None:
    """One request in this mode must succeed with the right shape, before any measurement."""
    body = request_body(base_request, running.target, mode).replace(
        UNIQUE_MARKER.encode(), b"verify"
    )
    reply = http(
        "POST",
        running.url,
        body=body,
        headers=running.headers(mode),
        timeout=30,
    )
    problem = None
    if reply.status != 200:
        problem = f"HTTP {reply.status}"
    elif mode == "sse":
        if not reply.headers.get("content-type", "").startswith("text/event-stream"):
            problem = f"content type {reply.headers.get('content-type')}"
        elif not reply.body.rstrip().endswith(b"data: [DONE]") or b"chat.completion.chunk" not in (
            reply.body
        ):
            problem = "the stream does not look like chat.completion.chunk ... [DONE]"
    elif b'"object":"chat.completion"' not in reply.body:
        problem = "the body is not a chat.completion"
    if problem:
        raise BenchError(
            f"{running.name} ({mode}): {problem}: {reply.body[:300].decode(errors='replace')}"
        )
