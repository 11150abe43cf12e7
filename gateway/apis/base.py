"""The one interface every OpenAI API module implements, and the request facts it extracts.

Everything the gateway knows about an API lives in that API's module (``chat.py``,
``responses.py``, ...): how to read a request, how to rewrite it (output limit, reasoning
effort, usage requested), where its usage is (JSON body, stream events), how its streams end
and fail, and what makes it uncacheable. The rest of the gateway asks the spec and never
branches on which API it is. All of it is pure: no I/O.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from gateway.apis.fields import EFFORT_SET
from gateway.apis.usage import Usage, decode_object, read_usage
from gateway.errors import GatewayError, render_sse_event

#: Why an API refuses to cache a request whatever its sampling (a metric label: a fixed set).
CacheRefusal = Literal["other", "stateful", "store", "images"]


class StreamFormat(enum.Enum):
    """How an API's event stream is shaped, which decides how the SSE meter reads it."""

    #: ``data:`` events only, ending with ``data: [DONE]``; usage in a chunk of its own, sent
    #: only when the client asks (``stream_options.include_usage``). Chat, Completions.
    DATA_ONLY = "data_only"
    #: Typed events (``event:`` lines or a leading ``"type"``); the terminal event carries the
    #: usage. Responses, Images.
    TYPED = "typed"
    #: Unknown (passthrough): best effort, the last usage seen wins.
    MIXED = "mixed"


class CacheOptions(Protocol):
    """The cache settings an API's cacheability depends on."""

    @property
    def responses_with_store(self) -> bool: ...
    @property
    def images(self) -> bool: ...


class ModelLimits(Protocol):
    """What an API's output defaults depend on (a ``config.ModelProfile``)."""

    @property
    def default_output_tokens(self) -> int: ...
    @property
    def min_output_tokens(self) -> int: ...


@dataclass(frozen=True, slots=True)
class RequestInfo:
    api: ApiSpec
    model: str | None
    stream: bool
    #: The output limit the client sent (for Chat with both fields, the smaller one).
    max_output_tokens: int | None
    #: The field ``with_output_limit`` writes; ``None`` for APIs without an output limit.
    output_limit_field: str | None
    reasoning_effort: str | None
    #: The client itself asked for the usage chunk of a Chat/Completions stream. Always
    #: ``False`` for non-streaming requests and for other APIs.
    include_usage: bool
    #: How many outputs the request produces (Completions: ``max(n, best_of)``).
    n: int
    temperature: float | None
    #: The ``service_tier`` asked for (auto, default, flex, priority), which prices it.
    service_tier: str | None = None

    @property
    def hides_usage(self) -> bool:
        """The gateway asks for the usage chunk this stream's client did not ask for, and hides
        it again, so the client gets exactly what OpenAI would have sent it."""
        return (
            self.stream
            and self.api.stream_format is StreamFormat.DATA_ONLY
            and not self.include_usage
        )


