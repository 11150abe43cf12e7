"""The gateway as an application team sees it: the official openai SDK against a real gateway
and the real mock upstream, all on loopback."""

from __future__ import annotations

import asyncio
import logging
import re

import aiohttp
import openai
import pytest
from yarl import URL

from gateway.mock import MockUpstream
from tests.support.gateway_proc import JWT_SECRET, UPSTREAM_KEY, RunningGateway, token
from tests.support.redis_proc import free_port

MESSAGES = [{"role": "user", "content": "Colour of the sky?"}]


def client(gw: RunningGateway, team: str = "ml", **kw: object) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=gw.url, api_key=token(team), max_retries=0, **kw)  # type: ignore[arg-type]


async def test_chat_completion_reaches_upstream_with_real_key_only(
    make_gateway, upstream: MockUpstream
) -> None:
    gw = await make_gateway(upstream={"organization": "org-gateway", "project": "proj_gateway"})
    jwt = token("ml")
    sdk = openai.AsyncOpenAI(
        base_url=gw.url,
        api_key=jwt,
        organization="org-client",
        project="proj_client",
        max_retries=0,
    )
    raw = await sdk.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=MESSAGES
    )
    completion = raw.parse()
    assert completion.choices[0].message.content
    assert completion.usage is not None and completion.usage.completion_tokens > 0

    seen = upstream.requests[-1]
    assert seen.path == "/v1/chat/completions"
    assert seen.headers["authorization"] == f"Bearer {UPSTREAM_KEY}"
    assert jwt not in str(seen.headers)
    assert seen.headers["openai-organization"] == "org-gateway"
    assert seen.headers["openai-project"] == "proj_gateway"
    assert seen.headers["x-stainless-lang"] == "python"  # SDK headers are kept

    headers = {k.lower(): v for k, v in raw.headers.items()}
    assert UPSTREAM_KEY not in str(headers) and UPSTREAM_KEY not in raw.http_response.text
    assert not [h for h in headers if h.startswith("x-ratelimit-")]
    assert "openai-organization" not in headers
    assert headers["x-request-id"].startswith("req_")  # the upstream's id, for OpenAI support
    assert headers["x-gateway-request-id"].startswith("gw-")


async def test_sync_client_and_base_url_without_v1(gateway: RunningGateway) -> None:
    def call() -> str | None:
        sdk = openai.OpenAI(base_url=gateway.root, api_key=token(), max_retries=0)
        return (
            sdk.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
            .choices[0]
            .message.content
        )  # type: ignore[arg-type]

    assert await asyncio.to_thread(call)


def _normalise(stream: bytes) -> bytes:
    return re.sub(rb'"(id|created)":("[^"]*"|\d+)', rb'"\1":X', stream)


async def _raw_stream(url: str, auth: str, body: dict[str, object]) -> bytes:
    async with (
        aiohttp.ClientSession() as s,
        s.post(
            url + "/chat/completions", json=body, headers={"Authorization": f"Bearer {auth}"}
        ) as resp,
    ):
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        assert "Content-Length" not in resp.headers
        return await resp.read()


async def test_stream_without_include_usage_is_exactly_what_openai_would_send(
    gateway: RunningGateway, upstream: MockUpstream
) -> None:
    body = {"model": "gpt-4o-mini", "messages": MESSAGES, "stream": True}
    via_gateway = await _raw_stream(gateway.url, token(), body)
    assert upstream.requests[-1].json is not None
    assert upstream.requests[-1].json["stream_options"] == {"include_usage": True}
    direct = await _raw_stream(upstream.url, UPSTREAM_KEY, body)
    assert b'"usage"' not in via_gateway
    assert _normalise(via_gateway) == _normalise(direct)
    assert via_gateway.endswith(b"data: [DONE]\n\n")


async def test_stream_with_and_without_include_usage_through_sdk(gateway: RunningGateway) -> None:
    sdk = client(gateway)
    chunks = [
        c
        async for c in await sdk.chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES, stream=True
        )
    ]
    assert all(c.choices for c in chunks)
    assert all(c.usage is None for c in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks)

    with_usage = [
        c
        async for c in await sdk.chat.completions.create(
            model="gpt-4o-mini",
            messages=MESSAGES,
            stream=True,
            stream_options={"include_usage": True},
        )
    ]
    assert with_usage[-1].choices == [] and with_usage[-1].usage is not None
    assert "".join(c.choices[0].delta.content or "" for c in with_usage if c.choices) == text


async def test_responses_json_and_stream(gateway: RunningGateway) -> None:
    sdk = client(gateway)
    response = await sdk.responses.create(model="gpt-5-mini", input="Colour of the sky?")
    assert response.output_text and response.usage is not None
    assert response.usage.output_tokens_details.reasoning_tokens > 0
    async with sdk.responses.stream(model="gpt-5-mini", input="Colour of the sky?") as stream:
        async for _ in stream:
            pass
        final = await stream.get_final_response()
    assert final.output_text == response.output_text


