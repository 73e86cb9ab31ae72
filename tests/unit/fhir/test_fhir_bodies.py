"""Bodies of the FHIR routes are read in a capped stream: a declared Content-Length past
the limit is refused before a byte is received, a stream stops as soon as it passes it."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from starlette.requests import Request

from labvault.fhir import routes


def _request(chunks: list[bytes], length: str | None) -> tuple[Request, list[int]]:
    received: list[int] = []
    headers = [(b"content-type", b"application/fhir+json")]
    if length is not None:
        headers.append((b"content-length", length.encode()))

    async def receive() -> dict[str, Any]:
        index = len(received)
        received.append(index)
        more = index + 1 < len(chunks)
        return {"type": "http.request", "body": chunks[index], "more_body": more}

    scope = {"type": "http", "method": "POST", "path": "/fhir/R4", "headers": headers}
    return Request(scope, receive), received


def _read(request: Request, limit: int) -> bytes:
    return asyncio.run(routes._capped_body(request, limit))


def test_a_declared_length_past_the_limit_reads_nothing() -> None:
    request, received = _request([b"x" * 10], str(10**9))
    with pytest.raises(routes._BodyTooLargeError):
        _read(request, 1024)
    assert received == []
    request, received = _request([b"x" * 10], "12ab")
    with pytest.raises(routes._BodyTooLargeError):
        _read(request, 1024)
    assert received == []


def test_a_stream_stops_at_the_limit() -> None:
    request, received = _request([b"x" * 600] * 100, None)
    with pytest.raises(routes._BodyTooLargeError):
        _read(request, 1024)
    assert len(received) == 2  # the chunk that passed the limit is the last one read
    request, _ = _request([b"ab", b"cd"], "4")
    assert _read(request, 1024) == b"abcd"
