"""Constrained decoding through the Python module (issue 20): `json_schema=` (dict, str or a
Pydantic model class), `regex=`, `grammar=`, `choices=` and OpenAI's `response_format=`. Every
output validates (`jsonschema`); bad constraints raise naming their argument, before anything
is queued."""

from __future__ import annotations

import asyncio
import json
import re
from typing import List, Literal, Optional

import jsonschema
import pytest
from pydantic import BaseModel, Field

import cortexstream

ASK = [{"role": "user", "content": "Describe a person as JSON."}]

SCHEMAS = {
    "nested object and array": {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 10},
            "address": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 10}},
                        "required": ["city"], "additionalProperties": False},
            "tags": {"type": "array", "items": {"type": "string", "maxLength": 6}, "maxItems": 2},
        },
        "required": ["name", "address", "tags"],
        "additionalProperties": False,
    },
    "enum, bounded numbers and a pattern": {
        "type": "object",
        "properties": {
            "colour": {"enum": ["red", "green", "blue"]},
            "score": {"type": "number", "minimum": 0, "maximum": 1},
            "count": {"type": "integer", "minimum": 1, "maximum": 9},
            "code": {"type": "string", "pattern": "^[A-Z]{2}[0-9]{2}$"},
        },
        "required": ["colour", "score", "count", "code"],
        "additionalProperties": False,
    },
    "anyOf": {
        "anyOf": [
            {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"],
             "additionalProperties": False},
            {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 99}, "maxItems": 3},
        ]
    },
}


SCHEMAS.update({
    "array of objects": {
        "type": "array",
        "items": {"type": "object", "properties": {"id": {"type": "integer", "minimum": 1, "maximum": 99},
                                                   "done": {"type": "boolean"}},
                  "required": ["id", "done"], "additionalProperties": False},
        "minItems": 1, "maxItems": 3,
    },
    "exclusive bounds, const and null": {
        "type": "object",
        "properties": {
            "version": {"const": 2},
            "ratio": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 10},
            "parent": {"type": "null"},
            "level": {"enum": [1, 2, 3]},
        },
        "required": ["version", "ratio", "parent", "level"],
        "additionalProperties": False,
    },
    "$defs and nested anyOf": {
        "$defs": {"point": {"type": "object", "properties": {"x": {"type": "integer", "minimum": -9, "maximum": 9},
                                                             "y": {"type": "integer", "minimum": -9, "maximum": 9}},
                            "required": ["x", "y"], "additionalProperties": False}},
        "type": "object",
        "properties": {"shape": {"anyOf": [{"$ref": "#/$defs/point"},
                                           {"type": "array", "items": {"$ref": "#/$defs/point"}, "maxItems": 2}]},
                       "label": {"type": ["string", "null"], "maxLength": 8}},
        "required": ["shape", "label"],
        "additionalProperties": False,
    },
    "string patterns": {
        "type": "object",
        "properties": {"email": {"type": "string", "pattern": "^[a-z]{1,8}@[a-z]{1,8}\\.(com|org)$"},
                       "zip": {"type": "string", "pattern": "^[0-9]{5}$"},
                       "words": {"type": "string", "minLength": 2, "maxLength": 12}},
        "required": ["email", "zip", "words"],
        "additionalProperties": False,
    },
    "top-level scalar": {"type": "integer", "minimum": 100, "maximum": 999},
})

#: Greedy once, then sampled with two seeds: every output must validate either way.
SETTINGS = [(0.0, 0), (1.0, 1), (1.0, 2)]

#: Regular expressions, choices and Lark grammars, each with a Python check of its language.
OTHER_CONSTRAINTS = {
    "regex date": ({"regex": r"(19|20)[0-9]{2}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])"},
                   lambda t: re.fullmatch(r"(19|20)[0-9]{2}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])", t)),
    "regex words": ({"regex": r"[A-Z][a-z]{1,8}( [a-z]{1,8}){0,3}\."},
                    lambda t: re.fullmatch(r"[A-Z][a-z]{1,8}( [a-z]{1,8}){0,3}\.", t)),
    "choices": ({"choices": ["yes", "no", "not sure", "yes, but later"]},
                lambda t: t in {"yes", "no", "not sure", "yes, but later"}),
    "lark list": ({"grammar": 'start: "[" item ("," item)? ("," item)? "]"\nitem: /[a-z]{1,6}/'},
                  lambda t: re.fullmatch(r"\[[a-z]{1,6}(,[a-z]{1,6}){0,2}\]", t)),
}


def run_together(engine, requests):
    """Submits every request at once (they share the engine's steps, as a server's would) and
    returns their completions in order."""
    async def main():
        return await asyncio.gather(*(engine.achat(ASK, **kwargs) for kwargs in requests))
    return asyncio.run(main())


def test_every_output_of_many_schemas_and_seeds_validates_batched(engine):
    cases = [(name, schema, t, seed) for name, schema in SCHEMAS.items() for t, seed in SETTINGS]
    results = run_together(engine, [dict(json_schema=schema, temperature=t, seed=seed, max_tokens=120)
                                     for _, schema, t, seed in cases])
    for (name, schema, t, seed), result in zip(cases, results):
        where = f"{name} T={t} seed={seed}: {result.text!r}"
        assert result.finish_reason == "stop", where
        jsonschema.validate(json.loads(result.text), schema)


