"""Widths chosen by a latency table: the most importance kept per measured millisecond (HALP's greedy).

From the dense widths, each step removes one slice (``round_to`` channels, or a head) from the unit where
that loses the least importance per millisecond the table predicts it saves (judged over the next slice,
or over several up to one of the table's measured widths when that is cheaper: a board's latency may only
drop at its own multiples), then looks again with the neighbours' widths as they now are (a layer
between two units saves less when both shrink). The steps
form a *path* from dense to every unit at its floor; the budget picks the point on it:

* a latency budget: the first point the table predicts within it;
* ``keep_macs`` / ``keep_params``: the point whose counted MACs (parameters) meet the budget, found by
  bisection along the path with real builds, as the MAC-only search does.

Importance is the strategy's own channel scores (so spectral scoring decides what goes, and where), made
comparable across units: a unit's scores divided by their mean, times the MACs a channel of the unit
carries (from the table), divided by the unit's share of the strategy's per-layer ratios (when it gives
them; 1 for uniform strategies). With latency proportional to MACs the greedy is thus one threshold on
the mean-normalised scores; the table moves widths only where measured time departs from MACs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from rmtdeploy.errors import RmtdeployError
from rmtdeploy.pruning.allocate import WidthAllocator, Widths
from rmtdeploy.pruning.graph import PruningUnit
from rmtdeploy.pruning.latency_table import LatencyTable

# A step that the table says saves nothing (or costs: measured noise) still has to be taken for a MAC
# budget: it ranks after every step that saves time.
_NO_SAVING_MS = 1e-9
_NOTHING_SAVED = 1e30


@dataclass
class TablePath:
    """Widths from dense (index 0) to every unit at its floor, with the table's prediction at each."""

    widths: list[Widths]
    predicted_ms: list[float]

    def __len__(self) -> int:
        return len(self.widths)


def unit_kinds(units: Sequence[PruningUnit]) -> dict[str, tuple[str, int]]:
    """Each unit's root -> (kind, dense count), the table's keys."""
    return {u.root: ("heads" if u.heads else "channels", u.full) for u in units}


def table_path(
    allocator: WidthAllocator,
    table: LatencyTable,
    start: Widths | None = None,
    frozen: frozenset[int] = frozenset(),
) -> TablePath:
    """The greedy path of :mod:`this module <rmtdeploy.pruning.table_allocation>` for ``allocator``'s units,
    from ``start`` (default: dense; widths the rules allow), the ``frozen`` units (indices) left as they are."""
    units = allocator.units
    table.check_units(unit_kinds(units))
    names = [u.root for u in units]
    lattices = [allocator.lattice(i) for i in range(len(units))]
    costs = _removal_costs(allocator, table)
    neighbours = _neighbours(names, table)
    start = allocator.dense if start is None else start
    position = [lattice.index(kept) for lattice, kept in zip(lattices, start, strict=True)]
    widths = dict(zip(names, start, strict=True))
    path, predicted = [tuple(start)], [table.predict(widths)]
    best: dict[int, float] = {}  # unit -> importance lost per ms saved by its best move
    stale = set(range(len(units))) - frozen
    while True:
        for i in stale:
            ratio = _best_ratio(i, position[i], lattices[i], costs[i], widths, names, table)
            if ratio is None:
                best.pop(i, None)
            else:
                best[i] = ratio
        if not best:
            break
        i = min(best, key=lambda k: (best[k], k))
        best.pop(i)
        position[i] += 1  # one slice: a move judged over several slices still leaves every point on the path
        before = _unit_ms(table, names[i], widths[names[i]], widths)
        widths[names[i]] = lattices[i][position[i]]
        path.append(tuple(widths[name] for name in names))
        predicted.append(predicted[-1] - before + _unit_ms(table, names[i], widths[names[i]], widths))
        stale = {i, *neighbours[i]} - frozen
    return TablePath(path, predicted)


def _best_ratio(i, pos, lattice, cost, widths, names, table) -> float | None:
    """The least importance lost per ms saved over the next slice or down to one of the table's measured
    widths (``None``: the unit is at its floor). Looking past the next slice finds a saving that a
    board's step-shaped latency only gives at its own multiples."""
    if pos + 1 >= len(lattice):
        return None
    name = names[i]
    grid = set(table.units[name].widths)
    now = _unit_ms(table, name, widths[name], widths)
    moves = []
    for target in range(pos + 1, len(lattice)):
        if target > pos + 1 and lattice[target] not in grid:
            continue
        saved = now - _unit_ms(table, name, lattice[target], widths)
        lost = cost[target] - cost[pos]
        ratio = lost / saved if saved > _NO_SAVING_MS else math.inf
        moves.append(ratio)
    ratio = min(moves)
    if math.isinf(ratio):  # nothing saves time: the next slice, taken after every move that saves
        ratio = _NOTHING_SAVED + cost[pos + 1] - cost[pos]
    return ratio


def _unit_ms(table: LatencyTable, name: str, kept: int, widths: dict[str, int]) -> float:
    """The part of the prediction that depends on unit ``name`` at ``kept`` (the others as ``widths``)."""
    total = table.units[name].at(kept)
    for grid in table.layers_of(name):
        kept_in = kept if grid.in_unit == name else widths[grid.in_unit]
        kept_out = kept if grid.out_unit == name else widths[grid.out_unit]
        total += grid.interaction(kept_in, kept_out)
    return total


