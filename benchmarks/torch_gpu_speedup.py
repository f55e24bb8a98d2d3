"""GPU check for issue 10: dense vs pruned in PyTorch CUDA fp16, eager and CUDA graphs, batch 1 and 32.

For each family's model (random weights, pruned by the default strategy to keep-macs 0.5 for target
``gpu-fp16``: channel multiple 8), ``rmtdeploy.benchmark.measure_torch_latency`` times dense and pruned
interleaved on the GPU in fp16, eager and replayed from a CUDA graph (``--compile`` adds
``torch.compile(mode="reduce-overhead")``, minutes of compilation per model), at each batch, and reports
the speedup next to the MAC reduction. Sized for <= 6 minutes of device time on an H100/H200 class GPU.

    python benchmarks/torch_gpu_speedup.py --out $OUT          # on the GPU machine
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from rmtdeploy.benchmark import machine_conditions, measure_torch_latency  # noqa: E402
from rmtdeploy.io import atomic_write_json, atomic_write_text  # noqa: E402

MODELS = ("vit_small_patch16_224", "deit_small_patch16_224", "swin_tiny_patch4_window7_224", "convnext_tiny",
          "hiera_tiny_224", "resnet50")  # fmt: skip
RESULTS = Path(__file__).parent / "results"


def pruned_pair(name: str, keep: float):
    import timm

    from rmtdeploy.scores import get_strategy
    from rmtdeploy.targets import load_target

    torch.manual_seed(0)
    dense = timm.create_model(name, pretrained=False).eval()
    result = get_strategy("hybrid").prune(
        dense, keep_macs=keep, round_to=load_target("gpu-fp16").channel_multiple
    )
    return dense, result.model.eval(), result.macs_kept


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 32])
    parser.add_argument("--keep", type=float, default=0.5)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--compile", action="store_true", help="also torch.compile(mode='reduce-overhead')")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("torch_gpu_speedup: no CUDA GPU here")
    modes = {"eager": {}, "cuda-graph": {"cuda_graph": True}}
    if args.compile:
        modes["compile"] = {"compile_mode": "reduce-overhead"}
    rows, started = [], time.perf_counter()
    for name in args.models:
        dense, pruned, kept = pruned_pair(name, args.keep)
        for batch in args.batches:
            for mode, options in modes.items():
                report = measure_torch_latency({"dense": dense, "pruned": pruned}, batch=batch, threads=1, warmup=10,
                                               runs=args.runs, device="cuda", precision="fp16", **options)  # fmt: skip
                s = report.speedups[0]
                rows.append({"model": name, "batch": batch, "mode": mode, "macs_kept": round(kept, 4),
                             "mac_reduction": round(1 / kept, 3), "speedup": round(s.median, 3),
                             "p10": round(s.p10, 3), "p90": round(s.p90, 3),
                             "dense_ms": round(report.models["dense"].median_ms, 3),
                             "pruned_ms": round(report.models["pruned"].median_ms, 3),
                             "efficiency": round(s.median * kept, 3)})  # fmt: skip
                print(json.dumps(rows[-1]), flush=True)
        dense.cpu(), pruned.cpu()
    machine = machine_conditions()
    conditions = {"what": "benchmarks/torch_gpu_speedup.py", "gpu": torch.cuda.get_device_name(), "cuda": torch.version.cuda,
                  "torch": torch.__version__, "cpu": machine["cpu_model"], "runs": args.runs,
                  "wall_s": round(time.perf_counter() - started, 1)}  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out / "torch_gpu_speedup.json", {"conditions": conditions, "results": rows})
    lines = ["# PyTorch CUDA fp16: dense vs pruned", "",
             f"{conditions['gpu']}, CUDA {conditions['cuda']}, torch {conditions['torch']}; {args.runs} interleaved rounds "
             f"after 10 warm-up, median of per-round ratios; random weights, hybrid keep-macs {args.keep}, target gpu-fp16.", "",
             "| model | batch | mode | MAC reduction | speedup (p10–p90) | speedup ÷ MAC reduction | dense ms | pruned ms |",
             "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    lines += [f"| {r['model']} | {r['batch']} | {r['mode']} | ×{r['mac_reduction']:.2f} | ×{r['speedup']:.2f} "
              f"(×{r['p10']:.2f}–×{r['p90']:.2f}) | {r['efficiency']:.2f} | {r['dense_ms']:.3f} | {r['pruned_ms']:.3f} |"
              for r in rows]  # fmt: skip
    atomic_write_text(args.out / "torch_gpu_speedup.md", "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
