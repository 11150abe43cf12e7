"""JSON-lines logging.

Redaction is structural: the access log is built from an explicit list of fields (ids, team,
model, numbers), never from headers or bodies, so the real key and client JWTs cannot reach a
log line. Lifecycle events go through the same formatter.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

from gateway import json_codec

ACCESS_LOGGER = "gateway.access"

_RESERVED = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _RESERVED and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json_codec.dumps(entry).decode()


def configure_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # aiohttp's own access log would duplicate ours, without team or tokens.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
