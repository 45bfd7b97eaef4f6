"""Command line: `cortexstream-server [--host H] [--port P] [--model M] ...` (the console script
`pip install cortexstream[server]` installs) or `python -m cortexstream.server ...`."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import uvicorn

from .app import create_app
from .logs import setup_logging
from .shutdown import DrainingServer
from .state import NO_EMBEDDING_MODEL, EngineOptions, ServerConfig


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


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="OpenAI- and Ollama-compatible REST server for cortexstream.")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on (default: 8000)")
    parser.add_argument("--model", default="smollm2",
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
    return parser.parse_args(argv)


def engine_options(args: argparse.Namespace) -> EngineOptions:
    """The engine settings of the command line (None: the engine's default)."""
    return EngineOptions(max_running=args.max_running, max_queue=args.max_queue,
                         kv_cache_tokens=args.kv_cache_tokens, max_batch_tokens=args.max_batch_tokens,
                         target_step_ms=args.target_step_ms, context_length=args.context_length,
                         threads=args.threads, chat_template=args.chat_template,
                         log_prompts=args.log_prompts or None, kv_cache_type=args.kv_cache_type)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    setup_logging(args.log_format, args.log_level)
    config = ServerConfig(model=args.model, embedding_model=args.embedding_model, api_key=args.api_key or None,
                          engine=engine_options(args))
    app = create_app(config)
    # uvicorn's lines go through our handler (log_config=None); the access line is ours.
    server_config = uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level,
                                   log_config=None, access_log=False)
    DrainingServer(server_config, app, drain_seconds=args.shutdown_timeout).run()


if __name__ == "__main__":
    main()
