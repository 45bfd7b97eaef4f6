"""The REST server's own smoke tests for the official `openai` and `ollama` clients
(tests/server/test_openai.py, test_ollama.py), unchanged, through the Serve gateway: every route,
streaming included, answers as the plain server does."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "server"))

from test_ollama import *  # noqa: E402,F401,F403
from test_openai import *  # noqa: E402,F401,F403

import httpx  # noqa: E402
from conftest import AUTH  # noqa: E402


def test_the_request_id_is_the_clients_and_appears_once(cluster):
    """Serve's proxy sets `x-request-id` itself; the gateway does not repeat the app's copy."""
    for request_id in ("ray-test-request-1", None):
        headers = {**AUTH, **({"X-Request-Id": request_id} if request_id else {})}
        response = httpx.get(f"{cluster.url}/v1/models", headers=headers, timeout=60)
        assert response.status_code == 200
        ids = response.headers.get_list("x-request-id")
        assert len(ids) == 1, ids
        if request_id:
            assert ids == [request_id]
