"""Which OpenAI API operations a capped team may reach: every billable operation is metered by
the gateway or refused unless the operator allows it.

Derived from the official OpenAPI spec (``paths``, every method). An operation the table does
not know (a new API, a typo) is refused for capped teams: a cap that a new endpoint walks
around is not a cap. Teams without quota rules are not checked here at all.

Treatments:

- ``metered``: the gateway reserves before and settles after; the caps hold.
- ``free``: costs nothing by itself (reads, listings, deletes, metadata, storage the caps do
  not count anyway): forwarded.
- ``refused``: billed by OpenAI and not metered here: 403 unless the team's (or the
  defaults') ``allow_unmetered`` patterns name the path.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

Treatment = Literal["metered", "free", "refused"]

_READ = ("GET", "HEAD", "OPTIONS")


@dataclass(frozen=True)
class Surface:
    """One group of operations sharing a treatment and a reason."""

    group: str
    treatment: Treatment
    why: str
    operations: tuple[tuple[tuple[str, ...], str], ...]  # (methods, path template)


def _ops(methods: tuple[str, ...], *templates: str) -> tuple[tuple[tuple[str, ...], str], ...]:
    return tuple((methods, t) for t in templates)


SURFACES: tuple[Surface, ...] = (
    # --- metered ---------------------------------------------------------------------------
    Surface(
        "model calls",
        "metered",
        "Token usage is in every answer; the gateway reserves, caps the output and settles.",
        _ops(
            ("POST",),
            "/chat/completions",
            "/responses",  # background: true included: settled when it reaches a terminal state
            "/completions",
            "/embeddings",
            "/images/generations",
        ),
    ),
    Surface(
        "batches",
        "metered",
        "Every line of the input file is checked and the whole batch reserved at create; it "
        "settles from the output file's per-line usage when it finishes.",
        _ops(("POST",), "/batches"),
    ),
    # --- free ------------------------------------------------------------------------------
    Surface(
        "reads",
        "free",
        "Retrieving and listing never runs a model (models, files, batches, stored responses "
        "and completions, input items, jobs, runs, containers, videos, ...).",
        _ops(_READ, "/*"),
    ),
    Surface(
        "deletes",
        "free",
        "Deleting a stored object costs nothing (and stops storage billing).",
        _ops(("DELETE",), "/*"),
    ),
    Surface(
        "files and uploads",
        "free",
        "Storing files is not metered in tokens; what later reads them (batches, fine-tuning, "
        "vector stores) is checked on its own path.",
        _ops(
            ("POST",),
            "/files",
            "/uploads",
            "/uploads/{id}/parts",
            "/uploads/{id}/complete",
            "/uploads/{id}/cancel",
            "/containers/{id}/files",
            "/skills",
            "/skills/{id}",
            "/skills/{id}/versions",
        ),
    ),
    Surface(
        "cancels",
        "free",
        "Cancelling stops spend; batches and background responses settle what they used.",
        _ops(
            ("POST",),
            "/batches/{id}/cancel",
            "/responses/{id}/cancel",
            "/fine_tuning/jobs/{id}/cancel",
            "/fine_tuning/jobs/{id}/pause",
            "/threads/{id}/runs/{id}/cancel",
            "/vector_stores/{id}/file_batches/{id}/cancel",
            "/chatkit/sessions/{id}/cancel",
            "/realtime/calls/{id}/hangup",
            "/realtime/calls/{id}/reject",
        ),
    ),
    Surface(
        "metadata and containers of state",
        "free",
        "Creating or updating assistants, threads, messages, conversations and their items, "
        "stored completions' metadata, eval definitions and vector store metadata stores "
        "objects but runs no model.",
        _ops(
            ("POST",),
            "/chat/completions/{id}",
            "/conversations",
            "/conversations/{id}",
            "/conversations/{id}/items",
            "/assistants",
            "/assistants/{id}",
            "/threads",
            "/threads/{id}",
            "/threads/{id}/messages",
            "/threads/{id}/messages/{id}",
            "/threads/{id}/runs/{id}",
            "/evals",
            "/evals/{id}",
            "/evals/{id}/runs/{id}",
            "/vector_stores/{id}",
            "/vector_stores/{id}/files/{id}",
            "/fine_tuning/alpha/graders/validate",
            "/fine_tuning/checkpoints/{id}/permissions",
            "/audio/voice_consents",
            "/audio/voice_consents/{id}",
        ),
    ),
    Surface(
        "free model endpoints",
        "free",
        "OpenAI does not charge for moderations or for counting input tokens.",
        _ops(("POST",), "/moderations", "/responses/input_tokens"),
    ),
    # --- refused unless allowed ------------------------------------------------------------
    Surface(
        "fine-tuning",
        "refused",
        "Training is billed per trained token and graders run models; no usage comes back.",
        _ops(
            ("POST",),
            "/fine_tuning/jobs",
            "/fine_tuning/jobs/{id}/resume",
            "/fine_tuning/alpha/graders/run",
        ),
    ),
    Surface(
        "realtime",
        "refused",
        "Sessions and client secrets let a client talk to the model directly, past the gateway.",
        _ops(
            ("POST",),
            "/realtime/calls",
            "/realtime/calls/{id}/accept",
            "/realtime/calls/{id}/refer",
            "/realtime/client_secrets",
            "/realtime/sessions",
            "/realtime/transcription_sessions",
            "/realtime/translations/client_secrets",
        ),
    ),
    Surface(
        "audio",
        "refused",
        "Speech, transcription and translation are billed per character or minute: not "
        "metered yet; custom voices are billed features.",
        _ops(
            ("POST",),
            "/audio/speech",
            "/audio/transcriptions",
            "/audio/translations",
            "/audio/voices",
        ),
    ),
    Surface(
        "image edits and variations",
        "refused",
        "Billed per image; only generations are metered.",
        _ops(("POST",), "/images/edits", "/images/variations"),
    ),
    Surface(
        "assistants runs",
        "refused",
        "A run calls the model (and tools) server-side; its usage is never relayed here.",
        _ops(
            ("POST",),
            "/threads/runs",
            "/threads/{id}/runs",
            "/threads/{id}/runs/{id}/submit_tool_outputs",
        ),
    ),
    Surface(
        "vector stores",
        "refused",
        "Adding files embeds them (billed) and grows billed storage; search is billed per call.",
        _ops(
            ("POST",),
            "/vector_stores",
            "/vector_stores/{id}/files",
            "/vector_stores/{id}/file_batches",
            "/vector_stores/{id}/search",
        ),
    ),
    Surface(
        "evals",
        "refused",
        "An eval run calls the model on every item of its data source.",
        _ops(("POST",), "/evals/{id}/runs"),
    ),
    Surface(
        "videos",
        "refused",
        "Video generation is billed per second of output.",
        _ops(
            ("POST",),
            "/videos",
            "/videos/edits",
            "/videos/extensions",
            "/videos/{id}/remix",
            "/videos/characters",
        ),
    ),
    Surface(
        "server-side agents and tools",
        "refused",
        "Compaction calls a model; ChatKit sessions run workflows; code interpreter "
        "containers are billed per session; provenance checks are a billed service.",
        _ops(
            ("POST",),
            "/responses/compact",
            "/chatkit/sessions",
            "/containers",
            "/content_provenance_checks",
        ),
    ),
    Surface(
        "administration",
        "refused",
        "Organization and project administration changes keys, limits and spend settings of "
        "the whole account: never a team's business through a shared key.",
        _ops(("POST", "PUT", "PATCH", "DELETE"), "/organization/*", "/projects/*"),
    ),
)

UNKNOWN = Surface(
    "unknown",
    "refused",
    "Not in the API the gateway knows: it may be billed, so capped teams are refused.",
    (),
)


def _regex(template: str) -> re.Pattern[str]:
    parts = [re.escape(p) for p in re.split(r"\{[^}]+\}|\*", template)]
    seps = re.findall(r"\{[^}]+\}|\*", template)
    out = parts[0]
    for sep, part in zip(seps, parts[1:], strict=True):
        out += ("[^/]+" if sep.startswith("{") else ".*") + part
    return re.compile(out + "/?")


def _specificity(template: str) -> tuple[int, int, int]:
    # Literal segments beat placeholders (``/threads/runs`` before ``/threads/{id}``), and
    # both beat wildcards; a longer literal prefix beats a shorter one (``DELETE
    # /organization/*`` is administration, not one of the free deletes).
    literal = len(re.sub(r"\{[^}]+\}|\*", "", template))
    return (template.count("*"), template.count("{"), -literal)


_TABLE: tuple[tuple[frozenset[str], re.Pattern[str], Surface], ...] = tuple(
    (frozenset(methods), _regex(template), surface)
    for _, methods, template, surface in sorted(
        (
            (_specificity(template), methods, template, surface)
            for surface in SURFACES
            for methods, template in surface.operations
        ),
        key=lambda row: row[0],
    )
)


def surface(method: str, path: str) -> Surface:
    """The group ``method path`` belongs to (``path`` without /v1; a query string is ignored)."""
    method = method.upper()
    path = path.partition("?")[0]
    for methods, pattern, found in _TABLE:
        if method in methods and pattern.fullmatch(path) is not None:
            return found
    return UNKNOWN
