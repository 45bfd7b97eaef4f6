"""ASGI middleware checking request bodies before any route sees them.

* Every body is read as JSON, whatever its Content-Type: Ollama ignores the header and its
  documented examples are `curl URL -d '{...}'`, which sends curl's default form type.
* A body over `MAX_BODY_BYTES` is refused with 413 instead of being buffered without bound.
* Text must be Unicode: invalid UTF-8 bytes, or JSON escapes of lone surrogates (`"\\udcff"`),
  would otherwise fail deep inside the engine's string conversion as a 500. They answer 400
  naming the field that holds them (`prompt`, `messages[0].content`).
"""

from __future__ import annotations

import json

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import ApiError, error_response

#: Far above any prompt the context window takes (a 128k-token prompt is well under 2 MiB).
MAX_BODY_BYTES = 16 * 1024 * 1024


def _is_surrogate_free(text: str) -> bool:
    return not any("\ud800" <= char <= "\udfff" for char in text)


def _field_with_bad_text(value, path: str = "") -> str | None:
    """The OpenAI-style path (`messages[0].content`) of the first string holding a surrogate."""
    if isinstance(value, str):
        return None if _is_surrogate_free(value) else (path or None)
    if isinstance(value, dict):
        for key, item in value.items():
            child = f"{path}.{key}" if path else str(key)
            if not _is_surrogate_free(str(key)):
                return path or None
            found = _field_with_bad_text(item, child)
            if found is not None:
                return found
    if isinstance(value, list):
        for index, item in enumerate(value):
            found = _field_with_bad_text(item, f"{path}[{index}]")
            if found is not None:
                return found
    return None


def text_error(body: bytes) -> ApiError | None:
    """Why `body` holds no valid Unicode text, or None when it does (or is no JSON at all: the
    route's own parser reports that)."""
    try:
        text = body.decode("utf-8")
        bad_byte = None
    except UnicodeDecodeError as error:
        # surrogateescape keeps each bad byte as a lone surrogate, so the JSON still parses and
        # the field holding it can be named.
        text = body.decode("utf-8", errors="surrogateescape")
        bad_byte = error.start
    if bad_byte is None and "\\ud" not in text.lower():
        return None  # the common case: valid UTF-8 without surrogate escapes, no second parse
    try:
        field = _field_with_bad_text(json.loads(text))
    except ValueError:
        field = None
    if bad_byte is None and field is None:
        return None  # only well-paired surrogate escapes (an emoji, say)
    what = field or "the request body"
    detail = f" (byte 0x{body[bad_byte]:02x} at offset {bad_byte})" if bad_byte is not None else ""
    return ApiError(400, f"{what} is not valid UTF-8 text{detail}", param=field, code="invalid_request")


class JsonBodies:
    """Presents every body as JSON, buffers it (bounded) and checks that its text is Unicode."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = [(k, v) for k, v in scope["headers"] if k != b"content-type"]
        scope = {**scope, "headers": [*headers, (b"content-type", b"application/json")]}
        if scope["method"] in ("GET", "HEAD", "OPTIONS", "DELETE"):
            await self.app(scope, receive, send)
            return

        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the client left before sending its whole body: nobody to answer
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                error = ApiError(413, f"the request body is larger than {MAX_BODY_BYTES} bytes",
                                 code="request_too_large")
                await error_response(Request(scope), error)(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)

        error = text_error(body)
        if error is not None:
            await error_response(Request(scope), error)(scope, receive, send)
            return

        replayed = False

        async def replay() -> Message:
            # The body once, then the real channel: a streaming route still hears the disconnect.
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)
