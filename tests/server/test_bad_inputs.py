"""The REST door of the bad-input matrix (`tests/hardening/bad_inputs.json`).

Every case whose `doors` include "rest" is sent as the OpenAI JSON a client would send: text or
token-id prompts to /v1/completions (OpenAI accepts a token array as the prompt), chat messages to
/v1/chat/completions, embedding inputs to /v1/embeddings. `top_k`, `min_p` and
`repetition_penalty` go as the top-level extension fields llama-server and vLLM accept, and
`logit_bias` as OpenAI's `{"token_id": bias}`. NaN and infinity are the bare JSON literals `NaN`
and `Infinity` (which Python's json module reads), `$bytes_hex` raw bytes inside the body.

A rejected case must answer 400 in OpenAI's error shape, naming the field in `error.param` and
(for errors the core raises) carrying the core's code in `error.code`; an accepted case must give
the exact greedy text, streamed or not. After every case the canary request must still get its
expected text: a bad request leaves the server serving.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from conftest import AUTH

MATRIX = json.loads((Path(__file__).resolve().parents[1] / "hardening" / "bad_inputs.json").read_text())
REST_CASES = [case for case in MATRIX["cases"] if "rest" in case["doors"]]
GENERATION_MODEL = "smollm2"
EMBEDDING_MODEL = "minilm"
#: The body is built with this string where raw bytes go, then the quoted string is swapped for them.
RAW_BYTES_MARK = "\x00raw-bytes\x00"
#: examples/server/bodies.py: MAX_BODY_BYTES, the largest body the server buffers.
MAX_BODY_BYTES = 16 * 1024 * 1024


def special_value(value):
    """Decodes the matrix's special values; `$bytes_hex` becomes a marker swapped in later."""
    if isinstance(value, dict) and len(value) == 1:
        (key, inner), = value.items()
        if key == "$float":
            return float(inner)  # json.dumps writes NaN / Infinity as bare literals
        if key == "$repeat":
            return inner["text"] * inner["times"]
        if key == "$bytes_hex":
            return RAW_BYTES_MARK
    if isinstance(value, dict):
        return {k: special_value(v) for k, v in value.items()}
    if isinstance(value, list):
        return [special_value(v) for v in value]
    return value


def raw_bytes_of(request: dict) -> bytes | None:
    for value in request.values():
        if isinstance(value, dict) and "$bytes_hex" in value:
            return bytes.fromhex(value["$bytes_hex"].replace(" ", ""))
    return None


def openai_request(case: dict) -> tuple[str, bytes]:
    """The endpoint and the exact body bytes for a matrix request."""
    request = dict(case["request"])
    if case["kind"] == "embed":
        path, body = "/v1/embeddings", {"model": EMBEDDING_MODEL}
    elif "messages" in request:
        path, body = "/v1/chat/completions", {"model": GENERATION_MODEL}
    else:
        path, body = "/v1/completions", {"model": GENERATION_MODEL}
        if "prompt_tokens" in request:
            request["prompt"] = request.pop("prompt_tokens")
    raw = raw_bytes_of(request)
    body.update(special_value(request))
    encoded = json.dumps(body).encode()
    if raw is not None:
        encoded = encoded.replace(json.dumps(RAW_BYTES_MARK).encode(), b'"' + raw + b'"')
    return path, encoded


def post(server, path: str, body: bytes) -> httpx.Response:
    return httpx.post(f"{server.url}{path}", content=body, headers={**AUTH, "Content-Type": "application/json"},
                      timeout=120)


def completion_text(response: httpx.Response) -> tuple[str, str]:
    choice = response.json()["choices"][0]
    return choice.get("text", (choice.get("message") or {}).get("content")), choice["finish_reason"]


def streamed_text(server, path: str, body: bytes) -> tuple[str, str | None]:
    """Text and finish reason of the same request with `stream: true`, joined from its SSE events."""
    request = {**json.loads(body), "stream": True}
    text, finish_reason = "", None
    with httpx.stream("POST", f"{server.url}{path}", json=request, headers=AUTH, timeout=120) as response:
        assert response.status_code == 200, response.read()
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            choice = json.loads(line[len("data: "):])["choices"][0]
            text += choice.get("text") or (choice.get("delta") or {}).get("content") or ""
            finish_reason = choice["finish_reason"] or finish_reason
    return text, finish_reason


