"""Command line: `cortexstream-server [--host H] [--port P] [--model M] ...` (the console script
`pip install cortexstream[server]` installs) or `python -m cortexstream.server ...`."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import uvicorn

from .app import create_app
from .logs import setup_logging
from .shutdown import DrainingServer
from .config_file import ConfigError, FileConfig, load_config
from .settings import Settings, effective, explicit_flags, render
from .state import NO_EMBEDDING_MODEL, EngineOptions, ServerConfig

#: The generation model served when neither the command line nor a config file names one.
DEFAULT_MODEL = "smollm2"


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


def _template_file(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise argparse.ArgumentTypeError(f"cannot read the chat template file {path!r}: {error}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cortexstream-server",
                                     description="OpenAI- and Ollama-compatible REST server for cortexstream.")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on (default: 8000)")
    parser.add_argument("--model", default=None,
                        help="model name in the cache, or a GGUF path (default: smollm2)")
    parser.add_argument("--embedding-model", default=None,
                        help="embedding model name or directory "
                             f"(default: minilm if cached; '{NO_EMBEDDING_MODEL}' for none)")
    parser.add_argument("--api-key", default=os.environ.get("CORTEXSTREAM_API_KEY"),
                        help="require `Authorization: Bearer KEY` (default: $CORTEXSTREAM_API_KEY, else no key)")
    parser.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    parser.add_argument("--log-format", default="text", choices=["json", "text"],
                        help="one JSON object per line, or text (default: text); every line names its "
                             "request's id (X-Request-Id, accepted or generated, returned on every response)")
    parser.add_argument("--log-prompts", action="store_true",
                        help="include prompt text in the engine's `queued` log lines (default: prompts are "
                             "never logged)")
    engine = parser.add_argument_group("engine sizes and limits (default: the engine's)")
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
                             "prefilled beside them, that the budget adapts to (default 50; 0: a fixed budget)")
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
    return build_parser().parse_args(argv)


def engine_options(args: argparse.Namespace) -> EngineOptions:
    """The engine settings of the command line (None: the engine's default)."""
    return EngineOptions(max_running=args.max_running, max_queue=args.max_queue,
                         kv_cache_tokens=args.kv_cache_tokens, max_batch_tokens=args.max_batch_tokens,
                         target_step_ms=args.target_step_ms, context_length=args.context_length,
                         threads=args.threads, chat_template=args.chat_template,
                         log_prompts=args.log_prompts or None)


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = effective_settings(parser, args, argv)
        if args.print_config:
            sys.stdout.write(render(settings))
            return
        config = server_config(settings, args)
    except ConfigError as error:
        # A mistake in the file is the operator's to fix: the message, no traceback (exit 2, as
        # argparse does for a bad flag).
        parser.exit(2, f"{parser.prog}: error: {error}\n")
    setup_logging(settings.logging["format"], settings.logging["level"])
    app = create_app(config)
    server = settings.server
    # uvicorn's lines go through our handler (log_config=None); the access line is ours.
    server_config_ = uvicorn.Config(app, host=server["host"], port=server["port"],
                                    log_level=settings.logging["level"], log_config=None, access_log=False)
    DrainingServer(server_config_, app, drain_seconds=server["shutdown_timeout"]).run()


def effective_settings(parser: argparse.ArgumentParser, args: argparse.Namespace,
                       argv: list[str] | None) -> Settings:
    """The config file (if any) with the flags given on the command line over it."""
    file = load_config(args.config) if args.config else FileConfig()
    return effective(file, args, explicit_flags(parser, argv))


def server_config(settings: Settings, args: argparse.Namespace) -> ServerConfig:
    """What the app serves: one generation model and at most one embedding model, from the
    command line or the file's [[models]]."""
    file_generation = [m for m in settings.models if not m.embedding]
    file_embedding = [m for m in settings.models if m.embedding]
    if len(file_generation) > 1 or len(file_embedding) > 1:
        raise ConfigError(settings.source, None, "models", "this server serves one generation model and at most "
                                                         "one embedding model")
    for model in settings.models:
        if model.defaults:
            raise ConfigError(settings.source, None, f"models.{model.name}.defaults", "not supported yet")
    generation = file_generation[0] if file_generation and args.model is None else None
    if file_embedding and args.embedding_model is None:
        embedding_model = file_embedding[0].model
    elif settings.models and args.embedding_model is None:
        embedding_model = NO_EMBEDDING_MODEL  # the file lists what is served
    else:
        embedding_model = args.embedding_model
    engine = settings.model_engine(generation) if generation else {**settings.engine}
    chat_template = args.chat_template or (generation.chat_template if generation else None)
    options = EngineOptions(**engine, chat_template=chat_template,
                            log_prompts=settings.logging["log_prompts"] or None)
    return ServerConfig(model=generation.model if generation else (args.model or DEFAULT_MODEL),
                        embedding_model=embedding_model, api_keys=settings.api_keys, engine=options)


if __name__ == "__main__":
    main()
