"""The mock's own error: an OpenAI-shaped JSON body with any status a test asks for."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class MockError(Exception):
    """Rendered as ``{"error": {"message", "type", "param", "code"}}`` with ``status``."""

    def __init__(
        self,
        status: int,
        message: str,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param
        self.headers: dict[str, str] = dict(headers or {})

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


def invalid(message: str, *, param: str | None = None, code: str | None = None) -> MockError:
    """A 400 ``invalid_request_error``, the most common complaint."""
    return MockError(400, message, "invalid_request_error", code, param)


def not_found(message: str, *, param: str | None = None, code: str | None = None) -> MockError:
    return MockError(404, message, "invalid_request_error", code, param)