def names_param(actual: str | None, expected: str) -> bool:
    """`messages[0].content` names `messages`; so does `messages` itself."""
    return actual is not None and (actual == expected or actual.startswith((f"{expected}[", f"{expected}.")))


def assert_canary(server) -> None:
    canary = MATRIX["canary"]
    response = post(server, "/v1/completions", json.dumps({"model": GENERATION_MODEL, **canary["request"]}).encode())
    assert response.status_code == 200, response.text
    assert completion_text(response) == (canary["expect"]["text"], canary["expect"]["finish_reason"])


@pytest.mark.parametrize("case", REST_CASES, ids=[case["id"] for case in REST_CASES])
def test_matrix_case(server, case):
    path, body = openai_request(case)
    response = post(server, path, body)
    expect = case["expect"]

    if "error" in expect:
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert error["type"] == "invalid_request_error"
        assert names_param(error["param"], expect["param"]), error
        # type_error is the door's own check, with OpenAI's codes for a wrong type or a missing
        # field; every other code is the core's and must come through unchanged.
        if expect["error"] == "type_error":
            assert error["code"] in ("invalid_type", "missing_required_parameter"), error
        else:
            assert error["code"] == expect["error"], error
        for fragment in expect.get("message_contains", []):
            assert fragment in error["message"], error
    else:
        assert response.status_code == 200, response.text
        text, finish_reason = completion_text(response)
        if "text" in expect:
            assert text == expect["text"]
        if "text_not_equal" in expect:
            assert text != expect["text_not_equal"]
        assert finish_reason == expect["finish_reason"]
        assert streamed_text(server, path, body) == (text, finish_reason)

    assert_canary(server)


def test_every_rest_case_is_run():
    # The matrix grows: a case marked for REST must not be skipped silently by the mapping above.
    assert len(REST_CASES) >= 38
    assert all(case["kind"] in ("generate", "embed") for case in REST_CASES)


# --- REST-only checks around the matrix ----------------------------------------------------------


@pytest.mark.parametrize(("path", "body", "param"), [
    # A JSON escape of a lone surrogate parses in Python but is no Unicode text.
    ("/v1/chat/completions", b'{"model": "smollm2", "messages": [{"role": "user", "content": "a\\udcff"}]}',
     "messages[0].content"),
    ("/v1/completions", b'{"model": "smollm2", "prompt": "x", "stop": ["\\ud800"]}', "stop[0]"),
])
def test_text_that_is_not_unicode_is_400_naming_the_field(server, path, body, param):
    response = post(server, path, body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param
    assert_canary(server)


def test_surrogate_pairs_are_text_and_pass(server):
    # An emoji escaped as a surrogate pair is valid text: the check must not reject it.
    body = b'{"model": "smollm2", "prompt": "I like \\ud83d\\ude00", "max_tokens": 2, "temperature": 0}'
    assert post(server, "/v1/completions", body).status_code == 200


def test_invalid_utf8_on_the_ollama_api_answers_in_ollama_shape(server):
    response = post(server, "/api/generate", b'{"model": "smollm2", "prompt": "The \xff\xfe", "stream": false}')
    assert response.status_code == 400
    assert set(response.json()) == {"error"} and "prompt" in response.json()["error"]


def test_logit_bias_key_that_is_no_token_id_is_400(server):
    body = json.dumps({"model": "smollm2", "prompt": "x", "max_tokens": 1, "logit_bias": {"abc": 1}}).encode()
    response = post(server, "/v1/completions", body)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "logit_bias"


def test_body_over_the_limit_is_413(server):
    body = b'{"model": "smollm2", "prompt": "' + b"a" * MAX_BODY_BYTES + b'"}'
    response = post(server, "/v1/completions", body)
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"
    assert_canary(server)
