"""The engine's scheduling flags on the server's command line (issue 21 item 1): parsed,
checked, and passed to the engine; a value the engine refuses names the setting."""

from __future__ import annotations

import pytest

import cortexstream
from cortexstream.server.main import engine_options, parse_args
from cortexstream.server.state import EngineOptions


def test_scheduling_flags_reach_the_engine_options():
    options = engine_options(parse_args(["--max-batch-tokens", "512", "--target-step-ms", "25.5"]))
    assert (options.max_batch_tokens, options.target_step_ms) == (512, 25.5)
    assert engine_options(parse_args(["--target-step-ms", "0"])).target_step_ms == 0.0
    assert "target_step_ms" not in engine_options(parse_args([])).as_kwargs(), "unset keeps the engine default"


@pytest.mark.parametrize("flag, value", [("--target-step-ms", "-1"), ("--target-step-ms", "nan"),
                                         ("--target-step-ms", "inf"), ("--target-step-ms", "fast"),
                                         ("--max-batch-tokens", "0")])
def test_a_bad_scheduling_flag_is_refused_naming_it(flag, value, capsys):
    with pytest.raises(SystemExit):
        parse_args([flag, value])
    assert flag in capsys.readouterr().err


def test_a_step_target_the_engine_refuses_names_target_step_ms():
    options = EngineOptions(target_step_ms=10_001, kv_cache_tokens=512)
    with pytest.raises(cortexstream.InvalidRequestError) as raised:
        cortexstream.Engine(embedding_model=False, **options.as_kwargs())
    assert raised.value.param == "target_step_ms"


def test_the_kv_cache_type_flag_reaches_the_engine_and_is_checked(capsys):
    assert engine_options(parse_args(["--kv-cache-type", "q8_0"])).kv_cache_type == "q8_0"
    assert "kv_cache_type" not in engine_options(parse_args([])).as_kwargs(), "unset keeps the engine default"
    with pytest.raises(SystemExit):
        parse_args(["--kv-cache-type", "q4_0"])
    assert "--kv-cache-type" in capsys.readouterr().err
    # The server's own path: every model's entry carries the flag into the registry.
    (entry,) = models_of("--kv-cache-type", "q8_0", "--kv-cache-tokens", "512")
    assert entry.register_kwargs()["kv_cache_type"] == "q8_0"
    with cortexstream.Registry() as registry:
        registry.register(entry.name, entry.path(), **entry.register_kwargs())
        with registry.get(entry.name) as lease:
            assert lease.engine.generate("Hello", max_tokens=2, temperature=0.0).usage.completion_tokens >= 1
        with pytest.raises(cortexstream.InvalidRequestError) as raised:
            registry.register("bad", entry.path(), kv_cache_type="q4_0")
        assert raised.value.param == "kv_cache_type"


def models_of(*argv: str):
    from cortexstream.server.main import server_config
    return server_config(parse_args(["--embedding-model", "none", *argv])).models


def test_model_flags_build_the_served_list():
    from cortexstream.server.served import ModelEntry
    assert models_of() == (ModelEntry("smollm2", "smollm2"),), "smollm2 by default"
    entries = models_of("--model", "smollm2", "--model", "short=smollm2", "--model", "/models/My-Model.Q4_0.gguf",
                        "--threads", "2")
    assert [(e.name, e.source, e.embedding) for e in entries] == [
        ("smollm2", "smollm2", False), ("short", "smollm2", False), ("My-Model.Q4_0", "/models/My-Model.Q4_0.gguf", False)]
    assert all(e.engine.threads == 2 for e in entries), "engine flags apply to every model"
    # A folder model given to --model is served as an embedding model.
    assert models_of("--model", "minilm")[0].embedding
    assert [e.name for e in server_config_with_embedding("all=minilm")] == ["smollm2", "all"]


def server_config_with_embedding(option: str):
    from cortexstream.server.main import server_config
    return server_config(parse_args(["--embedding-model", option])).models


@pytest.mark.parametrize("argv, named", [
    (["--model", "smollm2", "--model", "smollm2"], "smollm2"),
    (["--model", "a=smollm2", "--model", "a=gemma3"], "'a'"),
    (["--keep-alive", "5 parsecs"], "keep_alive"),
])
def test_a_bad_model_list_or_keep_alive_stops_the_server_naming_it(argv, named):
    with pytest.raises(SystemExit) as stopped:
        models_of(*argv)
    assert named in str(stopped.value)


def test_memory_budget_and_keep_alive_flags():
    from cortexstream.server.main import server_config
    config = server_config(parse_args(["--memory-budget", "2GB", "--keep-alive", "-1"]))
    assert config.memory_budget_bytes == 2_000_000_000 and config.keep_alive == -1.0
    assert server_config(parse_args(["--memory-budget", "512MiB"])).memory_budget_bytes == 512 * 2**20
    assert server_config(parse_args([])).keep_alive == "5m", "Ollama's default"
    assert server_config(parse_args(["--keep-alive", "1h30m"])).keep_alive == "1h30m"


@pytest.mark.parametrize("value", ["lots", "0", "-5GB", "2XB"])
def test_a_bad_memory_budget_is_refused_naming_it(value, capsys):
    with pytest.raises(SystemExit):
        parse_args(["--memory-budget", value])
    assert "--memory-budget" in capsys.readouterr().err
