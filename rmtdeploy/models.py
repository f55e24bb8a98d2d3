"""Model zoo: resolve a model name, build it with timm, and load its weights.

Three weight sources, always explicit and always labelled in outputs:
``pretrained`` (timm's hub), ``checkpoint`` (a local state dict / safetensors file) and ``random``.
"""

from __future__ import annotations

import contextlib
import difflib
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from rmtdeploy.checkpoints import (  # noqa: F401 (re-exported: the model zoo's checkpoint helpers)
    check_checkpoint_file,
    head_classes,
    load_checkpoint_strict,
    read_saved_config,
    read_state_dict,
    state_dict_mismatch,
)
from rmtdeploy.errors import RmtdeployError
from rmtdeploy.preprocessing import InputConfig

# Short names users type; anything else is passed to timm as a full model name.
MODEL_ALIASES: dict[str, str] = {
    "vit_t": "vit_tiny_patch16_224",
    "vit_s": "vit_small_patch16_224",
    "vit_b": "vit_base_patch16_224",
    "deit_t": "deit_tiny_patch16_224",
    "deit_s": "deit_small_patch16_224",
    "deit_b": "deit_base_patch16_224",
    "deit_s_dist": "deit_small_distilled_patch16_224",
    "swin_t": "swin_tiny_patch4_window7_224",
    "swin_s": "swin_small_patch4_window7_224",
    "swin_b": "swin_base_patch4_window7_224",
    "convnext_a": "convnext_atto",
    "convnext_t": "convnext_tiny",
    "convnext_s": "convnext_small",
    "hiera_t": "hiera_tiny_224",
    "hiera_s": "hiera_small_224",
    "hiera_bp": "hiera_base_plus_224",
    "resnet18": "resnet18",
    "resnet50": "resnet50",
    "resnet101": "resnet101",
}

# timm keeps one file per model family; the module a model class lives in names its family.
_TIMM_MODULE_FAMILY = {
    "vision_transformer": "vit",
    "deit": "deit",
    "swin_transformer": "swin",
    "convnext": "convnext",
    "hiera": "hiera",
    "resnet": "resnet",
}

WEIGHT_SOURCES = ("pretrained", "checkpoint", "random")
RANDOM_WEIGHTS_SEED = 0
# Where a model remembers the timm keyword arguments it was built with (depth, embed_dim, ...), so that a
# plan made from it rebuilds the same architecture (adapters' ``create_kwargs`` read it).
CREATE_KWARGS_ATTRIBUTE = "rmtdeploy_create_kwargs"


def build_timm_model(full: str, *, pretrained: bool = False, **kwargs) -> nn.Module:
    """``timm.create_model`` that records its keyword arguments on the model (see
    :data:`CREATE_KWARGS_ATTRIBUTE`); ``num_classes`` is read back from the model."""
    model = timm.create_model(full, pretrained=pretrained, **kwargs)
    recorded = {k: v for k, v in kwargs.items() if k != "num_classes"}
    setattr(model, CREATE_KWARGS_ATTRIBUTE, _json_kwargs(recorded))
    return model


