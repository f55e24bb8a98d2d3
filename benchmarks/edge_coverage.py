"""Benchmark: the models people bring to a Jetson, through prune → verify → export → ORT, and their speedup.

Two phases, so the timing runs alone on a quiet machine:

``status`` — per model (random seeded weights, the model's default input size, ``keep_macs`` 0.5, channels
rounded to 8, the prune stage's default strategy): prune with the model's adapter (the generic one where its
family has none) and apply the check the prune stage applies before it accepts a generic prune
(``rmtdeploy.coverage.verify_pruned``: output shape, finite, MACs within 3 %, reload identical, the plan
exact against the dense model with the removed channels masked, the re-parameterised form, ONNX parity).
Each model gets a status: **ok**, **refused** (an ``RmtdeployError``: the reason, naming the layer and the
check) or **broken** (anything else: a bug). Dense and pruned ONNX graphs (static batch 1, the adapter's
export forms) are kept for the second phase.

``speed`` — per ok model, dense vs pruned on ONNX Runtime CPU: 2 threads, batch 1, interleaved rounds, the
median of per-round ratios (``rmtdeploy.benchmark.measure_onnx_latency``); efficiency = speedup ÷ MAC
reduction.

``docs`` — the coverage tables in README.md and docs/adapters.md, regenerated from the results.

    python benchmarks/edge_coverage.py status [--models mobilenetv3_large_100 ...]
    python benchmarks/edge_coverage.py speed [--runs 100]
    python benchmarks/edge_coverage.py docs

Writes results/edge_coverage.{json,md}.
"""

from __future__ import annotations

import argparse
import gc
import re
import sys
import tempfile
import time
import traceback
from datetime import datetime, timezone
from importlib.metadata import version
from pathlib import Path
from typing import Any

import torch
from _results import machine_conditions, write_results

from rmtdeploy.adapters import get_adapter
from rmtdeploy.coverage import EDGE_MODELS, verify_pruned
from rmtdeploy.errors import RmtdeployError
from rmtdeploy.models import load_model
from rmtdeploy.pruning.stage import DEFAULT_STRATEGY
from rmtdeploy.scores import get_strategy

ROUND_TO = 8
RESULTS = Path(__file__).parent / "results"
STEM = "edge_coverage"
ONNX_DIR = Path(tempfile.gettempdir()) / "rmtdeploy-edge-coverage"
REPO = Path(__file__).resolve().parent.parent
DOC_BLOCK = re.compile(r"(<!-- edge-coverage:start -->\n).*?(<!-- edge-coverage:end -->)", re.S)


def family_sample(per_family: int, exclude: list[str]) -> list[str]:
    """The ``per_family`` smallest (by parameters, built on the meta device) timm architectures with a
    pretrained tag in each family the edge models come from, other than ``exclude``."""
    import timm
    from timm.models import _registry

    families = {_registry._model_to_module.get(name) for name in EDGE_MODELS}
    chosen = []
    for family in sorted(f for f in families if f):
        names = sorted({n.split(".")[0] for n in timm.list_models(pretrained=True)} - set(exclude))
        names = [n for n in names if not n.startswith("test_")]  # timm's tiny test models
        sizes = []
        for name in (n for n in names if _registry._model_to_module.get(n) == family):
            with torch.device("meta"):
                sizes.append((sum(p.numel() for p in timm.create_model(name).parameters()), name))
        chosen += [name for _, name in sorted(sizes)[:per_family]]
    return chosen


