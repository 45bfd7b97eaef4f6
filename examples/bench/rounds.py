"""Paired rounds: the method behind every side-by-side table.

The machine the bench runs on is shared, and its load moves more between two runs than any code
change moves a rate (llama.cpp's prefill went from 294 to 406 tok/s between two runs of the
same binary). So ratios are taken between runs made back to back: each measurement runs on our
side and on llama.cpp's one right after the other, and the order flips every round (ours
first in odd rounds, llama.cpp first in even ones: A B, B A, A B, ...), so a load that rises or
falls steadily through a round favours each side equally often. Each round gives every row one
ratio; a row reports the median of its rounds' ratios and their range (min-max), and each
side's median. The load average is recorded around every run.

A row may carry a target (the issue's), on the ratio (ours / llama.cpp) or on our value alone
(e.g. decode as a share of the bandwidth bound); it is checked on the median.
"""

from __future__ import annotations

import datetime
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from progress import Progress

OURS = "ours"
PEER = "llama_cpp"
SIDE_NAMES = {OURS: "ours", PEER: "llama.cpp"}

# Runs one side of one measurement in round ``round_index`` (0-based) and returns its part of
# that side's results, e.g. {"decode_tok_s": 63.2} or {"streams": {"32": {...}}}.
SideRun = Callable[[int], dict[str, Any]]
# Runs a script that measures both sides itself (mixed_load.py): our part and the peer's (None
# without the peer).
JointRun = Callable[[int], tuple[dict[str, Any], dict[str, Any] | None]]


@dataclass(frozen=True)
class Measurement:
    """One unit of work that runs once per side per round."""

    label: str
    ours: SideRun | None = None
    peer: SideRun | None = None
    joint: JointRun | None = None
    """Instead of ``ours``/``peer``: a script that runs both sides in one go, in its own order."""


@dataclass(frozen=True)
class Target:
    """An issue's target for one row, checked on the median over the rounds."""

    bound: float
    at_most: bool = False
    on_ratio: bool = True
    """True: on ours / llama.cpp; False: on our value alone."""
    unit: str = "x"

    def text(self) -> str:
        return f"{'<=' if self.at_most else '>='} {self.bound:g}{self.unit}" + ("" if self.on_ratio else " (ours)")

    def met(self, ours: float | None, ratio: float | None) -> bool | None:
        """None when the value it needs was not measured (no peer for a ratio target)."""
        value = ratio if self.on_ratio else ours
        if value is None:
            return None
        return value <= self.bound if self.at_most else value >= self.bound


@dataclass(frozen=True)
class Row:
    """One line of the table: how to read its value from one side's results of one round."""

    label: str
    read: Callable[[dict[str, Any]], float]
    fmt: str
    target: Target | None = None
    ours_only: bool = False
    """A number only our side reports (e.g. from our engine's step trace): no peer value or ratio."""


def side_order(round_index: int) -> tuple[str, str]:
    """Which side runs first in a round: ours in rounds 0, 2, ..., llama.cpp in rounds 1, 3, ..."""
    return (OURS, PEER) if round_index % 2 == 0 else (PEER, OURS)


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def deep_merge(into: dict[str, Any], part: dict[str, Any]) -> None:
    """Adds ``part`` to ``into``, merging nested dicts (``streams`` gains one count at a time)."""
    for key, value in part.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            deep_merge(into[key], value)
        else:
            into[key] = value


def step_count(measurements: list[Measurement], rounds: int, with_peer: bool) -> int:
    """How many progress steps :func:`run_rounds` shows."""
    per_round = sum(1 if m.joint else (m.ours is not None) + (with_peer and m.peer is not None) for m in measurements)
    return rounds * per_round


# Reads the CPU seconds a side has used so far (its processes'), keyed by OURS, PEER or JOINT.
CpuClocks = dict[str, Callable[[], float]]
JOINT = "both"


def run_rounds(
    measurements: list[Measurement], rounds: int, with_peer: bool, progress: Progress, cpu_clocks: CpuClocks | None = None
) -> list[dict[str, Any]]:
    """Every measurement on both sides, back to back in :func:`side_order`, ``rounds`` times.

    Returns one record per round: each side's results (the measurements' parts merged) and
    every run with its time, the load average before and after it and, where ``cpu_clocks``
    has the side, the CPU seconds the side's processes used meanwhile."""
    clocks = cpu_clocks or {}
    records = []
    for index in range(rounds):
        record: dict[str, Any] = {"round": index + 1, OURS: {}, PEER: {} if with_peer else None, "runs": []}
        for measurement in measurements:
            prefix = f"round {index + 1}/{rounds}, " if rounds > 1 else ""
            if measurement.joint is not None:
                ours, theirs = timed(record, measurement.label, JOINT, progress, prefix,
                                     lambda: measurement.joint(index), clocks.get(JOINT))  # type: ignore[misc]
                deep_merge(record[OURS], ours)
                if with_peer and theirs is not None:
                    deep_merge(record[PEER], theirs)
                continue
            for side in side_order(index):
                run = measurement.ours if side == OURS else measurement.peer
                if run is None or (side == PEER and not with_peer):
                    continue
                part = timed(record, measurement.label, side, progress, prefix, lambda: run(index),  # type: ignore[misc]
                             clocks.get(side))
                deep_merge(record[side], part)
        records.append(record)
    return records


