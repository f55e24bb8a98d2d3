"""Pruning x INT8 on real data: dense fp32, pruned fp32 and pruned INT8, top-1 and ONNX Runtime latency.

Per family: the accuracy benchmark's dense model trained on MNIST-5k at 32x32 (cached, seed 0), pruned by
the default strategy (hybrid) to keep-macs 0.5 and fine-tuned with the default recipe
(``FinetuneRecipe()``); dense and pruned exported with ``export_onnx`` (ONNX Runtime form, dynamic batch),
the pruned graph quantized by ``rmtdeploy.exporting.int8.quantize_int8`` (Q/DQ on Conv/MatMul/Gemm,
per-channel symmetric int8 weights, uint8 activations for ONNX Runtime, MinMax on 256 training images). Top-1 on the whole validation split through
ONNX Runtime; latency: the three graphs interleaved on one shared ORT pool, batch 1.

    python benchmarks/int8_accuracy.py                          # six families (~7 min on 2 cores)
    python benchmarks/int8_accuracy.py --families resnet --out /tmp/int8 --epochs 1
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
import rmtdeploy.retention as retention  # noqa: E402  (the trained models)
from rmtdeploy.benchmark import machine_conditions, measure_onnx_latency  # noqa: E402
from rmtdeploy.data import open_data  # noqa: E402
from rmtdeploy.exporting import export_onnx  # noqa: E402
from rmtdeploy.exporting.int8 import classify, quantize_int8  # noqa: E402
from rmtdeploy.finetuning.scratch import CACHE as TRAINED_CACHE  # noqa: E402
from rmtdeploy.io import atomic_write_json, atomic_write_text  # noqa: E402

RESULTS = Path(__file__).parent / "results"
CALIBRATION_IMAGES = 256


def batches(source, model, split: str, limit: int | None = None, size: int = 64):
    dataset = source.dataset(split, model)
    if limit is not None:
        dataset = torch.utils.data.Subset(dataset, range(min(limit, len(dataset))))
    return [(x.numpy(), y.numpy()) for x, y in torch.utils.data.DataLoader(dataset, batch_size=size)]


def run_family(family: str, args, tmp: Path) -> dict:
    from rmtdeploy.finetuning.recipe import FinetuneRecipe
    from rmtdeploy.finetuning.trainer import train_in_memory
    from rmtdeploy.scores import get_strategy

    settings = retention.Settings()
    dense, _ = retention.train_dense(family, 0, settings, TRAINED_CACHE, lambda m: print(m, flush=True))
    example = torch.zeros(1, 3, settings.image_size, settings.image_size)
    pruned = get_strategy("hybrid").prune(dense, keep_macs=args.keep, round_to=settings.round_to,
                                          example_inputs=example).model  # fmt: skip
    recipe = FinetuneRecipe(**({"epochs": args.epochs} if args.epochs else {}))
    started = time.perf_counter()
    train_in_memory(pruned, dense, settings.dataset, recipe=recipe, keep="last")
    finetune_s = time.perf_counter() - started
    source = open_data(settings.dataset)
    paths = {"dense": tmp / f"{family}-dense.onnx", "pruned": tmp / f"{family}-pruned.onnx"}
    export_onnx(dense, paths["dense"], overwrite=True)
    export_onnx(pruned, paths["pruned"], overwrite=True)
    calibration = (x for x, _ in batches(source, pruned, "train", CALIBRATION_IMAGES, 32))
    quantized = quantize_int8(paths["pruned"], tmp / f"{family}-pruned.int8.onnx", calibration,
                              calibration=settings.dataset, backend=args.backend, overwrite=True)  # fmt: skip
    paths["pruned-int8"] = quantized.path
    val = batches(source, pruned, "val")
    labels = np.concatenate([y for _, y in val])
    top1 = {
        label: round(float((classify(path, val) == labels).mean() * 100), 2) for label, path in paths.items()
    }
    latency = measure_onnx_latency({k: str(v) for k, v in paths.items()}, threads=args.threads, runs=args.runs,
                                   input_shape=(3, settings.image_size, settings.image_size))  # fmt: skip
    row = {
        "family": family, "top1": top1, "val_images": int(labels.size),
        "median_ms": {k: round(s.median_ms, 3) for k, s in latency.models.items()},
        "speedup_vs_dense": {s.candidate: round(s.median, 3) for s in latency.speedups},
        "int8_ops": quantized.int8_ops, "float_ops": quantized.float_ops, "finetune_s": round(finetune_s, 1),
        "int8_mb": round(quantized.file_bytes / 1e6, 2), "fp32_mb": round(paths["pruned"].stat().st_size / 1e6, 2),
    }  # fmt: skip
    print(json.dumps(row), flush=True)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--families", nargs="+", default=list(retention.FAMILIES), choices=list(retention.FAMILIES)
    )
    parser.add_argument("--keep", type=float, default=0.5)
    parser.add_argument("--epochs", type=int, help="override the fine-tune recipe's epochs")
    parser.add_argument(
        "--backend",
        default="onnxruntime",
        choices=("onnxruntime", "tensorrt"),
        help="INT8 form: U8S8 for ONNX Runtime (default) or TensorRT's symmetric S8S8",
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="int8-") as tmp:
        rows = [run_family(f, args, Path(tmp)) for f in args.families]
    machine = machine_conditions()
    what = " ".join(["benchmarks/int8_accuracy.py", *(sys.argv[1:] if argv is None else argv)])
    conditions = {"what": what, "cpu": machine["cpu_model"], "cpu_count": machine["cpu_count"], "threads": args.threads,
                  "runs": args.runs, "wall_s": round(time.perf_counter() - started, 1),
                  "onnxruntime": machine.get("onnxruntime_version"), "torch": torch.__version__}  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out / "int8_accuracy.json", {"conditions": conditions, "results": rows})
    lines = [
        "# Pruning × INT8 on real data (ONNX Runtime CPU)", "",
        f"`{what}` on {conditions['cpu']} ({conditions['cpu_count']} cores), ORT {conditions['onnxruntime']}; wall "
        f"{conditions['wall_s'] / 60:.1f} min. MNIST-5k at 32×32 (val {rows[0]['val_images'] if rows else '?'} images), "
        f"seed 0; pruned = hybrid keep-macs {args.keep} + the default fine-tune recipe; INT8 = Q/DQ on "
        f"Conv/MatMul/Gemm, per-channel symmetric int8 weights, activations in the {args.backend} form (uint8 "
        f"asymmetric for onnxruntime, int8 symmetric for tensorrt), MinMax on {CALIBRATION_IMAGES} training images. Latency: batch 1, "
        f"{args.threads} threads on one shared ORT pool, {args.runs} interleaved rounds, median.", "",
        "| family | top-1 dense fp32 | pruned fp32 | pruned INT8 | ms dense / pruned / INT8 | speedup pruned / INT8 vs dense | int8 ops | kept in float |",
        "|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for r in rows:
        t, ms, sp = r["top1"], r["median_ms"], r["speedup_vs_dense"]
        lines.append(
            f"| {r['family']} | {t['dense']:.1f} | {t['pruned']:.1f} | {t['pruned-int8']:.1f} | "
            f"{ms['dense']:.2f} / {ms['pruned']:.2f} / {ms['pruned-int8']:.2f} | ×{sp['pruned']:.2f} / ×{sp['pruned-int8']:.2f} | "
            f"{', '.join(f'{n} {op}' for op, n in r['int8_ops'].items())} | "
            f"{', '.join(f'{n} {op}' for op, n in r['float_ops'].items())} |"
        )
    atomic_write_text(args.out / "int8_accuracy.md", "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
