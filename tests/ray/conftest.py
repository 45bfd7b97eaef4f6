"""One local Ray cluster (2 CPUs, no dashboard, a small object store) serving the Ray Serve
example with 2 engine replicas of 1 CPU (1 thread) each, on a loopback port, per test session."""

from __future__ import annotations

import os
import re
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import ollama
import openai
import pytest
import ray
from ray import serve

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "ray"
sys.path.insert(0, str(EXAMPLE))

from cortexstream_ray.deployment import RayServeOptions, build_app  # noqa: E402
from cortexstream_ray.prefix import PIN_HEADER  # noqa: E402

API_KEY = "ray-test-key"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
APP_NAME = "cortexstream"
ENGINE_DEPLOYMENT = "EngineReplica"
REPLICAS = 2
#: Hang guards (never timing assertions): generous bounds on a loaded 2-core machine.
SETTLE_TIMEOUT_S = 60.0
REPLACEMENT_TIMEOUT_S = 300.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Cluster:
    url: str

    def replica_ids(self) -> list[str]:
        """The unique ids of the live engine replicas (from their Ray actor names)."""
        names = ray.util.list_named_actors(all_namespaces=True)
        pattern = re.compile(rf"^SERVE_REPLICA::{APP_NAME}#{ENGINE_DEPLOYMENT}#(\w+)$")
        return sorted(m.group(1) for actor in names if (m := pattern.match(actor["name"])))

    def replica_actor(self, replica_id: str):
        return ray.get_actor(f"SERVE_REPLICA::{APP_NAME}#{ENGINE_DEPLOYMENT}#{replica_id}", namespace="serve")

    def replica_pid(self, replica_id: str) -> int:
        return ray.get(self.replica_actor(replica_id).__ray_call__.remote(lambda _self: os.getpid()), timeout=30)

    def metrics(self, replica_id: str) -> dict[str, float]:
        """One replica's /metrics (pinned through the gateway) by sample name, summed over the
        labels (models) when the server labels them; histogram buckets left out."""
        response = httpx.get(f"{self.url}/metrics", headers={**AUTH, PIN_HEADER: replica_id}, timeout=30)
        response.raise_for_status()
        assert response.headers[PIN_HEADER] == replica_id, "the pinned request reached another replica"
        return sum_samples(response.text)

    def running_replicas(self) -> int:
        status = serve.status().applications[APP_NAME].deployments[ENGINE_DEPLOYMENT]
        return status.replica_states.get("RUNNING", 0)


def sum_samples(text: str) -> dict[str, float]:
    totals: dict[str, float] = {}
    for m in re.finditer(r"^([a-z_]+)(?:\{([^}]*)\})? (\S+)$", text, re.M):
        if 'le="' not in (m[2] or ""):
            totals[m[1]] = totals.get(m[1], 0.0) + float(m[3])
    return totals


def wait_until(condition, what: str, timeout_s: float = SETTLE_TIMEOUT_S, poll_s: float = 0.1):
    """Polls `condition()` until it returns something truthy; fails naming `what` (hang guard)."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not happen within {timeout_s}s")
        time.sleep(poll_s)


@pytest.fixture(scope="session")
def cluster():
    # Workers (replicas, the controller, the gateway) import the example package by name.
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(EXAMPLE), os.environ.get("PYTHONPATH")]))
    ray.init(address="local", num_cpus=REPLICAS, include_dashboard=False,
             object_store_memory=100 * 1024 * 1024, log_to_driver=False)
    try:
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        options = RayServeOptions(num_replicas=REPLICAS, replica_cpus=1, api_key=API_KEY)
        serve.run(build_app(options), name=APP_NAME, route_prefix="/")
        running = Cluster(f"http://127.0.0.1:{port}")
        wait_until(lambda: len(running.replica_ids()) == REPLICAS, "both engine replicas starting")
        yield running
    finally:
        serve.shutdown()
        ray.shutdown()


@pytest.fixture(scope="session")
def openai_client(cluster) -> openai.OpenAI:
    # No retries: a test must see the first answer, errors included.
    return openai.OpenAI(base_url=f"{cluster.url}/v1", api_key=API_KEY, max_retries=0, timeout=120)


@pytest.fixture(scope="session")
def ollama_client(cluster) -> ollama.Client:
    return ollama.Client(host=cluster.url, headers=AUTH, timeout=120)


@pytest.fixture(scope="session")
def server(cluster) -> Cluster:
    """The name the REST server's own smoke tests (tests/server) use for the server under test."""
    return cluster
