"""Installing openai-node for the interop suite: ``npm ci`` from the committed lock file.

A cold install (empty npm cache, slow registry) can take minutes, so it has its own bound and
the tests that wait for it get a pytest timeout above that bound plus the Node run: the suite's
120 s per test counts fixture set-up, and must not cut the install.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import NoReturn

import pytest

NODE_DIR = Path(__file__).resolve().parent / "node"
NPM_CI_TIMEOUT_SECONDS = 300
NODE_RUN_TIMEOUT_SECONDS = 120
NODE_TEST_TIMEOUT_SECONDS = NPM_CI_TIMEOUT_SECONDS + NODE_RUN_TIMEOUT_SECONDS + 60
# npm's own words for "the registry is out of reach" (DNS, refused, timed out, offline).
_NETWORK_ERRORS = (
    "ENOTFOUND",
    "EAI_AGAIN",
    "ECONNREFUSED",
    "ECONNRESET",
    "ETIMEDOUT",
    "ENETUNREACH",
)


def _skip_or_fail(reason: str) -> NoReturn:
    # CI must run the Node half: there a missing toolchain or registry is a failure.
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


def install() -> Path:
    """Run ``npm ci`` in ``NODE_DIR``; skip (fail under ``CI``) without node, npm or registry."""
    npm = shutil.which("npm")
    if npm is None or shutil.which("node") is None:
        _skip_or_fail("node/npm are not on PATH: the openai-node interop tests need Node 20+")
    # --prefer-offline: a warm npm cache installs without asking the registry (the lock file
    # pins versions and integrity hashes, so the cache cannot serve anything else).
    command = [npm, "ci", "--prefer-offline", "--no-audit", "--no-fund", "--loglevel=error"]
    try:
        done = subprocess.run(
            command, cwd=NODE_DIR, capture_output=True, text=True, timeout=NPM_CI_TIMEOUT_SECONDS
        )
    except subprocess.TimeoutExpired:
        _skip_or_fail(
            f"npm ci did not finish within {NPM_CI_TIMEOUT_SECONDS} s: the npm registry is "
            "unreachable or too slow to install openai-node"
        )
    if done.returncode != 0:
        output = done.stdout + done.stderr
        network = [line for line in output.splitlines() if any(c in line for c in _NETWORK_ERRORS)]
        if network:
            _skip_or_fail(f"npm cannot reach the registry to install openai-node: {network[0]}")
        pytest.fail(f"npm ci failed in {NODE_DIR}:\n{output[-2000:]}")
    return NODE_DIR
