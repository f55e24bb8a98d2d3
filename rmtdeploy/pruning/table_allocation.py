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

The path runs inside a *trust region* around the strategy's own allocation at the same budget (its MAC
allocation at a MAC budget; at a latency budget, its allocation the table predicts within it): each unit
keeps between ``trust`` × and 1 / ``trust`` × the width the strategy gives it. Without one (``trust`` 0)
the greedy drove residual streams to the 8-channel floor wherever the table promised time, and the
mean-normalised scores never charged what that did to every later block: top-1 fell 23-52 points at
hybrid's measured latency (benchmarks/results/accuracy_latency_table.md). The region also bounds how far
the greedy can follow curves that are fast by noise (the winner's curse of the table validation).
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
# Each unit's width stays within [TRUST x, 1 / TRUST x] the strategy's own width (0: no region).
DEFAULT_TRUST = 0.5
_CENTRE_SCAN = 100  # factors tried before the bisection of the strategy's allocation at a latency budget


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


def trust_region(allocator: WidthAllocator, centre: Widths, trust: float) -> list[list[int]]:
    """Per unit, the widths it may take (widest first): those of its lattice within [``trust`` × c,
    c / ``trust``] of its ``centre`` width c, c included; the whole lattice when ``trust`` is 0."""
    if not 0 <= trust <= 1:
        raise ValueError(f"trust must be in [0, 1], got {trust}")
    region = []
    for i, kept in enumerate(centre):
        lattice = allocator.lattice(i)
        if trust > 0:
            low, high = trust * kept - 1e-9, kept / trust + 1e-9
            lattice = sorted({k for k in lattice if low <= k <= high} | {kept}, reverse=True)
        region.append(lattice)
    return region


def centre_at_latency(allocator: WidthAllocator, table: LatencyTable, budget_ms: float) -> Widths:
    """The strategy's own allocation (one factor on its per-unit ratios) that the table predicts within
    ``budget_ms``, the least cut that does; every unit at its floor when none does. The prediction need not
    fall monotonically with the factor (on ConvNeXt every unit at its floor predicts slower than hybrid at
    keep 0.3: the layer interactions add back more than the extra cut saves), so the factor is scanned
    before it is bisected."""
    names = [u.root for u in allocator.units]

    def within(factor: float) -> bool:
        return table.predict(dict(zip(names, allocator.widths(factor), strict=True))) <= budget_ms

    factors = [allocator.max_factor * k / _CENTRE_SCAN for k in range(_CENTRE_SCAN + 1)]
    first = next((k for k, factor in enumerate(factors) if within(factor)), None)
    if first is None:
        return allocator.widths(allocator.max_factor)
    if first == 0:
        return allocator.widths(0.0)
    low, high = factors[first - 1], factors[first]
    for _ in range(30):  # the widths move in whole slices: 30 halvings of one scan step are far below one
        middle = (low + high) / 2
        low, high = (low, middle) if within(middle) else (middle, high)
    return allocator.widths(high)


def table_path(
    allocator: WidthAllocator,
    table: LatencyTable,
    start: Widths | None = None,
    frozen: frozenset[int] = frozenset(),
    region: Sequence[Sequence[int]] | None = None,
) -> TablePath:
    """The greedy path of :mod:`this module <rmtdeploy.pruning.table_allocation>` for ``allocator``'s units
    over the widths ``region`` allows (:func:`trust_region`; default: each unit's lattice), from ``start``
    (default: each unit's widest allowed width), the ``frozen`` units (indices) left as they are."""
    units = allocator.units
    table.check_units(unit_kinds(units))
    names = [u.root for u in units]
    lattices = (
        [allocator.lattice(i) for i in range(len(units))] if region is None else [list(r) for r in region]
    )
    costs = _removal_costs(allocator, table, lattices)
    neighbours = _neighbours(names, table)
    start = tuple(lattice[0] for lattice in lattices) if start is None else start
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


def _removal_costs(
    allocator: WidthAllocator, table: LatencyTable, lattices: Sequence[Sequence[int]]
) -> list[list[float]]:
    """Per unit, the importance lost at each position of its ``lattices`` entry: the sum of its lowest scores down to that
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
        costs.append([weight * cumulative[unit.full - kept] for kept in lattices[i]])
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
    centre: Widths | None = None,
    trust: float = DEFAULT_TRUST,
) -> tuple[Widths, float, dict]:
    """The widths on the table's path that meet the budget (``budget_ms`` by prediction, else ``target`` of the
    metric ``count`` gives), the path position in [0, 1], and the plan's record. The path stays within the
    trust region around ``centre`` (the strategy's widths at the budget; at a latency budget found here
    when not given); ``trust`` 0 or no ``centre`` at a counted budget: the whole path from dense.

    A count budget is bisected along the path. Where one slice of a coarse unit steps over the tolerance
    window, that unit is frozen at the wider side and the path goes on from there with the others, whose
    slices are finer (as the MAC-only search does). Where the region's widths cannot meet it, the
    strategy's own widths are taken if they do, else the region widens (half the trust, then none); the
    record's ``trust`` is the one used."""
    if trust > 0 and centre is None and budget_ms is not None:
        centre = centre_at_latency(allocator, table, budget_ms)
    asked = trust = trust if centre is not None else 0.0
    middle = allocator.dense if centre is None else centre
    if budget_ms is not None:
        path = table_path(allocator, table, region=trust_region(allocator, middle, trust))
        index = index_for_latency(path, budget_ms)
        widths, predicted_ms = path.widths[index], path.predicted_ms[index]
    else:
        values: dict[Widths, float] = {allocator.dense: dense_value}
        for trust in dict.fromkeys((asked, 1.0, asked / 2, 0.0) if asked > 0 else (0.0,)):
            region = trust_region(allocator, middle, trust)
            path = table_path(allocator, table, region=region)
            try:
                index, widths, predicted_ms = _meet_count(allocator, table, path, count, values, target, tolerance,
                                                          metric_name, region)  # fmt: skip
                break
            except RmtdeployError:
                if trust == 0.0:
                    raise
    record = {"chooser": "latency table", **table.summary(), "predicted_ms": round(predicted_ms, 4),
              "path_step": index, "path_steps": len(path) - 1, "trust": trust,
              **({"trust_asked": asked} if trust != asked else {})}  # fmt: skip
    if centre is not None:
        record["strategy_predicted_ms"] = round(table.predict(dict(zip(
            (u.root for u in allocator.units), centre, strict=True))), 4)  # fmt: skip
    return widths, index / max(len(path) - 1, 1), record


def _meet_count(allocator, table, path, count, values, target, tolerance, metric_name, region):
    """(index on the greedy path, widths, predicted ms) meeting ``target`` of the counted metric; ``values``:
    the metric of every widths counted so far (dense's included)."""
    dense_value = values[allocator.dense]

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
        sub = table_path(allocator, table, start=sub.widths[lo], frozen=frozenset(frozen), region=region)
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
        f"rules allow ({path.predicted_ms[-1]:.3f} ms; the widest considered {path.predicted_ms[0]:.3f} ms)",
        param="latency_budget_ms",
    )
