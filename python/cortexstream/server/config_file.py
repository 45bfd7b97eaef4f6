"""The server's config file (`cortexstream-server --config FILE`): one TOML schema, read and
checked at start.

Every mistake is a :class:`ConfigError` naming the file, the line and the key
(`cortexstream.toml:14: models[1].defaults.temperature: must be a finite number >= 0, got -1`):
an unknown key, a value of the wrong type or out of range, a duplicate model or key name, a file
that is not there. Request options in `[models.defaults]` and `keep_alive` values are checked by
the core itself (`cortexstream._core.check_options` / `check_keep_alive`), so they mean exactly
what a request's own values mean. The schema is the tables below; docs/config.md shows it whole.
"""

from __future__ import annotations

import math
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cortexstream
from cortexstream import _core

from .toml_locator import KeyPath, key_lines, line_of


class ConfigError(Exception):
    """A config mistake: `file:line: key: what is wrong` (`file: ...` when the line is not
    known; `--flag: ...` for a command-line value, which has no file)."""

    def __init__(self, file: Path | str | None, line: int | None, key: str, message: str) -> None:
        self.file, self.line, self.key, self.message = file, line, key, message
        where = [f"{file}:{line}" if line is not None else str(file)] if file is not None else []
        super().__init__(": ".join([*where, *([key] if key else []), message]))


class _Invalid(ValueError):
    """A value's problem, before the caller knows where the value is."""

    def __init__(self, message: str, at: KeyPath = ()) -> None:
        super().__init__(message)
        self.at = at  # the part of the path below the checked key (a defaults field, say)


#: A value's check: returns the value to keep (a number made float, say) or raises `_Invalid`.
Check = Callable[[Any], Any]


def _kind(value: Any) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "an array",
             dict: "a table"}
    return next((name for kind, name in names.items() if type(value) is kind), type(value).__name__)


def _shown(value: Any) -> str:
    text = repr(value) if isinstance(value, str) else str(value).lower() if isinstance(value, bool) else str(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _wrong_type(expected: str, value: Any) -> _Invalid:
    return _Invalid(f"expected {expected}, got {_kind(value)} ({_shown(value)})")


def integer(minimum: int, maximum: int | None = None) -> Check:
    def check(value: Any) -> int:
        # A TOML boolean is a Python int too; `true` is no count.
        if type(value) is not int:
            raise _wrong_type("an integer", value)
        if value < minimum or (maximum is not None and value > maximum):
            bounds = f"between {minimum} and {maximum}" if maximum is not None else f"at least {minimum}"
            raise _Invalid(f"must be {bounds}, got {value}")
        return value
    return check


def number(minimum: float, maximum: float | None = None) -> Check:
    def check(value: Any) -> float:
        if type(value) not in (int, float):
            raise _wrong_type("a number", value)
        if not math.isfinite(value) or value < minimum or (maximum is not None and value > maximum):
            bounds = f"between {minimum:g} and {maximum:g}" if maximum is not None else f"at least {minimum:g}"
            raise _Invalid(f"must be a number {bounds}, got {value}")
        return float(value)
    return check


def text(value: Any) -> str:
    if type(value) is not str:
        raise _wrong_type("a string", value)
    if not value.strip():
        raise _Invalid("must not be empty")
    return value


def boolean(value: Any) -> bool:
    if type(value) is not bool:
        raise _wrong_type("a boolean (true or false)", value)
    return value


def choice(*options: str) -> Check:
    def check(value: Any) -> str:
        if type(value) is not str:
            raise _wrong_type("a string", value)
        if value not in options:
            raise _Invalid(f"must be one of {', '.join(options)}, got {_shown(value)}")
        return value
    return check


def keep_alive(value: Any) -> float | str:
    """Ollama's keep-alive (seconds, negative forever, or "5m"), checked by the core's parser."""
    if type(value) not in (int, float, str):
        raise _wrong_type('seconds or a duration such as "5m"', value)
    try:
        _core.check_keep_alive(value)
    except cortexstream.InvalidRequestError as error:
        raise _Invalid(_core_message(error)) from None
    return value


_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)?\s*", re.IGNORECASE)
_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def byte_size(value: Any) -> int:
    """Bytes: an integer, or a string with a unit ("512MiB", "4GB")."""
    if type(value) is int:
        return integer(1)(value)
    if type(value) is not str:
        raise _wrong_type('a number of bytes or a size such as "4GiB"', value)
    match = _SIZE.fullmatch(value)
    if match is None:
        raise _Invalid(f'expected a number of bytes or a size such as "4GiB" or "512MB", got {_shown(value)}')
    size = int(float(match[1]) * _UNITS[(match[2] or "b").lower()])
    if size < 1:
        raise _Invalid(f"must be at least 1 byte, got {_shown(value)}")
    return size


