"""The width search on its own: TP's width arithmetic with floors, and the search for a budget, on synthetic
units and cost functions (no model, no graph)."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from rmtdeploy.errors import RmtdeployError
from rmtdeploy.pruning.allocate import WidthAllocator, WidthRules, search_widths
from rmtdeploy.pruning.graph import PruningUnit


def channels(width: int, groups: int = 1) -> PruningUnit:
    per_group = width // groups
    return PruningUnit(
        root=f"conv{width}x{groups}",
        fn="prune_out_channels",
        channels=width,
        channel_groups=groups,
        channel_scores=torch.arange(per_group, dtype=torch.float32),
        owners=(f"conv{width}x{groups}",),
    )


def heads(count: int, head_dim: int = 64) -> PruningUnit:
    return PruningUnit(
        root=f"qkv{count}",
        fn="prune_out_channels",
        channels=count * head_dim,
        channel_groups=count,
        channel_scores=torch.zeros(head_dim),
        owners=(f"qkv{count}",),
        heads=count,
        head_scores=torch.arange(count, dtype=torch.float32),
    )


def rules(**changes) -> WidthRules:
    settings = dict(round_to=8, min_channels=8, prune_heads=True, global_pruning=False)
    return WidthRules(**{**settings, **changes})


def widths(unit: PruningUnit, ratio: float, **rule_changes) -> int:
    return WidthAllocator([unit], rules(**rule_changes), [1.0]).widths(ratio)[0]


def test_kept_channels_round_down_to_round_to_and_nothing_pruned_keeps_the_odd_width():
    assert widths(channels(100), 0.3) == 64  # int(100 * 0.7) = 70 -> 64
    assert widths(channels(100), 0.0) == 100
    assert widths(channels(100), 0.3, round_to=1) == 70


def test_grouped_channels_round_so_the_layer_total_is_a_multiple_of_round_to():
    kept = widths(channels(100, groups=2), 0.3)  # 50 per group -> int(35) -> 32 (x2 = 64)
    assert kept == 32 and (kept * 2) % 8 == 0


def test_min_channels_is_a_per_layer_floor_rounded_up_and_never_above_the_width():
    assert widths(channels(64), 0.99, min_channels=16) == 16
    assert widths(channels(64, groups=2), 0.99, min_channels=16) == 8  # 8 per group, 16 in the layer
    assert widths(channels(64), 0.99, min_channels=20) == 24  # rounded up to round_to
    assert widths(channels(6), 0.99, min_channels=16) == 6


@pytest.mark.parametrize(
    ("ratio", "floor", "ceil"),
    [(0.2, 3, 2), (0.34, 2, 1), (0.5, 2, 1), (0.67, 1, 1), (1.0, 1, 1)],  # ceil at 0.67 asks for all 3
)
def test_heads_removed_floor_by_default_ceil_as_torch_pruning_and_one_head_always_stays(ratio, floor, ceil):
    assert widths(heads(3), ratio) == floor
    assert widths(heads(3), ratio, head_rounding="ceil") == ceil


def test_heads_stay_whole_when_head_pruning_is_off():
    assert widths(heads(3), 1.0, prune_heads=False) == 3


@pytest.mark.parametrize("global_pruning", [False, True])
def test_every_width_is_non_increasing_in_the_factor(global_pruning):
    units = [channels(96), channels(200, groups=4), heads(6), channels(24)]
    allocator = WidthAllocator(units, rules(global_pruning=global_pruning), [1.0, 0.5, 0.8, 0.2])
    top = allocator.max_factor
    steps = [allocator.widths(top * i / 200) for i in range(201)]
    for before, after in zip(steps, steps[1:], strict=False):
        assert all(a <= b for a, b in zip(after, before, strict=True)), (before, after)
    assert steps[0] == allocator.dense
    assert steps[-1] != allocator.dense


def test_max_factor_puts_the_unit_with_the_smallest_base_ratio_at_its_floor():
    allocator = WidthAllocator([channels(64), channels(64)], rules(), [0.5, 0.25])
    assert allocator.max_factor == 4.0
    assert allocator.widths(allocator.max_factor) == (8, 8)
    assert WidthAllocator([channels(64)], rules(), [0.0]).max_factor == 0.0


def test_frozen_widths_override_the_factor():
    allocator = WidthAllocator([channels(64), channels(64)], rules(), [1.0, 1.0])
    assert allocator.widths(0.5, frozen={0: 56}) == (56, 32)


def linear_cost(costs: list[float], calls: Counter):
    """A synthetic metric: each kept element of unit i costs costs[i]; every call is counted by widths."""

    def measure(widths):
        calls[widths] += 1
        return float(sum(w * c for w, c in zip(widths, costs, strict=True)))

    return measure


@pytest.mark.parametrize("keep", [0.9, 0.6, 0.35])
def test_search_meets_the_target_within_tolerance_and_measures_each_width_once(keep):
    units = [channels(256), channels(128, groups=2), heads(8), channels(64)]
    costs = [3.0, 5.0, 40.0, 1.0]
    allocator = WidthAllocator(units, rules(), [1.0, 1.0, 1.0, 1.0])
    calls: Counter = Counter()
    dense = linear_cost(costs, Counter())(allocator.dense)
    found = search_widths(allocator, linear_cost(costs, calls), dense_value=dense, target=keep * dense)
    assert abs(found.value / (keep * dense) - 1) <= 0.03
    assert found.value == linear_cost(costs, Counter())(found.widths)
    assert max(calls.values()) == 1 and len(found.tried) == len(calls)


def test_search_freezes_the_coarse_unit_when_one_factor_jumps_over_the_target():
    # Two heads of 10 each and 100 fine channels of 1: one factor drops both heads' halves at once
    # (70 -> 60 at factor 0.5); 65 lies in the jump, reached only with both heads kept and 45 channels.
    allocator = WidthAllocator([heads(2), channels(100)], rules(round_to=1, min_channels=1), [1.0, 1.0])
    measure = linear_cost([10.0, 1.0], Counter())
    found = search_widths(allocator, measure, dense_value=120.0, target=65.0)
    assert found.widths[0] == 2
    assert abs(found.value / 65.0 - 1) <= 0.03


def test_an_unreachable_target_fails_clearly_with_what_the_floors_keep():
    allocator = WidthAllocator([channels(64), channels(64)], rules(min_channels=32), [1.0, 1.0])
    measure = linear_cost([1.0, 1.0], Counter())
    with pytest.raises(RmtdeployError, match=r"cannot reach keep_macs=0\.1: .* keeps 0\.500 of dense MACs"):
        search_widths(allocator, measure, dense_value=128.0, target=12.8)


def test_a_target_between_two_reachable_steps_fails_with_the_nearest_fractions():
    allocator = WidthAllocator([heads(2)], rules(), [1.0])  # 2 heads -> 1: 100% or 50%, nothing between
    measure = linear_cost([10.0], Counter())
    with pytest.raises(RmtdeployError, match=r"within ±3%.*nearest reached fractions: \[0\.5, 1\.0\]"):
        search_widths(allocator, measure, dense_value=20.0, target=15.0, metric_name="params")
    # Asked for the nearest instead (a latency table's trust region is centred there): the closer step.
    assert search_widths(allocator, measure, dense_value=20.0, target=12.0, nearest=True).widths == (1,)
    floors = WidthAllocator([channels(64), channels(64)], rules(min_channels=32), [1.0, 1.0])
    found = search_widths(
        floors, linear_cost([1.0, 1.0], Counter()), dense_value=128.0, target=12.8, nearest=True
    )
    assert found.widths == (32, 32)


def test_a_reference_width_makes_a_second_cut_round_as_one_cut_from_the_reference_would():
    # A 40-wide layer already cut to 32. At ratio 0.4 one cut from 40 keeps int(24) = 24; counted from the
    # 32 it has now it would keep int(19.2) -> 16, a second rounding down. Light ratios keep all 32.
    now = channels(32)
    assert WidthAllocator([now], rules(), [1.0], reference=[40]).widths(0.4) == (24,)
    assert WidthAllocator([now], rules(), [1.0]).widths(0.4) == (16,)
    assert WidthAllocator([now], rules(), [1.0], reference=[40]).widths(0.1) == (32,)  # never grows back
    # Heads: 6 of 12 left; at ratio 0.25 one cut from 12 keeps 9, so the unit keeps its 6 (not 6 - 1).
    assert WidthAllocator([heads(6)], rules(), [1.0], reference=[12]).widths(0.25) == (6,)
    assert WidthAllocator([heads(6)], rules(), [1.0], reference=[12]).widths(0.75) == (3,)


def test_min_keep_raises_a_units_floor_rounded_up_to_round_to_and_whole_heads():
    allocator = WidthAllocator([channels(100), heads(12)], rules(), [1.0, 1.0], min_keep=[0.3, 0.3])
    assert allocator.widths(1.0) == (32, 4)  # ceil(30) -> 32 channels; ceil(3.6) = 4 heads
    assert allocator.widths(0.5) == (48, 6)  # above the floor the ratio decides
    assert allocator.widths(allocator.max_factor) == (8, 1)  # unless only the rules' floors meet the budget


def test_strategy_floors_yield_to_a_budget_only_they_would_refuse_shrinking_to_the_rules_floors():
    allocator = WidthAllocator([channels(100), channels(100)], rules(), [1.0, 0.5], min_keep=[0.5, 0.5])
    assert allocator.max_factor == 4.0  # both units at their strategy floor from factor 2, then they yield
    assert allocator.widths(2.0) == (56, 56)  # ceil(50) -> 56
    assert allocator.widths(3.0) == (32, 32)  # halfway between the floors: 8 + (56 - 8) / 2 = 32
    assert allocator.widths(4.0) == (8, 8)  # the rules' floor (min_channels)
    for unit in (0, 1):  # never wider at a larger factor
        widths = [allocator.widths(f / 2)[unit] for f in range(9)]
        assert widths == sorted(widths, reverse=True)