async def test_embeddings_float_and_base64_and_models(gateway: RunningGateway) -> None:
    sdk = client(gateway)
    as_base64 = await sdk.embeddings.create(model="text-embedding-3-small", input=["a", "b"])
    as_float = await sdk.embeddings.create(
        model="text-embedding-3-small", input=["a", "b"], encoding_format="float"
    )
    assert as_base64.data[0].embedding == pytest.approx(as_float.data[0].embedding)
    models = await sdk.models.list()
    assert any(m.id == "gpt-4o-mini" for m in models.data)


async def test_bad_tokens_are_401_and_never_forwarded(
    gateway: RunningGateway, upstream: MockUpstream
) -> None:
    for bad in ["garbage", token(secret="x" * 48), token(ttl=-100), token("off"), token("nobody")]:
        sdk = openai.AsyncOpenAI(base_url=gateway.url, api_key=bad, max_retries=0)
        with pytest.raises(openai.AuthenticationError) as info:
            await sdk.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        assert info.value.code == "invalid_api_key"
        assert info.value.request_id and info.value.request_id.startswith("gw-")
    assert upstream.requests == []


async def test_model_and_path_allow_lists_are_403(
    gateway: RunningGateway, upstream: MockUpstream
) -> None:
    with pytest.raises(openai.PermissionDeniedError, match="not allowed to use model 'gpt-5'"):
        await client(gateway, "web").chat.completions.create(model="gpt-5", messages=MESSAGES)
    with pytest.raises(openai.PermissionDeniedError, match="may not call /embeddings"):
        await client(gateway, "web").embeddings.create(model="gpt-4o-mini", input="x")
    assert upstream.requests == []


async def test_upstream_errors_reach_the_sdk_as_typed_exceptions(
    gateway: RunningGateway, upstream: MockUpstream
) -> None:
    sdk = openai.AsyncOpenAI(base_url=gateway.url, api_key=token(), max_retries=1)
    with pytest.raises(openai.InternalServerError):
        await sdk.chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES, extra_headers={"x-mock-status": "500"}
        )
    assert len(upstream.requests) == 2  # the SDK retried through the gateway
    with pytest.raises(openai.RateLimitError):
        await client(gateway).chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES, extra_headers={"x-mock-status": "429"}
        )
    with pytest.raises(openai.BadRequestError):
        await client(gateway).chat.completions.create(
            model="gpt-4o-mini",
            messages=MESSAGES,
            stream=True,
            extra_headers={"x-mock-status": "400"},
        )


async def test_first_chunk_is_relayed_before_upstream_sends_the_second(
    gateway: RunningGateway, upstream: MockUpstream
) -> None:
    gate = upstream.gate("first")
    body = {"model": "gpt-4o-mini", "messages": MESSAGES, "stream": True}
    async with (
        aiohttp.ClientSession() as s,
        s.post(
            gateway.url + "/chat/completions",
            json=body,
            headers={"Authorization": f"Bearer {token()}", "x-mock-gate": "first"},
        ) as resp,
    ):
        first = await asyncio.wait_for(resp.content.readuntil(b"\n\n"), timeout=5)
        assert gate.first_chunk_sent.is_set() and not gate.release_event.is_set()
        assert first.startswith(b"data: {") and b'"role":"assistant"' in first
        gate.release()
        rest = await asyncio.wait_for(resp.content.read(), timeout=5)
    assert rest.endswith(b"data: [DONE]\n\n")


async def test_stream_cut_by_upstream_raises_in_the_sdk(gateway: RunningGateway) -> None:
    stream = await client(gateway).chat.completions.create(
        model="gpt-4o-mini",
        messages=MESSAGES,
        stream=True,
        extra_headers={"x-mock-drop-after-chunks": "3"},
    )
    received = 0
    with pytest.raises(openai.APIError, match="upstream"):
        async for _ in stream:
            received += 1
    assert received == 3


async def test_upstream_unreachable_is_502_and_slow_upstream_is_504(make_gateway) -> None:
    dead = await make_gateway(
        upstream={"base_url": f"http://127.0.0.1:{free_port()}/v1", "api_key": UPSTREAM_KEY}
    )
    with pytest.raises(openai.InternalServerError) as info:
        await client(dead).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert info.value.status_code == 502 and info.value.code == "upstream_unavailable"

    slow = await make_gateway(upstream={"read_timeout_seconds": 0.2})
    with pytest.raises(openai.InternalServerError) as info:
        await client(slow).chat.completions.create(
            model="gpt-4o-mini",
            messages=MESSAGES,
            extra_headers={"x-mock-first-byte-delay-ms": "2000"},
        )
    assert info.value.status_code == 504 and info.value.code == "upstream_timeout"


