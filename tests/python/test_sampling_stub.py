"""The typed surface of ``**sampling`` (the ``Sampling`` TypedDict in ``_core.pyi``) against the
options the core reads: the same names, so a field added to the core without the stub (or the
other way round) fails here. stubtest checks the signatures; this checks the TypedDict's keys."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import cortexstream

STUB = Path(cortexstream.__file__).resolve().parent / "_core.pyi"


def stub_sampling_keys() -> set[str]:
    tree = ast.parse(STUB.read_text())
    [sampling] = [node for node in tree.body if isinstance(node, ast.ClassDef) and node.name == "Sampling"]
    return {item.target.id for item in sampling.body if isinstance(item, ast.AnnAssign)}


def core_option_names(engine) -> set[str]:
    """The names the core lists when it refuses an unknown one."""
    with pytest.raises(cortexstream.InvalidRequestError) as caught:
        engine.generate("Hi", not_an_option=1)
    match = re.search(r"the options are (.*)$", str(caught.value))
    assert match, caught.value
    return set(match.group(1).split(", "))


def test_the_stub_names_every_option_the_core_reads(engine):
    assert stub_sampling_keys() == core_option_names(engine)


def test_every_stub_option_is_accepted_as_none(engine):
    # None keeps the default: each name the stub offers reaches the core as a known field.
    completion = engine.generate("Hi", max_tokens=1, **dict.fromkeys(stub_sampling_keys() - {"max_tokens"}))
    assert completion.finish_reason in ("length", "stop")
