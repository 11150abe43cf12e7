"""The stack the interop suite drives: the mock upstream and the gateway as real processes.

Real processes (not the in-process app the other tests use) because the SDKs under test are
blocking clients and Node programs: they talk to the gateway over loopback exactly as a team's
code would, and no event loop of the test has to stay responsive for them.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.gateway_proc import UPSTREAM_KEY, base_config, token
from tests.support.gateway_subprocess import ROOT, GatewayProcess
from tests.support.redis_proc import free_port

# One team per SDK with a tiny request cap, so each SDK sees its own first call pass and its
# second refused, whatever order the tests run in.
CAPPED_TEAMS = {"capped-py": "py", "capped-node": "node"}
INTEROP_TEAMS: dict[str, Any] = {
    "ml": {"models": ["gpt-4o*", "gpt-5*", "o3*", "text-embedding-*", "gpt-image-*", "whisper*"]},
    "web": {"models": ["gpt-4o-mini"], "paths": ["/chat/completions", "/models*"]},
    # Metered on prompt tokens, so a test can read back what the gateway charged a batch.
    "bulk": {
        "models": ["text-embedding-*"],
        "quotas": [{"metric": "prompt_tokens", "limit": 100_000_000, "window": "day"}],
    },
    **{
        name: {"models": ["*"], "quotas": [{"metric": "requests", "limit": 1, "window": "day"}]}
        for name in CAPPED_TEAMS
    },
}


def _clean_env() -> dict[str, str]:
    # The SDKs read OPENAI_* themselves; a developer's own settings must not leak in.
    return {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "GATEWAY_"))}


_MOCK_COMMAND = (sys.executable, "-m", "gateway", "mock-upstream")


class MockProcess:
    """``python -m gateway mock-upstream`` on a free loopback port."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.log_path = workdir / "mock.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> None:
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [*_MOCK_COMMAND, "--port", str(self.port), "--api-key", UPSTREAM_KEY],
                cwd=ROOT,
                env=_clean_env(),
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def wait_ready(self, within_seconds: float = 20.0) -> None:
        assert self.process is not None
        request = urllib.request.Request(
            self.url + "/models", headers={"Authorization": f"Bearer {UPSTREAM_KEY}"}
        )
        deadline = time.monotonic() + within_seconds
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"mock upstream exited: {self.log()}")
            try:
                with urllib.request.urlopen(request, timeout=2) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError):
                pass
            time.sleep(0.05)  # polling a process start, not synchronising test logic
        raise RuntimeError(f"mock upstream did not become ready: {self.log()}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)

    def log(self) -> str:
        return self.log_path.read_text()[-3000:] if self.log_path.exists() else ""


@dataclass(frozen=True)
class Stack:
    """What a client needs to reach the gateway: its base URL (ending in /v1) and tokens."""

    url: str
    mock_url: str

    def token(self, team: str = "ml") -> str:
        return token(team)


@contextmanager
def running_stack(workdir: Path) -> Iterator[Stack]:
    mock = MockProcess(workdir)
    mock.start()
    gateway: GatewayProcess | None = None
    try:
        # Both interpreters import in parallel; the gateway needs no upstream to become ready.
        gateway = GatewayProcess(base_config(mock.url, teams=INTEROP_TEAMS), workdir)
        asyncio.run(gateway.start())
        mock.wait_ready()
        yield Stack(url=gateway.url, mock_url=mock.url)
    finally:
        if gateway is not None:
            gateway.stop()
        mock.stop()
