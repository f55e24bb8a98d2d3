"""Model zoo: resolve a model name, build it with timm, and load its weights.

Three weight sources, always explicit and always labelled in outputs:
``pretrained`` (timm's hub), ``checkpoint`` (a local state dict / safetensors file) and ``random``.
"""

from __future__ import annotations

import contextlib
import difflib
import os
import socket
from dataclasses import dataclass
from pathlib import Path

import timm
import torch
from torch import nn

from rmtdeploy.errors import RmtdeployError

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
    return "other"


@dataclass(frozen=True)
class ModelSource:
    """What to build and where its weights come from, checked before anything is built or read.

    ``weights``: ``"pretrained"`` (timm's hub), ``"random"`` (seeded, labelled so everywhere) or
    ``"checkpoint"``; left ``None`` it is ``checkpoint`` when a checkpoint is given, else ``pretrained``.
    """

    name: str
    weights: str | None = None
    checkpoint: str | os.PathLike | None = None
    num_classes: int | None = None

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
            _check_checkpoint_file(Path(self.checkpoint))
        if self.num_classes is not None and (isinstance(self.num_classes, bool) or self.num_classes < 1):
            raise RmtdeployError(
                f"{{param}} must be a positive integer (the classifier width), got {self.num_classes}",
                param="num_classes",
            )
        return full

    @property
    def source(self) -> str:
        if self.weights is not None:
            return self.weights
        return "checkpoint" if self.checkpoint is not None else "pretrained"

    def load(self) -> LoadedModel:
        return load_model(self.name, self.weights, self.checkpoint, self.num_classes)


def model_source(model: str | ModelSource | LoadedModel) -> ModelSource | LoadedModel:
    """What a stage takes as its model, as something with ``check()`` (before the work) and ``load()``:
    a name becomes a :class:`ModelSource` with its default weight source."""
    return model if isinstance(model, (ModelSource, LoadedModel)) else ModelSource(model)


def _check_checkpoint_file(path: Path) -> None:
    if not path.is_file():
        raise RmtdeployError(f"checkpoint not found: {path}")
    if path.stat().st_size == 0:
        raise RmtdeployError(f"checkpoint {path} is empty")


def load_model(
    name: str,
    weights: str | None = None,
    checkpoint: str | os.PathLike | None = None,
    num_classes: int | None = None,
) -> LoadedModel:
    """Build ``name`` with timm and load weights from the chosen source (see :class:`ModelSource`)."""
    source = ModelSource(name, weights, checkpoint, num_classes)
    full = source.check()
    kwargs = {} if num_classes is None else {"num_classes": num_classes}
    if source.source == "pretrained":
        model = _create_pretrained(full, kwargs)
        label = "pretrained"
    elif source.source == "checkpoint":
        model = build_timm_model(full, **kwargs)
        load_checkpoint_strict(model, checkpoint)
        label = f"checkpoint:{checkpoint}"
    else:
        # Seeded, so two runs on "random" weights analyse and prune the same model.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_WEIGHTS_SEED)
            model = build_timm_model(full, **kwargs)
        label = "random"
    model.eval()
    return LoadedModel(model=model, name=full, family=model_family(model), weights=label)


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


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a state dict from .safetensors or a torch file, unwrapping common training wrappers."""
    path = Path(path)
    _check_checkpoint_file(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise RmtdeployError(f"cannot read checkpoint {path}: {str(exc).splitlines()[0][:200]}") from exc
    for key in ("state_dict_ema", "model_ema", "state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise RmtdeployError(f"checkpoint {path} does not hold a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def state_dict_mismatch(model: nn.Module, state: dict[str, torch.Tensor]) -> str | None:
    """One-line description of missing / unexpected / wrongly shaped keys, or None when they match."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k} {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state and state[k].shape != own[k].shape
    ]
    parts = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes)):
        if items:
            more = f" (+{len(items) - 3} more)" if len(items) > 3 else ""
            parts.append(f"{len(items)} {label}: {', '.join(items[:3])}{more}")
    return "; ".join(parts) or None


def load_checkpoint_strict(model: nn.Module, path: str | os.PathLike) -> None:
    """Load a checkpoint into ``model``; any key or shape mismatch is an error, not a silent partial load."""
    state = read_state_dict(path)
    problem = state_dict_mismatch(model, state)
    if problem:
        # Checkpoints in an upstream layout (original repos) are converted by timm's per-family filter.
        module = __import__(type(model).__module__, fromlist=["checkpoint_filter_fn"])
        filter_fn = getattr(module, "checkpoint_filter_fn", None)
        if filter_fn is not None:
            try:
                converted = filter_fn(state, model)
                if state_dict_mismatch(model, converted) is None:
                    state, problem = converted, None
            except Exception:
                pass
    if problem:
        raise RmtdeployError(f"checkpoint {path} does not fit {type(model).__name__}: {problem}")
    model.load_state_dict(state, strict=True)
