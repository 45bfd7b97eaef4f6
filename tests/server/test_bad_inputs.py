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

The same cases run through the Ollama API too (every one Ollama can express: text prompts to
/api/generate with `raw`, messages to /api/chat, inputs to /api/embed, sampling fields in
`options`): a rejected case answers 400 in Ollama's `{"error": "..."}` shape with the field, as
the Ollama request spells it, in the message. Every Ollama route is also sent bad input of its own.
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
#: The matrix's `json_schema` (the engine's name) as each REST API carries it, and the field a
#: REST error names for it: OpenAI's `response_format` and Ollama's `format`.
OPENAI_CONSTRAINT_FIELD = "response_format"
OLLAMA_CONSTRAINT_FIELD = "format"
#: cortexstream/server/bodies.py: MAX_BODY_BYTES, the largest body the server buffers.
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
    if "json_schema" in request:
        schema = request.pop("json_schema")
        request[OPENAI_CONSTRAINT_FIELD] = {"type": "json_schema", "json_schema": {"name": "case", "schema": schema}}
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


def openai_param(param: str) -> str:
    """The field an OpenAI error names for the engine's `param`."""
    return OPENAI_CONSTRAINT_FIELD if param == "json_schema" else param


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
        assert names_param(error["param"], openai_param(expect["param"])), error
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


# --- the Ollama door of the matrix ---------------------------------------------------------------

#: The engine's name of a sampling field -> where an Ollama request holds it (`options.<name>`).
#: Written out here rather than read from the server's table, so the test checks that table.
OLLAMA_OPTIONS = {"temperature": "temperature", "top_k": "top_k", "top_p": "top_p", "min_p": "min_p",
                  "presence_penalty": "presence_penalty", "frequency_penalty": "frequency_penalty",
                  "repetition_penalty": "repeat_penalty", "max_tokens": "num_predict", "stop": "stop",
                  "seed": "seed"}
#: Matrix fields Ollama's API has no place for (token-id prompts, `n`, logprobs, logit_bias).
NOT_IN_OLLAMA = {"prompt_tokens", "n", "logprobs", "logit_bias", "stop_token_ids"}


def ollama_field(name: str) -> str:
    if name == "json_schema":
        return OLLAMA_CONSTRAINT_FIELD
    return f"options.{OLLAMA_OPTIONS[name]}" if name in OLLAMA_OPTIONS else name


def ollama_skip_reason(case: dict) -> str | None:
    """Why a REST case has no Ollama equivalent, or None when it has one."""
    request = case["request"]
    if NOT_IN_OLLAMA & set(request):
        return f"Ollama has no {sorted(NOT_IN_OLLAMA & set(request))}"
    if request.get("prompt") == "" or request.get("messages") == []:
        return "Ollama answers an empty prompt or message list by loading the model (tested below)"
    if isinstance(request.get("max_tokens"), int) and request["max_tokens"] < 0:
        return "Ollama's negative num_predict means no limit"
    if case["id"] == "message_missing_content":
        return "Ollama's message content is optional"
    return None


OLLAMA_CASES = [case for case in REST_CASES if ollama_skip_reason(case) is None]


def ollama_request(case: dict) -> tuple[str, bytes]:
    """The Ollama endpoint and body bytes for a matrix request: a text prompt goes to
    /api/generate with `raw` (no chat template, as /v1/completions), messages to /api/chat,
    embedding inputs to /api/embed; sampling fields go in `options` under Ollama's names."""
    request = dict(case["request"])
    if case["kind"] == "embed":
        path, body = "/api/embed", {"model": EMBEDDING_MODEL}
    elif "messages" in request:
        path, body = "/api/chat", {"model": GENERATION_MODEL, "stream": False}
    else:
        path, body = "/api/generate", {"model": GENERATION_MODEL, "stream": False, "raw": True}
    options = {OLLAMA_OPTIONS[name]: request.pop(name) for name in list(request) if name in OLLAMA_OPTIONS}
    if "json_schema" in request:
        request[OLLAMA_CONSTRAINT_FIELD] = request.pop("json_schema")
    raw = raw_bytes_of(request)
    body.update(special_value(request))
    if options:
        body["options"] = special_value(options)
    encoded = json.dumps(body).encode()
    if raw is not None:
        encoded = encoded.replace(json.dumps(RAW_BYTES_MARK).encode(), b'"' + raw + b'"')
    return path, encoded


def ollama_text(response: httpx.Response) -> tuple[str, str]:
    body = response.json()
    text = body["response"] if "response" in body else body["message"]["content"]
    return text, body["done_reason"]


