"""Starts the real REST server (real engine, real models) once per test session."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import ollama
import openai
import pytest

REPO = Path(__file__).resolve().parents[2]
API_KEY = "test-key"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
STARTUP_TIMEOUT_S = 180


@dataclass
class RunningServer:
    url: str
    process: subprocess.Popen
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def metrics(self) -> dict[str, float]:
        """The samples of /metrics by name, summed over the loaded models (see `summed_metrics`)."""
        return summed_metrics(self.metrics_text())

    def labelled_metrics(self) -> dict[tuple[str, frozenset], float]:
        """Every sample of /metrics, by name and labels (see `labelled_samples`)."""
        return labelled_samples(self.metrics_text())

    def metrics_text(self) -> str:
        response = httpx.get(f"{self.url}/metrics", headers=AUTH)
        response.raise_for_status()
        return response.text


def labelled_samples(text: str) -> dict[tuple[str, frozenset], float]:
    """Every sample of a /metrics text, by name and labels (`frozenset` of `(label, value)`)."""
    samples = {}
    for m in re.finditer(r"^([a-z_]+)(?:\{([^}]*)\})? (\S+)$", text, re.M):
        labels = frozenset(re.findall(r'([a-z_]+)="([^"]*)"', m[2] or ""))
        samples[(m[1], labels)] = float(m[3])
    return samples


def summed_metrics(text: str) -> dict[str, float]:
    """The samples of a /metrics text by name, summed over the loaded models' `model` labels
    (histogram buckets left out: their `_sum` and `_count` stay)."""
    totals: dict[str, float] = {}
    for (name, labels), value in labelled_samples(text).items():
        if "le" not in dict(labels):
            totals[name] = totals.get(name, 0.0) + value
    return totals


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(*args: str) -> RunningServer:
    """Launches `python -m cortexstream.server` on a free loopback port (not waiting for it)."""
    port = free_port()
    log_path = Path(tempfile.mkstemp(prefix="cortexstream-server-", suffix=".log")[1])
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "cortexstream.server", "--port", str(port), "--log-level", "warning", *args],
            cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
        )
    return RunningServer(f"http://127.0.0.1:{port}", process, log_path)


def wait_for_health(server: RunningServer, accept: Callable[[httpx.Response], bool],
                    timeout_s: float) -> httpx.Response:
    """Polls /health until `accept(response)`; fails with the server log otherwise."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            pytest.fail(f"server exited with {server.process.returncode}:\n{server.log()}")
        try:
            response = httpx.get(f"{server.url}/health", timeout=5)
            if accept(response):
                return response
        except httpx.TransportError:
            pass  # not listening yet
        time.sleep(0.1)
    pytest.fail(f"/health did not answer as expected within {timeout_s}s:\n{server.log()}")


def stop_server(server: RunningServer) -> None:
    server.process.terminate()
    try:
        server.process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.process.kill()
    server.log_path.unlink(missing_ok=True)

def wait_for_metrics(server, condition, what: str = "the condition", timeout_s: float = 30.0) -> dict[str, float]:
    """Polls `/metrics` until `condition(metrics)` holds and returns them; fails naming `what`
    after `timeout_s` (a hang guard, not a timing assertion)."""
    deadline = time.monotonic() + timeout_s
    while True:
        metrics = server.metrics()
        if condition(metrics):
            return metrics
        if time.monotonic() > deadline:
            pytest.fail(f"{what} never happened: {metrics}")
        time.sleep(0.02)


def serving(*args: str):
    """A server started with `args`, yielded once healthy and stopped afterwards: the body of a
    fixture (`yield from serving(...)`)."""
    running = start_server(*args)
    try:
        wait_for_health(running, lambda r: r.status_code == 200, STARTUP_TIMEOUT_S)
        yield running
    finally:
        stop_server(running)


@pytest.fixture(scope="session")
def server():
    yield from serving("--api-key", API_KEY)


@pytest.fixture(scope="session")
def openai_client(server) -> openai.OpenAI:
    # No retries: a test must see the first answer, errors included.
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=API_KEY, max_retries=0, timeout=120)


@pytest.fixture(scope="session")
def ollama_client(server) -> ollama.Client:
    return ollama.Client(host=server.url, headers=AUTH, timeout=120)
