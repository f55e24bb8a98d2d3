"""Does structured pruning make models *measurably* faster? The product's key speed claim.

For each family: build the timm model (random weights: the speed of a graph does not depend on its
values), prune it to ``--keep-macs`` of its MACs with ``rmtdeploy.pruning.prune_model`` (channels
rounded to the ``--target``'s multiple: ``cpu-ort`` by default, which is 16 on an AVX-512 host and 8
elsewhere, as ONNX Runtime blocks its convolutions; ``--round-to`` overrides), export dense and pruned to ONNX (opset 17, static batch 1, verified against
PyTorch), and time both in ONNX Runtime on the CPU, interleaved, 2 threads, batch 1. The report gives the
MAC and parameter reductions, the measured speedup as the median of per-round dense/pruned ratios
with its p10-p90 spread, and the efficiency ``speedup / MAC reduction``, which should be >= 0.85:
pruning that removes half the MACs but gains much less than 2x is not a deployment win.

For families that fall short it records why it might be: layer widths that are not multiples of 8,
attention head dims, ONNX op counts, and ONNX Runtime's per-op-type kernel time, dense vs pruned.

    python benchmarks/prune_speedup.py                        # all six families
    python benchmarks/prune_speedup.py --models resnet50 convnext_tiny --runs 200
    python benchmarks/prune_speedup.py --pruner tp-magnitude  # plain torch-pruning, CNNs only (baseline)
    python benchmarks/prune_speedup.py --round-to 8           # the TensorRT fp16 multiple instead

Writes ``<out>.json`` (everything, conditions included) and ``<out>.md`` (the table).
"""

from __future__ import annotations

import argparse
import copy
import gc
import sys
import tempfile
import time
import traceback
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a plain script from a source checkout
    sys.path.insert(0, str(REPO))

from rmtdeploy.benchmark import (  # noqa: E402
    LatencyReport,
    measure_onnx_latency,
    module_scope,
    profile_onnx_ops,
)
from rmtdeploy.export import export_onnx  # noqa: E402
from rmtdeploy.io import atomic_write_json, atomic_write_text  # noqa: E402
from rmtdeploy.targets import load_target  # noqa: E402

