"""Generation through Python against llama.cpp's reference outputs."""

from __future__ import annotations

import pytest

import cortexstream

GREEDY = dict(temperature=0.0, ignore_eos=True)


def test_greedy_raw_completion_matches_llama_cpp(engine, reference):
    ref = reference["raw_completion"]
    assert engine.tokenize(ref["prompt"]) == ref["prompt_token_ids"]
    # Up to the float64 forward's first near tie (the fixture's greedy_near_tie).
    clear = ref["greedy_clear_tokens"]
    completion = engine.generate(ref["prompt"], max_tokens=clear, **GREEDY)
    assert completion.token_ids == ref["greedy_token_ids"][:clear]
    assert completion.text == engine.detokenize(ref["greedy_token_ids"][:clear])
    assert completion.finish_reason == "length"
    assert completion.usage.prompt_tokens == len(ref["prompt_token_ids"])
    assert completion.usage.completion_tokens == clear
    assert completion.usage.total_tokens == len(ref["prompt_token_ids"]) + clear
    assert completion.timings.total_ns >= completion.timings.time_to_first_token_ns > 0
    assert completion.logprobs is None


def test_token_id_prompt_equals_text_prompt(engine, reference):
    ref = reference["raw_completion"]
    from_ids = engine.generate(ref["prompt_token_ids"], max_tokens=6, **GREEDY)
    assert from_ids.token_ids == ref["greedy_token_ids"][:6]


def test_stream_chunks_join_to_the_completion(engine):
    prompt = "The capital of France is"
    expected = engine.generate(prompt, max_tokens=16, **GREEDY)
    stream = engine.stream(prompt, max_tokens=16, **GREEDY)
    chunks = list(stream)
    assert "".join(c.text for c in chunks) == expected.text
    assert [c.token_id for c in chunks[:-1]] == expected.token_ids
    last = chunks[-1]
    assert (last.finish_reason, last.token_id, last.usage.completion_tokens) == ("length", None, 16)
    assert all(c.finish_reason is None for c in chunks[:-1])
    assert stream.completion.text == expected.text
    assert stream.finished


def test_chat_uses_the_models_template(engine, reference):
    ref = reference["chat_template_prompt"]
    assert engine.apply_chat_template(ref["messages"]) == ref["rendered"]
    completion = engine.chat(ref["messages"], max_tokens=8, temperature=0.0)
    assert completion.usage.prompt_tokens == len(ref["token_ids"])
    assert completion.text.strip()
    streamed = "".join(c.text for c in engine.stream_chat(ref["messages"], max_tokens=8, temperature=0.0))
    assert streamed == completion.text


def test_stop_string_ends_generation_without_emitting_it(engine, reference):
    ref = reference["raw_completion"]
    full = engine.generate(ref["prompt"], max_tokens=12, **GREEDY).text
    stop = "brown"  # the greedy text is " with a quick brown bear..."
    assert stop in full
    completion = engine.generate(ref["prompt"], max_tokens=12, stop=stop, **GREEDY)
    assert completion.finish_reason == "stop"
    assert completion.text == full[: full.index(stop)]


def test_logprobs_are_reported_per_token(engine):
    completion = engine.generate("Hello", max_tokens=4, logprobs=3, **GREEDY)
    assert len(completion.logprobs) == 4
    for token_id, lp in zip(completion.token_ids, completion.logprobs):
        assert lp.token_id == token_id
        assert len(lp.top) == 3
        # Greedy: the sampled token is the most likely one.
        assert lp.top[0][0] == token_id and lp.logprob == pytest.approx(lp.top[0][1])
        assert lp.logprob <= 0.0


def test_seeded_sampling_is_reproducible(engine):
    def sample(seed: int) -> str:
        return engine.generate("Once upon a time", max_tokens=10, temperature=1.0, seed=seed, ignore_eos=True).text

    assert sample(7) == sample(7)
    others = {sample(seed) for seed in (8, 9, 10)}
    assert others != {sample(7)}, "different seeds should usually give different text"


def test_model_info(engine):
    info = engine.model_info
    assert (info.architecture, info.context_length, info.vocab_size) == ("llama", 8192, 49152)
    assert info.embedding_model is not None and info.embedding_dim == 384
    assert isinstance(engine, cortexstream.Engine) and not engine.closed
