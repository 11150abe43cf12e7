"""Hostile requests against the real HTTP gateway: bodies, paths, headers and framing.

Every case must end in a 4xx (OpenAI-shaped whenever the gateway itself answers; aiohttp's
HTTP parser answers malformed framing with a plain-text 400 before any gateway code runs),
never a 5xx from the gateway, never a crash (the gateway still serves afterwards), and nothing
reaches the upstream that should not.

Already covered elsewhere and not repeated: the six chat bodies of
``test_proxy.py::test_bad_bodies_get_openai_shaped_4xx`` and the three yarl-encoded paths of
``test_proxy.py::test_path_traversal_is_refused``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from yarl import URL

from gateway.apis import MAX_CHOICES, MAX_OUTPUT_TOKENS
from gateway.mock import MockUpstream
from tests.support.gateway_proc import UPSTREAM_KEY, RunningGateway, token

MESSAGES = [{"role": "user", "content": "hi"}]
MAX_BODY = 4096
MAX_UPLOAD = 2048
TEAMS = {
    "ml": {"models": ["gpt-4o*", "gpt-5*", "o3*", "text-embedding-*", "gpt-image-*"]},
    "web": {"models": ["gpt-4o-mini"], "paths": ["/chat/completions", "/models*"]},
    "capped": {
        "models": ["gpt-4o-mini"],
        "quotas": [{"metric": "requests", "limit": 1, "window": "day"}],
    },
}
ENDPOINTS: dict[str, tuple[dict[str, Any], str | None]] = {
    # path: (a valid body, the output-limit field)
    "/chat/completions": ({"model": "gpt-4o-mini", "messages": MESSAGES}, "max_completion_tokens"),
    "/responses": ({"model": "gpt-4o-mini", "input": "hi"}, "max_output_tokens"),
    "/completions": ({"model": "gpt-4o-mini", "prompt": "hi"}, "max_tokens"),
    "/embeddings": ({"model": "text-embedding-3-small", "input": "hi"}, None),
    "/images/generations": ({"model": "gpt-image-1", "prompt": "a cat"}, None),
}


@pytest.fixture
async def gw(make_gateway) -> RunningGateway:
    gateway: RunningGateway = await make_gateway(
        server={
            "host": "127.0.0.1",
            "port": 0,
            "max_body_bytes": MAX_BODY,
            "max_upload_bytes": MAX_UPLOAD,
        },
        teams=TEAMS,
    )
    return gateway


def bearer(team: str = "ml") -> dict[str, str]:
    return {"Authorization": f"Bearer {token(team)}"}


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


async def send(
    method: str, url: str | URL, *, data: Any = None, headers: dict[str, str] | None = None
) -> Reply:
    async with (
        aiohttp.ClientSession() as s,
        s.request(method, url, data=data, headers=headers) as resp,
    ):
        return Reply(
            resp.status, {k.lower(): v for k, v in resp.headers.items()}, await resp.read()
        )


async def raw_http(gw: RunningGateway, request: bytes) -> Reply:
    """Send bytes as they are (no client normalisation) and read the answer to EOF."""
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    try:
        writer.write(request)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), timeout=10)
    finally:
        writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return Reply(int(lines[0].split(" ", 2)[1]), headers, body)


def request_bytes(
    method: str, target: bytes, *, headers: bytes = b"", body: bytes = b"", auth: bool = True
) -> bytes:
    line = method.encode() + b" " + target + b" HTTP/1.1\r\n"
    sent = b"Host: gw\r\nConnection: close\r\n" + headers
    if auth:
        sent += f"Authorization: Bearer {token()}\r\n".encode()
    if body:
        sent += b"Content-Type: application/json\r\nContent-Length: %d\r\n" % len(body)
    return line + sent + b"\r\n" + body


def assert_openai_error(reply: Reply, status: int, code: str | None = None) -> dict[str, Any]:
    assert reply.status == status, reply.body[:300]
    assert reply.headers["content-type"].startswith("application/json")
    body = reply.json()
    assert set(body) == {"error"}
    error: dict[str, Any] = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    if code is not None:
        assert error["code"] == code
    return error


async def still_serves(gw: RunningGateway) -> None:
    reply = await send(
        "POST",
        gw.url + "/chat/completions",
        data=json.dumps({"model": "gpt-4o-mini", "messages": MESSAGES}),
        headers={**bearer(), "Content-Type": "application/json"},
    )
    assert reply.status == 200


# --- bodies --------------------------------------------------------------------------------

RAW_BODIES: dict[str, bytes] = {
    "malformed": b'{"model": "gpt-4o-mini",',
    "empty": b"",
    "null": b"null",
    "array": b'[{"model": "gpt-4o-mini"}]',
    "string": b'"gpt-4o-mini"',
    "number": b"42",
    "byte order mark": b'\xef\xbb\xbf{"model": "gpt-4o-mini"}',
    "invalid UTF-8": b'{"model": "gpt-4o-mini", "x": "\xff\xfe"}',
    "lone surrogate": b'{"model": "gpt-4o-mini", "x": "\\ud800"}',
    "NaN literal": b'{"model": "gpt-4o-mini", "temperature": NaN}',
    "number overflowing a double": b'{"model": "gpt-4o-mini", "temperature": 1e999}',
    "deep nesting": b'{"model": "gpt-4o-mini", "x": ' + b"[" * 1500 + b"]" * 1500 + b"}",
    "trailing garbage": b'{"model": "gpt-4o-mini"} trailing',
    "two documents": b'{"model": "gpt-4o-mini"}{"model": "gpt-5"}',
}


def field_cases(path: str, limit_field: str | None) -> list[tuple[str, Any, str]]:
    """(field, value, param the error must name) for each wrong type or range."""
    cases: list[tuple[str, Any, str]] = [
        ("model", 5, "model"),
        ("model", True, "model"),
        ("model", ["gpt-4o-mini"], "model"),
        ("model", {"id": "gpt-4o-mini"}, "model"),
    ]
    if path != "/images/generations":
        cases += [("model", "", "model"), ("model", None, "model")]  # model is required
    if path != "/embeddings":
        cases += [("stream", "yes", "stream"), ("stream", 1, "stream")]
    if limit_field is not None:
        limits: list[Any] = [-1, 0, MAX_OUTPUT_TOKENS + 1, 10**20, 1.5, "100", True, [100]]
        cases += [(limit_field, value, limit_field) for value in limits]
        temperatures: list[Any] = ["hot", True, [], {}]
        cases += [("temperature", value, "temperature") for value in temperatures]
    if path == "/chat/completions":
        cases += [
            ("max_tokens", -5, "max_tokens"),  # the legacy field is checked too
            ("n", 0, "n"),
            ("n", MAX_CHOICES + 1, "n"),
            ("n", "2", "n"),
            ("stream_options", "include_usage", "stream_options"),
            ("stream_options", {"include_usage": "yes"}, "stream_options.include_usage"),
            ("reasoning_effort", 3, "reasoning_effort"),
            ("reasoning_effort", "extreme", "reasoning_effort"),
        ]
    if path == "/completions":
        cases += [("best_of", -1, "best_of"), ("n", 10**9, "n")]
    if path == "/responses":
        cases += [
            ("reasoning", "high", "reasoning"),
            ("reasoning", {"effort": "extreme"}, "reasoning.effort"),
        ]
    return cases


async def test_request_matrix_every_bad_body_is_an_openai_shaped_400(
    gw: RunningGateway, upstream: MockUpstream
) -> None:
    headers = {**bearer(), "Content-Type": "application/json"}
    checked = 0
    for path, (valid, limit_field) in ENDPOINTS.items():
        for name, raw in RAW_BODIES.items():
            reply = await send("POST", gw.url + path, data=raw, headers=headers)
            error = assert_openai_error(reply, 400)
            assert error["code"] in ("invalid_json", None), (path, name)
            checked += 1
        for field, value, param in field_cases(path, limit_field):
            body = {**valid, field: value}
            if value is None:
                del body[field]
            reply = await send("POST", gw.url + path, data=json.dumps(body), headers=headers)
            error = assert_openai_error(reply, 400)
            assert error["param"] == param, (path, field, value, error)
            checked += 1
    assert checked > 150
    assert upstream.requests == []
    await still_serves(gw)


async def test_body_over_the_limit_is_413_with_or_without_content_length(
    gw: RunningGateway, upstream: MockUpstream
) -> None:
    big = json.dumps({"model": "gpt-4o-mini", "messages": MESSAGES, "pad": "x" * MAX_BODY})

    async def chunked(data: bytes, size: int = 700) -> AsyncIterator[bytes]:
        for i in range(0, len(data), size):
            yield data[i : i + size]

    headers = {**bearer(), "Content-Type": "application/json"}
    for data in (big.encode(), chunked(big.encode())):
        reply = await send("POST", gw.url + "/chat/completions", data=data, headers=headers)
        assert_openai_error(reply, 413, "request_too_large")
    assert upstream.requests == []
    # A chunked body under the limit is read whole and forwarded byte for byte.
    small = json.dumps({"model": "gpt-4o-mini", "messages": MESSAGES}).encode()
    reply = await send(
        "POST", gw.url + "/chat/completions", data=chunked(small, 7), headers=headers
    )
    assert reply.status == 200
    assert json.loads(upstream.requests[-1].body) == json.loads(small)  # re-serialised


async def test_uploads_over_the_limit_are_413_and_never_forwarded(
    gw: RunningGateway, upstream: MockUpstream
) -> None:
    """Passthrough uploads (files, audio) stream through unparsed, bounded by
    ``server.max_upload_bytes``. A chunked upload that passes the limit mid-stream used to come
    back as a 502 "upstream could not be reached" (the overflow raised inside aiohttp's body
    writer, re-raised as a connection error): fixed in ``proxy.Upstream.send``."""

    async def chunks(n: int, size: int = 1000) -> AsyncIterator[bytes]:
        for _ in range(n):
            yield b"x" * size

    headers = {**bearer(), "Content-Type": "application/octet-stream"}
    for data in (b"x" * (MAX_UPLOAD + 1), chunks(10)):
        reply = await send("POST", gw.url + "/files", data=data, headers=headers)
        assert_openai_error(reply, 413, "request_too_large")
    assert upstream.requests == []  # the upstream never saw a complete request
    reply = await send("POST", gw.url + "/files", data=chunks(2), headers=headers)
    assert reply.status == 400  # the mock's "not multipart" answer passes through
    assert upstream.requests[-1].body == b"x" * 2000
    await still_serves(gw)


async def test_content_type_is_not_trusted_json_is_judged_by_parsing(
    gw: RunningGateway, upstream: MockUpstream
) -> None:
    """Metered APIs parse the body whatever its declared type and always send
    ``application/json`` upstream; a body that is not JSON is a 400 whatever it claims."""
    valid = json.dumps({"model": "gpt-4o-mini", "messages": MESSAGES}).encode()
    for declared in ("text/plain", "application/x-www-form-urlencoded", None):
        headers = bearer() | ({"Content-Type": declared} if declared else {})
        reply = await send("POST", gw.url + "/chat/completions", data=valid, headers=headers)
        assert reply.status == 200
        assert upstream.requests[-1].headers["content-type"] == "application/json"
    forwarded = len(upstream.requests)
    form = aiohttp.FormData({"model": "gpt-4o-mini", "messages": "hi"})
    form.add_field("file", b"\x00\x01", filename="x.bin")
    reply = await send("POST", gw.url + "/chat/completions", data=form, headers=bearer())
    assert_openai_error(reply, 400, "invalid_json")
    reply = await send(
        "POST",
        gw.url + "/chat/completions",
        data=b"model=gpt-4o-mini&messages=hi",
        headers={**bearer(), "Content-Type": "application/x-www-form-urlencoded"},
    )
    assert_openai_error(reply, 400, "invalid_json")
    assert len(upstream.requests) == forwarded


async def test_duplicate_json_keys_do_not_reach_the_upstream_ambiguous(
    gw: RunningGateway, upstream: MockUpstream
) -> None:
    headers = {**bearer("web"), "Content-Type": "application/json"}
    raw = b'{"model":"gpt-5","model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}'
    reply = await send("POST", gw.url + "/chat/completions", data=raw, headers=headers)
    if reply.status == 200:
        # Whatever was forwarded must mean, to any parser, what the gateway checked.
        assert upstream.requests[-1].body.count(b'"model"') == 1
    else:
        assert_openai_error(reply, 400)
        assert upstream.requests == []


# --- paths ---------------------------------------------------------------------------------

TRAVERSALS = [
    b"/v1/../metrics",
    b"/../metrics",
    b"/v1/./models",
    b"/v1/models/..",
    b"/v1/%2e%2e/metrics",
    b"/v1/%2E%2e/metrics",
    b"/v1/.%2e/metrics",
    b"/v1/%2e./healthz",
    b"/v1/%2e%2e%2fmetrics",
    b"/v1/..%2F..%2Fmetrics",
    b"/v1/models/..%2f..%2f..%2fmetrics",
    b"/v1/..%5cmetrics",
    b"/v1/..\\metrics",
    b"/v1/%5c..%5cmetrics",
    b"/v1/models/gpt-4o%00",
    b"/v1/models/a%09b",
    b"/%2e%2e/v1/models",
]


async def test_path_traversal_variants_are_400_and_never_forwarded(
    gw: RunningGateway, upstream: MockUpstream
) -> None:
    for target in TRAVERSALS:
        reply = await raw_http(gw, request_bytes("GET", target))
        assert_openai_error(reply, 400, "invalid_path")
    # Encoded CR LF: aiohttp's catch-all route does not match a newline, so it is a 404 the
    # gateway renders; either way refused and not forwarded.
    reply = await raw_http(gw, request_bytes("GET", b"/v1/models/a%0d%0aInjected:%20x"))
    assert_openai_error(reply, 404)
    assert upstream.requests == []
    await still_serves(gw)


async def test_double_encoding_stays_encoded_on_its_way_upstream(
    gw: RunningGateway, upstream: MockUpstream
) -> None:
    """``%252e%252e`` decodes once to the literal text ``%2e%2e``, not to ``..``: the gateway
    forwards the path byte for byte, so the upstream's one decoding yields a literal segment,
    and the gateway's own ``/metrics`` is never what answers."""
    for target in (b"/v1/%252e%252e/metrics", b"/v1/%252E%252E%252Fmetrics"):
        reply = await raw_http(gw, request_bytes("GET", target))
        assert 400 <= reply.status < 500
        assert b"gateway_requests_total" not in reply.body
        seen = upstream.requests[-1]
        assert seen.path.startswith("/v1/%2") and ".." not in seen.path


