"""The REST server's own smoke tests for the official `openai` and `ollama` clients
(tests/server/test_openai.py, test_ollama.py), unchanged, through the Serve gateway: every route,
streaming included, answers as the plain server does."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "server"))

from test_ollama import *  # noqa: E402,F401,F403
from test_openai import *  # noqa: E402,F401,F403
