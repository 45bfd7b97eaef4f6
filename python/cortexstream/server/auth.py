"""The API key check, as ASGI middleware in front of everything else.

It runs before the body is read: an unauthenticated client must not make the server buffer
(and check) a body of up to 16 MiB. Every path but `/health` needs the key, including the
interactive docs (`/docs`, `/redoc`) and the schema (`/openapi.json`).
"""

from __future__ import annotations

import secrets

from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from .errors import ApiError, error_response

#: The one path a load balancer or orchestrator probes without credentials.
OPEN_PATHS = frozenset({"/health"})


def key_error(authorization: str, expected: str) -> ApiError | None:
    """Why `authorization` (the header's value) does not carry `expected`, or None when it does."""
    scheme, _, token = authorization.partition(" ")
    # compare_digest: the time taken must not tell how much of a guessed key was right.
    if scheme.lower() == "bearer" and secrets.compare_digest(token.strip().encode(), expected.encode()):
        return None
    return ApiError(401, "Incorrect or missing API key", type="invalid_request_error", code="invalid_api_key")


class ApiKeys:
    """Answers 401 (in the caller's API shape) to a request without `Authorization: Bearer <key>`;
    with no key configured it lets everything through."""

    def __init__(self, app: ASGIApp, api_key: str | None) -> None:
        self.app = app
        self.api_key = api_key

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.api_key is None or scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        error = key_error(request.headers.get("authorization", ""), self.api_key)
        if error is not None:
            await error_response(request, error)(scope, receive, send)
            return
        await self.app(scope, receive, send)
