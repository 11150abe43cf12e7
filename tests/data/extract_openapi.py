"""Extract the component schemas the mock's answers are validated against.

Usage (from the repository root, with the official spec saved somewhere local)::

    .venv/bin/python tests/data/extract_openapi.py path/to/openapi.yaml

It writes ``tests/data/openapi_schemas.json``: the ``ROOTS`` below and every schema they
reach through ``$ref``, unmodified, so tests can resolve ``#/components/schemas/...`` refs
without the 3 MB spec. Re-run it when the spec is updated or a test needs another root.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import yaml

ROOTS = (
    "Batch",
    "CreateChatCompletionResponse",
    "CreateChatCompletionStreamResponse",
    "CreateCompletionResponse",
    "CreateEmbeddingResponse",
    "CreateModerationResponse",
    "CreateTranscriptionResponseJson",
    "CreateTranscriptionResponseStreamEvent",
    "CreateTranscriptionResponseVerboseJson",
    "CreateTranslationResponseJson",
    "ConversationResource",
    "DeletedConversationResource",
    "DeleteFileResponse",
    "ErrorResponse",
    "ImageEditCompletedEvent",
    "ImageGenCompletedEvent",
    "ImagesResponse",
    "ListBatchesResponse",
    "ListFilesResponse",
    "ListModelsResponse",
    "Model",
    "OpenAIFile",
    "Response",
    "ResponseItemList",
    "ResponseStreamEvent",
)
_PREFIX = "#/components/schemas/"


def _refs(node: Any) -> set[str]:
    found: set[str] = set()
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith(_PREFIX):
            found.add(ref[len(_PREFIX) :])
        for value in node.values():
            found |= _refs(value)
    elif isinstance(node, list):
        for value in node:
            found |= _refs(value)
    return found


def extract(spec: dict[str, Any]) -> dict[str, Any]:
    schemas: dict[str, Any] = spec["components"]["schemas"]
    keep: dict[str, Any] = {}
    todo = list(ROOTS)
    while todo:
        name = todo.pop()
        if name in keep:
            continue
        keep[name] = schemas[name]
        todo.extend(sorted(_refs(schemas[name]) - keep.keys()))
    return dict(sorted(keep.items()))


def main(argv: list[str]) -> int:
    source = Path(argv[1])
    raw = source.read_bytes()
    spec = yaml.safe_load(raw)
    out = {
        "source": {
            "file": source.name,
            "openapi": spec["openapi"],
            "info_version": spec["info"]["version"],
            "sha256": hashlib.sha256(raw).hexdigest(),
            "roots": list(ROOTS),
        },
        "components": {"schemas": extract(spec)},
    }
    target = Path(__file__).with_name("openapi_schemas.json")
    target.write_text(json.dumps(out, indent=1, sort_keys=False) + "\n")
    print(f"{target}: {len(out['components']['schemas'])} schemas", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
