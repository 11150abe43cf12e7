"""The gateway as a real process (`python -m gateway serve`), for multi-replica and crash tests."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp

from tests.support.redis_proc import free_port

ROOT = Path(__file__).resolve().parents[2]


class GatewayProcess:
    def __init__(self, config: dict[str, Any], workdir: Path, name: str = "gw") -> None:
        self.port = free_port()
        config = {
            **config,
            "server": {**config.get("server", {}), "host": "127.0.0.1", "port": self.port},
        }
        self.config_path = workdir / f"{name}.yaml"
        self.config_path.write_text(json.dumps(config))  # JSON is YAML
        self.log_path = workdir / f"{name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def start(self, within_seconds: float = 20.0) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "GATEWAY_"))}
        with self.log_path.open("wb") as log:
            # Popen only forks; waiting for readiness below is asynchronous.
            self.process = subprocess.Popen(  # noqa: ASYNC220
                [sys.executable, "-m", "gateway", "serve", "--config", str(self.config_path)],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within_seconds
        async with aiohttp.ClientSession() as session:
            while loop.time() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(f"gateway exited: {self.log()}")
                try:
                    async with session.get(f"http://127.0.0.1:{self.port}/readyz") as resp:
                        if resp.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.05)  # polling a process start, not synchronising test logic
        raise RuntimeError(f"gateway did not become ready: {self.log()}")

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)

    def terminate(self, timeout: float = 30.0) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout)

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()

    def log(self) -> str:
        return self.log_path.read_text()[-3000:] if self.log_path.exists() else ""
