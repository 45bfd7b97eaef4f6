"""HTTP errors: one exception type, rendered in OpenAI's shape on /v1 and Ollama's on /api.

OpenAI clients read `{"error": {"message", "type", "param", "code"}}`; the Ollama client reads
`{"error": "message"}`. Engine exceptions, body validation errors and unknown routes all end up
in the shape the caller's client understands.
"""

from __future__ import annotations

import cortexstream
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
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
        """Ollama's error object (also sent as an NDJSON line when a stream fails midway)."""
        return {"error": self.message}


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


def _validation_error(exc: RequestValidationError) -> ApiError:
    # OpenAI answers malformed bodies with 400 and names the field; FastAPI's default is 422 with
    # a list the official clients cannot show.
    first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request body"}
    location = [str(part) for part in first.get("loc", ()) if part != "body"]
    param = ".".join(location) or None
    message = f"{param}: {first['msg']}" if param else first["msg"]
    return ApiError(400, message, param=param, code="invalid_value")


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

    async def on_unexpected_error(request: Request, exc: Exception) -> JSONResponse:
        # Starlette still logs the traceback; the client gets a well-formed 500.
        return error_response(request, ApiError(500, "internal server error", code="internal_error"))

    app.add_exception_handler(ApiError, on_api_error)
    app.add_exception_handler(cortexstream.CortexstreamError, on_engine_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(Exception, on_unexpected_error)
