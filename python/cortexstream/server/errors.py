"""HTTP errors: one exception type, rendered in OpenAI's shape on /v1 and Ollama's on /api.

OpenAI clients read `{"error": {"message", "type", "param", "code"}}`; the Ollama client reads
`{"error": "message"}`. Engine exceptions, body validation errors and unknown routes all end up
in the shape the caller's client understands.
"""

from __future__ import annotations

import cortexstream
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

#: Seconds a client should wait before retrying when the engine queue is full or still loading.
RETRY_AFTER_SECONDS = 1


class ApiError(Exception):
    """An error answered with `status`; `param` names the request field at fault."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str | None = None,
        param: str | None = None,
        code: str | None = None,
        retry_after: int | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type or ("server_error" if status >= 500 else "invalid_request_error")
        self.param = param
        self.code = code
        self.retry_after = retry_after

    def openai_body(self) -> dict:
        """OpenAI's error object (also sent as an SSE event when a stream fails midway)."""
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def ollama_body(self) -> dict:
        """Ollama's error object (also sent as an NDJSON line when a stream fails midway). It has
        no member for the field at fault, so the message starts with it: `options.top_p: ...`."""
        named = self.param is None or self.message.startswith(self.param)
        return {"error": self.message if named else f"{self.param}: {self.message}"}


#: The status nginx logs for "client closed request"; nobody reads the answer.
CLIENT_CLOSED_REQUEST = 499


class ClientDisconnected(Exception):
    """The client closed its connection while its request waited on the engine."""


def model_not_found(name: str) -> ApiError:
    return ApiError(404, f"The model '{name}' does not exist", param="model", code="model_not_found")


def from_engine_error(error: Exception) -> ApiError:
    """Maps an exception raised by the engine to the HTTP status a client expects."""
    if isinstance(error, ApiError):
        return error
    message = str(error)
    code = getattr(error, "code", None)
    if isinstance(error, cortexstream.ModelNotFoundError):
        return ApiError(404, message, param="model", code="model_not_found")
    if isinstance(error, cortexstream.InvalidRequestError):
        return ApiError(400, message, param=error.param, code=code)
    if isinstance(error, cortexstream.OverloadedError):
        return ApiError(503, message, code=code, retry_after=RETRY_AFTER_SECONDS)
    if isinstance(error, cortexstream.EngineClosedError):
        return ApiError(503, message, code=code)
    return ApiError(500, message or type(error).__name__, code=code or "internal_error")


def _is_ollama_path(request: Request) -> bool:
    return request.url.path.startswith("/api/")


def error_response(request: Request, error: ApiError) -> JSONResponse:
    """Renders `error` in the shape of the API the request went to."""
    body = error.ollama_body() if _is_ollama_path(request) else error.openai_body()
    headers = {"Retry-After": str(error.retry_after)} if error.retry_after is not None else None
    return JSONResponse(body, status_code=error.status, headers=headers)


#: Pydantic error types meaning "right type, value out of range": the core's `invalid_request`,
#: as when the engine itself rejects a value (a negative `max_tokens`, say).
_RANGE_ERRORS = frozenset({"greater_than", "greater_than_equal", "less_than", "less_than_equal"})
#: Location parts pydantic adds for the member of a union (`str`, `list[int]`, `ContentPart`):
#: not field names, so they do not belong in `param`.
_TYPE_NAMES = frozenset({"str", "int", "float", "bool", "list", "dict", "none"})


def param_path(location) -> str | None:
    """OpenAI's spelling of a field location: `messages[0].content`, `stop`, `logit_bias`."""
    path = ""
    for part in location:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part.isidentifier() and part not in _TYPE_NAMES and not part[0].isupper():
            path += f".{part}" if path else part
        else:
            # A union member's tag or a dict key: the field before it is the one at fault.
            break
    return path or None


def _validation_error(exc: RequestValidationError) -> ApiError:
    # OpenAI answers malformed bodies with 400 and names the field; FastAPI's default is 422 with
    # a list the official clients cannot show. Codes as OpenAI's: invalid_type for a wrong type,
    # missing_required_parameter, invalid_json; a value out of range is the core's invalid_request.
    errors = exc.errors() or [{"loc": (), "msg": "invalid request body", "type": "json_invalid"}]
    first = errors[0]
    location = [part for part in first.get("loc", ()) if part != "body"]
    param = param_path(location) if first["type"] != "json_invalid" else None
    # A union field fails once per member; they all describe the same field.
    kinds = {e["type"] for e in errors if param_path([p for p in e.get("loc", ()) if p != "body"]) == param}
    if kinds & _RANGE_ERRORS:
        code = "invalid_request"
    elif "missing" in kinds:
        code = "missing_required_parameter"
    elif "json_invalid" in kinds:
        code = "invalid_json"
    else:
        code = "invalid_type"
    message = f"{param}: {first['msg']}" if param else first["msg"]
    return ApiError(400, message, param=param, code=code)


def install_error_handlers(app: FastAPI) -> None:
    """Makes every failure, ours or the framework's, answer in the caller's API shape."""

    async def on_api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(request, exc)

    async def on_engine_error(request: Request, exc: cortexstream.CortexstreamError) -> JSONResponse:
        return error_response(request, from_engine_error(exc))

    async def on_validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(request, _validation_error(exc))

    async def on_http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(request, ApiError(exc.status_code, str(exc.detail)))

    async def on_client_disconnected(request: Request, exc: ClientDisconnected) -> Response:
        # The requests behind it are already cancelled; the answer goes nowhere.
        return Response(status_code=CLIENT_CLOSED_REQUEST)

    async def on_unexpected_error(request: Request, exc: Exception) -> JSONResponse:
        # Starlette still logs the traceback; the client gets a well-formed 500.
        return error_response(request, ApiError(500, "internal server error", code="internal_error"))

    app.add_exception_handler(ApiError, on_api_error)
    app.add_exception_handler(cortexstream.CortexstreamError, on_engine_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(ClientDisconnected, on_client_disconnected)
    app.add_exception_handler(Exception, on_unexpected_error)