def _json_kwargs(kwargs: dict) -> dict:
    """Tuples become lists: the kwargs go into a JSON plan and come back as lists, which timm takes."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in kwargs.items()}


@dataclass
class LoadedModel:
    """A built model plus where its weights came from (shown in every report)."""

    model: nn.Module
    name: str  # full timm name
    family: str
    weights: str  # "pretrained", "random" or "checkpoint:<path>"
    labels: tuple[str, ...] | None = None  # class names in index order, when the source says them
    facts: dict[str, Any] = field(default_factory=dict)  # how classes, size and preprocessing were decided

    @property
    def is_random(self) -> bool:
        return self.weights == "random"

    def check(self) -> str:
        """Already built: nothing to check (the :class:`ModelSource` protocol); returns the timm name."""
        return self.name

    def load(self) -> LoadedModel:
        return self


def resolve_model_name(name: str) -> str:
    """Map an alias or full timm name to the timm name; unknown names fail with the closest names."""
    full = MODEL_ALIASES.get(name, name)
    if timm.is_model(full):
        return full
    known = [*MODEL_ALIASES, *timm.list_models()]
    close = difflib.get_close_matches(name, known, n=5, cutoff=0.6)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    aliases = ", ".join(sorted(MODEL_ALIASES))
    raise RmtdeployError(f"unknown model '{name}'.{hint} Aliases: {aliases}; or any timm model name.")


def model_family(model: nn.Module) -> str:
    """Family of a timm model from the timm module its class (or a base class) is defined in."""
    for cls in type(model).__mro__:
        family = _TIMM_MODULE_FAMILY.get(cls.__module__.rsplit(".", 1)[-1])
        if family:
            return family
    # Any other timm model: its timm file names its family (``mobilenetv3``, ``eva``, ``byobnet``, ...).
    module = type(model).__module__
    return module.rsplit(".", 1)[-1] if module.startswith("timm.models.") else "other"


@dataclass(frozen=True)
class ModelSource:
    """What to build and where its weights come from, checked before anything is built or read.

    ``weights``: ``"pretrained"`` (timm's hub), ``"random"`` (seeded, labelled so everywhere) or
    ``"checkpoint"``; left ``None`` it is ``checkpoint`` when a checkpoint is given, else ``pretrained``.
    ``num_classes``: the classifier's width (a checkpoint's own head says it when not given);
    ``model_kwargs``: timm create kwargs; ``input``: the input size and preprocessing the model was trained
    with (a timm config beside a checkpoint fills what is not given: :mod:`rmtdeploy.checkpoints`).
    """

    name: str
    weights: str | None = None
    checkpoint: str | os.PathLike | None = None
    num_classes: int | None = None
    model_kwargs: dict[str, Any] | None = None
    input: InputConfig | None = None

    def check(self) -> str:
        """Raise on anything wrong that can be seen without building the model; returns the timm name."""
        full = resolve_model_name(self.name)
        if self.weights is not None and self.weights not in WEIGHT_SOURCES:
            raise RmtdeployError(
                f"{{param}} must be one of {', '.join(WEIGHT_SOURCES)}, got '{self.weights}'", param="weights"
            )
        if self.checkpoint is not None and self.weights not in (None, "checkpoint"):
            raise RmtdeployError(
                f"{{param}} '{self.weights}' conflicts with a checkpoint file: give one weight source",
                param="weights",
            )
        if self.weights == "checkpoint" and self.checkpoint is None:
            raise RmtdeployError("weights 'checkpoint' needs a checkpoint file ({param})", param="checkpoint")
        if self.checkpoint is not None:
            check_checkpoint_file(Path(self.checkpoint))
        if self.num_classes is not None and (
            isinstance(self.num_classes, bool)
            or not isinstance(self.num_classes, int)
            or self.num_classes < 1
        ):
            raise RmtdeployError(
                f"{{param}} must be a positive integer (the classifier width), got {self.num_classes}",
                param="num_classes",
            )
        if self.model_kwargs is not None and not isinstance(self.model_kwargs, dict):
            raise RmtdeployError("{param} must be a mapping of timm create kwargs", param="model_kwargs")
        if "num_classes" in (self.model_kwargs or {}):
            raise RmtdeployError("give the class count as {param}, not in model_kwargs", param="num_classes")
        if self.input is not None:
            self.input.check()
        return full

    @property
    def source(self) -> str:
        if self.weights is not None:
            return self.weights
        return "checkpoint" if self.checkpoint is not None else "pretrained"

    def resolve(self) -> ResolvedSource:
        """Checked, and for a checkpoint read (once): its state dict, its head's class count and the config
        saved beside it, merged with what was given (given values win; a disagreement on the class count
        or the architecture is an error). Nothing is built."""
        full = self.check()
        given_input = self.input or InputConfig()
        if self.source != "checkpoint":
            decided = "num_classes" if self.num_classes else "timm's default"
            return ResolvedSource(
                self, full, self.num_classes, decided, dict(self.model_kwargs or {}), given_input
            )
        state = read_state_dict(self.checkpoint)
        saved = read_saved_config(self.checkpoint)
        if saved is not None and saved.architecture and _timm_name_or_none(saved.architecture) != full:
            raise RmtdeployError(
                f"{saved.path} says the checkpoint is a {saved.architecture}, not {full}: give the model it was "
                "trained as ({param})",
                param="model",
            )
        head = head_classes(full, state)
        classes, decided_by = self.num_classes, "num_classes"
        if head is not None:
            if classes is not None and classes != head[0]:
                raise RmtdeployError(
                    f"{{param}} {classes} disagrees with the checkpoint's head {head[1]} ({head[0]} classes)",
                    param="num_classes",
                )
            classes, decided_by = head[0], f"the checkpoint's head {head[1]}"
        elif classes is None and saved is not None and saved.num_classes:
            classes, decided_by = saved.num_classes, str(saved.path)
        kwargs = {**(saved.model_kwargs if saved else {}), **(self.model_kwargs or {})}
        kwargs.pop("num_classes", None)
        merged_input = given_input.over(saved.input) if saved is not None else given_input
        labels = saved.labels if saved is not None and saved.labels and len(saved.labels) == classes else None
        return ResolvedSource(self, full, classes, decided_by if classes else "timm's default", kwargs,
                              merged_input, labels, saved.path if saved else None, state)  # fmt: skip

    def load(self) -> LoadedModel:
        return self.resolve().load()


@dataclass(frozen=True)
class ResolvedSource:
    """A :class:`ModelSource` with everything a checkpoint says read and merged; :meth:`load` builds it."""

    source: ModelSource
    name: str  # full timm name
    num_classes: int | None
    classes_from: str
    model_kwargs: dict[str, Any]
    input: InputConfig
    labels: tuple[str, ...] | None = None
    saved_config: Path | None = None
    state: dict[str, torch.Tensor] | None = field(default=None, repr=False, compare=False)

    def expected_classes(self) -> int:
        """The classifier width the built model will have."""
        if self.num_classes is not None:
            return self.num_classes
        from timm.models import get_pretrained_cfg

        cfg = get_pretrained_cfg(self.name)
        return int(getattr(cfg, "num_classes", None) or 1000)

    def check(self) -> str:
        return self.name

    def create_kwargs(self) -> dict[str, Any]:
        kwargs = {**self.model_kwargs, **_size_kwargs(self.name, self.input, self.model_kwargs)}
        return kwargs if self.num_classes is None else {**kwargs, "num_classes": self.num_classes}

    def check_architecture(self) -> None:
        """Build the architecture without memory (meta tensors) and run it at the input size: kwargs timm
        refuses or a size it cannot take are found before any weights load or any work starts."""
        with torch.device("meta"):
            model = _build(self.name, self.create_kwargs())
            self.input.apply(model)
            check_input_size(model, self.name)

    def load(self) -> LoadedModel:
        kind = self.source.source
        kwargs = self.create_kwargs()
        if kind == "pretrained":
            model = _create_pretrained(self.name, kwargs)
            label = "pretrained"
        else:
            # Seeded, so two runs on "random" weights analyse and prune the same model.
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(RANDOM_WEIGHTS_SEED)
                model = _build(self.name, kwargs)
            label = "random"
        self.input.apply(model)
        check_input_size(model, self.name)
        if kind == "checkpoint":
            load_checkpoint_strict(model, self.source.checkpoint, self.state)
            label = f"checkpoint:{self.source.checkpoint}"
        model.eval()
        facts = {"classes_from": self.classes_from, "input_from": self.input.source,
                 "saved_config": str(self.saved_config) if self.saved_config else None}  # fmt: skip
        return LoadedModel(model, self.name, model_family(model), label, self.labels, facts)


def _timm_name_or_none(name: str) -> str | None:
    try:
        return resolve_model_name(name)
    except RmtdeployError:
        return None


def model_source(model: str | ModelSource | LoadedModel) -> ModelSource | LoadedModel:
    """What a stage takes as its model, as something with ``check()`` (before the work) and ``load()``:
    a name becomes a :class:`ModelSource` with its default weight source."""
    return model if isinstance(model, (ModelSource, ResolvedSource, LoadedModel)) else ModelSource(model)


def load_model(
    name: str,
    weights: str | None = None,
    checkpoint: str | os.PathLike | None = None,
    num_classes: int | None = None,
    *,
    model_kwargs: dict[str, Any] | None = None,
    input: InputConfig | None = None,
) -> LoadedModel:
    """Build ``name`` with timm and load weights from the chosen source (see :class:`ModelSource`)."""
    return ModelSource(name, weights, checkpoint, num_classes, model_kwargs, input).load()


def _build(full: str, kwargs: dict[str, Any]) -> nn.Module:
    try:
        return build_timm_model(full, **kwargs)
    except (TypeError, ValueError, AssertionError, RuntimeError) as exc:  # kwargs timm does not take
        shown = {k: v for k, v in kwargs.items() if k != "num_classes"}
        raise RmtdeployError(
            f"cannot build {full} with {shown or 'its defaults'} ({{param}}): {str(exc).splitlines()[0][:160]}",
            param="model_kwargs",
        ) from exc


def _size_kwargs(full: str, given: InputConfig, kwargs: dict[str, Any]) -> dict[str, Any]:
    """``img_size`` / ``in_chans`` for architectures built for one input size (timm's ``fixed_input_size``:
    ViT position tables, Swin windows) when the input differs from timm's default."""
    from timm.models import get_pretrained_cfg

    if given.input_size is None:
        return {}
    cfg = get_pretrained_cfg(full)
    default = tuple(getattr(cfg, "input_size", None) or (3, 224, 224))
    extra: dict[str, Any] = {}
    if given.input_size[0] != default[0] and "in_chans" not in kwargs:
        extra["in_chans"] = given.input_size[0]
    fixed = getattr(cfg, "fixed_input_size", False)
    if fixed and "img_size" not in kwargs and tuple(given.input_size[1:]) != tuple(default[1:]):
        extra["img_size"] = list(given.input_size[1:])
    return extra


