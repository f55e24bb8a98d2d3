"""Latency-aware allocation vs MAC-only allocation at equal MACs, ONNX Runtime CPU, six families.

For each model (random weights: speed does not depend on the values), the default strategy (hybrid)
prunes to keep-macs 0.5 for target ``cpu-ort`` with the MAC-only allocation (every unit its base ratio)
and latency-aware (``latency_weights="measure"``: MAC-only and up to six tilted allocations met at the same
budget and timed on ORT CPU while pruning, the fastest kept; ``rmtdeploy.pruning.latency``). With
``--headroom`` the same tilts at ×2 and a doubled channel multiple are timed too: how much any
reallocation of the same MACs could buy on this CPU. All graphs (and the dense one) are exported in ONNX
Runtime's form and timed again here, interleaved on one shared pool, batch 1 (an independent measurement:
the choice made while pruning is not trusted); the table gives each allocation's latency ratio to
MAC-only at equal MACs. Goal (issue 10): >= 5% lower median latency in at least 4 of 6 families.
Accuracy: ``accuracy_retention.py --criteria hybrid hybrid-latency`` (quoted in docs/strategies.md).

    python benchmarks/latency_allocation.py --headroom --stem latency_allocation_avx2   # 2 threads, 80 rounds
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from rmtdeploy.benchmark import machine_conditions, measure_onnx_latency  # noqa: E402
from rmtdeploy.benchmark.allocation import fastest_allocation  # noqa: E402
from rmtdeploy.exporting import export_onnx  # noqa: E402
from rmtdeploy.io import atomic_write_json, atomic_write_text  # noqa: E402
from rmtdeploy.pruning.latency import TILT, tilted_weights, width_kind_weights  # noqa: E402

MODELS = ("vit_tiny_patch16_224", "deit_small_distilled_patch16_224", "swin_tiny_patch4_window7_224",
          "convnext_atto", "hiera_tiny_224", "resnet18")  # fmt: skip
GOAL = 1.05
HEADROOM_TILT = 2.0  # the weight clip of the first version, whose accuracy cost was measured
RESULTS = Path(__file__).parent / "results"


def run_model(name: str, args, tmp: Path) -> dict:
    import timm

    from rmtdeploy.scores import get_strategy
    from rmtdeploy.targets import load_target

    torch.manual_seed(0)
    dense = timm.create_model(name, pretrained=False).eval()
    round_to = load_target("cpu-ort").channel_multiple
    strategy = get_strategy("hybrid")
    # label -> prune keyword arguments; "mac-only" is the baseline every ratio is taken against.
    variants: dict[str, dict] = {"mac-only": {}, "latency-aware": {"latency_weights": fastest_allocation}}
    started = time.perf_counter()
    pruned = {
        label: strategy.prune(dense, keep_macs=args.keep, round_to=round_to, **kw)
        for label, kw in variants.items()
    }
    if args.headroom:  # the extremes, any accuracy cost ignored: what could any reallocation buy here?
        example = torch.randn(1, *dense.default_cfg.get("input_size", (3, 224, 224)))
        extremes = tilted_weights(dense, example, tilt=HEADROOM_TILT)
        if "shared-first" in pruned["latency-aware"].plan["latency_allocation"]["gain_at_equal_macs"]:
            extremes.update(width_kind_weights(HEADROOM_TILT))
        more = {f"{label}-x{HEADROOM_TILT:g}": {"latency_weights": w} for label, w in extremes.items()}
        more[f"round-to-{2 * round_to}"] = {"round_to": 2 * round_to}
        pruned.update({label: strategy.prune(dense, keep_macs=args.keep, **{"round_to": round_to, **kw})
                       for label, kw in more.items()})  # fmt: skip
        variants.update(more)
    prune_s = time.perf_counter() - started
    paths = {}
    for label, model in (("dense", dense), *((k, r.model) for k, r in pruned.items())):
        paths[label] = str(tmp / f"{name}-{label}.onnx")
        export_onnx(model.eval(), paths[label], target="cpu-ort", overwrite=True)
    pairs = [("mac-only", label) for label in variants if label != "mac-only"] + [("dense", "mac-only")]
    report = measure_onnx_latency(paths, threads=args.threads, runs=args.runs, warmup=10, pairs=pairs)
    plain = pruned["mac-only"]
    versus = {}
    for s in report.speedups[:-1]:
        kept = pruned[s.candidate].macs_kept
        versus[s.candidate] = {
            "macs_kept": round(kept, 4), "ratio": round(s.median, 3), "p10": round(s.p10, 3), "p90": round(s.p90, 3),
            # The budget allows ±3%: the ratio at equal MACs, taking latency as proportional to MACs near the target.
            "ratio_equal_macs": round(s.median * kept / plain.macs_kept, 3),
        }  # fmt: skip
    allocation = pruned["latency-aware"].plan["latency_allocation"]
    row = {
        "model": name, "mac_only_macs_kept": round(plain.macs_kept, 4),
        "median_ms": {k: round(s.median_ms, 3) for k, s in report.models.items()},
        "dense_vs_mac_only": round(report.speedups[-1].median, 3),
        "versus_mac_only": versus, "ratio_equal_macs": versus["latency-aware"]["ratio_equal_macs"],
        "latency_aware_chose": allocation["chosen"], "gain_seen_while_choosing": allocation["gain_at_equal_macs"],
        "prune_s": round(prune_s, 1),
    }  # fmt: skip
    print(json.dumps(row), flush=True)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--keep", type=float, default=0.5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=80)
    parser.add_argument(
        "--headroom",
        action="store_true",
        help="also time hand-set extreme allocations (attention vs the rest, early vs late "
        "components, shared vs own widths, twice the channel multiple): the most any reallocation buys here",
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--stem", default="latency_allocation", help="results file names (one per CPU kind)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="latency_allocation-") as tmp:
        rows = [run_model(name, args, Path(tmp)) for name in args.models]
    machine = machine_conditions()
    what = " ".join(["benchmarks/latency_allocation.py", *(sys.argv[1:] if argv is None else argv)])
    conditions = {"what": what, "cpu": machine["cpu_model"], "cpu_count": machine["cpu_count"], "threads": args.threads,
                  "runs": args.runs, "wall_s": round(time.perf_counter() - started, 1),
                  "onnxruntime": machine.get("onnxruntime_version")}  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out / f"{args.stem}.json", {"conditions": conditions, "results": rows})
    met = sum(r["ratio_equal_macs"] >= GOAL for r in rows)
    labels = list(dict.fromkeys(k for r in rows for k in r["versus_mac_only"]))  # every model's columns
    lines = [
        "# Latency-aware vs MAC-only allocation (ONNX Runtime CPU)", "",
        f"`{what}` on {conditions['cpu']} ({conditions['cpu_count']} cores), ORT {conditions['onnxruntime']}, "
        f"{args.threads} threads on one shared pool, batch 1, {args.runs} interleaved rounds after 10 warm-up; "
        f"hybrid keep-macs {args.keep}, target cpu-ort, random weights; wall {conditions['wall_s'] / 60:.1f} min.", "",
        "Each cell: MAC-only latency ÷ this allocation's latency at equal MACs (> 1: faster than MAC-only), "
        "and in brackets the per-round p10–p90 of the raw ratio.", "",
        "| model | ms dense / MAC-only | " + " | ".join(labels) + " |",
        "|---|---|" + "---|" * len(labels),
    ]  # fmt: skip
    for r in rows:
        ms, v = r["median_ms"], r["versus_mac_only"]
        cells = [
            f"×{v[k]['ratio_equal_macs']:.3f} (×{v[k]['p10']:.2f}–{v[k]['p90']:.2f})" if k in v else "–"
            for k in labels
        ]
        lines.append(f"| {r['model']} | {ms['dense']:.2f} / {ms['mac-only']:.2f} | " + " | ".join(cells) + " |")  # fmt: skip
    lines += [
        "",
        "At equal MACs: the ratio × (this allocation's MACs ÷ MAC-only MACs), since the budget search lands "
        "within ±3% of the target; latency is taken as proportional to MACs over that small gap.",
        f'latency-aware: `latency_weights="measure"`: the MAC-only allocation and up to six tilted by ×{TILT:g} '
        "(first half of the components in model order cut harder, the second, attention, the rest, shared "
        "residual widths, each block's own), timed "
        "while pruning; the fastest kept if it gains 2% (its choice is in the JSON). The *-x2 columns: the same "
        "tilts at ×2, any accuracy cost ignored: about the most a reallocation of these MACs buys here. "
        "round-to: twice the target's channel multiple.",
        f"Goal (latency-aware): ×{GOAL} or more at equal MACs in at least 4 of 6 families; met in {met} of {len(rows)}.",
    ]
    if args.headroom:
        best = {
            r["model"]: max(r["versus_mac_only"].items(), key=lambda kv: kv[1]["ratio_equal_macs"])
            for r in rows
        }
        lines.append("Best allocation per model (any accuracy cost ignored): " + "; ".join(
            f"{m} {label} ×{v['ratio_equal_macs']:.3f}" for m, (label, v) in best.items()) + ".")  # fmt: skip
    atomic_write_text(args.out / f"{args.stem}.md", "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
