"""Turns the shared bad-input matrix (tests/hardening/bad_inputs.json) into C for the C door:
one builder function per case that fills a `matrix_request`, and a table of what each case
expects. The C tests include it after defining `matrix_request` and the `mx_*` helpers, so
the JSON stays the single source and C needs no JSON parser.

usage: gen_matrix_header.py MATRIX.json OUT.h

Only cases whose `doors` contain "c" are emitted. A request field or an expected error code
this script does not know fails the generation, so a new field cannot be skipped silently.
"""

import json
import sys
from typing import Any

# The core's stable error codes (Error::code) and the C status each maps to (bindings/c/src/status.rs).
STATUS_OF_CODE = {
    "invalid_request": "CS_INVALID_ARGUMENT",
    "context_length_exceeded": "CS_CONTEXT_LENGTH_EXCEEDED",
    "model_load_error": "CS_MODEL_LOAD",
    "model_not_found": "CS_MODEL_NOT_FOUND",
    "tokenizer_error": "CS_TOKENIZER",
    "chat_template_error": "CS_CHAT_TEMPLATE",
    "chat_template_missing": "CS_CHAT_TEMPLATE",
    "engine_closed": "CS_ENGINE_CLOSED",
    "overloaded": "CS_OVERLOADED",
    "cancelled": "CS_CANCELLED",
    "no_embedding_model": "CS_NO_EMBEDDING_MODEL",
    "internal_error": "CS_INTERNAL",
    "io_error": "CS_IO",
}

FINISH_OF_REASON = {
    "stop": "CS_FINISH_STOP",
    "length": "CS_FINISH_LENGTH",
    "cancelled": "CS_FINISH_CANCELLED",
    "error": "CS_FINISH_ERROR",
}

FLOAT_FIELDS = {"temperature", "top_p", "min_p", "presence_penalty", "frequency_penalty", "repetition_penalty"}
INT_FIELDS = {"top_k": "int32_t", "max_tokens": "int64_t", "logprobs": "int32_t"}
MESSAGES_MAX = 8  # the test's fixed message buffer; checked here
# A constraint field -> its `constraint_kind`; the text goes in `constraint` (a JSON schema given
# as an object and the choices list are written as JSON text, as the C API takes them).
CONSTRAINT_KINDS = {
    "json_schema": "CS_CONSTRAINT_JSON_SCHEMA",
    "regex": "CS_CONSTRAINT_REGEX",
    "grammar": "CS_CONSTRAINT_GRAMMAR",
    "choices": "CS_CONSTRAINT_CHOICES",
}


def c_bytes(data: bytes) -> str:
    """A C string literal of raw bytes; octal escapes cannot swallow the next character."""
    out = []
    for byte in data:
        char = chr(byte)
        out.append(char if 0x20 <= byte < 0x7F and char not in '\\"?' else f"\\{byte:03o}")
    return '"' + "".join(out) + '"'


def c_float(value: Any) -> str:
    if isinstance(value, dict):
        kind = value["$float"]
        names = {"nan": "NAN", "inf": "INFINITY", "-inf": "-INFINITY"}
        return names[kind]
    return f"{float(value)!r}f"


def c_text(value: Any) -> str:
    """A C expression giving a `char *` owned by the request (built at run time, so a long
    `$repeat` needs no string literal past C's 4095-byte minimum)."""
    if isinstance(value, str):
        return f"mx_repeat(r, {c_bytes(value.encode('utf-8'))}, 1)"
    if isinstance(value, dict) and "$repeat" in value:
        rep = value["$repeat"]
        return f"mx_repeat(r, {c_bytes(rep['text'].encode('utf-8'))}, {int(rep['times'])})"
    if isinstance(value, dict) and "$bytes_hex" in value:
        data = bytes.fromhex("".join(value["$bytes_hex"].split()))
        if 0 in data:
            raise ValueError("a C string cannot hold a NUL byte")
        return f"mx_repeat(r, {c_bytes(data)}, 1)"
    raise ValueError(f"not text: {value!r}")


def c_int(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"not an integer: {value!r}")
    return value


def token_ids(array: str, field: str, values: list[Any]) -> list[str]:
    """A static uint32_t array named ARRAY holding VALUES, assigned to FIELD and FIELD_len."""
    ids = ", ".join(str(c_int(i)) for i in values)
    return [
        f"    static const uint32_t {array}[] = {{{ids}}};",
        f"    {field} = {array};\n    {field}_len = {len(values)};",
    ]


