#!/usr/bin/env python3
"""Writes `tests/fixtures/chat_templates.json`: the real chat templates of the five families
this project runs (copied from llama.cpp's `models/templates/`, which holds the templates the
models ship) and, for several tool-less conversations with and without the generation prompt,
the exact string Hugging Face `transformers` renders (its own `render_jinja_template`, the
function behind `apply_chat_template`), or the error message the template raises.
`core/tests/chat_templates.rs` renders the same with `core/src/chat.rs` and compares byte for
byte.

Templates that print today's date (Llama 3.2's `strftime_now`) are rendered at a fixed time,
`FIXED_NOW` (UTC), which the Rust test passes to our renderer too.

    LLAMA_CPP=~/.cache/cortexstream/peer/src/llama-cpp-python-0.3.36/vendor/llama.cpp
    python tests/reference/chat_templates.py $LLAMA_CPP/models/templates

needs `transformers jinja2` (not CI: the output is committed).
"""

import argparse
import datetime
import json
import pathlib

from transformers.utils import chat_template_utils

REPO = pathlib.Path(__file__).resolve().parents[2]
FIXTURE = REPO / "tests" / "fixtures" / "chat_templates.json"

# 2025-03-14 09:26:53 UTC: not Llama 3.1's built-in default date, so a renderer that ignored
# the clock would show.
FIXED_NOW = datetime.datetime(2025, 3, 14, 9, 26, 53, tzinfo=datetime.timezone.utc)

# File in models/templates -> the BOS and EOS token texts the model's tokenizer_config gives.
TEMPLATES = {
    "Qwen-Qwen2.5-7B-Instruct.jinja": ("", "<|im_end|>"),
    "Qwen-Qwen3-0.6B.jinja": ("", "<|im_end|>"),
    "meta-llama-Llama-3.1-8B-Instruct.jinja": ("<|begin_of_text|>", "<|eot_id|>"),
    "meta-llama-Llama-3.2-3B-Instruct.jinja": ("<|begin_of_text|>", "<|eot_id|>"),
    "microsoft-Phi-3.5-mini-instruct.jinja": ("<s>", "<|endoftext|>"),
    "mistralai-Mistral-Nemo-Instruct-2407.jinja": ("<s>", "</s>"),
    # More of the same families' shipped templates.
    "Qwen-QwQ-32B.jinja": ("", "<|im_end|>"),
    "meta-llama-Llama-3.3-70B-Instruct.jinja": ("<|begin_of_text|>", "<|eot_id|>"),
    "Mistral-Small-3.2-24B-Instruct-2506.jinja": ("<s>", "</s>"),
    "unsloth-mistral-Devstral-Small-2507.jinja": ("<s>", "</s>"),
    "mistralai-Ministral-3-14B-Reasoning-2512.jinja": ("<s>", "</s>"),
}


def message(role, content):
    return {"role": role, "content": content}


CONVERSATIONS = {
    "user": [message("user", "Hello!")],
    "system_user": [message("system", "You are a terse assistant."), message("user", "What is 2 + 2?")],
    "multi_turn": [
        message("system", "Answer in French."),
        message("user", "Hi there"),
        message("assistant", "Bonjour !"),
        message("user", "How are you?"),
    ],
    "ends_with_assistant": [message("user", "Name a colour."), message("assistant", "Blue.")],
    "whitespace_and_unicode": [
        message("user", "  padded  \n\nline two\t\"quoted\" 'single' {{ not jinja }} — ünïcødé 🚀  "),
        message("assistant", "\n  reply with leading newline and trailing spaces   "),
        message("user", "<|im_start|> and </s> as plain text"),
    ],
    "reasoning_in_history": [
        message("user", "Think first."),
        message("assistant", "<think>\nLet me think.\n</think>\n\nThe answer is 4."),
        message("user", "And 3 + 3?"),
    ],
    "two_system_messages": [
        message("system", "First system."),
        message("system", "Second system."),
        message("user", "Hi"),
    ],
    "assistant_first": [message("assistant", "I speak first."), message("user", "Fine.")],
}


