"""``rmtdeploy finetune``: parse, call :func:`rmtdeploy.finetuning.stage.finetune`, show progress, print."""

from __future__ import annotations

import dataclasses
import json

from rmtdeploy.cli import ui

# Recipe fields with their flags' help; the defaults come from FinetuneRecipe itself.
RECIPE_HELP = {
    "batch_size": ("N", "images per step per process"),
    "lr": ("LR", "peak learning rate (AdamW) of the global batch"),
    "min_lr": ("LR", "learning rate at the end of the cosine"),
    "warmup": ("F", "fraction of all steps spent warming up linearly"),
    "weight_decay": ("WD", "AdamW weight decay on weight matrices and kernels"),
    "clip_grad": ("NORM", "max global gradient norm (0: off)"),
    "temperature": ("T", "distillation temperature"),
    "kd_weight": ("W", "weight of KL(teacher ‖ student) × T²"),
    "ce_weight": ("W", "weight of the (label-smoothed) cross-entropy on labels; 0: label-free"),
    "label_smoothing": ("F", "label smoothing of the cross-entropy"),
    "bn_images": ("N", "training images that re-estimate BatchNorm statistics before training (0: off)"),
    "checkpoint_every": ("STEPS", "also checkpoint every STEPS optimizer steps (0: at epoch ends only)"),
    "seed": ("N", "seed of the data order, augmentation and dropout"),
}


def add_parser(commands) -> None:
    from rmtdeploy.finetuning.stage import KEEP_CHOICES, FinetuneRecipe

    parser = commands.add_parser(
        "finetune",
        help="fine-tune a pruned model against its dense teacher (distillation + labels), resumable, DDP",
        description="Train a pruned model (--pruned DIR) on --data (a built-in dataset or an ImageFolder) "
        "with distillation from the dense model, and write model.safetensors + plan.json (rebuild with "
        "rmtdeploy.load_pruned), metrics.jsonl and finetune.json to --out. Under torchrun it trains "
        "data-parallel (docs/finetune.md).",
    )
    parser.add_argument("--pruned", metavar="DIR", help="a folder written by rmtdeploy prune (or finetune)")
    parser.add_argument("--data", required=True, metavar="DIR|NAME", help="ImageFolder (train/ + val/, or one "
                        "folder split by --val-fraction) or a built-in dataset (mnist5k, digits)")  # fmt: skip
    ui.add_output_arguments(parser)
    defaults = FinetuneRecipe()
    group = parser.add_argument_group("recipe (defaults: the gentle recipe, docs/finetune.md)")
    group.add_argument(
        "--epochs", type=int, default=defaults.epochs, metavar="N", help=f"(default {defaults.epochs})"
    )
    for name, (metavar, text) in RECIPE_HELP.items():
        kind = type(getattr(defaults, name))
        group.add_argument(ui.flag(name), dest=name, type=kind, default=getattr(defaults, name), metavar=metavar,
                           help=f"{text} (default {getattr(defaults, name)})")  # fmt: skip
    group.add_argument("--no-augment", action="store_true", help="train on unaugmented images (the teacher's "
                       "logits are then computed once and cached)")  # fmt: skip
    parser.add_argument("--teacher", metavar="PATH", help="the dense model's checkpoint (default: the one the "
                        "plan records)")  # fmt: skip
    parser.add_argument("--new-head", action="store_true", help="re-initialise the classifier for the data's "
                        "classes and train it on labels")  # fmt: skip
    parser.add_argument("--keep", choices=KEEP_CHOICES, default="best", help="write the best epoch by val top-1 "
                        "(the start included; default) or the last")  # fmt: skip
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda (default auto)")
    parser.add_argument("--workers", type=int, default=0, metavar="N", help="DataLoader worker processes")
    parser.add_argument(
        "--val-fraction", type=float, metavar="F", help="held-out share of a one-folder set (0.1)"
    )
    parser.add_argument("--convert-grey", action="store_true", help="accept greyscale files in a colour set")
    parser.add_argument("--skip-image-check", action="store_true", help="do not check every image file first")
    parser.add_argument("--resume", action="store_true", help="continue the interrupted run of --out")
    _add_progressive_arguments(parser)
    parser.set_defaults(handler=run)


