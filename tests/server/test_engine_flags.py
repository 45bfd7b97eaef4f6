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
    options = EngineOptions(kv_cache_type="q8_0", kv_cache_tokens=512)
    with cortexstream.Engine(embedding_model=False, **options.as_kwargs()) as engine:
        assert engine.generate("Hello", max_tokens=2, temperature=0.0).usage.completion_tokens >= 1
