"""An OpenAI-compatible fake upstream for demos, tests and load tests.

``gateway mock-upstream --port N --api-key K`` runs it; tests start it in-process with
:func:`start_mock_upstream`. Paths are served both under ``/v1`` and without it:

- ``POST /v1/chat/completions``   JSON ``chat.completion`` or SSE ``data:`` chunks + ``[DONE]``
- ``POST /v1/responses``          JSON ``response`` or SSE ``event:``/``data:``, no ``[DONE]``
- ``POST /v1/completions``        legacy ``text_completion``, same streaming rules as chat
- ``POST /v1/embeddings``         deterministic unit vectors of the model's real size (1536 for
  ``text-embedding-3-small`` and ``-ada-002``, 3072 for ``-3-large``; ``dimensions`` shortens
  the 3 models), ``float`` or ``base64``
- ``POST /v1/images/generations`` a 1x1 PNG as ``b64_json`` (``usage`` for ``gpt-image*``);
  ``/v1/images/edits`` and ``/v1/images/variations`` take multipart and answer the same way
- ``GET  /v1/models``, ``GET /v1/models/{id}``
- ``GET|DELETE /v1/responses/{id}``, ``POST /v1/responses/{id}/cancel``,
  ``GET /v1/responses/{id}/input_items``: responses created with ``store`` not false
- ``/v1/files`` (multipart upload, list, retrieve, ``/content``, delete)
- ``POST /v1/audio/transcriptions`` and ``/translations`` (multipart; ``json``, ``text``,
  ``verbose_json``, ``srt``, ``vtt``), ``POST /v1/audio/speech`` (silent MP3 or WAV bytes)
- ``POST /v1/moderations`` (never flagged), ``/v1/conversations`` (create, retrieve,
  update, delete)
- anything else: 404 with an OpenAI-shaped error body.

Chat and Responses requests with function ``tools`` get tool calls, and ``response_format``
(chat) or ``text.format`` (Responses) JSON schemas get JSON valid for the schema; see
:mod:`gateway.mock.answers` and :mod:`gateway.mock.schema_values`. Their usage counts one
token per four characters of the JSON.

Other content is a run of lorem-like words chosen from a CRC of the prompt text, so the same
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
- ``x-mock-cached-tokens: N``: prompt tokens reported as cached (at most the prompt's).
- ``x-mock-background-delay-ms: N`` (on a ``background: true`` create) and
  ``x-mock-batch-delay-ms: N`` (on a batch create): how long the run takes.
- ``x-mock-batch-poll-failures: N`` (on a batch create): the next N retrieves of that batch
  answer 500 (a reconciler's failing poll).
- ``x-mock-gate: NAME``: a stream writes its first event, sets
  ``MockUpstream.gate(NAME).first_chunk_sent``, then waits for ``gate.release_event`` before
  writing the rest. Gates live in-process only (``app[GATES_KEY]``); a request naming a gate
  nobody releases waits until the server closes, which releases every gate.

Files, stored responses and conversations live in ``app[STATE_KEY]`` (a
:class:`~gateway.mock.state.MockState`), per app and bounded to the newest 1,000 of each.

Every reply has ``x-request-id: req_<hex>``, ``openai-processing-ms``,
``openai-organization: mock-org``, ``openai-version`` and ``x-ratelimit-*`` headers, so a
gateway test can check which ones it strips. Every request is recorded as a
:class:`RecordedRequest` in ``app[REQUESTS_KEY]`` (the newest 10,000 at least are kept);
its ``disconnected`` event is set when the client closed the connection before the reply was
complete. The server runs with aiohttp's handler cancellation, so a client that leaves stops
its answer at once (a delay, a gate or a stream), as closing a connection to OpenAI does.
"""

from gateway.mock.errors import MockError
from gateway.mock.hooks import Gate
from gateway.mock.server import (
    GATES_KEY,
    REQUESTS_KEY,
    STATE_KEY,
    MockUpstream,
    RecordedRequest,
    create_mock_app,
    run_mock_upstream,
    start_mock_upstream,
)

__all__ = [
    "GATES_KEY",
    "REQUESTS_KEY",
    "STATE_KEY",
    "Gate",
    "MockError",
    "MockUpstream",
    "RecordedRequest",
    "create_mock_app",
    "run_mock_upstream",
    "start_mock_upstream",
]
