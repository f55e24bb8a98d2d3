"""Export stage: a (pruned) PyTorch model -> a verified ONNX file ready for ONNX Runtime or TensorRT.

Choices, and why (checked on ViT/DeiT/Swin/ConvNeXt/Hiera/ResNet; docs/export.md has the measurements
behind them and the versions they were taken with):

* **Exporter: TorchScript (``dynamo=False``) by default.** It exports all six families, needs no extra
  package, runs several times faster than the dynamo exporter, and after onnxslim its graphs ran as fast
  as or faster than the dynamo exporter's in ONNX Runtime. The dynamo exporter (``exporter="dynamo"``)
  needs ``onnxscript`` and fails on Hiera's 5-D attention unless timm's ``fused_attn`` is off; it is kept
  for when the TorchScript path is removed from torch.
* **fused_attn off during export** on every module that has the flag, as timm's own exportable config
  does: the explicit ``q @ k.T -> softmax -> @ v`` math exports the same way under both exporters (as
  plain MatMul/Softmax that TensorRT's MHA fusion recognises), instead of depending on each exporter's
  SDPA support. The flags are restored afterwards.
* **Export forms per backend** (``backend``, a target's): an adapter may export the same function in a
  form its runtime runs faster. For ONNX Runtime, Swin's and Hiera's attention compute q·kᵀ on
  flattened 3-D tensors: ORT otherwise merges kᵀ with the head-splitting permute into one Transpose that
  moves head_dim off the innermost axis and runs it element by element, a visible share of the run time.
  TensorRT keeps timm's form, the pattern its attention fusion matches.
* **A target decides the graph's shape.** ``target=`` (a :class:`~rmtdeploy.targets.TargetProfile`, a
  name or an alias) sets the opset, the backend and the batch: ``static_shapes: true`` fixes exactly one
  input shape, batch ``max_batch`` (the one batch the engine is built for); otherwise dim 0 is a
  dynamic ``batch`` and an explicit ``batch`` may not exceed ``max_batch``. Arguments left unset take
  the target's values; an explicit argument that disagrees with the target is an error naming both,
  never a silent mix.
* **Static H/W, optionally dynamic batch.** Swin's window partitioning breaks with dynamic H/W, and edge
  engines are built for one resolution anyway. H/W (and channels) are the model's own: its adapter's
  example input (timm's ``pretrained_cfg['input_size']``, or the size a patch embedding was built for)
  unless ``input_shape`` says otherwise. For a dynamic batch the graph is traced with batch >= 2
  because torch.export specialises size-1 dims (and a batch-1 trace may bake the batch in).
* **Opset >= 17** so LayerNorm is one ``LayerNormalization`` node rather than a chain of reductions.
* **onnxslim** folds the TorchScript exporter's Shape/Gather/Constant chains (in a ViT, most of the
  exported nodes); if it is missing or fails, the unsimplified graph is kept and the result says so.
* **Verified before it is visible.** The graph is written to a temporary file beside ``path``, run
  with ONNX Runtime against PyTorch on random batches (like timm's ``onnx_export``) and, when given,
  on real images (:mod:`~rmtdeploy.exporting.parity`), and only renamed onto ``path`` when it
  matches; a failed export leaves any previous file untouched. The reference is the model's own
  forward (fused attention, no export forms): what the user runs.
* **Metadata for the app** (``metadata=``, :mod:`~rmtdeploy.exporting.metadata`) goes into the
  graph's ``metadata_props`` with the parity results, so the file alone says how to feed it.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import json
import os
import time
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rmtdeploy.errors import RmtdeployError
from rmtdeploy.exporting.onnx_file import (
    check_simplifier,
    default_domain_opset,
    save_checked,
    set_metadata,
    simplify_graph,
)
from rmtdeploy.exporting.parity import Parity, RandomParityError, compare
from rmtdeploy.exporting.settings import (  # noqa: F401 (the export's constants, where callers find them)
    DEFAULT_ATOL,
    DEFAULT_RTOL,
    DYNAMO_MIN_OPSET,
    EXPORTERS,
    MIN_OPSET,
    ExportSettings,
    check_export_arguments,
    resolve_shape_and_runtime,
)
from rmtdeploy.io import atomic_save
from rmtdeploy.targets import TargetProfile


@dataclass(frozen=True)
class ExportResult:
    """What was written and how well it matches PyTorch; ``to_dict`` is JSON-ready."""

    path: Path
    opset: int
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    input_shape: tuple[int | str, ...]  # "batch" marks a dynamic batch dim
    exporter: str
    backend: str  # the runtime the graph's export forms were chosen for
    simplified: bool
    simplify_note: str  # simplifier + version, or why the graph was not simplified
    num_nodes: int
    file_bytes: int
    export_s: float
    verified: bool
    max_abs_diff: float | None = None  # max |ORT - PyTorch| over all verified batches
    reference_max_abs: float | None = None  # scale of PyTorch's outputs, to read the diff against
    verify_batches: tuple[int, ...] = ()
    atol: float = DEFAULT_ATOL
    rtol: float = DEFAULT_RTOL
    target: str | None = None  # the target profile the opset, batch and backend came from
    input_shape_from: str = "argument"  # or "model": its own input size (adapter / timm pretrained_cfg)
    warnings: tuple[str, ...] = field(default=())
    parity: tuple[Parity, ...] = ()  # random inputs, then real images when given

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["path"] = str(self.path)
        return out

    @property
    def image_parity(self) -> Parity | None:
        return next((p for p in self.parity if p.inputs != "random"), None)


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    target: TargetProfile | str | None = None,
    input_shape: Sequence[int] | None = None,
    batch: int | None = None,
    dynamic_batch: bool | None = None,
    opset: int | None = None,
    backend: str | None = None,
    simplify: bool | str = True,
    verify: bool = True,
    atol: float = DEFAULT_ATOL,
    rtol: float = DEFAULT_RTOL,
    exporter: str = "torchscript",
    input_name: str = "input",
    output_name: str = "logits",
    overwrite: bool = False,
    seed: int = 0,
    metadata: Mapping[str, str] | None = None,
    images: Iterable[torch.Tensor] | None = None,
    images_name: str = "images",
) -> ExportResult:
    """Export ``model`` to ONNX at ``path`` (atomically), simplify it and verify it with ONNX Runtime.

    ``target`` (a :class:`TargetProfile`, a target name or alias) supplies ``opset``, ``backend``,
    ``dynamic_batch`` (``not static_shapes``) and ``batch`` (``max_batch`` for a static target, else 1);
    an explicit one of these must agree with it (a dynamic target's ``batch`` may be any size up to
    ``max_batch``), otherwise :class:`RmtdeployError` names the argument and the target's value.
    Without a target the defaults are opset 17, ``backend="onnxruntime"``, a dynamic batch, batch 1.

    ``input_shape`` is (C, H, W) and stays static; unset, it is the model's own (its adapter's example
    input, from timm's ``pretrained_cfg``). With ``dynamic_batch`` dim 0 is named ``batch`` and
    verification also runs a batch of 3, proving the graph is not tied to the traced size; otherwise the
    graph is fixed at ``batch``. Verification fails with :class:`RmtdeployError` when any output differs
    from PyTorch beyond ``atol + rtol * |reference|``. An existing ``path`` is only replaced with
    ``overwrite=True``. The model is put in eval mode for the export and restored afterwards.
    ``opset`` must be >= 17; the dynamo exporter writes at least 18 (``ExportResult.opset`` is the
    opset actually written; where a target asks for less, ``ExportResult.warnings`` says so).
    ``backend`` (``"onnxruntime"`` or ``"tensorrt"``) picks the family adapter's export forms; both run
    anywhere, each fastest on its own runtime. ``metadata`` entries join the graph's
    ``metadata_props``; ``images`` (batches shaped like the input, ``images_name`` naming their source)
    are compared too, with the same tolerance, and the parity results are written into the metadata.
    """
    check_export_arguments(input_shape, batch, opset, exporter, backend)
    simplify = check_simplifier(simplify)
    settings = ExportSettings(
        **resolve_shape_and_runtime(model, target, input_shape, batch, dynamic_batch, opset, backend),
        exporter=exporter,
        simplify=simplify,
        verify=verify,
        atol=atol,
        rtol=rtol,
        input_name=input_name,
        output_name=output_name,
        metadata=dict(metadata or {}),
        images=images,
        images_name=images_name,
    )
    path = Path(path)
    prepare_path(path, overwrite)
    generator = torch.Generator().manual_seed(seed)
    state: dict[str, Any] = {}
    notes: list[str] = []
    try:
        atomic_save(path, functools.partial(_build, model, settings, generator, state, notes))
    except RmtdeployError:
        raise
    except OSError as exc:
        raise RmtdeployError(f"cannot write ONNX file {path}: {exc.strerror or exc}") from exc
    return _result(path, settings, state, notes)


def export_for_timing(model: nn.Module, path: str | os.PathLike, input_shape: Sequence[int]) -> ExportResult:
    """``model`` as ONNX Runtime's graph at a static batch of 1 and ``input_shape`` (C, H, W), to be timed:
    unverified (the time does not depend on the outputs) and replacing ``path`` if it exists."""
    return export_onnx(model, path, backend="onnxruntime", batch=1, dynamic_batch=False,
                       input_shape=tuple(input_shape), verify=False, overwrite=True)  # fmt: skip


# --------------------------------------------------------------------------------------------- internals


def prepare_path(path: Path, overwrite: bool) -> None:
    if path.is_dir():
        raise RmtdeployError(f"ONNX output path {path} is a directory; give a file name such as model.onnx")
    if path.exists() and not overwrite:
        raise RmtdeployError(f"{path} already exists; pass --force (overwrite=True) to replace it")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RmtdeployError(f"cannot create the directory for {path}: {exc.strerror or exc}") from exc


def _build(
    model: nn.Module,
    settings: ExportSettings,
    generator: torch.Generator,
    state: dict[str, Any],
    notes: list[str],
    tmp: str,
) -> None:
    """Export, simplify, save and verify into ``tmp``; what happened goes into ``state`` and ``notes``."""
    # Inputs follow the model's device (a model fine-tuned on a GPU exports as is); ORT compares on CPU.
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    example = torch.randn(settings.trace_batch, *settings.input_shape, generator=generator).to(device)
    with _eval_mode(model), torch.no_grad():
        with _export_forms(model, settings.backend):
            output_names = _output_names(model(example), settings.output_name)
            started = time.perf_counter()
            proto = _export_proto(model, example, tmp, settings, output_names)
            state["export_s"] = time.perf_counter() - started
        if settings.simplify:
            # the graph as exported, kept while a parity check may find the simplified one wrong
            exported = copy.deepcopy(proto) if settings.verify else None
            proto, state["simplify_note"], state["simplified"] = simplify_graph(proto, settings.simplify)
        else:
            state["simplify_note"], state["simplified"] = "not requested", False
        _save(proto, model, settings, state, tmp)
        state["output_names"] = output_names
        if settings.target is not None and state["opset"] != settings.opset:
            notes.append(
                f"the {settings.exporter} exporter wrote opset {state['opset']}; "
                f"target {settings.target} asks for {settings.opset}"
            )
        if settings.verify:
            # Against the model's own forward (fused attention, no export forms): what the user runs.
            try:
                state["parity"] = _verify(model, tmp, settings, generator, notes)
            except RandomParityError as exc:  # images untouched: the graph as exported can be checked
                if not state["simplified"]:
                    raise
                # A simplifier can change the function (onnxslim 0.1.98, tf_efficientnet_lite1 at 240 px: 0.59 off)
                note = (
                    f"{settings.simplify}'s graph did not match PyTorch ({exc}); kept the graph as exported"
                )
                notes.append(note)
                warnings.warn(note, stacklevel=4)
                proto = exported
                state["simplify_note"], state["simplified"] = f"{settings.simplify}: wrong, not kept", False
                _save(proto, model, settings, state, tmp)
                state["parity"] = _verify(model, tmp, settings, generator, notes)
            set_metadata(proto, {"rmtdeploy.parity": json.dumps([p.to_dict() for p in state["parity"]])})
            save_checked(proto, tmp)


def _save(proto, model: nn.Module, settings: ExportSettings, state: dict[str, Any], tmp: str) -> None:
    _add_metadata(proto, model, settings)
    save_checked(proto, tmp)
    state.update(num_nodes=len(proto.graph.node), opset=default_domain_opset(proto))


def _result(path: Path, settings: ExportSettings, state: dict[str, Any], notes: list[str]) -> ExportResult:
    batch_dim: int | str = "batch" if settings.dynamic_batch else settings.batch
    return ExportResult(
        path=path,
        opset=state["opset"],
        input_names=(settings.input_name,),
        output_names=tuple(state["output_names"]),
        input_shape=(batch_dim, *settings.input_shape),
        exporter=settings.exporter,
        backend=settings.backend,
        simplified=state["simplified"],
        simplify_note=state["simplify_note"],
        num_nodes=state["num_nodes"],
        file_bytes=path.stat().st_size,
        export_s=round(state["export_s"], 3),
        verified=settings.verify,
        max_abs_diff=max((p.max_abs_diff for p in state.get("parity", ())), default=None),
        reference_max_abs=max((p.reference_max_abs for p in state.get("parity", ())), default=None),
        verify_batches=settings.verify_batches if settings.verify else (),
        atol=settings.atol,
        rtol=settings.rtol,
        target=settings.target,
        input_shape_from=settings.input_shape_from,
        warnings=tuple(notes),
        parity=tuple(state.get("parity", ())),
    )


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


@contextlib.contextmanager
def _export_forms(model: nn.Module, backend: str) -> Iterator[None]:
    """timm's non-fused attention and the family adapter's export-only forms; both restored afterwards."""
    from rmtdeploy.adapters import find_adapter

    fused = [(m, m.fused_attn) for m in model.modules() if isinstance(getattr(m, "fused_attn", None), bool)]
    for module, _ in fused:
        module.fused_attn = False
    adapter = find_adapter(model)
    try:
        with adapter.export_mode(model, backend) if adapter is not None else contextlib.nullcontext():
            yield
    finally:
        for module, flag in fused:
            module.fused_attn = flag


def _output_names(outputs: Any, output_name: str) -> list[str]:
    if isinstance(outputs, torch.Tensor):
        return [output_name]
    if isinstance(outputs, (tuple, list)) and all(isinstance(o, torch.Tensor) for o in outputs):
        return [output_name] + [f"{output_name}_{i}" for i in range(1, len(outputs))]
    raise RmtdeployError(
        f"cannot export {type(outputs).__name__} outputs: the model must return a tensor or a tuple of tensors"
    )


def _export_proto(
    model: nn.Module, example: torch.Tensor, tmp: str, settings: ExportSettings, output_names: list[str]
):
    try:
        if settings.exporter == "torchscript":
            return _export_torchscript(model, example, tmp, settings, output_names)
        return _export_dynamo(model, example, settings, output_names)
    except RmtdeployError:
        raise
    except Exception as exc:
        first = str(exc).strip().splitlines()[0][:240] if str(exc).strip() else type(exc).__name__
        raise RmtdeployError(
            f"ONNX export ({settings.exporter}) of {type(model).__name__} failed: {first}"
        ) from exc


def _export_torchscript(
    model: nn.Module, example: torch.Tensor, tmp: str, settings: ExportSettings, output_names: list[str]
):
    import onnx

    names = [settings.input_name, *output_names]
    dynamic_axes = {name: {0: "batch"} for name in names} if settings.dynamic_batch else None
    with warnings.catch_warnings():
        # The TorchScript path warns that it is deprecated and about traced shape arithmetic.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (example,),
            tmp,
            dynamo=False,
            opset_version=settings.opset,
            input_names=[settings.input_name],
            output_names=output_names,
            dynamic_axes=dynamic_axes,
            do_constant_folding=True,
        )
    return onnx.load(tmp)


def _export_dynamo(
    model: nn.Module, example: torch.Tensor, settings: ExportSettings, output_names: list[str]
):
    try:
        import onnxscript  # noqa: F401  (the dynamo exporter imports it lazily; fail clearly here)
    except ImportError as exc:
        raise RmtdeployError(
            "exporter='dynamo' needs the onnxscript package (pip install onnxscript); "
            "the default exporter='torchscript' does not"
        ) from exc
    dynamic_shapes = ({0: torch.export.Dim("batch", min=1, max=4096)},) if settings.dynamic_batch else None
    with warnings.catch_warnings(), contextlib.redirect_stdout(None):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            model,
            (example,),
            dynamo=True,
            # The dynamo exporter implements opset 18 and up; converting down to 17 fails for most of
            # our families (Pad, ReduceMean axes), so ask for 18 and let the result report the real opset.
            opset_version=max(settings.opset, DYNAMO_MIN_OPSET),
            input_names=[settings.input_name],
            output_names=output_names,
            dynamic_shapes=dynamic_shapes,
            verbose=False,
        )
    return program.model_proto


def _add_metadata(proto, model: nn.Module, settings: ExportSettings) -> None:
    # Say where the graph came from, so an engine built from it can be traced back.
    cfg = getattr(model, "pretrained_cfg", None) or {}
    entries = {
        "rmtdeploy.model_class": type(model).__name__,
        "rmtdeploy.architecture": str(cfg.get("architecture", "")),
        "rmtdeploy.exporter": f"{settings.exporter} (torch {torch.__version__})",
        "rmtdeploy.dynamic_batch": str(settings.dynamic_batch).lower(),
        "rmtdeploy.backend": settings.backend,
        "rmtdeploy.target": settings.target or "",
        **settings.metadata,
    }
    set_metadata(proto, {key: value for key, value in entries.items() if value})


def _verify(
    model: nn.Module, onnx_path: str, settings: ExportSettings, generator: torch.Generator, notes: list[str]
) -> list[Parity]:
    """Parity on random batches (every verify batch size) and on ``settings.images`` when given."""
    from rmtdeploy.onnx_session import cpu_session

    # Verify the graph as it will run: the CPU session the benchmarks use, fusions included.
    sess = cpu_session(onnx_path)
    tolerance = {"atol": settings.atol, "rtol": settings.rtol}
    randoms = [torch.randn(b, *settings.input_shape, generator=generator) for b in settings.verify_batches]
    results = [compare(model, sess, randoms, inputs="random", **tolerance)]
    if results[0].reference_max_abs == 0.0:
        # e.g. a randomly initialised timm model whose classifier is zero-initialised (Hiera): the check
        # then compares zeros with zeros and proves nothing about the backbone.
        message = "verification compared all-zero outputs (zero-initialised classifier?): it proves nothing"
        notes.append(message)
        warnings.warn(message, stacklevel=4)
    if settings.images is not None:
        images = settings.images if settings.dynamic_batch else _rebatch(settings.images, settings.batch)
        results.append(compare(model, sess, images, inputs=settings.images_name, **tolerance))
    return results


def _rebatch(batches: Iterable[torch.Tensor], size: int) -> Iterator[torch.Tensor]:
    """Batches of exactly ``size`` (a static graph takes no other); a last partial one is dropped."""
    pending: list[torch.Tensor] = []
    for batch in batches:
        pending.extend(batch)
        while len(pending) >= size:
            yield torch.stack(pending[:size])
            del pending[:size]
