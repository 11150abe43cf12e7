"""What `make` installs for each target, and the package metadata setuptools builds from."""

from __future__ import annotations

import os
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def make_dry_run(target: str, venv: Path) -> list[str]:
    """The commands ``make TARGET`` would run on a fresh checkout (nothing is executed)."""
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    result = subprocess.run(
        ["make", "-n", target, f"VENV={venv}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        # A set secret keeps the Makefile from writing .dev-jwt-secret into the checkout.
        env={**os.environ, "GATEWAY_JWT_SECRET": "x" * 48},
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def installs(commands: list[str]) -> list[str]:
    return [c for c in commands if "pip install" in c and "--upgrade pip" not in c]


def test_make_run_installs_only_the_runtime_dependencies(tmp_path: Path) -> None:
    assert installs(make_dry_run("run", tmp_path / "venv")) == [
        f"{tmp_path / 'venv'}/bin/pip install --quiet -e ."
    ]
    assert installs(make_dry_run("token", tmp_path / "venv")) == [
        f"{tmp_path / 'venv'}/bin/pip install --quiet -e ."
    ]


@pytest.mark.parametrize("target", ["test", "lint"])
def test_make_test_and_lint_install_the_dev_extras(tmp_path: Path, target: str) -> None:
    commands = installs(make_dry_run(target, tmp_path / "venv"))
    assert commands == [f"{tmp_path / 'venv'}/bin/pip install --quiet -e '.[dev]'"]


def test_license_is_an_spdx_expression_with_a_setuptools_that_reads_it() -> None:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert data["project"]["license"] == "Apache-2.0"  # a table is deprecated by setuptools
    (requirement,) = [r for r in data["build-system"]["requires"] if r.startswith("setuptools")]
    assert requirement == "setuptools>=77"  # PEP 639 expressions need 77 or later
