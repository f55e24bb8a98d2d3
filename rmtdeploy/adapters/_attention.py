"""Whole-head bookkeeping for attentions torch-pruning cannot see whole (Swin, Hiera).

torch-pruning (TP) removes heads by cutting rows of ``qkv`` and columns of ``proj`` (``num_heads={qkv: n}``),
but nothing tells the attention module *which* heads went. Swin's relative-position bias table holds one
column per head and must lose exactly the removed ones; Hiera caches ``heads``/``head_dim``, and once whole
heads and per-head dims may both be cut, ``qkv.out_features`` alone cannot tell them apart.

The witness is a ``HeadLayoutProbe``: a zero vector that ``trace_forward`` adds to ``proj``'s input while TP
traces the graph. TP couples it channel for channel with ``proj``'s input, whose layout is head-major
(``head * head_dim + d``), and prunes it in the same group with the same indices. Its pruning function turns
those indices into kept heads and the new head_dim and hands them to the adapter (``apply_head_change``).
The probe lives outside the model (no state-dict change), adds zero (no numeric change) and exists only in
the traced graph; replaying a recorded plan on a fresh model re-derives the same heads from the same indices.
"""

from __future__ import annotations

import types
import weakref
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch_pruning as tp
from torch import nn
from torch.nn import functional as F

from rmtdeploy.adapters.base import ArchitectureAdapter
from rmtdeploy.errors import RmtdeployError


@dataclass(frozen=True)
class AttentionLayout:
    """One attention block as the adapters see it: where its heads live and how wide they are."""

    attention: nn.Module
    qkv: nn.Linear  # fused q, k, v projection: out_features == 3 * num_heads * head_dim
    proj: nn.Linear  # output projection: in_features == num_heads * head_dim, head-major
    num_heads: int
    head_dim: int


# (attention, kept head indices in the pre-pruning numbering, new head_dim) -> None
HeadChange = Callable[[nn.Module, list[int], int], None]


class HeadLayoutProbe(nn.Parameter):
    """Zero vector over an attention's ``num_heads * head_dim`` channels, pruned by TP alongside ``proj``.

    Not registered in the model: TP reaches it only through ``unwrapped_parameters`` and the traced graph.
    """

    attention_ref: weakref.ref  # weak, so a cached probe never keeps a discarded model alive
    num_heads: int
    head_dim: int
    on_head_change: HeadChange

    @classmethod
    def for_layout(cls, layout: AttentionLayout, on_head_change: HeadChange) -> HeadLayoutProbe:
        weight = layout.proj.weight
        probe = cls(torch.zeros(layout.num_heads * layout.head_dim, device=weight.device, dtype=weight.dtype))
        probe.attention_ref = weakref.ref(layout.attention)
        probe.num_heads = layout.num_heads
        probe.head_dim = layout.head_dim
        probe.on_head_change = on_head_change
        return probe


class HeadLayoutProbePruner(tp.pruner.function.BasePruningFunc):
    """Turns the proj-input indices TP removes into (kept heads, new head_dim) for the owning adapter."""

    def prune_out_channels(self, probe: HeadLayoutProbe, idxs: list[int]) -> HeadLayoutProbe:
        heads, head_dim = probe.num_heads, probe.head_dim
        removed = set(idxs)
        cut_per_head = [sum((h * head_dim + d) in removed for d in range(head_dim)) for h in range(heads)]
        kept_heads = [h for h in range(heads) if cut_per_head[h] < head_dim]
        # TP cuts head dims with one pattern per head (channel groups = heads); anything else means the
        # attention was pruned without its head grouping and no head_dim fits every head.
        dims_cut = {cut_per_head[h] for h in kept_heads}
        if len(dims_cut) > 1:
            raise RmtdeployError(
                f"attention heads lost different numbers of channels ({sorted(dims_cut)}); "
                "prune attention only with num_heads grouping (adapter.attention_heads)"
            )
        new_head_dim = head_dim - (dims_cut.pop() if dims_cut else 0)
        keep = [i for i in range(heads * head_dim) if i not in removed]
        probe.data = probe.data[keep]
        probe.num_heads, probe.head_dim = len(kept_heads), new_head_dim
        attention = probe.attention_ref()
        if attention is not None:
            probe.on_head_change(attention, kept_heads, new_head_dim)
        return probe

    prune_in_channels = prune_out_channels  # one vector: its in and out channels are the same channels

    def get_out_channels(self, probe: HeadLayoutProbe) -> int:
        return probe.numel()

    get_in_channels = get_out_channels