def check_input_size(model: nn.Module, name: str) -> None:
    """The model takes its configured input size: a patch embedding's patches tile it, and a forward pass
    at that size runs (one line naming the size otherwise, before any work)."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    chans, height, width = cfg.get("input_size", (3, 224, 224))
    patch = getattr(getattr(model, "patch_embed", None), "patch_size", None)
    if patch is not None:
        ph, pw = (patch, patch) if isinstance(patch, int) else tuple(patch)[:2]
        if height % ph or width % pw:
            raise RmtdeployError(
                f"{name} cuts its input into {ph}×{pw} patches: {{param}} {height}×{width} is not a multiple",
                param="input_size",
            )
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, chans, height, width))
    except NotImplementedError:  # an op without a meta kernel (check_architecture): loading will tell
        return
    except Exception as exc:  # noqa: BLE001 (timm's shape asserts, reshapes and window checks)
        raise RmtdeployError(
            f"{name} does not run at {{param}} {chans}×{height}×{width}: {str(exc).splitlines()[0][:160]}",
            param="input_size",
        ) from exc


def _create_pretrained(full: str, kwargs: dict) -> nn.Module:
    # Without a reachable hub, huggingface_hub retries each file with backoff for about a minute; go
    # offline instead so a locally cached copy still loads and a missing one fails at once.
    offline = not _hub_reachable()
    try:
        with _hub_offline(offline):
            return timm.create_model(full, pretrained=True, **kwargs)
    except Exception as exc:  # network, hub and cache errors all come through here
        text = str(exc).strip()
        reason = (
            "hub unreachable and no cached copy"
            if offline
            else (text.splitlines()[0][:160] if text else type(exc).__name__)
        )
        raise RmtdeployError(
            f"could not get pretrained weights for '{full}' ({reason}). "
            "Without network access give a local checkpoint ({param}: timm/torch state dict or "
            ".safetensors), or random weights for an explicitly untrained model.",
            param="checkpoint",
        ) from exc


def _hub_reachable(timeout: float = 3.0) -> bool:
    from urllib.parse import urlparse

    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    host, port = (
        endpoint.hostname or "huggingface.co",
        endpoint.port or (443 if endpoint.scheme == "https" else 80),
    )
    try:
        socket.create_connection((host, port), timeout=timeout).close()
        return True
    except OSError:
        return False


@contextlib.contextmanager
def _hub_offline(offline: bool):
    from huggingface_hub import constants

    previous = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = previous or offline
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = previous
