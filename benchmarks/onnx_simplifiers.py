"""Which ONNX simplifier should export use: onnxslim or onnxsim (the one this project was specified with)?

For each family's small model (random weights, zero-initialised heads randomised; a graph's speed does
not depend on its values), pruned with the default strategy to keep-macs 0.5 at the ``cpu-ort``
target's channel multiple, the graph is exported three times through ``export_onnx``: unsimplified,
onnxslim, onnxsim. Per graph: node count, file size, the export's wall time (trace + simplify + check
+ verify), parity with PyTorch (max |diff|), and ONNX Runtime CPU latency at batch 1, the three timed
interleaved on one shared thread pool (``rmtdeploy.benchmark.measure_onnx_latency``), median and the
per-round ratio against the unsimplified graph.

    python benchmarks/onnx_simplifiers.py                 # six families, 2 threads, 60 rounds
    python benchmarks/onnx_simplifiers.py --models resnet18 --runs 20 --out /tmp/simp
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from _results import machine_conditions  # noqa: E402

from rmtdeploy.benchmark import measure_onnx_latency  # noqa: E402
from rmtdeploy.exporting import export_onnx  # noqa: E402
from rmtdeploy.io import atomic_write_json, atomic_write_text  # noqa: E402

MODELS = (
    "vit_tiny_patch16_224",
    "deit_small_distilled_patch16_224",
    "swin_tiny_patch4_window7_224",
    "convnext_atto",
    "hiera_tiny_224",
    "resnet18",
)
VARIANTS = {"none": False, "onnxslim": "onnxslim", "onnxsim": "onnxsim"}
RESULTS = Path(__file__).parent / "results"


def pruned_model(name: str, keep: float) -> torch.nn.Module:
    import timm

    from rmtdeploy.scores import get_strategy
    from rmtdeploy.targets import load_target

    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False).eval()
    head = model.get_classifier()
    if (
        isinstance(head, torch.nn.Linear) and not head.weight.any()
    ):  # Hiera's zero init: parity proves nothing
        torch.nn.init.normal_(head.weight, std=0.02)
    round_to = load_target("cpu-ort").channel_multiple
    return get_strategy("hybrid").prune(model, keep_macs=keep, round_to=round_to).model.eval()


def run_model(name: str, args, tmp: Path) -> dict:
    model = pruned_model(name, args.keep)
    row: dict = {"model": name, "keep_macs": args.keep, "variants": {}}
    paths = {}
    for label, simplify in VARIANTS.items():
        path = tmp / f"{name}-{label}.onnx"
        started = time.perf_counter()
        result = export_onnx(model, path, target="cpu-ort", simplify=simplify, overwrite=True)
        row["variants"][label] = {
            "nodes": result.num_nodes,
            "mb": round(result.file_bytes / 1e6, 2),
            "export_s": round(time.perf_counter() - started, 2),
            "max_abs_diff": result.max_abs_diff,
            "note": result.simplify_note,
        }
        paths[label] = str(path)
    report = measure_onnx_latency(
        paths,
        threads=args.threads,
        runs=args.runs,
        warmup=10,
        pairs=[("none", "onnxslim"), ("none", "onnxsim"), ("onnxsim", "onnxslim")],
    )
    for label, stats in report.models.items():
        row["variants"][label]["median_ms"] = round(stats.median_ms, 3)
        row["variants"][label]["p90_ms"] = round(stats.p90_ms, 3)
    row["speedups"] = {
        f"{s.baseline}->{s.candidate}": {
            "median": round(s.median, 3),
            "p10": round(s.p10, 3),
            "p90": round(s.p90, 3),
        }
        for s in report.speedups
    }
    row["latency_conditions"] = {
        k: report.conditions.get(k) for k in ("thread_pool", "threads", "runs", "batch")
    }
    print(name, {k: (v["nodes"], v["median_ms"]) for k, v in row["variants"].items()}, flush=True)
    return row


def table(rows: list[dict]) -> list[str]:
    lines = [
        "| model | nodes none / slim / sim | export s none / slim / sim | median ms none / slim / sim | "
        "slim vs sim (per-round ratio, p10–p90) | max abs diff slim / sim |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        v = row["variants"]
        ratio = row["speedups"]["onnxsim->onnxslim"]
        lines.append(
            f"| {row['model']} | {v['none']['nodes']} / {v['onnxslim']['nodes']} / {v['onnxsim']['nodes']} | "
            f"{v['none']['export_s']} / {v['onnxslim']['export_s']} / {v['onnxsim']['export_s']} | "
            f"{v['none']['median_ms']} / {v['onnxslim']['median_ms']} / {v['onnxsim']['median_ms']} | "
            f"×{ratio['median']:.3f} ({ratio['p10']:.3f}–{ratio['p90']:.3f}) | "
            f"{v['onnxslim']['max_abs_diff']:.1e} / {v['onnxsim']['max_abs_diff']:.1e} |"
        )
    lines += ["", "×r > 1: the onnxslim graph is faster than the onnxsim one in the same rounds."]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--keep", type=float, default=0.5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=60)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    import onnxsim
    import onnxslim

    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        rows = [run_model(name, args, Path(tmp)) for name in args.models]
    conditions = machine_conditions("benchmarks/onnx_simplifiers.py " + " ".join(argv or sys.argv[1:]), 0)
    conditions.update(
        onnxslim=onnxslim.__version__,
        onnxsim=onnxsim.__version__,
        wall_s=round(time.perf_counter() - started, 1),
        latency="ORT CPU, batch 1, one shared thread pool, interleaved rounds, 10 warm-up",
    )
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out / "onnx_simplifiers.json", {"conditions": conditions, "results": rows})
    header = (
        f"`{conditions['what']}` on {conditions['cpu']} ({conditions['cpu_count']} cores), {args.threads} ORT threads, "
        f"{args.runs} interleaved rounds; onnxslim {onnxslim.__version__}, onnxsim {onnxsim.__version__}, torch "
        f"{conditions['torch']}; wall {conditions['wall_s'] / 60:.1f} min. Models pruned by hybrid to keep-macs "
        f"{args.keep} (random weights), exported for target cpu-ort."
    )
    atomic_write_text(args.out / "onnx_simplifiers.md",
                      "\n".join(["# ONNX simplifiers: onnxslim vs onnxsim", "", header, "", *table(rows)]) + "\n")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