async def _post(url: str, data: bytes, headers: dict[str, str]) -> tuple[int, dict[str, object]]:
    async with aiohttp.ClientSession() as s, s.post(url, data=data, headers=headers) as resp:
        return resp.status, await resp.json(content_type=None)


async def test_bad_bodies_get_openai_shaped_4xx(make_gateway, upstream: MockUpstream) -> None:
    gw = await make_gateway(server={"host": "127.0.0.1", "port": 0, "max_body_bytes": 4096})
    auth = {"Authorization": f"Bearer {token()}", "Content-Type": "application/json"}
    url = gw.url + "/chat/completions"
    cases = [
        (b"{not json", 400, "invalid_json"),
        (b"[1, 2]", 400, None),
        (b'{"model": 5, "messages": []}', 400, None),
        (b'{"model": "gpt-4o-mini", "messages": [], "max_tokens": -1}', 400, None),
        (b'{"model": "gpt-4o-mini", "stream": "yes", "messages": []}', 400, None),
        (
            b'{"model": "gpt-4o-mini", "messages": [], "x": "' + b"a" * 5000 + b'"}',
            413,
            "request_too_large",
        ),
    ]
    for body, status, code in cases:
        got, payload = await _post(url, body, auth)
        assert got == status, body[:60]
        error = payload["error"]
        assert isinstance(error, dict) and set(error) == {"message", "type", "param", "code"}
        if code:
            assert error["code"] == code
    assert upstream.requests == []


async def test_path_traversal_is_refused(gateway: RunningGateway, upstream: MockUpstream) -> None:
    auth = {"Authorization": f"Bearer {token()}"}
    async with aiohttp.ClientSession() as s:
        for path in ["/v1/%2e%2e/admin", "/v1/models/%2E%2E/%2E%2E/x", "/v1/a/..%2Fb"]:
            async with s.get(URL(gateway.root + path, encoded=True), headers=auth) as resp:
                assert resp.status == 400, path
    assert upstream.requests == []


async def test_multipart_and_unknown_paths_pass_through_unparsed(
    gateway: RunningGateway, upstream: MockUpstream
) -> None:
    form = aiohttp.FormData()
    form.add_field("purpose", "batch")
    form.add_field("file", b'{"custom_id": 1}\n' * 100, filename="batch.jsonl")
    async with (
        aiohttp.ClientSession() as s,
        s.post(
            gateway.url + "/files?x=1", data=form, headers={"Authorization": f"Bearer {token()}"}
        ) as resp,
    ):
        assert resp.status == 200  # the mock's file object passes through unchanged
        uploaded = await resp.json()
        assert uploaded["object"] == "file" and uploaded["bytes"] == 1700
    seen = upstream.requests[-1]
    assert seen.path == "/v1/files" and seen.query == {"x": "1"}
    assert seen.headers["content-type"].startswith("multipart/form-data")
    assert b'{"custom_id": 1}\n' * 100 in seen.body


async def test_access_log_has_usage_and_no_secrets(
    gateway: RunningGateway, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gateway")
    jwt = token()
    sdk = openai.AsyncOpenAI(base_url=gateway.url, api_key=jwt, max_retries=0)
    await sdk.chat.completions.create(model="o3-mini", messages=MESSAGES)
    stream = await sdk.chat.completions.create(model="o3-mini", messages=MESSAGES, stream=True)
    async for _ in stream:
        pass
    lines = [r for r in caplog.records if r.name == "gateway.access"]
    assert len(lines) == 2
    for record in lines:
        fields = record.fields  # type: ignore[attr-defined]
        assert fields["team"] == "ml" and fields["model"] == "o3-mini" and fields["status"] == 200
        assert 0 < fields["reasoning_tokens"] < fields["completion_tokens"]
    everything = caplog.text + "".join(str(r.__dict__) for r in caplog.records)
    assert jwt not in everything and UPSTREAM_KEY not in everything and JWT_SECRET not in everything


async def test_model_list_shows_only_the_teams_models(gateway: RunningGateway) -> None:
    everything = {m.id async for m in client(gateway, "ml").models.list()}
    narrowed = {m.id async for m in client(gateway, "web").models.list()}
    assert "gpt-4o-mini" in everything and len(everything) > 1
    assert narrowed == {"gpt-4o-mini"}
    assert (await client(gateway, "web").models.retrieve("gpt-4o-mini")).id == "gpt-4o-mini"
    with pytest.raises(openai.NotFoundError):
        await client(gateway, "web").models.retrieve("o3-mini")
