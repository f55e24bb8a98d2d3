"""What an app needs to feed an exported model, written into the ONNX file's ``metadata_props``.

Keys are ``rmtdeploy.<name>``; lists and numbers are JSON text (ONNX stores strings). An app reads them
with ``onnxruntime.InferenceSession(path).get_modelmeta().custom_metadata_map`` or
:func:`read_metadata` (docs/export.md has a complete snippet):

========================  ==============================================================================
``model``                 timm name the architecture was built from
``weights``               where the weights came from (pretrained, checkpoint:<path>, random)
``strategy``              pruning strategy, or ``none`` for a dense export
``keep_macs``             achieved fraction of dense MACs (``1.0`` dense); ``budget``: what was asked
``finetuned``             ``true`` when the weights went through the fine-tune stage
``input_size``            ``[C, H, W]``
``mean`` / ``std``        per-channel normalisation, on pixels scaled to [0, 1]
``interpolation``         resize filter (``bilinear``, ``bicubic``, ...)
``crop_pct``              the centre crop's share of the resized short side
``num_classes``           width of the classifier
``labels``                class names in index order, when known (ImageNet for its models, the
                          fine-tune data's classes, or ``labels=``)
``version``               rmtdeploy version that wrote the file
``parity``                ONNX Runtime vs PyTorch: random and real-image comparisons
========================  ==============================================================================
"""

from __future__ import annotations

import json
import os
from typing import Any

from torch import nn

PREFIX = "rmtdeploy."


def deployment_metadata(
    model: nn.Module,
    *,
    model_name: str,
    weights: str,
    plan: dict[str, Any] | None = None,
    labels: list[str] | None = None,
) -> dict[str, str]:
    """The keys above for ``model`` (its timm data config) and, for a pruned one, its ``plan``."""
    import timm.data

    from rmtdeploy import __version__

    config = timm.data.resolve_data_config({}, model=model)
    num_classes = int(getattr(model, "num_classes", 0) or 0)
    if labels is None and weights != "random":  # a random head's classes mean nothing
        labels = _known_labels(model, plan, num_classes)
    entries: dict[str, Any] = {
        "model": model_name,
        "weights": weights,
        "strategy": "none",
        "keep_macs": 1.0,
        "finetuned": False,
        "input_size": list(_input_size(model, config)),
        "mean": [round(float(v), 6) for v in config["mean"]],
        "std": [round(float(v), 6) for v in config["std"]],
        "interpolation": config.get("interpolation", "bilinear"),
        "crop_pct": float(config.get("crop_pct", 1.0)),
        "num_classes": num_classes,
        "version": __version__,
    }
    if plan is not None:
        entries.update(
            strategy=(plan.get("strategy") or {}).get("name", "none"),
            keep_macs=round(plan["macs"]["pruned"] / plan["macs"]["dense"], 4),
            budget=plan.get("budget"),
            target=plan.get("target"),
            finetuned=bool(plan.get("finetune")),
        )
    if labels:
        entries["labels"] = list(labels)
    return {PREFIX + key: _text(value) for key, value in entries.items() if value is not None}


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """An exported file's ``rmtdeploy.*`` metadata, JSON values decoded, keys without the prefix."""
    import onnx

    proto = onnx.load(os.fspath(path), load_external_data=False)
    out: dict[str, Any] = {}
    for prop in proto.metadata_props:
        if prop.key.startswith(PREFIX):
            try:
                out[prop.key[len(PREFIX) :]] = json.loads(prop.value)
            except ValueError:
                out[prop.key[len(PREFIX) :]] = prop.value
    return out


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _input_size(model: nn.Module, config: dict) -> tuple[int, ...]:
    from rmtdeploy.adapters import find_adapter

    adapter = find_adapter(model)
    # The adapter knows sizes the config does not (a ViT created with img_size=32 keeps cfg's 224).
    shape = adapter.example_inputs(model).shape[1:] if adapter is not None else config["input_size"]
    return tuple(int(d) for d in shape)


def _known_labels(model: nn.Module, plan: dict[str, Any] | None, num_classes: int) -> list[str] | None:
    """The fine-tune data's class names, else the dense source's, else ImageNet's for an ImageNet head."""
    for entry in reversed((plan or {}).get("finetune", [])):
        names = entry.get("labels")
        if names and len(names) == num_classes:
            return list(names)
    names = (plan or {}).get("labels")  # what the dense model's source said (a timm config's label_names)
    if names and len(names) == num_classes:
        return list(names)
    try:
        import timm.data

        subset = timm.data.infer_imagenet_subset(model)
        if subset:
            names = timm.data.ImageNetInfo(subset).label_names()
            if len(names) == num_classes:
                return list(names)
    except Exception:  # noqa: BLE001 (labels are optional; a timm without the info files has none)
        return None
    return None
