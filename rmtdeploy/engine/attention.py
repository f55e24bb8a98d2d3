"""Will TensorRT fuse this model's attention? Head sizes its fused multi-head-attention kernels take.

TensorRT fuses ``softmax(q·kᵀ)·v`` into one kernel (flash / fused MHA) only for some head sizes: in fp16
(and fp32 via tf32) head_dim a multiple of 8 within 16–256; the INT8 fused kernels only for head_dim 16,
32 or 64. A pruned model that falls outside runs attention as separate MatMul/Softmax layers, with the
attention matrix round-tripping through memory: slower than the MAC count says. rmtdeploy prunes whole
heads (head_dim is the dense model's), so a problem here is usually the architecture's own; the prune
stage checks every plan for TensorRT targets and warns, or refuses under ``strict``.
"""

from __future__ import annotations

from collections import Counter

from torch import nn

FP16_HEAD_DIM = (16, 256, 8)  # low, high, multiple
INT8_HEAD_DIMS = (16, 32, 64)


def attention_head_shapes(model: nn.Module) -> Counter[tuple[int, int]]:
    """How many attention modules have each ``(heads, head_dim)``."""
    shapes: Counter[tuple[int, int]] = Counter()
    for module in model.modules():
        # timm calls it num_heads (ViT, Swin) or heads (Hiera's MaskUnitAttention).
        num_heads = getattr(module, "num_heads", None) or getattr(module, "heads", None)
        qkv = getattr(module, "qkv", None)
        if isinstance(num_heads, int) and isinstance(qkv, nn.Linear) and num_heads > 0:
            head_dim = getattr(module, "head_dim", None) or qkv.out_features // (3 * num_heads)
            shapes[(num_heads, int(head_dim))] += 1
    return shapes


def fused_attention_problem(head_dim: int, precision: str) -> str | None:
    """Why TensorRT's fused attention will not take ``head_dim`` at ``precision``, or None."""
    if precision == "int8":
        if head_dim not in INT8_HEAD_DIMS:
            return f"INT8 fused attention takes head_dim {', '.join(map(str, INT8_HEAD_DIMS))}"
        return None
    low, high, multiple = FP16_HEAD_DIM
    if not (low <= head_dim <= high and head_dim % multiple == 0):
        return f"{precision} fused attention takes head_dim a multiple of {multiple} in {low}–{high}"
    return None


def attention_fusion_problems(model: nn.Module, precision: str) -> list[str]:
    """One line per head_dim that TensorRT's fused attention cannot take at ``precision``."""
    by_dim: Counter[int] = Counter()
    for (_, head_dim), count in attention_head_shapes(model).items():
        by_dim[head_dim] += count
    problems = []
    for head_dim, count in sorted(by_dim.items()):
        why = fused_attention_problem(head_dim, precision)
        if why:
            problems.append(f"{count} attention block(s) with head_dim {head_dim}: TensorRT's {why}")
    return problems