@pytest.mark.parametrize("case", OLLAMA_CASES, ids=[case["id"] for case in OLLAMA_CASES])
def test_matrix_case_on_the_ollama_api(server, case):
    path, body = ollama_request(case)
    response = post(server, path, body)
    expect = case["expect"]

    if "error" in expect:
        assert response.status_code == 400, response.text
        # Ollama's shape, which its client reads: one `error` string, naming the field as the
        # Ollama request spells it (`options.num_predict`, not the engine's `max_tokens`).
        assert set(response.json()) == {"error"}, response.text
        message = response.json()["error"]
        assert ollama_field(expect["param"]) in message, message
        for fragment in expect.get("message_contains", []):
            assert fragment in message, message
    else:
        assert response.status_code == 200, response.text
        text, done_reason = ollama_text(response)
        if "text" in expect:
            assert text == expect["text"]
        if "text_not_equal" in expect:
            assert text != expect["text_not_equal"]
        assert done_reason == expect["finish_reason"]

    assert_canary(server)


def test_most_rest_cases_run_on_the_ollama_api():
    # The skip rules above must not quietly drop the matrix: every sampling, prompt, message and
    # embedding-input case that Ollama can express is run.
    assert len(OLLAMA_CASES) >= 30, [case["id"] for case in REST_CASES if case not in OLLAMA_CASES]


@pytest.mark.parametrize(("path", "body", "field"), [
    ("/api/generate", {"model": "smollm2", "prompt": 42, "stream": False}, "prompt"),
    ("/api/generate", {"model": "smollm2", "prompt": "x", "options": {"num_predict": 0}, "stream": False},
     "options.num_predict"),
    ("/api/generate", {"model": "smollm2", "prompt": "hello " * 9000, "stream": False}, "prompt"),
    ("/api/chat", {"model": "smollm2", "messages": [{"role": "wizard", "content": "hi"}], "stream": False},
     "messages"),
    ("/api/chat", {"model": "smollm2", "messages": [{"role": "user", "content": "hi"}],
                   "options": {"top_p": 0}, "stream": True}, "options.top_p"),
    ("/api/embed", {"model": "minilm", "input": []}, "input"),
    ("/api/embed", {"model": "minilm", "input": ["x"] * 2049}, "input"),
    ("/api/embeddings", {"model": "minilm", "prompt": ""}, "prompt"),
    ("/api/embeddings", {"model": "minilm"}, "prompt"),
    ("/api/show", {"model": 7}, "model"),
])
def test_every_ollama_route_names_the_field_of_bad_input(server, path, body, field):
    response = post(server, path, json.dumps(body).encode())
    assert response.status_code == 400, response.text
    assert set(response.json()) == {"error"}, response.text
    assert response.json()["error"].startswith(f"{field}"), response.json()
    assert_canary(server)


@pytest.mark.parametrize(("path", "body", "content"), [
    ("/api/generate", {"model": "smollm2", "prompt": "", "stream": False}, {"response": ""}),
    ("/api/chat", {"model": "smollm2", "messages": [], "stream": False},
     {"message": {"role": "assistant", "content": ""}}),
])
def test_ollama_empty_prompt_or_messages_loads_the_model(server, path, body, content):
    # Ollama documents both as the way to preload a model: answered at once, nothing generated.
    before = server.metrics()["cortexstream_requests_finished_total"]
    response = post(server, path, json.dumps(body).encode())
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["done"] is True and answer["done_reason"] == "load"
    assert {key: answer[key] for key in content} == content
    assert server.metrics()["cortexstream_requests_finished_total"] == before


@pytest.mark.parametrize(("options", "field", "wording"), [
    ({"num_predict": "ten"}, "options.num_predict", 'invalid type: string "ten"'),
    ({"repeat_last_n": -1}, "options.repeat_last_n", "integer `-1`"),
    ({"stop": 5}, "options.stop", "expected a string or a list of strings"),
])
def test_ollama_options_are_renamed_and_their_errors_name_ollamas_field(server, options, field, wording):
    # The engine reads the renamed options: its wording, with the field as Ollama spells it.
    body = {"model": "smollm2", "prompt": "x", "raw": True, "stream": False, "options": options}
    response = post(server, "/api/generate", json.dumps(body).encode())
    assert response.status_code == 400, response.text
    message = response.json()["error"]
    assert message.startswith(field) and wording in message, message