FAMILIES = (
    "vit_small_patch16_224",
    "deit_small_patch16_224",
    "swin_tiny_patch4_window7_224",
    "convnext_tiny",
    "hiera_tiny_224",
    "resnet50",
)
EFFICIENCY_TARGET = 0.85
QUIET_FRACTION = 0.25  # share of rounds, fastest first, for the low-contention estimate
LAYOUT_OPS = ("Transpose", "Reshape", "Concat", "Slice", "Split", "Gather", "Squeeze", "Unsqueeze")


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="prune_speedup-") as tmp:
        onnx_dir = Path(args.keep_onnx) if args.keep_onnx else Path(tmp)
        onnx_dir.mkdir(parents=True, exist_ok=True)
        prepared: dict[str, dict[str, Any]] = {}
        failed: dict[str, dict[str, Any]] = {}
        for name in args.models:
            print(f"== {name}: prune and export", flush=True)
            try:
                prepared[name] = prepare_family(name, args, onnx_dir)
            except Exception as exc:  # one family failing must not lose the others' numbers
                failed[name] = _error_row(name, exc)
            gc.collect()
        # The timing passes rotate over the families, so a family's passes lie minutes apart and one burst
        # of other jobs on this shared machine cannot decide its number alone.
        passes: dict[str, list[LatencyReport]] = {name: [] for name in prepared}
        for index in range(args.passes):
            for name, family in list(prepared.items()):
                try:
                    passes[name].append(time_pass(family["paths"], args))
                except Exception as exc:
                    failed[name] = _error_row(name, exc)
                    del prepared[name]
                    continue
                speed = passes[name][-1].speedup("dense", "pruned")
                print(
                    f"   pass {index + 1}/{args.passes} {name}: speedup x{speed.median:.2f}, efficiency "
                    f"{speed.median / family['mac_reduction']:.2f}",
                    flush=True,
                )
        for name in args.models:
            if name in failed:
                rows.append(failed[name])
                continue
            print(f"== {name}: one-thread check and profile", flush=True)
            try:
                row = finish_family(prepared[name], passes[name], args)
            except Exception as exc:
                row = _error_row(name, exc)
            rows.append(row)
            _print_row(row)
    report = {
        "benchmark": "prune_speedup",
        "claim": f"speedup / MAC reduction >= {EFFICIENCY_TARGET} per family",
        "settings": {
            "keep_macs": args.keep_macs,
            "round_to": args.round_to,
            "round_to_from": args.round_to_from,
            "pruner": args.pruner,
            "weights": "random (timm pretrained=False, seed 0); latency does not depend on weight values",
            "export": "TorchScript exporter, opset 17, static batch 1, onnxslim, backend onnxruntime (the adapters' "
            "ORT export forms), verified with ORT vs PyTorch",
            "runs": args.runs,
            "passes": args.passes,
            "warmup": args.warmup,
            "threads": args.threads,
            "check_threads": args.check_threads,
            "batch": 1,
        },
        "wall_s": round(time.time() - started, 1),
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "families": rows,
    }
    atomic_write_json(out.with_suffix(".json"), report)
    atomic_write_text(out.with_suffix(".md"), render_markdown(report))
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.md')}")
    failed = [r["model"] for r in rows if r.get("status") != "ok" or not r.get("meets_target")]
    return 1 if failed and args.strict else 0


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(FAMILIES), help="timm model names (default: six)")
    parser.add_argument("--keep-macs", type=float, default=0.5, help="fraction of MACs to keep (default 0.5)")
    parser.add_argument("--runs", type=int, default=200, help="timed interleaved rounds per family")
    parser.add_argument(
        "--passes",
        type=int,
        default=3,
        help="timing passes per family, rotating over the families; the quietest pass (smallest dense + "
        "pruned median) is the headline, every pass is reported",
    )
    parser.add_argument("--warmup", type=int, default=10, help="untimed rounds first")
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads")
    parser.add_argument(
        "--check-threads",
        type=int,
        default=1,
        help="also time with this many threads (half the runs) as a cross-check; 0 to skip. One thread is "
        "far less sensitive to other processes than two on a small shared machine",
    )
    parser.add_argument(
        "--out",
        default=str(REPO / "benchmarks" / "results" / "prune_speedup"),
        help="output path without suffix: writes OUT.json and OUT.md",
    )
    parser.add_argument(
        "--pruner",
        choices=("rmtdeploy", "tp-magnitude"),
        default="rmtdeploy",
        help="rmtdeploy.pruning.prune_model, or plain torch-pruning magnitude pruning (CNNs only)",
    )
    parser.add_argument(
        "--target",
        default="cpu-ort",
        help="target profile whose channel multiple the pruning uses (default cpu-ort: the CPU measured here)",
    )
    parser.add_argument("--round-to", type=int, default=None, help="channel multiple; overrides the target's")
    parser.add_argument("--keep-onnx", default=None, help="keep the exported ONNX files in this folder")
    parser.add_argument("--no-profile", action="store_true", help="skip ORT per-op profiling")
    parser.add_argument("--strict", action="store_true", help="exit 1 when any family misses the target")
    args = parser.parse_args(argv)
    if not 0.0 < args.keep_macs < 1.0:
        parser.error("--keep-macs must be in (0, 1)")
    if args.passes < 1:
        parser.error("--passes must be >= 1")
    if args.round_to is None:
        target = load_target(args.target)
        args.round_to = target.channel_multiple
        args.round_to_from = f"target {target.name}: {target.channel_multiple_from}"
    else:
        args.round_to_from = "--round-to"
    return args


# ------------------------------------------------------------------------------------------- one family


