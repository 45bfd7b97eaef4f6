"""Log-probability ``bytes`` are each token's raw bytes (issue 17, item 9): a byte-level token
that is part of a UTF-8 character decodes alone to U+FFFD, so its bytes cannot come from its
text. Checked on SmolLM2's tokens of an emoji, through the Python door and the REST server's
OpenAI formatting."""

from __future__ import annotations

from typing import List

import pytest

from cortexstream.server.openai_format import TokenTexts

CRAB = "\U0001f980"


def forced(engine, token_id: int):
    """The logprobs of one greedy token forced by a logit bias."""
    completion = engine.generate(
        "The crab emoji is", max_tokens=1, temperature=0.0, logprobs=2, logit_bias={token_id: 100}
    )
    assert completion.token_ids == [token_id]
    return completion.logprobs[0]


@pytest.fixture(scope="module")
def crab_tokens(engine) -> List[int]:
    ids = engine.tokenize(CRAB)
    assert len(ids) >= 2, f"the emoji is one token: {ids}"
    return ids


def test_the_bytes_of_partial_tokens_spell_the_character(engine, crab_tokens):
    pieces = [forced(engine, token_id) for token_id in crab_tokens]
    assert b"".join(p.bytes for p in pieces) == CRAB.encode()
    for token_id, piece in zip(crab_tokens, pieces):
        assert isinstance(piece.bytes, bytes)
        assert piece.bytes != "\ufffd".encode(), f"token {token_id} reports U+FFFD"
        with pytest.raises(UnicodeDecodeError):
            piece.bytes.decode()  # a partial sequence on its own
        # The forced token is the top alternative too; the bytes line up with `top`.
        assert piece.top[0][0] == token_id and piece.top_bytes[0] == piece.bytes
        assert len(piece.top_bytes) == len(piece.top) == 2


def test_the_openai_bytes_field_carries_the_raw_bytes(engine, crab_tokens):
    entry = TokenTexts(engine).chat_entry(forced(engine, crab_tokens[0]))
    assert bytes(entry["bytes"]) == forced(engine, crab_tokens[0]).bytes
    assert bytes(entry["bytes"]) != "\ufffd".encode()
    assert CRAB.encode().startswith(bytes(entry["bytes"]))
    assert entry["top_logprobs"][0]["bytes"] == entry["bytes"]
