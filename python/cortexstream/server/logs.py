"""Server logs: one line per event (JSON or text), each with the id of the request it belongs
to; an access line per request; `X-Request-Id` accepted (when well formed) or generated, and
returned on every response.

The engine's own records (queued, first token, finished with reason and counts, ...) come
through :mod:`cortexstream.logs`; the server passes its request id to the engine as the
request's ``tag``, so those lines carry the same ``request_id``. Prompts are never logged unless
the server runs with ``--log-prompts`` (then the engine's ``queued`` record has ``prompt``).
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
import uuid
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Optional

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .. import logs as core_logs

HEADER = "X-Request-Id"
_HEADER_KEY = HEADER.lower().encode()
# A client's id is echoed into logs and headers: only a short, plain token is taken as is.
_WELL_FORMED = re.compile(r"[A-Za-z0-9._:\-]{1,128}")

ACCESS = logging.getLogger("cortexstream.server.access")

# Fields of the engine's records renamed in the output: its `tag` is our request id, its own
# numeric id is the engine's.
_RENAMED = {"request_id": "engine_request_id"}


@dataclass
class RequestLog:
    """What the access line of one request reports, filled in while it is served."""

    request_id: str
    model: Optional[str] = None
    prompt_tokens: int = 0
    completion_tokens: int = 0


_current: ContextVar[Optional[RequestLog]] = ContextVar("cortexstream_request", default=None)


def current_request_id() -> Optional[str]:
    entry = _current.get()
    return entry.request_id if entry else None


def note_model(name: str) -> None:
    """The model serving the current request (for its access line)."""
    entry = _current.get()
    if entry is not None:
        entry.model = name


def note_usage(prompt_tokens: int, completion_tokens: int) -> None:
    """Adds one generation's token counts to the current request's access line."""
    entry = _current.get()
    if entry is not None:
        entry.prompt_tokens += prompt_tokens
        entry.completion_tokens += completion_tokens


def current_usage() -> int:
    """The tokens (prompt + generated) the current request has used so far."""
    entry = _current.get()
    return entry.prompt_tokens + entry.completion_tokens if entry is not None else 0


def request_id_from(headers: list[tuple[bytes, bytes]]) -> str:
    """The client's `X-Request-Id` if well formed, else a new one."""
    for key, value in headers:
        if key.lower() == _HEADER_KEY:
            text = value.decode("latin-1").strip()
            if _WELL_FORMED.fullmatch(text):
                return text
    return uuid.uuid4().hex


def event_fields(record: logging.LogRecord) -> dict[str, Any]:
    """A record as one flat dict: time, level, logger, message, request id, then its fields."""
    fields: dict[str, Any] = dict(getattr(record, "fields", None) or {})
    request_id = fields.pop("tag", None) or current_request_id()
    line: dict[str, Any] = {
        "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
        "level": record.levelname.lower(),
        "logger": record.name,
        "message": record.getMessage(),
    }
    if request_id is not None:
        line["request_id"] = request_id
    for key, value in fields.items():
        name = _RENAMED.get(key, key)
        line[name if name not in line else f"field_{name}"] = value
    if record.exc_info:
        line["exception"] = logging.Formatter().formatException(record.exc_info)
    return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(event_fields(record), default=str)


class TextFormatter(logging.Formatter):
    """`time level logger [request id] message key=value ...` for people at a terminal."""

    def format(self, record: logging.LogRecord) -> str:
        line = event_fields(record)
        head = f"{line.pop('ts')} {line.pop('level').upper():<7} {line.pop('logger')}"
        request_id = line.pop("request_id", None)
        message = line.pop("message")
        tail = " ".join(f"{key}={value}" for key, value in line.items())
        return " ".join(part for part in (head, f"[{request_id}]" if request_id else "", message, tail) if part)


def setup_logging(log_format: str, level: str) -> None:
    """Routes every log line (ours, uvicorn's, the engine's) to stderr in `log_format`."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    numeric = logging.getLevelName(level.upper())
    root.setLevel(numeric)
    core_logs.forward_logs(numeric)


class RequestLogging:
    """ASGI middleware (outermost): gives each request its id, returns it in `X-Request-Id`,
    and writes the access line when the response is done."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        entry = RequestLog(request_id_from(scope["headers"]))
        token = _current.set(entry)
        started = time.perf_counter()
        status = 500  # what the client sees if the app fails before answering

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != _HEADER_KEY]
                message = {**message, "headers": [*headers, (_HEADER_KEY, entry.request_id.encode())]}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            route = scope.get("route")
            ACCESS.info("request", extra={"fields": {
                "method": scope["method"],
                "route": getattr(route, "path", scope["path"]),
                "status": status,
                "duration_ms": round((time.perf_counter() - started) * 1e3, 3),
                "model": entry.model,
                "prompt_tokens": entry.prompt_tokens,
                "completion_tokens": entry.completion_tokens,
            }})
            _current.reset(token)
