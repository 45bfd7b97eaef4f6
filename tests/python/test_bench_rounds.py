"""The side-by-side method (examples/bench/rounds.py, child.py): both sides of a measurement run
back to back with the order flipped every round, a row's ratio is the median of its per-round
ratios (not the ratio of the medians), targets are checked on that median, and our side's child
process keeps its protocol clean whatever else is printed. No model and no peer: fake sides."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "examples/bench"
sys.path.insert(0, str(BENCH))

import child  # noqa: E402
import rounds  # noqa: E402
from progress import Progress  # noqa: E402
from rounds import OURS, PEER, Measurement, Row, Target  # noqa: E402


def fake_side(name: str, calls: list[str], values: list[float]) -> rounds.SideRun:
    def run(round_index: int) -> dict:
        calls.append(f"{name}{round_index}")
        return {"rate": values[round_index], "streams": {str(round_index): {"n": round_index}}}

    return run


def test_each_round_runs_both_sides_back_to_back_and_flips_the_order() -> None:
    calls: list[str] = []
    measurements = [
        Measurement("a", fake_side("A", calls, [1, 2, 3, 4]), fake_side("B", calls, [1, 2, 3, 4])),
        Measurement("c", fake_side("C", calls, [1, 2, 3, 4]), fake_side("D", calls, [1, 2, 3, 4])),
    ]
    records = rounds.run_rounds(measurements, 4, with_peer=True, progress=Progress())
    assert calls == ["A0", "B0", "C0", "D0", "B1", "A1", "D1", "C1", "A2", "B2", "C2", "D2", "B3", "A3", "D3", "C3"]
    assert [len(record["runs"]) for record in records] == [4, 4, 4, 4]
    for run in records[1]["runs"]:
        assert len(run["load_average_before"]) == len(run["load_average_after"]) == 3
    assert [run["side"] for run in records[1]["runs"]] == ["llama.cpp", "ours", "llama.cpp", "ours"]
    # Each side's parts merge into one result per round, nested dicts included.
    assert records[2][OURS]["streams"] == {"2": {"n": 2}}


def test_without_the_peer_only_our_side_runs() -> None:
    calls: list[str] = []
    measurement = Measurement("a", fake_side("A", calls, [5, 6]), fake_side("B", calls, [5, 6]))
    records = rounds.run_rounds([measurement], 2, with_peer=False, progress=Progress())
    assert calls == ["A0", "A1"]
    assert records[0][PEER] is None
    summary = rounds.summarize_row(Row("rate", lambda r: r["rate"], "{:.1f}", Target(1.5)), records)
    assert summary["ours"] == 5.5 and summary["ratio"] is None and summary["met"] is None


def records_of(ours: list[float], theirs: list[float]) -> list[dict]:
    return [{"round": i + 1, OURS: {"rate": o}, PEER: {"rate": t}, "runs": []} for i, (o, t) in enumerate(zip(ours, theirs))]


def test_a_row_reports_the_median_of_its_per_round_ratios_and_their_range() -> None:
    # Medians 20 and 10 would make 2.0x; the rounds' ratios are 1.0, 4.0 and 0.5.
    records = records_of([10, 20, 30], [10, 5, 60])
    summary = rounds.summarize_row(Row("rate", lambda r: r["rate"], "{:.1f}"), records)
    assert (summary["ours"], summary[PEER]) == (20, 10)
    assert summary["ratio"] == 1.0
    assert (summary["ratio_min"], summary["ratio_max"]) == (0.5, 4.0)
    assert [r["ratio"] for r in summary["rounds"]] == [1.0, 4.0, 0.5]


@pytest.mark.parametrize(
    ("target", "ours", "ratio", "met"),
    [
        (Target(1.5), 10.0, 1.5, True),
        (Target(1.5), 10.0, 1.49, False),
        (Target(1.0, at_most=True), 10.0, 0.9, True),
        (Target(1.0, at_most=True), 10.0, 1.1, False),
        (Target(85, on_ratio=False, unit="%"), 86.0, 0.1, True),
        (Target(85, on_ratio=False, unit="%"), 84.0, 9.0, False),
        (Target(2.0, at_most=True, on_ratio=False), 2.5, 0.5, False),
        (Target(1.5), 10.0, None, None),
    ],
)
def test_targets_are_checked_on_the_ratio_or_on_our_value(target: Target, ours: float, ratio, met) -> None:
    assert target.met(ours, ratio) is met


def test_the_table_shows_the_range_the_target_and_the_verdict() -> None:
    rows = [
        Row("decode tok/s", lambda r: r["rate"], "{:.1f}", Target(1.5)),
        Row("peak RSS MiB", lambda r: r["rate"], "{:.0f}"),
    ]
    records = records_of([10, 20, 30], [10, 5, 60])
    table = rounds.render_table(rows, rounds.summarize(rows, records), 3)
    header, _, decode, rss = table.splitlines()
    assert "ratio range" in header and "target" in header and "met" in header
    assert "0.50-4.00x" in decode and ">= 1.5x" in decode and "MISSED" in decode
    assert "MISSED" not in rss and "met" not in rss


def test_a_row_only_our_side_reports_has_no_peer_value_or_ratio() -> None:
    records = [{"round": 1, OURS: {"cost": 2.0}, PEER: {"rate": 1.0}, "runs": []}]
    summary = rounds.summarize_row(Row("our step cost", lambda r: r["cost"], "{:.1f}", ours_only=True), records)
    assert (summary["ours"], summary[PEER], summary["ratio"]) == (2.0, None, None)
    # A round without the number does not count; no round with it gives n/a.
    records.append({"round": 2, OURS: {"cost": None}, PEER: {}, "runs": []})
    assert rounds.summarize_row(Row("c", lambda r: r["cost"], "{:.1f}", ours_only=True), records)["ours"] == 2.0
    row = Row("c", lambda r: None, "{:.1f}", ours_only=True)
    last_line = rounds.render_table([row], rounds.summarize([row], records), 2).splitlines()[-1]
    assert [cell.strip() for cell in last_line.split("|")[1:-1]] == ["c", "n/a", "n/a", "n/a", "n/a"]


def test_one_round_keeps_the_plain_table() -> None:
    rows = [Row("decode tok/s", lambda r: r["rate"], "{:.1f}")]
    table = rounds.render_table(rows, rounds.summarize(rows, records_of([3], [2])), 1)
    assert table.splitlines()[0].split("|")[1:-1] == [" metric       ", " ours ", " llama.cpp ", " ours/llama.cpp "]
    assert "1.50x" in table


CHILD = """
import sys
sys.path.insert(0, {bench!r})
import child

