"""The block a run report opens with: what went in, what came out, and the numbers a user decides on.

Every number is read from the run folder, as the sections below it show them in full: the speedup with
its spread and where it was measured (here, or on the board when device results were imported), top-1
dense → pruned → fine-tuned, MACs, parameters and ONNX file size kept, and whether the budget was met. A
model so small that per-call overhead dominates its time is said to be one, so that its speedup is not
read as the product's result on a real-sized model.
"""

from __future__ import annotations

from typing import Any

from rmtdeploy.report.render import NOT_MEASURED

# Below this many dense MACs a batch-1 call is mostly fixed overhead (session, copies, small kernels) on a
# CPU: the demo's 32-px Swin (16 MMACs) keeps about 0.6 of its MAC cut as speedup, a 224-px model 0.8-1.
SMALL_MODEL_MACS = 100e6
MAC_TOLERANCE = 0.03  # the pruner's budget contract: MACs kept within ±3 % of the target


STRATEGY_WHY = {
    "hybrid": "the default: in the accuracy benchmark it keeps the most accuracy right after pruning "
    "(magnitude × spectral energy ratio), and after the default fine-tune the criteria end level "
    "(docs/strategies.md)",
    "magnitude": "the baseline criterion (group L2 magnitude)",
    "rmt": "channels scored by their energy above the Marchenko–Pastur edge",
    "edge-budget": "per-layer ratios from each layer's spectrum",
    "dynamic": "progressive pruning with the spectral threshold lowered step by step",
    "data-rmt": "channels scored by the spectrum of the weights as the run's data drives them (W·Σ½) and, unless "
    "fisher=off, as the loss reads them (Γ½·W·Σ½)",
}


def strategy_label(run) -> str:
    """The strategy that ran, and why: the recipe named it, or none was named and the prune stage took its
    default for the model's family and the data at hand."""
    name = run.strategy_ran()
    if run.recipe.get("strategy") is None and not run.recipe.get("knobs"):
        family = (run.summary("load") or {}).get("family", "?")
        data = "with the run's data" if run.recipe.get("data") else "without data"
        return f"{name}: the default for the {family} family {data} (docs/strategies.md, 'Which strategy to pick')"
    return f"{name}: {STRATEGY_WHY.get(name, 'chosen in the recipe')}"


def headline_blocks(run) -> list[tuple]:
    """Blocks for the report's opening (``run``: the report's view of the run folder)."""
    load = run.summary("load") or {}
    structure = run.read_json("pruned/report.json")
    rows = [["in", _what_went_in(run, load)], ["out", _what_came_out(run, structure)]]
    rows.append(["speedup", _speedup(run)])
    rows.append(["top-1 %", _accuracy(run)])
    if structure:
        m, p = structure["macs"], structure["params"]
        rows.append(["kept", f"MACs {m['kept']:.3f} ({m['dense'] / 1e9:.3f} → {m['pruned'] / 1e9:.3f} G), "
                             f"parameters {p['kept']:.3f}, {_file_sizes(run)}"])  # fmt: skip
    rows.append(["budget", _budget(run, structure)])
    blocks: list[tuple] = [("h2", "Summary"), ("table", ["", ""], rows)]
    note = _small_model_note(run, structure)
    if note:
        blocks.append(("p", note))
    return blocks


def _what_went_in(run, load: dict[str, Any]) -> str:
    r = run.recipe
    size = "×".join(map(str, load.get("input_size", []))) or "?"
    return (f"{load.get('model', r.get('model'))} ({load.get('weights', r.get('weights'))} weights), input {size}, "
            f"{load.get('num_classes', '?')} classes; {run.strategy_ran()} for {r.get('target')}")  # fmt: skip


def _what_came_out(run, structure) -> str:
    made = [
        name
        for name in ("model.onnx", "model.int8.onnx", "engine/model.engine", "bundle")
        if (run.root / name).exists()
    ]
    tuned = "fine-tuned" if run.summary("finetune") else "not fine-tuned"
    return (
        f"pruned model ({tuned}); " + ", ".join(f"`{name}`" for name in made) if structure else NOT_MEASURED
    )


def _speedup(run) -> str:
    """Dense → pruned on the board when its results were imported, else here; median (p10–p90)."""
    for folder, where in (("device-bench", "on the device"), ("bench", "here")):
        data = run.read_json(f"{folder}/bench.json")
        if not data:
            continue
        pairs = [s for s in data.get("speedups", []) if s.get("baseline") == "dense"]
        if not pairs:
            continue
        s = pairs[0]
        c = data.get("conditions", {})
        machine = c.get("board") or c.get("gpu") or c.get("cpu_model") or "unknown machine"
        return (f"×{s['median']:.2f} (p10–p90 ×{s['p10']:.2f}–×{s['p90']:.2f}), {s['baseline']} → {s['candidate']}, "
                f"measured {where} on {machine}: {c.get('backend', '?')}, batch {c.get('batch', '?')}, "
                f"{c.get('threads', '?')} threads, {c.get('runs', '?')} interleaved rounds")  # fmt: skip
    why = run.reason("bench") if run.summary("bench") is None else "no dense → pruned pair was timed"
    return f"{NOT_MEASURED} ({why})"


