"""Benchmark: how much accuracy each pruning criterion keeps, on real images, at equal achieved MACs.

One small model per family (ViT, DeiT, Swin, ConvNeXt, Hiera, ResNet), trained from scratch on a built-in
real dataset (``rmtdeploy.data``, MNIST-5k by default) by the trainer ``compress --weights trained`` uses
(cached per seed), is pruned to keep-macs 0.75 / 0.5 / 0.3 by every criterion through the same pruner,
adapters and width rules:

* rmtdeploy's strategies: magnitude, rmt, hybrid, edge-budget, dynamic (its between-step distillation off,
  so every criterion gets the same fine-tune budget; it switches scoring by depth);
* torch-pruning's importances as peers: group L1 (``GroupMagnitudeImportance(p=1)``), Taylor, Hessian,
  random. Group L2 is the ``magnitude`` strategy itself (the very TP class).

Per point: top-1 right after pruning (BatchNorm recalibrated on the seed's calibration draw for CNNs),
top-1 after a fixed short label-free distillation from the dense model (``rmtdeploy.finetuning.distill``, the
same budget for every criterion), and the scoring time. Writes ``results/accuracy_retention.{json,md,png}``.
With ``--finetune default`` the second column is the fine-tune stage's default recipe instead
(``FinetuneRecipe()``: KD from the dense model over the whole training split, augmented, its default
epochs), written to ``results/accuracy_retention_finetuned.*``.

The families, the criteria, the evaluation and the criteria table are library (``rmtdeploy.retention``);
this script parses the command line, runs the (family, seed) tasks in worker processes and writes the
results, the Markdown and the plot.

    python benchmarks/accuracy_retention.py                # the full run (make bench-accuracy)
    python benchmarks/accuracy_retention.py --finetune default --criteria magnitude rmt hybrid edge-budget dynamic \
        --keeps 0.5 0.3                                    # after the default fine-tune recipe (~1.5 h)
    python benchmarks/accuracy_retention.py --dataset sign-digits --image-size 64 --keeps 0.5 0.3 \
        --seeds 2 --stem accuracy_retention_sign_digits  # the second task: photographs at 64×64
    python benchmarks/accuracy_retention.py --dataset cifar10-12k --stem accuracy_retention_cifar10
                                                           # colour photographs at 32×32 (make datasets first)
    python benchmarks/accuracy_retention.py --families mobilenetv3 efficientvit --image-size 64 --keeps 0.5 0.3 \
        --criteria magnitude rmt hybrid edge-budget dynamic --stem accuracy_retention_edge  # the edge models
    python benchmarks/accuracy_retention.py --quick --out /tmp/acc   # a CI-sized smoke run
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import multiprocessing
import os
import platform
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from pathlib import Path

import torch

from rmtdeploy.data import dataset_names
from rmtdeploy.finetuning.scratch import CACHE
from rmtdeploy.retention import (
    ABLATIONS,
    ALL_FAMILIES,
    CRITERIA,
    FAMILIES,
    SPECTRAL,
    Settings,
    family_macs,
    recipe_conditions,
    run_family_seed,
    summarise,
    val_image_count,
)

RESULTS = Path(__file__).parent / "results"
LABELS = {"magnitude": "magnitude (= TP group L2)", "tp-l1": "TP group L1", "tp-taylor": "TP Taylor",
          "tp-hessian": "TP Hessian", "tp-random": "TP random"}  # fmt: skip


# -- rendering --------------------------------------------------------------------------------------------


def _cell(stats) -> str:
    mean, std = stats
    return f"{mean:.1f} ± {std:.1f}"


def _after_text(settings: Settings, conditions: dict) -> str:
    if settings.finetune == "distill":
        return (f"after distillation ({settings.distill_steps} AdamW steps of {settings.distill_batch}, lr "
                f"{settings.distill_lr:g} cosine to 0, on {settings.distill_images} training images, label-free KD "
                "from the dense model, the same for every criterion)")  # fmt: skip
    return (f"after fine-tuning with the fine-tune stage's default recipe, the same for every criterion "
            f"(`FinetuneRecipe` {conditions.get('recipe')}: KD from the dense model on the whole augmented training "
            "split, BatchNorm re-estimated first; the last epoch is reported, not the best)")  # fmt: skip


def render_markdown(summary: dict, dense: dict, settings: Settings, conditions: dict) -> list[str]:
    lines = [
        f"Dataset `{settings.dataset}` (fixed split; val {conditions['val_images']} images), input "
        f"{settings.image_size}×{settings.image_size}; seeds {conditions['seeds']} (training seed = calibration "
        f"draw); cells: top-1 % mean ± std over seeds, **right after pruning** (BN recalibrated on "
        f"{settings.calibration_images} images) → {_after_text(settings, conditions)}. Width rules: round_to "
        f"{settings.round_to}, min 8 channels, whole heads; every point within ±3% of its keep-macs.",
        "",
        "## Dense models",
        "",
        "| family | timm model (reduced) | MACs | epochs | val top-1 per seed | last-epoch change |",
        "|---|---|---|---|---|---|",
    ]
    for family, records in dense.items():
        first = records[0]
        tops = ", ".join(f"{r['top1_eval']:.1f}" for r in records)
        change = ", ".join(f"{r['val_curve'][-1] - r['val_curve'][-2]:+.1f}" if len(r["val_curve"]) > 1 else "–"
                           for r in records)  # fmt: skip
        lines.append(f"| {family} | `{first['timm_name']}` {first['kwargs'] or ''} | {first.get('macs_m', 0):.1f} M | "
                     f"{first['epochs']} | {tops} | {change} |")  # fmt: skip
    lines += ["", f"## Top-1 after pruning → after {settings.after_name}", ""]
    keeps = settings.keeps
    for family, criteria in summary["table"].items():
        lines += [f"### {family}", "", "| criterion | " + " | ".join(f"keep {k}" for k in keeps) + " | scoring s |",
                  "|---|" + "---|" * (len(keeps) + 1)]  # fmt: skip
        for criterion, by_keep in criteria.items():
            cells = []
            for k in keeps:
                c = by_keep.get(str(k))
                if c is None:
                    cells.append("–")
                    continue
                warn = " ⚠" if c["kd_below_start"] else ""
                cells.append(f"{_cell(c['pruned'])} → {_cell(c['distilled'])}{warn}")
            scoring = statistics.fmean(by_keep[str(k)]["scoring_s"][0] for k in keeps if str(k) in by_keep)
            lines.append(
                f"| {LABELS.get(criterion, criterion)} | " + " | ".join(cells) + f" | {scoring:.2f} |"
            )
        lines.append("")
    lines += ["## Goal status per family", "",
              "Best spectral = the spectral strategy with the highest mean top-1 after pruning over the curve. "
              "Gap = its per-seed paired difference to group L2 (`magnitude`), mean ± std (min).", "",
              "| family | best spectral | gap at " + " | gap at ".join(str(k) for k in keeps)
              + f" | above L2 everywhere | ≥ 2 pts at deepest | level with TP after {settings.after_name} |",
              "|---|---|" + "---|" * (len(keeps) + 3)]  # fmt: skip
    for family, goal in summary["goals"].items():
        if not goal:
            continue
        gaps = " | ".join(
            f"{g['mean']:+.1f} ± {g['std']:.1f} ({g['min']:+.1f})" for g in goal["gap_pruned_vs_l2"].values()
        )
        level = (
            "yes"
            if goal["level_after_distill"]
            else "no: "
            + ", ".join(
                f"{k}: {a['ours']:.1f} vs {a['best_peer']} {a['peer']:.1f}"
                for k, a in goal["after_distill"].items()
                if not a["level"]
            )
        )
        lines.append(f"| {family} | {goal['best_spectral']} | {gaps} | {'yes' if goal['above_l2_every_keep'] else 'no'} | "
                     f"{'yes' if goal['deep_gap_met'] else 'no'} | {level} |")  # fmt: skip
    lines += [
        "",
        f"⚠ = in at least one seed, the {settings.after_name} ended below the pruned starting point.",
        "",
    ]
    return lines


def plot(points: list[dict], families: list[str], settings: Settings, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = min(3, len(families))
    rows = math.ceil(len(families) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(5.2 * columns, 4.2 * rows), squeeze=False)
    colours = plt.get_cmap("tab10")
    for ax, family in zip(axes.flat, families, strict=False):
        for index, criterion in enumerate(settings.criteria):
            xs, pre, post = [], [], []
            for keep in sorted(settings.keeps):
                rows_ = [
                    p for p in points if (p["family"], p["criterion"], p["keep"]) == (family, criterion, keep)
                ]
                if rows_:
                    xs.append(statistics.fmean(r["macs_kept"] for r in rows_))
                    pre.append(statistics.fmean(r["top1_pruned"] for r in rows_))
                    post.append(statistics.fmean(r[settings.after_key] for r in rows_))
            style = {"color": colours(index), "marker": "o", "lw": 2 if criterion in SPECTRAL else 1.2}
            ax.plot(xs, pre, ls="-", label=LABELS.get(criterion, criterion), **style)
            ax.plot(xs, post, ls=":", **style)
        ax.set_title(family)
        ax.set_xlabel("achieved MACs kept")
        ax.set_ylabel("val top-1 %")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(families) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7, loc="lower right")
    fig.suptitle(
        f"Accuracy vs achieved MACs on {settings.dataset}: solid = after pruning, dotted = after {settings.after_name}"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- driver -----------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), choices=list(ALL_FAMILIES),
                        help=f"default: the six ({', '.join(FAMILIES)}); the edge models "
                             f"({', '.join(f for f in ALL_FAMILIES if f not in FAMILIES)}) only by name, at --image-size 64")  # fmt: skip
    parser.add_argument("--criteria", nargs="+", default=list(CRITERIA), choices=[*CRITERIA, *ABLATIONS])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--keeps", nargs="+", type=float, default=[0.75, 0.5, 0.3])
    parser.add_argument(
        "--dataset", choices=dataset_names(), help="a built-in dataset (default mnist5k; --quick digits)"
    )
    parser.add_argument("--image-size", type=int, metavar="PX",
                        help="input size the models are built and trained for (default 32; --quick 16); "
                             "64 suits sign-digits, 32 cifar10-12k; a multiple of 32 builds every family")  # fmt: skip
    parser.add_argument("--workers", type=int, default=2, help="processes, one torch thread each (default 2)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: digits at 16×16 (or --dataset, --image-size), 1 seed, keep 0.5, ResNet + ViT, "
                             "1 epoch, 2 KD steps")  # fmt: skip
    parser.add_argument(
        "--cache", type=Path, default=CACHE, help="trained dense models (default %(default)s)"
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--stem", help="output file names (default accuracy_retention[_finetuned])")
    parser.add_argument("--finetune", choices=("distill", "default"), default="distill",
                        help="after pruning: the short distillation (default) or the fine-tune stage's default recipe")  # fmt: skip
    parser.add_argument(
        "--finetune-epochs", type=int, help="with --finetune default: override the recipe's epochs"
    )
    parser.add_argument("--latency-tables", type=Path, metavar="DIR",
                        help="<family>.latency_table.json per family (benchmarks/latency_table.py --tables-out), for the "
                             "hybrid-table criterion; each point then records the table's predicted ms")  # fmt: skip
    parser.add_argument("--table-trust", type=float, metavar="T",
                        help="the hybrid-table criteria's trust region: each unit within [T x, 1/T x] hybrid's own "
                             "width (0: none; default prune_model's)")  # fmt: skip
    parser.add_argument("--export-onnx", type=Path, metavar="DIR",
                        help="export the hybrid and hybrid-table points and each dense model here, for "
                             "benchmarks/accuracy_latency.py to time on an idle machine")  # fmt: skip
    parser.add_argument("--baseline", type=Path, help="an earlier results JSON whose rows join this table")
    parser.add_argument("--baseline-criteria", nargs="+", default=["magnitude", "rmt"], metavar="C")
    args = parser.parse_args(argv)
    from rmtdeploy.io import atomic_write_json, atomic_write_text
    from rmtdeploy.machine import cpu_model

    settings = Settings(dataset=args.dataset or "mnist5k", keeps=tuple(args.keeps), criteria=tuple(args.criteria),
                        finetune=args.finetune, finetune_epochs=args.finetune_epochs)  # fmt: skip
    args.stem = args.stem or (
        "accuracy_retention" if args.finetune == "distill" else "accuracy_retention_finetuned"
    )
    families, seeds = args.families, list(range(args.seeds))
    if args.quick:
        settings = Settings(dataset=args.dataset or "digits", image_size=16, keeps=(0.5,), criteria=tuple(args.criteria),
                            calibration_images=64, hessian_samples=8, distill_images=128, distill_steps=2,
                            val_images=128, epochs_scale=0.1, finetune=args.finetune,
                            finetune_epochs=args.finetune_epochs or (1 if args.finetune == "default" else None))  # fmt: skip
        if args.families == list(FAMILIES):
            families = ["resnet", "vit"]
        seeds = [0]
    if {"hybrid-table", "hybrid-table-macs"} & set(settings.criteria) and args.latency_tables is None:
        parser.error("the hybrid-table criteria need --latency-tables DIR")
    settings = dataclasses.replace(
        settings,
        latency_tables=str(args.latency_tables.resolve()) if args.latency_tables else None,
        export_onnx=str(args.export_onnx.resolve()) if args.export_onnx else None,
        **({} if args.table_trust is None else {"table_trust": args.table_trust}),
    )
    if args.image_size is not None:
        if args.image_size < 8:
            parser.error(f"--image-size must be at least 8 pixels, got {args.image_size}")
        settings = dataclasses.replace(settings, image_size=args.image_size)
    started = time.perf_counter()
    tasks = [(family, seed) for seed in seeds for family in families]
    results = _run(tasks, settings, args.cache, args.workers)
    wall_s = time.perf_counter() - started

    points = [p for family, seed in tasks for p in results[(family, seed)]["points"]]
    if args.baseline is not None:
        # Rows of an earlier run on the same data and seeds, so an ablation table shows its reference.
        earlier = json.loads(args.baseline.read_text())
        same = {k: v for k, v in earlier["conditions"]["settings"].items() if k not in ("criteria", "keeps")}
        mine = {k: v for k, v in asdict(settings).items() if k not in ("criteria", "keeps")}
        if same != mine:
            raise SystemExit(f"--baseline {args.baseline} was measured with other settings")
        borrowed = [p for p in earlier["points"] if (p["family"], p["seed"]) in set(tasks) and p["keep"] in settings.keeps
                    and p["criterion"] in args.baseline_criteria]  # fmt: skip
        points = borrowed + points
        settings = dataclasses.replace(settings, criteria=(*args.baseline_criteria, *settings.criteria))
    dense: dict[str, list] = {}
    for family, seed in tasks:
        record = results[(family, seed)]["dense"]
        dense.setdefault(family, []).append({**record, "macs_m": family_macs(family, settings.image_size)})
    summary = summarise(points, families, settings)
    conditions = {
        "what": " ".join(["benchmarks/accuracy_retention.py", *(sys.argv[1:] if argv is None else argv)]),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "workers": args.workers,
        "threads_per_worker": 1,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "wall_s": round(wall_s, 1),
        "seeds": seeds,
        "val_images": val_image_count(settings),
        "settings": asdict(settings),
    }
    if settings.finetune == "default":
        conditions["recipe"] = recipe_conditions(settings)
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out / f"{args.stem}.json",
                      {"conditions": conditions, "dense": dense, "summary": summary, "points": points})  # fmt: skip
    header = (f"`{conditions['what']}` on {conditions['cpu']} ({conditions['cpu_count']} cores), "
              f"{args.workers} worker processes × 1 torch thread, torch {conditions['torch']}; "
              f"wall {wall_s / 60:.1f} min (includes training the dense models when not cached).")  # fmt: skip
    body = render_markdown(summary, dense, settings, conditions)
    atomic_write_text(args.out / f"{args.stem}.md",
                      "\n".join(["# Accuracy retention on real data", "", header, "", *body, "",
                                 f"![accuracy vs MACs]({args.stem}.png)", ""]))  # fmt: skip
    plot(points, families, settings, args.out / f"{args.stem}.png")
    print(f"wrote {args.out}/{args.stem}.{{json,md,png}} in {wall_s / 60:.1f} min", flush=True)
    return 0


def _run(tasks, settings: Settings, cache: Path, workers: int) -> dict:
    """Run every (family, seed) task, in ``workers`` processes (one torch thread each) when > 1, with a
    progress bar over all points."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    total = len(tasks) * len(settings.keeps) * len(settings.criteria)
    results = {}
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns) as progress:
        bar = progress.add_task("pruned points", total=total)
        if workers <= 1:
            for family, seed in tasks:
                results[(family, seed)] = run_family_seed(
                    family, seed, settings, cache, _Events(progress, bar)
                )
            return results
        manager = multiprocessing.get_context("spawn").Manager()
        events = manager.Queue()
        # Heaviest first, so the two workers finish together.
        order = sorted(
            tasks, key=lambda t: -ALL_FAMILIES[t[0]].epochs * family_macs(t[0], settings.image_size)
        )
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = {pool.submit(run_family_seed, f, s, settings, cache, events): (f, s) for f, s in order}
            pending = set(futures)
            while pending:
                _drain(events, progress, bar)
                done = {f for f in pending if f.done()}
                for future in done:
                    results[futures[future]] = future.result()
                pending -= done
                time.sleep(0.2)
        _drain(events, progress, bar)
    return results


def _drain(events, progress, bar) -> None:
    while not events.empty():
        _drain_one(events.get(), progress, bar)


class _Events:
    """The in-process stand-in for the workers' queue."""

    def __init__(self, progress, bar):
        self.progress, self.bar = progress, bar

    def put(self, event):
        _drain_one(event, self.progress, self.bar)


def _drain_one(event, progress, bar) -> None:
    kind, message = event
    if kind == "point":
        progress.advance(bar)
    else:
        progress.console.log(message)


if __name__ == "__main__":
    sys.exit(main())
