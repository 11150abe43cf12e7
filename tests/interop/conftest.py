from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.interop import npm, python_clients
from tests.interop.stack import Stack, running_stack


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Whichever test first asks for openai-node pays for `npm ci` in its set-up.
    for item in items:
        if "node_sdk" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.timeout(npm.NODE_TEST_TIMEOUT_SECONDS))


@pytest.fixture(scope="package")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """One mock upstream and one gateway for the whole interop suite (stopped after it, so
    they do not idle through the rest of the session)."""
    with running_stack(tmp_path_factory.mktemp("interop")) as running:
        yield running


@pytest.fixture(autouse=True)
def _close_python_clients() -> Iterator[None]:
    yield
    python_clients.close_all()


@pytest.fixture(scope="session")
def node_sdk() -> Path:
    """openai-node installed from the committed lock file, once per session."""
    return npm.install()
