"""A throwaway Prometheus server (Debian's `prometheus` package) and its `promtool`.

The server gets its own config, TSDB directory and loopback port, so it never touches a
machine-wide Prometheus. Everything that waits is asynchronous: the gateways it scrapes run
in the test's event loop, which must keep serving while the test waits on Prometheus.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from tests.support.redis_proc import free_port

MISSING = "prometheus and promtool are not on PATH (make test installs Debian's prometheus package)"


def binaries() -> tuple[str, str] | None:
    """(prometheus, promtool), or None when either is missing."""
    prometheus, promtool = shutil.which("prometheus"), shutil.which("promtool")
    if prometheus is None or promtool is None:
        return None
    return prometheus, promtool


async def run_promtool(
    *args: str, stdin: bytes | None = None, cwd: Path | None = None
) -> tuple[int, str]:
    """Run promtool without blocking the event loop; returns (exit code, stdout + stderr)."""
    found = binaries()
    assert found is not None, MISSING
    proc = await asyncio.create_subprocess_exec(
        found[1],
        *args,
        stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        cwd=cwd,
    )
    out, _ = await asyncio.wait_for(proc.communicate(stdin), timeout=60)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


class PrometheusError(RuntimeError):
    pass


@dataclass
class PrometheusProcess:
    """`prometheus` scraping ``targets`` (host:port) under one job every ``scrape_interval``."""

    workdir: Path
    targets: list[str]
    job: str = "gateway"
    scrape_interval: str = "1s"
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def write_config(self) -> Path:
        config = {
            "global": {
                "scrape_interval": self.scrape_interval,
                "scrape_timeout": self.scrape_interval,
                "evaluation_interval": self.scrape_interval,
            },
            "scrape_configs": [
                {
                    "job_name": self.job,
                    "metrics_path": "/metrics",
                    "static_configs": [{"targets": self.targets}],
                }
            ],
        }
        path = self.workdir / "prometheus.yml"
        path.write_text(json.dumps(config, indent=2))  # JSON is YAML
        return path

    async def start(self, within_seconds: float = 20.0) -> None:
        found = binaries()
        if found is None:
            raise PrometheusError(MISSING)
        config = self.write_config()
        data = self.workdir / "data"
        data.mkdir(exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("PROMETHEUS")}
        with self.log_path.open("wb") as log:
            # Popen only forks; waiting for readiness below is asynchronous.
            self.process = subprocess.Popen(  # noqa: ASYNC220
                [
                    found[0],
                    f"--config.file={config}",
                    f"--storage.tsdb.path={data}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--storage.tsdb.retention.time=1h",
                    "--log.level=warn",
                ],
                cwd=self.workdir,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within_seconds
        async with aiohttp.ClientSession() as session:
            while loop.time() < deadline:
                if self.process.poll() is not None:
                    raise PrometheusError(f"prometheus exited: {self.log_tail()}")
                try:
                    async with session.get(f"{self.url}/-/ready") as resp:
                        if resp.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.05)  # polling a process start, not synchronising test logic
        raise PrometheusError(f"prometheus did not become ready: {self.log_tail()}")

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self.process = None

    @property
    def log_path(self) -> Path:
        return self.workdir / "prometheus.log"

    def log_tail(self) -> str:
        return self.log_path.read_text()[-3000:] if self.log_path.exists() else "(no log)"

    # --- the HTTP API ----------------------------------------------------------------------------

    async def api(self, path: str, params: dict[str, str] | list[tuple[str, str]]) -> Any:
        """GET /api/v1/<path>; the whole JSON answer, whatever its status."""
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{self.url}/api/v1/{path}", params=params) as resp,
        ):
            body: Any = await resp.json(content_type=None)
            return body

    async def query(self, expr: str, at: float | None = None) -> Any:
        """An instant query: the JSON answer (status, data.resultType, data.result, error)."""
        params = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        return await self.api("query", params)

    async def vector(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        answer = await self.query(expr, at)
        if answer.get("status") != "success":
            raise PrometheusError(f"{expr}: {answer.get('errorType')}: {answer.get('error')}")
        result: list[dict[str, Any]] = answer["data"]["result"]
        return result

    async def last_scrapes(self) -> dict[str, float]:
        """instance -> timestamp of its latest scrape (the `up` sample's time)."""
        result = await self.vector(f'timestamp(up{{job="{self.job}"}})')
        return {r["metric"]["instance"]: float(r["value"][1]) for r in result}

    async def wait_scraped_after(self, moment: float, within_seconds: float = 15.0) -> float:
        """Wait until every target has been scraped after ``moment`` (a time.time() value);
        returns the oldest of those scrapes' timestamps. Bounded; polls the API."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within_seconds
        seen: dict[str, float] = {}
        while loop.time() < deadline:
            seen = await self.last_scrapes()
            if len(seen) == len(self.targets) and min(seen.values()) > moment:
                down = await self.vector(f'up{{job="{self.job}"}} == 0')
                if down:
                    raise PrometheusError(f"targets down: {down}; {self.log_tail()}")
                return min(seen.values())
            await asyncio.sleep(0.1)  # polling Prometheus's API until the scrape happened
        raise PrometheusError(
            f"no scrape of every target after {moment} within {within_seconds}s "
            f"(last scrapes {seen}, now {time.time()}): {self.log_tail()}"
        )
