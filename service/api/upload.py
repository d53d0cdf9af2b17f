"""Incremental ``multipart/form-data`` parsing straight from the request stream.

``read_multipart`` feeds python-multipart's push parser with the body as it arrives and yields the parts one by
one: a text field whole (bounded: 64 KiB each, 1000 at most), a file part as an async iterator of its chunks,
to be consumed before the next part is read. Nothing is spooled to memory or disk here, so the service can
stream a multi-gigabyte model into storage, sniff its first bytes and enforce the size limit as the bytes arrive
(``service.jobs.service.JobService.submit``).

It knows nothing about models, options or jobs.
"""

from __future__ import annotations

import codecs
import contextlib
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

from python_multipart.multipart import MultipartParser, parse_options_header

from converter import map_errors

from ..jobs.errors import BadRequestError
from ..jobs.service import FieldPart, FilePart

__all__ = ["read_multipart"]

MAX_FIELD_BYTES = 64 * 1024
MAX_FIELDS = 1000
MAX_FILES = 10



def _malformed() -> contextlib.AbstractContextManager[None]:
    """The multipart parser's boundary: anything it raises is the client's malformed body."""
    return map_errors("malformed multipart body", BadRequestError, keep=(), type_name=False)

class _Reader:
    def __init__(self, stream: AsyncIterator[bytes], boundary: bytes, charset: str) -> None:
        self._stream = stream
        self._charset = charset
        self._events: deque[tuple[str, Any]] = deque()
        self._header_name = b""
        self._header_value = b""
        self._headers: dict[bytes, bytes] = {}
        self._done = False
        self._parser = MultipartParser(boundary, {
            "on_part_begin": self._on_part_begin,
            "on_part_data": self._on_part_data,
            "on_part_end": lambda: self._events.append(("end", None)),
            "on_header_field": self._on_header_field,
            "on_header_value": self._on_header_value,
            "on_header_end": self._on_header_end,
            "on_headers_finished": lambda: self._events.append(("headers", dict(self._headers))),
        })

    def _on_part_begin(self) -> None:
        self._headers = {}

    def _on_part_data(self, data: bytes, start: int, end: int) -> None:
        self._events.append(("data", bytes(data[start:end])))

    def _on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def _on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _on_header_end(self) -> None:
        self._headers[self._header_name.lower()] = self._header_value
        self._header_name = self._header_value = b""

    async def next_event(self) -> tuple[str, Any] | None:
        while not self._events:
            if self._done:
                return None
            try:
                chunk = await self._stream.__anext__()
            except StopAsyncIteration:
                self._done = True
                with _malformed():
                    self._parser.finalize()
                continue
            with _malformed():
                self._parser.write(chunk)
        return self._events.popleft()

    async def file_chunks(self) -> AsyncIterator[bytes]:
        while True:
            event = await self.next_event()
            if event is None:
                raise BadRequestError("malformed multipart body: it ends inside a part")
            kind, value = event
            if kind == "end":
                return
            yield value

    def decode(self, raw: bytes) -> str:
        try:
            return raw.decode(self._charset)
        except UnicodeDecodeError:
            raise BadRequestError("a form field is not valid text in the body's charset") from None


async def read_multipart(content_type: str | None, stream: AsyncIterator[bytes]) -> AsyncIterator[FieldPart | FilePart]:
    """Yield the parts of a ``multipart/form-data`` body.

    Raises:
        BadRequestError: the body is not multipart/form-data or is malformed, a field is too long, or there are
            too many parts.
    """
    kind, params = parse_options_header(content_type or "")
    if kind != b"multipart/form-data" or not params.get(b"boundary"):
        raise BadRequestError("expected a multipart/form-data body with a 'model' file part")
    charset = params.get(b"charset", b"utf-8").decode("latin-1")
    try:
        charset = codecs.lookup(charset).name
    except LookupError:
        charset = "utf-8"
    reader = _Reader(stream, params[b"boundary"], charset)
    fields = files = 0
    while True:
        event = await reader.next_event()
        if event is None:
            return
        kind_, headers = event
        if kind_ != "headers":
            continue
        _, disp = parse_options_header(headers.get(b"content-disposition", b""))
        if b"name" not in disp:
            raise BadRequestError("malformed multipart body: a part has no name")
        name = reader.decode(disp[b"name"])
        if b"filename" in disp:
            files += 1
            if files > MAX_FILES:
                raise BadRequestError(f"too many file parts (at most {MAX_FILES})")
            chunks = reader.file_chunks()
            yield FilePart(name=name, filename=reader.decode(disp[b"filename"]), chunks=chunks)
            async for _ in chunks:  # whatever the consumer left unread
                pass
        else:
            fields += 1
            if fields > MAX_FIELDS:
                raise BadRequestError(f"too many form fields (at most {MAX_FIELDS})")
            value = bytearray()
            async for chunk in reader.file_chunks():
                value += chunk
                if len(value) > MAX_FIELD_BYTES:
                    raise BadRequestError(f"form field {name!r} is longer than {MAX_FIELD_BYTES} bytes")
            yield FieldPart(name=name, value=reader.decode(bytes(value)))
