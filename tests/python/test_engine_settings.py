"""Engine settings as one definition (issue 22 item 1): the typed surface of ``Engine(...)`` and
``Registry.register(...)`` (the ``EngineSettings`` TypedDict in ``_core.pyi``) against the
settings the core reads, the core's errors for unknown names and wrong types, and ``log_prompts``
honoured by an engine a registry builds (item 5). Only the last test loads a model."""

from __future__ import annotations

import ast
import logging
import re
from pathlib import Path

import pytest

import cortexstream
from cortexstream import InvalidRequestError, logs

STUB = Path(cortexstream.__file__).resolve().parent / "_core.pyi"


def stub_setting_keys() -> set[str]:
    tree = ast.parse(STUB.read_text())
    [settings] = [node for node in tree.body if isinstance(node, ast.ClassDef) and node.name == "EngineSettings"]
    return {item.target.id for item in settings.body if isinstance(item, ast.AnnAssign)}


def core_setting_names() -> set[str]:
    """The names the core lists when it refuses an unknown one (before loading anything)."""
    with pytest.raises(InvalidRequestError) as caught:
        cortexstream.Engine(embedding_model=False, not_a_setting=1)
    assert caught.value.param == "settings"
    match = re.search(r"unknown setting `not_a_setting`; the settings are (.*)$", str(caught.value))
    assert match, caught.value
    return set(match.group(1).split(", "))


def test_the_stub_names_every_setting_the_core_reads():
    assert stub_setting_keys() == core_setting_names()


def test_every_stub_setting_is_accepted_as_none_by_register():
    with cortexstream.Registry() as registry:
        registry.register("m", "smollm2", **dict.fromkeys(stub_setting_keys()))  # type: ignore[arg-type]
        assert registry.names() == ["m"]


@pytest.mark.parametrize(
    "setting, value",
    [("threads", "many"), ("log_prompts", 1), ("block_size", 2.5), ("max_prefill_tokens", 0), ("tokenizer", 3)],
)
def test_a_bad_setting_is_refused_naming_it_by_engine_and_register(setting, value):
    with pytest.raises(InvalidRequestError) as by_engine:
        cortexstream.Engine(embedding_model=False, **{setting: value})
    assert by_engine.value.param == setting, by_engine.value
    with cortexstream.Registry() as registry, pytest.raises(InvalidRequestError) as by_register:
        registry.register("m", "smollm2", **{setting: value})
    assert by_register.value.param == setting, by_register.value
    assert str(by_register.value) == str(by_engine.value)


def test_an_embedding_model_refuses_generation_settings_by_name():
    with cortexstream.Registry() as registry, pytest.raises(InvalidRequestError) as refused:
        registry.register("minilm", "minilm", embedding=True, max_running=2)
    assert refused.value.param == "max_running"
    assert "embedding model" in str(refused.value)


class Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def queued_prompts(registry: cortexstream.Registry, name: str, tag: str) -> list:
    logger = logging.getLogger("cortexstream")
    level = logger.level
    logger.setLevel(logging.DEBUG)
    capture = Capture()
    logger.addHandler(capture)
    try:
        logs.forward_logs(logging.DEBUG)
        with registry.get(name) as lease:
            lease.engine.generate("The secret ingredient is", max_tokens=1, tag=tag)
        logs.stop_forwarding()
    finally:
        logger.removeHandler(capture)
        logger.setLevel(level)
        logs.forward_logs()
    queued = [r for r in capture.records if r.fields.get("tag") == tag and r.getMessage() == "queued"]  # type: ignore[attr-defined]
    assert len(queued) == 1
    return [queued[0].fields.get("prompt")]  # type: ignore[attr-defined]


def test_a_registry_engine_honours_log_prompts():
    with cortexstream.Registry() as registry:
        settings = dict(kv_cache_tokens=256, max_running=1, threads=1)
        registry.register("logged", "smollm2", log_prompts=True, **settings)  # type: ignore[arg-type]
        registry.register("quiet", "smollm2", **settings)  # type: ignore[arg-type]
        assert queued_prompts(registry, "logged", "reg-logged") == ["The secret ingredient is"]
        assert queued_prompts(registry, "quiet", "reg-quiet") == [None]


@pytest.mark.parametrize("option, value", [("memory_budget_bytes", -1), ("memory_budget_bytes", "lots"), ("keep_alive", "soon")])
def test_a_bad_registry_option_is_refused_naming_it(option, value):
    with pytest.raises(InvalidRequestError) as refused:
        cortexstream.Registry(**{option: value})
    assert refused.value.param == option, refused.value
