"""A throwaway redis-server process per test session: free port, no persistence, own log."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import pytest


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Startable(Protocol):
    def start(self) -> None: ...

    def stop(self) -> None: ...


def start_or_skip(proc: Startable) -> None:
    """Start a redis topology, or skip the test when this machine cannot (never on CI, where
    a missing redis-server must fail the run)."""
    try:
        proc.start()
    except RuntimeError as exc:
        proc.stop()
        if os.environ.get("CI"):
            raise
        pytest.skip(str(exc))


@dataclass
class RedisProcess:
    port: int
    workdir: Path
    process: subprocess.Popen[bytes] | None = None
    #: more redis-server options (later ones win: ``["--appendonly", "yes"]`` turns AOF on)
    extra_args: list[str] = field(default_factory=list)
    #: a config file (Sentinel needs one it can rewrite), given before the options
    config_file: Path | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not on PATH (make test installs it)")
        self.process = subprocess.Popen(
            [
                binary,
                *([str(self.config_file)] if self.config_file is not None else []),
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
                "--logfile",
                str(self.workdir / "redis.log"),
                *self.extra_args,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self._wait_until_ping(10.0)

    def _wait_until_ping(self, bound_seconds: float) -> None:
        deadline = time.monotonic() + bound_seconds
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited: {self.log_tail()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as sock:
                    sock.sendall(b"PING\r\n")
                    # NOAUTH: up, and started with --requirepass
                    if sock.recv(16).startswith((b"+PONG", b"-NOAUTH")):
                        return
            except OSError:
                pass
            time.sleep(0.02)  # polling a process start, not synchronising test logic
        raise RuntimeError(f"redis-server did not answer PING: {self.log_tail()}")

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5)
        self.process = None

    def kill(self) -> None:
        """SIGKILL: a crash, no shutdown work (what persistence must survive)."""
        if self.process is None:
            return
        self.process.kill()
        self.process.wait(timeout=5)
        self.process = None

    def log_tail(self) -> str:
        log = self.workdir / "redis.log"
        return log.read_text()[-2000:] if log.exists() else "(no log)"


def redis_available() -> bool:
    return shutil.which("redis-server") is not None or bool(os.environ.get("CI"))


@contextlib.contextmanager
def own_redis(workdir: Path, extra_args: list[str] | None = None) -> Iterator[RedisProcess]:
    """A redis-server for one test, which it may stop, restart or freeze (SIGSTOP): always
    thawed and stopped afterwards, whatever the test did."""
    proc = RedisProcess(port=free_port(), workdir=workdir, extra_args=list(extra_args or []))
    start_or_skip(proc)
    try:
        yield proc
    finally:
        if proc.process is not None and proc.process.poll() is None:
            os.kill(proc.process.pid, signal.SIGCONT)
        proc.stop()
