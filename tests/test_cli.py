"""The CLI commands that need only part of the config work without the rest of the environment."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jwt

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
