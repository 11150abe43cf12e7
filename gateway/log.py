"""JSON-lines logging.

Redaction is structural: the access log is built from an explicit list of fields (ids, team,
model, numbers), never from headers or bodies, so the real key and client JWTs cannot reach a
log line. Lifecycle events go through the same formatter.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from typing import Any, TextIO

from aiohttp.http_exceptions import HttpProcessingError

from gateway import json_codec

ACCESS_LOGGER = "gateway.access"

_RESERVED = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line. Fields come from ``extra``; the access log passes them all
    in one ``fields`` dict, which skips scanning the record's attributes."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = record.__dict__.get("fields")
        if isinstance(fields, dict):
            entry.update(fields)
        else:
            for key, value in record.__dict__.items():
                if key not in _RESERVED and not key.startswith("_"):
                    entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json_codec.dumps(entry).decode()


class BufferedLineHandler(logging.Handler):
    """Collects lines and writes them in batches: one write per ``FLUSH_SECONDS`` (or
    ``FLUSH_BYTES``) instead of one system call per request. Warnings and errors, and lines
    logged outside an event loop, are written at once. A hard kill loses at most the last
    ``FLUSH_SECONDS`` of access lines."""

    FLUSH_SECONDS = 0.1
    FLUSH_BYTES = 64 * 1024

    def __init__(self, stream: TextIO) -> None:
        super().__init__()
        self.stream = stream
        self._lines: list[str] = []
        self._size = 0
        self._scheduled = False

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record) + "\n"
        except Exception:
            self.handleError(record)
            return
        self.add_line(line, urgent=record.levelno >= logging.WARNING)

    def add_line(self, line: str, *, urgent: bool = False) -> None:
        self._lines.append(line)
        self._size += len(line)
        if urgent or self._size >= self.FLUSH_BYTES:
            self.flush()
            return
        if not self._scheduled:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                self.flush()
                return
            self._scheduled = True
            loop.call_later(self.FLUSH_SECONDS, self.flush)

    def flush(self) -> None:
        self._scheduled = False
        if not self._lines:
            return
        data = "".join(self._lines)
        self._lines.clear()
        self._size = 0
        try:
            self.stream.write(data)
            self.stream.flush()
        except (OSError, ValueError):
            pass  # stderr closed: nowhere left to report it

    def close(self) -> None:
        self.flush()
        super().close()


class ParserErrorFilter(logging.Filter):
    """aiohttp logs an unparsable request with its exception, which quotes the offending line:
    a malformed ``Authorization`` header would put a team token in the log. Keep the event,
    drop the quote."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            event = record.getMessage()
            record.msg = "%s (malformed HTTP request: %s, details withheld)"
            record.args = (event, type(exc).__name__)
            record.exc_info = None
            record.exc_text = None
        return True


class AccessLog:
    """One JSON line per request.

    When the process logs through ``BufferedLineHandler`` (``gateway serve``), lines are
    serialised and queued directly, skipping ``logging``'s record machinery, which cost about
    a tenth of the gateway's CPU per request in the profile. Otherwise (tests, embedding) they
    go through the ``gateway.access`` logger as usual.
    """

    def __init__(self) -> None:
        self.direct: BufferedLineHandler | None = None
        self.logger = logging.getLogger(ACCESS_LOGGER)
        self._second = -1
        self._second_text = ""

    def write(self, fields: dict[str, Any]) -> None:
        direct = self.direct
        if direct is None:
            self.logger.info("request", extra={"fields": fields})
            return
        now = time.time()
        second = int(now)
        if second != self._second:  # the formatted second is reused within the second
            self._second = second
            self._second_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        entry = {
            "ts": f"{self._second_text}.{int(now % 1 * 1000):03d}Z",
            "level": "info",
            "logger": ACCESS_LOGGER,
            "msg": "request",
            **fields,
        }
        direct.add_line(json_codec.dumps(entry).decode() + "\n")


ACCESS = AccessLog()


def configure_logging(level: str) -> None:
    handler = BufferedLineHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    server_log = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, ParserErrorFilter) for f in server_log.filters):
        server_log.addFilter(ParserErrorFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    enabled = logging.getLogger(ACCESS_LOGGER).isEnabledFor(logging.INFO)
    ACCESS.direct = handler if enabled else None
    # aiohttp's own access log would duplicate ours, without team or tokens.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
