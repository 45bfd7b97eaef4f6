"""Requests/s and aggregate tokens/s through the Serve gateway for 1 vs N engine replicas.

    python examples/ray/measure.py --replicas 1,2 --requests 32 --concurrency 8 --max-tokens 32

Starts a local Ray cluster (one CPU per replica, no dashboard, 100 MB object store) for each
replica count, sends `--requests` chat requests `--concurrency` at a time (half of them share a
long system prompt, half are distinct), and prints one row per count, plus each replica's prefix
cache hit tokens. Numbers are printed, never asserted (docs/ray.md has this machine's).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families
import ray
from ray import serve

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cortexstream_ray.deployment import RayServeOptions, build_app  # noqa: E402
from cortexstream_ray.prefix import PIN_HEADER  # noqa: E402

SYSTEM = "You are the help desk of a lighthouse museum. Answer briefly and politely. " * 12


def messages(index: int) -> list[dict]:
    if index % 2 == 0:
        return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": f"Question {index}: any tours?"}]
    return [{"role": "user", "content": f"Write a line about the number {index}."}]


def run(url: str, requests: int, concurrency: int, max_tokens: int) -> tuple[float, int]:
    def one(index: int) -> int:
        response = httpx.post(f"{url}/v1/chat/completions", timeout=600, json={
            "model": "smollm2", "messages": messages(index), "max_tokens": max_tokens, "temperature": 0})
        response.raise_for_status()
        return response.json()["usage"]["completion_tokens"]

    start = time.monotonic()
    with ThreadPoolExecutor(concurrency) as pool:
        tokens = sum(pool.map(one, range(requests)))
    return time.monotonic() - start, tokens


def replica_ids() -> list[str]:
    names = (actor["name"] for actor in ray.util.list_named_actors(all_namespaces=True))
    return [name.rsplit("#", 1)[1] for name in names if name.startswith("SERVE_REPLICA::cortexstream#EngineReplica#")]


def prefix_hit_rate(url: str) -> float:
    """Prompt tokens served from the prefix cache over prompt tokens served (cache + prefill),
    over every replica."""
    hits = prefilled = 0.0
    for replica in replica_ids():
        text = httpx.get(f"{url}/metrics", headers={PIN_HEADER: replica}, timeout=60).text
        for family in text_string_to_metric_families(text):
            # Summed over the labels (models), should the server label its samples.
            total = sum(sample.value for sample in family.samples)
            if family.name == "cortexstream_prefix_cache_hit_tokens":
                hits += total
            elif family.name == "cortexstream_prefill_tokens":
                prefilled += total
    return hits / (hits + prefilled) if hits + prefilled else 0.0


def measure(replicas: int, args: argparse.Namespace) -> None:
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).resolve().parent),
                                                             os.environ.get("PYTHONPATH")]))
    ray.init(address="local", num_cpus=replicas, include_dashboard=False,
             object_store_memory=100 * 1024 * 1024, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": args.port})
        serve.run(build_app(RayServeOptions(num_replicas=replicas, replica_cpus=1)), name="cortexstream",
                  route_prefix="/")
        url = f"http://127.0.0.1:{args.port}"
        run(url, 2, 2, 2)  # warm-up: first requests pay one-time costs
        seconds, tokens = run(url, args.requests, args.concurrency, args.max_tokens)
        print(f"replicas={replicas} requests={args.requests} concurrency={args.concurrency} "
              f"seconds={seconds:.1f} requests_per_s={args.requests / seconds:.2f} tok_per_s={tokens / seconds:.1f} "
              f"prefix_hit_rate={prefix_hit_rate(url):.2f}", flush=True)
    finally:
        serve.shutdown()
        ray.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicas", default="1,2")
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--port", type=int, default=8123)
    args = parser.parse_args()
    for count in (int(n) for n in args.replicas.split(",")):
        measure(count, args)


if __name__ == "__main__":
    main()