def test_every_output_of_regexes_choices_and_grammars_matches_batched(engine):
    cases = [(name, kwargs, check, t, seed) for name, (kwargs, check) in OTHER_CONSTRAINTS.items()
             for t, seed in SETTINGS]
    results = run_together(engine, [dict(temperature=t, seed=seed, max_tokens=40, **kwargs)
                                     for _, kwargs, _, t, seed in cases])
    for (name, _, check, t, seed), result in zip(cases, results):
        assert result.finish_reason == "stop", f"{name} T={t} seed={seed}: {result.text!r}"
        assert check(result.text), f"{name} T={t} seed={seed}: {result.text!r}"


def test_a_constraint_cut_short_by_max_tokens_ends_with_length_never_claimed_complete(engine):
    # Too few tokens for most of these to finish: each output either completed (`stop`, and
    # then it validates) or ran out (`length`); never `stop` on an invalid prefix.
    cases = [(schema, seed) for schema in SCHEMAS.values() for seed in (1, 2)]
    results = run_together(engine, [dict(json_schema=schema, temperature=1.0, seed=seed, max_tokens=6)
                                     for schema, seed in cases])
    reasons = [r.finish_reason for r in results]
    assert set(reasons) <= {"stop", "length"}, reasons
    assert "length" in reasons
    for (schema, _), result in zip(cases, results):
        if result.finish_reason == "stop":
            jsonschema.validate(json.loads(result.text), schema)
        else:
            assert result.usage.completion_tokens == 6


class Person(BaseModel):
    name: str = Field(max_length=10)
    age: int = Field(ge=0, le=120)
    role: Literal["admin", "user"]
    nickname: Optional[str] = Field(default=None, max_length=8)
    languages: List[Literal["en", "fr"]] = Field(max_length=2)


def test_a_pydantic_model_class_is_a_schema_and_its_output_parses(engine):
    for kwargs in ({"json_schema": Person}, {"response_format": Person}):
        result = engine.chat(ASK, temperature=1.0, seed=4, max_tokens=80, **kwargs)
        assert result.finish_reason == "stop", result.text
        Person.model_validate_json(result.text)


def test_openai_response_formats(engine):
    ask_name = [{"role": "user", "content": "Give your name and age as a JSON object."}]
    result = engine.chat(ask_name, response_format={"type": "json_object"}, temperature=0, max_tokens=60)
    assert result.finish_reason == "stop", result.text
    assert isinstance(json.loads(result.text), dict)
    schema = SCHEMAS["enum, bounded numbers and a pattern"]
    spec = {"type": "json_schema", "json_schema": {"name": "s", "schema": schema, "strict": True}}
    result = engine.chat(ASK, response_format=spec, temperature=0, max_tokens=60)
    jsonschema.validate(json.loads(result.text), schema)
    # A JSON string is a schema too.
    result = engine.generate("A JSON list:", json_schema=json.dumps({"type": "array", "maxItems": 2,
                             "items": {"type": "integer"}}), temperature=0, max_tokens=30)
    assert isinstance(json.loads(result.text), list)


def test_regex_and_choices(engine):
    result = engine.chat(ASK, regex=r"[A-Z][a-z]{2,8} [0-9]{2}", temperature=1.0, seed=3, max_tokens=16)
    assert result.finish_reason == "stop"
    assert re.fullmatch(r"[A-Z][a-z]{2,8} [0-9]{2}", result.text), result.text
    result = engine.chat(ASK, choices=["cat", "dog", "bird"], temperature=1.0, seed=5, max_tokens=8)
    assert result.text in {"cat", "dog", "bird"}
    result = engine.chat(ASK, grammar='start: "a" NUM\nNUM: /[0-9]/', temperature=1.0, seed=6, max_tokens=8)
    assert re.fullmatch(r"a[0-9]", result.text), result.text


def test_a_streamed_constrained_request_streams_the_same_valid_text(engine):
    schema = SCHEMAS["nested object and array"]
    pieces = list(engine.stream_chat(ASK, json_schema=schema, temperature=0, max_tokens=80))
    jsonschema.validate(json.loads("".join(p.text for p in pieces)), schema)
    assert pieces[-1].finish_reason == "stop"


@pytest.mark.parametrize(
    "kwargs,param",
    [
        ({"json_schema": "{not json"}, "json_schema"),
        ({"json_schema": {"type": "object", "properties": {"a": {"type": "nonsense"}}}}, "json_schema"),
        ({"regex": "(unclosed"}, "regex"),
        ({"grammar": "start: nowhere"}, "grammar"),
        ({"choices": []}, "choices"),
        ({"response_format": {"type": "yaml"}}, "response_format"),
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}, "response_format"),
        ({"regex": "a", "choices": ["a"]}, "choices"),
    ],
)
def test_bad_constraints_raise_naming_their_argument_before_anything_is_queued(engine, kwargs, param):
    before = engine.metrics()["requests_submitted"]
    with pytest.raises(cortexstream.InvalidRequestError) as caught:
        engine.generate("Hi", max_tokens=4, **kwargs)
    assert caught.value.param == param, caught.value
    assert engine.metrics()["requests_submitted"] == before


@pytest.mark.parametrize("kwargs", [{"json_schema": 3}, {"choices": "abc"}, {"regex": ["a"]}, {"grammar": 1}])
def test_wrong_types_are_invalid_requests_naming_the_argument(engine, kwargs):
    # The core reads every door's options, so a wrong type is its invalid_request, as in Node and REST.
    with pytest.raises(cortexstream.InvalidRequestError) as caught:
        engine.generate("Hi", max_tokens=4, **kwargs)
    assert caught.value.param == next(iter(kwargs)), caught.value
