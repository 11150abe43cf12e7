from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.config import config_json_schema
from gateway.config_loader import ConfigError, load_config, parse_config

ROOT = Path(__file__).resolve().parents[1]
SECRET = "x" * 40


def minimal(**extra: object) -> dict[str, object]:
    data: dict[str, object] = {
        "upstream": {"api_key": "sk-real"},
        "auth": {"hs_secret": SECRET},
        "teams": {"ml": {"models": ["gpt-4o*"]}},
    }
    data.update(extra)
    return data


def test_example_config_is_valid() -> None:
    config = load_config(
        ROOT / "config" / "gateway.yaml",
        env={"OPENAI_API_KEY": "sk-x", "GATEWAY_JWT_SECRET": SECRET},
    )
    assert config.store.redis_url is None  # REDIS_URL unset -> embedded store
    assert config.server.port == 8080
    assert "research" in config.teams


def test_schema_file_matches_models() -> None:
    on_disk = json.loads((ROOT / "config" / "gateway.schema.json").read_text())
    assert on_disk == json.loads(json.dumps(config_json_schema())), (
        "config/gateway.schema.json is stale: run "
        "`gateway config-schema > config/gateway.schema.json`"
    )


def test_error_names_the_exact_path_of_a_bad_list_item() -> None:
    data = minimal(teams={"ml": {"models": ["gpt-4o", "o3", ""]}})
    with pytest.raises(ConfigError) as info:
        parse_config(data, source="gw.yaml", env={})
    assert "gw.yaml" in str(info.value)
    assert "teams.ml.models[2]" in str(info.value)


def test_unknown_keys_are_errors() -> None:
    data = minimal(upstream={"api_key": "sk", "base_urll": "http://x"})
    with pytest.raises(ConfigError, match=r"upstream\.base_urll: Extra inputs are not permitted"):
        parse_config(data, env={})


def test_bad_team_name_is_reported() -> None:
    with pytest.raises(ConfigError, match=r"teams\.bad team"):
        parse_config(minimal(teams={"bad team": {}}), env={})


def test_env_substitution_with_defaults_and_escape() -> None:
    data = minimal(
        upstream={
            "api_key": "${KEY}",
            "base_url": "${BASE:-http://up.example/v1}",
            "organization": "$${literal}",
        }
    )
    config = parse_config(data, env={"KEY": "sk-from-env"})
    assert config.upstream.api_key.get_secret_value() == "sk-from-env"
    assert str(config.upstream.base_url) == "http://up.example/v1"
    assert config.upstream.organization == "${literal}"


def test_missing_env_var_names_path_and_variable() -> None:
    data = minimal(upstream={"api_key": "${NOPE_NOT_SET}"})
    with pytest.raises(
        ConfigError, match=r"upstream\.api_key: environment variable NOPE_NOT_SET is not set"
    ):
        parse_config(data, source="f.yaml", env={})


def test_secrets_do_not_print() -> None:
    config = parse_config(minimal(), env={})
    assert "sk-real" not in repr(config)
    assert SECRET not in str(config.model_dump())


def test_short_hmac_secret_rejected() -> None:
    with pytest.raises(
        ConfigError, match=r"auth\.hs_secret: Value error, must be at least 32 bytes"
    ):
        parse_config(minimal(auth={"hs_secret": "short"}), env={})


def test_asymmetric_algorithm_needs_a_key() -> None:
    with pytest.raises(ConfigError, match="public_key or jwks_url is required"):
        parse_config(minimal(auth={"algorithms": ["RS256"]}), env={})


def test_invalid_yaml_reports_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("upstream:\n  api_key: [unclosed\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: not valid YAML \(line"):
        load_config(bad, env={})


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=60,
    )


def test_check_config_cli_exit_codes(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(json.dumps(minimal()))
    assert run_cli("check-config", str(good)).returncode == 0
    bad = tmp_path / "bad.yaml"
    bad.write_text(json.dumps(minimal(teams={"ml": {"models": [1, ""]}})))
    result = run_cli("check-config", str(bad))
    assert result.returncode == 1
    assert "teams.ml.models[1]" in result.stderr


def test_token_cli_mints_a_token_the_gateway_accepts(tmp_path: Path) -> None:
    import jwt

    cfg = tmp_path / "gw.yaml"
    cfg.write_text(json.dumps(minimal()))
    result = run_cli("token", "--team", "ml", "--ttl", "1h", "--config", str(cfg))
    assert result.returncode == 0, result.stderr
    claims = jwt.decode(result.stdout.strip(), SECRET, algorithms=["HS256"])
    assert claims["team"] == "ml"
    assert claims["exp"] - claims["iat"] == 3600
    unknown = run_cli("token", "--team", "nobody", "--config", str(cfg))
    assert unknown.returncode == 1
