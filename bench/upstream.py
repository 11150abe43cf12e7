"""The fake OpenAI upstream: nginx answering ``POST /v1/chat/completions`` from memory.

A fixed ``chat.completion`` JSON body, or (with the request header ``x-bench-mode: sse``) a
fixed 13-chunk ``chat.completion.chunk`` stream ending in ``data: [DONE]``, whose last chunk
carries the usage (the gateway asks for ``stream_options.include_usage``). Bodies are inlined
in the config with ``return 200 '...'``, which nginx answers for any method (its static file
module would refuse a POST with 405). ``/_bench/status`` is nginx's stub_status: its request
counter tells how many requests really reached the upstream.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness import (
    HOST,
    BenchError,
    Cores,
    Managed,
    Processes,
    ensure_debian_packages,
    find_binary,
    free_port,
    http,
    wait_for_port,
)

MODEL = "gpt-4o-mini"
CREATED = 1_764_000_000
WORDS = ["Hello", " from", " the", " benchmark", " upstream", ",", " a", " static", " reply", "."]
USAGE: dict[str, Any] = {
    "prompt_tokens": 42,
    "completion_tokens": len(WORDS),
    "total_tokens": 42 + len(WORDS),
    "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
    "completion_tokens_details": {
        "reasoning_tokens": 0,
        "audio_tokens": 0,
        "accepted_prediction_tokens": 0,
        "rejected_prediction_tokens": 0,
    },
}


def _compact(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"))


def json_body() -> str:
    return _compact(
        {
            "id": "chatcmpl-bench0000000000000000000001",
            "object": "chat.completion",
            "created": CREATED,
            "model": MODEL,
            "choices": [
                {
                    "index": 0,
                    "message": {
                        "role": "assistant",
                        "content": "".join(WORDS),
                        "refusal": None,
                        "annotations": [],
                    },
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": USAGE,
            "service_tier": "default",
            "system_fingerprint": "fp_bench",
        }
    )


def sse_chunks() -> list[str]:
    """13 chunk objects: role, 10 content deltas, finish, usage (then ``[DONE]``)."""

    def chunk(delta: dict[str, Any], finish: str | None, usage: Any = None) -> str:
        choices = (
            []
            if usage is not None
            else [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]
        )
        return _compact(
            {
                "id": "chatcmpl-bench0000000000000000000002",
                "object": "chat.completion.chunk",
                "created": CREATED,
                "model": MODEL,
                "service_tier": "default",
                "system_fingerprint": "fp_bench",
                "choices": choices,
                "usage": usage,
            }
        )

    chunks = [chunk({"role": "assistant", "content": "", "refusal": None}, None)]
    chunks += [chunk({"content": word}, None) for word in WORDS]
    chunks.append(chunk({}, "stop"))
    chunks.append(chunk({}, None, usage=USAGE))
    return chunks


def sse_body() -> str:
    return "".join(f"data: {c}\n\n" for c in sse_chunks()) + "data: [DONE]\n\n"


def _nginx_string(text: str) -> str:
    if "'" in text or "\\" in text or "$" in text:
        raise BenchError("an inlined nginx body cannot contain ', \\ or $")
    return f"'{text}'"


NGINX_CONF = """\
daemon off;
master_process off;  # one process: it dies with the harness (PR_SET_PDEATHSIG)
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/nginx-error.log warn;
worker_rlimit_nofile 65536;

events {{
    worker_connections 16384;
    multi_accept on;
}}

http {{
    access_log off;
    server_tokens off;
    keepalive_requests 10000000;
    keepalive_timeout 300s;
    client_max_body_size 16m;
    client_body_buffer_size 1m;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;

    server {{
        listen {host}:{port} backlog=4096;

        location = /v1/chat/completions {{
            if ($http_x_bench_mode = "sse") {{
                rewrite ^ /_bench/sse last;
            }}
            rewrite ^ /_bench/json last;
        }}
        location = /_bench/json {{
            internal;
            default_type application/json;
            add_header x-request-id req_bench_json;
            return 200 {json_body};
        }}
        location = /_bench/sse {{
            internal;
            default_type text/event-stream;
            add_header x-request-id req_bench_sse;
            add_header cache-control no-cache;
            return 200 {sse_body};
        }}
        location = /_bench/status {{
            stub_status;
        }}
        location / {{
            default_type application/json;
            return 404 '{{"error":{{"message":"not served by the bench upstream"}}}}';
        }}
    }}
}}
"""


@dataclass
class Nginx:
    proc: Managed
    port: int

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}/v1"

    @property
    def url(self) -> str:
        return f"{self.base_url}/chat/completions"

    def requests_counter(self) -> int:
        """nginx's request counter; each read of it counts itself too."""
        reply = http("GET", f"http://{HOST}:{self.port}/_bench/status", timeout=5)
        match = re.search(r"^\s*\d+\s+\d+\s+(\d+)\s*$", reply.body.decode(), re.MULTILINE)
        if not match:
            raise BenchError(f"cannot read nginx stub_status: {reply.body!r}")
        return int(match.group(1))


def ensure_tools(with_redis: bool = False) -> None:
    wanted: dict[str, list[str]] = {"nginx": ["nginx-light", "nginx"], "wrk": ["wrk"]}
    if with_redis:
        wanted["redis-server"] = ["redis-server"]
        wanted["redis-cli"] = ["redis-tools", "redis-server"]
    ensure_debian_packages(wanted)


def start_nginx(procs: Processes, cores: Cores) -> Nginx:
    binary = find_binary("nginx")
    if binary is None:
        raise BenchError("nginx is not installed")
    directory = procs.workdir / "nginx"
    directory.mkdir(exist_ok=True)
    port = free_port()
    conf = Path(directory / "nginx.conf")
    conf.write_text(
        NGINX_CONF.format(
            dir=directory,
            host=HOST,
            port=port,
            json_body=_nginx_string(json_body()),
            sse_body=_nginx_string(sse_body()),
        )
    )
    test = procs.start("nginx-test", [binary, "-t", "-p", str(directory), "-c", str(conf)])
    if test.popen.wait(timeout=30) != 0:
        raise BenchError(f"nginx rejected its config:\n{test.log_tail()}")
    procs.stop(test)
    proc = procs.start(
        "nginx", [*cores.taskset("load"), binary, "-p", str(directory), "-c", str(conf)]
    )
    wait_for_port(port, proc)
    nginx = Nginx(proc, port)
    verify_upstream(nginx)
    return nginx


def verify_upstream(nginx: Nginx) -> None:
    """POST both modes once and check status, content type and body."""
    json_reply = http("POST", nginx.url, body=b"{}", headers={"Content-Type": "application/json"})
    if json_reply.status != 200 or json_reply.body.decode() != json_body():
        raise BenchError(f"nginx JSON reply is wrong: {json_reply.status} {json_reply.body!r}")
    if not json_reply.headers.get("content-type", "").startswith("application/json"):
        raise BenchError(f"nginx JSON content type: {json_reply.headers}")
    sse_reply = http(
        "POST",
        nginx.url,
        body=b'{"stream":true}',
        headers={"Content-Type": "application/json", "x-bench-mode": "sse"},
    )
    if sse_reply.status != 200 or sse_reply.body.decode() != sse_body():
        raise BenchError(f"nginx SSE reply is wrong: {sse_reply.status} {sse_reply.body!r}")
    if not sse_reply.headers.get("content-type", "").startswith("text/event-stream"):
        raise BenchError(f"nginx SSE content type: {sse_reply.headers}")