def test_vllm_extension_fields_reach_the_engine(server):
    # `ignore_eos` and `stop_token_ids` (vLLM's) are renamed like OpenAI's own fields.
    body = {"model": "smollm2", "prompt": "x", "max_tokens": 1, "ignore_eos": "yes"}
    response = post(server, "/v1/completions", json.dumps(body).encode())
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == "ignore_eos"


def test_max_completion_tokens_wins_over_max_tokens(server):
    body = {"model": "smollm2", "messages": [{"role": "user", "content": "Count to ten."}], "temperature": 0,
            "max_tokens": 5, "max_completion_tokens": 1}
    response = post(server, "/v1/chat/completions", json.dumps(body).encode())
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["completion_tokens"] == 1


# --- empty lists, fan-out and big numbers --------------------------------------------------------


@pytest.mark.parametrize(("path", "body", "param"), [
    ("/v1/completions", {"model": "smollm2", "prompt": []}, "prompt"),
    ("/v1/completions", {"model": "smollm2", "prompt": [[]]}, "prompt"),
    ("/v1/chat/completions", {"model": "smollm2", "messages": []}, "messages"),
    ("/v1/embeddings", {"model": "minilm", "input": []}, "input"),
    ("/v1/embeddings", {"model": "minilm", "input": ["x"] * 2049}, "input"),
])
def test_empty_or_oversized_lists_are_400_naming_the_field(server, path, body, param):
    response = post(server, path, json.dumps(body).encode())
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param, response.json()
    assert_canary(server)


@pytest.mark.parametrize("key", ["9" * 5000, "4294967296", "0" * 30 + "1" * 11])
def test_logit_bias_key_too_big_for_a_token_id_is_400(server, key):
    # 5000 digits is past what Python's int() converts (a ValueError, once a 500); 2**32 is past
    # what the engine's u32 token ids hold.
    body = json.dumps({"model": "smollm2", "prompt": "x", "max_tokens": 1, "logit_bias": {key: 1}}).encode()
    response = post(server, "/v1/completions", body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == "logit_bias" and len(error["message"]) < 200, error
    assert_canary(server)


def test_leading_zeros_of_a_logit_bias_key_are_still_the_token_id(server):
    # "000351" is token 351: the length check must not reject a valid id written long.
    body = {"model": "smollm2", "prompt": "The quick brown fox", "max_tokens": 1, "temperature": 0}
    plain = post(server, "/v1/completions", json.dumps({**body, "logit_bias": {"351": -100}}).encode())
    padded = post(server, "/v1/completions", json.dumps({**body, "logit_bias": {"0" * 20 + "351": -100}}).encode())
    assert padded.status_code == 200, padded.text
    assert completion_text(padded) == completion_text(plain)


@pytest.mark.parametrize(("path", "body"), [
    ("/v1/completions", b'{"model": "smollm2", "prompt": "x", "max_tokens": 1' + b"0" * 5000 + b"}"),
    ("/v1/completions", b'{"model": "smollm2", "prompt": "x", "seed": 9' + b"9" * 5000 + b"}"),
    ("/api/generate", b'{"model": "smollm2", "prompt": "x", "options": {"num_predict": 1' + b"0" * 5000 + b"}}"),
])
def test_integers_of_thousands_of_digits_are_400(server, path, body):
    response = post(server, path, body)
    assert response.status_code == 400, response.text
    assert_canary(server)


@pytest.mark.parametrize(("path", "body", "field"), [
    ("/v1/completions", {"model": "smollm2", "prompt": "x", "max_tokens": 2**70}, "max_tokens"),
    ("/v1/completions", {"model": "smollm2", "prompt": "x", "n": 2**70}, "n"),
    ("/v1/chat/completions", {"model": "smollm2", "messages": [{"role": "user", "content": "x"}],
                              "top_logprobs": 2**70, "logprobs": True}, "top_logprobs"),
    ("/api/generate", {"model": "smollm2", "prompt": "x", "raw": True, "stream": False,
                       "options": {"num_predict": 2**70}}, "options.num_predict"),
    ("/api/generate", {"model": "smollm2", "prompt": "x", "raw": True, "stream": False,
                       "options": {"top_k": 2**70}}, "options.top_k"),
])
def test_integers_past_the_engines_range_are_400_naming_the_field(server, path, body, field):
    response = post(server, path, json.dumps(body).encode())
    assert response.status_code == 400, response.text
    if path.startswith("/v1"):
        assert response.json()["error"]["param"] == field
    else:
        assert response.json()["error"].startswith(field)
    assert_canary(server)
