"""Benchmark: every timm architecture with a pretrained tag under 10 GMACs in the families the edge models and
the six families come from, through prune → verify → export → ORT: ok, refused (a named reason) or broken.

The per-model check is ``edge_coverage.py status``'s (random seeded weights, the model's default input size,
``keep_macs`` 0.5, channels rounded to 8, the prune stage's default strategy, ``verify_pruned``: output
shape, finite, MACs within 3 %, reload identical, plan exact, re-parameterised form, ONNX parity); each model
runs in its own process, with a time limit, so one crash or hang is that model's row and the sweep goes on.

The candidates (GMACs: matrix products and convolutions at the default input size, torch's
``FlopCounterMode`` ÷ 2, counted on the meta device) are listed once and kept in the results; the sweep then
resumes where it stopped, smallest models first, writing the results after every model, so it can be run in
parts (``--minutes``) on a 2-core machine (about a minute a model on 1 thread):

    python benchmarks/coverage_sweep.py run [--minutes 120] [--workers 1] [--max-gmacs 10]
    python benchmarks/coverage_sweep.py run --models NAME ...   # re-run these (replacing their rows)

Writes results/coverage_sweep.{json,md}; ``edge_coverage.py docs`` summarises it in README.md and
docs/adapters.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from importlib.metadata import version
from pathlib import Path
from typing import Any

from _results import machine_conditions, write_results

RESULTS = Path(__file__).parent / "results"
STEM = "coverage_sweep"
KEEP_MACS = 0.5


def families() -> set[str]:
    """timm modules of the edge models and of the six families (the architectures issue 24 names)."""
    from timm.models import _registry

    from rmtdeploy.coverage import EDGE_MODELS, ISSUE_MODELS

    return {_registry._model_to_module[name] for name in (*EDGE_MODELS, *ISSUE_MODELS)}


def candidate_gmacs(name: str) -> float:
    """GMACs of ``name`` at its default input size: matrix products and convolutions (FlopCounterMode ÷ 2),
    counted on the meta device (no weights are made), on the CPU where a model cannot run on meta."""
    import timm
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    for device in ("meta", "cpu"):
        try:
            with torch.device(device):
                model = timm.create_model(name, pretrained=False).eval()
                example = torch.zeros(1, *model.pretrained_cfg["input_size"])
            # no gradients: the counter's module tracker otherwise trips on a parameter a module returns
            # as its output (SigLIP's attention-pool latent: "Expected gradient function to be set")
            model.requires_grad_(False)
            with FlopCounterMode(display=False) as counter, torch.no_grad():
                model(example)
            return counter.get_total_flops() / 2e9
        except Exception:  # noqa: BLE001 - a model that cannot run on meta is counted on the CPU
            if device == "cpu":
                raise
    raise AssertionError("unreachable")


def list_candidates(max_gmacs: float) -> dict[str, Any]:
    """{name: GMACs} of every pretrained architecture of :func:`families` under ``max_gmacs``, and those over."""
    import timm
    from timm.models import _registry
    from tqdm import tqdm

    wanted = families()
    names = sorted({n.split(".")[0] for n in timm.list_models(pretrained=True)})
    names = [n for n in names if _registry._model_to_module.get(n) in wanted and not n.startswith("test_")]
    candidates = {"max_gmacs": max_gmacs, "under": {}, "over": {}, "uncounted": {}}
    _count(candidates, tqdm(names, desc="counting GMACs", unit="model"))
    return candidates


def _count(candidates: dict[str, Any], names) -> list[str]:
    """Place each of ``names`` under or over the limit by its GMACs; one that does not run dense stays in
    ``uncounted`` with its first reason. Returns the names placed."""
    placed = []
    for name in names:
        try:
            gmacs = candidate_gmacs(name)
        except Exception as exc:  # noqa: BLE001 - recorded: a model that does not even run dense
            candidates["uncounted"].setdefault(name, f"{type(exc).__name__}: {exc}"[:300])
            continue
        candidates["uncounted"].pop(name, None)
        (candidates["under"] if gmacs < candidates["max_gmacs"] else candidates["over"])[name] = round(
            gmacs, 3
        )
        placed.append(name)
    return placed


def _recount(candidates: dict[str, Any], conditions: dict[str, Any]) -> None:
    """Count again the candidates the listing could not (the counter may have been mended since)."""
    from timm.models import _registry

    for name in _count(candidates, list(candidates["uncounted"])):
        conditions["module_of"][name] = _registry._model_to_module.get(name)


def run_one(name: str, timeout_s: float) -> dict[str, Any]:
    """``name``'s row from ``edge_coverage.run_status`` in a process of its own, limited to ``timeout_s``."""
    with tempfile.TemporaryDirectory(prefix="rmtdeploy_sweep_") as tmp:
        row_file = Path(tmp) / "row.json"
        command = [sys.executable, __file__, "one", name, "--row", str(row_file)]
        started = time.perf_counter()
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return {"model": name, "status": "broken", "reason": f"did not finish in {timeout_s:.0f} s",
                    "wall_s": round(time.perf_counter() - started, 1)}  # fmt: skip
        if row_file.exists():
            return json.loads(row_file.read_text(encoding="utf-8"))
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        killed = " (killed: out of memory, most likely)" if done.returncode == -9 else ""
        return {"model": name, "status": "broken",
                "reason": f"the process ended with {done.returncode}{killed}: {' / '.join(tail)}"[:400],
                "wall_s": round(time.perf_counter() - started, 1)}  # fmt: skip


