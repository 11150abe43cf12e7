"""Peer gateways (TensorZero, LiteLLM, Portkey) installed from the package registries and run as
plain pass-through proxies in front of the same nginx upstream, for side-by-side ratios.

Each peer lives in its own venv or node_modules under ``bench/peers/`` (gitignored), created on
first use with the pinned version of ``targets.yaml`` and reused while the version matches. A
peer that cannot be installed or started raises :class:`PeerUnavailable`: the run prints why and
goes on without it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from harness import (
    BENCH,
    HOST,
    BenchError,
    Cores,
    Managed,
    Processes,
    free_port,
    wait_for_http,
    wait_for_port,
)

if TYPE_CHECKING:
    from targets import Target

PEERS_DIR = BENCH / "peers"
INSTALL_TIMEOUT = 900.0
UPSTREAM_PLACEHOLDER = "{upstream}"
API_KEY_PLACEHOLDER = "{api_key}"
PEER_NAMES = ("tensorzero", "litellm", "portkey")
LITELLM_MASTER_KEY = "sk-bench-litellm-master"  # loopback only; matches targets.yaml


class PeerUnavailable(BenchError):
    """A peer could not be installed or started here; the run goes on without it."""


@dataclass(frozen=True)
class StartedPeer:
    proc: Managed
    url: str


def fill(text: str, upstream_base_url: str, api_key: str) -> str:
    """Put the run's nginx base URL and key into a config text or a header value."""
    return text.replace(UPSTREAM_PLACEHOLDER, upstream_base_url).replace(
        API_KEY_PLACEHOLDER, api_key
    )


