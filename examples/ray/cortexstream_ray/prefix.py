"""The prefix routing key of a request: chained hashes of the leading blocks of its prompt.

The engine's prefix cache reuses KV blocks of a *rendered, tokenized* prompt. The gateway has no
tokenizer or chat template, so it approximates: the prompt text is the request's messages (role
and content, in order) or its raw prompt, cut into blocks of `BLOCK_CHARS` characters. Two
requests whose rendered prompts share leading tokens share leading message text, hence leading
blocks here, so the approximation routes them together. Limits (docs/ray.md): a block boundary
in characters is not a KV block boundary in tokens (a shared prefix shorter than one block is not
seen), and tools, images and the chat template's own text are not part of the key.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass

#: Characters per block: about 64 tokens of English text, four of the engine's KV blocks.
BLOCK_CHARS = 256
#: Blocks hashed at most: a prefix longer than this many blocks matches like one this long.
MAX_BLOCKS = 32

#: Routes whose body carries a prompt, and how to read its text.
CHAT_PATHS = frozenset({"/v1/chat/completions", "/api/chat"})
COMPLETION_PATHS = frozenset({"/v1/completions"})
GENERATE_PATHS = frozenset({"/api/generate"})


@dataclass(frozen=True)
class RoutingHint:
    """What the gateway tells the router about one request."""

    prefix: tuple[str, ...] = ()
    """Chained hashes of the prompt's leading blocks, shortest prefix first (empty: no prompt)."""
    replica: str | None = None
    """A replica the caller pinned (`X-Cortexstream-Replica`), e.g. to scrape its /metrics."""


def _content_text(content: object) -> str:
    """A message's content as text: a string, or the text parts of a list of parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(part.get("text", "") if isinstance(part, dict) else str(part) for part in content)
    return "" if content is None else json.dumps(content, sort_keys=True)


def _messages_text(messages: object) -> str:
    if not isinstance(messages, list):
        return ""
    return "".join(
        f"<{message.get('role', '')}>\n{_content_text(message.get('content'))}\n"
        for message in messages if isinstance(message, dict)
    )


def prompt_text(path: str, body: dict) -> str:
    """The prompt of a request to `path` as text ("" when the route has none, e.g. embeddings)."""
    if path in CHAT_PATHS:
        return _messages_text(body.get("messages"))
    if path in COMPLETION_PATHS:
        prompt = body.get("prompt")
        # Several prompts: the first decides (they are usually variations of one prefix).
        if isinstance(prompt, list) and prompt:
            prompt = prompt[0]
        return prompt if isinstance(prompt, str) else json.dumps(prompt)
    if path in GENERATE_PATHS:
        system = body.get("system")
        prompt = body.get("prompt")
        head = f"<system>\n{system}\n" if isinstance(system, str) else ""
        return head + (prompt if isinstance(prompt, str) else "")
    return ""


def block_hashes(model: str, text: str) -> tuple[str, ...]:
    """Chained hashes of `text`'s leading blocks: the i-th hashes the model and blocks 0..i.
    A last partial block counts too, so equal short prompts match each other."""
    hashes = []
    chain = hashlib.blake2b(model.encode(), digest_size=16)
    for start in range(0, min(len(text), BLOCK_CHARS * MAX_BLOCKS), BLOCK_CHARS):
        chain.update(text[start:start + BLOCK_CHARS].encode())
        hashes.append(chain.copy().hexdigest())
    return tuple(hashes)


def prefix_key(path: str, raw_body: bytes) -> tuple[str, ...]:
    """The routing key of a request body; empty for a body that is not a JSON object with a
    prompt (the replica answers its errors; the router sends it to the least-loaded replica)."""
    try:
        body = json.loads(raw_body) if raw_body else None
    except (ValueError, UnicodeDecodeError):
        return ()
    if not isinstance(body, dict):
        return ()
    text = prompt_text(path, body)
    if not text:
        return ()
    model = body.get("model")
    return block_hashes(model if isinstance(model, str) else "", text)


def routing_hint(path: str, raw_body: bytes, headers: Iterable[tuple[str, str]]) -> RoutingHint:
    pinned = next((value for name, value in headers if name.lower() == PIN_HEADER), None)
    return RoutingHint(prefix=prefix_key(path, raw_body), replica=pinned or None)


#: Request header pinning a request to one replica; every response names its replica in it.
PIN_HEADER = "x-cortexstream-replica"
