"""The effective configuration: built-in defaults, then the config file, then the command line.

A flag given on the command line wins over the file everywhere it applies (an engine flag
such as `--max-running` over `[engine]` and over each model's own value; `--chat-template` over
every generation model's template); a flag left out leaves the file's value. `--model` given
replaces the file's generation models, `--embedding-model` its embedding models. `--api-key`
(or `$CORTEXSTREAM_API_KEY`) adds one key without limits beside the file's keys.
`--print-config` shows the outcome as TOML, keys masked.
"""

from __future__ import annotations

import argparse
import copy
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from .config_file import (
    DEFAULT_LOGGING,
    DEFAULT_SERVER,
    ApiKey,
    ConfigError,
    FileConfig,
    ModelConfig,
    keep_alive,
)
from .served import NO_EMBEDDING_MODEL, EngineOptions, ModelEntry, command_line_models, parse_model_option
from .state import DEFAULT_KEEP_ALIVE

#: Command-line destinations -> (section, key) of the config file they override.
FLAG_KEYS = {
    "host": ("server", "host"),
    "port": ("server", "port"),
    "shutdown_timeout": ("server", "shutdown_timeout"),
    "keep_alive": ("server", "keep_alive"),
    "memory_budget": ("server", "memory_budget"),
    "log_level": ("logging", "level"),
    "log_format": ("logging", "format"),
    "log_prompts": ("logging", "log_prompts"),
}

#: Engine options that are not engine flags' settings: the template (a model's own, or
#: `--chat-template` over all) and `log_prompts` (the [logging] section's).
_NOT_ENGINE_FLAGS = ("chat_template", "log_prompts")


