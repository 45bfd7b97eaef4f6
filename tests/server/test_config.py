"""The server's config file: every key accepted when valid and refused, at its line, when not;
the line locator on tricky TOML layouts; a broken file stops the real entry point with
`file:line` and exit code 2; flags override the file; --print-config shows the result.

No model is loaded: the checks run before any engine exists.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import httpx
import pytest
from conftest import serving

from cortexstream.server.config_file import ConfigError, load_config, parse_config
from cortexstream.server.main import ConfigExit, parse_args, server_config
from cortexstream.server.toml_locator import key_lines, line_of

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "server" / "cortexstream.toml"

# -- the line locator ------------------------------------------------------------------------

TRICKY = '''\
# a comment that looks like a header: [[models]]
[server]   # a comment after a header
port = 8080
host."x y" = "dotted, quoted"
note = """
[[models]]
name = "inside a multi-line string"
"""
literal = \'\'\'
key = "inside a literal string" \'\'\'
escaped = "a \\" quote [not] # a comment"

[[models]]
name = "a"
defaults = { temperature = 0.5, nested = { top_p = 0.9 } }

[[ models ]]
name = "b"
[models.defaults]
top_k = 4
stop = [
  "one", # a comment in an array
  { a = 2 },
  "]",
]
[[models.adapters]]
x = 1
[[models.adapters]]
x = 2
[[api_keys]]
"key" = 'k'
'''

TRICKY_LINES = {
    ("server",): 2,
    ("server", "port"): 3,
    ("server", "host"): 4,
    ("server", "host", "x y"): 4,
    ("server", "note"): 5,
    ("server", "literal"): 9,
    ("server", "escaped"): 11,
    ("models", 0): 13,
    ("models", 0, "name"): 14,
    ("models", 0, "defaults", "temperature"): 15,
    ("models", 0, "defaults", "nested", "top_p"): 15,
    ("models", 1): 17,
    ("models", 1, "name"): 18,
    ("models", 1, "defaults"): 19,
    ("models", 1, "defaults", "top_k"): 20,
    ("models", 1, "defaults", "stop", 0): 22,
    ("models", 1, "defaults", "stop", 1, "a"): 23,
    ("models", 1, "defaults", "stop", 2): 24,
    ("models", 1, "adapters", 0, "x"): 27,
    ("models", 1, "adapters", 1, "x"): 29,
    ("api_keys", 0, "key"): 31,
}


def test_locator_finds_every_key_of_a_tricky_layout():
    tomllib.loads(TRICKY)  # the layout is valid TOML
    lines = key_lines(TRICKY)
    assert {path: lines.get(path) for path in TRICKY_LINES} == TRICKY_LINES
    # Text inside strings defines nothing.
    assert ("models", 2) not in lines and ("key",) not in lines and ("name",) not in lines


MORE_LAYOUTS = [
    'models = [{ name = "a", defaults = { stop = ["x", "y"] } }, { name = "b" }]\n',
    'grid = [[1, 2], [3, [4, 5]]]\n"a.b" = 1\n\'c.d\' = 2\n"e\\"f" = 3\n"ключ" = 4\n',
    't = 1979-05-27T07:32:00Z\nd = 1979-05-27\nf = inf\nn = +1_000\nh = 0xDEAD # hex\nb = true\n',
    '[a.b.c]\nx = 1\n[a]\ny = 2\n[a.b]\nz = 3\n',
    'x = """\\\n   trimmed \\\n   # not a comment\n"""\ny = \'\'\'\n[not.a.table]\n\'\'\'\nz = 1\n',
    '[[a]]\n[[a.b]]\n[[a.b]]\nc = 1\n[[a]]\n[[a.b]]\nc = 2\n',
]