#: What a model may be called: a name a request's `model` field can hold and a URL path can carry.
_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:\-]{0,127}")


def model_name(value: Any) -> str:
    name = text(value)
    if not _MODEL_NAME.fullmatch(name) or ".." in name:
        raise _Invalid(f"must be letters, digits and . _ : - (at most 128, no '..'), got {_shown(name)}")
    return name


# -- the schema ---------------------------------------------------------------------------

SERVER: dict[str, Check] = {
    "host": text,
    "port": integer(1, 65535),
    "shutdown_timeout": number(0),
    "keep_alive": keep_alive,
    "memory_budget": byte_size,
}

LOGGING: dict[str, Check] = {
    "level": choice("critical", "error", "warning", "info", "debug"),
    "format": choice("json", "text"),
    "log_prompts": boolean,
}

#: The core's engine settings a config file gives elsewhere, or not at all, and where.
ENGINE_ELSEWHERE = {
    "tokenizer": "the model's own",
    "embedding_model": "a [[models]] table with embedding = true",
    "chat_template": "a [[models]] table's chat_template or chat_template_file",
    "log_prompts": "[logging] log_prompts",
}

#: Engine settings, `[engine]` for every model or one model's own in its `[[models]]` table:
#: the core's (`EngineConfig`), by its names. The core checks their types and ranges
#: (`_Reader.engine_settings`), so the file takes exactly what `Engine(...)` takes.
ENGINE_SETTINGS = tuple(name for name in _core.engine_setting_names() if name not in ENGINE_ELSEWHERE)


def _for_the_core(value: Any) -> Any:
    """A value the core checks, with the others of its table (see `_Reader.engine_settings`)."""
    return value


ENGINE: dict[str, Check] = dict.fromkeys(ENGINE_SETTINGS, _for_the_core)

MODEL: dict[str, Check] = {
    "name": model_name,
    "model": text,
    "embedding": boolean,
    "chat_template": text,
    "chat_template_file": text,
    "keep_alive": keep_alive,
    **ENGINE,
    # "defaults" is read by `_sampling_defaults` (the core checks it).
}

API_KEY: dict[str, Check] = {
    "name": text,
    "key": text,
    "key_env": text,
    "requests_per_minute": integer(1),
    "tokens_per_minute": integer(1),
}

SECTIONS = ("server", "logging", "engine", "models", "api_keys")

_PER_REQUEST = "a request's own choice (one default would clash with a request's other choice)"
#: Request options a model's defaults may not set, and why.
NOT_DEFAULTS = {
    "tag": "the server sets it to the request id",
    "priority": "every request sets it (its `priority` field, default 0)",
    "logprobs": "whether an answer shows log-probabilities is the request's choice",
    **{name: _PER_REQUEST for name in ("json_schema", "regex", "grammar", "choices", "response_format", "tools",
                                       "tool_choice", "parallel_tool_calls")},
}

DEFAULT_SERVER = {"host": "127.0.0.1", "port": 8000, "shutdown_timeout": 10.0, "keep_alive": None,
                  "memory_budget": None}
DEFAULT_LOGGING = {"level": "info", "format": "text", "log_prompts": False}


# -- what a file holds ----------------------------------------------------------------------

