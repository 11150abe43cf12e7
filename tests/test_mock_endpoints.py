"""The mock's files, audio, image edits, stored responses, moderations and conversations."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator

import openai
import pytest

from gateway.mock import MockUpstream
from gateway.mock.images import PNG_B64
from gateway.mock.moderations import CATEGORIES
from gateway.mock.server import STATE_KEY
from tests.support.gateway_proc import UPSTREAM_KEY

PNG = base64.b64decode(PNG_B64)
AUDIO = bytes(range(256)) * 256  # 64 KiB: four "seconds"


@pytest.fixture
async def client(upstream: MockUpstream) -> AsyncIterator[openai.AsyncOpenAI]:
    sdk = openai.AsyncOpenAI(base_url=upstream.url, api_key=UPSTREAM_KEY, max_retries=0)
    yield sdk
    await sdk.close()


async def test_files_round_trip(client: openai.AsyncOpenAI) -> None:
    data = b'{"custom_id": "1"}\n' * 10
    created = await client.files.create(file=("batch.jsonl", data), purpose="batch")
    assert created.id.startswith("file-") and created.bytes == len(data)
    assert created.filename == "batch.jsonl" and created.purpose == "batch"
    other = await client.files.create(file=("v.png", PNG), purpose="vision")
    listed = [f.id async for f in client.files.list()]
    assert listed == [other.id, created.id]  # newest first
    assert [f.id async for f in client.files.list(purpose="batch")] == [created.id]
    assert (await client.files.retrieve(created.id)).bytes == len(data)
    assert (await client.files.content(created.id)).read() == data
    deleted = await client.files.delete(created.id)
    assert deleted.deleted and deleted.id == created.id
    with pytest.raises(openai.NotFoundError):
        await client.files.retrieve(created.id)


async def test_file_upload_needs_a_known_purpose(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError):
        await client.files.create(file=("a.txt", b"x"), purpose="nonsense")  # type: ignore[arg-type]


async def test_transcriptions(client: openai.AsyncOpenAI) -> None:
    result = await client.audio.transcriptions.create(
        model="gpt-4o-transcribe", file=("a.wav", AUDIO)
    )
    again = await client.audio.transcriptions.create(
        model="gpt-4o-transcribe", file=("a.wav", AUDIO)
    )
    assert result.text and result.text == again.text
    usage = result.usage
    assert usage is not None and usage.type == "tokens"
    assert usage.input_token_details is not None and usage.input_token_details.audio_tokens == 40
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens
    text = await client.audio.transcriptions.create(
        model="gpt-4o-mini-transcribe", file=("a.wav", AUDIO), response_format="text"
    )
    assert text.strip() == result.text
    verbose = await client.audio.transcriptions.create(
        model="whisper-1", file=("a.wav", AUDIO), response_format="verbose_json"
    )
    assert verbose.duration == 4.0 and verbose.segments and verbose.language == "english"
    with pytest.raises(openai.BadRequestError):
        await client.audio.transcriptions.create(
            model="gpt-4o-transcribe", file=("a.wav", AUDIO), response_format="srt"
        )


async def test_streamed_transcription(client: openai.AsyncOpenAI) -> None:
    whole = await client.audio.transcriptions.create(
        model="gpt-4o-transcribe", file=("a.wav", AUDIO)
    )
    stream = await client.audio.transcriptions.create(
        model="gpt-4o-transcribe", file=("a.wav", AUDIO), stream=True
    )
    events = [event async for event in stream]
    deltas = [e.delta for e in events if e.type == "transcript.text.delta"]
    done = events[-1]
    assert done.type == "transcript.text.done" and done.text == whole.text
    assert "".join(deltas) == whole.text
    assert done.usage is not None and done.usage.total_tokens == whole.usage.total_tokens  # type: ignore[union-attr]
    with pytest.raises(openai.BadRequestError):
        await client.audio.transcriptions.create(
            model="whisper-1", file=("a.wav", AUDIO), stream=True
        )


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the SDK deprecates these
async def test_translations_and_speech(client: openai.AsyncOpenAI) -> None:
    translated = await client.audio.translations.create(model="whisper-1", file=("a.mp3", AUDIO))
    assert translated.text
    speech = await client.audio.speech.with_raw_response.create(
        model="gpt-4o-mini-tts", voice="alloy", input="Hello there"
    )
    assert speech.headers["content-type"] == "audio/mpeg"
    audio = speech.content
    assert audio.startswith(b"\xff\xfb") and len(audio) == 417 * len("Hello there")
    wav = await client.audio.speech.create(
        model="tts-1", voice="alloy", input="Hi", response_format="wav"
    )
    assert wav.read()[:4] == b"RIFF"


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
async def test_image_edits_and_variations(client: openai.AsyncOpenAI) -> None:
    edited = await client.images.edit(model="gpt-image-1", image=("a.png", PNG), prompt="a hat")
    assert edited.data and base64.b64decode(edited.data[0].b64_json or "") == PNG
    assert edited.usage is not None and edited.usage.input_tokens_details.image_tokens > 0
    varied = await client.images.create_variation(image=("a.png", PNG), n=2)
    assert varied.data is not None and len(varied.data) == 2 and varied.usage is None


async def test_stored_responses(client: openai.AsyncOpenAI) -> None:
    created = await client.responses.create(model="gpt-4o-mini", input="Hello there")
    fetched = await client.responses.retrieve(created.id)
    assert fetched.id == created.id and fetched.output_text == created.output_text
    items = await client.responses.input_items.list(created.id)
    (item,) = items.data
    assert item.type == "message" and item.role == "user"
    assert item.content[0].type == "input_text"
    with pytest.raises(openai.BadRequestError, match="background"):
        await client.responses.cancel(created.id)
    background = await client.responses.create(model="gpt-4o-mini", input="later", background=True)
    assert (await client.responses.cancel(background.id)).id == background.id
    await client.responses.delete(created.id)
    with pytest.raises(openai.NotFoundError):
        await client.responses.retrieve(created.id)
    unstored = await client.responses.create(model="gpt-4o-mini", input="x", store=False)
    with pytest.raises(openai.NotFoundError):
        await client.responses.retrieve(unstored.id)


async def test_streamed_responses_are_stored_and_items_page(client: openai.AsyncOpenAI) -> None:
    turns = [{"role": "user", "content": f"turn {i}"} for i in range(3)]
    stream = await client.responses.create(model="gpt-4o-mini", input=turns, stream=True)  # type: ignore[arg-type]
    events = [e async for e in stream]
    response_id = events[-1].response.id  # type: ignore[union-attr]
    page = await client.responses.input_items.list(response_id, limit=2, order="asc")
    assert [i.content[0].text for i in page.data] == ["turn 0", "turn 1"]  # type: ignore[union-attr]
    assert page.has_more


async def test_moderations(client: openai.AsyncOpenAI) -> None:
    result = await client.moderations.create(input=["fine", "also fine"])
    assert result.id.startswith("modr-") and len(result.results) == 2
    first = result.results[0]
    assert not first.flagged
    scores = first.category_scores.model_dump(by_alias=True)
    assert set(CATEGORIES) <= set(scores) and all(0 < scores[c] < 0.01 for c in CATEGORIES)


async def test_conversations(client: openai.AsyncOpenAI) -> None:
    created = await client.conversations.create(metadata={"topic": "demo"})
    assert created.id.startswith("conv_") and created.metadata == {"topic": "demo"}
    fetched = await client.conversations.retrieve(created.id)
    assert fetched.created_at == created.created_at
    updated = await client.conversations.update(created.id, metadata={"topic": "new"})
    assert updated.metadata == {"topic": "new"}
    deleted = await client.conversations.delete(created.id)
    assert deleted.deleted
    with pytest.raises(openai.NotFoundError):
        await client.conversations.retrieve(created.id)


async def test_stores_are_bounded(upstream: MockUpstream, client: openai.AsyncOpenAI) -> None:
    state = upstream.app[STATE_KEY]
    state.conversations.limit = 3
    ids = [(await client.conversations.create()).id for _ in range(5)]
    assert [c["id"] for c in state.conversations.values()] == ids[2:]
    assert json.dumps(state.conversations.values())