# Probes of live attentions. The same probe must reach TP through unwrapped_parameters() and through the
# traced forward, which the pruning code asks for separately; keyed weakly so dropped models free them.
_PROBES: weakref.WeakKeyDictionary[nn.Module, HeadLayoutProbe] = weakref.WeakKeyDictionary()


class HeadProbingAdapter(ArchitectureAdapter):
    """Adapter base for families whose attention heads are tracked with a ``HeadLayoutProbe``.

    Subclasses say where their attentions are (``attention_layouts``), what a head change does to one
    (``apply_head_change``), and what the traced forward must avoid (``tracing_mode``). Everything TP
    needs for head pruning follows from those three.
    """

    def attention_layouts(self, model: nn.Module) -> list[AttentionLayout]:
        raise NotImplementedError

    def apply_head_change(self, attention: nn.Module, kept_heads: list[int], head_dim: int) -> None:
        """Update the attention's per-head state (tables, cached head counts) at the moment TP prunes."""
        raise NotImplementedError

    @contextmanager
    def tracing_mode(self, model: nn.Module) -> Iterator[None]:
        """Family-specific changes held only while TP traces (hide parameters, pick a traceable path)."""
        yield

    def head_layout_probes(self, model: nn.Module) -> dict[nn.Module, HeadLayoutProbe]:
        """Attention -> its probe, made anew when the attention's width changed since the last one."""
        probes = {}
        for layout in self.attention_layouts(model):
            probe = _PROBES.get(layout.attention)
            if probe is None or (probe.num_heads, probe.head_dim) != (layout.num_heads, layout.head_dim):
                probe = HeadLayoutProbe.for_layout(layout, self.apply_head_change)
                _PROBES[layout.attention] = probe
            probes[layout.attention] = probe
        return probes

    def attention_heads(self, model: nn.Module) -> dict[nn.Module, int]:
        return {layout.qkv: layout.num_heads for layout in self.attention_layouts(model)}

    def customized_pruners(self, model: nn.Module) -> dict:
        return {HeadLayoutProbe: HeadLayoutProbePruner()}

    def unwrapped_parameters(self, model: nn.Module) -> list[tuple[nn.Parameter, int]]:
        return [(probe, 0) for probe in self.head_layout_probes(model).values()]

    def trace_forward(self, model: nn.Module, example_inputs: Any) -> Any:
        """The model's forward with the probes wired in and the family's tracing changes held.

        Graphs must be built with it (TP's ``forward_fn=``, as ``rmtdeploy.pruning`` does, and for
        ``tp.pruner.MetaPruner``); without it heads are pruned blind and ``repair`` refuses the model.
        """
        probes = self.head_layout_probes(model)
        with ExitStack() as stack:
            stack.enter_context(self.tracing_mode(model))
            for layout in self.attention_layouts(model):
                stack.enter_context(_probe_added_to_proj_input(layout.proj, probes[layout.attention]))
                # One traced graph whatever the device: fused SDPA kernels would hide the math behind a
                # single autograd node on GPU but not on CPU.
                if hasattr(layout.attention, "fused_attn"):
                    stack.enter_context(attribute_set(layout.attention, "fused_attn", False))
            return super().trace_forward(model, example_inputs)

    def check_head_layouts(self, model: nn.Module) -> None:
        """Fail when qkv/proj widths disagree with the cached head layout (heads pruned without probes)."""
        for layout in self.attention_layouts(model):
            width = layout.num_heads * layout.head_dim
            if layout.qkv.out_features != 3 * width or layout.proj.in_features != width:
                name = type(layout.attention).__name__
                raise RmtdeployError(
                    f"{name}: qkv out {layout.qkv.out_features} / proj in {layout.proj.in_features} do not "
                    f"match {layout.num_heads} heads x {layout.head_dim}; the model was pruned without the "
                    "adapter's trace_forward, so the removed heads are unknown"
                )