replies = child.protocol_stream()
print("stray output on stdout must not reach the protocol")
work = child.workload_of(sys.argv)

def fail(round):
    raise ValueError("measurement failed")

child.serve({{"double": lambda round, x: {{"value": 2 * x * work["scale"], "round": round}}, "fail": fail}},
            {{"kernels": {{"matmul": "fake"}}}}, replies)
"""


def test_our_child_keeps_its_engine_between_calls_and_reports_errors(tmp_path: Path) -> None:
    script = tmp_path / "fake_ours.py"
    script.write_text(textwrap.dedent(CHILD.format(bench=str(BENCH))))
    with child.OursChild(script, {"scale": 3}, timeout_s=60) as ours:
        assert ours.hello["kernels"] == {"matmul": "fake"}
        assert ours.call("double", round=1, x=2) == {"value": 12, "round": 1}
        with pytest.raises(child.ChildError, match="ValueError: measurement failed"):
            ours.call("fail", round=0)
        with pytest.raises(child.ChildError, match="unknown op 'nope'"):
            ours.call("nope")
        assert ours.call("double", round=2, x=1) == {"value": 6, "round": 2}
    assert ours.process.returncode == 0


def rows_by_label(rows: list[Row]) -> dict[str, Row]:
    return {row.label: row for row in rows}


def standard_rows_with(targets: dict) -> dict[str, Row]:
    import side_by_side
    from workload import Workload

    work = Workload.create("model.gguf", threads=1, quick=False)
    facts = {"decode_bound_tok_s": 100.0, "ttft_prompt_tokens": 57, "ttft_kind": "chat"}
    return rows_by_label(side_by_side.standard_rows(work, facts, targets))


def test_issue21_raises_the_32_stream_target_where_vnni_or_amx_exists() -> None:
    import targets

    for flags, bound in ((["avx2", "fma"], 4.0), (["avx2", "avx512_vnni"], 6.0), (["avx2", "avx_vnni"], 6.0),
                         (["avx2", "amx_int8"], 6.0)):
        rows = standard_rows_with(targets.issue21_standard(flags))
        assert rows["aggregate decode tok/s, 32 streams"].target == Target(bound)
    rows = standard_rows_with(targets.issue21_standard(["avx2"]))
    assert rows["aggregate decode tok/s, 8 streams"].target is None
    assert rows["mean TTFT s, 32 streams"].target == Target(0.1, at_most=True)
    assert rows["decode % of bandwidth bound (100 tok/s)"].target == Target(85, on_ratio=False, unit="%")


def test_issue16_targets_sit_on_decode_prefill_32_streams_and_rss() -> None:
    import targets

    rows = standard_rows_with(targets.ISSUE16_STANDARD)
    with_targets = {label: row.target.text() for label, row in rows.items() if row.target}
    assert with_targets == {
        "decode tok/s (1 stream, 128 tokens)": ">= 1.5x",
        "prefill tok/s (512-token prompt)": ">= 2x",
        "aggregate decode tok/s, 32 streams": ">= 4x",
        "peak RSS MiB": "<= 1x",
    }


def test_later_rounds_get_new_prompts_and_a_new_schema_text_for_the_same_grammar() -> None:
    from workload import STRUCTURED_SCHEMA, Workload, first_run, structured_schema

    work = Workload.create("model.gguf", threads=1, quick=False)
    first, second = work.stream_prompts(32, 0), work.stream_prompts(32, 1)
    assert len(set(first) | set(second)) == 64
    assert not any(b.startswith(a[:20]) for a, b in zip(first, second))
    assert set(work.structured_prompts(32, 1)).isdisjoint(second)
    assert structured_schema(0) == STRUCTURED_SCHEMA
    assert structured_schema(1) != structured_schema(2)
    assert {k: v for k, v in structured_schema(1).items() if k != "title"} == STRUCTURED_SCHEMA
    assert first_run(1) - first_run(0) > 2 * work.repeats + 1  # a round's TTFT and schema runs fit


def test_each_run_records_the_cpu_time_its_side_got() -> None:
    used = {OURS: 0.0, PEER: 0.0}

    def side(name: str, cpu: float) -> rounds.SideRun:
        def run(round_index: int) -> dict:
            used[name] += cpu
            return {}

        return run

    clocks = {OURS: lambda: used[OURS], PEER: lambda: used[PEER]}
    records = rounds.run_rounds([Measurement("m", side(OURS, 3.0), side(PEER, 1.0))], 2, True, Progress(), clocks)
    assert [(run["side"], run["cpu_seconds"]) for record in records for run in record["runs"]] == [
        ("ours", 3.0), ("llama.cpp", 1.0), ("llama.cpp", 1.0), ("ours", 3.0)]
    for record in records:
        for run in record["runs"]:
            run["seconds"] = 2.0  # as if each run took 2 s of wall time
    assert rounds.cpu_shares(records, threads=1) == {"ours": 1.5, "llama.cpp": 0.5}
    assert rounds.cpu_shares(records, threads=2) == {"ours": 0.75, "llama.cpp": 0.25}


def test_a_process_cpu_time_is_read_from_proc() -> None:
    import os
    import time

    from machine import process_cpu_seconds

    deadline = time.process_time() + 0.3
    while time.process_time() < deadline:
        pass
    mine = os.times()
    assert abs(process_cpu_seconds(os.getpid()) - (mine.user + mine.system)) < 0.1


def test_issue21_targets_sit_on_the_long_context_and_mixed_load_rows() -> None:
    import long_context
    import side_by_side
    import targets

    work = long_context.LongWorkload.create("model.gguf", threads=1, quick=False)
    long_rows = {row.label: row.target for row in long_context.table_rows(work, targets.ISSUE21_LONG_CONTEXT)}
    assert [label for label, target in long_rows.items() if target == Target(1.5)] == [
        "decode tok/s at position 128 (1 stream, 32 tokens)",
        "decode tok/s at position 2048 (1 stream, 32 tokens)",
        "decode tok/s at position 8000 (1 stream, 32 tokens)",
        "prefill tok/s (4096-token prompt)",
    ]
    assert sum(target is not None for target in long_rows.values()) == 4
    mixed = {row.label.strip(): row for row in side_by_side.mixed_rows(8, 4096)}
    assert mixed["ITL p99 with the 4096-token prompt / alone"].target == Target(2.0, at_most=True, on_ratio=False)
    assert mixed["TTFT s of the 4096-token prompt, 8 streams running"].target == Target(0.7, at_most=True)
    # The p99 target is on our own mixed / alone ratio, read per round from each side's results.
    side = {"mixed_load": {"alone": {"itl_p99_s": 0.05}, "mixed": {"itl_p99_s": 0.2}}}
    assert mixed["ITL p99 with the 4096-token prompt / alone"].read(side) == pytest.approx(4.0)