@dataclass(frozen=True)
class ModelConfig:
    """One `[[models]]` table, checked. `model` is a cache name or an absolute GGUF path."""

    name: str
    model: str
    embedding: bool = False
    keep_alive: float | str | None = None
    chat_template: str | None = None
    """The template text (`chat_template`, or the contents of `chat_template_file`)."""
    chat_template_file: str | None = None
    engine: Mapping[str, Any] = field(default_factory=dict)
    """This model's own engine settings (over `[engine]`)."""
    defaults: Mapping[str, Any] = field(default_factory=dict)
    """Request options used when a request leaves them unset (engine option names)."""


@dataclass(frozen=True)
class ApiKey:
    """A key a client sends as `Authorization: Bearer KEY`; a limit of None is no limit."""

    name: str
    secret: str = field(repr=False)
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None

    def masked(self) -> str:
        """The key as --print-config shows it: its last four characters, if it is long enough
        that they do not give much of it away."""
        return "****" + self.secret[-4:] if len(self.secret) >= 16 else "****"


@dataclass(frozen=True)
class FileConfig:
    """A config file's settings, checked; what the file leaves out is absent (CLI and defaults fill it)."""

    path: Path | None = None
    server: Mapping[str, Any] = field(default_factory=dict)
    logging: Mapping[str, Any] = field(default_factory=dict)
    engine: Mapping[str, Any] = field(default_factory=dict)
    models: tuple[ModelConfig, ...] = ()
    api_keys: tuple[ApiKey, ...] = ()
    api_key_envs: Mapping[str, str] = field(default_factory=dict)
    """Key name -> the environment variable its secret came from (shown by --print-config)."""


def load_config(path: str | os.PathLike[str], environ: Mapping[str, str] | None = None) -> FileConfig:
    """Reads and checks the config file at `path`; raises `ConfigError` at the first mistake."""
    file = Path(path)
    try:
        source = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(file, None, "", "no such file") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(file, None, "", f"cannot read it: {error}") from None
    return parse_config(source, file, os.environ if environ is None else environ)


def parse_config(source: str, file: Path | None = None, environ: Mapping[str, str] | None = None) -> FileConfig:
    """Checks the TOML text `source` (from `file`, which relative paths resolve against)."""
    try:
        document = tomllib.loads(source)
    except tomllib.TOMLDecodeError as error:
        # tomllib says "... (at line 3, column 7)"; put the line where every other error has it.
        match = re.search(r"\(at line (\d+), column \d+\)", str(error))
        message = str(error)[: match.start()].strip() if match else str(error)
        raise ConfigError(file, int(match[1]) if match else None, "", f"not valid TOML: {message}") from None
    reader = _Reader(file, key_lines(source), os.environ if environ is None else environ)
    return reader.document(document)