def tomllib_paths(value, path=()):
    """Every key path (and array index) of a document as tomllib reads it."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield (*path, key)
            yield from tomllib_paths(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield (*path, index)
            yield from tomllib_paths(item, (*path, index))


@pytest.mark.parametrize("source", [TRICKY, *MORE_LAYOUTS], ids=range(1 + len(MORE_LAYOUTS)))
def test_the_locator_finds_every_key_tomllib_reads(source):
    lines = key_lines(source)
    missing = [path for path in tomllib_paths(tomllib.loads(source)) if path not in lines]
    assert not missing
    assert max(lines.values()) <= source.count("\n") + 1


def test_the_locator_counts_lines_through_strings_and_nested_tables():
    strings, nested = key_lines(MORE_LAYOUTS[4]), key_lines(MORE_LAYOUTS[5])
    assert (strings[("x",)], strings[("y",)], strings[("z",)]) == (1, 5, 8)
    assert ("not",) not in strings
    assert nested[("a", 0, "b", 1, "c")] == 4 and nested[("a", 1, "b", 0, "c")] == 7
    inline = key_lines(MORE_LAYOUTS[0])
    assert inline[("models", 1, "name")] == 1 and inline[("models", 0, "defaults", "stop", 1)] == 1


def test_the_locator_finds_every_key_of_the_example_file():
    source = EXAMPLE.read_text()
    lines = key_lines(source)
    assert all(path in lines for path in tomllib_paths(tomllib.loads(source)))
    assert lines[("models", 1, "embedding")] == source.splitlines().index(
        next(line for line in source.splitlines() if line.startswith("embedding = true"))) + 1


def test_locator_reports_a_missing_key_at_its_table():
    lines = key_lines(TRICKY)
    assert line_of(lines, ("models", 1, "model")) == 17
    assert line_of(lines, ("logging", "level")) is None


# -- every key, valid ----------------------------------------------------------------------

FULL = '''\
[server]
host = "0.0.0.0"
port = 9000
shutdown_timeout = 2.5
keep_alive = "10m"
memory_budget = "512MiB"

[logging]
level = "debug"
format = "json"
log_prompts = true

[engine]
threads = 2
max_running = 8
max_queue = 16
kv_cache_tokens = 4096
max_batch_tokens = 512
target_step_ms = 0
context_length = 1024
kv_cache_type = "q8_0"

[[models]]
name = "chat"
model = "smollm2"
context_length = 512
kv_cache_tokens = 2048
threads = 1
max_running = 4
max_queue = 8
max_batch_tokens = 256
target_step_ms = 25
kv_cache_type = "f16"
keep_alive = -1
chat_template = "{{ messages[0].content }}"
[models.defaults]
temperature = 0.2
top_p = 0.9
top_k = 40
max_tokens = 32
stop = ["\\n"]
seed = 7

[[models]]
name = "local"
model = "weights/tiny.gguf"
chat_template_file = "templates/chat.jinja"
keep_alive = 30

[[models]]
name = "minilm"
model = "minilm"
embedding = true

[[api_keys]]
name = "alice"
key = "sk-alice-0123456789abcdef"
requests_per_minute = 60
tokens_per_minute = 10000

[[api_keys]]
name = "bob"
key_env = "TEST_CONFIG_BOB_KEY"
'''


@pytest.fixture()
def config_dir(tmp_path: Path) -> Path:
    """A folder with the files FULL names, relative to it."""
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "tiny.gguf").write_bytes(b"GGUF")
    (tmp_path / "templates").mkdir()
    (tmp_path / "templates" / "chat.jinja").write_text("{{ messages[-1].content }}")
    return tmp_path


def parse(source: str, folder: Path) -> object:
    return parse_config(source, folder / "cortexstream.toml", {"TEST_CONFIG_BOB_KEY": "bob-secret"})


def test_every_key_is_read(config_dir: Path):
    config = parse(FULL, config_dir)
    assert config.server == {"host": "0.0.0.0", "port": 9000, "shutdown_timeout": 2.5, "keep_alive": "10m",
                             "memory_budget": 512 * 2**20}
    assert config.logging == {"level": "debug", "format": "json", "log_prompts": True}
    assert config.engine == {"threads": 2, "max_running": 8, "max_queue": 16, "kv_cache_tokens": 4096,
                             "max_batch_tokens": 512, "target_step_ms": 0.0, "context_length": 1024,
                             "kv_cache_type": "q8_0"}
    chat, local, minilm = config.models
    assert (chat.name, chat.model, chat.embedding, chat.keep_alive) == ("chat", "smollm2", False, -1)
    assert chat.engine == {"context_length": 512, "kv_cache_tokens": 2048, "threads": 1, "max_running": 4,
                           "max_queue": 8, "max_batch_tokens": 256, "target_step_ms": 25.0, "kv_cache_type": "f16"}
    assert chat.chat_template == "{{ messages[0].content }}"
    assert chat.defaults == {"temperature": 0.2, "top_p": 0.9, "top_k": 40, "max_tokens": 32, "stop": ["\n"], "seed": 7}
    # Relative paths resolve against the file's folder, not the working directory.
    assert local.model == str((config_dir / "weights" / "tiny.gguf").resolve())
    assert local.chat_template == "{{ messages[-1].content }}"
    assert local.chat_template_file == str((config_dir / "templates" / "chat.jinja").resolve())
    assert local.keep_alive == 30
    assert minilm.embedding and minilm.defaults == {}
    alice, bob = config.api_keys
    assert (alice.name, alice.secret, alice.requests_per_minute, alice.tokens_per_minute) == \
        ("alice", "sk-alice-0123456789abcdef", 60, 10000)
    assert (bob.name, bob.secret, bob.requests_per_minute, bob.tokens_per_minute) == ("bob", "bob-secret", None, None)
    assert config.api_key_envs == {"bob": "TEST_CONFIG_BOB_KEY"}


def test_a_bare_name_is_a_folder_beside_the_file_before_it_is_a_cache_name(tmp_path: Path):
    (tmp_path / "embedder").mkdir()
    config = parse('[[models]]\nname = "e"\nmodel = "embedder"\nembedding = true\n'
                   '[[models]]\nname = "m"\nmodel = "minilm"\nembedding = true\n', tmp_path)
    assert [m.model for m in config.models] == [str((tmp_path / "embedder").resolve()), "minilm"]


def test_the_documented_example_file_loads():
    config = load_config(EXAMPLE, environ={"CORTEXSTREAM_KEY_ALICE": "alice-key"})
    assert [m.name for m in config.models] == ["chat", "minilm"]
    assert [k.name for k in config.api_keys] == ["alice", "batch-jobs"]
    docs = (REPO / "docs" / "config.md").read_text()
    assert EXAMPLE.read_text().strip() in docs, "docs/config.md shows the example file as it is"


# -- every key, invalid --------------------------------------------------------------------

#: (replace this line of FULL, with this, the key the error names, a fragment of its message).
#: The error's line is the replaced line's.
INVALID = [
    ('host = "0.0.0.0"', "host = 1", "server.host", "expected a string, got an integer (1)"),
    ('host = "0.0.0.0"', 'host = " "', "server.host", "must not be empty"),
    ("port = 9000", "port = 70000", "server.port", "must be between 1 and 65535, got 70000"),
    ("port = 9000", 'port = "9000"', "server.port", "expected an integer, got a string ('9000')"),
    ("port = 9000", "port = true", "server.port", "expected an integer, got a boolean (true)"),
    ("shutdown_timeout = 2.5", "shutdown_timeout = -1", "server.shutdown_timeout", "at least 0, got -1"),
    ("shutdown_timeout = 2.5", "shutdown_timeout = nan", "server.shutdown_timeout", "got nan"),
    ('keep_alive = "10m"', 'keep_alive = "ten minutes"', "server.keep_alive", "expected seconds or a duration"),
    ('keep_alive = "10m"', "keep_alive = [1]", "server.keep_alive", "got an array"),
    ('memory_budget = "512MiB"', 'memory_budget = "lots"', "server.memory_budget", "a size such as"),
    ('memory_budget = "512MiB"', "memory_budget = 0", "server.memory_budget", "at least 1"),
    ('memory_budget = "512MiB"', "memory_bugdet = 1", "server.memory_bugdet", "unknown key; the keys here are"),
    ('level = "debug"', 'level = "verbose"', "logging.level", "must be one of critical, error, warning, info, debug"),
    ('format = "json"', 'format = "xml"', "logging.format", "must be one of json, text, got 'xml'"),
    ("log_prompts = true", "log_prompts = 1", "logging.log_prompts", "expected a boolean"),
    # [engine] keys are checked by the core, in its words (`Engine(...)` says the same).
    ("threads = 2", "threads = 0", "engine.threads", "must be between 1 and"),
    ("max_running = 8", "max_running = 8.5", "engine.max_running", "invalid type: floating point `8.5`, expected usize"),
    ("max_queue = 16", "max_queue = -3", "engine.max_queue", "invalid value: integer `-3`"),
    ("kv_cache_tokens = 4096", 'kv_cache_tokens = "4k"', "engine.kv_cache_tokens", 'invalid type: string "4k"'),
    ("max_batch_tokens = 512", "max_batch_tokens = 0", "engine.max_batch_tokens", "at least 1"),
    ("target_step_ms = 0", "target_step_ms = 20000", "engine.target_step_ms", "above 0 and at most 10000"),
    ("context_length = 1024", "context_length = 0", "engine.context_length", "at least 1"),
    ("context_length = 1024", "chat_template = 'x'", "engine.chat_template", "unknown key"),
    ('kv_cache_type = "q8_0"', 'kv_cache_type = "q4_0"', "engine.kv_cache_type", 'must be one of "f16", "q8_0", got "q4_0"'),
    ('kv_cache_type = "f16"', "kv_cache_type = 8", "models[0].kv_cache_type", "expected a string"),
    ('name = "chat"', 'name = "../etc"', "models[0].name", "letters, digits"),
    ('name = "chat"', "name = 3", "models[0].name", "expected a string"),
    ('model = "smollm2"', "model = false", "models[0].model", "expected a string"),
    ('model = "weights/tiny.gguf"', 'model = "weights/missing.gguf"', "models[1].model", "no such file"),
    ('model = "smollm2"', 'model = "smollm3"', "models[0].model", "not a known model name"),
    ("context_length = 512", "context_length = -512", "models[0].context_length", "invalid value: integer `-512`"),
    ("kv_cache_tokens = 2048", "kv_cache_tokens = 0", "models[0].kv_cache_tokens", "at least 1"),
    ("threads = 1", 'threads = "one"', "models[0].threads", 'invalid type: string "one"'),
    ("target_step_ms = 25", "target_step_ms = -1", "models[0].target_step_ms", "above 0 and at most 10000"),
    ("keep_alive = -1", 'keep_alive = "5 parsecs"', "models[0].keep_alive", "expected seconds or a duration"),
    ("keep_alive = -1", "embeding = true", "models[0].embeding", "unknown key"),
    ('chat_template = "{{ messages[0].content }}"', "chat_template = ''", "models[0].chat_template",
     "must not be empty"),
    ('chat_template_file = "templates/chat.jinja"', 'chat_template_file = "templates/none.jinja"',
     "models[1].chat_template_file", "no such file"),
    ('chat_template_file = "templates/chat.jinja"', 'chat_template_file = "templates"',
     "models[1].chat_template_file", "not a file"),
    ("embedding = true", 'embedding = "yes"', "models[2].embedding", "expected a boolean"),
    ("temperature = 0.2", "temperature = -0.2", "models[0].defaults.temperature",
     "must be a finite number >= 0, got -0.2"),
    ("temperature = 0.2", 'temperature = "hot"', "models[0].defaults.temperature", "invalid type: string"),
    ("top_p = 0.9", "top_p = 1.5", "models[0].defaults.top_p", "must be in (0, 1], got 1.5"),
    ("top_k = 40", "top_k = -1", "models[0].defaults.top_k", "integer `-1`, expected u32"),
    ("max_tokens = 32", "max_tokens = 0", "models[0].defaults.max_tokens", "at least 1"),
    ('stop = ["\\n"]', 'stop = [""]', "models[0].defaults.stop", "must not be empty"),
    ("seed = 7", "seed = -7", "models[0].defaults.seed", "integer `-7`, expected u64"),
    ("seed = 7", "temprature = 0.5", "models[0].defaults.temprature", "unknown request option; a default may set temperature, top_k"),
    ("seed = 7", 'tag = "x"', "models[0].defaults.tag", "the server sets it"),
    ("seed = 7", "priority = 3", "models[0].defaults.priority", "cannot be a default"),
    ("seed = 7", 'regex = "a+"', "models[0].defaults.regex", "cannot be a default"),
    ('key = "sk-alice-0123456789abcdef"', "key = 12345", "api_keys[0].key", "expected a string"),
    ('key = "sk-alice-0123456789abcdef"', 'key = ""', "api_keys[0].key", "must not be empty"),
    ("requests_per_minute = 60", "requests_per_minute = 0", "api_keys[0].requests_per_minute", "at least 1"),
    ("tokens_per_minute = 10000", "tokens_per_minute = 1.5", "api_keys[0].tokens_per_minute",
     "expected an integer"),
    ("tokens_per_minute = 10000", "token_per_minute = 1", "api_keys[0].token_per_minute", "unknown key"),
    ('key_env = "TEST_CONFIG_BOB_KEY"', 'key_env = "TEST_CONFIG_UNSET_VARIABLE"', "api_keys[1].key_env",
     "TEST_CONFIG_UNSET_VARIABLE is not set"),
    ("[logging]", "[logs]", "logs", "unknown section; the sections are server, logging, engine, models, api_keys"),
]


@pytest.mark.parametrize(("line", "replacement", "key", "fragment"), INVALID,
                         ids=[f"{key}={replacement}" for _, replacement, key, _ in INVALID])
def test_an_invalid_value_names_its_key_and_line(config_dir: Path, line, replacement, key, fragment):
    lines = FULL.splitlines()
    number = lines.index(line) + 1
    lines[number - 1] = replacement
    with pytest.raises(ConfigError) as raised:
        parse("\n".join(lines) + "\n", config_dir)
    error = raised.value
    assert (error.key, error.line) == (key, number), str(error)
    assert fragment in error.message, str(error)
    assert str(error).startswith(f"{config_dir / 'cortexstream.toml'}:{number}: {key}: ")


def one_model(extra: str = "", name: str = "chat") -> str:
    return f'[[models]]\nname = "{name}"\nmodel = "smollm2"\n{extra}'


@pytest.mark.parametrize(("source", "key", "line", "fragment"), [
    (one_model() + one_model(name="Chat:latest"), "models[1].name", 5,
     "duplicate name 'Chat:latest': models[0] (line 1) has it too"),
    ('[[models]]\nname = "x"\n', "models[0]", 1, "missing `model`"),
    ('[[models]]\nmodel = "smollm2"\n', "models[0]", 1, "missing `name`"),
    (one_model('chat_template = "a"\nchat_template_file = "b"\n'), "models[0].chat_template_file", 5,
     "not both"),
    (one_model("embedding = true\nchat_template = 'x'\n"), "models[0].chat_template", 5, "no chat template"),
    (one_model("embedding = true\nthreads = 2\nmax_running = 4\n"), "models[0].max_running", 6,
     "an embedding model takes no engine setting but `threads`"),
    (one_model("embedding = true\n[models.defaults]\ntemperature = 1.0\n"), "models[0].defaults", 5,
     "an embedding model takes no request options"),
    (one_model("defaults = 3\n"), "models[0].defaults", 4, "expected a table of request options"),
    ('[[api_keys]]\nname = "a"\n', "api_keys[0]", 1, "exactly one of `key`"),
    ('[[api_keys]]\nkey = "k"\nkey_env = "HOME"\n', "api_keys[0]", 1, "exactly one of `key`"),
    ('[[api_keys]]\nname = "a"\nkey = "k1"\n[[api_keys]]\nname = "a"\nkey = "k2"\n', "api_keys[1].name", 5,
     "duplicate name 'a'"),
    ('[[api_keys]]\nkey = "same"\n[[api_keys]]\nkey = "same"\n', "api_keys[1].key", 4, "duplicate key: "),
    (one_model("defaults.temperature = -1\n"), "models[0].defaults.temperature", 4, "got -1"),
    (one_model('defaults = { top_p = 0.5, stop = [\n  "a",\n  "",\n] }\n'), "models[0].defaults.stop", 4,
     "must not be empty"),
    ((one_model("# a comment\n\n") + "[server]\nport = 0\n").replace("\n", "\r\n"), "server.port", 7,
     "between 1 and 65535"),
    ("models = 3\n", "models", 1, "expected [[models]] tables"),
    ("server = 3\n", "server", 1, "expected a table"),
    ("[server]\nport = \n", "", 2, "not valid TOML"),
])
def test_file_level_mistakes_name_key_and_line(tmp_path: Path, source, key, line, fragment):
    with pytest.raises(ConfigError) as raised:
        parse(source, tmp_path)
    assert (raised.value.key, raised.value.line) == (key, line), str(raised.value)
    assert fragment in raised.value.message, str(raised.value)


#: The core's ranges, in the core's words: the config file has no copy of them to drift.
@pytest.mark.parametrize(("source", "key", "line", "fragment"), [
    # Ranges the file's own schema once lacked: the core caps threads and a step's tokens.
    ("[engine]\nmax_running = 4\nthreads = 100000\n", "engine.threads", 3,
     "(4 per available CPU), got 100000"),
    ("[engine]\nmax_batch_tokens = 2000000\n", "engine.max_batch_tokens", 2, "must be at most 1048576, got 2000000"),
    (one_model("max_prefill_tokens = 0\n"), "models[0].max_prefill_tokens", 4, "must be at least 1, got 0"),
    ("[engine]\ntarget_step_ms = 10000.5\n", "engine.target_step_ms", 2,
     "above 0 and at most 10000 (none for a fixed budget), got 10000.5"),
    # A model's settings over [engine]'s, checked together as its engine gets them.
    ("[engine]\nblock_size = 32\n" + one_model("kv_cache_tokens = 16\n"), "models[0].kv_cache_tokens", 6,
     "must hold at least one block"),
    (one_model("block_size = 32\n") + "[engine]\nkv_cache_tokens = 16\n", "engine.kv_cache_tokens", 6,
     "must hold at least one block"),
    ('[engine]\nkv_cache_type = "q4_0"\n', "engine.kv_cache_type", 2, "q4_0"),
    ("[engine]\nthreads = true\n", "engine.threads", 2, "invalid type: boolean `true`"),
])
def test_an_engine_setting_out_of_the_cores_range_names_file_line_and_the_range(tmp_path: Path, source, key,
                                                                                 line, fragment):
    with pytest.raises(ConfigError) as raised:
        parse(source, tmp_path)
    assert (raised.value.key, raised.value.line) == (key, line), str(raised.value)
    assert fragment in raised.value.message, str(raised.value)
    assert str(raised.value).startswith(f"{tmp_path / 'cortexstream.toml'}:{line}: {key}: ")


def test_the_engine_keys_are_the_cores_settings():
    """Every engine setting of the core is a key of [engine] or has its place elsewhere in the
    file, and the server passes every one on (`EngineOptions`)."""
    from dataclasses import fields

    from cortexstream import _core
    from cortexstream.server.config_file import ENGINE, ENGINE_ELSEWHERE
    from cortexstream.server.served import EngineOptions

    assert set(ENGINE) | set(ENGINE_ELSEWHERE) == set(_core.engine_setting_names())
    assert set(ENGINE) <= {f.name for f in fields(EngineOptions)}


def test_a_duplicate_key_does_not_show_the_key(tmp_path: Path):
    with pytest.raises(ConfigError) as raised:
        parse('[[api_keys]]\nkey = "s3cret"\n[[api_keys]]\nkey = "s3cret"\n', tmp_path)
    assert "s3cret" not in str(raised.value)


def test_a_missing_file_is_named(tmp_path: Path):
    with pytest.raises(ConfigError, match=r"nope\.toml: no such file"):
        load_config(tmp_path / "nope.toml")


def test_the_file_becomes_the_server_configuration(config_dir: Path, monkeypatch):
    (config_dir / "server.toml").write_text(FULL)
    monkeypatch.setenv("TEST_CONFIG_BOB_KEY", "bob-secret")
    monkeypatch.delenv("CORTEXSTREAM_API_KEY", raising=False)
    config = server_config(parse_args(["--config", str(config_dir / "server.toml"), "--max-queue", "64"]))
    assert (config.memory_budget_bytes, config.keep_alive) == (512 * 2**20, "10m")
    assert config.engine.max_queue == 64 and config.engine.max_running == 8 and config.engine.log_prompts
    chat, local, minilm = config.models
    assert (chat.name, chat.source, chat.keep_alive, dict(chat.defaults)) == \
        ("chat", "smollm2", -1, {"temperature": 0.2, "top_p": 0.9, "top_k": 40, "max_tokens": 32, "stop": ["\n"],
                                 "seed": 7})
    # [engine], then the model's own, then the flag.
    assert chat.engine.as_kwargs() == {"max_running": 4, "max_queue": 64, "kv_cache_tokens": 2048,
                                       "max_batch_tokens": 256, "target_step_ms": 25.0, "context_length": 512,
                                       "threads": 1, "chat_template": "{{ messages[0].content }}",
                                       "log_prompts": True, "kv_cache_type": "f16"}
    assert local.engine.chat_template == "{{ messages[-1].content }}" and local.keep_alive == 30
    assert local.engine.max_running == 8, "a model without its own value has [engine]'s"
    assert local.engine.kv_cache_type == "q8_0"
    assert minilm.embedding and minilm.register_kwargs() == {"embedding": True, "threads": 2}
    assert [key.name for key in config.all_api_keys] == ["alice", "bob"]


def test_a_mistake_stops_the_server_with_exit_status_2_and_the_message(tmp_path: Path):
    (tmp_path / "server.toml").write_text("[server]\nport = 0\n")
    with pytest.raises(ConfigExit) as stopped:
        server_config(parse_args(["--config", str(tmp_path / "server.toml")]))
    assert stopped.value.code == 2
    assert str(stopped.value) == f"cortexstream-server: error: {tmp_path / 'server.toml'}:2: server.port: " \
                                 "must be between 1 and 65535, got 0"


# -- the real entry point ------------------------------------------------------------------

def run_server(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """The console script `cortexstream-server` (run by this interpreter: the venv may have been
    moved, so its shebang cannot be trusted), or `python -m cortexstream.server` without it."""
    script = Path(sys.executable).with_name("cortexstream-server")
    command = [sys.executable, str(script)] if script.exists() else [sys.executable, "-m", "cortexstream.server"]
    # No key from the environment of whoever runs the tests.
    environment = {**os.environ, "CORTEXSTREAM_API_KEY": "", **(env or {})}
    return subprocess.run([*command, *args], capture_output=True, text=True, timeout=120, cwd=REPO, env=environment)


def test_a_broken_file_stops_the_server_with_file_and_line(tmp_path: Path):
    config = tmp_path / "broken.toml"
    config.write_text('[server]\nport = 8000\n\n[[models]]\nname = "chat"\nmodel = "smollm2"\n'
                      "[models.defaults]\ntop_p = 7\n")
    result = run_server("--config", str(config))
    assert result.returncode == 2, result.stderr
    assert f"{config}:8: models[0].defaults.top_p: must be in (0, 1], got 7" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_missing_config_file_stops_the_server(tmp_path: Path):
    result = run_server("--config", str(tmp_path / "absent.toml"))
    assert result.returncode == 2 and "absent.toml: no such file" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def print_config(*args: str, env: dict | None = None) -> dict:
    result = run_server(*args, "--print-config", env=env)
    assert result.returncode == 0, result.stderr
    return tomllib.loads(result.stdout)


def test_print_config_shows_the_file_with_flags_over_it_and_masks_keys(tmp_path: Path):
    config = tmp_path / "server.toml"
    config.write_text(
        '[server]\nport = 8100\nhost = "0.0.0.0"\n[logging]\nformat = "json"\n[engine]\nmax_running = 8\n'
        'threads = 2\n[[models]]\nname = "chat"\nmodel = "smollm2"\nmax_running = 4\n[models.defaults]\n'
        'temperature = 0.3\n[[api_keys]]\nname = "alice"\nkey = "sk-alice-0123456789abcdef"\n'
        'requests_per_minute = 5\n[[api_keys]]\nname = "env"\nkey_env = "TEST_CONFIG_KEY"\n')
    printed = print_config("--config", str(config), "--port", "8200", "--max-running", "16",
                           env={"TEST_CONFIG_KEY": "env-secret-value"})
    assert printed["server"]["port"] == 8200, "a flag wins over the file"
    assert printed["server"]["host"] == "0.0.0.0", "what no flag sets comes from the file"
    assert printed["logging"] == {"level": "info", "format": "json", "log_prompts": False}
    assert printed["engine"] == {"max_running": 16, "threads": 2}
    assert printed["models"][0]["max_running"] == 16, "an engine flag wins over a model's own value"
    assert printed["models"][0]["defaults"] == {"temperature": 0.3}
    alice, env_key = printed["api_keys"]
    assert alice == {"name": "alice", "key": "****cdef", "requests_per_minute": 5}
    assert env_key == {"name": "env", "key_env": "TEST_CONFIG_KEY"}
    shown = run_server("--config", str(config), "--print-config", env={"TEST_CONFIG_KEY": "env-secret-value"}).stdout
    assert "sk-alice" not in shown and "env-secret-value" not in shown


def test_model_flags_replace_the_file_models_of_their_kind(tmp_path: Path):
    config = tmp_path / "server.toml"
    config.write_text('[server]\nkeep_alive = "1h"\n[[models]]\nname = "chat"\nmodel = "smollm2"\n'
                      '[models.defaults]\ntemperature = 0.1\n[[models]]\nname = "embed"\nmodel = "minilm"\n'
                      'embedding = true\n')
    file_only = print_config("--config", str(config))
    assert [(m["name"], m["embedding"]) for m in file_only["models"]] == [("chat", False), ("embed", True)]
    assert file_only["server"]["keep_alive"] == "1h"
    replaced = print_config("--config", str(config), "--model", "other=smollm2", "--embedding-model", "none",
                            "--keep-alive", "30")
    assert [(m["name"], m["embedding"]) for m in replaced["models"]] == [("other", False)]
    assert "defaults" not in replaced["models"][0], "the file's defaults belong to the file's model"
    assert replaced["server"]["keep_alive"] == 30.0


def test_a_bad_flag_value_is_refused_like_a_bad_file_value(tmp_path: Path):
    config = tmp_path / "server.toml"
    config.write_text('[[models]]\nname = "chat"\nmodel = "smollm2"\n')
    result = run_server("--config", str(config), "--keep-alive", "soon", "--print-config")
    assert result.returncode == 2 and "--keep-alive: " in result.stderr and "Traceback" not in result.stderr
    result = run_server("--config", str(config), "--model", "Chat=smollm2", "--print-config")
    assert result.returncode == 0, "a --model replaces the file's generation models, so no clash"
    config.write_text('[[models]]\nname = "chat"\nmodel = "minilm"\nembedding = true\n')
    result = run_server("--config", str(config), "--model", "Chat=smollm2", "--print-config")
    assert result.returncode == 2 and "two models are named 'chat'" in result.stderr, result.stderr


def test_print_config_without_a_file_shows_the_defaults_and_the_cli_key():
    printed = print_config("--api-key", "cli-secret-key-123456", "--log-level", "debug", "--embedding-model", "none")
    assert printed["server"] == {"host": "127.0.0.1", "port": 8000, "shutdown_timeout": 10.0, "keep_alive": "5m"}
    assert [(m["name"], m["model"]) for m in printed["models"]] == [("smollm2", "smollm2")]
    assert printed["logging"]["level"] == "debug"
    assert printed["api_keys"] == [{"name": "api-key", "key": "****3456"}]
    from_env = print_config("--embedding-model", "none", env={"CORTEXSTREAM_API_KEY": "env-secret-key-654321"})
    assert from_env["api_keys"] == [{"name": "api-key", "key": "****4321"}], "$CORTEXSTREAM_API_KEY still works"


def test_the_real_server_serves_what_its_config_file_says(tmp_path: Path):
    config = tmp_path / "server.toml"
    config.write_text('[logging]\nlevel = "warning"\n[engine]\nmax_running = 4\nkv_cache_tokens = 2048\n'
                      '[[models]]\nname = "chat"\nmodel = "smollm2"\ncontext_length = 512\n'
                      '[models.defaults]\nmax_tokens = 3\ntemperature = 0.0\n'
                      '[[api_keys]]\nname = "alice"\nkey = "alice-key"\nrequests_per_minute = 3\n')
    for server in serving("--config", str(config), "--api-key", "admin-key"):
        alice, admin = {"Authorization": "Bearer alice-key"}, {"Authorization": "Bearer admin-key"}
        models = httpx.get(f"{server.url}/v1/models", headers=alice, timeout=60)
        assert [m["id"] for m in models.json()["data"]] == ["chat"], "exactly the file's models"
        completion = httpx.post(f"{server.url}/v1/completions", headers=alice, timeout=120,
                                json={"model": "chat", "prompt": "Once upon a time"})
        assert completion.json()["usage"]["completion_tokens"] == 3, "the model's default max_tokens"
        assert httpx.get(f"{server.url}/v1/models", headers=alice, timeout=60).status_code == 200
        refused = httpx.get(f"{server.url}/v1/models", headers=alice, timeout=60)
        assert refused.status_code == 429 and refused.json()["error"]["code"] == "rate_limit_exceeded"
        assert 1 <= int(refused.headers["retry-after"]) <= 20
        assert httpx.get(f"{server.url}/v1/models", headers=admin, timeout=60).status_code == 200, \
            "the --api-key key has no limit"