def run_status(name: str, keep: float, strategy: str, onnx_dir: Path | None) -> dict[str, Any]:
    """One model's row: status, reason, the pruned figures and the verification's measurements (and, with
    ``onnx_dir``, its dense and pruned ONNX graphs for the speed phase)."""
    row: dict[str, Any] = {"model": name, "set": "issue 24" if name in EDGE_MODELS else "family sample"}
    started = time.perf_counter()
    try:
        loaded = load_model(name, weights="random")
        row["family"] = loaded.family
        row["adapter"] = type(get_adapter(loaded.model)).__name__
        result = get_strategy(strategy).prune(
            loaded.model, keep_macs=keep, round_to=ROUND_TO, model_name=name
        )
        row["prune_s"] = round(time.perf_counter() - started, 1)
        row.update(
            input_size=result.plan["input_size"],
            dense_gmacs=round(result.dense_macs / 1e9, 4),
            macs_kept=round(result.macs_kept, 4),
            params_kept=round(result.params_kept, 4),
            operations=len(result.plan["operations"]),
            heads={k: v for k, v in result.plan["heads"].items() if v["dense"] != v["pruned"]} or None,
        )
        verification = verify_pruned(loaded.model, result)
        row.update(measured=verification.measured, not_applicable=verification.not_applicable)
        if not verification.ok:
            raise RmtdeployError(f"refused {name}: {verification.failures[0]}")
        if onnx_dir is not None:  # kept for the speed phase
            _export_pair(loaded.model, result.model, onnx_dir / name)
        row["status"] = "ok"
    except RmtdeployError as exc:
        row.update(status="refused", reason=str(exc))
    except Exception as exc:  # a bug: recorded with its traceback, the run goes on
        row.update(
            status="broken", reason=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc(limit=-6)
        )
    row["wall_s"] = round(time.perf_counter() - started, 1)
    print(
        f"{name:28s} {row['status']:8s} {row.get('macs_kept', '')!s:7s} {row.get('reason', '')[:150]}",
        flush=True,
    )
    return row


def _export_pair(dense: torch.nn.Module, pruned: torch.nn.Module, folder: Path) -> None:
    from rmtdeploy.exporting import export_onnx

    folder.mkdir(parents=True, exist_ok=True)
    for label, model in (("dense", dense), ("pruned", pruned)):
        export_onnx(model, folder / f"{label}.onnx", batch=1, dynamic_batch=False, overwrite=True)


def run_speed(row: dict[str, Any], onnx_dir: Path, runs: int, warmup: int, threads: int) -> None:
    from rmtdeploy.benchmark import measure_onnx_latency

    folder = onnx_dir / row["model"]
    report = measure_onnx_latency(
        {"dense": str(folder / "dense.onnx"), "pruned": str(folder / "pruned.onnx")},
        batch=1,
        threads=threads,
        warmup=warmup,
        runs=runs,
    )
    speedup = report.speedup("dense", "pruned")
    mac_reduction = 1 / row["macs_kept"]
    row["speed"] = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "cpu": machine_conditions("", 0)["cpu"],
        "dense_ms": round(report.models["dense"].median_ms, 3),
        "pruned_ms": round(report.models["pruned"].median_ms, 3),
        "speedup": round(speedup.median, 3),
        "speedup_p10_p90": [round(speedup.p10, 3), round(speedup.p90, 3)],
        "mac_reduction": round(mac_reduction, 3),
        "efficiency": round(speedup.median / mac_reduction, 3),
        "runs": runs,
        "threads": threads,
    }
    print(f"{row['model']:28s} x{speedup.median:.2f} (MACs ÷{mac_reduction:.2f}) eff {row['speed']['efficiency']:.2f}",
          flush=True)  # fmt: skip