async def test_percent_encoded_api_paths_are_not_an_unmetered_bypass(
    gw: RunningGateway, upstream: MockUpstream
) -> None:
    headers = {**bearer("capped"), "Content-Type": "application/json"}
    body = json.dumps({"model": "gpt-4o-mini", "messages": MESSAGES})
    assert (
        await send("POST", gw.url + "/chat/completions", data=body, headers=headers)
    ).status == 200
    # The one request of the day is used; an equivalent spelling must not get another.
    for path in ("/v1/%63hat/completions", "/v1/chat/%63ompletions", "/v1/%65mbeddings"):
        reply = await send("POST", URL(gw.root + path, encoded=True), data=body, headers=headers)
        assert reply.status in (400, 403, 429), (path, reply.status)
    # And a model outside the allow-list must not get through either.
    model_body = json.dumps({"model": "gpt-5", "messages": MESSAGES})
    reply = await send(
        "POST",
        URL(gw.root + "/v1/%63hat/completions", encoded=True),
        data=model_body,
        headers={**bearer("web"), "Content-Type": "application/json"},
    )
    assert reply.status in (400, 403)


async def test_ambiguous_path_spellings_are_refused_not_passed_through(
    gw: RunningGateway, upstream: MockUpstream
) -> None:
    headers = {**bearer(), "Content-Type": "application/json"}
    body = json.dumps({"model": "gpt-4o-mini", "messages": MESSAGES})
    for path in (
        "/v1//chat/completions",
        "/v1/chat%2Fcompletions",
        "/v1/chat%2fcompletions",
        "/v1/chat/completions;x=1",
        "//v1/chat/completions",
    ):
        reply = await send("POST", URL(gw.root + path, encoded=True), data=body, headers=headers)
        assert reply.status == 400, (path, reply.status)
    assert upstream.requests == []


