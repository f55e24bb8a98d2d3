"""Latency-aware allocation vs MAC-only allocation at equal MACs, ONNX Runtime CPU, six families.

For each model (random weights: speed does not depend on the values), the default strategy (hybrid)
prunes to keep-macs 0.5 for target ``cpu-ort`` twice: with the MAC-only allocation (every unit the same
base ratio) and latency-aware (``latency_weights="measure"``: the dense model profiled once on ORT CPU,
each component's time per MAC steering its ratio; ``rmtdeploy.pruning.latency``). Both pruned graphs
(and the dense one) are exported in ONNX Runtime's form and timed interleaved on one shared pool, batch 1;
the table gives both MAC fractions and the per-round latency ratio MAC-only / latency-aware (> 1: the
latency-aware model is faster). Goal (issue 10): >= 5% lower median latency in at least 4 of 6 families.
Accuracy: ``accuracy_retention.py --criteria hybrid hybrid-latency`` (its results file is quoted in the
notes beside this one).

    python benchmarks/latency_allocation.py                     # six small models, 2 threads, 80 rounds
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
from rmtdeploy.exporting import export_onnx  # noqa: E402
from rmtdeploy.io import atomic_write_json, atomic_write_text  # noqa: E402
from rmtdeploy.pruning.latency import WEIGHT_CLIP  # noqa: E402

MODELS = ("vit_tiny_patch16_224", "deit_small_distilled_patch16_224", "swin_tiny_patch4_window7_224",
          "convnext_atto", "hiera_tiny_224", "resnet18")  # fmt: skip
GOAL = 1.05
RESULTS = Path(__file__).parent / "results"


def run_model(name: str, args, tmp: Path) -> dict:
    import timm

    from rmtdeploy.scores import get_strategy
    from rmtdeploy.targets import load_target

    torch.manual_seed(0)
    dense = timm.create_model(name, pretrained=False).eval()
    round_to = load_target("cpu-ort").channel_multiple
    strategy = get_strategy("hybrid")
    started = time.perf_counter()
    plain = strategy.prune(dense, keep_macs=args.keep, round_to=round_to)
    aware = strategy.prune(dense, keep_macs=args.keep, round_to=round_to, latency_weights="measure")
    prune_s = time.perf_counter() - started
    paths = {}
    for label, model in (("dense", dense), ("mac-only", plain.model), ("latency-aware", aware.model)):
        paths[label] = str(tmp / f"{name}-{label}.onnx")
        export_onnx(model.eval(), paths[label], target="cpu-ort", overwrite=True)
    report = measure_onnx_latency(paths, threads=args.threads, runs=args.runs, warmup=10,
                                  pairs=[("mac-only", "latency-aware"), ("dense", "mac-only"), ("dense", "latency-aware")])  # fmt: skip
    ratio = report.speedups[0]
    low, high = WEIGHT_CLIP
    weights = [min(max(w, low), high) for w in aware.plan.get("latency_weights", {}).values()]
    row = {
        "model": name, "macs_kept": {"mac-only": round(plain.macs_kept, 4), "latency-aware": round(aware.macs_kept, 4)},
        "median_ms": {k: round(s.median_ms, 3) for k, s in report.models.items()},
        "ratio": round(ratio.median, 3), "p10": round(ratio.p10, 3), "p90": round(ratio.p90, 3),
        # The budget allows ±3%: the ratio at equal MACs, taking latency as proportional to MACs near the target.
        "ratio_equal_macs": round(ratio.median * aware.macs_kept / plain.macs_kept, 3),
        "speedup_vs_dense": {s.candidate: round(s.median, 3) for s in report.speedups[1:]},
        "weights_range": [min(weights), max(weights)] if weights else None,
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
    parser.add_argument("--out", type=Path, default=RESULTS)
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
    atomic_write_json(args.out / "latency_allocation.json", {"conditions": conditions, "results": rows})
    met = sum(r["ratio_equal_macs"] >= GOAL for r in rows)
    lines = [
        "# Latency-aware vs MAC-only allocation (ONNX Runtime CPU)", "",
        f"`{what}` on {conditions['cpu']} ({conditions['cpu_count']} cores), ORT {conditions['onnxruntime']}, "
        f"{args.threads} threads on one shared pool, batch 1, {args.runs} interleaved rounds after 10 warm-up; "
        f"hybrid keep-macs {args.keep}, target cpu-ort, random weights; wall {conditions['wall_s'] / 60:.1f} min.", "",
        "| model | MACs kept MAC-only / latency-aware | ms dense / MAC-only / latency-aware | MAC-only ÷ latency-aware (p10–p90) | same, at equal MACs | component weights (clipped) |",
        "|---|---|---|---|---|---|",
    ]  # fmt: skip
    for r in rows:
        ms, kept, w = r["median_ms"], r["macs_kept"], r["weights_range"]
        lines.append(f"| {r['model']} | {kept['mac-only']:.3f} / {kept['latency-aware']:.3f} | {ms['dense']:.2f} / "
                     f"{ms['mac-only']:.2f} / {ms['latency-aware']:.2f} | ×{r['ratio']:.3f} (×{r['p10']:.3f}–×{r['p90']:.3f}) | ×{r['ratio_equal_macs']:.3f} | "
                     f"{'–' if not w else f'{w[0]:.2f}–{w[1]:.2f}'} |")  # fmt: skip
    lines += [
        "",
        "At equal MACs: the ratio × (latency-aware MACs ÷ MAC-only MACs), since the budget search lands "
        "within ±3% of the target; latency is taken as proportional to MACs over that small gap.",
        f"Goal: ×{GOAL} or more at equal MACs in at least 4 of 6 families; met in {met} of {len(rows)}.",
    ]
    atomic_write_text(args.out / "latency_allocation.md", "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
