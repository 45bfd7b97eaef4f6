"""The effective configuration: built-in defaults, then the config file, then the command line.

A flag given on the command line wins over the file everywhere it applies (an engine flag
such as `--max-running` over `[engine]` and over each model's own value); a flag left out
leaves the file's value. `--api-key` (or `$CORTEXSTREAM_API_KEY`) adds one key without limits
beside the file's keys. `--print-config` shows the outcome as TOML, keys masked.
"""

from __future__ import annotations

import argparse
import copy
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .config_file import (
    DEFAULT_LOGGING,
    DEFAULT_SERVER,
    ENGINE,
    ApiKey,
    ConfigError,
    FileConfig,
    ModelConfig,
)

#: Command-line destinations -> (section, key) of the config file they override.
FLAG_KEYS = {
    "host": ("server", "host"),
    "port": ("server", "port"),
    "shutdown_timeout": ("server", "shutdown_timeout"),
    "log_level": ("logging", "level"),
    "log_format": ("logging", "format"),
    "log_prompts": ("logging", "log_prompts"),
    **{name: ("engine", name) for name in ENGINE},
}


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
    models: tuple[ModelConfig, ...]
    api_keys: tuple[ApiKey, ...]
    api_key_envs: Mapping[str, str] = field(default_factory=dict)
    """Key name -> the environment variable holding it (`key_env`)."""
    source: str | None = None
    """The config file, if any."""
    cli_engine: Mapping[str, Any] = field(default_factory=dict)
    """The engine flags given on the command line (they win over every model's own value)."""

    def model_engine(self, model: ModelConfig) -> dict[str, Any]:
        """A model's engine settings: `[engine]`, then its own, then the command line's."""
        return {**self.engine, **model.engine, **self.cli_engine}


def effective(file: FileConfig, args: argparse.Namespace, explicit: set[str],
              cli_models: tuple[ModelConfig, ...] = ()) -> Settings:
    """Merges the command line `args` (the flags in `explicit` were given) over `file`.
    `cli_models` are the models the command line names; given, they replace the file's."""
    sections: dict[str, dict[str, Any]] = {
        "server": {**DEFAULT_SERVER, **file.server},
        "logging": {**DEFAULT_LOGGING, **file.logging},
        "engine": dict(file.engine),
    }
    cli_engine = {}
    for dest, (section, key) in FLAG_KEYS.items():
        if dest in explicit and getattr(args, dest, None) is not None:
            sections[section][key] = getattr(args, dest)
            if section == "engine":
                cli_engine[key] = getattr(args, dest)
    keys = list(file.api_keys)
    cli_key = getattr(args, "api_key", None)
    if cli_key:
        if any(key.secret == cli_key for key in keys):
            raise ConfigError(None, None, "--api-key", "is already a key of the config file's [[api_keys]]")
        keys.append(ApiKey(name="api-key", secret=cli_key))
    return Settings(
        server=sections["server"], logging=sections["logging"], engine=sections["engine"],
        models=cli_models or file.models, api_keys=tuple(keys), api_key_envs=file.api_key_envs,
        source=str(file.path) if file.path else None, cli_engine=cli_engine,
    )


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


def render(settings: Settings) -> str:
    """The effective configuration as a TOML file (API keys masked; a template read from a file
    named by its file)."""
    lines = [f"# effective configuration{f' (from {settings.source} and the command line)' if settings.source else ''}",
             ""]
    _table(lines, "[server]", settings.server)
    _table(lines, "[logging]", settings.logging)
    _table(lines, "[engine]", settings.engine)
    for model in settings.models:
        template = ({"chat_template_file": model.chat_template_file} if model.chat_template_file
                    else {"chat_template": model.chat_template})
        _table(lines, "[[models]]", {"name": model.name, "model": model.model, "embedding": model.embedding,
                                     "keep_alive": model.keep_alive, **template, **settings.model_engine(model)})
        if model.defaults:
            _table(lines, "[models.defaults]", model.defaults)
    for key in settings.api_keys:
        env = settings.api_key_envs.get(key.name)
        secret = {"key_env": env} if env else {"key": key.masked()}
        _table(lines, "[[api_keys]]", {"name": key.name, **secret, "requests_per_minute": key.requests_per_minute,
                                       "tokens_per_minute": key.tokens_per_minute})
    return "\n".join(lines).rstrip("\n") + "\n"