def markdown(rows: list[dict[str, Any]], conditions: dict[str, Any]) -> list[str]:
    counts = {status: sum(r["status"] == status for r in rows) for status in ("ok", "refused", "broken")}
    lines = [
        f"{counts['ok']} ok, {counts['refused']} refused, {counts['broken']} broken of {len(rows)} models "
        f"(keep-macs {conditions['keep_macs']}, strategy {conditions['strategy']}, random weights, default "
        "input size). ok = pruned within 3 % of the MAC target and verified (output shape, finite, reload "
        "identical, plan exact against the masked dense model, re-parameterised form, ONNX parity). Speedup: "
        "ONNX Runtime CPU, dense ÷ pruned latency, median of interleaved rounds; efficiency = speedup ÷ MAC "
        "reduction.",
        "",
        "| model | set | family (adapter) | status | MACs kept | dense GMACs | speedup (p10–p90) | efficiency |",
        "|---|---|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        speed = r.get("speed")
        speed_text = (
            f"×{speed['speedup']:.2f} ({speed['speedup_p10_p90'][0]:.2f}–{speed['speedup_p10_p90'][1]:.2f})"
            if speed
            else "—"
        )
        status = r["status"] if r["status"] == "ok" else f"{r['status']}: {r['reason'][:160]}"
        lines.append(
            f"| {r['model']} | {r.get('set', 'issue 24')} | {r.get('family', '?')} ({r.get('adapter', '?').removesuffix('Adapter')}) | "
            f"{status.replace('|', '/')} | {r.get('macs_kept', '—')} | {r.get('dense_gmacs', '—')} | {speed_text} | "
            f"{speed['efficiency'] if speed else '—'} |"
        )
    return lines


def coverage_block(rows: list[dict[str, Any]], conditions: dict[str, Any]) -> str:
    """The Markdown block README.md and docs/adapters.md carry between their edge-coverage markers."""
    sample = [r for r in rows if r.get("set") == "family sample"]
    rows = [r for r in rows if r.get("set") != "family sample"]
    ok = [r for r in rows if r["status"] == "ok"]
    others = [r for r in rows if r["status"] != "ok"]
    lines = [
        f"Generated by `benchmarks/edge_coverage.py docs` from `benchmarks/results/{STEM}.json` "
        f"({conditions['date'][:10]}, {conditions['cpu']}): {len(ok)} of {len(rows)} pruned to keep-macs "
        f"{conditions['keep_macs']} and verified.",
        "",
        "| model | adapter | MACs kept | ORT CPU speedup | speedup ÷ MAC reduction |",
        "|---|---|---:|---:|---:|",
    ]
    for r in ok:
        speed = r.get("speed") or {}
        speedup = f"×{speed['speedup']:.2f}" if speed else "—"
        lines.append(
            f"| `{r['model']}` | {r['adapter'].removesuffix('Adapter').lower()} | {r['macs_kept']:.3f} | "
            f"{speedup} | {speed.get('efficiency', '—')} |"
        )
    for r in others:
        lines.append(f"| `{r['model']}` | {r['status']}: {r['reason'][:200].replace('|', '/')} | | | |")
    if sample:
        good = [r["model"] for r in sample if r["status"] == "ok"]
        lines += ["", f"A sample of other architectures of the same families ({len(good)} of {len(sample)} ok): "
                  + ", ".join(f"`{m}`" for m in good) + ".", ""]  # fmt: skip
        lines += [f"- `{r['model']}`: {r['status']}: {r['reason']}" for r in sample if r["status"] != "ok"]
    lines += sweep_summary(RESULTS / "coverage_sweep.json")
    return "\n".join(lines) + "\n"


def sweep_summary(path: Path) -> list[str]:
    """The coverage sweep's counts (``benchmarks/coverage_sweep.py``), saying how much of it has run."""
    import json

    if not path.exists():
        return []
    data = json.loads(path.read_text(encoding="utf-8"))
    rows, candidates = data["results"], data["conditions"]["candidates"]
    count = {status: sum(r["status"] == status for r in rows) for status in ("ok", "refused", "broken")}
    part = "all run" if len(rows) == len(candidates["under"]) else f"{len(rows)} run so far"
    return [
        "",
        f"The coverage sweep (`benchmarks/results/coverage_sweep.md`): every timm "
        f"architecture with a pretrained tag under {candidates['max_gmacs']:g} GMACs in these families, "
        f"{len(candidates['under'])} in all; {part}: {count['ok']} ok, {count['refused']} refused with the reason "
        f"named, {count['broken']} broken.",
    ]


def write_docs(rows: list[dict[str, Any]], conditions: dict[str, Any]) -> None:
    block = coverage_block(rows, conditions)
    for path in (REPO / "README.md", REPO / "docs" / "adapters.md"):
        text = path.read_text(encoding="utf-8")
        if not DOC_BLOCK.search(text):
            raise SystemExit(f"{path} has no <!-- edge-coverage:start/end --> markers")
        path.write_text(DOC_BLOCK.sub(lambda m: m.group(1) + block + m.group(2), text), encoding="utf-8")
        print(f"updated {path}")


def _load(out: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    import json

    data = json.loads((out / f"{STEM}.json").read_text(encoding="utf-8"))
    return data["conditions"], data["results"]


def _write(out: Path, conditions: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    write_results(
        out, STEM, conditions, rows, "Edge model coverage: prune → verify → export → ORT",
        markdown(rows, conditions),
        f"timm {conditions['timm']}, torch-pruning {conditions['torch_pruning']}, {conditions['date']}",
    )  # fmt: skip


def _same_architecture(old: dict[str, Any], new: dict[str, Any]) -> bool:
    """Do two status rows describe the same pruned model (the speed phase times its ONNX graph)?"""
    keys = ("status", "input_size", "dense_gmacs", "macs_kept", "params_kept", "operations", "heads")
    return new["status"] == "ok" and all(old.get(k) == new.get(k) for k in keys)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("phase", choices=("status", "speed", "docs"))
    parser.add_argument("--models", nargs="+", default=list(EDGE_MODELS))
    parser.add_argument(
        "--sample-per-family",
        type=int,
        default=0,
        metavar="K",
        help="status: instead of --models, the K smallest pretrained architectures of each edge model's family",
    )
    parser.add_argument("--keep-macs", type=float, default=0.5)
    parser.add_argument("--strategy", default=DEFAULT_STRATEGY)
    parser.add_argument("--threads", type=int, default=None, help="status: 1; speed: 2 (ORT intra-op)")
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--onnx-dir", type=Path, default=ONNX_DIR)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.phase == "docs":
        write_docs(*reversed(_load(args.out)))
        return 0
    if args.phase == "speed":
        conditions, rows = _load(args.out)
        threads = args.threads or 2
        for row in rows:
            if row["status"] == "ok" and (row["model"] in args.models):
                run_speed(row, args.onnx_dir, args.runs, args.warmup, threads)
        timed = sorted(r["model"] for r in rows if r["status"] == "ok" and r["model"] in args.models)
        earlier = conditions.get("speed")
        conditions["speed"] = {
            "threads": threads, "runs": args.runs, "warmup": args.warmup, "interleaved": True,
            "cpu": machine_conditions("", 0)["cpu"], "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "models": timed,  # this date and CPU hold for these rows; each timing also records its own
        }  # fmt: skip
        if earlier and set(timed) != {r["model"] for r in rows if r.get("speed")}:
            conditions["speed"]["earlier"] = {k: v for k, v in earlier.items() if k != "earlier"}
        _write(args.out, conditions, rows)
        return 0
    torch.set_num_threads(args.threads or 1)
    started = time.perf_counter()
    rows = []
    models = (
        family_sample(args.sample_per_family, list(EDGE_MODELS)) if args.sample_per_family else args.models
    )
    for name in models:
        rows.append(run_status(name, args.keep_macs, args.strategy, args.onnx_dir))
        gc.collect()
    conditions = machine_conditions(
        f"{args.strategy} prune(keep_macs={args.keep_macs}, round_to={ROUND_TO}) + verify_pruned, random weights",
        0,
    )
    conditions.update(
        timm=version("timm"),
        torch_pruning=version("torch-pruning"),
        date=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        wall_s=round(time.perf_counter() - started, 1),
        keep_macs=args.keep_macs,
        strategy=args.strategy,
    )
    if (args.out / f"{STEM}.json").exists():  # a partial run replaces its models' rows, keeps the others
        previous_conditions, previous = _load(args.out)
        if "speed" in previous_conditions:
            conditions["speed"] = previous_conditions["speed"]
        fresh = {r["model"]: r for r in rows}
        for old in previous:  # a timing holds for the same pruned architecture: kept when it did not change
            new = fresh.get(old["model"])
            if new and "speed" in old and _same_architecture(old, new):
                new["speed"] = old["speed"]
        rows = [fresh.pop(r["model"], r) for r in previous] + list(fresh.values())
    _write(args.out, conditions, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
