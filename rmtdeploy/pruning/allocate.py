"""How many channels / heads each pruning unit keeps, and the search for a MAC or parameter budget.

Widths follow torch-pruning's arithmetic for a pruning ratio ``r`` (kept = int(width * (1 - r)) rounded down
to ``round_to``), with a per-layer floor TP lacks. Heads removed = floor(r * heads) by default: TP's
ceil(r * heads) takes a whole head at any r > 0, a third of the attention of a 3-head block at a light cut
(what that costs: docs/strategies.md; ``head_rounding="ceil"`` keeps TP's rule). One scalar ``factor``
drives every unit (local: ratio = factor x the unit's base ratio; global: one importance threshold across
units), and a search over it meets the budget. Because widths move in steps (round_to channels, whole
heads), a single factor can jump over a narrow budget window; the search then freezes the coarser of the
units that jumped and lets the others, whose steps are finer, close the gap.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from rmtdeploy.errors import RmtdeployError
from rmtdeploy.pruning.graph import PruningUnit

Widths = tuple[int, ...]  # kept count per unit, in unit order


@dataclass(frozen=True)
class WidthRules:
    round_to: int  # kept channels are a multiple of this (per layer, over all channel groups)
    min_channels: int  # per-layer floor, in channels
    prune_heads: bool  # remove whole attention heads (heads are never thinned)
    global_pruning: bool  # one importance threshold across units instead of one ratio per unit
    # Heads removed at a ratio r: "floor" (a head goes only once r asks for a whole one; finer units make up
    # the budget) or "ceil" (torch-pruning's ceil(r·heads): any r > 0 takes a head).
    head_rounding: str = "floor"


class WidthAllocator:
    """Maps (factor, frozen widths) to the kept widths of every unit.

    ``reference``: per unit, the full count (heads, or channels per group) of the model this one was pruned
    from. A ratio is then taken from that width and the result capped at what the unit has now, so a
    model pruned in steps ends at the widths one cut would give, instead of losing up to a channel
    multiple to the rounding of every step. ``min_keep``: per unit, a fraction of its current full count
    that stays (a strategy's floor, on top of ``min_channels`` / one head). Such floors yield only to a
    budget they cannot meet: past the factor that puts every unit at its floor they shrink together, in
    proportion, down to the rules' floors (local allocation), so no budget the rules reach is refused.
    """

    def __init__(
        self,
        units: Sequence[PruningUnit],
        rules: WidthRules,
        base_ratios: Sequence[float],
        *,
        reference: Sequence[int] | None = None,
        min_keep: Sequence[float] | None = None,
    ):
        self.units = list(units)
        self.rules = rules
        self.base_ratios = list(base_ratios)
        self._reference = [u.full for u in self.units] if reference is None else list(reference)
        if any(ref < u.full for ref, u in zip(self._reference, self.units, strict=True)):
            raise ValueError("a reference width is narrower than the unit it refers to")
        self._quantum = [self._channel_quantum(u) for u in self.units]
        shares = [0.0] * len(self.units) if min_keep is None else list(min_keep)
        self._floor = [
            self._floor_of(u, q, share) for u, q, share in zip(self.units, self._quantum, shares, strict=True)
        ]
        self._rule_floor = [self._floor_of(u, q, 0.0) for u, q in zip(self.units, self._quantum, strict=True)]
        self._yielding = self._floor != self._rule_floor and not rules.global_pruning

    @property
    def dense(self) -> Widths:
        return tuple(u.full for u in self.units)

    @property
    def max_factor(self) -> float:
        """The factor at which every unit that can shrink sits at its floor."""
        if self.rules.global_pruning:
            return 1.0
        positive = [b for b in self.base_ratios if b > 0]
        at_floors = 1.0 / min(positive) if positive else 0.0
        return 2 * at_floors if self._yielding else at_floors  # then the strategy's floors yield

    def widths(self, factor: float, frozen: dict[int, int] | None = None) -> Widths:
        if self.rules.global_pruning:
            widths = self._global_widths(factor)
        else:
            floors = self._floors_at(factor)
            widths = [
                self._local_width(i, min(factor * b, 1.0), floors[i]) for i, b in enumerate(self.base_ratios)
            ]
        for i, kept in (frozen or {}).items():
            widths[i] = kept
        return tuple(widths)

    def lattice(self, i: int) -> list[int]:
        """The kept counts unit ``i`` can take, widest first: dense, then each multiple of its channel
        quantum (or head count) down to its floor; only dense for a unit whose base ratio is 0."""
        unit = self.units[i]
        if self.base_ratios[i] <= 0 or (unit.heads and not self.rules.prune_heads):
            return [unit.full]
        step = 1 if unit.heads else self._quantum[i]
        below = range(self._rounded(i, unit.full - 1), self._floor[i] - 1, -step)
        return [unit.full, *(k for k in below if k < unit.full)]

    # -- one unit ---------------------------------------------------------------------------------------

    def _channel_quantum(self, unit: PruningUnit) -> int:
        # A layer's channel count is channel_groups x kept; make that a multiple of round_to.
        return self.rules.round_to // math.gcd(self.rules.round_to, unit.channel_groups)

    def _floor_of(self, unit: PruningUnit, quantum: int, share: float) -> int:
        wanted = math.ceil(share * unit.full - 1e-9)  # the strategy's floor, in heads or channels per group
        if unit.heads:
            return unit.heads if not self.rules.prune_heads else min(unit.heads, max(1, wanted))
        per_group = max(1, math.ceil(self.rules.min_channels / unit.channel_groups), wanted)
        return min(unit.width, math.ceil(per_group / quantum) * quantum)

    def _floors_at(self, factor: float) -> list[int]:
        """The floors at ``factor``: the strategy's up to the factor putting every unit at its floor, then
        shrinking linearly to the rules' floors at twice that factor (rounded up to the unit's step)."""
        at_floors = self.max_factor / 2
        if not self._yielding or at_floors <= 0:
            return self._floor
        share = min(1.0, max(0.0, 2.0 - factor / at_floors))
        if share == 1.0:
            return self._floor
        floors = []
        for i, (high, low) in enumerate(zip(self._floor, self._rule_floor, strict=True)):
            step = 1 if self.units[i].heads else self._quantum[i]
            floors.append(min(high, math.ceil((low + share * (high - low)) / step - 1e-9) * step))
        return floors

    def _rounded(self, i: int, kept: int, floor: int | None = None) -> int:
        # TP: any pruning rounds the kept count down to round_to; nothing pruned keeps the odd width.
        unit = self.units[i]
        if kept >= unit.full:
            return unit.full
        if not unit.heads:
            kept -= kept % self._quantum[i]
        return max(kept, self._floor[i] if floor is None else floor)

    def _local_width(self, i: int, ratio: float, floor: int) -> int:
        # Counted from the reference width (the unit's own unless given); _rounded caps at the unit's.
        unit, reference = self.units[i], self._reference[i]
        if unit.heads:
            if self.rules.head_rounding == "ceil":
                removed = math.ceil(ratio * reference)  # TP's head count
            else:
                removed = math.floor(ratio * reference + 1e-9)
            return self._rounded(i, reference - removed, floor)
        return self._rounded(i, int(reference * (1 - ratio)), floor)  # TP's channel count

    def _global_widths(self, factor: float) -> list[int]:
        # TP's global ranking: one threshold over all channel scores, another over all head scores.
        widths = list(self.dense)
        channel_units = [(i, u.channel_scores) for i, u in enumerate(self.units) if not u.heads]
        head_units = [
            (i, u.head_scores) for i, u in enumerate(self.units) if u.heads and self.rules.prune_heads
        ]
        for members in (channel_units, head_units):
            if not members:
                continue
            pooled = torch.cat([scores for _, scores in members])
            n_pruned = len(pooled) - int(len(pooled) * (1 - factor))
            if n_pruned <= 0:
                continue
            threshold = torch.kthvalue(pooled, n_pruned).values
            for i, scores in members:
                removed = int((scores <= threshold).sum())
                if removed:
                    widths[i] = self._rounded(i, self.units[i].full - removed)
        return widths


@dataclass
class _Point:
    factor: float
    widths: Widths
    value: float | None = None  # measured metric; None until measured


@dataclass
class SearchResult:
    widths: Widths
    value: float
    factor: float
    tried: list[tuple[float, float]] = field(default_factory=list)  # (factor, value) of each measurement


class _Budget:
    """The target, the measurements made so far, and when a measurement is good enough."""

    def __init__(self, measure, dense: Widths, dense_value, target, aim, tolerance, patience, max_measures):
        self.measure, self.target = measure, target
        self.aim, self.tolerance, self.patience, self.max_measures = aim, tolerance, patience, max_measures
        self.values: dict[Widths, float] = {dense: dense_value}
        self.factors: dict[Widths, float] = {dense: 0.0}
        self.tried: list[tuple[float, float]] = []

    def value_of(self, point: _Point) -> float:
        if point.value is None:
            if point.widths not in self.values:
                if len(self.tried) >= self.max_measures:
                    raise _OutOfMeasures
                self.values[point.widths] = self.measure(point.widths)
                self.factors[point.widths] = point.factor
                self.tried.append((point.factor, self.values[point.widths]))
            point.value = self.values[point.widths]
        return point.value

    def error(self, value: float) -> float:
        return abs(value / self.target - 1)

    def accepts(self, value: float) -> bool:
        # Aim close while measurements are few; once they add up, anything inside the tolerance will do.
        return self.error(value) <= (self.aim if len(self.tried) < self.patience else self.tolerance)

    def result(self, point: _Point) -> SearchResult:
        return SearchResult(point.widths, point.value, point.factor, self.tried)

    def closest(self) -> SearchResult:
        widths, value = min(self.values.items(), key=lambda item: self.error(item[1]))
        return SearchResult(widths, value, self.factors[widths], self.tried)


class _OutOfMeasures(Exception):
    pass


def search_widths(
    allocator: WidthAllocator,
    measure: Callable[[Widths], float],
    *,
    dense_value: float,
    target: float,
    aim: float = 0.01,
    tolerance: float = 0.03,
    patience: int = 5,
    max_measures: int = 30,
    metric_name: str = "MACs",
    nearest: bool = False,
) -> SearchResult:
    """Widths whose measured metric is within ``aim`` (relative) of ``target`` (within ``tolerance`` once
    ``patience`` measurements are spent); RmtdeployError when the target cannot be met within ``tolerance``,
    or with ``nearest`` the measured widths nearest it.

    ``measure`` builds and counts a model (the expensive step); every distinct width tuple is measured once.
    The metric is assumed non-increasing in the factor (more pruning never adds MACs or parameters).
    """
    budget = _Budget(measure, allocator.dense, dense_value, target, aim, tolerance, patience, max_measures)
    frozen: dict[int, int] = {}
    lo = _Point(0.0, allocator.dense, dense_value)
    if budget.accepts(dense_value):
        return budget.result(lo)
    try:
        while len(frozen) < len(allocator.units):
            hi = _Point(allocator.max_factor, allocator.widths(allocator.max_factor, frozen))
            found = _bracket(allocator, frozen, lo, hi, budget, dense_value)
            if found is None and hi.value is None:  # the far end (widths at their floors) is needed
                if budget.accepts(budget.value_of(hi)):
                    return budget.result(hi)
                if hi.value > target:
                    if not frozen and not nearest:
                        raise RmtdeployError(
                            f"cannot reach keep_{metric_name.lower()}={target / dense_value:.3g}: with every "
                            f"layer at its floor (min_channels, one head, a strategy's floors) the model keeps "
                            f"{hi.value / dense_value:.3f} of dense {metric_name}"
                        )
                    break
                found = _bracket(allocator, frozen, lo, hi, budget, dense_value)
            if found is not None:
                return budget.result(found)
            # The bracket collapsed onto a jump of several units at once. Freeze the coarser half of them
            # (largest relative step) at their wider width; the finer ones then move alone.
            jumped = [i for i, (a, b) in enumerate(zip(lo.widths, hi.widths, strict=True)) if a != b]
            jumped.sort(key=lambda i: (lo.widths[i] - hi.widths[i]) / lo.widths[i], reverse=True)
            frozen.update({i: lo.widths[i] for i in jumped[: math.ceil(len(jumped) / 2)]})
    except _OutOfMeasures:
        pass
    best = budget.closest()
    if budget.error(best.value) <= tolerance or nearest:
        return best
    near = sorted(
        {round(v / dense_value, 3) for v in budget.values.values()},
        key=lambda v: abs(v * dense_value - target),
    )
    raise RmtdeployError(
        f"cannot reach keep_{metric_name.lower()}={target / dense_value:.3g} within ±{tolerance:.0%}: widths move "
        f"in steps of round_to channels and whole heads; nearest reached fractions: {near[:2]}"
    )


def _bracket(
    allocator: WidthAllocator, frozen, lo: _Point, hi: _Point, budget: _Budget, dense_value
) -> _Point | None:
    """Regula falsi in sqrt(metric) (roughly linear in the factor) with bisection safeguards, from ``lo``
    (metric above target) towards ``hi``. Returns an accepted point, or None when the bracket has collapsed
    onto a jump (``lo`` and ``hi`` are updated in place, so the caller sees which units jumped) or when the
    target seems to lie at an unmeasured ``hi`` (the caller measures it and calls again)."""
    target_s = math.sqrt(budget.target / dense_value)
    interpolate, last_moved = True, None
    for _ in range(200):
        span = hi.factor - lo.factor
        if span <= 1e-9 * max(1.0, hi.factor):
            return None
        lo_s = math.sqrt(lo.value / dense_value)
        hi_s = 0.0 if hi.value is None else math.sqrt(hi.value / dense_value)  # unmeasured end: assume ~0
        if interpolate and lo_s > hi_s:
            step = (lo_s - target_s) / (lo_s - hi_s)
            if hi.value is None and step >= 0.98:  # the target lies at or past the floor widths: check them
                return None
            factor = lo.factor + max(step, 0.02) * span
        else:
            factor = lo.factor + 0.5 * span
        widths = allocator.widths(factor, frozen)
        if widths in (lo.widths, hi.widths):  # no new model: narrow the bracket without measuring
            end = lo if widths == lo.widths else hi
            end.factor, interpolate = factor, False
            continue
        point = _Point(factor, widths)
        value = budget.value_of(point)
        if budget.accepts(value):
            return point
        moved = lo if value > budget.target else hi
        moved.factor, moved.widths, moved.value = point.factor, point.widths, point.value
        # Illinois-style safeguard: when the same end moves twice running, interpolation is stalling.
        interpolate, last_moved = moved is not last_moved, moved
    return None
