"""Accuracy against *measured* latency: the latency table's allocation vs hybrid's MAC allocation (issue 22).

Reads an ``accuracy_retention.py`` run made with ``--criteria hybrid hybrid-table hybrid-table-macs --latency-tables DIR
--export-onnx ONNX`` (hybrid-table: the table's allocation at the latency the table predicts for hybrid's
MAC allocation at the same keep), times every exported model on ONNX Runtime CPU, each (family, seed)'s
dense model and its pruned ones interleaved on one shared pool, batch 1, and writes the accuracy-vs-measured-
latency table, the goal point by point and a plot per family.

Goal (issue 22): at the measured latency of hybrid at keep 0.5 and 0.3, the table's allocation keeps at least
the same top-1 after the distillation (−0.5 tolerance, seed-paired mean) in 6 of 6 families, and ≥ 1 point
more in ≥ 3 of 6. The table's allocation is run twice per keep (hybrid-table: at the latency the table
predicts for hybrid; hybrid-table-macs: at hybrid's MACs), and its top-1 at hybrid's measured latency is read
between those two measured points (a table whose predictions are off still gets a fair comparison).

Timings are only worth keeping on an idle machine: the script prints the load average and warns.

    python benchmarks/accuracy_latency.py --results /tmp/acc/accuracy_retention_latency_table.json \\
        --onnx /tmp/acc/onnx                                  # writes results/accuracy_latency_table.*
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from rmtdeploy.benchmark import machine_conditions, measure_onnx_latency  # noqa: E402
from rmtdeploy.io import atomic_write_json, atomic_write_text  # noqa: E402

RESULTS = Path(__file__).parent / "results"
CRITERIA = ("hybrid", "hybrid-table", "hybrid-table-macs")
TOLERANCE = -0.5  # top-1 points
BETTER = 1.0
IDLE_LOAD = 0.5


def time_points(results: dict, onnx: Path, threads: int, runs: int) -> None:
    """Each (family, seed): the dense model and its exported points timed interleaved; adds measured_ms,
    speedup (p10–p90) and speedup ÷ MAC reduction to each point."""
    from rich.progress import Progress

    groups: dict[tuple[str, int], list[dict]] = {}
    for point in results["points"]:
        if point.get("onnx") and point["criterion"] in CRITERIA:
            groups.setdefault((point["family"], point["seed"]), []).append(point)
    with Progress() as progress:
        bar = progress.add_task("timing (family, seed) groups", total=len(groups))
        for (family, seed), points in groups.items():
            labels = {f"{p['criterion']}-{p['keep']:g}": p for p in points}
            paths = {"dense": str(onnx / f"{family}-s{seed}-dense.onnx"),
                     **{label: str(onnx / p["onnx"]) for label, p in labels.items()}}  # fmt: skip
            report = measure_onnx_latency(paths, threads=threads, runs=runs, warmup=10,
                                          pairs=[("dense", label) for label in labels], pilot=True)  # fmt: skip
            dense_ms = report.models["dense"].median_ms
            for s in report.speedups:
                labels[s.candidate].update(
                    dense_ms=round(dense_ms, 4), measured_ms=round(dense_ms / s.median, 4),
                    speedup=round(s.median, 3), speedup_p10=round(s.p10, 3), speedup_p90=round(s.p90, 3),
                    speedup_per_mac_cut=round(s.median * labels[s.candidate]["macs_kept"], 3),
                )  # fmt: skip
            progress.advance(bar)


def _table_at(hybrid: dict, table: list[dict]) -> tuple[float | None, str]:
    """The table's top-1 at hybrid's measured latency, from its two points (equal predicted latency, equal
    MACs): linear between them when they bracket it; the slower one's when both are faster (a faster point at
    that accuracy dominates); None when both are slower (the table reached no point that fast)."""
    ms = hybrid["measured_ms"]
    (fast, slow) = sorted(table, key=lambda p: p["measured_ms"])
    if fast["measured_ms"] <= ms <= slow["measured_ms"]:
        span = slow["measured_ms"] - fast["measured_ms"]
        w = (ms - fast["measured_ms"]) / span if span > 0 else 0.5
        return fast["top1_distilled"] + w * (slow["top1_distilled"] - fast["top1_distilled"]), "bracketed"
    if ms > slow["measured_ms"]:
        return slow["top1_distilled"], "both faster"
    return None, "both slower"


def goals(points: list[dict], families: list[str], keeps: list[float]) -> list[dict]:
    """Per (family, keep): the table's top-1 at hybrid's measured latency against hybrid's, paired by seed."""
    rows = []
    for family in families:
        for keep in keeps:
            by = {
                (p["criterion"], p["seed"]): p for p in points if p["family"] == family and p["keep"] == keep
            }
            seeds = sorted({s for _, s in by if all((c, s) in by for c in CRITERIA)})
            if not seeds:
                continue
            at = {
                s: _table_at(by[("hybrid", s)], [by[("hybrid-table", s)], by[("hybrid-table-macs", s)]])
                for s in seeds
            }
            reached = [s for s in seeds if at[s][0] is not None]
            gap = [at[s][0] - by[("hybrid", s)]["top1_distilled"] for s in reached]

            def mean(criterion, key, seeds=seeds, by=by):
                return round(statistics.mean(by[(criterion, s)][key] for s in seeds), 4)

            mean_gap = statistics.mean(gap) if gap else None
            met = len(reached) == len(seeds) and mean_gap >= TOLERANCE
            rows.append({
                "family": family, "keep": keep, "seeds": seeds, "how": {s: at[s][1] for s in seeds},
                "top1_hybrid": mean("hybrid", "top1_distilled"),
                "top1_table_at_latency": round(statistics.mean(at[s][0] for s in reached), 2) if reached else None,
                "gap": round(mean_gap, 2) if gap else None, "gap_min": round(min(gap), 2) if gap else None,
                **{f"ms_{c}": mean(c, "measured_ms") for c in CRITERIA},
                **{f"macs_{c}": mean(c, "macs_kept") for c in CRITERIA},
                **{f"top1_{c}": mean(c, "top1_distilled") for c in CRITERIA},
                "speedup_per_mac_cut_hybrid": mean("hybrid", "speedup_per_mac_cut"),
                "speedup_per_mac_cut_table": mean("hybrid-table-macs", "speedup_per_mac_cut"),
                "met": met, "better": met and mean_gap >= BETTER,
            })  # fmt: skip
    return rows


