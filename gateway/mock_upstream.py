"""An OpenAI-compatible fake upstream for demos, tests and load tests.

``gateway mock-upstream --port N --api-key K`` runs it; tests start it in-process with
:func:`start_mock_upstream`. Paths are served both under ``/v1`` and without it:

- ``POST /v1/chat/completions``   JSON ``chat.completion`` or SSE ``data:`` chunks + ``[DONE]``
- ``POST /v1/responses``          JSON ``response`` or SSE ``event:``/``data:``, no ``[DONE]``
- ``POST /v1/completions``        legacy ``text_completion``, same streaming rules as chat
- ``POST /v1/embeddings``         deterministic unit vectors (``float`` or ``base64``)
- ``POST /v1/images/generations`` a 1x1 PNG as ``b64_json`` (``usage`` for ``gpt-image*``)
- ``GET  /v1/models``, ``GET /v1/models/{id}``
- anything else: 404 with an OpenAI-shaped error body.

Content is a run of lorem-like words chosen from a CRC of the prompt text, so the same
prompt always gives the same text, streamed or not. One word is one token. Prompt tokens are
``max(1, characters // 4)`` over the message/input/prompt text (token arrays count one per
item). Default visible output is 12 tokens. Reasoning models (``o<digit>…`` or ``gpt-5…``)
also spend 16 reasoning tokens, which are spent first and count towards the output limit
(``max_completion_tokens``/``max_tokens`` for chat, ``max_tokens`` default 16 for
completions, ``max_output_tokens`` for responses). Hitting the limit gives
``finish_reason: "length"`` or ``status: "incomplete"``. Limits are not held to OpenAI's
minimums (e.g. ``max_output_tokens`` >= 16), so tests can use tiny ones.

Test hooks, read from request headers:

- ``x-mock-status: N`` (400-599): reply N with an OpenAI-shaped error body; a 429 carries
  ``retry-after: 1``. Checked after auth.
- ``x-mock-retry-after: S``: the ``retry-after`` value to send with ``x-mock-status``.
- ``x-mock-first-byte-delay-ms: N``: sleep before anything is sent (before auth, too).
- ``x-mock-chunk-delay-ms: N``: sleep between stream events (overrides the app default).
- ``x-mock-drop-after-chunks: N``: on a stream, abort the TCP connection after N SSE events
  (0 = right after the headers) without ending the chunked body. On a JSON reply, N=0
  aborts the connection before any byte is sent; other values are ignored there.
- ``x-mock-completion-tokens: N``: visible tokens to produce per choice (before the limit).
- ``x-mock-reasoning-tokens: N``: reasoning tokens per choice (reasoning models only).
- ``x-mock-gate: NAME``: a stream writes its first event, sets
  ``MockUpstream.gate(NAME).first_chunk_sent``, then waits for ``gate.release_event`` before
  writing the rest. Gates live in-process only (``app[GATES_KEY]``); a request naming a gate
  nobody releases waits until the server closes, which releases every gate.

Every reply has ``x-request-id: req_<hex>``, ``openai-processing-ms``,
``openai-organization: mock-org``, ``openai-version`` and ``x-ratelimit-*`` headers, so a
gateway test can check which ones it strips. Every request is recorded as a
:class:`RecordedRequest` in ``app[REQUESTS_KEY]`` (the newest 10,000 at least are kept).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import math
import os
import struct
import sys
import time
import zlib
from array import array
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from aiohttp import web

from gateway import json_codec
from gateway.errors import GatewayError, InvalidRequestError, NotFoundError

__all__ = [
    "GATES_KEY",
    "REQUESTS_KEY",
    "Gate",
    "MockUpstream",
    "RecordedRequest",
    "create_mock_app",
    "run_mock_upstream",
    "start_mock_upstream",
]

MAX_RECORDED = 10_000
# Trimming in batches keeps recording O(1) amortised instead of a memmove per request.
_TRIM_BATCH = 1_000
DEFAULT_COMPLETION_TOKENS = 12
DEFAULT_REASONING_TOKENS = 16
DEFAULT_EMBEDDING_DIMENSIONS = 8
MAX_EMBEDDING_DIMENSIONS = 8192
SYSTEM_FINGERPRINT = "fp_mock"


@dataclass(slots=True)
class RecordedRequest:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # lower-case names
    body: bytes
    json: dict[str, Any] | None  # the parsed body when it was a JSON object


@dataclass(slots=True)
class Gate:
    """Holds a stream after its first event until the test releases it."""

    release_event: asyncio.Event = field(default_factory=asyncio.Event)
    first_chunk_sent: asyncio.Event = field(default_factory=asyncio.Event)

    def release(self) -> None:
        self.release_event.set()


REQUESTS_KEY = web.AppKey("mock_upstream_requests", list[RecordedRequest])
GATES_KEY = web.AppKey("mock_upstream_gates", dict[str, Gate])

# --- precomputed content ---------------------------------------------------------------

_LOREM = (
    "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor "
    "incididunt ut labore et dolore magna aliqua enim ad minim veniam quis nostrud "
    "exercitation ullamco laboris nisi aliquip ex ea commodo consequat duis aute "
    "irure in reprehenderit voluptate velit esse cillum fugiat nulla pariatur "
    "excepteur sint occaecat cupidatat non proident sunt culpa qui officia deserunt "
    "mollit anim id est"
)
_WORDS = _LOREM.split()
_N_WORDS = len(_WORDS)
# Token k of a text: the first has no leading space, later ones do.
_FIRST = _WORDS
_NEXT = [" " + w for w in _WORDS]


def _chat_choice0(tok: str) -> bytes:
    return json_codec.dumps(
        [{"index": 0, "delta": {"content": tok}, "logprobs": None, "finish_reason": None}]
    )


def _completion_choice0(tok: str) -> bytes:
    return json_codec.dumps([{"text": tok, "index": 0, "logprobs": None, "finish_reason": None}])


# The common case (one choice) streams pre-serialised choice arrays.
_CHAT_FIRST = [_chat_choice0(t) for t in _FIRST]
_CHAT_NEXT = [_chat_choice0(t) for t in _NEXT]
_COMPL_FIRST = [_completion_choice0(t) for t in _FIRST]
_COMPL_NEXT = [_completion_choice0(t) for t in _NEXT]


def _tiny_png() -> bytes:
    def chunk(tag: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(tag + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", 1, 1, 8, 6, 0, 0, 0)  # 1x1, 8-bit RGBA
    idat = zlib.compress(b"\x00\x10\xa3\x7f\xff")  # filter byte + one pixel
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


PNG_B64 = base64.b64encode(_tiny_png()).decode()

_MODEL_IDS = (
    ("gpt-4o-mini", 1721172741),
    ("gpt-4o", 1715367049),
    ("gpt-4.1-mini", 1744318173),
    ("gpt-5-mini", 1754425928),
    ("gpt-5", 1754425777),
    ("o3-mini", 1737146383),
    ("o4-mini", 1744225351),
    ("gpt-3.5-turbo-instruct", 1692901427),
    ("text-embedding-3-small", 1705948997),
    ("text-embedding-3-large", 1705953180),
    ("gpt-image-1", 1745517030),
    ("dall-e-3", 1698785189),
)
_MODELS = {
    mid: {"id": mid, "object": "model", "created": created, "owned_by": "system"}
    for mid, created in _MODEL_IDS
}
_MODELS_BODY = json_codec.dumps({"object": "list", "data": list(_MODELS.values())})

_STATIC_HEADERS = {
    "openai-organization": "mock-org",
    "openai-version": "2020-10-01",
    "x-ratelimit-limit-requests": "10000",
    "x-ratelimit-limit-tokens": "30000000",
    "x-ratelimit-remaining-requests": "9999",
    "x-ratelimit-remaining-tokens": "29999000",
    "x-ratelimit-reset-requests": "6ms",
    "x-ratelimit-reset-tokens": "2ms",
    "access-control-expose-headers": "X-Request-ID",
}
_JSON = "application/json"
_SSE = "text/event-stream; charset=utf-8"

_BAD_JSON_MESSAGE = (
    "We could not parse the JSON body of your request. (HINT: This likely means you aren't "
    "using your HTTP library correctly. The OpenAI API expects a JSON payload, but what was "
    "sent was not valid JSON.)"
)
_ERROR_TEMPLATES: dict[int, tuple[str, str, str | None]] = {
    400: ("Mock bad request.", "invalid_request_error", None),
    401: ("Mock authentication failure.", "invalid_request_error", "invalid_api_key"),
    403: ("Mock permission denied.", "invalid_request_error", None),
    404: ("Mock not found.", "invalid_request_error", None),
    429: ("Rate limit reached for requests (mock).", "requests", "rate_limit_exceeded"),
    500: (
        "The server had an error while processing your request. Sorry about that!",
        "server_error",
        None,
    ),
    503: ("The engine is currently overloaded, please try again later", "server_error", None),
}


# --- small helpers ---------------------------------------------------------------------


def _hex_id(prefix: str) -> str:
    return prefix + os.urandom(12).hex()


def _is_reasoning_model(model: str) -> bool:
    return model.startswith("gpt-5") or (len(model) > 1 and model[0] == "o" and model[1].isdigit())


def _estimate_tokens(text: str) -> int:
    return max(1, len(text) // 4)


def _seed(text: str) -> int:
    return zlib.crc32(text.encode()) % _N_WORDS


def _word_indices(seed: int, count: int) -> range:
    return range(seed, seed + count)


def _tokens(seed: int, count: int) -> list[str]:
    return [
        _FIRST[w % _N_WORDS] if k == 0 else _NEXT[w % _N_WORDS]
        for k, w in enumerate(_word_indices(seed, count))
    ]


def _choice_seed(seed: int, index: int) -> int:
    # Different choices of one request say different things, deterministically.
    return (seed + 7 * index) % _N_WORDS


def _require_model(payload: dict[str, Any]) -> str:
    model = payload.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequestError(
            "you must provide a model parameter", param="model", code="missing_required_parameter"
        )
    return model


def _opt_int(payload: dict[str, Any], key: str, low: int, high: int | None = None) -> int | None:
    value = payload.get(key)
    if value is None:
        return None
    if type(value) is not int:
        raise InvalidRequestError(
            f"Invalid type for '{key}': expected an integer.", param=key, code="invalid_type"
        )
    if value < low or (high is not None and value > high):
        raise InvalidRequestError(
            f"Invalid '{key}': integer out of range ({value}).", param=key, code="invalid_value"
        )
    return value


def _collect_text(obj: Any, out: list[str]) -> None:
    """Append every text-bearing string in a Responses ``input`` (messages, parts, outputs)."""
    if isinstance(obj, str):
        out.append(obj)
    elif isinstance(obj, list):
        for item in obj:
            _collect_text(item, out)
    elif isinstance(obj, dict):
        for key in ("content", "text", "output", "arguments"):
            if key in obj:
                _collect_text(obj[key], out)


def _messages_text(messages: list[Any]) -> str:
    parts: list[str] = []
    for message in messages:
        if not isinstance(message, dict):
            raise InvalidRequestError(
                "Invalid 'messages': each message must be an object.",
                param="messages",
                code="invalid_type",
            )
        _collect_text(message.get("content"), parts)
    return "".join(parts)


def _chat_usage(prompt: int, completion: int, reasoning: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": reasoning,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def _stream_head(object_id: str, obj: str, created: int, model: str) -> bytes:
    """Everything of a chunk before its ``choices`` array; orjson keeps key order."""
    return (
        b'data: {"id":"'
        + object_id.encode()
        + b'","object":"'
        + obj.encode()
        + b'","created":'
        + str(created).encode()
        + b',"model":'
        + json_codec.dumps(model)
        + b',"service_tier":"default","system_fingerprint":"'
        + SYSTEM_FINGERPRINT.encode()
        + b'","choices":'
    )


def _sse_event(event_type: str, seq: int, fields: dict[str, Any]) -> bytes:
    payload = {"type": event_type, "sequence_number": seq, **fields}
    return b"event: " + event_type.encode() + b"\ndata: " + json_codec.dumps(payload) + b"\n\n"


@lru_cache(maxsize=4096)
def _embedding(key: str, dims: int) -> tuple[tuple[float, ...], str]:
    """A unit vector from SHAKE-128 of the input, as floats and as base64 float32.

    The floats are float32-rounded so the ``float`` and ``base64`` encodings decode equal.
    """
    raw = struct.unpack(f"<{dims}H", hashlib.shake_128(key.encode()).digest(2 * dims))
    values = [v / 32767.5 - 1.0 for v in raw]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    packed = array("f", [v / norm for v in values])
    floats = tuple(packed.tolist())
    if sys.byteorder == "big":
        packed.byteswap()
    return floats, base64.b64encode(packed.tobytes()).decode()


def _mock_error(status: int, retry_after: str | None) -> GatewayError:
    if not 400 <= status <= 599:
        raise InvalidRequestError("x-mock-status must be between 400 and 599.")
    message, err_type, code = _ERROR_TEMPLATES.get(
        status,
        (
            f"Mock error (status {status}).",
            "server_error" if status >= 500 else "invalid_request_error",
            None,
        ),
    )
    headers = {}
    if retry_after is not None:
        headers["retry-after"] = retry_after
    elif status == 429:
        headers["retry-after"] = "1"
    error = GatewayError(message, type=err_type, code=code, headers=headers)
    error.status = status
    return error


@dataclass(slots=True, frozen=True)
class _Budget:
    """Output tokens per choice after the limit is applied."""

    reasoning: int
    visible: int
    truncated: bool


# --- per-request context ---------------------------------------------------------------


class _Ctx:
    __slots__ = ("payload", "request", "request_id", "server", "started")

    def __init__(
        self, server: _MockServer, request: web.Request, payload: dict[str, Any], started: float
    ) -> None:
        self.server = server
        self.request = request
        self.payload = payload
        self.started = started
        self.request_id = _hex_id("req_")

    def hook_int(self, name: str) -> int | None:
        raw = self.request.headers.get(name)
        if raw is None:
            return None
        try:
            value = int(raw)
        except ValueError:
            raise InvalidRequestError(f"Header {name} must be an integer.") from None
        if value < 0:
            raise InvalidRequestError(f"Header {name} must not be negative.")
        return value

    def budget(self, model: str, limit: int | None) -> _Budget:
        visible = self.hook_int("x-mock-completion-tokens")
        if visible is None:
            visible = DEFAULT_COMPLETION_TOKENS
        reasoning = 0
        if _is_reasoning_model(model):
            hooked = self.hook_int("x-mock-reasoning-tokens")
            reasoning = DEFAULT_REASONING_TOKENS if hooked is None else hooked
        if limit is None or reasoning + visible <= limit:
            return _Budget(reasoning, visible, False)
        spent = min(reasoning, limit)
        return _Budget(spent, limit - spent, True)

    def headers(self, content_type: str) -> dict[str, str]:
        headers = dict(_STATIC_HEADERS)
        headers["Content-Type"] = content_type
        headers["x-request-id"] = self.request_id
        headers["openai-processing-ms"] = str(int((time.perf_counter() - self.started) * 1000))
        return headers

    def _abort(self) -> None:
        transport = self.request.transport
        if transport is not None:
            transport.abort()

    def json_body(self, body: bytes, status: int = 200) -> web.Response:
        if self.hook_int("x-mock-drop-after-chunks") == 0:
            # aiohttp's own write then fails on the closed transport and is logged at debug.
            self._abort()
        return web.Response(body=body, status=status, headers=self.headers(_JSON))

    def json(self, obj: Any) -> web.Response:
        return self.json_body(json_codec.dumps(obj))

    def error(self, exc: GatewayError) -> web.Response:
        headers = self.headers(_JSON)
        headers.update(exc.headers)
        return web.Response(body=json_codec.dumps(exc.body()), status=exc.status, headers=headers)

    async def stream(self, events: Iterable[bytes]) -> web.StreamResponse:
        delay_ms = self.hook_int("x-mock-chunk-delay-ms")
        delay = self.server.chunk_delay if delay_ms is None else delay_ms / 1000
        drop_after = self.hook_int("x-mock-drop-after-chunks")
        gate_name = self.request.headers.get("x-mock-gate")
        gate = self.server.gates.setdefault(gate_name, Gate()) if gate_name else None

        resp = web.StreamResponse(status=200, headers=self.headers(_SSE))
        await resp.prepare(self.request)
        sent = 0
        try:
            if drop_after == 0:
                self._abort()
                return resp
            for event in events:
                if sent and delay > 0:
                    await asyncio.sleep(delay)
                await resp.write(event)
                sent += 1
                if sent == 1 and gate is not None:
                    await self.request.writer.drain()
                    gate.first_chunk_sent.set()
                    await gate.release_event.wait()
                if sent == drop_after:
                    self._abort()
                    return resp
            await resp.write_eof()
        except ConnectionError:
            # The client went away. Returning (not raising) lets aiohttp log it at debug level.
            pass
        return resp


Endpoint = Callable[[_Ctx], Awaitable[web.StreamResponse]]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


# --- the server ------------------------------------------------------------------------


class _MockServer:
    def __init__(self, api_key: str | None, chunk_delay: float) -> None:
        self.expected_auth = None if api_key is None else f"Bearer {api_key}"
        self.chunk_delay = chunk_delay
        self.requests: list[RecordedRequest] = []
        self.gates: dict[str, Gate] = {}

    def route(self, endpoint: Endpoint, *, json_body: bool) -> Handler:
        async def handler(request: web.Request) -> web.StreamResponse:
            return await self.handle(request, endpoint, json_body)

        return handler

    async def handle(
        self, request: web.Request, endpoint: Endpoint, json_body: bool
    ) -> web.StreamResponse:
        started = time.perf_counter()
        body = await request.read()
        parsed: Any = None
        bad_json = False
        if body:
            try:
                parsed = json_codec.loads(body)
            except json_codec.JSONDecodeError:
                bad_json = True
        payload = parsed if type(parsed) is dict else None
        self._record(
            RecordedRequest(
                request.method,
                request.path,
                dict(request.query),
                {k.lower(): v for k, v in request.headers.items()},
                body,
                payload,
            )
        )
        ctx = _Ctx(self, request, payload or {}, started)
        try:
            delay_ms = ctx.hook_int("x-mock-first-byte-delay-ms")
            if delay_ms:
                await asyncio.sleep(delay_ms / 1000)
            self._check_auth(request)
            status = ctx.hook_int("x-mock-status")
            if status is not None:
                raise _mock_error(status, request.headers.get("x-mock-retry-after"))
            if json_body and (bad_json or (body and payload is None)):
                raise InvalidRequestError(_BAD_JSON_MESSAGE)
            return await endpoint(ctx)
        except GatewayError as exc:
            return ctx.error(exc)

    def _record(self, rec: RecordedRequest) -> None:
        log = self.requests
        log.append(rec)
        if len(log) > MAX_RECORDED + _TRIM_BATCH:
            del log[: len(log) - MAX_RECORDED]

    def _check_auth(self, request: web.Request) -> None:
        if self.expected_auth is None:
            return
        got = request.headers.get("Authorization")
        if got == self.expected_auth:
            return
        if not got:
            message = (
                "You didn't provide an API key. You need to provide your API key in an "
                "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
            )
        else:
            key = got.removeprefix("Bearer ").strip()
            masked = key[:3] + "*" * 8 + key[-4:] if len(key) > 8 else "*" * len(key)
            message = (
                f"Incorrect API key provided: {masked}. You can find your API key at "
                "https://platform.openai.com/account/api-keys."
            )
        error = GatewayError(message, type="invalid_request_error", code="invalid_api_key")
        error.status = 401
        raise error

    # --- endpoints ---------------------------------------------------------------------

    async def chat(self, ctx: _Ctx) -> web.StreamResponse:
        p = ctx.payload
        model = _require_model(p)
        messages = p.get("messages")
        if not isinstance(messages, list) or not messages:
            raise InvalidRequestError(
                "Missing required parameter: 'messages'.",
                param="messages",
                code="missing_required_parameter",
            )
        text = _messages_text(messages)
        limit = _opt_int(p, "max_completion_tokens", 1)
        if limit is None:
            limit = _opt_int(p, "max_tokens", 1)
        n = _opt_int(p, "n", 1, 128) or 1
        budget = ctx.budget(model, limit)
        seed = _seed(text)
        finish = "length" if budget.truncated else "stop"
        per_choice = budget.reasoning + budget.visible
        usage = _chat_usage(_estimate_tokens(text), n * per_choice, n * budget.reasoning)
        completion_id = _hex_id("chatcmpl-")
        created = int(time.time())
        if p.get("stream") is True:
            head = _stream_head(completion_id, "chat.completion.chunk", created, model)
            return await ctx.stream(
                _chat_events(head, n, seed, budget.visible, finish, _include_usage(p), usage)
            )
        choices: list[dict[str, Any]] = [
            {
                "index": i,
                "message": {
                    "role": "assistant",
                    "content": "".join(_tokens(_choice_seed(seed, i), budget.visible)),
                    "refusal": None,
                    "annotations": [],
                },
                "logprobs": None,
                "finish_reason": finish,
            }
            for i in range(n)
        ]
        return ctx.json(
            {
                "id": completion_id,
                "object": "chat.completion",
                "created": created,
                "model": model,
                "choices": choices,
                "usage": usage,
                "service_tier": "default",
                "system_fingerprint": SYSTEM_FINGERPRINT,
            }
        )

    async def completions(self, ctx: _Ctx) -> web.StreamResponse:
        p = ctx.payload
        model = _require_model(p)
        prompts = _completion_prompts(p.get("prompt"))
        limit = _opt_int(p, "max_tokens", 1)
        n = _opt_int(p, "n", 1, 128) or 1
        budget = ctx.budget(model, 16 if limit is None else limit)
        finish = "length" if budget.truncated else "stop"
        prompt_tokens = 0
        seeds: list[int] = []
        for prompt in prompts:
            if isinstance(prompt, str):
                prompt_tokens += _estimate_tokens(prompt)
                base = _seed(prompt)
            else:
                prompt_tokens += len(prompt)
                base = _seed(repr(prompt))
            seeds.extend(_choice_seed(base, j) for j in range(n))
        per_choice = budget.reasoning + budget.visible
        usage = _chat_usage(prompt_tokens, len(seeds) * per_choice, len(seeds) * budget.reasoning)
        completion_id = _hex_id("cmpl-")
        created = int(time.time())
        if p.get("stream") is True:
            head = _stream_head(completion_id, "text_completion", created, model)
            return await ctx.stream(
                _completion_events(head, seeds, budget.visible, finish, _include_usage(p), usage)
            )
        return ctx.json(
            {
                "id": completion_id,
                "object": "text_completion",
                "created": created,
                "model": model,
                "choices": [
                    {
                        "text": "".join(_tokens(s, budget.visible)),
                        "index": i,
                        "logprobs": None,
                        "finish_reason": finish,
                    }
                    for i, s in enumerate(seeds)
                ],
                "usage": usage,
                "system_fingerprint": SYSTEM_FINGERPRINT,
            }
        )

    async def responses(self, ctx: _Ctx) -> web.StreamResponse:
        p = ctx.payload
        model = _require_model(p)
        texts: list[str] = []
        instructions = p.get("instructions")
        if isinstance(instructions, str):
            texts.append(instructions)
        input_texts: list[str] = []
        _collect_text(p.get("input"), input_texts)
        text = "".join(input_texts)
        input_tokens = _estimate_tokens("".join(texts) + text)
        limit = _opt_int(p, "max_output_tokens", 1)
        budget = ctx.budget(model, limit)
        tokens = _tokens(_seed(text), budget.visible)
        output_text = "".join(tokens)
        output_tokens = budget.reasoning + budget.visible
        usage = {
            "input_tokens": input_tokens,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": output_tokens,
            "output_tokens_details": {"reasoning_tokens": budget.reasoning},
            "total_tokens": input_tokens + output_tokens,
        }
        reasoning_item: dict[str, Any] | None = None
        if budget.reasoning:
            reasoning_item = {"id": _hex_id("rs_"), "type": "reasoning", "summary": []}
        message_item: dict[str, Any] | None = None
        # Like OpenAI: when reasoning eats the whole budget there is no message at all.
        if budget.visible or not budget.truncated:
            message_item = {
                "id": _hex_id("msg_"),
                "type": "message",
                "status": "incomplete" if budget.truncated else "completed",
                "role": "assistant",
                "content": [
                    {"type": "output_text", "annotations": [], "logprobs": [], "text": output_text}
                ],
            }
        created = int(time.time())
        requested_reasoning = p.get("reasoning")
        effort = None
        if _is_reasoning_model(model):
            effort = "medium"
            if isinstance(requested_reasoning, dict) and requested_reasoning.get("effort"):
                effort = requested_reasoning["effort"]
        final: dict[str, Any] = {
            "id": _hex_id("resp_"),
            "object": "response",
            "created_at": created,
            "status": "incomplete" if budget.truncated else "completed",
            "background": False,
            "completed_at": None if budget.truncated else created,
            "error": None,
            "incomplete_details": {"reason": "max_output_tokens"} if budget.truncated else None,
            "instructions": instructions,
            "max_output_tokens": limit,
            "max_tool_calls": None,
            "model": model,
            "output": [item for item in (reasoning_item, message_item) if item is not None],
            "parallel_tool_calls": True,
            "previous_response_id": p.get("previous_response_id"),
            "reasoning": {"effort": effort, "summary": None},
            "service_tier": "default",
            "store": p.get("store", True),
            "temperature": p.get("temperature", 1.0),
            "text": {"format": {"type": "text"}, "verbosity": "medium"},
            "tool_choice": "auto",
            "tools": [],
            "top_logprobs": 0,
            "top_p": p.get("top_p", 1.0),
            "truncation": "disabled",
            "usage": usage,
            "user": None,
            "metadata": p.get("metadata") or {},
        }
        if p.get("stream") is not True:
            return ctx.json(final)
        in_progress = {
            **final,
            "status": "in_progress",
            "completed_at": None,
            "incomplete_details": None,
            "output": [],
            "usage": None,
        }
        terminal = "response.incomplete" if budget.truncated else "response.completed"
        return await ctx.stream(
            _response_events(final, in_progress, reasoning_item, message_item, tokens, terminal)
        )

    async def embeddings(self, ctx: _Ctx) -> web.StreamResponse:
        p = ctx.payload
        model = _require_model(p)
        inputs = _embedding_inputs(p.get("input"))
        dims = _opt_int(p, "dimensions", 1, MAX_EMBEDDING_DIMENSIONS)
        dims = DEFAULT_EMBEDDING_DIMENSIONS if dims is None else dims
        encoding = p.get("encoding_format") or "float"
        if encoding not in ("float", "base64"):
            raise InvalidRequestError(
                "Invalid 'encoding_format': expected 'float' or 'base64'.",
                param="encoding_format",
                code="invalid_value",
            )
        which = 0 if encoding == "float" else 1
        data = []
        tokens = 0
        for index, item in enumerate(inputs):
            if isinstance(item, str):
                tokens += _estimate_tokens(item)
                key = "s:" + item
            else:
                tokens += len(item)
                key = "t:" + repr(item)
            vector = _embedding(key, dims)[which]
            data.append({"object": "embedding", "index": index, "embedding": vector})
        return ctx.json(
            {
                "object": "list",
                "data": data,
                "model": model,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }
        )

    async def images(self, ctx: _Ctx) -> web.StreamResponse:
        p = ctx.payload
        prompt = p.get("prompt")
        if not isinstance(prompt, str) or not prompt:
            raise InvalidRequestError(
                "Missing required parameter: 'prompt'.",
                param="prompt",
                code="missing_required_parameter",
            )
        model = p.get("model") or "dall-e-2"
        n = _opt_int(p, "n", 1, 10) or 1
        created = int(time.time())
        size = p.get("size") or "1024x1024"
        gpt_image = str(model).startswith("gpt-image")
        quality = p.get("quality") or ("medium" if gpt_image else "standard")
        if not gpt_image:
            item: dict[str, Any] = (
                {"url": "data:image/png;base64," + PNG_B64}
                if p.get("response_format") == "url"
                else {"b64_json": PNG_B64}
            )
            return ctx.json({"created": created, "data": [item] * n})
        input_tokens = _estimate_tokens(prompt)
        per_image = {"low": 272, "high": 4160}.get(quality, 1056)
        output_tokens = per_image * n
        usage = {
            "input_tokens": input_tokens,
            "input_tokens_details": {"text_tokens": input_tokens, "image_tokens": 0},
            "output_tokens": output_tokens,
            "output_tokens_details": {"image_tokens": output_tokens, "text_tokens": 0},
            "total_tokens": input_tokens + output_tokens,
        }
        meta = {"background": "opaque", "output_format": "png", "size": size, "quality": quality}
        if p.get("stream") is True:
            return await ctx.stream(
                _sse_event(
                    "image_generation.completed",
                    i,
                    {"b64_json": PNG_B64, "created_at": created, **meta, "usage": usage},
                )
                for i in range(n)
            )
        return ctx.json(
            {"created": created, "data": [{"b64_json": PNG_B64}] * n, **meta, "usage": usage}
        )

    async def list_models(self, ctx: _Ctx) -> web.StreamResponse:
        return ctx.json_body(_MODELS_BODY)

    async def get_model(self, ctx: _Ctx) -> web.StreamResponse:
        model_id = ctx.request.match_info["model_id"]
        model = _MODELS.get(model_id)
        if model is None:
            raise NotFoundError(
                f"The model `{model_id}` does not exist or you do not have access to it.",
                param="model",
                code="model_not_found",
            )
        return ctx.json(model)

    async def not_found(self, ctx: _Ctx) -> web.StreamResponse:
        request = ctx.request
        error = GatewayError(
            f"Invalid URL ({request.method} {request.path})", type="invalid_request_error"
        )
        error.status = 404
        raise error


# --- request parsing and event generators ----------------------------------------------


def _include_usage(payload: dict[str, Any]) -> bool:
    options = payload.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


def _is_token_list(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(type(t) is int and t >= 0 for t in value)


def _completion_prompts(prompt: Any) -> list[str | list[int]]:
    if isinstance(prompt, str):
        return [prompt]
    if _is_token_list(prompt):
        return [prompt]
    if isinstance(prompt, list) and prompt:
        out: list[str | list[int]] = []
        for item in prompt:
            if not (isinstance(item, str) or _is_token_list(item)):
                break
            out.append(item)
        else:
            return out
    raise InvalidRequestError(
        "Invalid 'prompt': expected a string, an array of strings, or token arrays.",
        param="prompt",
        code="invalid_type",
    )


def _embedding_inputs(value: Any) -> list[str | list[int]]:
    if isinstance(value, str) and value:
        return [value]
    if _is_token_list(value):
        return [value]
    if isinstance(value, list) and value:
        out: list[str | list[int]] = []
        for item in value:
            if not ((isinstance(item, str) and item) or _is_token_list(item)):
                break
            out.append(item)
        else:
            return out
    raise InvalidRequestError(
        "'$.input' is invalid. Expected a non-empty string, array of strings, or token arrays.",
        param="input",
        code="invalid_value",
    )


def _chat_events(
    head: bytes,
    n: int,
    seed: int,
    visible: int,
    finish: str,
    include_usage: bool,
    usage: dict[str, Any],
) -> Iterator[bytes]:
    # OpenAI ends every chunk with `"usage":null` when include_usage is on, else omits it.
    tail = b',"usage":null}\n\n' if include_usage else b"}\n\n"
    dumps = json_codec.dumps
    for i in range(n):
        role = {"role": "assistant", "content": "", "refusal": None}
        choice = {"index": i, "delta": role, "logprobs": None, "finish_reason": None}
        yield head + dumps([choice]) + tail
    seeds = [_choice_seed(seed, i) for i in range(n)]
    for k in range(visible):
        for i, s in enumerate(seeds):
            word = (s + k) % _N_WORDS
            if i == 0:
                choices = _CHAT_FIRST[word] if k == 0 else _CHAT_NEXT[word]
            else:
                tok = _FIRST[word] if k == 0 else _NEXT[word]
                choices = dumps(
                    [
                        {
                            "index": i,
                            "delta": {"content": tok},
                            "logprobs": None,
                            "finish_reason": None,
                        }
                    ]
                )
            yield head + choices + tail
    for i in range(n):
        choice = {"index": i, "delta": {}, "logprobs": None, "finish_reason": finish}
        yield head + dumps([choice]) + tail
    if include_usage:
        yield head + b'[],"usage":' + dumps(usage) + b"}\n\n"
    yield b"data: [DONE]\n\n"


def _completion_events(
    head: bytes,
    seeds: list[int],
    visible: int,
    finish: str,
    include_usage: bool,
    usage: dict[str, Any],
) -> Iterator[bytes]:
    tail = b',"usage":null}\n\n' if include_usage else b"}\n\n"
    dumps = json_codec.dumps
    for k in range(visible):
        for i, s in enumerate(seeds):
            word = (s + k) % _N_WORDS
            if i == 0:
                choices = _COMPL_FIRST[word] if k == 0 else _COMPL_NEXT[word]
            else:
                tok = _FIRST[word] if k == 0 else _NEXT[word]
                choices = dumps(
                    [{"text": tok, "index": i, "logprobs": None, "finish_reason": None}]
                )
            yield head + choices + tail
    for i in range(len(seeds)):
        choice = {"text": "", "index": i, "logprobs": None, "finish_reason": finish}
        yield head + dumps([choice]) + tail
    if include_usage:
        yield head + b'[],"usage":' + dumps(usage) + b"}\n\n"
    yield b"data: [DONE]\n\n"


def _response_events(
    final: dict[str, Any],
    in_progress: dict[str, Any],
    reasoning_item: dict[str, Any] | None,
    message_item: dict[str, Any] | None,
    tokens: list[str],
    terminal: str,
) -> Iterator[bytes]:
    seq = 0

    def event(event_type: str, **fields: Any) -> bytes:
        nonlocal seq
        seq += 1
        return _sse_event(event_type, seq - 1, fields)

    yield event("response.created", response=in_progress)
    yield event("response.in_progress", response=in_progress)
    index = 0
    if reasoning_item is not None:
        yield event("response.output_item.added", output_index=0, item=reasoning_item)
        yield event("response.output_item.done", output_index=0, item=reasoning_item)
        index = 1
    if message_item is not None:
        item_id = message_item["id"]
        part = message_item["content"][0]
        loc = {"item_id": item_id, "output_index": index, "content_index": 0}
        pending = {**message_item, "status": "in_progress", "content": []}
        yield event("response.output_item.added", output_index=index, item=pending)
        yield event("response.content_part.added", **loc, part={**part, "text": ""})
        for tok in tokens:
            yield event("response.output_text.delta", **loc, delta=tok, logprobs=[])
        yield event("response.output_text.done", **loc, text=part["text"], logprobs=[])
        yield event("response.content_part.done", **loc, part=part)
        yield event("response.output_item.done", output_index=index, item=message_item)
    yield event(terminal, response=final)


# --- app, handle, runners --------------------------------------------------------------


def create_mock_app(
    api_key: str | None = "sk-mock", *, chunk_delay_seconds: float = 0.0
) -> web.Application:
    """The fake OpenAI app; ``api_key=None`` turns auth off."""
    server = _MockServer(api_key, chunk_delay_seconds)
    app = web.Application()
    app[REQUESTS_KEY] = server.requests
    app[GATES_KEY] = server.gates
    posts: list[tuple[str, Endpoint]] = [
        ("/chat/completions", server.chat),
        ("/responses", server.responses),
        ("/completions", server.completions),
        ("/embeddings", server.embeddings),
        ("/images/generations", server.images),
    ]
    for prefix in ("/v1", ""):
        for path, endpoint in posts:
            app.router.add_post(prefix + path, server.route(endpoint, json_body=True))
        app.router.add_get(prefix + "/models", server.route(server.list_models, json_body=False))
        app.router.add_get(
            prefix + "/models/{model_id:.+}", server.route(server.get_model, json_body=False)
        )
    app.router.add_route("*", "/{tail:.*}", server.route(server.not_found, json_body=False))
    return app


class MockUpstream:
    """A running mock server; ``url`` is the base URL to give an SDK (it ends in ``/v1``)."""

    def __init__(self, runner: web.AppRunner, host: str, port: int) -> None:
        self._runner = runner
        self.app = runner.app
        self.host = host
        self.port = port
        url_host = f"[{host}]" if ":" in host else host
        self.root_url = f"http://{url_host}:{port}"
        self.url = self.root_url + "/v1"
        self.requests: list[RecordedRequest] = self.app[REQUESTS_KEY]

    def gate(self, name: str) -> Gate:
        """The gate streams sent with ``x-mock-gate: name`` wait on (created on first use)."""
        return self.app[GATES_KEY].setdefault(name, Gate())

    async def close(self) -> None:
        # Release parked streams first so cleanup does not wait on them.
        for gate in self.app[GATES_KEY].values():
            gate.release()
        await self._runner.cleanup()

    async def __aenter__(self) -> MockUpstream:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


async def start_mock_upstream(
    host: str = "127.0.0.1",
    port: int = 0,
    api_key: str | None = "sk-mock",
    *,
    chunk_delay_seconds: float = 0.0,
) -> MockUpstream:
    """Start the mock on ``host:port`` (0 picks a free port) in the running loop."""
    app = create_mock_app(api_key, chunk_delay_seconds=chunk_delay_seconds)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound_port = int(runner.addresses[0][1])
    return MockUpstream(runner, host, bound_port)


def run_mock_upstream(host: str, port: int, api_key: str | None) -> None:
    """Serve until interrupted (the CLI entry point); uses uvloop when it is installed."""
    loop: asyncio.AbstractEventLoop | None = None
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency off Windows
        pass
    else:
        loop = uvloop.new_event_loop()
    auth = "auth off" if api_key is None else "Authorization: Bearer <api key> required"
    print(f"mock upstream: base URL http://{host}:{port}/v1 ({auth})", flush=True)
    web.run_app(
        create_mock_app(api_key),
        host=host,
        port=port,
        access_log=None,
        backlog=1024,
        shutdown_timeout=5.0,
        loop=loop,
        print=None,
    )
