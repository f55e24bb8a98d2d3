"""Why a pruned model is (not) as fast as its MACs promise: structure, MACs per block, ONNX ops.

Plain data out (dicts of numbers and strings), for a report's JSON and its Markdown alike.
"""

from __future__ import annotations

import os
from collections import Counter
from typing import Any

from torch import nn

from rmtdeploy.macs import macs_by_key, module_scope, scope_macs  # noqa: F401 (the report's MAC views)

# Ops that move or reshape data without computing on it: they do not shrink with the channel count.
LAYOUT_OPS = ("Transpose", "Reshape", "Concat", "Slice", "Split", "Gather", "Squeeze", "Unsqueeze")
# What a report keeps of an export's record (:class:`rmtdeploy.exporting.ExportResult`).
EXPORT_SUMMARY_KEYS = (
    "opset",
    "num_nodes",
    "file_bytes",
    "max_abs_diff",
    "reference_max_abs",
    "simplify_note",
    "warnings",
)


def structure_diagnostics(model: nn.Module, multiple: int) -> dict[str, Any]:
    """Layer widths that break the channel multiple, and the attention head shapes after pruning."""
    odd: list[str] = []
    layers = 0
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            width_in, width_out = module.in_features, module.out_features
        elif isinstance(module, nn.Conv2d):
            # Total widths: a depthwise conv's single input channel per group is not a misalignment.
            width_in, width_out = module.in_channels, module.out_channels
        else:
            continue
        layers += 1
        # The image's 3 channels are not prunable; they do not count against the multiple.
        checked = [width_out] + ([width_in] if width_in != 3 else [])
        if any(w % multiple for w in checked):
            odd.append(f"{name} {width_in}->{width_out}")
    return {
        "layers": layers,
        f"widths_not_multiple_of_{multiple}": len(odd),
        "examples": odd[:8],
        "attention_heads_x_head_dim": attention_shapes(model),
    }


def attention_shapes(model: nn.Module) -> dict[str, int]:
    """How many attention modules have each ``heads x head_dim`` shape, e.g. ``{"4x64": 12}``."""
    from rmtdeploy.engine.attention import attention_head_shapes

    return {f"{heads}x{dim}": count for (heads, dim), count in attention_head_shapes(model).items()}


def block_breakdown(macs: dict[str, dict[str, int]], ms: dict[str, dict[str, float]]) -> list[dict[str, Any]]:
    """Per block: MAC reduction vs measured speedup, biggest dense time first.

    ``macs`` and ``ms`` map ``"dense"`` and ``"pruned"`` to per-block MACs (:func:`scope_macs`) and
    profiled ms (:func:`rmtdeploy.benchmark.profile_onnx_ops` by scope). A block whose speedup lags its
    MAC reduction, weighted by its share of the dense time, is where the efficiency is lost; blocks
    without MACs (layout ops, ``(unscoped)`` fused nodes) only cost.
    """
    total = sum(ms["dense"].values()) or 1.0
    blocks = sorted(set(ms["dense"]) | set(macs["dense"]), key=lambda b: -ms["dense"].get(b, 0.0))
    return [
        _block_row(
            block,
            (ms["dense"].get(block, 0.0), ms["pruned"].get(block, 0.0)),
            (macs["dense"].get(block, 0), macs["pruned"].get(block, 0)),
            total,
        )
        for block in blocks
    ]


def onnx_op_counts(path: str | os.PathLike, ops: tuple[str, ...] = LAYOUT_OPS) -> dict[str, int]:
    """Node count of an ONNX file, and how many of its nodes are each of ``ops`` (those present)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    counts = Counter(node.op_type for node in graph.node)
    return {"nodes": len(graph.node), **{op: counts[op] for op in ops if counts[op]}}


def export_summary(result) -> dict[str, Any]:
    """The parts of an :class:`~rmtdeploy.exporting.ExportResult` a report keeps (no paths, no timing)."""
    return {k: v for k, v in result.to_dict().items() if k in EXPORT_SUMMARY_KEYS}


def _block_row(
    block: str, ms: tuple[float, float], macs: tuple[int, int], total_dense_ms: float
) -> dict[str, Any]:
    (dense_ms, pruned_ms), (dense_macs, pruned_macs) = ms, macs
    return {
        "block": block,
        "dense_ms": round(dense_ms, 3),
        "pruned_ms": round(pruned_ms, 3),
        "share_of_dense_time": round(dense_ms / total_dense_ms, 4),
        "speedup": round(dense_ms / pruned_ms, 3) if pruned_ms else None,
        "dense_gmacs": round(dense_macs / 1e9, 4),
        "pruned_gmacs": round(pruned_macs / 1e9, 4),
        "mac_reduction": round(dense_macs / pruned_macs, 3) if pruned_macs else None,
        "dense_gmacs_per_s": round(dense_macs / 1e6 / dense_ms, 2) if dense_ms else None,
        "pruned_gmacs_per_s": round(pruned_macs / 1e6 / pruned_ms, 2) if pruned_ms else None,
    }
