"""Runs the REST server on a list of model entries given as JSON, the way a config file will
give them (per-model engine settings, which the command line's engine flags cannot):

    python tests/server/entries_server.py PORT '{"models": [{"name": ..., "source": ..., "engine": {...}}], ...}'

Other top-level keys are `ServerConfig` fields (`memory_budget_bytes`, `keep_alive`, `api_key`).
"""

from __future__ import annotations

import json
import sys

import uvicorn

from cortexstream.server.app import create_app
from cortexstream.server.logs import setup_logging
from cortexstream.server.served import EngineOptions, ModelEntry
from cortexstream.server.state import ServerConfig


def config_from(spec: dict) -> ServerConfig:
    models = tuple(ModelEntry(**{**entry, "engine": EngineOptions(**entry.get("engine", {}))})
                   for entry in spec.pop("models"))
    return ServerConfig(models=models, **spec)


def main() -> None:
    port, spec = int(sys.argv[1]), json.loads(sys.argv[2])
    setup_logging("text", "warning")
    app = create_app(config_from(spec))
    uvicorn.run(app, host="127.0.0.1", port=port, log_config=None, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
