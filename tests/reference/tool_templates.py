#!/usr/bin/env python3
"""Writes `tests/fixtures/tool_templates.json`: real chat templates that support tool calling
(copied from llama.cpp's `models/templates/`, the templates the models ship) and, for several
conversations that offer tools, call them and answer with their results, the exact string
Hugging Face `transformers` renders with `tools=` (its `render_jinja_template`, the function
behind `apply_chat_template(messages, tools=...)`), or the error the template raises.
`core/tests/tool_templates.rs` renders the same with `core/src/chat.rs` and compares byte for
byte, then parses each template's own rendering of an assistant's calls back into calls.

    LLAMA_CPP=~/.cache/cortexstream/peer/src/llama-cpp-python-0.3.36/vendor/llama.cpp
    python tests/reference/tool_templates.py $LLAMA_CPP/models/templates

needs `transformers jinja2` (not CI: the output is committed).
"""

import argparse
import json
import pathlib

from transformers.utils import chat_template_utils

# The clock and the renderer are chat_templates.py's (same folder), so both fixtures agree.
from chat_templates import FIXED_NOW, FixedClock, render

REPO = pathlib.Path(__file__).resolve().parents[2]
FIXTURE = REPO / "tests" / "fixtures" / "tool_templates.json"


# File in models/templates -> BOS and EOS token texts, and the tool-call syntax
# `core/src/tools` is expected to detect in it.
TEMPLATES = {
    "Qwen-Qwen2.5-7B-Instruct.jinja": ("", "<|im_end|>", "hermes"),
    "Qwen-QwQ-32B.jinja": ("", "<|im_end|>", "hermes"),
    "Qwen-Qwen3-0.6B.jinja": ("", "<|im_end|>", "hermes"),
    "NousResearch-Hermes-2-Pro-Llama-3-8B-tool_use.jinja": ("<|begin_of_text|>", "<|im_end|>", "hermes"),
    "NousResearch-Hermes-3-Llama-3.1-8B-tool_use.jinja": ("<|begin_of_text|>", "<|im_end|>", "hermes"),
    "meta-llama-Llama-3.1-8B-Instruct.jinja": ("<|begin_of_text|>", "<|eot_id|>", "llama3"),
    "meta-llama-Llama-3.2-3B-Instruct.jinja": ("<|begin_of_text|>", "<|eot_id|>", "llama3"),
    "meta-llama-Llama-3.3-70B-Instruct.jinja": ("<|begin_of_text|>", "<|eot_id|>", "llama3"),
    "mistralai-Mistral-Nemo-Instruct-2407.jinja": ("<s>", "</s>", "mistral"),
    "Mistral-Small-3.2-24B-Instruct-2506.jinja": ("<s>", "</s>", "mistral_args"),
    "unsloth-mistral-Devstral-Small-2507.jinja": ("<s>", "</s>", "mistral_args"),
    "mistralai-Ministral-3-14B-Reasoning-2512.jinja": ("<s>", "</s>", "mistral_args"),
    # Templates with no tool syntax we parse: rendered with tools all the same (the renderer
    # passes `tools` to any template), served with the generic JSON form.
    "microsoft-Phi-3.5-mini-instruct.jinja": ("<s>", "<|endoftext|>", "generic"),
    "google-gemma-2-2b-it.jinja": ("<bos>", "<eos>", "generic"),
}

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "location": {"type": "string", "description": "City name, e.g. Paris"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["location"],
        },
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "Local time in an IANA time zone — ünïcødé ok.",
        "parameters": {
            "type": "object",
            "properties": {"timezone": {"type": "string"}, "precise": {"type": "boolean"}},
            "required": ["timezone"],
        },
    },
}
TOOLS = [WEATHER, TIME]


def call(call_id, name, arguments):
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


PARIS = call("call0a1b2", "get_weather", {"location": "Paris", "unit": "celsius"})
TOKYO = call("call9z8y7", "get_time", {"timezone": "Asia/Tokyo", "precise": True})

CONVERSATIONS = {
    "ask": [{"role": "user", "content": "What's the weather in Paris?"}],
    "system_ask": [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "What's the weather in Paris?"},
    ],
    "one_call_round_trip": [
        {"role": "user", "content": "What's the weather in Paris?"},
        {"role": "assistant", "content": "", "tool_calls": [PARIS]},
        {"role": "tool", "content": "22 degrees, sunny", "tool_call_id": "call0a1b2", "name": "get_weather"},
        {"role": "assistant", "content": "It is 22 °C and sunny in Paris."},
        {"role": "user", "content": "Thanks!"},
    ],
    "two_calls": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Paris and time in Tokyo?"},
        {"role": "assistant", "content": "", "tool_calls": [PARIS, TOKYO]},
        {"role": "tool", "content": "22 degrees", "tool_call_id": "call0a1b2", "name": "get_weather"},
        {"role": "tool", "content": "{\"time\": \"18:04\"}", "tool_call_id": "call9z8y7", "name": "get_time"},
    ],
}

# Conversations ending in an assistant turn that calls tools: the test renders the history
# with the generation prompt and the whole with the call, takes the difference (the call as
# the template writes it) and parses it back.
CALL_EXAMPLES = {
    "one_call": [{"role": "user", "content": "What's the weather in Paris?"}],
    "two_calls": [{"role": "user", "content": "Weather in Paris and time in Tokyo?"}],
}
CALL_EXAMPLE_CALLS = {"one_call": [PARIS], "two_calls": [PARIS, TOKYO]}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("templates_dir", help="llama.cpp's models/templates")
    args = parser.parse_args()
    chat_template_utils.datetime = FixedClock
    templates, cases, examples = {}, [], []
    for file, (bos, eos, tool_format) in TEMPLATES.items():
        source = (pathlib.Path(args.templates_dir) / file).read_text()
        name = file.removesuffix(".jinja")
        templates[name] = {"source": source, "bos_token": bos, "eos_token": eos, "tool_format": tool_format}
        for conversation, messages in CONVERSATIONS.items():
            for add_generation_prompt in (True, False):
                cases.append({
                    "template": name,
                    "conversation": conversation,
                    "add_generation_prompt": add_generation_prompt,
                    **render(source, bos, eos, messages, add_generation_prompt, tools=TOOLS),
                })
        for example, history in CALL_EXAMPLES.items():
            calls = CALL_EXAMPLE_CALLS[example]
            prompt = render(source, bos, eos, history, True, tools=TOOLS)
            whole = render(source, bos, eos, history + [{"role": "assistant", "content": "", "tool_calls": calls}],
                           False, tools=TOOLS)
            examples.append({"template": name, "example": example, "prompt": prompt, "whole": whole})
    fixture = {
        "about": "transformers' render_jinja_template output with tools; written by tests/reference/tool_templates.py",
        "fixed_now_unix": int(FIXED_NOW.timestamp()),
        "tools": TOOLS,
        "conversations": CONVERSATIONS,
        "call_examples": {name: {"history": CALL_EXAMPLES[name], "calls": CALL_EXAMPLE_CALLS[name]} for name in CALL_EXAMPLES},
        "templates": templates,
        "cases": cases,
        "examples": examples,
    }
    FIXTURE.write_text(json.dumps(fixture, indent=1, ensure_ascii=False) + "\n")
    for case in cases:
        outcome = "raises " + case["raises"] if "raises" in case else f"{len(case['rendered'])} chars"
        print(f"{case['template']} {case['conversation']} gen={case['add_generation_prompt']}: {outcome}")
    for example in examples:
        print(f"{example['template']} {example['example']}: {list(example['prompt'])} {list(example['whole'])}")


if __name__ == "__main__":
    main()