def _run_install(argv: list[str], what: str, log: Path) -> None:
    print(f"  installing {what} (first use; log: {log})", file=sys.stderr, flush=True)
    with log.open("wb") as out:
        try:
            done = subprocess.run(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=INSTALL_TIMEOUT,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise PeerUnavailable(f"installing {what} failed: {exc}") from None
    if done.returncode != 0:
        tail = " ".join(log.read_text(errors="replace").splitlines()[-3:])
        raise PeerUnavailable(f"installing {what} failed (exit {done.returncode}): {tail}")


def _install_dir(target: Target) -> Path:
    return PEERS_DIR / f"{target.peer}-{target.version}"


def _stamped(directory: Path, spec: str) -> bool:
    stamp = directory / ".installed"
    return stamp.is_file() and stamp.read_text().strip() == spec


def ensure_python_peer(target: Target, requirement: str) -> Path:
    """A venv with ``requirement`` installed; returns its bin directory."""
    directory = _install_dir(target)
    if not _stamped(directory, requirement):
        shutil.rmtree(directory, ignore_errors=True)
        directory.parent.mkdir(parents=True, exist_ok=True)
        log = directory.parent / f"{directory.name}-install.log"
        # The base interpreter, not the project's venv: the peer shares no package with it.
        base = getattr(sys, "_base_executable", sys.executable)
        _run_install([base, "-m", "venv", str(directory)], f"a venv for {target.name}", log)
        _run_install(
            [
                str(directory / "bin" / "pip"),
                "install",
                "--disable-pip-version-check",
                "--no-input",
                "-q",
                requirement,
            ],
            requirement,
            log,
        )
        (directory / ".installed").write_text(requirement + "\n")
    return directory / "bin"


def ensure_node_peer(target: Target, package: str) -> Path:
    """``npm install package`` into its own prefix; returns the package's directory."""
    npm = shutil.which("npm")
    if npm is None or shutil.which("node") is None:
        raise PeerUnavailable("node and npm are not installed (apt-get install nodejs npm)")
    directory = _install_dir(target)
    spec = f"{package}@{target.version}"
    if not _stamped(directory, spec):
        shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir(parents=True)
        (directory / "package.json").write_text('{"private": true}\n')
        log = directory.parent / f"{directory.name}-install.log"
        _run_install(
            [
                npm,
                "install",
                "--prefix",
                str(directory),
                "--no-audit",
                "--no-fund",
                "--omit=dev",
                "--save-exact",
                spec,
            ],
            spec,
            log,
        )
        (directory / ".installed").write_text(spec + "\n")
    return directory / "node_modules" / package


def _write_config(procs: Processes, target: Target, suffix: str, text: str) -> Path:
    path = procs.workdir / f"{target.name}{suffix}"
    path.write_text(text)
    return path


def _wait_for_file(path: Path, proc: Managed, timeout: float = 60.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            raise PeerUnavailable(f"{proc.name} exited during start-up: {proc.log_tail(5)}")
        if path.is_file() and path.read_text().strip():
            return path.read_text().strip()
        time.sleep(0.1)
    raise PeerUnavailable(f"{proc.name} did not start within {timeout:g} s: {proc.log_tail(5)}")


def _ready(url: str, proc: Managed, timeout: float = 90.0) -> None:
    try:
        wait_for_http(url, proc, timeout=timeout)
    except BenchError as exc:
        raise PeerUnavailable(str(exc)) from None


def start_tensorzero(
    procs: Processes, cores: Cores, target: Target, config_text: str, api_key: str
) -> StartedPeer:
    bin_dir = ensure_python_peer(target, f"tensorzero=={target.version}")
    config = _write_config(procs, target, ".toml", config_text)
    url_file = procs.workdir / f"{target.name}.url"
    proc = procs.start(
        target.name,
        [
            *cores.taskset("sut"),
            str(bin_dir / "python"),
            str(BENCH / "tensorzero_gateway.py"),
            str(config),
            str(url_file),
        ],
        env={**os.environ, "OPENAI_API_KEY": api_key, "RUST_LOG": "warn"},
    )
    base_url = _wait_for_file(url_file, proc)  # e.g. http://127.0.0.1:PORT/openai/v1
    if not base_url.startswith(f"http://{HOST}:"):
        raise PeerUnavailable(f"{target.name} listens on {base_url}, not on {HOST}")
    try:  # the wheel writes the URL once it listens; this only catches an early exit
        wait_for_port(int(base_url.split(":")[2].split("/")[0]), proc)
    except (BenchError, ValueError) as exc:
        raise PeerUnavailable(f"{target.name}: {exc}") from None
    return StartedPeer(proc, f"{base_url}/chat/completions")


def start_litellm(
    procs: Processes, cores: Cores, target: Target, config_text: str, api_key: str
) -> StartedPeer:
    bin_dir = ensure_python_peer(target, f"litellm[proxy]=={target.version}")
    config = _write_config(procs, target, ".yaml", config_text)
    port = free_port()
    proc = procs.start(
        target.name,
        [
            *cores.taskset("sut"),
            str(bin_dir / "litellm"),
            "--config",
            str(config),
            "--host",
            HOST,
            "--port",
            str(port),
            "--num_workers",
            "1",
        ],
        env={
            **os.environ,
            "OPENAI_API_KEY": api_key,
            # No fetch of the model price list at start-up (there is no network but PyPI's).
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",
            "LITELLM_LOG": "ERROR",
            "LITELLM_MODE": "PRODUCTION",
            # 1.108 refuses to start without a master key; the target's headers send it.
            "LITELLM_MASTER_KEY": LITELLM_MASTER_KEY,
        },
        cwd=procs.workdir,
    )
    _ready(f"http://{HOST}:{port}/health/liveliness", proc, timeout=180.0)
    return StartedPeer(proc, f"http://{HOST}:{port}/v1/chat/completions")


def start_portkey(
    procs: Processes, cores: Cores, target: Target, config_text: str, api_key: str
) -> StartedPeer:
    package = ensure_node_peer(target, "@portkey-ai/gateway")
    server = package / "build" / "start-server.js"
    if not server.is_file():
        raise PeerUnavailable(f"{server} is missing from the package")
    port = free_port()
    proc = procs.start(
        target.name,
        [*cores.taskset("sut"), "node", str(server), f"--port={port}", "--headless"],
        env={**os.environ, "NODE_ENV": "production"},
    )
    _ready(f"http://{HOST}:{port}/", proc)
    return StartedPeer(proc, f"http://{HOST}:{port}/v1/chat/completions")


STARTERS = {"tensorzero": start_tensorzero, "litellm": start_litellm, "portkey": start_portkey}


def start_peer(
    procs: Processes, cores: Cores, target: Target, upstream_base_url: str, api_key: str
) -> StartedPeer:
    starter = STARTERS.get(target.peer)
    if starter is None:
        raise BenchError(f"target {target.name}: peer must be one of {PEER_NAMES}")
    if not target.version:
        raise BenchError(f"target {target.name}: a peer needs a pinned version")
    config_text = fill(target.config_text, upstream_base_url, api_key)
    return starter(procs, cores, target, config_text, api_key)


__all__ = ["PEER_NAMES", "PeerUnavailable", "StartedPeer", "fill", "start_peer"]
