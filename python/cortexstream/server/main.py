"""Command line: `cortexstream-server [--host H] [--port P] [--model M] ...` (the console script
`pip install cortexstream[server]` installs) or `python -m cortexstream.server ...`."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import uvicorn

from .app import create_app
from .config_file import ConfigError, FileConfig, byte_size, load_config
from .logs import setup_logging
from .served import NO_EMBEDDING_MODEL, EngineOptions
from .settings import Settings, effective, explicit_flags, render
from .shutdown import DrainingServer
from .state import DEFAULT_KEEP_ALIVE, ServerConfig


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _milliseconds(text: str) -> float:
    value = float(text)
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number of milliseconds >= 0 (0: a fixed budget), got {text}")
    return value


def _seconds(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be a number of seconds >= 0, got {text}")
    return value


def _bytes(text: str) -> int:
    """`2GB`, `512MiB`, `1000000`: a size in bytes (decimal units as Ollama, binary with `i`),
    read as the config file's `memory_budget` is."""
    try:
        return byte_size(int(text) if text.strip().isdigit() else text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _keep_alive(text: str) -> float | str:
    """Seconds as a number, else the duration text (the core parses it; checked at start)."""
    try:
        return float(text)
    except ValueError:
        if not text.strip():
            raise argparse.ArgumentTypeError("expected seconds or a duration such as 5m") from None
        return text


def _template_file(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise argparse.ArgumentTypeError(f"cannot read the chat template file {path!r}: {error}") from None


#: The name errors start with (`python -m cortexstream.server` runs the same command).
PROG = "cortexstream-server"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG,
                                     description="OpenAI- and Ollama-compatible REST server for cortexstream.")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on (default: 8000)")
    parser.add_argument("--model", action="append", metavar="[NAME=]SOURCE",
                        help="a generation model to serve: a name in the cache or a GGUF path, served under "
                             "NAME (default: the cache name, or the file name without .gguf); repeat it to "
                             "serve several. The first is loaded at start, the others on first use "
                             "(default: smollm2)")
    parser.add_argument("--embedding-model", default=None, metavar="[NAME=]SOURCE",
                        help="embedding model name or directory "
                             f"(default: minilm if cached; '{NO_EMBEDDING_MODEL}' for none); loaded on first use")
    parser.add_argument("--keep-alive", type=_keep_alive, default=DEFAULT_KEEP_ALIVE,
                        help="how long a model stays loaded after its last request, as Ollama: seconds or a "
                             "duration such as 5m or 1h30m; 0 unloads it at once, a negative value never "
                             f"(default: {DEFAULT_KEEP_ALIVE}); a request's keep_alive overrides it for its model")
    parser.add_argument("--memory-budget", type=_bytes, metavar="BYTES",
                        help="most memory the loaded models may hold (weights and KV caches), in bytes or "
                             "with a unit (2GB, 512MiB); idle models unload, least recently used first, to "
                             "make room for another (default: no budget)")
    parser.add_argument("--api-key", default=os.environ.get("CORTEXSTREAM_API_KEY"),
                        help="require `Authorization: Bearer KEY` (default: $CORTEXSTREAM_API_KEY, else no key)")
    parser.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    parser.add_argument("--log-format", default="text", choices=["json", "text"],
                        help="one JSON object per line, or text (default: text); every line names its "
                             "request's id (X-Request-Id, accepted or generated, returned on every response)")
    parser.add_argument("--log-prompts", action="store_true",
                        help="include prompt text in the engine's `queued` log lines (default: prompts are "
                             "never logged)")
    engine = parser.add_argument_group("engine sizes and limits of every model (default: the engine's)")
    engine.add_argument("--max-running", type=_positive,
                        help="sequences decoded together (default 32); half of it is the most generations "
                             "(prompts x n) one request may ask for")
    engine.add_argument("--max-queue", type=_positive,
                        help="requests waiting for a running slot (default 256); past it: 503 with Retry-After")
    engine.add_argument("--kv-cache-tokens", type=_positive, help="KV cache size in tokens (default 16384)")
    engine.add_argument("--max-batch-tokens", type=_positive,
                        help="token budget of one step, every running stream's next token plus prompt chunks "
                             "(default 2048): the ceiling of the adaptive budget, or the budget with "
                             "--target-step-ms 0")
    engine.add_argument("--target-step-ms", type=_milliseconds, metavar="MS",
                        help="step time, hence inter-token latency of running streams while prompts are "
                             "prefilled beside them, that the budget adapts to, at least twice their own step "
                             "(default 25; 0: a fixed budget)")
    engine.add_argument("--kv-cache-type", choices=["f16", "q8_0"],
                        help="how the KV cache stores keys and values: f16 (default) or q8_0 (8 bits with a "
                             "scale per 32 values, about half the memory per token, for a small logit error)")
    engine.add_argument("--context-length", type=_positive, help="context window (default: the model's)")
    engine.add_argument("--threads", type=_positive, help="compute threads (default: physical cores)")
    engine.add_argument("--chat-template", type=_template_file, metavar="FILE",
                        help="Jinja chat template file used instead of the model's own; a model without one "
                             "(a base model such as gemma3) answers chat requests with 400 "
                             "chat_template_missing otherwise")
    parser.add_argument("--shutdown-timeout", type=_seconds, default=10.0,
                        help="on SIGTERM/SIGINT, seconds running requests may take to finish before the "
                             "engine closes and ends them (OpenAI: finish_reason 'length' with "
                             "cortexstream_finish_reason 'cancelled') (default: 10)")
    add_config_arguments(parser)
    return parser


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    config = parser.add_argument_group("config file (docs/config.md)")
    config.add_argument("--config", metavar="FILE",
                        help="TOML file of server, logging, engine, models and API key settings (with per-key "
                             "rate limits); a flag given here wins over the file")
    config.add_argument("--print-config", action="store_true",
                        help="print the effective configuration (file, then flags) as TOML, API keys masked, "
                             "and exit")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line; `explicit` holds the flags it gives (they win over --config's file)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    args.explicit = explicit_flags(parser, argv)
    return args


def engine_options(args: argparse.Namespace) -> EngineOptions:
    """The engine settings of the command line (None: the engine's default, or the config
    file's); `settings.effective` puts them over the file's."""
    return EngineOptions(max_running=args.max_running, max_queue=args.max_queue,
                         kv_cache_tokens=args.kv_cache_tokens, max_batch_tokens=args.max_batch_tokens,
                         target_step_ms=args.target_step_ms, context_length=args.context_length,
                         threads=args.threads, chat_template=args.chat_template,
                         log_prompts=args.log_prompts or None, kv_cache_type=args.kv_cache_type)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        settings = settings_of(args)
    except ConfigExit as stop:
        # A mistake in the file or a flag is the operator's to fix: the message, no traceback.
        sys.stderr.write(f"{stop}\n")
        raise
    if args.print_config:
        sys.stdout.write(render(settings))
        return
    setup_logging(settings.logging["format"], settings.logging["level"])
    app = create_app(config_of(settings))
    server = settings.server
    # uvicorn's lines go through our handler (log_config=None); the access line is ours.
    listening = uvicorn.Config(app, host=server["host"], port=server["port"], log_level=settings.logging["level"],
                               log_config=None, access_log=False)
    DrainingServer(listening, app, drain_seconds=server["shutdown_timeout"]).run()


class ConfigExit(SystemExit):
    """Stops the server for a mistake in its configuration (the file or a flag): exit status 2,
    as argparse's for a bad flag; `str()` is the message."""

    def __init__(self, error: ConfigError) -> None:
        super().__init__(2)
        self.message = f"{PROG}: error: {error}"

    def __str__(self) -> str:
        return self.message


def settings_of(args: argparse.Namespace) -> Settings:
    """The config file (if any) with the flags the command line gives over it."""
    try:
        file = load_config(args.config) if args.config else FileConfig()
        return effective(file, args, args.explicit, engine_options(args))
    except ConfigError as error:
        raise ConfigExit(error) from None


def config_of(settings: Settings) -> ServerConfig:
    """What the app serves, and with which keys and limits."""
    return ServerConfig(models=settings.models, api_keys=settings.api_keys, engine=settings.engine_options(),
                        memory_budget_bytes=settings.server["memory_budget"],
                        keep_alive=settings.server["keep_alive"])


def server_config(args: argparse.Namespace) -> ServerConfig:
    """The configuration the command line (and its --config file) describes; a mistake raises
    `ConfigExit` naming it."""
    return config_of(settings_of(args))


if __name__ == "__main__":
    main()