def _accuracy(run) -> str:
    evaluate, tune = run.summary("evaluate"), run.summary("finetune")
    if evaluate is None:
        return f"{NOT_MEASURED} ({run.reason('evaluate')})"
    top1 = (tune or {}).get("top1", {})
    steps = [f"dense {evaluate['dense_top1']:.1f}"]
    if top1:
        steps += [f"pruned {top1['start']:.1f}", f"fine-tuned {top1['best']:.1f}"]
    else:
        steps.append(f"fine-tuned: {NOT_MEASURED} ({run.reason('finetune')})")
    return " → ".join(steps) + f" (on {evaluate['data']})"


def _file_sizes(run) -> str:
    model = run.root / "model.onnx"
    if not model.is_file():
        return f"ONNX size {NOT_MEASURED}"
    text = f"`model.onnx` {model.stat().st_size / 1e6:.1f} MB"
    dense = run.root / "bundle" / "dense.onnx"  # the bundle's on-device baseline, in the same form
    if dense.is_file():
        text += f" ({model.stat().st_size / dense.stat().st_size:.3f} of the dense ONNX's {dense.stat().st_size / 1e6:.1f} MB)"
    return text


def _budget(run, structure) -> str:
    budget = run.summary("budget")
    if budget and budget.get("keep_macs") is not None and budget.get("budget_ms") is not None:
        chosen = next((t for t in budget.get("trials", []) if t.get("keep_macs") == budget["keep_macs"]), {})
        judged = chosen.get("judged_ms", chosen.get("median_ms"))
        met = judged is not None and judged <= budget["budget_ms"]
        shown = "?" if judged is None else f"{judged:.3f}"
        estimate = " (an estimate: judged from a device's dense latency)" if budget.get("reference") else ""
        measured = budget.get("measured")
        if measured:  # picked from the board's own sweep
            how = (f"interpolated between {' and '.join(measured['between'])}, to confirm there"
                   if measured.get("interpolated") else "a measured point")  # fmt: skip
            estimate = f", measured on {measured['device']} ({how})"
        return (f"latency {budget['budget_ms']:g} ms: {'met' if met else 'not met'} at keep-macs "
                f"{budget['keep_macs']:g}, {shown} ms{estimate}")  # fmt: skip
    if run.recipe.get("latency_table") and run.recipe.get("latency_budget_ms"):
        return _table_budget(run)
    target = run.recipe.get("keep_macs") or 0.5
    if not structure:
        return f"keep-macs {target:g}: {NOT_MEASURED}"
    kept = structure["macs"]["kept"]
    met = abs(kept - target) <= MAC_TOLERANCE
    return (
        f"keep-macs {target:g}: {'met' if met else 'not met'} ({kept:.3f} kept, contract ±{MAC_TOLERANCE:g})"
    )


def _table_budget(run) -> str:
    """A latency budget met by a latency table's prediction (nothing searched, nothing timed for it)."""
    budget_ms = run.recipe["latency_budget_ms"]
    record = (run.read_json("pruned/plan.json") or {}).get("latency_allocation") or {}
    if record.get("predicted_ms") is None:
        return f"latency {budget_ms:g} ms by a latency table: {NOT_MEASURED}"
    where = record.get("device") or record.get("cpu") or record.get("backend") or "the target"
    met = record["predicted_ms"] <= budget_ms
    return (f"latency {budget_ms:g} ms: {'met' if met else 'not met'} by the latency table's prediction, "
            f"{record['predicted_ms']:.3f} ms (the table was measured on {where}; a prediction, not a measurement)")  # fmt: skip


def _small_model_note(run, structure) -> str | None:
    if not structure or structure["macs"]["dense"] >= SMALL_MODEL_MACS:
        return None
    data = run.read_json("bench/bench.json") or {}
    efficiency = next(
        (row.get("efficiency") for row in data.get("efficiency", []) if row.get("efficiency")), None
    )
    kept = f" (here it keeps {efficiency:.2f} of its MAC cut as speedup)" if efficiency else ""
    return (f"A small model: {structure['macs']['dense'] / 1e6:.0f} MMACs dense. At this size a batch-1 call is "
            f"mostly fixed per-call overhead, so its speedup{kept} says little about what a full-size model "
            "(hundreds of MMACs or more) gains from the same cut; judge the method on one.")  # fmt: skip