# --- headers and framing -------------------------------------------------------------------

CHAT_BODY = json.dumps({"model": "gpt-4o-mini", "messages": MESSAGES}).encode()
MALFORMED: dict[str, bytes] = {
    "bare LF inside a header value": request_bytes(
        "POST", b"/v1/chat/completions", headers=b"X-A: a\nInjected: b\r\n", body=CHAT_BODY
    ),
    "bare CR inside a header value": request_bytes(
        "POST", b"/v1/chat/completions", headers=b"X-A: a\rInjected: b\r\n", body=CHAT_BODY
    ),
    "CR LF smuggled inside the Authorization value": (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n"
        b"Authorization: Bearer " + token().encode() + b"\rX-Upstream-Key: y\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(CHAT_BODY) + CHAT_BODY
    ),
    "NUL inside a header value": request_bytes(
        "POST", b"/v1/chat/completions", headers=b"X-A: a\x00b\r\n", body=CHAT_BODY
    ),
    "obsolete line folding": request_bytes(
        "POST", b"/v1/chat/completions", headers=b"X-A: a\r\n  folded\r\n", body=CHAT_BODY
    ),
    "space before the colon": request_bytes(
        "POST", b"/v1/chat/completions", headers=b"Authorization : Bearer x\r\n", body=CHAT_BODY
    ),
    "Content-Length and Transfer-Encoding": request_bytes(
        "POST",
        b"/v1/chat/completions",
        headers=b"Transfer-Encoding: chunked\r\n",
        body=CHAT_BODY,
    ),
    "two Content-Lengths": (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n"
        + f"Authorization: Bearer {token()}\r\n".encode()
        + b"Content-Length: %d\r\nContent-Length: 5\r\n\r\n" % len(CHAT_BODY)
        + CHAT_BODY
    ),
    "bad chunk size": (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n"
        + f"Authorization: Bearer {token()}\r\n".encode()
        + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n"
    ),
    "space in the request target": request_bytes("GET", b"/v1/mod els"),
    "control character in the method": request_bytes("G\x01T", b"/v1/models"),
    "200 headers": request_bytes(
        "POST",
        b"/v1/chat/completions",
        headers=b"".join(b"X-Pad-%d: %s\r\n" % (i, b"v" * 20) for i in range(200)),
        body=CHAT_BODY,
    ),
    "a header line over 8 KiB": request_bytes(
        "GET", b"/v1/models", headers=b"X-Big: " + b"v" * 9000 + b"\r\n"
    ),
}


