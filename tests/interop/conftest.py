from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.interop.probes import MockFeatures, probe
from tests.interop.stack import Stack, running_stack

NODE_DIR = Path(__file__).resolve().parent / "node"
# npm's own words for "the registry is out of reach" (DNS, refused, timed out, offline).
_NETWORK_ERRORS = (
    "ENOTFOUND",
    "EAI_AGAIN",
    "ECONNREFUSED",
    "ECONNRESET",
    "ETIMEDOUT",
    "ENETUNREACH",
)


@pytest.fixture(scope="package")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """One mock upstream and one gateway for the whole interop suite (stopped after it, so
    they do not idle through the rest of the session)."""
    with running_stack(tmp_path_factory.mktemp("interop")) as running:
        yield running


@pytest.fixture(scope="package")
def features(stack: Stack) -> MockFeatures:
    return probe(stack.mock_url)


def _skip_or_fail(reason: str) -> None:
    # CI must run the Node half: there a missing toolchain or registry is a failure.
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def node_sdk() -> Path:
    """openai-node installed from the committed lock file, once per session."""
    npm = shutil.which("npm")
    if npm is None or shutil.which("node") is None:
        _skip_or_fail("node/npm are not on PATH: the openai-node interop tests need Node 20+")
    assert npm is not None
    done = subprocess.run(
        [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
        cwd=NODE_DIR,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if done.returncode != 0:
        output = done.stdout + done.stderr
        network = [line for line in output.splitlines() if any(c in line for c in _NETWORK_ERRORS)]
        if network:
            _skip_or_fail(f"npm cannot reach the registry to install openai-node: {network[0]}")
        pytest.fail(f"npm ci failed in {NODE_DIR}:\n{output[-2000:]}")
    return NODE_DIR