def builder(name: str, kind: str, request: dict[str, Any]) -> list[str]:
    """The body of `static void NAME(matrix_request *r)`."""
    lines = [f"static void {name}(matrix_request *r) {{", f"    r->kind = MX_{kind.upper()};"]
    for key, value in request.items():
        if key == "prompt":
            lines.append(f"    r->prompt = {c_text(value)};")
        elif key == "prompt_tokens":
            lines += token_ids("ids", "r->prompt_tokens", value)
        elif key == "messages":
            if len(value) > MESSAGES_MAX:
                raise ValueError(f"more than {MESSAGES_MAX} messages")
            lines.append("    r->has_messages = true;")
            for i, message in enumerate(value):
                lines.append(f"    r->messages[{i}].role = {c_text(message['role'])};")
                lines.append(f"    r->messages[{i}].content = {c_text(message['content'])};")
            lines.append(f"    r->messages_len = {len(value)};")
        elif key == "input":
            lines.append(f"    r->input = mx_alloc(r, {max(len(value), 1)} * sizeof(char *));")
            for i, text in enumerate(value):
                lines.append(f"    r->input[{i}] = {c_text(text)};")
            lines.append(f"    r->input_len = {len(value)};")
        elif key in FLOAT_FIELDS:
            lines.append(f"    r->params.{key} = {c_float(value)};")
        elif key in INT_FIELDS:
            lines.append(f"    r->params.{key} = ({INT_FIELDS[key]}){c_int(value)};")
        elif key == "stop":
            lines.append(f"    const char **stop = mx_alloc(r, {max(len(value), 1)} * sizeof(char *));")
            for i, text in enumerate(value):
                lines.append(f"    stop[{i}] = {c_text(text)};")
            lines.append(f"    r->params.stop = stop;\n    r->params.stop_len = {len(value)};")
        elif key == "stop_token_ids":
            lines += token_ids("stop_ids", "r->params.stop_token_ids", value)
        elif key == "logit_bias":
            ids = ", ".join(str(c_int(int(i))) for i in value)
            biases = ", ".join(c_float(b) for b in value.values())
            lines.append(f"    static const uint32_t bias_ids[] = {{{ids}}};")
            lines.append(f"    static const float bias_values[] = {{{biases}}};")
            lines.append("    r->params.logit_bias_ids = bias_ids;")
            lines.append("    r->params.logit_bias_values = bias_values;")
            lines.append(f"    r->params.logit_bias_len = {len(value)};")
        elif key in CONSTRAINT_KINDS:
            text = value if isinstance(value, str) else json.dumps(value)
            lines.append(f"    r->params.constraint_kind = {CONSTRAINT_KINDS[key]};")
            lines.append(f"    r->params.constraint = {c_text(text)};")
        else:
            raise ValueError(f"the C door does not know request field `{key}`")
    lines.append("}")
    return lines


def c_str_or_null(value: str | None) -> str:
    return "NULL" if value is None else c_bytes(value.encode("utf-8"))


def expectation(case_id: str, build: str, expect: dict[str, Any]) -> str:
    known = {"error", "param", "message_contains", "text", "text_not_equal", "finish_reason"}
    unknown = set(expect) - known
    if unknown:
        raise ValueError(f"{case_id}: unknown expect fields {sorted(unknown)}")
    status = STATUS_OF_CODE[expect["error"]] if "error" in expect else "CS_OK"
    contains = [c_bytes(s.encode("utf-8")) for s in expect.get("message_contains", [])]
    if len(contains) > 3:
        raise ValueError(f"{case_id}: more than 3 message_contains")
    finish = FINISH_OF_REASON[expect["finish_reason"]] if "finish_reason" in expect else "CS_FINISH_NONE"
    return (
        f"    {{{c_bytes(case_id.encode())}, {build}, {status}, {c_str_or_null(expect.get('param'))},\n"
        f"     {{{', '.join(contains + ['NULL'])}}},\n"
        f"     {c_str_or_null(expect.get('text'))}, {c_str_or_null(expect.get('text_not_equal'))}, {finish}}},"
    )


def main(matrix_path: str, out_path: str) -> None:
    with open(matrix_path, encoding="utf-8") as f:
        matrix = json.load(f)
    lines = [f"/* Generated from {matrix_path} by tests/c/gen_matrix_header.py. Do not edit. */"]
    table = []
    lines += builder("mx_build_canary", "generate", matrix["canary"]["request"])
    canary = expectation("canary", "mx_build_canary", matrix["canary"]["expect"])
    for index, case in enumerate(matrix["cases"]):
        if "c" not in case["doors"]:
            continue
        name = f"mx_build_{index}"
        lines += builder(name, case["kind"], case["request"])
        table.append(expectation(case["id"], name, case["expect"]))
    lines.append("static const matrix_case MATRIX_CANARY =")
    lines.append(canary.strip().rstrip(",") + ";")
    lines.append("static const matrix_case MATRIX_CASES[] = {")
    lines += table
    lines.append("};")
    with open(out_path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