async def test_malformed_framing_and_header_injection_are_4xx_and_never_forwarded(
    gw: RunningGateway, upstream: MockUpstream
) -> None:
    for name, request in MALFORMED.items():
        reply = await raw_http(gw, request)
        assert 400 <= reply.status < 500, (name, reply.status, reply.body[:200])
        assert upstream.requests == [], name
        await still_serves(gw)
        upstream.requests.clear()


async def test_pipelined_request_after_a_smuggling_attempt_is_not_served(
    gw: RunningGateway, upstream: MockUpstream
) -> None:
    smuggled = b"GET /v1/models HTTP/1.1\r\nHost: gw\r\n\r\n"
    request = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\n"
        + f"Authorization: Bearer {token()}\r\n".encode()
        + b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
        + smuggled
    )
    reply = await raw_http(gw, request)
    assert reply.status == 400
    assert b"HTTP/1.1 200" not in reply.body
    assert upstream.requests == []


async def test_many_headers_under_the_parser_limit_are_served_and_over_it_refused(
    gw: RunningGateway, upstream: MockUpstream
) -> None:
    """100 extra headers are an ordinary (if odd) request; aiohttp refuses more than its
    header-count and line limits with a 400 before the gateway runs. Either way: no 5xx."""
    for count, size in ((100, 20), (100, 250), (127, 8), (150, 8), (200, 200)):
        headers = b"".join(b"X-Pad-%d: %s\r\n" % (i, b"v" * size) for i in range(count))
        request = request_bytes("POST", b"/v1/chat/completions", headers=headers, body=CHAT_BODY)
        reply = await raw_http(gw, request)
        assert reply.status == 200 or 400 <= reply.status < 500, (count, size, reply.status)
        if reply.status == 200:
            assert upstream.requests[-1].headers.get("x-pad-0") == "v" * size
    await still_serves(gw)


