"""A model without a chat template (a base model such as Gemma 3 270M) refuses chat requests
with a typed error instead of guessing a format, keeps serving plain text, and chats with a
template given as the engine option ``chat_template`` (issue 16 item 5)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Iterator

import pytest

import cortexstream
from cortexstream import models

TEMPLATE_KEY = b"tokenizer.chat_template"
#: Same length, so the file's layout is unchanged and the template is simply not found.
HIDDEN_KEY = b"tokenizer.chat_templatX"
MESSAGES = [{"role": "user", "content": "Hi"}]
TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def without_chat_template(model: Path, into: Path) -> Path:
    """A copy of `model` whose `tokenizer.chat_template` key is renamed away."""
    data = model.read_bytes()
    assert data.count(TEMPLATE_KEY) == 1, "the model has exactly one chat template key"
    copy = into / "base-model.gguf"
    copy.write_bytes(data.replace(TEMPLATE_KEY, HIDDEN_KEY))
    return copy


@pytest.fixture(scope="module")
def base_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return without_chat_template(models.resolve("smollm2"), tmp_path_factory.mktemp("base"))


@pytest.fixture(scope="module")
def base_engine(base_model: Path) -> Iterator[cortexstream.Engine]:
    with cortexstream.Engine(base_model, embedding_model=False, kv_cache_tokens=512) as engine:
        yield engine


def test_chat_is_a_typed_error_naming_the_missing_template(base_engine: cortexstream.Engine) -> None:
    for attempt in (
        lambda: base_engine.chat(MESSAGES, max_tokens=2),
        lambda: base_engine.stream_chat(MESSAGES, max_tokens=2),
        lambda: base_engine.apply_chat_template(MESSAGES),
    ):
        with pytest.raises(cortexstream.ChatTemplateMissingError) as error:
            attempt()
        assert error.value.code == "chat_template_missing"
        assert error.value.param == "messages"
        assert "tokenizer.chat_template" in str(error.value) and "`chat_template`" in str(error.value)
        # Callers catching the broader classes still catch it.
        assert isinstance(error.value, (cortexstream.ChatTemplateError, cortexstream.InvalidRequestError))


def test_async_chat_is_the_same_error(base_engine: cortexstream.Engine) -> None:
    with pytest.raises(cortexstream.ChatTemplateMissingError):
        asyncio.run(base_engine.achat(MESSAGES, max_tokens=2))


def test_plain_completion_still_works(base_engine: cortexstream.Engine) -> None:
    completion = base_engine.generate("The capital of France is", max_tokens=3, temperature=0)
    assert completion.usage.completion_tokens >= 1


def test_a_supplied_template_serves_chat(base_model: Path) -> None:
    with cortexstream.Engine(base_model, embedding_model=False, kv_cache_tokens=512, chat_template=TEMPLATE) as engine:
        assert engine.apply_chat_template(MESSAGES) == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        assert engine.chat(MESSAGES, max_tokens=2, temperature=0).usage.completion_tokens >= 1


def test_a_supplied_template_that_does_not_compile_names_the_option(base_model: Path) -> None:
    with pytest.raises(cortexstream.InvalidRequestError) as error:
        cortexstream.Engine(base_model, embedding_model=False, chat_template="{% for %}")
    assert error.value.param == "chat_template"


def test_the_rest_server_answers_400_with_the_code() -> None:
    """The REST door maps the error once, like every InvalidRequestError (OpenAI and Ollama)."""
    from cortexstream.server import errors

    api_error = errors.from_engine_error(cortexstream.ChatTemplateMissingError("no template", code="chat_template_missing"))
    assert (api_error.status, api_error.code) == (400, "chat_template_missing")
