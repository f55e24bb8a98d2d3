"""Bad and edge inputs to ``rmtdeploy finetune``: exit 2, one clear line, nothing written, nothing lost.

A case is (command line, the phrase(s) the one line must hold). Every case runs twice through
``rmtdeploy.cli.main`` (with ``--json``: no progress lines): into a fresh ``--out`` that must not appear,
and with ``--force`` into an ``--out`` holding an earlier fine-tune's result that must stay byte for byte.
Cases about the data, the recipe, the flags and the input folders must be refused before any model is
loaded (the loading is replaced by an assertion); cases that can only be found once the models are built
(a classifier that does not fit the data, a teacher checkpoint that does not load, a learning rate that
diverges, a checkpoint to resume that is not this run's) run for real. A file that passes the pre-flight
check and breaks during training is skipped, counted and named in finetune.json.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch

import rmtdeploy
from rmtdeploy.cli import main

pytestmark = pytest.mark.usefixtures("single_torch_thread")

QUICK = ["--epochs", "1", "--batch-size", "64", "--bn-images", "64", "--no-augment"]
SIZE = 20  # pixels of the test images; the models take 16×16


# -- inputs --------------------------------------------------------------------------------------------


def _pixels(seed: int, size: int = SIZE, channels: int = 3):
    generator = torch.Generator().manual_seed(seed)
    shape = (size, size, channels) if channels > 1 else (size, size)
    return (torch.rand(*shape, generator=generator) * 255).to(torch.uint8).numpy()


def _png(path: Path, seed: int = 0, *, grey: bool = False) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(_pixels(seed, channels=1 if grey else 3)).save(path)
    return path


def _jpeg(path: Path, seed: int = 0) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(_pixels(seed, size=64)).save(path, quality=95)
    return path


def _cut(path: Path, keep: float = 0.6) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def _image_set(root: Path, classes: int, *, train: int = 2, val: int = 1) -> Path:
    """``root/train/<class>/*.png`` and ``root/val/<class>/*.png``, seeded RGB noise."""
    seed = 0
    for label in range(classes):
        for split, count in (("train", train), ("val", val)):
            for i in range(count):
                seed += 1
                _png(root / split / f"c{label}" / f"{i}.png", seed)
    return root


def _make_pruned(root: Path, name: str, weights: str | None) -> Path:
    """A resnet18 (10 classes, 16×16 inputs) pruned to half its MACs; ``weights`` None: random weights,
    else the checkpoint file name the plan records (the teacher a fine-tune rebuilds)."""
    import timm

    from rmtdeploy.models import LoadedModel

    torch.manual_seed(0)
    model = timm.create_model("resnet18", num_classes=10).eval()
    model.pretrained_cfg = {**model.pretrained_cfg, "input_size": (3, 16, 16)}
    source = "random"
    if weights is not None:
        torch.save(model.state_dict(), root / weights)
        source = f"checkpoint:{root / weights}"
    loaded = LoadedModel(model, "resnet18", "resnet", source)
    rmtdeploy.prune(loaded, root / name, keep_macs=0.5, strategy="magnitude")  # the quickest strategy
    return root / name


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Inputs the cases refer to by name: pruned folders, teachers, image folders good and bad."""
    import timm

    root = tmp_path_factory.mktemp("inputs")
    _make_pruned(root, "pruned", "dense.pth")
    _make_pruned(root, "pruned_random", None)
    _make_pruned(root, "pruned_teacher_moved", "moved.pth")
    (root / "moved.pth").unlink()
    torch.save(timm.create_model("resnet18", num_classes=3).state_dict(), root / "three_classes.pth")
    (root / "a_file").write_text("x")
    (root / "empty.pth").write_bytes(b"")
    (root / "text.pth").write_text("not a checkpoint")
    (root / "empty_folder").mkdir()
    (root / "not_pruned").mkdir()
    (root / "not_pruned" / "notes.txt").write_text("not a pruned model")
    # Good sets: 10 classes (the models' classifier) and 3 classes (a new head's).
    _image_set(root / "ten", 10)
    _image_set(root / "three", 3)
    # Bad sets: each holds one problem, named after it; bad files sort last ("zz_") so that a check that
    # stopped at the first file would miss them.
    _png(root / "empty_class" / "cat" / "a.png")
    (root / "empty_class" / "dog").mkdir()
    _png(root / "empty_image" / "cat" / "a.png")
    (root / "empty_image" / "cat" / "zz_empty.png").write_bytes(b"")
    _png(root / "unidentifiable" / "cat" / "a.png")
    (root / "unidentifiable" / "cat" / "zz_not_an_image.png").write_text("a note, not an image")
    _png(root / "broken_header" / "cat" / "a.png")
    (root / "broken_header" / "cat" / "zz_garbage.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    _png(root / "truncated_png" / "cat" / "a.png")
    _cut(_png(root / "truncated_png" / "cat" / "zz_cut.png", 1))
    _jpeg(root / "truncated_jpeg" / "cat" / "a.jpg")
    _cut(_jpeg(root / "truncated_jpeg" / "cat" / "zz_cut.jpg", 1), keep=0.8)
    shutil.copytree(root / "ten", root / "grey")
    _png(root / "grey" / "train" / "c0" / "zz_grey.png", 99, grey=True)
    for split, classes in (("train", ("cat", "dog")), ("val", ("cat", "bird"))):
        for name in classes:
            _png(root / "train_val_differ" / split / name / "a.png")
    for i in range(3):
        _png(root / "single_image" / "cat" / f"{i}.png", i)
    _png(root / "single_image" / "dog" / "only.png")
    return root


@pytest.fixture(scope="module")
def earlier_run(files, tmp_path_factory):
    """A finished fine-tune's output folder: what ``--force`` runs that fail must leave as it is."""
    out = tmp_path_factory.mktemp("earlier") / "run"
    args = ["finetune", "--pruned", str(files / "pruned"), "--data", str(files / "ten"), *QUICK]
    assert main([*args, "--json", "--out", str(out)]) == 0
    return out


# -- assertions ----------------------------------------------------------------------------------------


def _expand(args: list[str], inputs: Path) -> list[str]:
    return [arg.replace("{inputs}", str(inputs)) for arg in args]


def _snapshot(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def _out_for(mode: str, tmp_path: Path, earlier: Path) -> tuple[Path, list[str], dict | None]:
    """(--out, the extra flags, the snapshot it must keep) for a fresh folder or an earlier result + --force."""
    out = tmp_path / "out"
    if mode == "fresh":
        return out, [], None
    shutil.copytree(earlier, out)
    return out, ["--force"], _snapshot(out)


def _assert_refused(capsys, code: int, phrases, out: Path, before: dict | None) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("rmtdeploy") and ": error: " in lines[0], err
    for phrase in (phrases,) if isinstance(phrases, str) else phrases:
        assert phrase in lines[0], err
    assert "internal error" not in err and "Traceback" not in err
    if before is None:
        assert not out.exists()
    else:
        assert _snapshot(out) == before
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}")]  # no staging, no lock
    assert not (out.parent / f"{out.name}.checkpoints").exists()  # no checkpoint, no live metrics
    return lines[0]


@pytest.fixture
def models_never_load(monkeypatch):
    """The cases below are found before any model loads: loading one fails the test."""
    import rmtdeploy.finetuning.stage

    def never(*args, **kwargs):
        raise AssertionError("a model was loaded before the bad input was found")

    monkeypatch.setattr(rmtdeploy.finetuning.stage, "_load_models", never)


# -- refused before any model loads --------------------------------------------------------------------

PRUNED = ["--pruned", "{inputs}/pruned"]
RANDOM_RESNET = ["--model", "resnet18", "--weights", "random"]

DATA_CASES = [
    ("missing", ["--data", "{inputs}/missing"], "data directory not found: {inputs}/missing"),
    ("a_file", ["--data", "{inputs}/a_file"], "data path {inputs}/a_file is a file"),
    ("no_class_folders", ["--data", "{inputs}/empty_folder"], "empty_folder holds no class folders"),
    ("empty_class_folder", ["--data", "{inputs}/empty_class"], "class folder {inputs}/empty_class/dog holds no images"),
    ("empty_file", ["--data", "{inputs}/empty_image"], "zz_empty.png: the file is empty"),
    ("unidentifiable", ["--data", "{inputs}/unidentifiable"], "zz_not_an_image.png: not an image PIL can read"),
    ("broken_png_header", ["--data", "{inputs}/broken_header"], "bad image {inputs}/broken_header/cat/zz_garbage.png: "),
    ("truncated_png", ["--data", "{inputs}/truncated_png"], "zz_cut.png: truncated PNG"),
    ("truncated_jpeg", ["--data", "{inputs}/truncated_jpeg"], "zz_cut.jpg: truncated JPEG"),
    ("grey_in_colour", ["--data", "{inputs}/grey"], ("train/c0/zz_grey.png: greyscale (L) in a set of colour images", "--convert-grey")),
    ("train_val_differ", ["--data", "{inputs}/train_val_differ"], "have different class folders (e.g. bird, dog)"),
    ("single_image_class", ["--data", "{inputs}/single_image"], ("single_image/dog holds one image", "needs two per class")),
    ("unknown_builtin", ["--data", "nosuchdata"], "data 'nosuchdata' is neither a built-in dataset (cifar10, cifar10-12k, digits, mnist5k, sign-digits, wesnoth-units) nor a directory"),
    ("no_data", [], "the following arguments are required: --data"),
]  # fmt: skip

RECIPE_CASES = [
    ("lr_0", ["--lr", "0"], "--lr must be a learning rate > 0, got 0.0"),
    ("lr_negative", ["--lr", "-1"], "--lr must be a learning rate > 0, got -1.0"),
    ("lr_nan", ["--lr", "nan"], "--lr must be a learning rate > 0, got nan"),
    ("lr_text", ["--lr", "fast"], "argument --lr: invalid float value: 'fast'"),
    ("min_lr_above_lr", ["--min-lr", "1"], "--min-lr must be in [0, lr], got 1.0"),
    ("epochs_0", ["--epochs", "0"], "--epochs must be a positive integer, got 0"),
    ("epochs_float", ["--epochs", "1.5"], "argument --epochs: invalid int value: '1.5'"),
    ("warmup_1", ["--warmup", "1"], "--warmup must be a fraction of the steps in [0, 1), got 1.0"),
    ("no_loss", ["--kd-weight", "0", "--ce-weight", "0"], "are both 0: the loss would be zero"),
    ("negative_kd_weight", ["--kd-weight", "-1"], "--kd-weight must be >= 0, got -1.0"),
    ("label_smoothing_1", ["--label-smoothing", "1"], "--label-smoothing must be in [0, 1), got 1.0"),
    ("batch_size_0", ["--batch-size", "0"], "--batch-size must be a positive integer, got 0"),
    ("temperature_0", ["--temperature", "0"], "--temperature must be > 0, got 0.0"),
    ("bn_images_negative", ["--bn-images", "-1"], "--bn-images must be an integer >= 0, got -1"),
    ("seed_negative", ["--seed", "-1"], "--seed must be an integer >= 0, got -1"),
    ("keep_sideways", ["--keep", "sideways"], "argument --keep: invalid choice: 'sideways'"),
    ("device_tpu", ["--device", "tpu"], "--device must be auto, cpu or cuda, got 'tpu'"),
    ("workers_negative", ["--workers", "-1"], "--workers must be an integer >= 0, got -1"),
    ("val_fraction_1.5", ["--val-fraction", "1.5"], "--val-fraction must lie in (0, 1), got 1.5"),
    ("val_fraction_0", ["--val-fraction", "0"], "--val-fraction must lie in (0, 1), got 0.0"),
]  # fmt: skip

SOURCE_CASES = [
    ("pruned_missing", ["--pruned", "{inputs}/missing"], "pruned-model directory not found: {inputs}/missing"),
    ("pruned_is_a_file", ["--pruned", "{inputs}/a_file"], "pruned-model directory not found: {inputs}/a_file"),
    ("pruned_without_plan", ["--pruned", "{inputs}/not_pruned"], "no plan.json in {inputs}/not_pruned: not a pruned-model directory"),
    ("neither_pruned_nor_strategy", [], "give --pruned DIR (or --model with --strategy dynamic"),
    ("pruned_and_strategy", [*PRUNED, *RANDOM_RESNET, "--strategy", "dynamic", "--keep-macs", "0.5"], "--pruned and --strategy exclude each other"),
    ("strategy_without_budget", [*RANDOM_RESNET, "--strategy", "dynamic"], "--strategy needs a budget: --keep-macs or --keep-params"),
    ("strategy_one_shot", [*RANDOM_RESNET, "--strategy", "magnitude", "--keep-macs", "0.5"], "--strategy 'magnitude' prunes in one shot"),
    ("strategy_unknown", [*RANDOM_RESNET, "--strategy", "lottery", "--keep-macs", "0.5"], "unknown strategy 'lottery'"),
    ("strategy_bad_budget", [*RANDOM_RESNET, "--strategy", "dynamic", "--keep-macs", "1.5"], "--keep-macs must lie in (0, 1]"),
    ("strategy_both_budgets", [*RANDOM_RESNET, "--strategy", "dynamic", "--keep-macs", "0.5", "--keep-params", "0.5"], "not allowed with"),
    ("strategy_without_model", ["--strategy", "dynamic", "--keep-macs", "0.5"], "pruning during training needs the dense model (--model)"),
    ("strategy_prune_fraction_1", [*RANDOM_RESNET, "--strategy", "dynamic", "--keep-macs", "0.5", "--prune-fraction", "1"], "--prune-fraction must lie in (0, 1), got 1.0"),
    ("strategy_unknown_model", ["--model", "nosuchnet", "--weights", "random", "--strategy", "dynamic", "--keep-macs", "0.5"], "unknown model 'nosuchnet'"),
    ("teacher_missing", [*PRUNED, "--teacher", "{inputs}/missing.pth"], "checkpoint not found: {inputs}/missing.pth"),
    ("teacher_empty", [*PRUNED, "--teacher", "{inputs}/empty.pth"], "checkpoint {inputs}/empty.pth is empty"),
    ("teacher_moved", ["--pruned", "{inputs}/pruned_teacher_moved"], ("checkpoint {inputs}/moved.pth, which is not found", "--teacher")),
    ("random_weights_no_teacher", ["--pruned", "{inputs}/pruned_random"], ("made from random weights", "give the dense model as --teacher")),
]  # fmt: skip

RESUME_CASES = [
    ("resume_without_checkpoint", [*PRUNED, "--resume"], "--resume: no interrupted run to continue"),
]

BEFORE_LOAD_CASES = [
    *[(name, [*PRUNED, *args], phrase) for name, args, phrase in DATA_CASES],
    *[(name, [*PRUNED, "--data", "digits", *args], phrase) for name, args, phrase in RECIPE_CASES],
    *[(name, ["--data", "digits", *args], phrase) for name, args, phrase in SOURCE_CASES],
    *[(name, ["--data", "digits", *args], phrase) for name, args, phrase in RESUME_CASES],
]


def _phrases(phrase, inputs: Path):
    return tuple(_expand([p], inputs)[0] for p in ((phrase,) if isinstance(phrase, str) else phrase))


@pytest.mark.parametrize("mode", ["fresh", "force"])
@pytest.mark.parametrize(
    ("args", "phrase"), [pytest.param(a, p, id=name) for name, a, p in BEFORE_LOAD_CASES]
)
def test_bad_input_is_refused_before_any_model_loads(
    tmp_path, files, earlier_run, models_never_load, capsys, mode, args, phrase
):
    out, extra, before = _out_for(mode, tmp_path, earlier_run)
    code = main(["finetune", *QUICK, *_expand(args, files), *extra, "--json", "--out", str(out)])
    _assert_refused(capsys, code, _phrases(phrase, files), out, before)


# -- refused once the models are built -----------------------------------------------------------------

AFTER_LOAD_CASES = [
    ("classifier_does_not_fit_the_data", [*PRUNED, "--data", "{inputs}/three"], ("the model predicts 10 classes but {inputs}/three has 3", "--new-head")),
    ("teacher_not_a_checkpoint", [*PRUNED, "--data", "{inputs}/ten", "--teacher", "{inputs}/text.pth"], "cannot read checkpoint {inputs}/text.pth"),
    ("teacher_does_not_fit", [*PRUNED, "--data", "{inputs}/ten", "--teacher", "{inputs}/three_classes.pth"], ("checkpoint {inputs}/three_classes.pth does not fit ResNet", "fc.weight")),
]  # fmt: skip


def _run_into(out: Path, files: Path, *extra: str) -> int:
    args = ["finetune", *_expand(PRUNED, files), "--data", str(files / "ten"), *QUICK, *extra]
    return main([*args, "--json", "--out", str(out)])


@pytest.mark.parametrize("mode", ["fresh", "force"])
@pytest.mark.parametrize(("args", "phrase"), [pytest.param(a, p, id=name) for name, a, p in AFTER_LOAD_CASES])
def test_bad_input_found_after_loading_writes_nothing(
    tmp_path, files, earlier_run, capsys, mode, args, phrase
):
    out, extra, before = _out_for(mode, tmp_path, earlier_run)
    code = main(["finetune", *QUICK, *_expand(args, files), *extra, "--json", "--out", str(out)])
    _assert_refused(capsys, code, _phrases(phrase, files), out, before)


@pytest.mark.parametrize("mode", ["fresh", "force"])
def test_a_learning_rate_that_diverges_writes_nothing(tmp_path, files, earlier_run, capsys, mode):
    out, extra, before = _out_for(mode, tmp_path, earlier_run)
    code = _run_into(out, files, "--lr", "1e30", "--batch-size", "4", *extra)
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "training diverged at step" in err and "lower the learning rate" in err, err
    assert not out.exists() if before is None else _snapshot(out) == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]  # no staging, no lock
    assert not (tmp_path / "out.checkpoints" / "last.pt").exists()  # nothing to --resume: a rerun starts over


def test_a_new_head_fits_the_data_classes(tmp_path, files, capsys):
    out = tmp_path / "out"
    args = ["finetune", *_expand(PRUNED, files), "--data", str(files / "three"), "--new-head", *QUICK]
    assert main([*args, "--json", "--out", str(out)]) == 0, capsys.readouterr().err
    record = json.loads((out / "finetune.json").read_text())
    assert record["new_head"] is True and record["data"]["classes"] == 3
    assert record["recipe"]["kd_weight"] == 0 and record["teacher"] is None  # labels only
    assert rmtdeploy.load_pruned(out).model.num_classes == 3


def test_convert_grey_accepts_a_greyscale_file(tmp_path, files, capsys):
    out = tmp_path / "out"
    args = ["finetune", *_expand(PRUNED, files), "--data", str(files / "grey"), "--convert-grey", *QUICK]
    assert main([*args, "--json", "--out", str(out)]) == 0, capsys.readouterr().err
    record = json.loads((out / "finetune.json").read_text())
    assert record["skipped_images"]["count"] == 0 and record["data"]["images"]["train"] == 21


# -- output folder, force and resume -------------------------------------------------------------------


def test_an_existing_result_needs_force(tmp_path, files, earlier_run, models_never_load, capsys):
    out, _, before = _out_for("force", tmp_path, earlier_run)
    line = _assert_refused(capsys, _run_into(out, files), "allow overwriting (--force)", out, before)
    assert f"{out} already holds model.safetensors, plan.json, finetune.json" in line


def test_a_leftover_checkpoint_needs_resume_or_force(tmp_path, files, models_never_load, capsys):
    out, leftover = tmp_path / "out", tmp_path / "out.checkpoints" / "last.pt"
    leftover.parent.mkdir()
    leftover.write_bytes(b"an interrupted run's state")
    code = _run_into(out, files)
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert f"an interrupted run's checkpoint is at {leftover}: continue it with --resume" in err
    assert not out.exists() and leftover.read_bytes() == b"an interrupted run's state"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.checkpoints"]


def _torn_checkpoint() -> bytes:
    import io

    buffer = io.BytesIO()
    torch.save({"format": 1, "student": {"w": torch.zeros(256)}}, buffer)
    return buffer.getvalue()[: len(buffer.getvalue()) // 2]


CHECKPOINT_CASES = [
    ("torn", _torn_checkpoint(), "cannot read checkpoint {leftover}: PytorchStreamReader failed"),
    ("not_a_checkpoint", b"a note", "cannot read checkpoint {leftover}"),
    ("of_another_run", {"format": 1, "fingerprint": {}}, "belongs to another run (student, data, recipe"),
    ("of_another_format", {"format": 99, "fingerprint": {}}, "{leftover} is not a checkpoint this rmtdeploy writes"),
]  # fmt: skip


@pytest.mark.parametrize(("content", "phrase"), [pytest.param(c, p, id=n) for n, c, p in CHECKPOINT_CASES])
def test_resume_from_a_checkpoint_that_does_not_belong_is_refused(tmp_path, files, capsys, content, phrase):
    out, leftover = tmp_path / "out", tmp_path / "out.checkpoints" / "last.pt"
    leftover.parent.mkdir()
    if isinstance(content, bytes):
        leftover.write_bytes(content)
    else:
        torch.save(content, leftover)
    kept = leftover.read_bytes()
    code = _run_into(out, files, "--resume")
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert phrase.replace("{leftover}", str(leftover)) in err, err
    assert "internal error" not in err and "Traceback" not in err
    assert not out.exists() and leftover.read_bytes() == kept
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.checkpoints"]  # no staging, no lock


# -- what a person at a terminal sees --------------------------------------------------------------------


def test_without_json_a_bad_flag_is_still_one_line(tmp_path, files, capsys):
    out = tmp_path / "out"
    args = ["finetune", *_expand(PRUNED, files), "--data", str(files / "ten"), "--lr", "0", "--out", str(out)]
    assert main(args) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == ["rmtdeploy: error: --lr must be a learning rate > 0, got 0.0"]
    assert not out.exists()


@pytest.mark.xfail(
    strict=True,
    reason="library: without --json the progress reporter logs 'checking N image files' (and, once loaded, "
    "'loaded pruned ...') on stderr before the error line",
)
def test_without_json_a_bad_image_is_still_one_line(tmp_path, files, capsys):
    out = tmp_path / "out"
    args = ["finetune", *_expand(PRUNED, files), "--data", str(files / "truncated_png"), "--out", str(out)]
    assert main(args) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "zz_cut.png: truncated PNG" in lines[0], lines
    assert not out.exists()


# -- a file that breaks during training ----------------------------------------------------------------


def test_a_file_that_breaks_mid_run_is_skipped_counted_and_named(tmp_path, files):
    from rmtdeploy.finetuning.recipe import FinetuneRecipe
    from rmtdeploy.finetuning.stage import finetune
    from rmtdeploy.finetuning.trainer import Reporter

    class _BreakAfterLoading(Reporter):
        """Breaks ``victim`` once the models are loaded: after the pre-flight check passed it."""

        def __init__(self, victim: Path):
            self.victim, self.broken = victim, False

        def status(self, text: str) -> None:
            if text.startswith("loaded pruned") and not self.broken:
                self.victim.write_bytes(b"\x89PNG\r\n\x1a\n no longer an image")
                self.broken = True

    data = shutil.copytree(files / "ten", tmp_path / "data")
    victim = data / "train" / "c3" / "1.png"
    reporter = _BreakAfterLoading(victim)
    recipe = FinetuneRecipe(epochs=1, batch_size=64, bn_images=64, augment=False)
    run = finetune(files / "pruned", data, tmp_path / "out", recipe=recipe, reporter=reporter)
    assert reporter.broken
    record = json.loads((tmp_path / "out" / "finetune.json").read_text())
    assert record["skipped_images"]["count"] >= 1
    assert str(victim) in record["skipped_images"]["files"]
    assert record == run.to_dict() and run.metrics[-1]["skipped_images"] >= 1
    rmtdeploy.load_pruned(tmp_path / "out")


def test_skip_image_check_trains_past_a_truncated_file_and_names_it(tmp_path, files, capsys):
    data = shutil.copytree(files / "ten", tmp_path / "data")
    victim = data / "train" / "c5" / "0.png"
    _cut(victim, keep=0.5)
    out = tmp_path / "out"
    args = ["finetune", *_expand(PRUNED, files), "--data", str(data), *QUICK, "--skip-image-check"]
    assert main([*args, "--json", "--out", str(out)]) == 0, capsys.readouterr().err
    summary = json.loads(capsys.readouterr().out)
    assert summary["skipped_images"] == {"count": 1, "files": [str(victim)]}
