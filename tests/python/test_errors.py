"""Invalid requests raise typed exceptions that name the field."""

from __future__ import annotations

import pytest

import cortexstream


@pytest.mark.parametrize(
    "sampling, param",
    [
        (dict(temperature=-1), "temperature"),
        (dict(top_p=0), "top_p"),
        (dict(max_tokens=0), "max_tokens"),
        (dict(max_tokens=-1), "max_tokens"),
        (dict(logprobs=21), "logprobs"),
        (dict(presence_penalty=3.0), "presence_penalty"),
        (dict(stop=[""]), "stop"),
    ],
)
def test_out_of_range_values_name_the_field(engine, sampling, param):
    with pytest.raises(cortexstream.InvalidRequestError) as caught:
        engine.generate("Hello", **sampling)
    error = caught.value
    assert isinstance(error, ValueError) and isinstance(error, cortexstream.CortexstreamError)
    assert error.param == param and error.code == "invalid_request"
    assert param in str(error)


def test_empty_prompt_is_invalid(engine):
    with pytest.raises(cortexstream.InvalidRequestError) as caught:
        engine.generate("", max_tokens=1)
    assert caught.value.param == "prompt"


@pytest.mark.parametrize(
    "call, field",
    [
        (lambda e: e.generate(3.5), "prompt"),
        (lambda e: e.chat("not a list of messages"), "messages"),
    ],
)
def test_wrong_prompt_types_raise_type_error_naming_the_argument(engine, call, field):
    with pytest.raises(TypeError, match=field):
        call(engine)


@pytest.mark.parametrize(
    "kwargs, param, wording",
    [
        ({"temperature": "hot"}, "temperature", 'invalid type: string "hot", expected f32'),
        ({"ignore_eos": "yes"}, "ignore_eos", 'invalid type: string "yes", expected a boolean'),
        ({"stop": 3}, "stop", "expected a string or a list of strings"),
        ({"max_tokens": b"4"}, "max_tokens", "invalid type: bytes"),
        ({"temprature": 0.5}, "options", "unknown option `temprature`"),
    ],
)
def test_bad_option_types_and_names_are_the_cores_invalid_request(engine, kwargs, param, wording):
    """The core reads the keyword arguments, so the message is the one every door gives."""
    with pytest.raises(cortexstream.InvalidRequestError) as caught:
        engine.generate("Hi", **kwargs)
    assert caught.value.param == param, caught.value
    assert wording in str(caught.value), caught.value


def test_chat_message_without_content_is_a_type_error(engine):
    # A message dict without `content` is malformed, like a missing field of a typed dict
    # (the bad-input matrix's `message_missing_content`).
    with pytest.raises(TypeError, match="`messages`.*`content`"):
        engine.chat([{"role": "user"}])


def test_prompt_longer_than_the_context_is_rejected(engine):
    too_long = [504] * (engine.model_info.context_length + 1)
    with pytest.raises(cortexstream.ContextLengthExceededError) as caught:
        engine.generate(too_long, max_tokens=1)
    assert caught.value.prompt_tokens == len(too_long)
    assert caught.value.context_length == engine.model_info.context_length


def test_unknown_model_name_says_what_to_run(tmp_path, monkeypatch):
    monkeypatch.setenv("CORTEXSTREAM_CACHE", str(tmp_path))
    with pytest.raises(cortexstream.ModelNotFoundError, match="python -m cortexstream pull smollm2"):
        cortexstream.Engine()
