"""Speedup through the user's commands: `rmtdeploy prune` then `rmtdeploy bench`, six families.

For each model (random weights: a graph's speed does not depend on its values; Hiera's zero-initialised
head does not matter for timing), ``rmtdeploy.prune`` to keep-macs 0.5 with the default strategy for
target ``cpu-ort`` (its channel multiple: 16 with AVX-512, else 8), then ``rmtdeploy.bench``: dense and
pruned exported by ``rmtdeploy.exporting.export_onnx`` in ONNX Runtime's form and timed interleaved on one
shared ORT thread pool, batch 1. The goal (issue 10): speedup >= 0.85 x the MAC reduction in every family.

    python benchmarks/deploy_speedup.py                    # the small variants, 2 threads, 60 rounds
    python benchmarks/deploy_speedup.py --models resnet50 convnext_tiny --out /tmp/ds
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import rmtdeploy  # noqa: E402
from rmtdeploy.benchmark import machine_conditions  # noqa: E402
from rmtdeploy.io import atomic_write_json, atomic_write_text  # noqa: E402
from rmtdeploy.models import ModelSource  # noqa: E402

SMALL = ("vit_tiny_patch16_224", "deit_small_distilled_patch16_224", "swin_tiny_patch4_window7_224",
         "convnext_atto", "hiera_tiny_224", "resnet18")  # fmt: skip
GOAL = 0.85
RESULTS = Path(__file__).parent / "results"


def run_model(name: str, args, tmp: Path) -> dict:
    pruned = tmp / f"{name}-pruned"
    started = time.perf_counter()
    prune = rmtdeploy.prune(ModelSource(name, "random"), pruned, keep_macs=args.keep, target="cpu-ort",
                            latency_aware=args.latency_aware)  # fmt: skip
    bench = rmtdeploy.bench(pruned, tmp / f"{name}-bench", threads=args.threads, runs=args.runs, warmup=10)
    data = bench.to_dict()
    row = data["efficiency"][0]
    out = {
        "model": name, "strategy": prune.plan["strategy"]["name"], "round_to": prune.round_to,
        "latency_allocation": (prune.plan.get("latency_allocation") or {}).get("chosen"),
        "macs_kept": round(prune.result.macs_kept, 4), "mac_reduction": round(row["mac_reduction"], 3),
        "speedup": round(row["speedup"], 3), "p10": round(data["speedups"][0]["p10"], 3),
        "p90": round(data["speedups"][0]["p90"], 3), "efficiency": round(row["efficiency"], 3),
        "dense_ms": round(data["latency"]["dense"]["median_ms"], 3),
        "pruned_ms": round(data["latency"]["pruned"]["median_ms"], 3), "wall_s": round(time.perf_counter() - started, 1),
    }  # fmt: skip
    print(json.dumps(out), flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", nargs="+", default=list(SMALL))
    parser.add_argument("--latency-aware", action="store_true",
                        help="prune with the latency-aware allocation (the one measured fastest here)")  # fmt: skip
    parser.add_argument("--keep", type=float, default=0.5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=60)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--stem", default="deploy_speedup")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="deploy_speedup-") as tmp:
        rows = [run_model(name, args, Path(tmp)) for name in args.models]
    machine = machine_conditions()
    conditions = {"what": " ".join(["benchmarks/deploy_speedup.py", *(sys.argv[1:] if argv is None else argv)]),
                  "cpu": machine["cpu_model"], "simd": machine["cpu_simd_flags"], "cpu_count": machine["cpu_count"],
                  "threads": args.threads, "runs": args.runs, "batch": 1, "thread_pool": "shared",
                  "wall_s": round(time.perf_counter() - started, 1), "versions": {k: v for k, v in machine.items() if k.endswith("_version")}}  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out / f"{args.stem}.json", {"conditions": conditions, "results": rows})
    lines = [
        "# Speedup through `rmtdeploy prune` + `rmtdeploy bench` (ONNX Runtime CPU)", "",
        f"`{conditions['what']}` on {conditions['cpu']} ({conditions['cpu_count']} cores; {', '.join(conditions['simd'])}), "
        f"ORT {conditions['versions'].get('onnxruntime_version')}, {args.threads} threads on one shared pool, batch 1, "
        f"{args.runs} interleaved rounds after 10 warm-up; random weights, default strategy"
        f"{' with the latency-aware allocation' if args.latency_aware else ''}, target cpu-ort; "
        f"wall {conditions['wall_s'] / 60:.1f} min. Goal: speedup ≥ {GOAL} × MAC reduction.", "",
        "| model | MACs kept | MAC reduction | speedup (p10–p90) | speedup ÷ MAC reduction | dense ms | pruned ms |",
        "|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for r in rows:
        flag = "" if r["efficiency"] >= GOAL else " ✗"
        chose = f" ({r['latency_allocation']})" if r.get("latency_allocation") else ""
        lines.append(f"| {r['model']}{chose} | {r['macs_kept']:.3f} | ×{r['mac_reduction']:.2f} | ×{r['speedup']:.2f} "
                     f"(×{r['p10']:.2f}–×{r['p90']:.2f}) | {r['efficiency']:.3f}{flag} | {r['dense_ms']:.2f} | {r['pruned_ms']:.2f} |")  # fmt: skip
    atomic_write_text(args.out / f"{args.stem}.md", "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