class _Reader:
    """Checks a parsed document, turning each problem into a `ConfigError` at its line."""

    def __init__(self, file: Path | None, lines: dict[KeyPath, int], environ: Mapping[str, str]) -> None:
        self.file = file
        self.lines = lines
        self.environ = environ
        self.folder = file.resolve().parent if file is not None else Path.cwd()

    def error(self, path: KeyPath, message: str) -> ConfigError:
        return ConfigError(self.file, line_of(self.lines, path), dotted(path), message)

    def document(self, document: dict) -> FileConfig:
        for key in document:
            if key not in SECTIONS:
                raise self.error((key,), f"unknown section; the sections are {', '.join(SECTIONS)}")
        # In the order a file usually has them, so the first mistake reported is the first one read.
        server = self.section(document, "server", SERVER)
        logging_ = self.section(document, "logging", LOGGING)
        engine = self.section(document, "engine", ENGINE)
        self.engine_settings(("engine",), engine)
        models = tuple(self.model(i, table, engine) for i, table in enumerate(self.array_of_tables(document, "models")))
        self.no_duplicates(models, "models", lambda m: m.name.casefold().removesuffix(":latest"))
        keys, envs = [], {}
        for i, table in enumerate(self.array_of_tables(document, "api_keys")):
            key, env = self.api_key(i, table)
            keys.append(key)
            if env is not None:
                envs[key.name] = env
        self.no_duplicates(keys, "api_keys", lambda k: k.name)
        self.no_duplicates(keys, "api_keys", lambda k: k.secret, what="key", shown=False)
        return FileConfig(
            path=self.file,
            server=server,
            logging=logging_,
            engine=engine,
            models=models,
            api_keys=tuple(keys),
            api_key_envs=envs,
        )

    def section(self, document: dict, name: str, schema: Mapping[str, Check]) -> dict[str, Any]:
        """The checked entries of the section `[name]` (none if it is absent)."""
        table = document.get(name, {})
        if not isinstance(table, dict):
            raise self.error((name,), f"expected a table, got {_kind(table)}")
        return self.table(table, (name,), schema)

    def table(self, table: dict, path: KeyPath, schema: Mapping[str, Check],
              skip: frozenset[str] = frozenset()) -> dict[str, Any]:
        """The checked entries of `table` (at `path`), absent ones left out; the keys in `skip`
        are the caller's to read."""
        checked = {}
        for key, value in table.items():
            if key in skip:
                continue
            if key not in schema:
                known = ", ".join(sorted(set(schema) | skip))
                raise self.error((*path, key), f"unknown key; the keys here are {known}")
            try:
                checked[key] = schema[key](value)
            except _Invalid as problem:
                raise self.error((*path, key, *problem.at), str(problem)) from None
        return checked

    def array_of_tables(self, document: dict, section: str) -> list[dict]:
        tables = document.get(section, [])
        if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
            raise self.error((section,), f"expected [[{section}]] tables, got {_kind(tables)}")
        return tables

    def required(self, table: dict, path: KeyPath, key: str) -> None:
        if key not in table:
            raise self.error(path, f"missing `{key}`")

    def engine_settings(self, path: KeyPath, own: Mapping[str, Any], over: Mapping[str, Any] | None = None) -> None:
        """Checks the engine settings `own` (at `path`), laid over `[engine]`'s (`over`) as a
        model gets them, with the core's own check: an error names the key it is about, where
        the file sets it, in the core's words (its ranges)."""
        over = over or {}
        try:
            _core.check_engine_settings({**over, **own})
        except cortexstream.InvalidRequestError as error:
            if error.param in own:
                at = (*path, error.param)
            elif error.param in over:
                at = ("engine", error.param)
            else:
                at = path
            raise self.error(at, _core_message(error)) from None

    def model(self, index: int, table: dict, engine: Mapping[str, Any]) -> ModelConfig:
        path: KeyPath = ("models", index)
        for key in ("name", "model"):
            self.required(table, path, key)
        checked = self.table(table, path, MODEL, skip=frozenset({"defaults"}))
        if "chat_template" in checked and "chat_template_file" in checked:
            raise self.error((*path, "chat_template_file"), "give chat_template or chat_template_file, not both")
        template, template_file = checked.get("chat_template"), None
        if "chat_template_file" in checked:
            template_path = self.existing_file((*path, "chat_template_file"), checked["chat_template_file"])
            template, template_file = self.read_text((*path, "chat_template_file"), template_path), str(template_path)
        embedding = checked.get("embedding", False)
        if embedding and template is not None:
            raise self.error((*path, "chat_template"), "an embedding model has no chat template")
        generation_only = [key for key in checked if key in ENGINE and key != "threads"]
        if embedding and generation_only:
            raise self.error((*path, generation_only[0]), "an embedding model takes no engine setting but `threads`")
        own_engine = {key: value for key, value in checked.items() if key in ENGINE}
        # An embedding model takes `threads` only: `[engine]`'s other settings are not its.
        self.engine_settings(path, own_engine, {} if embedding else engine)
        return ModelConfig(
            name=checked["name"],
            model=self.model_source((*path, "model"), checked["model"]),
            embedding=embedding,
            keep_alive=checked.get("keep_alive"),
            chat_template=template,
            chat_template_file=template_file,
            engine=own_engine,
            defaults=self.sampling_defaults((*path, "defaults"), table.get("defaults", {}), embedding),
        )

    def model_source(self, path: KeyPath, model: str) -> str:
        """A path (it has a separator, ends in .gguf, or names something in the config file's
        folder) resolved against the config file's folder and required to exist; otherwise a
        model cache name, required to be in the cache (as loading it will require)."""
        local = (self.folder / Path(model).expanduser()).resolve()
        if "/" in model or os.sep in model or model.endswith(".gguf") or local.exists():
            return str(self.existing_file(path, model, folder_ok=True))
        try:
            cortexstream.models.resolve(model)
        except FileNotFoundError as error:
            raise self.error(path, str(error)) from None
        return model

    def existing_file(self, path: KeyPath, name: str, *, folder_ok: bool = False) -> Path:
        resolved = (self.folder / Path(name).expanduser()).resolve()
        if not resolved.exists():
            raise self.error(path, f"no such file: {resolved}")
        if not folder_ok and not resolved.is_file():
            raise self.error(path, f"not a file: {resolved}")
        return resolved

    def read_text(self, path: KeyPath, file: Path) -> str:
        try:
            return file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise self.error(path, f"cannot read {file}: {error}") from None

    def sampling_defaults(self, path: KeyPath, defaults: Any, embedding: bool) -> dict[str, Any]:
        """A model's default request options, checked by the core under the names a request's
        options have in every front door (`max_tokens`, `repetition_penalty`, ...)."""
        if not isinstance(defaults, dict):
            raise self.error(path, f"expected a table of request options, got {_kind(defaults)}")
        if defaults and embedding:
            raise self.error(path, "an embedding model takes no request options")
        names = _core.option_names()
        for key in defaults:
            if key in NOT_DEFAULTS:
                raise self.error((*path, key), f"cannot be a default: {NOT_DEFAULTS[key]}")
            if key not in names:
                allowed = ", ".join(name for name in names if name not in NOT_DEFAULTS)
                raise self.error((*path, key), f"unknown request option; a default may set {allowed}")
        try:
            _core.check_options(dict(defaults))
        except cortexstream.InvalidRequestError as error:
            field_name = error.param if error.param in defaults else None
            raise self.error((*path, field_name) if field_name else path, _core_message(error)) from None
        return dict(defaults)

    def api_key(self, index: int, table: dict) -> tuple[ApiKey, str | None]:
        path: KeyPath = ("api_keys", index)
        checked = self.table(table, path, API_KEY)
        if ("key" in checked) == ("key_env" in checked):
            raise self.error(path, "give exactly one of `key` (the key itself) or `key_env` (the "
                                   "environment variable holding it)")
        env = checked.get("key_env")
        secret = checked.get("key") if env is None else self.environ.get(env, "").strip()
        if not secret:
            raise self.error((*path, "key_env"), f"the environment variable {env} is not set or empty")
        key = ApiKey(
            name=checked.get("name", f"key{index}"),
            secret=secret,
            requests_per_minute=checked.get("requests_per_minute"),
            tokens_per_minute=checked.get("tokens_per_minute"),
        )
        return key, env

    def no_duplicates(self, items, section: str, identity: Callable[[Any], str], *, what: str = "name",
                      shown: bool = True) -> None:
        seen: dict[str, int] = {}
        for index, item in enumerate(items):
            earlier = seen.setdefault(identity(item), index)
            if earlier != index:
                value = f" {_shown(getattr(item, what))}" if shown else ""
                first_line = line_of(self.lines, (section, earlier))
                raise self.error((section, index, what),
                                 f"duplicate {what}{value}: {section}[{earlier}] (line {first_line}) has it too")


def _core_message(error: Exception) -> str:
    """The core's message without its leading "invalid value for `field`: " (the config error
    names the key itself, with its place in the file)."""
    return re.sub(r"^invalid value for `[^`]*`: ", "", str(error))


def dotted(path: KeyPath) -> str:
    """`models[1].defaults.top_p` for ("models", 1, "defaults", "top_p")."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            name = part if re.fullmatch(r"[A-Za-z0-9_\-]+", part) else f'"{part}"'
            out += f".{name}" if out else name
    return out
