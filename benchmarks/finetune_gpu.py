"""GPU check of the fine-tune loop: images/s and peak memory of a pruned model against its dense self.

Run on a CUDA machine (≤ 5 minutes): a timm model (random weights: throughput and memory do not depend on
them) is pruned by the default strategy to keep-macs 0.5; then the dense and the pruned model each train
for ``--steps`` steps of the stage's own loop (``rmtdeploy.finetuning.trainer.Trainer``: AMP float16,
channels_last, distillation from the dense teacher, AdamW) on the built-in ``mnist5k`` images resized to
224×224 (DataLoader workers). Reports median images/s over the timed steps (after ``--warmup`` steps) and
``torch.cuda.max_memory_allocated``. Writes ``results/finetune_gpu.{json,md}``.

    python benchmarks/finetune_gpu.py --model resnet50 --steps 300 --batch-size 128
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results"


class _Timer:
    """Reporter that stamps each step (CUDA-synchronised) to measure throughput."""

    def __init__(self):
        self.stamps = []

    def status(self, text):
        print(text, flush=True)

    def epoch_started(self, *args):
        pass

    def epoch_ended(self, record):
        pass

    def step(self, loss, top1):
        torch.cuda.synchronize()
        self.stamps.append(time.perf_counter())


def measure(student, teacher, data, args) -> dict:
    from rmtdeploy.finetuning.distributed import Distributed
    from rmtdeploy.finetuning.recipe import FinetuneRecipe
    from rmtdeploy.finetuning.trainer import Trainer, TrainingData

    recipe = FinetuneRecipe(epochs=100, batch_size=args.batch_size, bn_images=0)
    train = data.dataset("train", student, train=True)
    datasets = TrainingData(
        train, data.dataset("train", student), data.dataset("val", student), workers=args.workers
    )
    timer = _Timer()
    torch.cuda.reset_peak_memory_stats()
    trainer = Trainer(
        student, teacher, recipe, datasets, torch.device("cuda"), Distributed(), None, {}, timer
    )
    trainer.train_until(args.steps)
    gaps = [b - a for a, b in zip(timer.stamps[args.warmup :], timer.stamps[args.warmup + 1 :], strict=False)]
    return {
        "images_per_s": round(args.batch_size / statistics.median(gaps), 1),
        "step_ms_median": round(1e3 * statistics.median(gaps), 2),
        "step_ms_iqr": [round(1e3 * q, 2) for q in statistics.quantiles(gaps, n=4)[::2]],
        "peak_memory_mib": round(torch.cuda.max_memory_allocated() / 2**20, 1),
        "timed_steps": len(gaps),
        "amp": trainer.amp,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--keep-macs", type=float, default=0.5)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("finetune_gpu.py needs a CUDA device; none is visible to torch")
    from rmtdeploy.data import open_data
    from rmtdeploy.io import atomic_write_json, atomic_write_text
    from rmtdeploy.models import load_model
    from rmtdeploy.scores import get_strategy

    dense = load_model(args.model, weights="random", num_classes=10).model
    pruned = get_strategy("hybrid").prune(dense, keep_macs=args.keep_macs)
    data = open_data("mnist5k")
    teacher = copy.deepcopy(dense).cuda().eval()
    rows = {
        "dense": measure(copy.deepcopy(dense), teacher, data, args),
        "pruned": measure(pruned.model, teacher, data, args),
    }
    speedup = rows["pruned"]["images_per_s"] / rows["dense"]["images_per_s"]
    result = {
        "gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "model": args.model,
        "keep_macs": args.keep_macs, "macs_kept": round(pruned.macs_kept, 4), "batch_size": args.batch_size,
        "steps": args.steps, "warmup": args.warmup, "rows": rows, "train_speedup": round(speedup, 3),
    }  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out / "finetune_gpu.json", result)
    lines = [
        "# Fine-tune throughput on GPU", "",
        f"`benchmarks/finetune_gpu.py` on {result['gpu']}, torch {result['torch']}: `{args.model}` (random weights), "
        f"hybrid to keep-macs {args.keep_macs} ({pruned.macs_kept:.3f} achieved); batch {args.batch_size}, AMP "
        f"float16 + channels_last, distillation from the dense teacher; median over {rows['dense']['timed_steps']} "
        f"timed steps after {args.warmup}.", "",
        "| model | images/s | step ms (median, IQR) | peak memory MiB |", "|---|---|---|---|",
        *(f"| {name} | {r['images_per_s']} | {r['step_ms_median']} ({r['step_ms_iqr'][0]}–{r['step_ms_iqr'][1]}) | "
          f"{r['peak_memory_mib']} |" for name, r in rows.items()),
        "", f"Training speed-up of the pruned model: {speedup:.2f}×.", "",
    ]  # fmt: skip
    atomic_write_text(args.out / "finetune_gpu.md", "\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