def markdown(rows: list[dict], conditions: dict) -> str:
    lines = [
        "# Accuracy against measured latency: the latency table's allocation vs hybrid's MAC allocation", "",
        f"`{conditions['what']}` on {conditions['cpu']} ({conditions['cpu_count']} cores), ONNX Runtime "
        f"{conditions['onnxruntime']}, {conditions['threads']} threads on one shared pool, batch 1, {conditions['runs']} "
        f"interleaved rounds after 10 warm-up per (family, seed) group (dense + its pruned models); load average "
        f"at start {conditions['load_average_at_start']}. Accuracy: `{conditions['accuracy_run']}` ({conditions['dataset']}, "
        f"{conditions['image_size']} px, top-1 after the short distillation, mean over seeds).", "",
        "Per (family, keep) and seed, hybrid (MAC allocation) gives one point on the accuracy-latency plane; the "
        "table's allocation gives two: at the latency the table predicts for hybrid (`table@ms`) and at hybrid's "
        "MACs (`table@MACs`). The table's top-1 at hybrid's *measured* latency is read between its two points "
        "(linear when they bracket it; the slower one's when both are faster; none when both are slower).", "",
        "| family | keep | top-1 hybrid → table at its latency (gap, min) | measured ms hybrid / table@ms / table@MACs | "
        "MACs kept hybrid / table@ms | speedup ÷ MAC reduction hybrid / table@MACs | goal |",
        "|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for r in rows:
        if r["gap"] is None:
            cell, verdict = f"{r['top1_hybrid']:.1f} → none (table slower at both points)", "missed"
        else:
            cell = f"{r['top1_hybrid']:.1f} → {r['top1_table_at_latency']:.1f} ({r['gap']:+.1f}, {r['gap_min']:+.1f})"
            verdict = ("≥ +1" if r["better"] else "met") if r["met"] else "missed"
        lines.append(f"| {r['family']} | {r['keep']:g} | {cell} | {r['ms_hybrid']:.3f} / {r['ms_hybrid-table']:.3f} / "
                     f"{r['ms_hybrid-table-macs']:.3f} | {r['macs_hybrid']:.3f} / {r['macs_hybrid-table']:.3f} | "
                     f"{r['speedup_per_mac_cut_hybrid']:.2f} / {r['speedup_per_mac_cut_table']:.2f} | {verdict} |")  # fmt: skip
    families = list(dict.fromkeys(r["family"] for r in rows))
    met = [f for f in families if all(r["met"] for r in rows if r["family"] == f)]
    better = [f for f in families if any(r["better"] for r in rows if r["family"] == f)]
    lines += [
        "",
        f"Goal 1 (the same top-1, −0.5 tolerance, at hybrid's measured latency, both keeps): {len(met)} of "
        f"{len(families)} families ({', '.join(met) or 'none'}); the goal is 6 of 6.",
        f"Goal 2 (≥ {BETTER:g} point more at one keep or both): {len(better)} of {len(families)} "
        f"({', '.join(better) or 'none'}); the goal is ≥ 3 of 6.",
        "",
        f"![accuracy vs measured latency]({conditions['stem']}.png)",
    ]
    return "\n".join(lines) + "\n"


def plot(points: list[dict], families: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = 3
    rows = -(-len(families) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False)
    for ax, family in zip(axes.flat, families, strict=False):
        for criterion, colour in zip(CRITERIA, ("tab:blue", "tab:red", "tab:orange"), strict=True):
            mine = [
                p
                for p in points
                if p["family"] == family and p["criterion"] == criterion and "measured_ms" in p
            ]
            ax.scatter(
                [p["measured_ms"] for p in mine],
                [p["top1_distilled"] for p in mine],
                color=colour,
                alpha=0.35,
                s=14,
            )
            for keep in sorted({p["keep"] for p in mine}):
                at = [p for p in mine if p["keep"] == keep]
                ax.errorbar(statistics.mean(p["measured_ms"] for p in at), statistics.mean(p["top1_distilled"] for p in at),
                            xerr=[[max(statistics.mean(p["measured_ms"] - p["dense_ms"] / p["speedup_p90"] for p in at), 0)],
                                  [max(statistics.mean(p["dense_ms"] / p["speedup_p10"] - p["measured_ms"] for p in at), 0)]],
                            fmt="o", color=colour, capsize=3,
                            label=f"{criterion}" if keep == max(p["keep"] for p in mine) else None)  # fmt: skip
                ax.annotate(f"{keep:g}", (statistics.mean(p["measured_ms"] for p in at),
                                          statistics.mean(p["top1_distilled"] for p in at)), fontsize=7)  # fmt: skip
        ax.set_title(family)
        ax.set_xlabel("measured ms (ORT CPU, p10–p90 bars)")
        ax.set_ylabel("top-1 % after distillation")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(families) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.suptitle("Accuracy vs measured latency: hybrid (MAC allocation) and the latency table's allocation")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--results", type=Path, required=True, help="the accuracy_retention.py JSON")
    parser.add_argument("--onnx", type=Path, required=True, help="its --export-onnx folder")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=80)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--stem", default="accuracy_latency_table")
    args = parser.parse_args(argv)
    results = json.loads(args.results.read_text())
    load = os.getloadavg()
    print(f"load average at start (1 min): {load[0]:.2f}", flush=True)
    if load[0] > IDLE_LOAD:
        print(f"WARNING: the machine is busy (1-min load {load[0]:.2f} > {IDLE_LOAD}): these timings are NOT valid",
              file=sys.stderr, flush=True)  # fmt: skip
    started = time.perf_counter()
    time_points(results, args.onnx, args.threads, args.runs)
    points = [p for p in results["points"] if "measured_ms" in p]
    families = list(dict.fromkeys(p["family"] for p in points))
    rows = goals(points, families, sorted({p["keep"] for p in points}, reverse=True))
    machine = machine_conditions()
    conditions = {
        "what": " ".join(["benchmarks/accuracy_latency.py", *(sys.argv[1:] if argv is None else argv)]),
        "accuracy_run": results["conditions"]["what"], "dataset": results["conditions"]["settings"]["dataset"],
        "image_size": results["conditions"]["settings"]["image_size"], "cpu": machine["cpu_model"], "cpu_count": machine["cpu_count"],
        "onnxruntime": machine.get("onnxruntime_version"), "threads": args.threads, "runs": args.runs,
        "load_average_at_start": [round(v, 2) for v in load], "wall_s": round(time.perf_counter() - started, 1),
        "stem": args.stem,
    }  # fmt: skip
    text = markdown(rows, conditions)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(
        args.out / f"{args.stem}.json", {"conditions": conditions, "goals": rows, "points": points}
    )
    atomic_write_text(args.out / f"{args.stem}.md", text)
    plot(points, families, args.out / f"{args.stem}.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
