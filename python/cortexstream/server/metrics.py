"""Renders the loaded models' `Engine.metrics()` in the Prometheus text exposition format with
`prometheus_client` (HELP and TYPE lines, name and value formatting, escaping, labels), from
fresh snapshots per scrape: one series per loaded model, labelled `model` (an embedding model
has two counters: `embedding_requests` and `embedding_tokens_total`)."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST

PREFIX = "cortexstream"

CONTENT_TYPE = CONTENT_TYPE_LATEST

#: Snapshot fields that go up and down; every other number only grows (a counter).
GAUGES = frozenset({
    "queue_depth", "running", "kv_blocks_total", "kv_blocks_free",
    "kv_sliding_blocks_total", "kv_sliding_blocks_free", "step_token_budget",
})

#: What each field of the engine's snapshot counts (the core's field documentation).
HELP = {
    "requests_submitted": "Requests accepted by the engine.",
    "requests_finished": "Requests that ended, for any reason.",
    "requests_cancelled": "Requests that ended cancelled (a client disconnect, an abort, shutdown).",
    "requests_failed": "Requests that ended with an error.",
    "requests_rejected": "Submissions refused (an invalid request, a full queue).",
    "queue_depth": "Requests waiting to be scheduled.",
    "running": "Sequences in the running batch.",
    "prompt_tokens_total": "Prompt tokens of accepted requests.",
    "prefill_tokens_total": "Prompt tokens computed for the first time (cache hits and recomputation excluded).",
    "prefix_cache_hit_tokens": "Prompt tokens whose KV came from the prefix cache (hits + prefill = prompt tokens).",
    "recomputed_tokens_total": "Tokens computed again after a preemption took their KV away.",
    "step_token_budget": "Tokens the last planned step could compute (its decodes plus the prompt tokens granted).",
    "generated_tokens_total": "Tokens generated.",
    "steps": "Engine steps (one batched forward each).",
    "step_failures": "Steps that failed; the requests running in them ended with an error.",
    "preemptions": "Sequences preempted to free KV cache blocks.",
    "kv_blocks_total": "KV cache blocks.",
    "kv_blocks_free": "KV cache blocks not used by any sequence (free or holding reusable prefixes).",
    "kv_sliding_blocks_total": "KV cache blocks of sliding-window layers (0 for models without them).",
    "kv_sliding_blocks_free": "Sliding-window KV cache blocks not used by any sequence.",
    "embedding_requests": "Embedding calls made to the model (one per request, however many texts).",
    "embedding_tokens_total": "Tokens embedded by an embedding model's successful calls.",
    "batch_size": "Tokens (prefill and decode rows) per forward step.",
    "time_to_first_token_seconds": "Seconds from submit to a request's first token.",
    "per_token_seconds": "Mean seconds per generated token after the first, per request.",
}


def _help(field: str) -> str:
    # A field the core added after this table: still exported, described by its name.
    return HELP.get(field, f"The engine's {field.replace('_', ' ')}.")


def _family(name: str, field: str, sample) -> Metric:
    """The family of one snapshot field, labelled by model (its samples are added later)."""
    if isinstance(sample, dict):
        return HistogramMetricFamily(name, _help(field), labels=["model"])
    if field in GAUGES:
        return GaugeMetricFamily(name, _help(field), labels=["model"])
    # prometheus_client names the sample `<name>_total` (and drops a `_total` already there).
    return CounterMetricFamily(name, _help(field), labels=["model"])


def _add(family: Metric, model: str, value) -> None:
    if isinstance(value, dict):
        # The snapshot's buckets are cumulative (as Prometheus wants); +Inf holds every observation.
        buckets = [(repr(float(bound)), count) for bound, count in value["buckets"]]
        buckets.append(("+Inf", value["count"]))
        family.add_metric([model], buckets=buckets, sum_value=value["sum"])
    else:
        family.add_metric([model], value)


def _families(snapshots: dict[str, dict], ready: bool) -> Iterator[Metric]:
    yield GaugeMetricFamily(f"{PREFIX}_ready", "1 once the first model is loaded and requests are served.",
                            value=int(ready))
    families: dict[str, Metric] = {}
    for model, snapshot in snapshots.items():
        for field, value in snapshot.items():
            name = f"{PREFIX}_{field}"
            if name not in families:
                families[name] = _family(name, field, value)
            _add(families[name], model, value)
    yield from families.values()


class _Snapshot:
    """A collector that yields one scrape's metric families."""

    def __init__(self, snapshots: dict[str, dict], ready: bool) -> None:
        self._snapshots = snapshots
        self._ready = ready

    def collect(self) -> Iterator[Metric]:
        return _families(self._snapshots, self._ready)


def render_prometheus(snapshots: dict[str, dict], *, ready: bool) -> str:
    """One metric family per snapshot field, one sample (or histogram) per loaded model in it,
    labelled `model="NAME"`: histograms (dicts with `buckets`), gauges, counters (samples
    suffixed `_total`). `ready` becomes the unlabelled `cortexstream_ready` gauge. A model's
    counters start from zero each time it loads."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot(snapshots, ready))
    return generate_latest(registry).decode("utf-8")
