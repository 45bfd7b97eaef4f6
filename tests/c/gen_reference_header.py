"""Writes the llama.cpp reference values the C tests compare against as a C header, so that
tests/fixtures/smollm2_reference.json stays their single source.

usage: gen_reference_header.py FIXTURE.json OUT.h
"""

import json
import sys

# Only the first greedy tokens are compared: past them the float64 forward's top two nearly tie
# (the fixture's greedy_near_tie), so llama.cpp and our kernels may legitimately part.


def c_string(text: str) -> str:
    """A C string literal of the UTF-8 bytes; octal escapes cannot swallow the next character."""
    out = []
    for byte in text.encode("utf-8"):
        char = chr(byte)
        out.append(char if 0x20 <= byte < 0x7F and char not in '\\"?' else f"\\{byte:03o}")
    return '"' + "".join(out) + '"'


def c_ids(ids) -> str:
    return "{" + ", ".join(str(i) for i in ids) + "}"


def main(fixture_path: str, out_path: str) -> None:
    with open(fixture_path, encoding="utf-8") as f:
        ref = json.load(f)
    completion = ref["raw_completion"]
    tokenization = ref["tokenization"]
    chat = ref["chat_template_prompt"]
    (message,) = chat["messages"]
    lines = [
        f"/* Generated from {fixture_path} by tests/c/gen_reference_header.py. */",
        f"static const char REF_PROMPT[] = {c_string(completion['prompt'])};",
        f"static const uint32_t REF_PROMPT_IDS[] = {c_ids(completion['prompt_token_ids'])};",
        f"static const uint32_t REF_GREEDY_IDS[] = {c_ids(completion['greedy_token_ids'][: completion['greedy_clear_tokens']])};",
        f"static const char REF_TOKENIZATION_TEXT[] = {c_string(tokenization['text'])};",
        f"static const uint32_t REF_TOKENIZATION_IDS[] = {c_ids(tokenization['token_ids'])};",
        f"static const char REF_CHAT_ROLE[] = {c_string(message['role'])};",
        f"static const char REF_CHAT_CONTENT[] = {c_string(message['content'])};",
        f"static const char REF_CHAT_RENDERED[] = {c_string(chat['rendered'])};",
    ]
    with open(out_path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