def explicit_flags(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> set[str]:
    """The destinations the command line `argv` sets itself (not by a default)."""
    shadow = copy.deepcopy(parser)
    for action in shadow._actions:  # argparse has no public way to tell a default from a value
        action.default = argparse.SUPPRESS
    return set(vars(shadow.parse_args(argv)))


@dataclass(frozen=True)
class Settings:
    """Everything the server runs with."""

    server: Mapping[str, Any]
    logging: Mapping[str, Any]
    engine: Mapping[str, Any]
    """`[engine]` with the engine flags over it: what a model added later (`/api/pull`) gets."""
    models: tuple[ModelEntry, ...]
    api_keys: tuple[ApiKey, ...]
    api_key_envs: Mapping[str, str] = field(default_factory=dict)
    """Key name -> the environment variable holding it (`key_env`)."""
    chat_template: str | None = None
    """`--chat-template` (the text), which every generation model uses when given."""
    source: str | None = None
    """The config file, if any."""

    def engine_options(self, own: Mapping[str, Any] | None = None, chat_template: str | None = None) -> EngineOptions:
        """Engine options of `[engine]`, then a model's `own` settings; the logging section's
        `log_prompts`; `--chat-template` over the model's `chat_template`."""
        return EngineOptions(**{**self.engine, **(own or {})},
                             chat_template=self.chat_template or chat_template,
                             log_prompts=self.logging["log_prompts"] or None)


def effective(file: FileConfig, args: argparse.Namespace, explicit: set[str],
              engine_flags: EngineOptions = EngineOptions()) -> Settings:
    """Merges the command line `args` (the flags in `explicit` were given; `engine_flags` are
    the engine settings they set) over `file`."""
    cli_engine = {key: value for key, value in engine_flags.as_kwargs().items() if key not in _NOT_ENGINE_FLAGS}
    sections: dict[str, dict[str, Any]] = {
        "server": {**DEFAULT_SERVER, "keep_alive": DEFAULT_KEEP_ALIVE, **file.server},
        "logging": {**DEFAULT_LOGGING, **file.logging},
        "engine": {**file.engine, **cli_engine},
    }
    for dest, (section, key) in FLAG_KEYS.items():
        if dest in explicit and getattr(args, dest, None) is not None:
            sections[section][key] = getattr(args, dest)
    if "keep_alive" in explicit:
        _check_flag("--keep-alive", keep_alive, sections["server"]["keep_alive"])
    settings = Settings(
        server=sections["server"], logging=sections["logging"], engine=sections["engine"], models=(),
        api_keys=_api_keys(file, getattr(args, "api_key", None)), api_key_envs=file.api_key_envs,
        chat_template=getattr(args, "chat_template", None), source=str(file.path) if file.path else None,
    )
    return replace(settings, models=_served_models(settings, file, cli_engine, args))


def _check_flag(flag: str, check, value: Any) -> None:
    try:
        check(value)
    except ValueError as error:
        raise ConfigError(None, None, flag, str(error)) from None


def _api_keys(file: FileConfig, cli_key: str | None) -> tuple[ApiKey, ...]:
    keys = list(file.api_keys)
    if cli_key:
        if any(key.secret == cli_key for key in keys):
            raise ConfigError(None, None, "--api-key", "is already a key of the config file's [[api_keys]]")
        keys.append(ApiKey(name="api-key", secret=cli_key))
    return tuple(keys)


def _served_models(settings: Settings, file: FileConfig, cli_engine: Mapping[str, Any],
                   args: argparse.Namespace) -> tuple[ModelEntry, ...]:
    """The file's models, with the command line's `--model` / `--embedding-model` replacing
    those of their kind; the command line's alone (restreg's defaults) when the file has none."""
    cli_options = settings.engine_options()
    model_flags, embedding_flag = getattr(args, "model", None), getattr(args, "embedding_model", None)
    try:
        if not file.models:
            return command_line_models(model_flags, embedding_flag, cli_options)
        entries = [_entry(settings, model, cli_engine) for model in file.models]
        if model_flags:
            generation = list(command_line_models(model_flags, NO_EMBEDDING_MODEL, cli_options))
            entries = generation + [entry for entry in entries if entry.embedding]
        if embedding_flag is not None:
            entries = [entry for entry in entries if not entry.embedding]
            if embedding_flag != NO_EMBEDDING_MODEL:
                entries.append(parse_model_option(embedding_flag, embedding=True, engine=cli_options))
    except ValueError as error:
        raise ConfigError(None, None, "--model", str(error)) from None
    _no_duplicate_names(entries)
    return tuple(entries)


def _entry(settings: Settings, model: ModelConfig, cli_engine: Mapping[str, Any]) -> ModelEntry:
    own = {**model.engine, **cli_engine}  # an engine flag wins over the model's own value too
    return ModelEntry(name=model.name, source=model.model, embedding=model.embedding, keep_alive=model.keep_alive,
                      engine=settings.engine_options(own, model.chat_template), defaults=dict(model.defaults))


def _no_duplicate_names(entries: list[ModelEntry]) -> None:
    seen: set[str] = set()
    for entry in entries:
        name = entry.name.casefold().removesuffix(":latest")
        if name in seen:
            raise ConfigError(None, None, "--model", f"two models are named {entry.name!r} (the command line's "
                                                     "and the config file's); name one with NAME=SOURCE")
        seen.add(name)


# -- --print-config -----------------------------------------------------------------------

_BARE_KEY = re.compile(r"[A-Za-z0-9_\-]+")


def toml_value(value: Any) -> str:
    """`value` as TOML: strings as basic strings (JSON's escapes are TOML's), tables inline."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f"{toml_key(k)} = {toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"no TOML form for {type(value).__name__}")


def toml_key(key: Any) -> str:
    key = str(key)
    return key if _BARE_KEY.fullmatch(key) else json.dumps(key, ensure_ascii=False)


def _table(lines: list[str], header: str, entries: Mapping[str, Any]) -> None:
    lines.append(header)
    lines.extend(f"{toml_key(key)} = {toml_value(value)}" for key, value in entries.items() if value is not None)
    lines.append("")


def _model_table(entry: ModelEntry) -> dict[str, Any]:
    engine = entry.engine.as_kwargs()
    engine.pop("log_prompts", None)  # [logging] shows it
    if entry.embedding:
        engine = {key: value for key, value in engine.items() if key == "threads"}  # all an embedding model takes
    return {"name": entry.name, "model": entry.source, "embedding": entry.embedding, "keep_alive": entry.keep_alive,
            **engine}


def render(settings: Settings) -> str:
    """The effective configuration as a TOML file (API keys masked)."""
    origin = f" (from {settings.source} and the command line)" if settings.source else ""
    lines = [f"# effective configuration{origin}", ""]
    _table(lines, "[server]", settings.server)
    _table(lines, "[logging]", settings.logging)
    _table(lines, "[engine]", settings.engine)
    for entry in settings.models:
        _table(lines, "[[models]]", _model_table(entry))
        if entry.defaults:
            _table(lines, "[models.defaults]", entry.defaults)
    for key in settings.api_keys:
        env = settings.api_key_envs.get(key.name)
        secret = {"key_env": env} if env else {"key": key.masked()}
        _table(lines, "[[api_keys]]", {"name": key.name, **secret, "requests_per_minute": key.requests_per_minute,
                                       "tokens_per_minute": key.tokens_per_minute})
    return "\n".join(lines).rstrip("\n") + "\n"
