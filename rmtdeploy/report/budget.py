"""The latency-budget part of a run report: how the keep ratio was chosen, from ``budget.json``.

Three ways, each labelled as what it is: searched and measured here on ONNX Runtime CPU; estimated for a
device from its dense latency (``latency_reference``); or picked from the device's own measured curve
(``device_results``: the bundle's sweep timed on the board), "measured on <board>", with the point to
confirm there when the pick was interpolated between two measured ones.
"""

from __future__ import annotations

from typing import Any

from rmtdeploy.report.latency import CURVE_COLUMNS, curve_figure, curve_rows


def budget_label(recipe: dict[str, Any], budget: dict[str, Any] | None) -> str:
    """The overview's budget line: which budget, judged where."""
    if not recipe.get("latency_budget_ms"):
        return f"keep {recipe.get('keep_macs') or 0.5:g} of the MACs"
    ms = f"latency budget {recipe['latency_budget_ms']:g} ms"
    if recipe.get("latency_table"):
        return f"{ms}, met by the latency table's prediction ({recipe['latency_table']})"
    if budget and budget.get("measured"):
        return f"{ms}, measured on {budget['measured']['device']} (its sweep)"
    if budget and budget.get("reference"):
        return f"{ms} on {budget['reference']['device']}, estimated from its dense latency and speedups measured here"
    return f"{ms} (ONNX Runtime CPU)"


def budget_blocks(budget: dict[str, Any] | None, bundled: bool) -> list[tuple]:
    """The budget section's blocks (none without a latency budget); ``bundled``: the run wrote a bundle."""
    if not budget:
        return []
    measured = budget.get("measured")
    if measured:
        return _measured_blocks(budget, measured, bundled)
    return [("h3", "Latency budget search"), ("p", budget.get("how", "")),
            ("table", ["keep-macs", "MACs kept", "median ms here", "p90 ms here", "dense ms here", "judged ms", "meets"],
             [[f"{t['keep_macs']:g}", str(t.get("macs_kept", "–")), f"{t['median_ms']:.3f}",
               f"{t.get('p90_ms', float('nan')):.3f}", f"{t.get('dense_median_ms', budget['dense_ms']):.3f}",
               f"{t.get('judged_ms', t['median_ms']):.3f}", "yes" if t["met"] else "no"]
              for t in budget["trials"]]),
            ("p", f"Chosen: keep-macs {budget['keep_macs']:g}.")]  # fmt: skip


def _measured_blocks(budget: dict[str, Any], measured: dict[str, Any], bundled: bool) -> list[tuple]:
    met = {t["keep_macs"]: t["met"] for t in budget["trials"]}
    rows = [[*row, "yes" if met.get(p["keep_macs"]) else "no"] for p, row in
            zip(measured["points"], curve_rows(measured["points"]), strict=True)]  # fmt: skip
    kind = "interpolated" if measured["interpolated"] else "measured"
    chosen = (f"Chosen: keep-macs {budget['keep_macs']:g}, measured on {measured['device']}: {measured['judged_ms']:.3f} "
              f"ms ({kind}) within {budget['budget_ms']:g} ms.")  # fmt: skip
    blocks: list[tuple] = [("h3", f"Latency budget: measured on {measured['device']}"), ("p", budget["how"]),
                           ("table", [*CURVE_COLUMNS, "meets"], rows), ("p", chosen),
                           ("img", "budget_curve", f"Measured curve on {measured['device']}, budget and pick")]  # fmt: skip
    if measured["interpolated"]:
        where = ("this run's `bundle/` times dense against it on the board; import its bench.json into "
                 "`device-bench/` and re-render the report") if bundled else "bundle this run's model for the board"  # fmt: skip
        blocks.append(("p", f"To confirm (one point between the measured {measured['between'][0]} and "
                            f"{measured['between'][1]}): {where}."))  # fmt: skip
    return blocks


def budget_figure(budget: dict[str, Any] | None):
    """The measured curve with the budget and the pick, when the keep ratio was picked from one."""
    if not budget or not budget.get("measured"):
        return None
    measured = budget["measured"]
    return curve_figure(measured["points"], f"measured on {measured['device']}", budget_ms=budget["budget_ms"],
                        pick=(budget["keep_macs"], measured["judged_ms"]))  # fmt: skip