# Small templates, one jinja2 feature each that chat templates use (HF's dialect: transformers'
# own `tojson`, `raise_exception`, `strftime_now`; jinja2's `namespace`, whitespace control,
# Python string methods), rendered over the `multi_turn` conversation.
DIALECT = {
    "tojson_message": "{{ messages[1] | tojson }}",
    "tojson_special_characters": "{{ {'text': '<b> & \\'quoted\\' \"double\" é 🚀 \\n', 'n': [1, 2.5, none, true]} | tojson }}",
    "tojson_indent": "{{ messages[:2] | tojson(indent=2) }}",
    "tojson_string": "{{ messages[2].content | tojson }}",
    "tojson_insertion_order": "{{ {'zeta': 1, 'alpha': {'y': 2, 'b': 3}} | tojson }}",
    "tojson_options": "{{ {'b': 1, 'a': [1e-5, 1.5e20, 1e16, 1e15, 0.1, -0.0, 3, 1.0], 'ü': 'ü 🚀 \\u0001'} | tojson(ensure_ascii=True, sort_keys=True) }}",
    "tojson_empty_and_nested_indent": "{{ {'empty': [], 'none': {}, 'list': [[1], {'k': 'v'}]} | tojson(indent=4) }}",
    "namespace": "{% set ns = namespace(count=0, last='') %}{% for m in messages %}{% set ns.count = ns.count + 1 %}{% set ns.last = m.role %}{% endfor %}{{ ns.count }} {{ ns.last }}",
    "whitespace_control": "{%- for m in messages -%}\n  [{{- m.role -}}]  \n{%- endfor -%}\n",
    "trim_and_lstrip_blocks": "{% for m in messages %}\n    {% if m.role == 'user' %}\n{{ m.content }}\n    {% endif %}\n{% endfor %}\n",
    "string_methods": "{% for m in messages %}{{ m.content.strip().lower().replace('o', '0').split(' ')[0] }}|{{ m.content.startswith('H') }}|{{ m.content.endswith('?') }}|{{ m.role.upper() }}|{{ m.content.rstrip('!?. ') }}|{{ m.content.title() }};{% endfor %}",
    "split_and_index": "{{ messages[2].content.split('o')[-1] }}|{{ messages[2].content.lstrip('B') }}|{{ messages[1].content[:3] }}|{{ messages[1].content[::-1] }}",
    "filters": "{{ messages | length }} {{ messages | map(attribute='role') | join(',') }} {{ messages | selectattr('role', 'equalto', 'user') | list | length }} {{ (messages | last).content | trim }} {{ 'x' * 3 }}",
    "loop_variables": "{% for m in messages %}{{ loop.index0 }}{{ loop.first }}{{ loop.last }}{% if not loop.last %},{% endif %}{% endfor %}",
    "defined_and_none": "{{ foo is defined }} {{ messages[0].content is string }} {{ messages[0].get('missing') is none }} {{ messages[0]['tool_calls'] is defined }}",
    "items_and_dict": "{% for k, v in {'b': 1, 'a': 2}.items() %}{{ k }}={{ v }};{% endfor %}{{ dict(x=1).x }}",
    "strftime_now": "{{ strftime_now('%Y-%m-%d %H:%M:%S %A %B %d %b') }}",
    "raise_exception": "{% if messages[0].role == 'system' %}{{ raise_exception('System messages are not supported here.') }}{% endif %}",
    "in_operator_and_tests": "{{ 'French' in messages[0].content }} {{ messages[0].role in ['system', 'user'] }} {{ 3 is divisibleby 3 }} {{ 4 is odd }}",
    "integer_and_float_rendering": "{{ 1 }} {{ 2.0 }} {{ 10 / 4 }} {{ 10 // 4 }} {{ 7 % 3 }} {{ 1e3 }} {{ true }} {{ none }}",
}


class FixedClock(datetime.datetime):
    @classmethod
    def now(cls, tz=None):
        return FIXED_NOW if tz else FIXED_NOW.replace(tzinfo=None)


def render(source, bos, eos, messages, add_generation_prompt, tools=None):
    """What `transformers` renders (or the error it raises); `tools` as `apply_chat_template`'s."""
    try:
        text = chat_template_utils.render_jinja_template(
            conversations=[messages],
            tools=tools,
            chat_template=source,
            add_generation_prompt=add_generation_prompt,
            bos_token=bos,
            eos_token=eos,
        )
        # render_jinja_template returns (rendered, generation_indices) in some versions.
        if isinstance(text, tuple):
            text = text[0]
        if isinstance(text, list):
            (text,) = text
        return {"rendered": text}
    except Exception as e:  # the template's raise_exception, or a jinja error
        return {"raises": str(e)}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("templates_dir", help="llama.cpp's models/templates")
    args = parser.parse_args()
    chat_template_utils.datetime = FixedClock
    templates = {}
    cases = []
    for file, (bos, eos) in TEMPLATES.items():
        source = (pathlib.Path(args.templates_dir) / file).read_text()
        name = file.removesuffix(".jinja")
        templates[name] = {"source": source, "bos_token": bos, "eos_token": eos}
        for conversation, messages in CONVERSATIONS.items():
            for add_generation_prompt in (True, False):
                result = render(source, bos, eos, messages, add_generation_prompt)
                cases.append({
                    "template": name,
                    "conversation": conversation,
                    "add_generation_prompt": add_generation_prompt,
                    **result,
                })
    dialect = []
    for name, source in DIALECT.items():
        result = render(source, "<s>", "</s>", CONVERSATIONS["multi_turn"], False)
        dialect.append({"name": name, "source": source, **result})
    fixture = {
        "about": "transformers' render_jinja_template output; written by tests/reference/chat_templates.py",
        "fixed_now_unix": int(FIXED_NOW.timestamp()),
        "conversations": CONVERSATIONS,
        "templates": templates,
        "cases": cases,
        "dialect": dialect,
    }
    FIXTURE.write_text(json.dumps(fixture, indent=1, ensure_ascii=False) + "\n")
    for case in dialect:
        print(f"dialect {case['name']}: {case}")
    for case in cases:
        outcome = "raises " + case["raises"] if "raises" in case else f"{len(case['rendered'])} chars"
        print(f"{case['template']} {case['conversation']} gen={case['add_generation_prompt']}: {outcome}")


if __name__ == "__main__":
    main()
