"""Per-key rate limits: requests per minute and tokens per minute, each a token bucket.

A bucket holds up to a minute's allowance and refills continuously (a key limited to 60
requests per minute gets one back every second), so a client that waits is never locked out
for a whole window and a burst can take at most one minute's allowance, as OpenAI's limits
behave.

Requests are counted when they arrive. Tokens (prompt + generated, as the response's `usage`
reports them) are counted once the response is done, as LiteLLM's and Envoy AI Gateway's
per-key token limits do: the count is exact (no tokenizer in front of the engine, no guess at
a `max_tokens` most clients leave unset; a stream the client leaves early pays its prompt and
the tokens it was sent, a plain request abandoned before its answer its prompt). A key is
admitted while its token bucket holds at least one token; the tokens of the responses it then
gets may take the bucket below zero, which later requests wait out. So
a key's usage can overshoot its limit only by the requests it had in flight when the limit was
reached, and then pays the overshoot back before its next request.

Every answer to a limited key carries OpenAI's `x-ratelimit-*` headers; a refused request gets
429 with `Retry-After` (whole seconds) and OpenAI's error (`type` "requests" or "tokens", `code`
"rate_limit_exceeded"), or Ollama's `{"error": ...}` on /api. The clock is injected, so tests
move time instead of sleeping.
"""

from __future__ import annotations

import math
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from .config_file import ApiKey
from .errors import ApiError

#: Seconds, from any fixed origin (`time.monotonic`).
Clock = Callable[[], float]

SECONDS_PER_MINUTE = 60.0

#: Float error a refill split into many small steps may leave (a bucket at 0.9999999999999999
#: after refilling to 1): treated as nothing.
_ROUNDING = 1e-9


class TokenBucket:
    """`per_minute` units, refilled continuously at `per_minute / 60` a second; the level may go
    below zero when a cost is only known afterwards (tokens)."""

    def __init__(self, per_minute: int, now: float) -> None:
        self.limit = per_minute
        self.level = float(per_minute)
        self.updated = now

    def refill(self, now: float) -> None:
        elapsed = max(0.0, now - self.updated)  # a clock never runs backwards for a bucket
        self.level = min(float(self.limit), self.level + elapsed * self.limit / SECONDS_PER_MINUTE)
        self.updated = max(self.updated, now)

    def seconds_until(self, amount: float) -> float:
        """How long until the bucket holds `amount` (0 if it does now)."""
        missing = amount - self.level
        return missing * SECONDS_PER_MINUTE / self.limit if missing > _ROUNDING else 0.0

    def seconds_until_full(self) -> float:
        return self.seconds_until(self.limit)

    def remaining(self) -> int:
        return max(0, math.floor(self.level + _ROUNDING))


@dataclass(frozen=True)
class Refusal:
    """Why a key's request is refused: which limit, and how long until it would be admitted."""

    kind: str  # "requests" or "tokens", OpenAI's error `type`
    retry_after_s: float


class KeyLimiter:
    """The buckets of one API key; a limit of None is no bucket (unlimited)."""

    def __init__(self, key: ApiKey, clock: Clock) -> None:
        self.key = key
        self.clock = clock
        now = clock()
        self.requests = TokenBucket(key.requests_per_minute, now) if key.requests_per_minute else None
        self.tokens = TokenBucket(key.tokens_per_minute, now) if key.tokens_per_minute else None

    @property
    def is_limited(self) -> bool:
        return self.requests is not None or self.tokens is not None

    def admit(self) -> Refusal | None:
        """Counts one request if both limits allow it (checked together: a request refused for
        its tokens does not use up a request); else why not."""
        now = self.clock()
        for bucket in (self.requests, self.tokens):
            if bucket is not None:
                bucket.refill(now)
        for kind, bucket in (("requests", self.requests), ("tokens", self.tokens)):
            if bucket is not None and bucket.seconds_until(1) > 0:
                return Refusal(kind, bucket.seconds_until(1))
        if self.requests is not None:
            self.requests.level -= 1
        return None

    def charge_tokens(self, tokens: int) -> None:
        """Counts the tokens of a finished response."""
        if self.tokens is not None and tokens > 0:
            self.tokens.refill(self.clock())
            self.tokens.level -= tokens

    def headers(self) -> list[tuple[str, str]]:
        """OpenAI's `x-ratelimit-*` headers: each limit, what is left of it, and the time until
        it is whole again (`1s`, `6m0s`, `250ms`)."""
        out = []
        for kind, bucket in (("requests", self.requests), ("tokens", self.tokens)):
            if bucket is not None:
                out += [(f"x-ratelimit-limit-{kind}", str(bucket.limit)),
                        (f"x-ratelimit-remaining-{kind}", str(bucket.remaining())),
                        (f"x-ratelimit-reset-{kind}", duration_text(bucket.seconds_until_full()))]
        return out

    def refusal_error(self, refusal: Refusal) -> ApiError:
        """The 429 for `refusal`: `Retry-After` in whole seconds, rounded up (a client retrying
        then is admitted), and at least 1."""
        retry_after = max(1, math.ceil(refusal.retry_after_s - _ROUNDING))
        bucket = self.requests if refusal.kind == "requests" else self.tokens
        assert bucket is not None
        message = (f"Rate limit reached for API key '{self.key.name}' on {refusal.kind} per minute: "
                   f"limit {bucket.limit}. Please try again in {retry_after}s.")
        return ApiError(429, message, type=refusal.kind, code="rate_limit_exceeded", retry_after=retry_after)


def duration_text(seconds: float) -> str:
    """A duration as OpenAI's reset headers write it: `250ms`, `1.5s`, `6m0s`."""
    if seconds < 1:
        return f"{math.ceil(seconds * 1000)}ms"
    minutes, rest = divmod(seconds, SECONDS_PER_MINUTE)
    rest_text = f"{rest:.3f}".rstrip("0").rstrip(".")
    return f"{int(minutes)}m{rest_text}s" if minutes else f"{rest_text}s"


class KeyRing:
    """The server's API keys and their limiters; empty means no key is required."""

    def __init__(self, keys: tuple[ApiKey, ...] | list[ApiKey], clock: Clock = time.monotonic) -> None:
        self.limiters = [KeyLimiter(key, clock) for key in keys]

    def __bool__(self) -> bool:
        return bool(self.limiters)

    def find(self, token: str) -> KeyLimiter | None:
        """The limiter of the key `token` is, or None. Every key is compared, in constant time
        each, so the time taken tells nothing about how close a guess was, nor which key matched."""
        found = None
        for limiter in self.limiters:
            if secrets.compare_digest(token.encode(), limiter.key.secret.encode()):
                found = limiter
        return found