def _neighbours(names: list[str], table: LatencyTable) -> list[set[int]]:
    """Per unit, the units whose moves change its savings (they share a layer of the table)."""
    index = {name: i for i, name in enumerate(names)}
    near: list[set[int]] = [set() for _ in names]
    for grid in table.layers.values():
        a, b = index[grid.in_unit], index[grid.out_unit]
        near[a].add(b)
        near[b].add(a)
    return near


def _removal_costs(allocator: WidthAllocator, table: LatencyTable) -> list[list[float]]:
    """Per unit, the importance lost at each lattice position: the sum of its lowest scores down to that
    width, scores divided by the unit's mean score, weighted by MACs per element and the unit's ratio."""
    units, ratios = allocator.units, allocator.base_ratios
    positive = [r for r in ratios if r > 0]
    mean_ratio = sum(positive) / len(positive) if positive else 1.0
    costs = []
    for i, unit in enumerate(units):
        scores = (unit.head_scores if unit.heads else unit.channel_scores).double().abs()
        mean = float(scores.mean()) if scores.numel() else 0.0
        normalised = scores / mean if mean > 0 else torch.ones_like(scores)
        ascending = torch.sort(normalised, stable=True).values
        cumulative = [0.0, *torch.cumsum(ascending, 0).tolist()]
        weight = max(table.units[unit.root].macs_per_element(), 1.0)
        if ratios[i] > 0:
            weight *= mean_ratio / ratios[i]
        costs.append([weight * cumulative[unit.full - kept] for kept in allocator.lattice(i)])
    return costs


def allocate_by_table(
    allocator: WidthAllocator,
    table: LatencyTable,
    *,
    budget_ms: float | None,
    count: Callable[[Widths], float],
    dense_value: float,
    target: float | None,
    tolerance: float,
    metric_name: str,
) -> tuple[Widths, float, dict]:
    """The widths on the table's path that meet the budget (``budget_ms`` by prediction, else ``target`` of the
    metric ``count`` gives), the path position in [0, 1], and the plan's record.

    A count budget is bisected along the path. Where one slice of a coarse unit steps over the tolerance
    window, that unit is frozen at the wider side and the path goes on from there with the others, whose
    slices are finer (as the MAC-only search does)."""
    path = table_path(allocator, table)
    if budget_ms is not None:
        index = index_for_latency(path, budget_ms)
        widths, predicted_ms = path.widths[index], path.predicted_ms[index]
    else:
        index, widths, predicted_ms = _meet_count(allocator, table, path, count, dense_value, target, tolerance,
                                                  metric_name)  # fmt: skip
    record = {"chooser": "latency table", **table.summary(), "predicted_ms": round(predicted_ms, 4),
              "path_step": index, "path_steps": len(path) - 1}  # fmt: skip
    return widths, index / max(len(path) - 1, 1), record


def _meet_count(allocator, table, path, count, dense_value, target, tolerance, metric_name):
    """(index on the greedy path, widths, predicted ms) meeting ``target`` of the counted metric."""
    values: dict[Widths, float] = {path.widths[0]: dense_value}

    def value(widths: Widths) -> float:
        if widths not in values:
            values[widths] = count(widths)
        return values[widths]

    floor = value(path.widths[-1])
    if floor > target * (1 + tolerance):
        raise RmtdeployError(
            f"cannot reach keep_{metric_name.lower()}={target / dense_value:.3g}: with every layer at its floor "
            f"(min_channels, one head) the model keeps {floor / dense_value:.3f} of dense {metric_name}"
        )
    frozen: set[int] = set()
    sub, offset = path, 0
    for _ in range(len(allocator.units) + 1):
        lo, hi = _bracket(sub, value, target)
        best = min((lo, hi), key=lambda k: abs(value(sub.widths[k]) / target - 1))
        if abs(value(sub.widths[best]) / target - 1) <= tolerance:
            return offset + best, sub.widths[best], sub.predicted_ms[best]
        if lo == hi:  # the frozen units leave the target out of reach
            break
        frozen |= {i for i, (a, b) in enumerate(zip(sub.widths[lo], sub.widths[hi], strict=True)) if a != b}
        offset += lo
        sub = table_path(allocator, table, start=sub.widths[lo], frozen=frozenset(frozen))
    near = sorted(
        {round(v / dense_value, 3) for v in values.values()}, key=lambda v: abs(v * dense_value - target)
    )
    raise RmtdeployError(
        f"cannot reach keep_{metric_name.lower()}={target / dense_value:.3g} within ±{tolerance:.0%} along the latency "
        f"table's path: widths move in steps of round_to channels and whole heads; nearest reached fractions: {near[:2]}"
    )


def _bracket(path: TablePath, value, target: float) -> tuple[int, int]:
    """Bisection along ``path`` (the metric non-increasing): indices lo < hi with value(lo) > target >=
    value(hi), or (last, last) when even the last point is above the target."""
    last = len(path) - 1
    if value(path.widths[last]) > target:
        return last, last
    lo, hi = 0, last
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if value(path.widths[mid]) > target:
            lo = mid
        else:
            hi = mid
    return lo, hi


def index_for_latency(path: TablePath, budget_ms: float) -> int:
    """The first point of ``path`` predicted within ``budget_ms``; an error naming the fastest otherwise."""
    for index, ms in enumerate(path.predicted_ms):
        if ms <= budget_ms:
            return index
    raise RmtdeployError(
        f"{{param}}={budget_ms:g} ms is below what the latency table predicts for the narrowest widths the "
        f"rules allow ({path.predicted_ms[-1]:.3f} ms; dense {path.predicted_ms[0]:.3f} ms)",
        param="latency_budget_ms",
    )