def _add_progressive_arguments(parser) -> None:
    from rmtdeploy.finetuning.stage import DEFAULT_PRUNING_FRACTION

    ui.add_model_arguments(parser, required=False, note="; with --strategy dynamic: the dense model to prune "
                           "while training (instead of --pruned)")  # fmt: skip
    group = parser.add_argument_group("pruning during training (instead of --pruned)")
    group.add_argument("--strategy", help="dynamic: prune progressively during training")
    budget = group.add_mutually_exclusive_group()
    budget.add_argument("--keep-macs", type=float, metavar="F", help="fraction of dense MACs to keep")
    budget.add_argument("--keep-params", type=float, metavar="F", help="fraction of dense parameters to keep")
    group.add_argument("--knob", action="append", default=[], metavar="KEY=VALUE", help="strategy knob")
    group.add_argument("--target", default="jetson", help="target profile: the channel multiple")
    group.add_argument("--prune-fraction", type=float, default=DEFAULT_PRUNING_FRACTION, metavar="F",
                       help=f"share of the steps over which pruning happens (default {DEFAULT_PRUNING_FRACTION})")  # fmt: skip


def _recipe(args):
    from rmtdeploy.finetuning.stage import FinetuneRecipe

    names = [f.name for f in dataclasses.fields(FinetuneRecipe)]
    options = {name: getattr(args, name) for name in names if name != "augment"}
    return FinetuneRecipe.from_options(**options, augment=not args.no_augment)


def _progressive(args):
    from rmtdeploy.errors import RmtdeployError
    from rmtdeploy.finetuning.stage import ProgressivePruning

    if args.strategy is None:
        if args.pruned is None:
            raise RmtdeployError(
                "give --pruned DIR (or --model with --strategy dynamic to prune while training)"
            )
        return None
    if args.pruned is not None:
        raise RmtdeployError(
            "--pruned and --strategy exclude each other: prune while training starts from --model"
        )
    if args.keep_macs is None and args.keep_params is None:
        raise RmtdeployError("--strategy needs a budget: --keep-macs or --keep-params")
    return ProgressivePruning(keep_macs=args.keep_macs, keep_params=args.keep_params, strategy=args.strategy,
                              knobs=ui.parse_knobs(args.knob), target=args.target, fraction=args.prune_fraction)  # fmt: skip


def run(args) -> int:
    from rmtdeploy.finetuning.stage import finetune

    progressive = _progressive(args)
    dense = ui.model_source(args) if args.model is not None else None  # none: the library says --model
    with ui.training_progress(enabled=not args.json) as reporter:
        run = finetune(
            dense if progressive is not None else args.pruned,
            args.data, args.out, recipe=_recipe(args),
            teacher=args.teacher, new_head=args.new_head, keep=args.keep, device=args.device,
            workers=args.workers, val_fraction=args.val_fraction, convert_grey=args.convert_grey,
            check_files=not args.skip_image_check, progressive=progressive, resume=args.resume,
            force=args.force, reporter=reporter,
        )  # fmt: skip
    record = {**run.to_dict(), "wall_s": round(run.wall_s, 1)}  # the time is the run's, not the file's
    if args.json:
        print(
            json.dumps(
                {k: record[k] for k in ("model", "steps", "top1", "wall_s", "skipped_images")}, indent=2
            )
        )
    else:
        _print_summary(record, args.out)
    return 0


def _print_summary(record: dict, out: str) -> None:
    console = ui.console()
    top1 = record["top1"]
    epochs = " → ".join(f"{t:.2f}" for t in top1["epochs"])
    console.print(
        f"val top-1: {top1['as_given']:.2f} as given, {top1['start']:.2f} after BatchNorm recalibration, "
        f"epochs {epochs}; kept the {record['kept']} ({top1['best' if record['kept'] == 'best' else 'last']:.2f}, "
        f"epoch {top1['best_epoch'] if record['kept'] == 'best' else len(top1['epochs'])})"
    )
    if record["new_head"]:
        console.print(
            "[yellow]the classifier was re-initialised for the data's classes and trained on labels[/yellow]"
        )
    if record["skipped_images"]["count"]:
        console.print(f"[yellow]{record['skipped_images']['count']} images failed to load and were skipped: "
                      f"{', '.join(record['skipped_images']['files'][:5])}[/yellow]")  # fmt: skip
    console.print(f"{record['steps']} steps on {record['device']} in {record['wall_s']:.0f} s; wrote "
                  f"model.safetensors, plan.json, metrics.jsonl, finetune.json to {out}")  # fmt: skip