@pytest.mark.parametrize(
    "second",
    [
        lambda: f"Authorization: Bearer {token()}",  # the same team twice
        lambda: f"Authorization: Bearer {token('web')}",  # two teams
        lambda: "authorization: Bearer garbage",  # another spelling of the name
        lambda: "Authorization: ",  # an empty second one
    ],
    ids=["same", "other team", "lower-case name", "empty"],
)
async def test_duplicate_authorization_headers_are_401(
    gw: RunningGateway, upstream: MockUpstream, second: Any
) -> None:
    extra = (second() + "\r\n").encode()
    for target in (b"/v1/chat/completions", b"/v1/gateway/usage"):
        method = "POST" if target.endswith(b"completions") else "GET"
        body = CHAT_BODY if method == "POST" else b""
        reply = await raw_http(gw, request_bytes(method, target, headers=extra, body=body))
        error = assert_openai_error(reply, 401, "invalid_api_key")
        assert "more than one Authorization header" in error["message"]
    assert upstream.requests == []


async def test_client_identity_and_hop_by_hop_headers_never_reach_the_upstream(
    gw: RunningGateway, upstream: MockUpstream
) -> None:
    sneaky = {
        "Connection": "keep-alive, X-Named-By-Connection",
        "X-Named-By-Connection": "1",
        "Proxy-Authorization": f"Bearer {token()}",
        "Cookie": "session=abc",
        "Forwarded": "for=10.0.0.1;host=evil.example",
        "X-Forwarded-For": "10.0.0.1",
        "X-Forwarded-Host": "evil.example",
        "X-Real-IP": "10.0.0.1",
        "TE": "trailers",
        "Upgrade": "websocket",
        "OpenAI-Organization": "org-client",
        "x-gateway-cache": "force",
        "Host": "evil.example",
    }
    reply = await send(
        "POST",
        gw.url + "/chat/completions",
        data=CHAT_BODY,
        headers={**bearer(), **sneaky, "Content-Type": "application/json"},
    )
    assert reply.status == 200
    seen = upstream.requests[-1].headers
    for name in sneaky:
        if name.lower() not in ("connection", "host"):
            assert name.lower() not in seen, name
    assert seen["host"] == f"127.0.0.1:{upstream.port}"
    assert seen["authorization"] == f"Bearer {UPSTREAM_KEY}"


