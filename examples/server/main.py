"""Command line: `python -m examples.server [--host H] [--port P] [--model M] ...` from the repo
root, or `python examples/server/main.py ...` from anywhere."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

if __package__ in (None, ""):
    # Run as a script: make `examples.server` importable from the repository root.
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import uvicorn  # noqa: E402

from examples.server.app import create_app  # noqa: E402
from examples.server.state import NO_EMBEDDING_MODEL, ServerConfig  # noqa: E402


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
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s:     %(message)s")
    config = ServerConfig(model=args.model, embedding_model=args.embedding_model, api_key=args.api_key or None)
    uvicorn.run(create_app(config), host=args.host, port=args.port, log_level=args.log_level)


if __name__ == "__main__":
    main()
