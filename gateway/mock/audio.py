"""``/audio/transcriptions``, ``/audio/translations`` (multipart) and ``/audio/speech``.

The "transcript" is lorem text seeded from the audio bytes, so the same upload always gives
the same words. ``gpt-4o*-transcribe`` models report token usage; ``whisper-1`` reports
duration, which the mock takes to be one second per 16 KiB of audio. With ``stream=true``
the non-whisper models send ``transcript.text.delta`` events, one per word, then
``transcript.text.done`` with the usage.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

from aiohttp import web

from gateway import json_codec
from gateway.mock import content
from gateway.mock.errors import invalid
from gateway.mock.forms import Form, field_text, read_form, require_file, require_text
from gateway.mock.hooks import Ctx
from gateway.mock.params import require_model, require_string

_BYTES_PER_SECOND = 16 * 1024
_TEXT_FORMATS = {"text": "text/plain; charset=utf-8", "srt": "text/plain", "vtt": "text/vtt"}
# One silent MPEG-1 Layer III frame: 128 kbit/s, 44.1 kHz, 417 bytes.
_MP3_FRAME = b"\xff\xfb\x90\x64" + b"\x00" * 413
_SPEECH_TYPES = {
    "mp3": "audio/mpeg",
    "opus": "audio/ogg",
    "aac": "audio/aac",
    "flac": "audio/flac",
    "wav": "audio/wav",
    "pcm": "audio/pcm",
}


async def transcriptions(ctx: Ctx) -> web.StreamResponse:
    return await _transcribe(ctx, "transcribe")


async def translations(ctx: Ctx) -> web.StreamResponse:
    return await _transcribe(ctx, "translate")


async def _transcribe(ctx: Ctx, task: str) -> web.StreamResponse:
    form = await read_form(ctx.request)
    audio = require_file(form, "file")
    model = require_text(form, "model")
    words = content.tokens(content.seed(audio.data.hex()[:4096]), content.DEFAULT_COMPLETION_TOKENS)
    text = "".join(words).capitalize() + "."
    seconds = max(1, len(audio.data) // _BYTES_PER_SECOND)
    fmt = _response_format(form, model)
    if task == "transcribe" and field_text(form, "stream") == "true":
        if model == "whisper-1":
            raise invalid(
                "Streaming is not supported for the whisper-1 model.",
                param="stream",
                code="unsupported_value",
            )
        usage = _usage(model, form, seconds, len(words))
        return await ctx.stream(_transcript_events(text, usage))
    if fmt in _TEXT_FORMATS:
        body = _subtitles(text, seconds, fmt) if fmt in ("srt", "vtt") else text + "\n"
        return ctx.body(body.encode(), _TEXT_FORMATS[fmt])
    if fmt == "verbose_json":
        return ctx.json(
            {
                "task": task,
                "language": "english",
                "duration": float(seconds),
                "text": text,
                "segments": [_segment(text, seconds)],
                "usage": {"type": "duration", "seconds": seconds},
            }
        )
    if task == "translate":
        return ctx.json({"text": text})
    return ctx.json({"text": text, "usage": _usage(model, form, seconds, len(words))})


def _transcript_events(text: str, usage: dict[str, object]) -> Iterator[bytes]:
    # Data-only SSE: the SDKs type these events by their JSON ``type``.
    first, *rest = text.split(" ")
    for word in [first, *(" " + w for w in rest)]:
        delta = {"type": "transcript.text.delta", "delta": word, "logprobs": []}
        yield b"data: " + json_codec.dumps(delta) + b"\n\n"
    done = {"type": "transcript.text.done", "text": text, "logprobs": [], "usage": usage}
    yield b"data: " + json_codec.dumps(done) + b"\n\n"


def _response_format(form: Form, model: str) -> str:
    fmt = field_text(form, "response_format", "json") or "json"
    allowed = {"json", "text", "srt", "vtt", "verbose_json"}
    if fmt not in allowed:
        raise invalid(
            f"Invalid value for 'response_format': '{fmt}'.",
            param="response_format",
            code="invalid_value",
        )
    if model != "whisper-1" and fmt not in ("json", "text"):
        raise invalid(
            f"response_format '{fmt}' is not compatible with model '{model}'. "
            "Use 'json' or 'text'.",
            param="response_format",
            code="unsupported_value",
        )
    return fmt


def _usage(model: str, form: Form, seconds: int, output_tokens: int) -> dict[str, object]:
    if model == "whisper-1":
        return {"type": "duration", "seconds": seconds}
    prompt = field_text(form, "prompt", "") or ""
    text_tokens = content.estimate_tokens(prompt) if prompt else 0
    # About ten audio tokens a second, as gpt-4o-transcribe bills.
    audio_tokens = 10 * seconds
    input_tokens = text_tokens + audio_tokens
    return {
        "type": "tokens",
        "input_tokens": input_tokens,
        "input_token_details": {"text_tokens": text_tokens, "audio_tokens": audio_tokens},
        "output_tokens": output_tokens,
        "total_tokens": input_tokens + output_tokens,
    }


def _segment(text: str, seconds: int) -> dict[str, object]:
    return {
        "id": 0,
        "seek": 0,
        "start": 0.0,
        "end": float(seconds),
        "text": text,
        "tokens": list(range(50364, 50364 + len(text.split()))),
        "temperature": 0.0,
        "avg_logprob": -0.25,
        "compression_ratio": 1.2,
        "no_speech_prob": 0.01,
    }


def _subtitles(text: str, seconds: int, fmt: str) -> str:
    sep = "," if fmt == "srt" else "."
    stamp = f"00:00:00{sep}000 --> 00:00:{min(seconds, 59):02d}{sep}000"
    if fmt == "srt":
        return f"1\n{stamp}\n{text}\n\n"
    return f"WEBVTT\n\n{stamp}\n{text}\n\n"


async def speech(ctx: Ctx) -> web.StreamResponse:
    p = ctx.payload
    require_model(p)
    text = require_string(p, "input")
    if not isinstance(p.get("voice"), dict):  # a custom voice is an object
        require_string(p, "voice")
    fmt = p.get("response_format") or "mp3"
    if fmt not in _SPEECH_TYPES:
        raise invalid(
            f"Invalid value for 'response_format': '{fmt}'.",
            param="response_format",
            code="invalid_value",
        )
    # Longer input, longer audio: about one frame (26 ms) per character.
    frames = max(1, len(text))
    if fmt == "wav":
        pcm = b"\x00\x00" * 600 * frames
        body = _wav_header(len(pcm)) + pcm
    else:
        body = _MP3_FRAME * frames
    return ctx.body(body, _SPEECH_TYPES[fmt])


def _wav_header(data_len: int) -> bytes:
    rate = 24_000
    fmt = struct.pack("<HHIIHH", 1, 1, rate, rate * 2, 2, 16)
    return (
        b"RIFF"
        + struct.pack("<I", 36 + data_len)
        + b"WAVEfmt "
        + struct.pack("<I", 16)
        + fmt
        + b"data"
        + struct.pack("<I", data_len)
    )
