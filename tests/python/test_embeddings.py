"""Embeddings from the MiniLM sentence-transformer."""

from __future__ import annotations

import numpy as np
import pytest

import cortexstream


def test_embeddings_are_unit_vectors_ordered_by_meaning(engine):
    texts = ["A cat sits on the mat.", "A kitten is resting on a rug.", "Stock markets fell sharply today."]
    vectors = engine.embed(texts, as_numpy=True)
    assert vectors.shape == (3, 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    similar, unrelated = vectors[0] @ vectors[1], vectors[0] @ vectors[2]
    assert similar > unrelated + 0.2


def test_embed_returns_lists_by_default_and_reports_usage(engine):
    single = engine.embed("hello world")
    assert isinstance(single, list) and len(single) == 1 and len(single[0]) == 384
    vectors, prompt_tokens = engine.embed_with_usage(["hello world", "hi"])
    assert len(vectors) == 2
    assert prompt_tokens == 4 + 3  # [CLS] hello world [SEP] + [CLS] hi [SEP]
    np.testing.assert_allclose(vectors[0], single[0], atol=1e-6)


def test_engine_without_embedding_model_says_so():
    with cortexstream.Engine(embedding_model=False, kv_cache_tokens=1024) as engine:
        assert engine.model_info.embedding_model is None
        with pytest.raises(cortexstream.NoEmbeddingModelError):
            engine.embed("hello")
