"""What both sides run: token counts, prompts and stream counts, shared so that cortexstream and
llama.cpp see exactly the same work."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

DECODE_PROMPT = "Once upon a time, in a small village by the sea,"

# Long enough to tokenize past 512 tokens; each prefill run puts a distinct tag in front so no
# run can reuse the KV of an earlier one (our engine caches prefixes; llama.cpp gets
# cache_prompt=false).
PREFILL_TEXT = " ".join(
    f"Chapter {n}: the keeper climbed the {n * 7} steps of the lighthouse, trimmed the wick, "
    f"polished the lens and wrote the weather in the log before the ships came in."
    for n in range(1, 40)
)

# About 60 tokens once the model's chat template wraps it.
CHAT_MESSAGES = [
    {
        "role": "user",
        "content": "Give me three short tips for keeping a sourdough starter healthy in a warm kitchen during a long, "
        "humid summer, and explain briefly why each tip works for a complete beginner baker.",
    }
]


# The JSON schema of the constrained rows (both sides get it: ours as `json_schema`, llama-server
# as its `json_schema` field). A list of at least 20 small records: structure, strings, bounded
# integers and an enum, and far more than `stream_tokens` tokens before it can be complete, so
# every constrained stream decodes exactly as many tokens as its unconstrained twin.
STRUCTURED_SCHEMA = {
    "type": "array",
    "minItems": 20,
    "items": {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 16},
            "age": {"type": "integer", "minimum": 0, "maximum": 120},
            "role": {"enum": ["keeper", "sailor", "cook", "pilot"]},
        },
        "required": ["name", "age", "role"],
        "additionalProperties": False,
    },
}


def structured_schema(round_index: int) -> dict:
    """The schema of round ``round_index``: the same grammar, its text made new each round by a
    title, so that "the first request of a new schema" compiles it in every round (our engine
    caches compiled schemas by their text)."""
    if round_index == 0:
        return STRUCTURED_SCHEMA
    return {"title": f"records, round {round_index + 1}", **STRUCTURED_SCHEMA}


# Run numbers (prompt tags, system messages) of one round: a round's runs never reuse an
# earlier round's prompt, so our prefix cache cannot help a later round.
RUNS_PER_ROUND = 100


def first_run(round_index: int) -> int:
    return RUNS_PER_ROUND * round_index


def round_tag(round_index: int) -> str:
    """Put in front of a round's stream prompts (none for the first round: today's prompts)."""
    return f"[round {round_index + 1}] " if round_index else ""


def system_message(run: int) -> str:
    """A distinct system message per repeat, so the prefix cache cannot help the TTFT runs."""
    return f"You are assistant number {run}."


def raw_ttft_prompt(run: int) -> str:
    """The TTFT prompt for a model without a chat template (a base model such as Gemma 3 270M):
    the chat's system and user text as plain text, about as many tokens as the chat prompt."""
    return f"{system_message(run)}\n\n{CHAT_MESSAGES[0]['content']}\n\n"


STREAM_TOPICS = [
    "a lighthouse keeper",
    "a clockmaker",
    "a desert caravan",
    "a deep-sea diver",
    "a mountain village",
    "a robot gardener",
    "a night train",
    "a lost violin",
    "a city of bridges",
    "an old library",
    "a winter market",
    "a comet watcher",
    "a river ferry",
    "a glass blower",
    "a kite festival",
    "a beekeeper",
    "a submarine cook",
    "a map maker",
    "a radio operator",
    "a tea plantation",
    "a puppet theatre",
    "a salt mine",
    "an ice hotel",
    "a bell foundry",
    "a lunar base",
    "a street musician",
    "a paper mill",
    "a storm chaser",
    "a fishing fleet",
    "a castle kitchen",
    "a circus tailor",
    "a volcano observatory",
]


@dataclass(frozen=True)
class Workload:
    """Sizes of every measurement; ``quick`` shrinks them for a smoke run."""

    model: str
    threads: int
    decode_tokens: int
    prefill_tokens: int
    repeats: int
    stream_counts: tuple[int, ...]
    stream_tokens: int
    ctx_per_slot: int

    @classmethod
    def create(cls, model: str, threads: int, quick: bool) -> Workload:
        if quick:
            return cls(
                model,
                threads,
                decode_tokens=8,
                prefill_tokens=32,
                repeats=1,
                stream_counts=(1, 4),
                stream_tokens=8,
                ctx_per_slot=256,
            )
        return cls(
            model,
            threads,
            decode_tokens=128,
            prefill_tokens=512,
            repeats=3,
            stream_counts=(1, 8, 32),
            stream_tokens=128,
            ctx_per_slot=256,
        )

    @property
    def max_streams(self) -> int:
        return max(self.stream_counts)

    @property
    def kv_tokens(self) -> int:
        """KV capacity of each side: llama-server's -c, and our kv_cache_tokens, so RSS compares alike."""
        return self.max_streams * self.ctx_per_slot

    def stream_prompts(self, count: int, round_index: int = 0) -> list[str]:
        """Distinct prompts, so no stream shares a cached prefix with another (or with a stream
        of an earlier round)."""
        tag = round_tag(round_index)
        return [f"{tag}Write a story about {STREAM_TOPICS[i % len(STREAM_TOPICS)]} (#{i})." for i in range(count)]

    def structured_prompts(self, count: int, round_index: int = 0) -> list[str]:
        """The prompts of the constrained streams: the same requests, tagged so that none reuses
        the cached prefix of its unconstrained twin (which ran just before)."""
        return [f"[json] {prompt}" for prompt in self.stream_prompts(count, round_index)]

    def check_full_length(self, streams: dict[str, float], count: int) -> None:
        """Constrained streams must decode as many tokens as the free ones for their rates to
        compare: a grammar that completed early would make the constrained run look cheaper."""
        if streams["tokens"] != count * self.stream_tokens:
            raise RuntimeError(f"{count} constrained streams decoded {streams['tokens']} tokens, "
                               f"not {count} x {self.stream_tokens}")

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Workload:
        return cls(**{**data, "stream_counts": tuple(data["stream_counts"])})


def prefill_tag(run: int) -> str:
    return f"[run {run}] "
