"""Issue 23's goals, point by point, from an accuracy-retention results file (``accuracy_retention.py``).

* No strategy is a trap: at the deepest keep, after the short distillation, each of the five strategies
  (magnitude, rmt, hybrid, edge-budget, dynamic) within 1 point of magnitude or above, per family.
* Spectral scores that read calibration data, right after pruning at the deepest keep: at least the best of
  TP Taylor and TP Hessian (per family, means over seeds), and at least magnitude + 2.
* Every keep, both columns: each of the five strategies' top-1 right after pruning and after the short
  distillation, beside magnitude's (the table the edge run, issue 24, asks for).

Each cell gives the family's mean over seeds and the per-seed paired difference's mean (min). Writes
``<stem>_goals.{json,md}`` beside the results.

    python benchmarks/strategy_goals.py benchmarks/results/accuracy_retention_data_scores.json
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

FIVE = ("magnitude", "rmt", "hybrid", "edge-budget", "dynamic")
DATA = (
    "data-rmt",
    "data-rmt-raw",
    "data-rmt-centred",
    "data-rmt-fisher",
    "data-rmt-fisher-sampled",
    "data-rmt-fisher-off",
)
TRAP_TOLERANCE = 1.0
MAGNITUDE_MARGIN = 2.0


def _by_seed(points, family, keep, criterion, key) -> dict[int, float]:
    return {
        p["seed"]: p[key]
        for p in points
        if p["family"] == family and p["keep"] == keep and p["criterion"] == criterion and key in p
    }


def _paired(a: dict[int, float], b: dict[int, float]) -> dict:
    seeds = sorted(set(a) & set(b))
    gaps = [a[s] - b[s] for s in seeds]
    return {"mean": round(statistics.mean(gaps), 2), "min": round(min(gaps), 2), "seeds": len(seeds)}


def goals(results: dict) -> dict:
    points, keep = results["points"], min(p["keep"] for p in results["points"])
    families = list(dict.fromkeys(p["family"] for p in points))
    criteria = set(p["criterion"] for p in points)
    mean = {}
    for family in families:
        for criterion in criteria:
            for key in ("top1_pruned", "top1_distilled"):
                values = _by_seed(points, family, keep, criterion, key)
                if values:
                    mean[family, criterion, key] = statistics.mean(values.values())
    traps = []
    for family in families:
        for criterion in [c for c in FIVE[1:] if c in criteria]:
            gap = _paired(
                *(_by_seed(points, family, keep, c, "top1_distilled") for c in (criterion, "magnitude"))
            )
            traps.append({"family": family, "criterion": criterion, "gap_to_magnitude": gap,
                          "met": gap["mean"] >= -TRAP_TOLERANCE})  # fmt: skip
    data = []
    for family in families:
        peers = {c: mean.get((family, c, "top1_pruned")) for c in ("tp-taylor", "tp-hessian")}
        best_peer = max((c for c in peers if peers[c] is not None), key=peers.get, default=None)
        for criterion in [c for c in DATA if c in criteria]:
            ours = _by_seed(points, family, keep, criterion, "top1_pruned")
            to_peer = (
                _paired(ours, _by_seed(points, family, keep, best_peer, "top1_pruned")) if best_peer else None
            )
            to_magnitude = _paired(ours, _by_seed(points, family, keep, "magnitude", "top1_pruned"))
            data.append({"family": family, "criterion": criterion, "top1": round(statistics.mean(ours.values()), 2),
                         "best_peer": best_peer, "gap_to_best_peer": to_peer, "gap_to_magnitude": to_magnitude,
                         "at_least_best_peer": to_peer is not None and to_peer["mean"] >= 0,
                         "magnitude_plus_2": to_magnitude["mean"] >= MAGNITUDE_MARGIN})  # fmt: skip
    return {"source": results["conditions"], "keep": keep, "traps": traps, "data_scores": data,
            "per_keep": per_keep(points, families, [c for c in FIVE if c in criteria])}  # fmt: skip


def per_keep(points, families, strategies) -> list[dict]:
    """Per family, keep and strategy: mean top-1 over seeds after pruning and after the distillation, and
    the per-seed paired gap of each to magnitude."""
    rows = []
    for family in families:
        for keep in sorted({p["keep"] for p in points if p["family"] == family}, reverse=True):
            for criterion in strategies:
                row = {"family": family, "keep": keep, "criterion": criterion}
                for key in ("top1_pruned", "top1_distilled"):
                    ours = _by_seed(points, family, keep, criterion, key)
                    if not ours:
                        continue
                    row[key] = round(statistics.mean(ours.values()), 2)
                    if criterion != "magnitude":
                        row[f"{key}_gap"] = _paired(ours, _by_seed(points, family, keep, "magnitude", key))
                rows.append(row)
    return rows


def render(record: dict, source: str) -> list[str]:
    keep = record["keep"]
    lines = ["# Issue 23's goals, point by point", "",
             f"From `{source}` ({record['source']['cpu']}; seeds {record['source']['seeds']}). Gaps are per-seed "
             "paired differences in top-1 points: mean (min over seeds).", "",
             f"## No strategy is a trap: keep {keep}, after the short distillation, within {TRAP_TOLERANCE:g} point "
             "of magnitude or above", "", "| family | strategy | gap to magnitude | goal |", "|---|---|---|---|"]  # fmt: skip
    for row in record["traps"]:
        gap = row["gap_to_magnitude"]
        lines.append(f"| {row['family']} | {row['criterion']} | {gap['mean']:+.1f} ({gap['min']:+.1f}) | "
                     f"{'met' if row['met'] else '**missed**'} |")  # fmt: skip
    met = sum(r["met"] for r in record["traps"])
    lines += ["", f"{met} of {len(record['traps'])} points met."]
    if record["data_scores"]:  # a run without data-rmt has no such section
        lines += _render_data_scores(record["data_scores"], keep)
    lines += _render_per_keep(record["per_keep"])
    return lines


def _render_data_scores(data_scores: list[dict], keep: float) -> list[str]:
    lines = ["", f"## Scores that read calibration data: keep {keep}, right after pruning", "",
              "| family | criterion | top-1 | best of Taylor / Hessian | gap to it | goal ≥ it | gap to magnitude | "
              "goal ≥ magnitude + 2 |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for row in data_scores:
        peer, mag = row["gap_to_best_peer"], row["gap_to_magnitude"]
        lines.append(
            f"| {row['family']} | {row['criterion']} | {row['top1']:.1f} | {row['best_peer']} | "
            f"{peer['mean']:+.1f} ({peer['min']:+.1f}) | {'met' if row['at_least_best_peer'] else '**missed**'} | "
            f"{mag['mean']:+.1f} ({mag['min']:+.1f}) | {'met' if row['magnitude_plus_2'] else '**missed**'} |"
        )
    for criterion in dict.fromkeys(r["criterion"] for r in data_scores):
        rows = [r for r in data_scores if r["criterion"] == criterion]
        lines.append(f"\n{criterion}: ≥ best of Taylor / Hessian in {sum(r['at_least_best_peer'] for r in rows)} of "
                     f"{len(rows)} families (goal ≥ 5 of 6); ≥ magnitude + 2 in "
                     f"{sum(r['magnitude_plus_2'] for r in rows)} of {len(rows)} (goal 6 of 6).")  # fmt: skip
    return lines


def _render_per_keep(rows: list[dict]) -> list[str]:
    if not rows:
        return []
    lines = ["", "## Every keep: the five strategies beside magnitude", "",
             "Top-1 % mean over seeds right after pruning → after the short distillation; gap = per-seed paired "
             "difference to magnitude, mean (min).", "",
             "| family | keep | strategy | after pruning | gap | after distillation | gap |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for row in rows:
        cells = []
        for key in ("top1_pruned", "top1_distilled"):
            gap = row.get(f"{key}_gap")
            cells += [f"{row[key]:.1f}" if key in row else "–",
                      f"{gap['mean']:+.1f} ({gap['min']:+.1f})" if gap else "–"]  # fmt: skip
        lines.append(
            f"| {row['family']} | {row['keep']:g} | {row['criterion']} | " + " | ".join(cells) + " |"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", type=Path, help="an accuracy_retention*.json")
    args = parser.parse_args(argv)
    record = goals(json.loads(args.results.read_text()))
    stem = args.results.with_suffix("")
    Path(f"{stem}_goals.json").write_text(json.dumps(record, indent=1) + "\n")
    Path(f"{stem}_goals.md").write_text("\n".join(render(record, args.results.name)) + "\n")
    print("\n".join(render(record, args.results.name)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
