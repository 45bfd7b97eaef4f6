"""The API key check and per-key rate limits, as ASGI middleware in front of everything else.

It runs before the body is read: an unauthenticated or rate-limited client must not make the
server buffer (and check) a body of up to 16 MiB. Every path but `/health` needs a key,
including the interactive docs (`/docs`, `/redoc`) and the schema (`/openapi.json`). Each key
has its own limits (see `ratelimit.py`); one key's traffic never uses another's allowance.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import ApiError, error_response
from .logs import current_usage
from .ratelimit import KeyLimiter, KeyRing

#: The one path a load balancer or orchestrator probes without credentials.
OPEN_PATHS = frozenset({"/health"})


def bearer_token(authorization: str) -> str | None:
    """The token of an `Authorization: Bearer TOKEN` header's value, or None."""
    scheme, _, token = authorization.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None


def invalid_key_error() -> ApiError:
    return ApiError(401, "Incorrect or missing API key", type="invalid_request_error", code="invalid_api_key")


class ApiKeys:
    """Answers 401 (in the caller's API shape) to a request without `Authorization: Bearer <key>`
    for one of `keys`, and 429 to a key over its limits; with no key configured it lets
    everything through."""

    def __init__(self, app: ASGIApp, keys: KeyRing) -> None:
        self.app = app
        self.keys = keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self.keys or scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        token = bearer_token(request.headers.get("authorization", ""))
        limiter = self.keys.find(token) if token is not None else None
        if limiter is None:
            await error_response(request, invalid_key_error())(scope, receive, send)
            return
        if not limiter.is_limited:
            await self.app(scope, receive, send)
            return
        refusal = limiter.admit()
        if refusal is not None:
            response = error_response(request, limiter.refusal_error(refusal))
            response.headers.update(dict(limiter.headers()))
            await response(scope, receive, send)
            return
        await self._serve_limited(limiter, scope, receive, send)

    async def _serve_limited(self, limiter: KeyLimiter, scope: Scope, receive: Receive, send: Send) -> None:
        """Serves an admitted request: its response carries the key's `x-ratelimit-*` headers
        as its admission left them (concurrent requests each see their own count), and its
        tokens are counted once it is done (also when it failed or was cut short)."""
        headers = [(name.encode(), value.encode()) for name, value in limiter.headers()]

        async def send_with_limits(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *headers]}
            await send(message)

        try:
            await self.app(scope, receive, send_with_limits)
        finally:
            limiter.charge_tokens(current_usage())
