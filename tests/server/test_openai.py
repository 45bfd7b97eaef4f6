"""The OpenAI endpoints, driven by the official `openai` client."""

from __future__ import annotations

import math

import httpx
import openai
import pytest
from conftest import AUTH

MODEL = "smollm2"
MESSAGES = [{"role": "user", "content": "Name three colors."}]
# Greedy and seeded: the same request must give the same text streamed or not.
GREEDY = {"temperature": 0, "seed": 7}


def test_chat_stream_joins_to_the_non_streamed_text(openai_client):
    whole = openai_client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=24, **GREEDY)
    chunks = list(openai_client.chat.completions.create(
        model=MODEL, messages=MESSAGES, max_tokens=24, stream=True, stream_options={"include_usage": True}, **GREEDY))

    assert whole.object == "chat.completion"
    assert whole.choices[0].message.role == "assistant"
    assert whole.choices[0].message.content
    assert whole.usage.completion_tokens <= 24
    assert whole.usage.total_tokens == whole.usage.prompt_tokens + whole.usage.completion_tokens

    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    *content_chunks, last_choice_chunk, usage_chunk = chunks
    streamed = "".join(c.choices[0].delta.content or "" for c in content_chunks)
    assert streamed == whole.choices[0].message.content
    assert last_choice_chunk.choices[0].finish_reason == whole.choices[0].finish_reason
    assert all(c.choices[0].finish_reason is None for c in content_chunks)
    assert usage_chunk.choices == []
    assert usage_chunk.usage.completion_tokens == whole.usage.completion_tokens
    assert usage_chunk.usage.prompt_tokens == whole.usage.prompt_tokens


def test_chat_logprobs_report_the_greedy_choice_as_the_top_alternative(openai_client):
    result = openai_client.chat.completions.create(
        model=MODEL, messages=MESSAGES, max_tokens=6, logprobs=True, top_logprobs=3, **GREEDY)
    content = result.choices[0].logprobs.content
    assert len(content) == result.usage.completion_tokens
    assert "".join(entry.token for entry in content) == result.choices[0].message.content
    for entry in content:
        assert len(entry.top_logprobs) == 3
        assert entry.logprob <= 0
        # Greedy sampling picks the most likely token, which heads the alternatives.
        assert entry.top_logprobs[0].token == entry.token
        assert entry.top_logprobs[0].logprob == pytest.approx(entry.logprob, abs=1e-5)
        assert [t.logprob for t in entry.top_logprobs] == sorted((t.logprob for t in entry.top_logprobs), reverse=True)
        assert bytes(entry.bytes) == entry.token.encode()


def test_n_choices_are_seeded_generations_of_their_own(openai_client):
    sampling = {"model": MODEL, "messages": MESSAGES, "max_tokens": 8, "temperature": 1.0}
    together = openai_client.chat.completions.create(n=3, seed=11, **sampling)
    # Choice i is generated with seed + i, so each one can be reproduced alone.
    alone = [openai_client.chat.completions.create(seed=11 + i, **sampling) for i in range(3)]
    assert [c.index for c in together.choices] == [0, 1, 2]
    assert [c.message.content for c in together.choices] == [a.choices[0].message.content for a in alone]
    assert together.usage.completion_tokens == sum(a.usage.completion_tokens for a in alone)


def test_completion_with_logprobs_and_stop(openai_client):
    prompt = "The capital of France is"
    result = openai_client.completions.create(model=MODEL, prompt=prompt, max_tokens=8, logprobs=2, **GREEDY)
    choice = result.choices[0]
    assert result.object == "text_completion"
    assert choice.finish_reason in ("stop", "length")
    assert "".join(choice.logprobs.tokens) == choice.text
    assert len(choice.logprobs.token_logprobs) == result.usage.completion_tokens
    assert all(len(top) <= 2 for top in choice.logprobs.top_logprobs)
    assert choice.logprobs.text_offset[0] == 0

    streamed = "".join(c.choices[0].text for c in openai_client.completions.create(
        model=MODEL, prompt=prompt, max_tokens=8, stream=True, **GREEDY) if c.choices)
    assert streamed == choice.text

    # A stop string cuts the text before it and is never returned.
    word = choice.text.split()[1] if len(choice.text.split()) > 1 else choice.text.strip()
    stopped = openai_client.completions.create(model=MODEL, prompt=prompt, max_tokens=8, stop=[word], **GREEDY)
    assert stopped.choices[0].finish_reason == "stop"
    assert stopped.choices[0].text == choice.text[: choice.text.index(word)]


def test_embeddings_are_unit_vectors_that_rank_similar_texts_closer(openai_client):
    texts = ["A cat sits on the mat.", "A kitten is sitting on a rug.", "Stock markets fell sharply today."]
    # The client asks for base64 by default and decodes it; float is asked for explicitly.
    default = openai_client.embeddings.create(model="all-minilm-l6-v2", input=texts)
    floats = openai_client.embeddings.create(model="minilm", input=texts, encoding_format="float")
    vectors = [d.embedding for d in default.data]
    assert [d.index for d in default.data] == [0, 1, 2]
    assert all(len(v) == 384 for v in vectors)
    assert all(math.isclose(math.fsum(x * x for x in v), 1.0, rel_tol=1e-4) for v in vectors)
    assert all(a == pytest.approx(b, abs=1e-6) for a, b in zip(vectors[0], floats.data[0].embedding, strict=True))
    assert default.usage.prompt_tokens > 0

    def cosine(a, b):
        return math.fsum(x * y for x, y in zip(a, b, strict=True))

    assert cosine(vectors[0], vectors[1]) > cosine(vectors[0], vectors[2]) + 0.2


def test_models_answer_to_their_aliases(openai_client, server):
    ids = {m.id for m in openai_client.models.list().data}
    assert ids == {"smollm2", "minilm"}
    assert openai_client.models.retrieve("SmolLM2-135M-Instruct.Q4_1").id == "smollm2"
    assert openai_client.models.retrieve("all-minilm-l6-v2").id == "minilm"
    with pytest.raises(openai.NotFoundError) as missing:
        openai_client.models.retrieve("gpt-4")
    assert missing.value.body["code"] == "model_not_found"


@pytest.mark.parametrize(
    ("overrides", "param"),
    [
        ({"temperature": -1}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"n": 0}, "n"),
    ],
)
def test_invalid_parameters_answer_400_naming_the_field(openai_client, overrides, param):
    with pytest.raises(openai.BadRequestError) as error:
        openai_client.chat.completions.create(model=MODEL, messages=MESSAGES, **{"max_tokens": 4, **overrides})
    assert error.value.status_code == 400
    assert error.value.body["param"] == param
    assert error.value.body["type"] == "invalid_request_error"


def test_unknown_model_is_404_model_not_found(openai_client):
    with pytest.raises(openai.NotFoundError) as error:
        openai_client.chat.completions.create(model="no-such-model", messages=MESSAGES, max_tokens=4)
    assert error.value.body["code"] == "model_not_found"
    assert error.value.body["param"] == "model"


def test_malformed_body_is_400_in_openai_shape(server):
    response = httpx.post(f"{server.url}/v1/chat/completions", headers=AUTH, json={"model": MODEL, "messages": "hi"})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "messages"
    assert set(error) == {"message", "type", "param", "code"}