class ApiSpec:
    """Defaults describe an API the gateway does not meter; each API module overrides them."""

    #: The ``endpoint`` label in metrics and the access log.
    name: str = "other"
    #: The POST path (relative to ``/v1``) this API owns; ``None`` for passthrough.
    path: str | None = None
    metered: bool = False
    stream_format: StreamFormat = StreamFormat.MIXED
    #: Its usage object's key prefixes: ``prompt``/``completion`` or ``input``/``output``.
    usage_keys: tuple[str, str] = ("prompt", "completion")
    #: It produces output tokens, so output budgets are reserved and limits written.
    produces_output: bool = False
    #: Its output depends on sampling: cacheable only when deterministic (or forced).
    sampled: bool = False
    #: Where the reasoning effort goes, for error messages; ``None`` when it has none.
    effort_param: str | None = None

    def __repr__(self) -> str:
        return f"<api {self.name}>"

    # -- requests ------------------------------------------------------------------------------

    def parse(self, body: object) -> RequestInfo:
        """Validate the fields the gateway acts on and extract them (400 on a wrong type)."""
        # Passthrough requests are never rejected by the gateway: the upstream owns them.
        model = None
        if isinstance(body, dict):
            value = body.get("model")
            if isinstance(value, str) and value:
                model = value
        return RequestInfo(self, model, False, None, None, None, False, 1, None)

    def with_output_limit(
        self, info: RequestInfo, body: dict[str, Any], limit: int
    ) -> dict[str, Any]:
        """Cap the request's output at ``limit`` tokens; returns ``body`` itself if unchanged.

        The cap only ever tightens: a client that asked for fewer tokens keeps its own value.
        The input is never mutated (it may also serve as the cache key).
        """
        if limit < 1:
            raise ValueError(f"output limit must be >= 1, got {limit}")
        field = info.output_limit_field
        if field is None:
            return body
        if info.max_output_tokens is not None:
            limit = min(limit, info.max_output_tokens)
        if body.get(field) == limit:
            return body
        return {**body, field: limit}

    def with_usage_requested(self, info: RequestInfo, body: dict[str, Any]) -> dict[str, Any]:
        """Make a stream report its usage, for APIs where that is opt-in."""
        return body

    def with_reasoning_effort(
        self, info: RequestInfo, body: dict[str, Any], effort: str
    ) -> dict[str, Any]:
        """Set the reasoning effort (a policy capping cost); APIs without one are unchanged."""
        if effort not in EFFORT_SET:
            raise ValueError(f"unknown reasoning effort {effort!r}")
        return body

    def default_output_tokens(self, profile: ModelLimits) -> int:
        """The output budget of a request that set no limit."""
        return profile.default_output_tokens

    def min_output_tokens(self, profile: ModelLimits) -> int:
        """Below this an output limit is useless (or refused by the API): never clamp under."""
        return profile.min_output_tokens

    def runs_in_background(self, info: RequestInfo, body: dict[str, Any]) -> bool:
        """Does the upstream keep working after it answers (the request settles when the work
        finishes, not when this call ends)?"""
        return False

    # -- caching -------------------------------------------------------------------------------

    def cache_refusal(self, body: dict[str, Any], options: CacheOptions) -> CacheRefusal | None:
        """Why this request must never be cached whatever its sampling, or ``None``."""
        return "other"

    def json_complete(self, obj: dict[str, Any]) -> bool:
        """Is a successful JSON answer whole (worth storing)?"""
        return True

    # -- usage ---------------------------------------------------------------------------------

    def usage(self, usage: object) -> Usage | None:
        """The usage object of a response body or stream event, normalised."""
        return read_usage(usage, *self.usage_keys)

    def usage_from_json(self, body: bytes) -> Usage | None:
        """Usage of a complete (non-streaming) JSON response; ``None`` for anything unreadable.

        Never raises: a garbled upstream body must not turn a delivered response into a 500.
        """
        obj = decode_object(body)
        return None if obj is None else self.usage(obj.get("usage"))

    # -- streams -------------------------------------------------------------------------------

    def is_terminal_event(self, kind: bytes) -> bool:
        """Does an event of this type end the stream (TYPED and MIXED streams)?"""
        return False

    def stream_usage(self, event: dict[str, Any]) -> Usage | None:
        """The usage a (terminal) stream event carries."""
        return self.usage(event.get("usage"))

    def is_cacheable_end(self, kind: bytes | None) -> bool:
        """Does a stream whose terminal event has this type hold a whole answer?

        ``kind`` is ``None`` for DATA_ONLY streams, which end with ``data: [DONE]``.
        """
        return kind is None

    def stream_error_event(self, error: GatewayError, sequence_number: int) -> bytes:
        """The event that reports a failure after a stream's headers went out.

        The chat form: both SDKs raise ``APIError`` on a ``data:`` event whose JSON has a
        top-level ``error`` key.
        """
        return render_sse_event(error)
