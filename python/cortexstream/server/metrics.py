"""Renders `engine.metrics()` in the Prometheus text exposition format (version 0.0.4)."""

from __future__ import annotations

import math

PREFIX = "cortexstream"

#: Snapshot fields that go up and down; every other number only grows (a counter).
GAUGES = frozenset({"queue_depth", "running", "kv_blocks_total", "kv_blocks_free"})

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value)) if isinstance(value, float) else str(value)


def _histogram(name: str, histogram: dict) -> list[str]:
    lines = [f"# TYPE {name} histogram"]
    lines += [f'{name}_bucket{{le="{_number(float(bound))}"}} {count}' for bound, count in histogram["buckets"]]
    # Prometheus requires the +Inf bucket; it holds every observation.
    lines.append(f'{name}_bucket{{le="+Inf"}} {histogram["count"]}')
    lines.append(f"{name}_sum {_number(float(histogram['sum']))}")
    lines.append(f"{name}_count {histogram['count']}")
    return lines


def render_prometheus(snapshot: dict, *, ready: bool) -> str:
    """One metric family per snapshot field: histograms (dicts with `buckets`), gauges, counters
    (suffixed `_total` as Prometheus names them). `ready` becomes the `cortexstream_ready` gauge."""
    lines = [f"# TYPE {PREFIX}_ready gauge", f"{PREFIX}_ready {int(ready)}"]
    for field, value in snapshot.items():
        name = f"{PREFIX}_{field}"
        if isinstance(value, dict):
            lines += _histogram(name, value)
        elif field in GAUGES:
            lines += [f"# TYPE {name} gauge", f"{name} {_number(value)}"]
        else:
            name = name if name.endswith("_total") else f"{name}_total"
            lines += [f"# TYPE {name} counter", f"{name} {_number(value)}"]
    return "\n".join(lines) + "\n"
