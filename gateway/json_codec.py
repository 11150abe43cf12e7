"""JSON encode/decode: orjson when installed (several times faster on the hot path), stdlib else.

Both produce compact output; ``dumps`` returns bytes.
"""

from __future__ import annotations

import json
from typing import Any

try:
    import orjson
except ImportError:  # pragma: no cover - orjson is a declared dependency
    orjson = None  # type: ignore[assignment]

JSONDecodeError: tuple[type[Exception], ...]

if orjson is not None:
    JSONDecodeError = (orjson.JSONDecodeError, ValueError)

    def loads(data: bytes | str) -> Any:
        return orjson.loads(data)

    def dumps(obj: Any) -> bytes:
        return orjson.dumps(obj)

    def dumps_sorted(obj: Any) -> bytes:
        return orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)

else:  # pragma: no cover
    JSONDecodeError = (ValueError,)

    def loads(data: bytes | str) -> Any:
        return json.loads(data)

    def dumps(obj: Any) -> bytes:
        return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()

    def dumps_sorted(obj: Any) -> bytes:
        return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, sort_keys=True).encode()