def prepare_family(name: str, args: argparse.Namespace, onnx_dir: Path) -> dict[str, Any]:
    """Build, prune and export one family: everything but the timing."""
    import timm
    import torch_pruning as tp

    torch.manual_seed(0)
    dense = timm.create_model(name, pretrained=False).eval()
    _randomise_zero_classifier(dense)
    example = torch.randn(1, 3, 224, 224)
    dense_macs, dense_params = tp.utils.count_ops_and_params(dense, example)

    started = time.perf_counter()
    pruned, prune_info = prune(copy.deepcopy(dense), args.keep_macs, args.pruner, example, args.round_to)
    prune_s = time.perf_counter() - started
    pruned.eval()
    pruned_macs, pruned_params = tp.utils.count_ops_and_params(pruned, example)

    paths = {"dense": onnx_dir / f"{name}.dense.onnx", "pruned": onnx_dir / f"{name}.pruned.onnx"}
    exports = {}
    for label, module in (("dense", dense), ("pruned", pruned)):
        # Static batch 1, as edge engines are built: the exporter's shape arithmetic folds away.
        exports[label] = export_onnx(module, paths[label], batch=1, dynamic_batch=False, overwrite=True)
    row: dict[str, Any] = {
        "model": name,
        "status": "ok",
        "dense_gmacs": round(dense_macs / 1e9, 4),
        "pruned_gmacs": round(pruned_macs / 1e9, 4),
        "mac_reduction": round(dense_macs / pruned_macs, 4),
        "dense_mparams": round(dense_params / 1e6, 4),
        "pruned_mparams": round(pruned_params / 1e6, 4),
        "param_reduction": round(dense_params / pruned_params, 4),
        "prune_s": round(prune_s, 2),
        "prune_info": prune_info,
        "export": {k: _export_summary(v) for k, v in exports.items()},
        "structure": structure_diagnostics(pruned, args.round_to),
        "onnx_ops": {k: _op_counts(p) for k, p in paths.items()},
    }
    return {
        "row": row,
        "paths": paths,
        "mac_reduction": dense_macs / pruned_macs,
        "block_macs": {"dense": scope_macs(dense, example), "pruned": scope_macs(pruned, example)},
    }


def time_pass(paths: dict[str, Path], args: argparse.Namespace) -> LatencyReport:
    return measure_onnx_latency(
        {k: str(p) for k, p in paths.items()},
        batch=1,
        threads=args.threads,
        warmup=args.warmup,
        runs=args.runs,
    )


