"""Reading a ``multipart/form-data`` upload in memory, and no further than the limit.

Starlette's form parser spools files to a temporary file on disk: a prescription would sit
there in clear (I1) until collected. This reader streams the request body through
python-multipart's push parser, keeps the file part in memory, and stops reading as soon as
the file passes ``max_file_bytes`` (the limit + 1 byte is enough to know), so an oversized
upload costs at most the limit in memory and is never read whole.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request

__all__ = ["MalformedUploadError", "Upload", "UploadTooLargeError", "read_upload"]

FILE_FIELD: Final = "file"
MAX_FIELD_BYTES: Final = 1024
MAX_PARTS: Final = 8
ENVELOPE_BYTES: Final = 16 * 1024
"""Room for the multipart headers, boundaries and small fields around the file."""


class UploadTooLargeError(ValueError):
    """The file (or the whole body) is larger than allowed."""


class MalformedUploadError(ValueError):
    """Not a multipart body we accept: wrong type, no boundary, too many or odd parts."""


@dataclass(slots=True, repr=False)
class Upload:
    file: bytes | None = None
    fields: dict[str, str] = field(default_factory=dict)

    def __repr__(self) -> str:
        return (
            f"Upload(file={'yes' if self.file is not None else 'no'}, fields={sorted(self.fields)})"
        )


@dataclass(slots=True)
class _State:
    max_file_bytes: int
    name: str | None = None
    is_file: bool = False
    header_field: bytearray = field(default_factory=bytearray)
    header_value: bytearray = field(default_factory=bytearray)
    headers: dict[bytes, bytes] = field(default_factory=dict)
    data: bytearray = field(default_factory=bytearray)
    parts: int = 0
    upload: Upload = field(default_factory=Upload)
    error: Exception | None = None


async def read_upload(request: Request, *, max_file_bytes: int) -> Upload:
    """The body's file part (``file``) and its small text fields.

    Raises :class:`UploadTooLargeError` as soon as the file passes ``max_file_bytes`` (or the
    body passes it plus a small envelope), :class:`MalformedUploadError` for anything that is
    not a well-formed ``multipart/form-data`` body with at most one file.
    """
    content_type, options = parse_options_header(request.headers.get("content-type", ""))
    boundary = options.get(b"boundary")
    if content_type != b"multipart/form-data" or not boundary or len(boundary) > 200:
        raise MalformedUploadError("not multipart/form-data")
    limit = max_file_bytes + ENVELOPE_BYTES
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise MalformedUploadError("bad content-length")
        if int(declared) > limit:
            raise UploadTooLargeError("body too large")
    state = _State(max_file_bytes=max_file_bytes)
    parser = MultipartParser(boundary, _callbacks(state))  # type: ignore[arg-type]
    received = 0
    async for chunk in request.stream():
        received += len(chunk)
        if received > limit:
            raise UploadTooLargeError("body too large")
        try:
            parser.write(chunk)
        except Exception as exc:  # the parser's own errors: malformed body
            if state.error is not None:
                raise state.error from None
            raise MalformedUploadError("malformed multipart body") from exc
        if state.error is not None:
            raise state.error
    try:
        parser.finalize()
    except Exception as exc:
        raise MalformedUploadError("malformed multipart body") from exc
    if state.error is not None:
        raise state.error
    return state.upload


def _callbacks(state: _State) -> dict[str, object]:
    def fail(error: Exception) -> None:
        if state.error is None:
            state.error = error
        raise error

    def on_part_begin() -> None:
        state.parts += 1
        if state.parts > MAX_PARTS:
            fail(MalformedUploadError("too many parts"))
        state.name = None
        state.is_file = False
        state.headers = {}
        state.data = bytearray()

    def on_header_field(data: bytes, start: int, end: int) -> None:
        state.header_field += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        state.header_value += data[start:end]

    def on_header_end() -> None:
        state.headers[bytes(state.header_field).lower()] = bytes(state.header_value)
        state.header_field = bytearray()
        state.header_value = bytearray()

    def on_headers_finished() -> None:
        disposition, params = parse_options_header(state.headers.get(b"content-disposition", b""))
        if disposition != b"form-data" or b"name" not in params:
            fail(MalformedUploadError("part without a name"))
        name = params[b"name"].decode("utf-8", "replace")
        state.name = name
        state.is_file = name == FILE_FIELD
        if state.is_file and state.upload.file is not None:
            fail(MalformedUploadError("more than one file"))
        if not state.is_file and name in state.upload.fields:
            fail(MalformedUploadError("a field given twice"))

    def on_part_data(data: bytes, start: int, end: int) -> None:
        state.data += data[start:end]
        if state.is_file:
            if len(state.data) > state.max_file_bytes:
                fail(UploadTooLargeError("file too large"))
        elif len(state.data) > MAX_FIELD_BYTES:
            fail(MalformedUploadError("field too long"))

    def on_part_end() -> None:
        if state.name is None:
            return
        if state.is_file:
            state.upload.file = bytes(state.data)
        else:
            state.upload.fields[state.name] = bytes(state.data).decode("utf-8", "replace")

    return {
        "on_part_begin": on_part_begin,
        "on_header_field": on_header_field,
        "on_header_value": on_header_value,
        "on_header_end": on_header_end,
        "on_headers_finished": on_headers_finished,
        "on_part_data": on_part_data,
        "on_part_end": on_part_end,
    }
