"""Weights trained here: a small member of a family trained from scratch on a built-in real dataset.

No model hub is reachable on the machines this runs on, so the embedded default of ``rmtdeploy compress``
(and the accuracy benchmark) trains its dense model itself: cross-entropy with label smoothing, AdamW with
one warm-up epoch then cosine, augmented training split of the built-in set, at the set's small input
size. The result is cached by everything that shapes it (model, kwargs, data, size, schedule, seed), so
a second run loads it in a second. The weights say ``trained:<dataset>`` wherever they are reported.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from rmtdeploy.errors import RmtdeployError
from rmtdeploy.io import cache_folder
from rmtdeploy.models import LoadedModel, build_timm_model, model_family, resolve_model_name

SCRATCH_VERSION = 1  # bump when the training loop changes: cached weights of another loop are not reused
CACHE = cache_folder("trained")


@dataclass(frozen=True)
class ScratchRecipe:
    """How to train the dense model from scratch (a recipe's ``train:`` section)."""

    dataset: str = "mnist5k"
    image_size: int = 32
    model_kwargs: dict[str, Any] = field(default_factory=dict)  # timm kwargs making the model small
    epochs: int = 6
    lr: float = 2e-3
    batch_size: int = 64
    weight_decay: float = 0.05
    label_smoothing: float = 0.1
    seed: int = 0

    def key(self, model_name: str) -> str:
        text = json.dumps(
            [model_name, dataclasses.asdict(self), SCRATCH_VERSION], sort_keys=True, default=str
        )
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    def check(self) -> None:
        from rmtdeploy.data import dataset_names

        if self.dataset not in dataset_names():
            raise RmtdeployError(
                f"train.dataset '{self.dataset}' is not a built-in dataset; choose one of: "
                + ", ".join(dataset_names())
            )
        for name in ("image_size", "epochs", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise RmtdeployError(f"train.{name} must be a positive integer, got {value!r}")
        if not self.lr > 0:
            raise RmtdeployError(f"train.lr must be > 0, got {self.lr!r}")


def build_small_model(name: str, recipe: ScratchRecipe, num_classes: int) -> torch.nn.Module:
    """The model ``name`` with the recipe's kwargs at its image size (the seed fixes the initial weights)."""
    full = resolve_model_name(name)
    kwargs = dict(recipe.model_kwargs)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(recipe.seed)
            model = build_timm_model(full, num_classes=num_classes, **kwargs)
    except Exception as exc:  # kwargs timm does not take
        raise RmtdeployError(
            f"cannot build {full} with train.model_kwargs {kwargs}: {str(exc).splitlines()[0][:160]}"
        ) from exc
    # The model's own config says what it expects, so the adapter, data loaders and MAC counts agree.
    model.pretrained_cfg = {**model.pretrained_cfg, "input_size": (3, recipe.image_size, recipe.image_size)}
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, 3, recipe.image_size, recipe.image_size))
    except Exception as exc:  # e.g. a ViT built for 224 fed 32×32 images
        raise RmtdeployError(
            f"{full} does not run at {recipe.image_size}×{recipe.image_size} ({str(exc).splitlines()[0][:120]}); "
            "set train.model_kwargs for that size (e.g. img_size) or train.image_size, as the shipped recipes do"
        ) from exc
    return model


def train_from_scratch(
    model: torch.nn.Module,
    recipe: ScratchRecipe,
    *,
    val_images: int | None = None,
    on_epoch: Callable[[int, int, float], None] | None = None,
) -> dict[str, Any]:
    """Train ``model`` in place on the recipe's dataset; returns the record (val curve, wall time)."""
    from rmtdeploy.data import builtin_loader
    from rmtdeploy.finetuning.distill import adamw_param_groups, evaluate_top1

    val = builtin_loader(recipe.dataset, "val", model=model, max_images=val_images, shuffle=False)
    train = builtin_loader(recipe.dataset, "train", model=model, batch_size=recipe.batch_size, augment=True,
                           seed=recipe.seed, shuffle=True)  # fmt: skip
    optimizer = torch.optim.AdamW(adamw_param_groups(model, recipe.weight_decay), lr=recipe.lr)
    total, warmup = recipe.epochs * len(train), len(train)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: (step + 1) / warmup if step < warmup
        else 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup))),
    )  # fmt: skip
    curve, started = [], time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe.seed)
        for epoch in range(recipe.epochs):
            model.train()
            for images, labels in train:
                loss = F.cross_entropy(model(images), labels, label_smoothing=recipe.label_smoothing)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
                optimizer.step()
                schedule.step()
            curve.append(round(evaluate_top1(model, val), 2))
            if on_epoch:
                on_epoch(epoch + 1, recipe.epochs, curve[-1])
    model.eval()
    return {
        "dataset": recipe.dataset,
        "recipe": dataclasses.asdict(recipe),
        "val_curve": curve,
        "top1": curve[-1],
        "train_s": round(time.perf_counter() - started, 1),
    }


def trained_model(
    name: str,
    recipe: ScratchRecipe,
    *,
    cache: str | os.PathLike | None = None,
    val_images: int | None = None,
    on_epoch: Callable[[int, int, float], None] | None = None,
) -> tuple[LoadedModel, dict[str, Any], Path]:
    """``name`` trained from scratch by ``recipe``, from the cache when it holds this exact training.

    Returns the loaded model (weights ``trained:<dataset>``), the training record and the cached weights
    file (a checkpoint the teacher can be rebuilt from). ``val_images`` caps the validation images of the
    record's curve (None: the whole split); a capped record is cached apart, the weights are the same."""
    from safetensors.torch import load_file, save_file

    from rmtdeploy.data import get_dataset
    from rmtdeploy.io import atomic_save, atomic_write_json

    recipe.check()
    full = resolve_model_name(name)
    dataset = get_dataset(recipe.dataset)
    folder = Path(cache) if cache is not None else CACHE
    stem = f"{full}-{recipe.dataset}-{recipe.key(full)}" + (
        f"-val{val_images}" if val_images is not None else ""
    )
    weights, record_path = folder / f"{stem}.safetensors", folder / f"{stem}.json"
    model = build_small_model(full, recipe, dataset.num_classes)
    if weights.is_file() and record_path.is_file():
        model.load_state_dict(load_file(weights))
        record = {**json.loads(record_path.read_text()), "cached": True}
    else:
        record = train_from_scratch(model, recipe, val_images=val_images, on_epoch=on_epoch)
        folder.mkdir(parents=True, exist_ok=True)
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        atomic_save(weights, lambda tmp: save_file(state, tmp))
        atomic_write_json(record_path, record)
        record = {**record, "cached": False}
    loaded = LoadedModel(
        model=model.eval(), name=full, family=model_family(model), weights=f"trained:{recipe.dataset}"
    )
    return loaded, record, weights
