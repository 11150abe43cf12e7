"""Every error a client can see, and the one place that renders them.

The body is always OpenAI-shaped so the official SDKs raise the matching exception::

    GatewayError                      (base; status, type, code, param, headers)
    ├── InvalidRequestError           400  invalid_request_error  -> openai.BadRequestError
    ├── AuthenticationError           401  invalid_api_key        -> openai.AuthenticationError
    ├── PermissionDeniedError         403  model_not_allowed      -> openai.PermissionDeniedError
    ├── NotFoundError                 404                         -> openai.NotFoundError
    ├── RequestTooLargeError          413
    ├── UnsupportedMediaTypeError     415
    ├── QuotaExceededError            429  rate_limit_exceeded    -> openai.RateLimitError
    ├── InternalError                 500  server_error
    ├── UpstreamUnavailableError      502  upstream_unavailable   -> openai.InternalServerError
    ├── StoreUnavailableError         503  store_unavailable
    └── UpstreamTimeoutError          504  upstream_timeout

Only messages written here (or by the code raising these classes) reach a client: an
unexpected exception becomes a generic 500 that reveals nothing internal.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gateway import json_codec


class GatewayError(Exception):
    status: int = 500
    type: str = "server_error"
    code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        type: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        if type is not None:
            self.type = type
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


class InvalidRequestError(GatewayError):
    status = 400
    type = "invalid_request_error"


class AuthenticationError(GatewayError):
    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"


class PermissionDeniedError(GatewayError):
    status = 403
    type = "invalid_request_error"
    code = "model_not_allowed"


class NotFoundError(GatewayError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class MethodNotAllowedError(GatewayError):
    status = 405
    type = "invalid_request_error"
    code = "method_not_allowed"


class RequestTooLargeError(GatewayError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class UnsupportedMediaTypeError(GatewayError):
    status = 415
    type = "invalid_request_error"
    code = "unsupported_media_type"


class QuotaExceededError(GatewayError):
    status = 429
    type = "tokens"
    code = "rate_limit_exceeded"
    metric: str | None = None  # the quota metric that refused, for metrics
    reason: str | None = None  # exhausted | congested | concurrency, for metrics


class InternalError(GatewayError):
    status = 500
    type = "server_error"
    code = "internal_error"


class UpstreamUnavailableError(GatewayError):
    status = 502
    type = "server_error"
    code = "upstream_unavailable"


class StoreUnavailableError(GatewayError):
    status = 503
    type = "server_error"
    code = "store_unavailable"


class UpstreamTimeoutError(GatewayError):
    status = 504
    type = "server_error"
    code = "upstream_timeout"


def render_body(error: GatewayError) -> bytes:
    """The JSON body of an error response."""
    return json_codec.dumps(error.body())


def render_sse_event(error: GatewayError) -> bytes:
    """An error reported after a stream's headers were sent.

    Both SDKs raise ``APIError`` on a ``data:`` event whose JSON has a top-level ``error`` key.
    """
    return b"data: " + render_body(error) + b"\n\n"


def render_typed_sse_event(error: GatewayError, sequence_number: int) -> bytes:
    """The same for streams of typed events (Responses): an ``event: error`` whose data is a
    ``ResponseErrorEvent`` of the OpenAPI spec, which schema-validating clients accept."""
    event = {
        "type": "error",
        "sequence_number": sequence_number,
        "code": error.code,
        "message": error.message,
        "param": error.param,
    }
    return b"event: error\ndata: " + json_codec.dumps(event) + b"\n\n"
