"""The shared bad-input matrix (tests/hardening/bad_inputs.json) through the Python door.

Every case whose ``doors`` contain "python" runs against the session's real engine:
rejected cases raise the exception class registered for the core's code with ``param`` set
(or a ``TypeError`` naming the argument for ``type_error``), from ``generate``/``chat`` and
from ``stream``/``stream_chat`` alike; accepted cases give the exact greedy text and finish
reason, streamed and not. After every case the matrix's canary must come out right: a bad
request leaves the engine serving.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple

import pytest

import cortexstream
from cortexstream import errors

MATRIX = json.loads((Path(__file__).resolve().parent.parent / "hardening" / "bad_inputs.json").read_text())
CASES = [case for case in MATRIX["cases"] if "python" in case["doors"]]

# The class each core code must raise as; checked exactly, not through a base class.
CLASS_BY_CODE = {
    "invalid_request": errors.InvalidRequestError,
    "context_length_exceeded": errors.ContextLengthExceededError,
}


def resolve(value: Any) -> Any:
    """The matrix's special forms ($float, $repeat, $bytes_hex) as Python values."""
    if isinstance(value, dict) and len(value) == 1:
        ((key, arg),) = value.items()
        if key == "$float":
            return float(arg)  # "nan", "inf", "-inf"
        if key == "$repeat":
            return arg["text"] * arg["times"]
        if key == "$bytes_hex":
            return bytes.fromhex(arg)
    if isinstance(value, dict):
        return {k: resolve(v) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve(v) for v in value]
    return value


Call = Callable[[cortexstream.Engine], Any]


def calls(case: Dict[str, Any]) -> List[Tuple[str, Call]]:
    """The Python calls that express the case: the blocking one and the streaming one."""
    request = resolve(case["request"])
    if case["kind"] == "embed":
        return [("embed", lambda e: e.embed(request["input"]))]
    if "messages" in request:
        messages = request.pop("messages")
        return [
            ("chat", lambda e: e.chat(messages, **request)),
            ("stream_chat", lambda e: list(e.stream_chat(messages, **request))),
        ]
    prompt = request.pop("prompt_tokens") if "prompt_tokens" in request else request.pop("prompt")
    return [
        ("generate", lambda e: e.generate(prompt, **request)),
        ("stream", lambda e: list(e.stream(prompt, **request))),
    ]


def check_canary(engine: cortexstream.Engine) -> None:
    canary = MATRIX["canary"]
    sampling = {k: v for k, v in canary["request"].items() if k != "prompt"}
    completion = engine.generate(canary["request"]["prompt"], **sampling)
    assert (completion.text, completion.finish_reason) == (canary["expect"]["text"], canary["expect"]["finish_reason"])


@pytest.mark.parametrize("case", CASES, ids=[case["id"] for case in CASES])
def test_matrix_case(engine, case):
    expect = case["expect"]
    for name, call in calls(case):
        if expect.get("error") == "type_error":
            with pytest.raises(TypeError) as caught:
                call(engine)
            assert not isinstance(caught.value, cortexstream.CortexstreamError), f"{name}: {caught.value!r}"
            assert f"`{expect['param']}`" in str(caught.value), f"{name}: {caught.value}"
        elif "error" in expect:
            with pytest.raises(cortexstream.CortexstreamError) as caught:
                call(engine)
            error = caught.value
            assert type(error) is CLASS_BY_CODE[expect["error"]], f"{name}: {error!r}"
            assert (error.code, error.param) == (expect["error"], expect["param"]), f"{name}: {error!r}"
            for fragment in expect.get("message_contains", []):
                assert fragment in str(error), f"{name}: {error}"
        else:
            result = call(engine)
            if name in ("stream", "stream_chat"):
                text, finish_reason = "".join(c.text for c in result), result[-1].finish_reason
            else:
                text, finish_reason = result.text, result.finish_reason
            if "text" in expect:
                assert text == expect["text"], name
            if "text_not_equal" in expect:
                assert text and text != expect["text_not_equal"], name
            assert finish_reason == expect["finish_reason"], name
        check_canary(engine)


def test_every_python_case_is_run():
    """A case tagged for Python must not be silently skipped by a filter typo."""
    tagged = sum("python" in case["doors"] for case in MATRIX["cases"])
    assert tagged == len(CASES) >= 35


def test_logit_bias_accepts_int_and_str_keys(engine):
    """OpenAI's shape is a JSON object, whose keys are strings; a Python dict may use ints."""
    fox = dict(temperature=0.0, max_tokens=1)
    plain = engine.generate("The quick brown fox", **fox)
    assert plain.token_ids == [351]  # " with", the case the matrix bans
    for bias in ({351: -100}, {"351": -100.0}):
        assert engine.generate("The quick brown fox", logit_bias=bias, **fox).token_ids != [351]
    forced = engine.generate("The quick brown fox", logit_bias={504: 100}, **fox)
    assert forced.token_ids == [504]


@pytest.mark.parametrize(
    "bias",
    [[351], {351: "down"}, {3.5: 1}, {"abc": 1}, {-1: 1}, {2**40: 1}, {351: float("nan")}],
)
def test_malformed_logit_bias_names_the_field(engine, bias):
    # Wrong types too: the core reads the options, so every door reports its invalid_request.
    with pytest.raises(cortexstream.InvalidRequestError, match="logit_bias") as caught:
        engine.generate("Hello", logit_bias=bias, max_tokens=1)
    assert caught.value.param == "logit_bias"


@pytest.mark.parametrize("kwargs", [{"seed": 10**5000}, {"logit_bias": {10**5000: 1}}])
def test_integers_of_thousands_of_digits_are_invalid_requests_with_short_messages(engine, kwargs):
    # Python refuses to print such an int; the message must neither try nor echo it.
    with pytest.raises(cortexstream.InvalidRequestError) as caught:
        engine.generate("Hi", max_tokens=1, **kwargs)
    assert caught.value.param == next(iter(kwargs)) and len(str(caught.value)) < 300, caught.value
