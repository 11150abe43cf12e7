"""The CLI commands that need only part of the config work without the rest of the environment."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import jwt

from gateway.mock import MockUpstream
from tests.support.gateway_proc import base_config
from tests.support.gateway_subprocess import GatewayProcess
from tests.support.redis_proc import free_port
from tests.test_quota_gateway import wait_until

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "config" / "gateway.yaml"
SECRET = "s" * 48


def run_cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``python -m gateway ARGS`` with none of the gateway's variables set, except ``env``."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "GATEWAY_"))}
    clean.pop("REDIS_URL", None)
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**clean, **env},
        timeout=60,
    )


def test_token_needs_only_the_jwt_secret() -> None:
    result = run_cli(
        "token", "--team", "research", "--config", str(EXAMPLE), GATEWAY_JWT_SECRET=SECRET
    )
    assert result.returncode == 0, result.stderr
    assert jwt.decode(result.stdout.strip(), SECRET, algorithms=["HS256"])["team"] == "research"
    assert "OPENAI_API_KEY" not in result.stderr


def test_token_without_the_jwt_secret_names_the_variable() -> None:
    result = run_cli("token", "--team", "research", "--config", str(EXAMPLE))
    assert result.returncode == 1
    assert "auth.hs_secret: environment variable GATEWAY_JWT_SECRET is not set" in result.stderr
    assert "OPENAI_API_KEY" not in result.stderr  # the token does not need it
    assert result.stdout == ""


def test_check_config_warns_about_every_unset_variable_and_exits_zero() -> None:
    result = run_cli("check-config", str(EXAMPLE))
    assert result.returncode == 0, result.stderr
    assert "warning: upstream.api_key: environment variable OPENAI_API_KEY is not set" in (
        result.stderr
    )
    assert "warning: auth.hs_secret: environment variable GATEWAY_JWT_SECRET is not set" in (
        result.stderr
    )
    assert "error" not in result.stderr
    assert "OK" in result.stdout and "2 environment variable(s) unset" in result.stdout


def test_check_config_require_env_makes_unset_variables_errors() -> None:
    result = run_cli("check-config", "--require-env", str(EXAMPLE))
    assert result.returncode == 1
    assert "error: upstream.api_key: environment variable OPENAI_API_KEY is not set" in (
        result.stderr
    )
    full = run_cli(
        "check-config",
        "--require-env",
        str(EXAMPLE),
        OPENAI_API_KEY="sk-x",
        GATEWAY_JWT_SECRET=SECRET,
    )
    assert full.returncode == 0, full.stderr
    assert full.stderr == ""


def test_check_config_reports_real_errors_next_to_unset_variables(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        json.dumps(
            {
                "upstream": {"api_key": "${OPENAI_API_KEY}"},
                "auth": {"hs_secret": "${GATEWAY_JWT_SECRET}"},
                "server": {"port": "${GATEWAY_PORT}", "max_body_bytes": "lots"},
                "teams": {"ml": {}},
            }
        )
    )
    result = run_cli("check-config", str(bad))
    assert result.returncode == 1
    assert "server.max_body_bytes" in result.stderr
    # Errors caused by a missing variable are reported as that variable, once.
    assert "server.port: environment variable GATEWAY_PORT is not set" in result.stderr
    assert "server.port: Input should be" not in result.stderr
    assert "auth.hs_secret: Value error" not in result.stderr


async def _ready(port: int) -> bool:
    try:
        async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{port}/readyz") as r:
            return r.status == 200
    except aiohttp.ClientConnectionError:
        return False


async def test_serve_host_and_port_flags_win_over_the_file_and_the_environment(
    upstream: MockUpstream, tmp_path: Path
) -> None:
    file_port, env_port, flag_port = free_port(), free_port(), free_port()
    config = base_config(
        upstream.url, server={"host": "${GATEWAY_HOST}", "port": "${GATEWAY_PORT}"}
    )
    config["server"]["config_poll_seconds"] = 0.05
    path = tmp_path / "gw.yaml"
    path.write_text(json.dumps(config))
    log_path = tmp_path / "gw.log"
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "GATEWAY_"))}
    env = {**clean, "GATEWAY_HOST": "192.0.2.1", "GATEWAY_PORT": str(env_port)}
    args = ["serve", "--config", str(path), "--host", "127.0.0.1", "--port", str(flag_port)]
    with log_path.open("wb") as log:
        # Popen only forks; readiness is awaited below.
        process = subprocess.Popen(  # noqa: ASYNC220
            [sys.executable, "-m", "gateway", *args],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        await wait_until(lambda: _ready(flag_port), within_seconds=20)
        assert not await _ready(env_port) and not await _ready(file_port)
        # A reload keeps the flags: the listen address is not reported as changed.
        config["teams"]["extra"] = {}
        path.write_text(json.dumps(config))

        async def reloaded() -> bool:
            return "config reloaded" in log_path.read_text()

        await wait_until(reloaded)
        line = next(x for x in log_path.read_text().splitlines() if "config reloaded" in x)
        assert "server" not in (json.loads(line).get("needs_restart") or [])
        assert await _ready(flag_port)
        process.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(process.wait, 20) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)


def test_serve_rejects_an_invalid_port_flag(tmp_path: Path) -> None:
    result = run_cli(
        "serve",
        "--config",
        str(EXAMPLE),
        "--port",
        "70000",
        OPENAI_API_KEY="sk-x",
        GATEWAY_JWT_SECRET=SECRET,
    )
    assert result.returncode == 1
    assert "--host/--port" in result.stderr and "port" in result.stderr


async def test_a_repeated_sigterm_during_shutdown_still_exits_zero(
    upstream: MockUpstream, tmp_path: Path
) -> None:
    """Orchestrators resend SIGTERM; one arriving after the drain, while the process exits,
    must not turn a clean exit into death by signal (-15)."""
    gw = GatewayProcess(base_config(upstream.url), tmp_path)
    try:
        await gw.start()
        assert gw.process is not None
        process = gw.process

        def resend_until_exit() -> int:
            while process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGTERM)
                time.sleep(0.001)  # a stream of signals, not a wait on anything
            return process.wait()

        assert await asyncio.to_thread(resend_until_exit) == 0
    finally:
        gw.stop()
