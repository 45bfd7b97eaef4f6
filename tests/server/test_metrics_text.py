"""/metrics text as Prometheus parses it: every family has HELP and TYPE, counters end in
`_total`, histograms have cumulative buckets ending at +Inf, every per-engine sample has the
`model` label of its loaded model. No model needed."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from cortexstream.server.metrics import render_prometheus

SNAPSHOT = {
    "requests_submitted": 3,
    "prompt_tokens_total": 12,
    "running": 1,
    "kv_blocks_free": 250,
    "a_field_added_later": 7,
    "batch_size": {"buckets": [[1.0, 2], [4.0, 5]], "sum": 11.0, "count": 6},
}


OTHER = {**SNAPSHOT, "requests_submitted": 9, "batch_size": {"buckets": [[1.0, 0], [4.0, 1]], "sum": 3.0, "count": 1}}


def families() -> dict:
    text = render_prometheus({"chat": SNAPSHOT, "other": OTHER}, ready=True)
    return {family.name: family for family in text_string_to_metric_families(text)}


def test_every_family_has_help_and_its_type() -> None:
    parsed = families()
    assert {name: family.type for name, family in parsed.items()} == {
        "cortexstream_ready": "gauge",
        "cortexstream_requests_submitted": "counter",
        "cortexstream_prompt_tokens": "counter",
        "cortexstream_running": "gauge",
        "cortexstream_kv_blocks_free": "gauge",
        "cortexstream_a_field_added_later": "counter",
        "cortexstream_batch_size": "histogram",
    }
    for family in parsed.values():
        assert family.documentation, family.name


def test_sample_names_and_values_one_series_per_model() -> None:
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families().values() for s in f.samples}
    chat, other = (("model", "chat"),), (("model", "other"),)
    assert samples[("cortexstream_ready", ())] == 1
    assert samples[("cortexstream_requests_submitted_total", chat)] == 3
    assert samples[("cortexstream_requests_submitted_total", other)] == 9
    assert samples[("cortexstream_prompt_tokens_total", chat)] == 12
    assert samples[("cortexstream_kv_blocks_free", chat)] == 250
    assert samples[("cortexstream_batch_size_bucket", (("le", "1.0"), *chat))] == 2
    assert samples[("cortexstream_batch_size_bucket", (("le", "+Inf"), *chat))] == 6
    assert samples[("cortexstream_batch_size_bucket", (("le", "+Inf"), *other))] == 1
    assert samples[("cortexstream_batch_size_sum", chat)] == 11.0
    assert samples[("cortexstream_batch_size_count", other)] == 1
    # Nothing per engine without its model.
    assert all(labels for (name, labels) in samples if name != "cortexstream_ready")


def test_not_ready_renders_without_a_snapshot() -> None:
    text = render_prometheus({}, ready=False)
    assert "cortexstream_ready 0.0" in text
