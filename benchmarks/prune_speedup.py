"""Does structured pruning make models *measurably* faster? The product's key speed claim.

For each family: build the timm model (random weights: the speed of a graph does not depend on its
values), prune it to ``--keep-macs`` of its MACs with ``rmtdeploy.pruning.prune_model`` (channels
rounded to the ``--target``'s multiple: ``cpu-ort`` by default, which is 16 on an AVX-512 host and 8
elsewhere, as ONNX Runtime blocks its convolutions; ``--round-to`` overrides), export dense and pruned
to ONNX (opset 17, static batch 1, verified against PyTorch), and time both in ONNX Runtime on the CPU,
interleaved, 2 threads, batch 1. The report gives the MAC and parameter reductions, the measured
speedup as the median of per-round dense/pruned ratios with its p10-p90 spread, and the efficiency
``speedup / MAC reduction``, which should be >= 0.85: pruning that removes half the MACs but gains
much less than 2x is not a deployment win.

For families that fall short it records why it might be: layer widths that are not multiples of 8,
attention head dims, ONNX op counts, and ONNX Runtime's per-op-type kernel time, dense vs pruned.
The measuring is ``rmtdeploy.benchmark``, the diagnostics and the Markdown ``rmtdeploy.report``;
this script only chooses what to run. The protocol: docs/benchmarks.md.

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
from pathlib import Path
from typing import Any

import torch
from torch import nn

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a plain script from a source checkout
    sys.path.insert(0, str(REPO))

from rmtdeploy.benchmark import LatencyReport, measure_onnx_latency, profile_onnx_ops  # noqa: E402
from rmtdeploy.exporting import export_onnx  # noqa: E402
from rmtdeploy.io import atomic_write_json, atomic_write_text  # noqa: E402
from rmtdeploy.macs import count_ops  # noqa: E402
from rmtdeploy.report import (  # noqa: E402
    block_breakdown,
    export_summary,
    onnx_op_counts,
    quietest_pass,
    render_speedup_markdown,
    scope_macs,
    speedup_summary,
    structure_diagnostics,
    threads_check_row,
)
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
PROFILE_RUNS = 20


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="prune_speedup-") as tmp:
        onnx_dir = Path(args.keep_onnx) if args.keep_onnx else Path(tmp)
        onnx_dir.mkdir(parents=True, exist_ok=True)
        failed: dict[str, dict[str, Any]] = {}  # one family failing must not lose the others' numbers
        prepared = prepare_families(args, onnx_dir, failed)
        passes = run_passes(prepared, args, failed)
        rows = finish_families(prepared, passes, args, failed)
    report = {
        "benchmark": "prune_speedup",
        "claim": f"speedup / MAC reduction >= {EFFICIENCY_TARGET} per family",
        "settings": _settings(args),
        "wall_s": round(time.time() - started, 1),
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "families": rows,
    }
    atomic_write_json(out.with_suffix(".json"), report)
    markdown = render_speedup_markdown(
        report, efficiency_target=EFFICIENCY_TARGET, quiet_fraction=QUIET_FRACTION
    )
    atomic_write_text(out.with_suffix(".md"), markdown)
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.md')}")
    missed = [r["model"] for r in rows if r.get("status") != "ok" or not r.get("meets_target")]
    return 1 if missed and args.strict else 0


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
    args.round_to, args.round_to_from = _channel_multiple(args)
    return args


def _channel_multiple(args: argparse.Namespace) -> tuple[int, str]:
    if args.round_to is not None:
        return args.round_to, "--round-to"
    target = load_target(args.target)
    return target.channel_multiple, f"target {target.name}: {target.channel_multiple_from}"


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    return {
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
    }


# ------------------------------------------------------------------------------------------- the loop


def prepare_families(args: argparse.Namespace, onnx_dir: Path, failed: dict) -> dict[str, dict[str, Any]]:
    prepared: dict[str, dict[str, Any]] = {}
    for name in args.models:
        print(f"== {name}: prune and export", flush=True)
        try:
            prepared[name] = prepare_family(name, args, onnx_dir)
        except Exception as exc:
            failed[name] = _error_row(name, exc)
        gc.collect()
    return prepared


def run_passes(prepared: dict[str, dict[str, Any]], args: argparse.Namespace, failed: dict) -> dict:
    """Timing passes that rotate over the families (a family that fails leaves ``prepared``).

    A family's passes lie minutes apart, so one burst of other jobs on a shared machine cannot decide
    its number alone.
    """
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
    return passes


def finish_families(
    prepared: dict[str, dict[str, Any]], passes: dict, args: argparse.Namespace, failed: dict
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
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
    return rows


# ------------------------------------------------------------------------------------------- one family


def prepare_family(name: str, args: argparse.Namespace, onnx_dir: Path) -> dict[str, Any]:
    """Build, prune and export one family: everything but the timing."""
    import timm

    torch.manual_seed(0)
    dense = timm.create_model(name, pretrained=False).eval()
    _randomise_zero_classifier(dense)
    example = torch.randn(1, 3, 224, 224)
    dense_macs, dense_params = count_ops(dense, example)

    started = time.perf_counter()
    pruned, prune_info = prune(copy.deepcopy(dense), args.keep_macs, args.pruner, example, args.round_to)
    prune_s = time.perf_counter() - started
    pruned.eval()
    pruned_macs, pruned_params = count_ops(pruned, example)

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
        "export": {k: export_summary(v) for k, v in exports.items()},
        "structure": structure_diagnostics(pruned, args.round_to),
        "onnx_ops": {k: onnx_op_counts(p) for k, p in paths.items()},
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
    row, mac_reduction = family["row"], family["mac_reduction"]
    row.update(
        speedup_summary(
            passes, mac_reduction, efficiency_target=EFFICIENCY_TARGET, quiet_fraction=QUIET_FRACTION
        )
    )
    check = None
    if args.check_threads:
        # The same comparison on fewer threads with half the rounds: less sensitive to other processes.
        check_report = measure_onnx_latency(
            {k: str(p) for k, p in family["paths"].items()},
            threads=args.check_threads,
            warmup=args.warmup,
            runs=max(args.runs // 2, 1),
        )
        check = threads_check_row(check_report, mac_reduction, args.check_threads)
    row.update({"threads_check": check, "latency": quietest_pass(passes).to_dict()})
    if not args.no_profile:
        row.update(_profile(family, args))
    return row


def _profile(family: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """Where the time goes (ms per run, interleaved like the timing): by op type and by block."""
    paths = family["paths"]
    by_op = profile_onnx_ops(paths, group_by="op_type", threads=args.threads, runs=PROFILE_RUNS)
    by_block = profile_onnx_ops(paths, group_by="scope", threads=args.threads, runs=PROFILE_RUNS)
    return {
        "ort_op_ms": {k: {op: round(ms, 3) for op, ms in v.items()} for k, v in by_op.items()},
        "blocks": block_breakdown(family["block_macs"], by_block),
    }


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
    dense_macs, _ = count_ops(model, example)
    macs, taken = dense_macs, 0
    while macs > keep_macs * dense_macs and taken < steps:
        pruner.step()
        taken += 1
        macs, _ = count_ops(model, example)
    return model, {"pruner": "torch_pruning MetaPruner + MagnitudeImportance(p=2)", "steps": taken}


def _randomise_zero_classifier(model: nn.Module) -> None:
    # Some timm models zero-initialise the classifier (Hiera); then the exported logits are all zero
    # and the ORT-vs-PyTorch check proves nothing. Random weights make the check meaningful.
    classifier = model.get_classifier()
    for layer in classifier if isinstance(classifier, (tuple, list)) else [classifier]:
        if isinstance(layer, nn.Linear) and not layer.weight.any():
            nn.init.normal_(layer.weight, std=0.02)


def _jsonable(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else value.tolist()
    if isinstance(value, (int, float, str, bool)) or value is None:
        return value
    return str(value)


def _print_row(row: dict[str, Any]) -> None:
    if row.get("status") != "ok":
        return
    print(
        f"   MACs x{row['mac_reduction']:.2f}  speedup x{row['speedup_median']:.2f} "
        f"[{row['speedup_p10']:.2f}-{row['speedup_p90']:.2f}]  efficiency {row['efficiency']:.2f}  "
        f"dense {row['dense_ms']:.1f} ms  pruned {row['pruned_ms']:.1f} ms",
        flush=True,
    )


if __name__ == "__main__":
    sys.exit(main())