@contextmanager
def _probe_added_to_proj_input(proj: nn.Linear, probe: HeadLayoutProbe) -> Iterator[None]:
    handle = proj.register_forward_pre_hook(lambda _module, args: (args[0] + probe, *args[1:]))
    try:
        yield
    finally:
        handle.remove()


@contextmanager
def attribute_set(obj: object, name: str, value: object) -> Iterator[None]:
    """``obj.name = value`` for the duration of the block, then the old value back."""
    old = getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, old)


@contextmanager
def forwards_replaced(modules: list[nn.Module], forward: Callable[..., Any]) -> Iterator[None]:
    """Each module runs ``forward(module, ...)`` for the duration of the block (an export-only form)."""
    patched = [m for m in modules if "forward" not in vars(m)]
    for module in patched:
        module.forward = types.MethodType(forward, module)
    try:
        yield
    finally:
        for module in patched:
            del module.forward  # back to the class's forward: no bound method left behind for deepcopy


def attention_scores_for_onnx(q: torch.Tensor, k: torch.Tensor, scale: float) -> torch.Tensor:
    """``(q * scale) @ kᵀ`` over any leading dims, written for ONNX Runtime.

    timm writes kᵀ straight after the permute that splits qkv into heads; ONNX Runtime's transpose
    optimizer merges the two into one Transpose that moves head_dim off the innermost axis and runs it
    element by element. Flattening the leading dims first puts a Reshape in between: k stays
    head_dim-innermost (a cheap copy) and kᵀ folds into the GEMM (FusedMatMul transB).
    """
    queries, keys, head_dim = q.shape[-2], k.shape[-2], q.shape[-1]
    scores = (q.reshape(-1, queries, head_dim) * scale) @ k.reshape(-1, keys, head_dim).transpose(-1, -2)
    return scores.reshape(*q.shape[:-1], keys)


@contextmanager
def parameters_hidden_from_autograd(params: list[nn.Parameter]) -> Iterator[None]:
    """Parameters that must not become graph nodes: without requires_grad they leave no autograd leaf."""
    old = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(params, old, strict=True):
            p.requires_grad_(flag)


def keep_head_channels(
    attention: nn.Module, names: tuple[str, ...], kept_heads: list[int], head_dim: int
) -> None:
    """Cut per-channel vectors of a head-major attention (``head * head_dim + d``: q/v bias parameters, a
    k-bias buffer) to the kept heads; a name whose value is None is skipped."""
    channels = [h * head_dim + d for h in kept_heads for d in range(head_dim)]
    for name in names:
        vector = getattr(attention, name)
        if isinstance(vector, nn.Parameter):
            setattr(attention, name, nn.Parameter(vector.data[channels].clone(), vector.requires_grad))
        elif vector is not None:
            setattr(attention, name, vector[channels].clone())


def qkv_with_biases(attention: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """timm's qkv of an attention whose q and v biases are parameters around a zero k-bias buffer (Eva,
    SwinV2): the layer, plus the three biases, added after it (``qkv_bias_separate``) or fused."""
    if attention.q_bias is None:
        return attention.qkv(x)
    bias = torch.cat((attention.q_bias, attention.k_bias, attention.v_bias))
    if attention.qkv_bias_separate:
        return attention.qkv(x) + bias
    return F.linear(x, attention.qkv.weight, bias)


@contextmanager
def qkv_biases_added_after_the_layer(attentions: list[nn.Module]) -> Iterator[None]:
    """For attentions whose q and v biases are parameters around a zero k-bias buffer (timm's Eva, SwinV2):
    while the graph is traced, the biases are added after the qkv layer (``qkv_bias_separate``, the same
    function: fused, timm calls ``F.linear`` on ``qkv.weight`` and the layer never runs as a module) and hidden
    from autograd (the graph would map them onto channels wrongly; :func:`keep_head_channels` cuts them by
    head when a ``HeadLayoutProbe`` reports the kept heads)."""
    biases = [b for attn in attentions for b in (attn.q_bias, attn.v_bias) if isinstance(b, nn.Parameter)]
    with ExitStack() as stack:
        for attn in attentions:
            stack.enter_context(attribute_set(attn, "qkv_bias_separate", True))
        stack.enter_context(parameters_hidden_from_autograd(biases))
        yield
