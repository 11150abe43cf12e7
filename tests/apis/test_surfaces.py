"""Which operations capped teams may reach (``gateway.apis.surfaces``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.apis.surfaces import SURFACES, UNKNOWN, surface

OPERATIONS = Path(__file__).resolve().parent.parent / "data" / "openapi_operations.txt"


def spec_operations() -> list[tuple[str, str]]:
    rows = OPERATIONS.read_text().splitlines()
    return [(m, p) for m, _, p in (row.partition(" ") for row in rows)]


def test_every_operation_of_the_spec_has_a_group() -> None:
    unknown = [f"{m} {p}" for m, p in spec_operations() if surface(m, p) is UNKNOWN]
    assert not unknown, f"classify these in gateway/apis/surfaces.py: {unknown}"


def test_every_group_is_used_by_the_spec() -> None:
    used = {surface(m, p).group for m, p in spec_operations()}
    assert used == {s.group for s in SURFACES}


@pytest.mark.parametrize(
    ("method", "path", "treatment"),
    [
        ("POST", "/chat/completions", "metered"),
        ("POST", "/responses", "metered"),
        ("POST", "/responses?beta=true", "metered"),
        ("POST", "/embeddings/", "metered"),
        ("POST", "/images/generations", "metered"),
        ("GET", "/models", "free"),
        ("GET", "/responses/resp_1", "free"),
        ("GET", "/responses/resp_1/input_items", "free"),
        ("POST", "/responses/resp_1/cancel", "free"),
        ("POST", "/responses/input_tokens", "free"),
        ("POST", "/files", "free"),
        ("GET", "/files/file-1/content", "free"),
        ("DELETE", "/files/file-1", "free"),
        ("GET", "/batches", "free"),
        ("POST", "/batches", "metered"),
        ("POST", "/batches/batch_1/cancel", "free"),
        ("POST", "/threads/thread_1", "free"),
        ("POST", "/moderations", "free"),
        ("HEAD", "/models", "free"),
        ("POST", "/fine_tuning/jobs", "refused"),
        ("POST", "/threads/runs", "refused"),
        ("POST", "/threads/thread_1/runs", "refused"),
        ("POST", "/realtime/client_secrets", "refused"),
        ("POST", "/audio/transcriptions", "refused"),
        ("POST", "/images/edits", "refused"),
        ("POST", "/vector_stores/vs_1/file_batches", "refused"),
        ("POST", "/evals/e_1/runs", "refused"),
        ("POST", "/videos", "refused"),
        ("POST", "/videos/characters", "refused"),
        ("POST", "/responses/compact", "refused"),
        ("DELETE", "/organization/projects/p_1/spend_limit", "refused"),
        ("POST", "/something/new", "refused"),
        ("PUT", "/files/file-1", "refused"),
    ],
)
def test_treatment(method: str, path: str, treatment: str) -> None:
    assert surface(method, path).treatment == treatment


def test_every_group_says_why() -> None:
    assert all(s.why.endswith(".") and len(s.why) > 20 for s in (*SURFACES, UNKNOWN))