def finish_family(family: dict[str, Any], passes: list[LatencyReport], args: argparse.Namespace) -> dict:
    """The headline (quietest) pass, every pass, the one-thread cross-check and the ORT profile."""
    row, paths, mac_reduction = family["row"], family["paths"], family["mac_reduction"]
    # Other processes only ever add time: the pass with the smallest medians ran closest to an idle machine.
    report = min(passes, key=lambda r: r.models["dense"].median_ms + r.models["pruned"].median_ms)
    speed = report.speedup("dense", "pruned")
    # Contention changes the ratio itself (see LatencyReport.speedup): also give the quietest rounds'.
    quiet = report.speedup("dense", "pruned", quietest=QUIET_FRACTION)
    efficiency = speed.median / mac_reduction
    every_pass = []
    for r in passes:
        pass_speedup = r.speedup("dense", "pruned").median
        every_pass.append(
            {
                "dense_ms": round(r.models["dense"].median_ms, 3),
                "pruned_ms": round(r.models["pruned"].median_ms, 3),
                "speedup_median": round(pass_speedup, 4),
                "efficiency": round(pass_speedup / mac_reduction, 4),
                "loadavg_before": r.conditions.get("loadavg_before"),
                "headline": r is report,
            }
        )
    check: dict[str, Any] | None = None
    if args.check_threads:
        check_report = measure_onnx_latency(
            {k: str(p) for k, p in paths.items()},
            threads=args.check_threads,
            warmup=args.warmup,
            runs=max(args.runs // 2, 1),
        )
        check_speed = check_report.speedup("dense", "pruned")
        check = {
            "threads": args.check_threads,
            "dense_ms": round(check_report.models["dense"].median_ms, 3),
            "pruned_ms": round(check_report.models["pruned"].median_ms, 3),
            "speedup_median": round(check_speed.median, 4),
            "speedup_p10": round(check_speed.p10, 4),
            "speedup_p90": round(check_speed.p90, 4),
            "efficiency": round(check_speed.median / mac_reduction, 4),
            "conditions": check_report.conditions,
        }
    row.update(
        {
            "dense_ms": round(report.models["dense"].median_ms, 3),
            "pruned_ms": round(report.models["pruned"].median_ms, 3),
            "dense_iqr_ms": round(report.models["dense"].iqr_ms, 3),
            "pruned_iqr_ms": round(report.models["pruned"].iqr_ms, 3),
            "speedup_median": round(speed.median, 4),
            "speedup_p10": round(speed.p10, 4),
            "speedup_p90": round(speed.p90, 4),
            "speedup_iqr": round(speed.iqr, 4),
            "efficiency": round(efficiency, 4),
            "efficiency_p10": round(speed.p10 / mac_reduction, 4),
            "meets_target": efficiency >= EFFICIENCY_TARGET,
            "passes": every_pass,
            "median_pass_efficiency": round(float(np.median([p["efficiency"] for p in every_pass])), 4),
            "quiet_rounds": quiet.pairs,
            "quiet_speedup_median": round(quiet.median, 4),
            "quiet_efficiency": round(quiet.median / mac_reduction, 4),
            "threads_check": check,
            "latency": report.to_dict(),
        }
    )
    if not args.no_profile:
        # Where the time goes (ms per run, interleaved like the timing): by op type and by block.
        by_op = profile_onnx_ops(paths, group_by="op_type", threads=args.threads, runs=20)
        row["ort_op_ms"] = {k: {op: round(ms, 3) for op, ms in v.items()} for k, v in by_op.items()}
        by_block = profile_onnx_ops(paths, group_by="scope", threads=args.threads, runs=20)
        row["blocks"] = block_breakdown(family["block_macs"], by_block)
    return row


def _error_row(name: str, exc: Exception) -> dict[str, Any]:
    row = {"model": name, "status": "error", "error": f"{type(exc).__name__}: {exc}".strip()}
    row["traceback"] = traceback.format_exc(limit=6)
    print(f"   error: {row['error'][:300]}", flush=True)
    return row


def prune(
    model: nn.Module, keep_macs: float, pruner: str, example: torch.Tensor, round_to: int
) -> tuple[nn.Module, dict]:
    """Prune to ``keep_macs`` of the MACs; returns the pruned model and what the pruner reported."""
    if pruner == "rmtdeploy":
        from rmtdeploy.pruning import prune_model

        result = prune_model(model, keep_macs=keep_macs, round_to=round_to)
        info = {
            key: _jsonable(getattr(result, key))
            for key in ("dense_macs", "pruned_macs", "dense_params", "pruned_params")
            if hasattr(result, key)
        }
        return result.model, info
    return _prune_tp_magnitude(model, keep_macs, example, round_to)


def _prune_tp_magnitude(
    model: nn.Module, keep_macs: float, example: torch.Tensor, round_to: int
) -> tuple[nn.Module, dict]:
    """Baseline: torch-pruning's L2 magnitude, uniform per layer, stepped until the MAC budget is met.

    Works out of the box for CNNs (ResNet, ConvNeXt); transformers need rmtdeploy's adapters.
    """
    import torch_pruning as tp

    classifier = model.get_classifier()
    ignored = list(classifier) if isinstance(classifier, (tuple, list)) else [classifier]
    steps = 40
    pruner = tp.pruner.MetaPruner(
        model,
        example,
        importance=tp.importance.MagnitudeImportance(p=2),
        pruning_ratio=0.8,
        iterative_steps=steps,
        ignored_layers=ignored,
        round_to=round_to,
        # torch-pruning shares these default dicts across instances: always pass fresh ones.
        in_channel_groups={},
        out_channel_groups={},
        num_heads={},
        channel_groups={},
    )
    dense_macs, _ = tp.utils.count_ops_and_params(model, example)
    macs, taken = dense_macs, 0
    while macs > keep_macs * dense_macs and taken < steps:
        pruner.step()
        taken += 1
        macs, _ = tp.utils.count_ops_and_params(model, example)
    return model, {"pruner": "torch_pruning MetaPruner + MagnitudeImportance(p=2)", "steps": taken}


def _randomise_zero_classifier(model: nn.Module) -> None:
    # Some timm models zero-initialise the classifier (Hiera); then the exported logits are all zero
    # and the ORT-vs-PyTorch check proves nothing. Random weights make the check meaningful.
    classifier = model.get_classifier()
    for layer in classifier if isinstance(classifier, (tuple, list)) else [classifier]:
        if isinstance(layer, nn.Linear) and not layer.weight.any():
            nn.init.normal_(layer.weight, std=0.02)


# ---------------------------------------------------------------------------------------- diagnostics


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
    heads: Counter[str] = Counter()
    for module in model.modules():
        # timm calls it num_heads (ViT, Swin) or heads (Hiera's MaskUnitAttention).
        num_heads = getattr(module, "num_heads", None) or getattr(module, "heads", None)
        qkv = getattr(module, "qkv", None)
        if isinstance(num_heads, int) and isinstance(qkv, nn.Linear) and num_heads > 0:
            head_dim = getattr(module, "head_dim", None) or qkv.out_features // (3 * num_heads)
            heads[f"{num_heads}x{head_dim}"] += 1
    return {
        "layers": layers,
        f"widths_not_multiple_of_{multiple}": len(odd),
        "examples": odd[:8],
        "attention_heads_x_head_dim": dict(heads),
    }


def scope_macs(model: nn.Module, example: torch.Tensor) -> dict[str, int]:
    """MACs per top-level block (same keys as the ONNX profile's scopes), from leaf modules only."""
    import torch_pruning as tp

    _, _, layer_macs, _ = tp.utils.count_ops_and_params(model, example, layer_wise=True)
    names = {module: name for name, module in model.named_modules()}
    totals: Counter[str] = Counter()
    for module, macs in layer_macs.items():
        if macs and not any(True for _ in module.children()) and module in names:
            totals[module_scope(model, names[module])] += int(macs)
    return dict(totals)


def block_breakdown(macs: dict[str, dict[str, int]], ms: dict[str, dict[str, float]]) -> list[dict[str, Any]]:
    """Per block: MAC reduction vs measured speedup, biggest dense time first.

    A block whose speedup lags its MAC reduction, weighted by its share of the dense time, is where
    the efficiency is lost; blocks without MACs (layout ops, ``(unscoped)`` fused nodes) only cost.
    """
    total = sum(ms["dense"].values()) or 1.0
    rows = []
    for block in sorted(set(ms["dense"]) | set(macs["dense"]), key=lambda b: -ms["dense"].get(b, 0.0)):
        dense_ms, pruned_ms = ms["dense"].get(block, 0.0), ms["pruned"].get(block, 0.0)
        dense_macs, pruned_macs = macs["dense"].get(block, 0), macs["pruned"].get(block, 0)
        rows.append(
            {
                "block": block,
                "dense_ms": round(dense_ms, 3),
                "pruned_ms": round(pruned_ms, 3),
                "share_of_dense_time": round(dense_ms / total, 4),
                "speedup": round(dense_ms / pruned_ms, 3) if pruned_ms else None,
                "dense_gmacs": round(dense_macs / 1e9, 4),
                "pruned_gmacs": round(pruned_macs / 1e9, 4),
                "mac_reduction": round(dense_macs / pruned_macs, 3) if pruned_macs else None,
                "dense_gmacs_per_s": round(dense_macs / 1e6 / dense_ms, 2) if dense_ms else None,
                "pruned_gmacs_per_s": round(pruned_macs / 1e6 / pruned_ms, 2) if pruned_ms else None,
            }
        )
    return rows


def _op_counts(path: Path) -> dict[str, int]:
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    counts = Counter(node.op_type for node in graph.node)
    return {"nodes": len(graph.node), **{op: counts[op] for op in LAYOUT_OPS if counts[op]}}


def _export_summary(result) -> dict[str, Any]:
    keep = (
        "opset",
        "num_nodes",
        "file_bytes",
        "max_abs_diff",
        "reference_max_abs",
        "simplify_note",
        "warnings",
    )
    return {k: v for k, v in result.to_dict().items() if k in keep}


def _jsonable(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else value.tolist()
    if isinstance(value, (int, float, str, bool)) or value is None:
        return value
    return str(value)


# -------------------------------------------------------------------------------------------- output


def _print_row(row: dict[str, Any]) -> None:
    if row.get("status") != "ok":
        return
    print(
        f"   MACs x{row['mac_reduction']:.2f}  speedup x{row['speedup_median']:.2f} "
        f"[{row['speedup_p10']:.2f}-{row['speedup_p90']:.2f}]  efficiency {row['efficiency']:.2f}  "
        f"dense {row['dense_ms']:.1f} ms  pruned {row['pruned_ms']:.1f} ms",
        flush=True,
    )


def render_markdown(report: dict[str, Any]) -> str:
    s = report["settings"]
    lines = [
        "# Pruning speedup (ONNX Runtime CPU)",
        "",
        f"keep_macs={s['keep_macs']}, round_to={s['round_to']} ({s.get('round_to_from', '')}), "
        f"pruner={s['pruner']}; {s['export']}.",
        f"Latency: batch {s['batch']}, {s['threads']} threads (one ORT thread pool shared by both models, "
        f"default spinning), {s['runs']} interleaved rounds after {s['warmup']} warm-up, in "
        f"{s.get('passes', 1)} passes that rotate over the families (a family's passes lie minutes apart); "
        "the headline is each family's quietest pass (smallest dense + pruned median: other processes only "
        "add time), and every pass's efficiency is listed. Speedup = median "
        "(p10-p90) of per-round dense/pruned ratios. "
        f"Efficiency = speedup / MAC reduction; target >= {EFFICIENCY_TARGET}. Weights: {s['weights']}.",
        "",
        "Two cross-checks, because the machine is shared and contention changes the ratio itself, in both "
        "directions (a core taken by another process stalls two-thread kernels, more so the pruned model's "
        "shorter ones; heavy load slows the dense model more): the quietest "
        f"{QUIET_FRACTION:.0%} of rounds (smallest dense+pruned time), and a one-thread run "
        "(half the rounds), which other processes disturb far less.",
        "",
        "| model | GMACs dense → pruned | MAC red. | Mparams dense → pruned | dense ms | pruned ms "
        f"| speedup (p10–p90) | efficiency | ≥ target | every pass's efficiency | quietest-25% speedup / eff. "
        f"| {s.get('check_threads') or '–'}-thread speedup / eff. |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["families"]:
        if r.get("status") != "ok":
            error = r.get("error", "")[:160].replace("|", "/")
            lines.append(f"| {r['model']} | {r.get('status')}: {error} |" + " |" * 10)
            continue
        lines.append(
            f"| {r['model']} | {r['dense_gmacs']:.2f} → {r['pruned_gmacs']:.2f} | ×{r['mac_reduction']:.2f} "
            f"| {r['dense_mparams']:.1f} → {r['pruned_mparams']:.1f} | {r['dense_ms']:.1f} | {r['pruned_ms']:.1f} "
            f"| ×{r['speedup_median']:.2f} ({r['speedup_p10']:.2f}–{r['speedup_p90']:.2f}) "
            f"| {r['efficiency']:.2f} | {'yes' if r['meets_target'] else '**no**'} | {_passes_cell(r)} "
            f"| ×{r['quiet_speedup_median']:.2f} / {r['quiet_efficiency']:.2f} | {_check_cell(r)} |"
        )
    conditions = next(
        (r["latency"]["conditions"] for r in report["families"] if r.get("status") == "ok"), None
    )
    if conditions:
        lines += [
            "",
            f"Measured on {conditions['cpu_model']} ({conditions['cpu_count']} logical CPUs, shared with other "
            f"jobs), onnxruntime {conditions['onnxruntime_version']}, {conditions['platform']}. "
            f"1-minute load average during the runs: {_load_range(report['families'])} on "
            f"{conditions['cpu_count']} CPUs (other engineers' jobs; per-family values in the JSON).",
        ]
    notes = [r for r in report["families"] if r.get("status") == "ok"]
    if notes:
        lines += ["", "## Structure and where the time goes", ""]
        for r in notes:
            st = r["structure"]
            odd_key = next(k for k in st if k.startswith("widths_not_multiple_of_"))
            ops_d, ops_p = r["onnx_ops"]["dense"], r["onnx_ops"]["pruned"]
            line = (
                f"- **{r['model']}**: {st[odd_key]} of {st['layers']} conv/linear layers off the multiple of "
                f"{report['settings']['round_to']}"
                + (f" (e.g. {', '.join(st['examples'][:3])})" if st["examples"] else "")
                + (
                    f"; heads×head_dim {st['attention_heads_x_head_dim']}"
                    if st["attention_heads_x_head_dim"]
                    else ""
                )
                + f"; ONNX nodes {ops_d['nodes']} → {ops_p['nodes']}"
            )
            if "ort_op_ms" in r:
                top = _op_time_shift(r["ort_op_ms"]["dense"], r["ort_op_ms"]["pruned"])
                line += f"; ORT ms/run by op (dense → pruned): {top}"
            lines.append(line)
        lines += _block_tables(notes)
    lines.append("")
    return "\n".join(lines)


def _block_tables(rows: list[dict[str, Any]]) -> list[str]:
    """Per-block tables for the families below target (or the least efficient one when all pass)."""
    with_blocks = [r for r in rows if r.get("blocks")]
    if not with_blocks:
        return []
    chosen = [r for r in with_blocks if not r["meets_target"]] or [
        min(with_blocks, key=lambda r: r["efficiency"])
    ]
    lines: list[str] = []
    for r in chosen:
        lines += [
            "",
            f"### {r['model']}: per block (efficiency {r['efficiency']:.2f})",
            "",
            "Profiled separately (ORT profiler, dense and pruned interleaved, fastest of 20 runs per block), "
            "so block times do not add up to the latency above. GMAC/s = the block's MAC throughput.",
            "",
            "| block | share of dense time | dense → pruned ms | speedup | MAC red. | GMAC/s dense → pruned |",
            "|---|---|---|---|---|---|",
        ]
        for b in r["blocks"]:
            if b["share_of_dense_time"] < 0.01:
                continue
            speedup = f"×{b['speedup']:.2f}" if b["speedup"] else "–"
            macs = f"×{b['mac_reduction']:.2f}" if b["mac_reduction"] else "no MACs"
            rate = (
                f"{b['dense_gmacs_per_s']:.0f} → {b['pruned_gmacs_per_s']:.0f}"
                if b["dense_gmacs_per_s"] and b["pruned_gmacs_per_s"]
                else "–"
            )
            lines.append(
                f"| {b['block']} | {b['share_of_dense_time']:.0%} | {b['dense_ms']:.2f} → {b['pruned_ms']:.2f} "
                f"| {speedup} | {macs} | {rate} |"
            )
    return lines


def _passes_cell(row: dict[str, Any]) -> str:
    return " / ".join(
        f"**{p['efficiency']:.2f}**" if p["headline"] else f"{p['efficiency']:.2f}"
        for p in row.get("passes", [])
    )


def _check_cell(row: dict[str, Any]) -> str:
    check = row.get("threads_check")
    if not check:
        return "–"
    return f"×{check['speedup_median']:.2f} / {check['efficiency']:.2f}"


def _load_range(rows: list[dict[str, Any]]) -> str:
    loads = [
        load[0]
        for r in rows
        if r.get("status") == "ok"
        for load in (
            r["latency"]["conditions"]["loadavg_before"],
            r["latency"]["conditions"]["loadavg_after"],
        )
        if load
    ]
    return f"{min(loads):.1f}–{max(loads):.1f}" if loads else "unknown"


def _op_time_shift(dense: dict[str, float], pruned: dict[str, float], top: int = 5) -> str:
    ops = sorted(set(dense) | set(pruned), key=lambda op: -dense.get(op, 0.0))[:top]
    return ", ".join(f"{op} {dense.get(op, 0):.1f} → {pruned.get(op, 0):.1f}" for op in ops)


if __name__ == "__main__":
    sys.exit(main())
