"""What every command shares: argument groups, one-line errors, progress, console tables."""

from __future__ import annotations

import argparse
import contextlib
import sys

from rmtdeploy.errors import RmtdeployError


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse prints the whole usage block before its error; users get the one line that says what
    is wrong (``--help`` still shows the usage). Sub-command parsers inherit the class."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def flag(param: str) -> str:
    """The CLI flag of a library argument: ``keep_macs`` -> ``--keep-macs``."""
    return "--" + param.replace("_", "-")


def add_model_arguments(parser: argparse.ArgumentParser, *, required: bool = True, note: str = "") -> None:
    from rmtdeploy.models import WEIGHT_SOURCES

    group = parser.add_argument_group("model")
    group.add_argument(
        "--model",
        required=required,
        help="alias (swin_t, vit_s, deit_s, convnext_t, hiera_t, resnet50, ...) or any timm name" + note,
    )
    group.add_argument(
        "--weights",
        choices=WEIGHT_SOURCES,
        help="pretrained: timm's hub (needs network); random: untrained (seeded: the same model every run), "
        "labelled so in every output; checkpoint: a local file given with --checkpoint "
        "(default: checkpoint when --checkpoint is given, else pretrained)",
    )
    group.add_argument("--checkpoint", metavar="PATH", help="timm/torch state dict or .safetensors to load")
    add_own_model_arguments(group)


def add_own_model_arguments(group) -> None:
    """What a user's own model was trained with, as timm's train.py names it: class count, create kwargs,
    input size and preprocessing. Not given: a timm config beside the checkpoint (config.json, args.yaml),
    else the model's defaults."""
    from rmtdeploy.preprocessing import INTERPOLATIONS

    group.add_argument("--num-classes", type=int, metavar="N",
                       help="classifier width (default: the checkpoint's head, else timm's)")  # fmt: skip
    group.add_argument("--model-kwargs", nargs="+", default=None, metavar="KEY=VALUE",
                       help="timm create kwargs, e.g. drop_path_rate=0.1 img_size=160 (values are Python literals)")  # fmt: skip
    group.add_argument("--input-size", nargs="+", metavar="SIZE",
                       help="input the model was trained at: N, HxW, or C H W as timm's --input-size")  # fmt: skip
    group.add_argument(
        "--mean", type=float, nargs="+", metavar="M", help="per-channel mean (pixels in [0, 1])"
    )
    group.add_argument("--std", type=float, nargs="+", metavar="S", help="per-channel std")
    group.add_argument(
        "--crop-pct", type=float, metavar="F", help="centre crop fraction of the resized image"
    )
    group.add_argument("--interpolation", choices=INTERPOLATIONS, help="resize filter")


def parse_model_kwargs(pairs: list[str] | None) -> dict | None:
    """``KEY=VALUE`` pairs as timm's train.py reads them: values are Python literals, else strings."""
    import ast

    if pairs is None:
        return None
    kwargs = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise RmtdeployError(f"{{param}} expects KEY=VALUE, got '{pair}'", param="model_kwargs")
        try:
            kwargs[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            kwargs[key] = value
    return kwargs


def input_settings(args) -> dict:
    """The preprocessing flags given, as an input section (size, mean, std, interpolation, crop_pct)."""
    size = getattr(args, "input_size", None)
    return {
        key: value
        for key, value in {
            "size": (size[0] if len(size) == 1 else size) if size else None,
            "mean": args.mean,
            "std": args.std,
            "interpolation": args.interpolation,
            "crop_pct": args.crop_pct,
        }.items()
        if value is not None
    }


def add_output_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, metavar="DIR", help="output directory")
    parser.add_argument("--force", action="store_true", help="replace this command's earlier output in --out")
    parser.add_argument(
        "--json", action="store_true", help="print a machine-readable summary instead of tables"
    )


def model_source(args):
    from rmtdeploy.models import ModelSource
    from rmtdeploy.preprocessing import InputConfig

    given = InputConfig.from_mapping(input_settings(args), "the command line")
    return ModelSource(args.model, args.weights, args.checkpoint, args.num_classes,
                       parse_model_kwargs(args.model_kwargs), given)  # fmt: skip


def parse_sweep(text: str | None) -> list[float] | None:
    """``--sweep 0.3,0.5,0.7`` as numbers (the library checks their range)."""
    if text is None:
        return None
    try:
        return [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise RmtdeployError(
            f"{{param}} takes comma-separated keep ratios in (0, 1], e.g. 0.3,0.5,0.7; got '{text}'",
            param="sweep",
        ) from None


def parse_knobs(pairs: list[str]) -> dict[str, str]:
    """``KEY=VALUE`` pairs; the strategy converts and checks each value against its knob's type."""
    knobs = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise RmtdeployError(f"{{param}} expects KEY=VALUE, got '{pair}'", param="knob")
        knobs[key.replace("-", "_")] = value
    return knobs


@contextlib.contextmanager
def progress_bar(description: str, enabled: bool):
    """Yields ``start(total) -> advance(n)``; a rich bar on stderr, or None when disabled."""
    if not enabled:
        yield None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn(description), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), transient=True
    ) as bar:

        def start(total: int):
            task = bar.add_task(description, total=total)
            return lambda n=1: bar.advance(task, n)

        yield start


@contextlib.contextmanager
def spinner(description: str, enabled: bool):
    """Yields ``status(text)`` that shows ``description: text`` beside a spinner on stderr, or None."""
    if not enabled:
        yield None
        return
    from rich.console import Console

    with Console(stderr=True).status(description) as status:
        yield lambda text: status.update(f"{description}: {text}")


def console():
    from rich.console import Console

    # Piped output (logs, CI) gets a wide table instead of rich's 80-column default with truncated cells.
    return Console() if sys.stdout.isatty() else Console(width=200)


@contextlib.contextmanager
def training_progress(enabled: bool):
    """Yields a :class:`rmtdeploy.finetuning.trainer.Reporter` that draws a bar per epoch (loss, accuracy)
    and status lines on stderr; a silent one when disabled."""
    from rmtdeploy.finetuning.stage import Reporter

    if not enabled:
        yield Reporter()
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("loss {task.fields[loss]:.4f} train top-1 {task.fields[top1]:.1f}%"),
               TimeElapsedColumn(), TimeRemainingColumn())  # fmt: skip
    with Progress(*columns, console=Console(stderr=True)) as bar:
        yield _BarReporter(bar)


class _BarReporter:
    def __init__(self, bar):
        self.bar, self.task = bar, None

    def status(self, text: str) -> None:
        self.bar.console.log(text)

    def epoch_started(self, epoch: int, epochs: int, batches: int, done: int) -> None:
        if self.task is not None:
            self.bar.remove_task(self.task)
        self.task = self.bar.add_task(
            f"epoch {epoch}/{epochs}", total=batches, completed=done, loss=0.0, top1=0.0
        )

    def step(self, loss: float, top1: float) -> None:
        if self.task is not None:
            self.bar.update(self.task, advance=1, loss=loss, top1=top1)

    def epoch_ended(self, record: dict) -> None:
        self.bar.console.log(
            f"epoch {record['epoch']}: train loss {record['train_loss']:.4f}, val top-1 {record['val_top1']:.2f}, "
            f"top-5 {record['val_top5']:.2f}"
        )
