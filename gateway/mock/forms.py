"""Reading ``multipart/form-data`` bodies (file uploads, audio, image edits).

The server has already read the body to record it, so this parses bytes rather than the
request stream; the stdlib MIME parser handles form-data once given the header line.
"""

from __future__ import annotations

from dataclasses import dataclass
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser

from aiohttp import web

from gateway.mock.errors import invalid


@dataclass(frozen=True, slots=True)
class FormField:
    data: bytes
    filename: str | None
    content_type: str

    def text(self) -> str:
        return self.data.decode("utf-8", "replace")


Form = dict[str, list[FormField]]


async def read_form(request: web.Request) -> Form:
    return parse_form(request.headers.get("Content-Type", ""), await request.read())


def parse_form(content_type: str, body: bytes) -> Form:
    if not content_type.lower().startswith("multipart/form-data"):
        raise invalid(
            "Invalid Content-Type header (expected multipart/form-data).",
            code="invalid_content_type",
        )
    head = b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n"
    message = BytesParser(policy=policy.default).parsebytes(head + body)
    form: Form = {}
    if not message.is_multipart():
        return form
    for part in message.iter_parts():
        if not isinstance(part, EmailMessage):
            continue
        name = part.get_param("name", header="content-disposition")
        if not isinstance(name, str):
            continue
        payload = part.get_payload(decode=True)
        data = payload if isinstance(payload, bytes) else b""
        form.setdefault(name, []).append(
            FormField(data, part.get_filename(), part.get_content_type())
        )
    return form


def field_text(form: Form, name: str, default: str | None = None) -> str | None:
    fields = form.get(name) or form.get(name + "[]")
    return fields[0].text() if fields else default


def require_file(form: Form, name: str) -> FormField:
    fields = form.get(name) or form.get(name + "[]")
    if not fields:
        raise invalid(
            f"Missing required parameter: '{name}'.", param=name, code="missing_required_parameter"
        )
    return fields[0]


def require_text(form: Form, name: str) -> str:
    value = field_text(form, name)
    if not value:
        raise invalid(
            f"Missing required parameter: '{name}'.", param=name, code="missing_required_parameter"
        )
    return value