def timed(
    record: dict[str, Any],
    label: str,
    side: str,
    progress: Progress,
    prefix: str,
    run: Callable[[], Any],
    cpu_clock: Callable[[], float] | None,
) -> Any:
    """Runs one side of one measurement, noting when, how long, the load around it and the CPU
    time the side got."""
    progress.step(f"{prefix}{SIDE_NAMES.get(side, 'both sides')}: {label}")
    before, started, clock = load_average(), datetime.datetime.now().isoformat(timespec="seconds"), time.monotonic()
    cpu_before = cpu_clock() if cpu_clock else None
    result = run()
    entry = {
        "measurement": label,
        "side": SIDE_NAMES.get(side, JOINT),
        "started": started,
        "seconds": round(time.monotonic() - clock, 2),
        "load_average_before": before,
        "load_average_after": load_average(),
    }
    if cpu_clock and cpu_before is not None:
        entry["cpu_seconds"] = round(cpu_clock() - cpu_before, 2)
    record["runs"].append(entry)
    return result


def cpu_shares(records: list[dict[str, Any]], threads: int, min_seconds: float = 1.0) -> dict[str, float]:
    """Per side, the median over its runs (of at least ``min_seconds``) of the CPU time it got as
    a share of its threads' wall time: how much of the machine each side actually had."""
    shares: dict[str, list[float]] = {}
    for record in records:
        for run in record["runs"]:
            if "cpu_seconds" in run and run["seconds"] >= min_seconds and run["side"] != JOINT:
                shares.setdefault(run["side"], []).append(run["cpu_seconds"] / (run["seconds"] * threads))
    return {side: statistics.median(values) for side, values in shares.items()}


def summarize(rows: list[Row], records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per row: every round's values and ratio, each side's median, the median ratio, its range,
    and the target's verdict."""
    return [summarize_row(row, records) for row in rows]


def summarize_row(row: Row, records: list[dict[str, Any]]) -> dict[str, Any]:
    """A row's reader may return None for a round that did not produce its number (e.g. no
    prompt step in our trace); medians are over the rounds that did."""
    per_round = []
    for record in records:
        ours = row.read(record[OURS])
        theirs = row.read(record[PEER]) if record[PEER] is not None and not row.ours_only else None
        ratio_of_round = ours / theirs if ours is not None and theirs else None
        per_round.append({"ours": ours, PEER: theirs, "ratio": ratio_of_round})
    ratios = [r["ratio"] for r in per_round if r["ratio"] is not None]
    ours_median = median_or_none([r["ours"] for r in per_round])
    ratio = statistics.median(ratios) if ratios else None
    return {
        "label": row.label,
        "ours": ours_median,
        PEER: median_or_none([r[PEER] for r in per_round]),
        "ratio": ratio,
        "ratio_min": min(ratios) if ratios else None,
        "ratio_max": max(ratios) if ratios else None,
        "rounds": per_round,
        "target": row.target.text() if row.target else None,
        "met": row.target.met(ours_median, ratio) if row.target else None,
    }


def median_or_none(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def render_table(rows: list[Row], summaries: list[dict[str, Any]], rounds: int) -> str:
    """The Markdown table: each side's median, the median ratio, its range over the rounds (with
    more than one), and the target with its verdict (when any row has one)."""
    with_targets = any(row.target for row in rows)
    header = ["metric", "ours", "llama.cpp", "ours/llama.cpp"]
    if rounds > 1:
        header[1:4] = [f"ours (median of {rounds})", "llama.cpp (median)", "ours/llama.cpp (median ratio)"]
        header.append("ratio range")
    if with_targets:
        header += ["target", "met"]
    lines = [header]
    for row, summary in zip(rows, summaries):
        cells = [row.label, optional(row.fmt, summary["ours"]), optional(row.fmt, summary[PEER]),
                 optional("{:.2f}x", summary["ratio"])]
        if rounds > 1:
            cells.append(
                "n/a" if summary["ratio_min"] is None else f"{summary['ratio_min']:.2f}-{summary['ratio_max']:.2f}x"
            )
        if with_targets:
            met = summary["met"]
            cells += [summary["target"] or "", "" if row.target is None else {True: "met", False: "MISSED", None: "n/a"}[met]]
        lines.append(cells)
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]

    def render(cells: list[str]) -> str:
        padded = (cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(cells, widths)))
        return "| " + " | ".join(padded) + " |"

    separator = "|" + "|".join("-" * (w + 2) if i == 0 else "-" * (w + 1) + ":" for i, w in enumerate(widths)) + "|"
    return "\n".join([render(lines[0]), separator, *map(render, lines[1:])])


def optional(fmt: str, value: float | None) -> str:
    return "n/a" if value is None else fmt.format(value)