async def test_absolute_form_target_still_goes_to_the_configured_upstream(
    gw: RunningGateway, upstream: MockUpstream
) -> None:
    reply = await raw_http(
        gw,
        request_bytes("POST", b"http://evil.example:9/v1/chat/completions?x=1", body=CHAT_BODY),
    )
    assert reply.status == 200
    seen = upstream.requests[-1]
    assert seen.path == "/v1/chat/completions" and seen.query == {"x": "1"}


async def test_query_string_cannot_inject_headers_upstream(
    gw: RunningGateway, upstream: MockUpstream
) -> None:
    target = URL(gw.root + "/v1/models?after=a%0d%0aX-Injected:%20yes%0d%0a", encoded=True)
    reply = await send("GET", target, headers=bearer())
    assert reply.status == 200
    seen = upstream.requests[-1]
    assert "x-injected" not in seen.headers
    assert seen.query == {"after": "a\r\nX-Injected: yes\r\n"}  # data, still encoded on the wire


async def test_trace_is_not_forwarded_with_the_upstream_key(
    gw: RunningGateway, upstream: MockUpstream
) -> None:
    reply = await raw_http(gw, request_bytes("TRACE", b"/v1/models"))
    assert_openai_error(reply, 405, "method_not_allowed")
    assert upstream.requests == []