def markdown(rows: list[dict[str, Any]], candidates: dict[str, Any], conditions: dict[str, Any]) -> list[str]:
    counts = Counter(r["status"] for r in rows)
    total = len(candidates["under"])
    lines = [
        f"**{len(rows)} of {total} candidates run: {counts['ok']} ok, {counts['refused']} refused, "
        f"{counts['broken']} broken.** Candidates: every timm architecture with a pretrained tag in "
        f"{len(conditions['families'])} timm modules ({', '.join(sorted(conditions['families']))}) under "
        f"{candidates['max_gmacs']:g} GMACs at its default input size ({len(candidates['over'])} over, "
        f"{len(candidates['uncounted'])} that do not run dense). Each: random weights, keep-macs {KEEP_MACS}, "
        f"strategy {conditions['strategy']}, verified as `edge_coverage.py status` does.",
        "",
        "| timm module | run | ok | refused | broken | not run yet |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    by_family: dict[str, Counter] = defaultdict(Counter)
    module_of = conditions["module_of"]
    for r in rows:
        by_family[module_of.get(r["model"], "?")][r["status"]] += 1
    for name in candidates["under"]:
        by_family[module_of.get(name, "?")]["candidates"] += 1
    for family in sorted(by_family):
        c = by_family[family]
        run = c["ok"] + c["refused"] + c["broken"]
        lines.append(
            f"| {family} | {run} | {c['ok']} | {c['refused']} | {c['broken']} | {c['candidates'] - run} |"
        )
    others = [r for r in rows if r["status"] != "ok"]
    if others:
        lines += ["", "| model | GMACs | status | reason |", "|---|---:|---|---|"]
        for r in sorted(others, key=lambda r: (r["status"], r["model"])):
            reason = r.get("reason", "").replace("|", "/").replace("\n", " ")[:240]
            lines.append(
                f"| {r['model']} | {candidates['under'].get(r['model'], '?')} | {r['status']} | {reason} |"
            )
    ok = sorted(r["model"] for r in rows if r["status"] == "ok")
    lines += ["", f"ok ({len(ok)}): " + ", ".join(f"`{m}`" for m in ok)]
    return lines


def _load(out: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    path = out / f"{STEM}.json"
    if not path.exists():
        return {}, []
    data = json.loads(path.read_text(encoding="utf-8"))
    return data["conditions"], data["results"]


def _write(out: Path, conditions: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    candidates = conditions["candidates"]
    order = {name: i for i, name in enumerate(sorted(candidates["under"], key=candidates["under"].get))}
    rows.sort(key=lambda r: order.get(r["model"], len(order)))
    write_results(
        out, STEM, conditions, rows, "Coverage sweep: every pretrained architecture of the covered families",
        markdown(rows, candidates, conditions),
        f"timm {conditions['timm']}, torch-pruning {conditions['torch_pruning']}, {conditions['date']}, "
        f"{conditions['workers']} worker(s) × 1 thread, one process per model (limit {conditions['timeout_s']:.0f} s)",
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("phase", choices=("run", "one"))
    parser.add_argument("name", nargs="?", help="one: the model")
    parser.add_argument("--row", type=Path, help="one: where to write the row")
    parser.add_argument("--models", nargs="+", help="run: re-run these models only")
    parser.add_argument("--max-gmacs", type=float, default=10.0)
    parser.add_argument("--minutes", type=float, default=float("inf"), help="run: start no model after this")
    parser.add_argument("--workers", type=int, default=1, help="run: models at a time, 1 thread each")
    parser.add_argument("--timeout-s", type=float, default=1800.0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    from rmtdeploy.pruning.stage import DEFAULT_STRATEGY

    if args.phase == "one":
        import torch
        from edge_coverage import run_status

        torch.set_num_threads(1)
        row = run_status(args.name, KEEP_MACS, DEFAULT_STRATEGY, onnx_dir=None)
        row["set"] = "sweep"
        args.row.write_text(json.dumps(row), encoding="utf-8")
        return 0

    conditions, rows = _load(args.out)
    if conditions.get("candidates", {}).get("max_gmacs") != args.max_gmacs:
        from timm.models import _registry

        candidates = list_candidates(args.max_gmacs)
        conditions = {"candidates": candidates, "families": sorted(families()),
                      "module_of": {n: _registry._model_to_module.get(n) for n in candidates["under"]}}  # fmt: skip
        rows = [r for r in rows if r["model"] in candidates["under"]]
    candidates = conditions["candidates"]
    _recount(candidates, conditions)
    done = {r["model"] for r in rows}
    if args.models:
        unknown = [m for m in args.models if m not in candidates["under"]]
        if unknown:
            raise SystemExit(f"not among the candidates: {', '.join(unknown)}")
        todo = list(args.models)
    else:
        todo = [n for n in sorted(candidates["under"], key=candidates["under"].get) if n not in done]
    print(f"{len(done)} of {len(candidates['under'])} candidates run; {len(todo)} to go", flush=True)

    started = time.perf_counter()
    conditions.update(
        machine_conditions(f"{DEFAULT_STRATEGY} prune(keep_macs={KEEP_MACS}, round_to=8) + verify_pruned, "
                           "random weights, every candidate", 0),
        timm=version("timm"), torch_pruning=version("torch-pruning"), strategy=DEFAULT_STRATEGY,
        workers=args.workers, timeout_s=args.timeout_s, threads=1,
    )  # fmt: skip

    def work(name: str) -> dict[str, Any] | None:
        if time.perf_counter() - started > args.minutes * 60:
            return None
        return run_one(name, args.timeout_s)

    with ThreadPoolExecutor(args.workers) as pool:
        for row in pool.map(work, todo):
            if row is None:
                continue
            rows = [r for r in rows if r["model"] != row["model"]] + [row]
            conditions["date"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
            conditions["load_average_at_end"] = machine_conditions("", 0)["load_average_at_end"]
            _write(args.out, conditions, rows)
            counts = Counter(r["status"] for r in rows)
            print(f"[{len(rows)}/{len(candidates['under'])}] {dict(counts)}", flush=True)
    conditions.setdefault("date", datetime.now(timezone.utc).isoformat(timespec="seconds"))
    _write(args.out, conditions, rows)  # the candidates as (re)counted, even when no model ran
    return 0


if __name__ == "__main__":
    sys.exit(main())
