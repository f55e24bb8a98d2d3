"""``prune_model``: structured pruning of a timm model to a MAC or parameter budget."""

from __future__ import annotations

import copy
import functools
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch_pruning as tp
from torch import nn

from rmtdeploy.adapters import ArchitectureAdapter, get_adapter
from rmtdeploy.errors import RmtdeployError
from rmtdeploy.models import model_family
from rmtdeploy.preprocessing import model_data_config
from rmtdeploy.pruning.allocate import WidthAllocator, WidthRules, Widths, search_widths
from rmtdeploy.pruning.arguments import budget_json, check_pruning_arguments
from rmtdeploy.pruning.graph import (
    Operation,
    PruningUnit,
    apply_operations,
    attention_heads_by_block,
    build_dependency_graph,
    discover_units,
    layer_widths,
    unit_operation,
)
from rmtdeploy.pruning.latency import AllocationChooser, tilted_weights
from rmtdeploy.pruning.latency_table import LatencyTable
from rmtdeploy.pruning.plan import build_plan
from rmtdeploy.pruning.result import PruneResult, count_macs_params
from rmtdeploy.pruning.table_allocation import DEFAULT_TRUST, allocate_by_table

# The budget is met within this relative error or the prune fails; the search aims tighter.
TARGET_TOLERANCE = 0.03
_TARGET_AIM = 0.01

RatioKey = nn.Module | tuple[nn.Module, ...]


def prune_model(
    model: nn.Module,
    *,
    importance: tp.importance.Importance | None = None,
    keep_macs: float | None = None,
    keep_params: float | None = None,
    round_to: int = 8,
    min_channels: int = 8,
    prune_heads: bool = True,
    head_rounding: str = "floor",
    global_pruning: bool = False,
    pruning_ratio_dict: Mapping[RatioKey, float] | None = None,
    min_keep_dict: Mapping[RatioKey, float] | None = None,
    reference: nn.Module | None = None,
    example_inputs: torch.Tensor | None = None,
    model_name: str | None = None,
    strategy: dict[str, Any] | None = None,
    provenance: dict[str, Any] | None = None,
    latency_weights: Mapping[str, float] | AllocationChooser | None = None,
    latency_table: LatencyTable | None = None,
    latency_budget_ms: float | None = None,
    latency_table_trust: float = DEFAULT_TRUST,
) -> PruneResult:
    """Remove channels and whole attention heads from a copy of ``model`` (``model`` itself is untouched).

    The budget is ``keep_macs`` or ``keep_params``: the fraction of the dense count to keep, met within
    ±3%. Which channels go is decided by ``importance`` (default: TP's group L2 magnitude); how many by one
    factor searched for the budget: ``pruning_ratio_dict`` ({module or tuple of modules: base ratio}, e.g. from
    a spectral strategy) gives per-layer ratios that the factor scales (unnamed layers are left whole);
    without it every layer gets the same ratio, or with ``global_pruning`` one importance threshold ranks all
    layers. With no budget, ``pruning_ratio_dict`` is applied as given. Kept widths are multiples of
    ``round_to`` and at least ``min_channels`` per layer; heads keep their head_dim (at least one head stays).
    ``min_keep_dict`` ({module or tuple: fraction}) raises that floor: a unit keeps at least the largest
    fraction given to the modules owning its channels (rounded up to ``round_to`` / whole heads).
    ``reference``: the model ``model`` was pruned from (same architecture, wider or equal). Per-unit ratios
    are then counted from the reference's widths and capped at the current ones, so pruning in steps
    ends at the widths one cut from the reference would give, not rounded down once per step (local
    allocation; a global ranking counts from the current widths).
    ``head_rounding``: at a ratio r a unit of h heads loses floor(r·h) heads (default: a head goes only when
    r asks for a whole one) or ceil(r·h) ("ceil", torch-pruning's rule); see docs/strategies.md.
    ``latency_weights``: a chooser (:func:`rmtdeploy.benchmark.allocation.fastest_allocation`) meets the
    budget with the MAC-only allocation and a few tilted ones
    and keeps the one that runs fastest on ONNX Runtime CPU at equal MACs (recorded in the plan's
    ``latency_allocation``); a ``{component: weight}`` map scales each component's base ratios
    as given (:mod:`rmtdeploy.pruning.latency`). ``latency_table`` (measured on the target) chooses the widths
    instead: the most importance kept per predicted ms, at the MAC / parameter budget or within
    ``latency_budget_ms`` as the table predicts (:mod:`rmtdeploy.pruning.table_allocation`), each unit within
    ``latency_table_trust`` of the strategy's own width at the budget (0: anywhere from dense to the floors).
    ``model_name`` defaults to timm's ``pretrained_cfg['architecture']``. ``strategy`` and ``provenance``
    go into the plan as they are (see :func:`rmtdeploy.pruning.plan.build_plan`).
    """
    check_pruning_arguments(
        keep_macs=keep_macs, keep_params=keep_params, round_to=round_to, min_channels=min_channels,
        head_rounding=head_rounding, global_pruning=global_pruning, pruning_ratio_dict=pruning_ratio_dict,
        latency_budget_ms=latency_budget_ms, latency_table=latency_table, latency_weights=latency_weights,
        latency_table_trust=latency_table_trust,
    )  # fmt: skip
    adapter = get_adapter(model)
    model_name = model_name or (getattr(model, "pretrained_cfg", None) or {}).get("architecture")
    if not model_name:
        raise RmtdeployError("cannot tell the timm name of this model (no pretrained_cfg); pass model_name")
    importance = importance or tp.importance.GroupMagnitudeImportance(p=2)
    example_inputs = adapter.example_inputs(model) if example_inputs is None else example_inputs
    example_inputs = example_inputs.to(next(model.parameters()).device)
    dense, units, scoring_s = _scored_units(model, adapter, importance, example_inputs, model_name)
    dense_cost = count_macs_params(dense, example_inputs)
    rules = WidthRules(round_to=round_to, min_channels=min_channels, prune_heads=prune_heads,
                       head_rounding=head_rounding, global_pruning=global_pruning)  # fmt: skip
    weights = _latency_weights(latency_weights, global_pruning)
    candidate, factor, latency = _allocation(latency_table, latency_budget_ms, latency_table_trust)(
        model, dense, units, rules, pruning_ratio_dict, weights, adapter, example_inputs,
        (keep_macs, keep_params, dense_cost), {"min_keep": min_keep_dict, "reference": reference},
    )  # fmt: skip
    candidate.model.train(model.training)
    settings = {
        **_rule_settings(rules),
        "importance": type(importance).__name__,
        "budget": budget_json(keep_macs, keep_params, latency_budget_ms),
        "factor": round(float(factor), 6),
        **({"latency_weights": dict(weights)} if isinstance(weights, Mapping) else {}),
        **({"latency_allocation": latency} if latency else {}),
    }
    plan = _plan(
        model_name, dense, candidate, adapter, example_inputs, dense_cost, settings, strategy, provenance
    )
    result = PruneResult(candidate.model, plan, *_pairs(dense_cost, candidate))
    result.timings["scores_s"] = scoring_s
    return result


def _allocate(
    model, dense, units, rules, pruning_ratio_dict, weights, adapter, example_inputs, budget, limits
):
    """The trial meeting the budget, its factor, and the latency-aware record: with ``weights`` a chooser,
    MAC-only and the tilted allocations each meet the budget and the one it measures fastest is kept.
    ``limits``: ``min_keep`` and ``reference`` of :func:`prune_model`."""
    bounds = _width_bounds(model, dense, units, limits)
    measured = callable(weights)
    if measured:
        owners = [u.owners for u in units]
        maps = {"mac-only": None, **tilted_weights(dense, example_inputs[:1], owners=owners)}
    else:
        maps = {"given": weights}
    trials = {}
    for label, weight_map in maps.items():
        ratios = _unit_ratios(model, dense, units, pruning_ratio_dict, weight_map)
        builder = _TrialBuilder(dense, adapter, units, example_inputs)
        trials[label] = _meet_budget(builder, WidthAllocator(units, rules, ratios, **bounds), *budget)
    if not measured:
        return (*trials["given"], {})
    chosen, record = weights(
        {k: (t.model, t.macs) for k, (t, _) in trials.items()}, example_inputs[:1], "mac-only"
    )
    return (*trials[chosen], {**record, "weights": maps[chosen]})


def _width_bounds(model, dense, units, limits) -> dict[str, list | None]:
    """The allocator's per-unit bounds from ``limits`` (``min_keep``, ``reference`` of :func:`prune_model`)."""
    return {
        "min_keep": _min_keep(model, units, limits["min_keep"]),
        "reference": _reference_fulls(dense, units, limits["reference"]),
    }


def _budget_metric(keep_macs, keep_params, dense_cost: tuple[int, int]) -> tuple[str, float | None, int]:
    """(the budget's unit, the fraction to keep, the dense model's cost in that unit): params when
    ``keep_params`` is given, else MACs."""
    if keep_params is not None:
        return "params", keep_params, dense_cost[1]
    return "MACs", keep_macs, dense_cost[0]


def _allocation(table: LatencyTable | None, budget_ms: float | None, trust: float):
    """The allocation that meets the budget: by the width rules alone (:func:`_allocate`), or along a latency
    table's greedy path."""
    return (
        _allocate if table is None else functools.partial(_allocate_by_table, table=(table, budget_ms, trust))
    )


def _allocate_by_table(model, dense, units, rules, pruning_ratio_dict, weights, adapter, example_inputs, budget,
                       limits, table):  # fmt: skip
    """The trial a latency table's greedy path gives at the budget (MACs, parameters or predicted ms), within
    the trust region around the strategy's own widths (its MAC allocation at a counted budget)."""
    (table, budget_ms, trust), (keep_macs, keep_params, dense_cost) = table, budget
    table.check_model(layer_widths(dense))
    bounds = _width_bounds(model, dense, units, limits)
    allocator = WidthAllocator(units, rules, _base_ratios(model, units, pruning_ratio_dict), **bounds)
    metric, keep, dense_value = _budget_metric(keep_macs, keep_params, dense_cost)
    target = None if keep is None else dense_value * keep
    builder = _TrialBuilder(dense, adapter, units, example_inputs)
    centre = None
    if trust > 0 and target is not None:  # the strategy's MAC allocation nearest the budget
        centre = search_widths(
            allocator, lambda w: builder.measure(w, metric, target), dense_value=dense_value, target=target,
            aim=_TARGET_AIM, tolerance=TARGET_TOLERANCE, metric_name=metric, nearest=True,
        ).widths  # fmt: skip
    widths, position, record = allocate_by_table(
        allocator, table, budget_ms=budget_ms, count=lambda w: builder.measure(w, metric, target),
        dense_value=dense_value, target=target, tolerance=TARGET_TOLERANCE, metric_name=metric,
        centre=centre, trust=trust,
    )  # fmt: skip
    return builder.build(widths), position, record


def _unit_ratios(model, dense, units, pruning_ratio_dict, weights) -> list[float]:
    """The base ratios, scaled by the latency weights of each unit's component when given."""
    ratios = _base_ratios(model, units, pruning_ratio_dict)
    if not weights:
        return ratios
    from rmtdeploy.pruning.latency import weighted_ratios

    return weighted_ratios(dense, [u.owners for u in units], ratios, weights)


def _latency_weights(weights, global_pruning: bool) -> dict[str, float] | AllocationChooser | None:
    if weights is None:
        return None
    if global_pruning:
        raise RmtdeployError(
            "latency-aware allocation weighs per-unit ratios; it cannot be combined with global_pruning"
        )
    if callable(weights):
        return weights
    if isinstance(weights, str) or not all(isinstance(v, (int, float)) and v > 0 for v in weights.values()):
        raise RmtdeployError(
            "latency_weights must be a chooser that times candidate allocations "
            "(rmtdeploy.benchmark.allocation.fastest_allocation) or a mapping of component -> positive weight"
        )
    return dict(weights)


def _pairs(dense_cost: tuple[int, int], candidate: _Trial) -> tuple[int, int, int, int]:
    """(dense MACs, pruned MACs, dense params, pruned params), PruneResult's order."""
    return dense_cost[0], candidate.macs, dense_cost[1], candidate.params


def _rule_settings(rules: WidthRules) -> dict[str, Any]:
    keys = ("round_to", "min_channels", "prune_heads", "head_rounding", "global_pruning")
    return {key: getattr(rules, key) for key in keys}


def _plan(
    model_name, dense, candidate, adapter, example_inputs, dense_cost, settings, strategy, provenance
) -> dict[str, Any]:
    return build_plan(
        model_name=model_name,
        family=model_family(dense),
        create_kwargs=adapter.create_kwargs(dense),
        input_size=list(example_inputs.shape[1:]),
        data_config={k: v for k, v in model_data_config(dense).items() if k != "input_size"},
        settings=settings,
        operations=candidate.operations,
        dense_widths=layer_widths(dense),
        pruned_widths=layer_widths(candidate.model),
        dense_heads=attention_heads_by_block(dense, adapter),
        pruned_heads=attention_heads_by_block(candidate.model, adapter),
        macs=(dense_cost[0], candidate.macs),
        params=(dense_cost[1], candidate.params),
        strategy=strategy,
        provenance=provenance,
    )


def _scored_units(model, adapter, importance, example_inputs, model_name):
    """A dense copy of ``model``, its prunable units scored by ``importance``, and the scoring time."""
    dense = _dense_copy(model)
    graph = build_dependency_graph(dense, adapter, example_inputs)
    started = time.perf_counter()
    units = discover_units(graph, dense, adapter, importance)
    if not units:
        raise RmtdeployError(
            f"found no prunable channels in {model_name} (the dependency graph has no groups)"
        )
    return dense, units, time.perf_counter() - started


def _dense_copy(model: nn.Module) -> nn.Module:
    dense = copy.deepcopy(model).eval()
    # Gradient importances (TP's Taylor, Hessian) read ``.grad``, which deepcopy drops: carry it over.
    for source, target in zip(model.parameters(), dense.parameters(), strict=True):
        if source.grad is not None:
            target.grad = source.grad.detach().clone()
    return dense


def _meet_budget(
    builder: _TrialBuilder,
    allocator: WidthAllocator,
    keep_macs: float | None,
    keep_params: float | None,
    dense_cost: tuple[int, int],
) -> tuple[_Trial, float]:
    """The trial whose MACs (or params) meet the budget, and its factor; no budget: the ratios as given."""
    if keep_macs is None and keep_params is None:
        return builder.build(allocator.widths(1.0)), 1.0
    metric, keep, dense_value = _budget_metric(keep_macs, keep_params, dense_cost)
    found = search_widths(
        allocator,
        lambda widths: builder.measure(widths, metric, dense_value * keep),
        dense_value=dense_value,
        target=dense_value * keep,
        aim=_TARGET_AIM,
        tolerance=TARGET_TOLERANCE,
        metric_name=metric,
    )
    return builder.build(found.widths), found.factor


@dataclass
class _Trial:
    model: nn.Module
    operations: list[Operation]
    macs: int
    params: int


class _TrialBuilder:
    """Builds the pruned model for a width tuple on a fresh copy of the dense model, and keeps the trial
    nearest the target so the winning widths are not built twice (one model held at a time)."""

    def __init__(
        self, dense: nn.Module, adapter: ArchitectureAdapter, units: list[PruningUnit], example_inputs
    ):
        self.dense, self.adapter, self.units, self.example_inputs = dense, adapter, units, example_inputs
        self._requires_grad = {name: p.requires_grad for name, p in dense.named_parameters()}
        self._kept: tuple[Widths, _Trial] | None = None
        self._kept_error = float("inf")

    def build(self, widths: Widths) -> _Trial:
        if self._kept is not None and self._kept[0] == widths:
            return self._kept[1]
        operations = [
            op for unit, kept in zip(self.units, widths, strict=True) if (op := unit_operation(unit, kept))
        ]
        model = copy.deepcopy(self.dense)
        if operations:
            apply_operations(
                build_dependency_graph(model, self.adapter, self.example_inputs), model, operations
            )
            # TP makes new Parameters for what it cuts (requires_grad on); keep the caller's freezing.
            for name, param in model.named_parameters():
                param.requires_grad_(self._requires_grad.get(name, True))
        self.adapter.repair(model)
        macs, params = count_macs_params(model, self.example_inputs)
        return _Trial(model, operations, macs, params)

    def measure(self, widths: Widths, metric: str, target: float) -> float:
        trial = self.build(widths)
        value = trial.macs if metric == "MACs" else trial.params
        error = abs(value / target - 1)
        if error < self._kept_error:
            self._kept, self._kept_error = (widths, trial), error
        return value


def _base_ratios(
    model: nn.Module, units: list[PruningUnit], pruning_ratio_dict: Mapping[RatioKey, float] | None
) -> list[float]:
    """Each unit's base ratio: 1 (uniform) without a dict; else the mean ratio of the dict entries whose
    modules own the unit's output channels (0, left whole, when none does)."""
    if not pruning_ratio_dict:
        return [1.0] * len(units)
    ratios = _values_by_unit(model, units, pruning_ratio_dict, "pruning_ratio_dict", upper=1.0)
    if not any(ratios):
        raise RmtdeployError("pruning_ratio_dict names no layer with prunable channels")
    return [sum(r) / len(r) if r else 0.0 for r in ratios]


def _min_keep(
    model: nn.Module, units: list[PruningUnit], min_keep_dict: Mapping[RatioKey, float] | None
) -> list[float] | None:
    """Each unit's kept fraction floor: the largest of the entries whose modules own its channels."""
    if not min_keep_dict:
        return None
    shares = _values_by_unit(model, units, min_keep_dict, "min_keep_dict", upper=None)
    return [max(s, default=0.0) for s in shares]


def _values_by_unit(
    model: nn.Module, units: list[PruningUnit], values: Mapping[RatioKey, float], what: str, upper
) -> list[list[float]]:
    """The values of ``values`` ({module or tuple of modules: value in [0, upper) or [0, 1]}) each unit
    gets, through the modules owning its output channels; entries for layers that own no prunable
    channels (the classifier) are ignored, as TP does."""
    names = {module: name for name, module in model.named_modules()}
    unit_of_owner = {owner: i for i, unit in enumerate(units) for owner in unit.owners}
    by_unit: list[list[float]] = [[] for _ in units]
    for key, value in values.items():
        modules = key if isinstance(key, tuple) else (key,)
        if not all(isinstance(m, nn.Module) and m in names for m in modules):
            raise RmtdeployError(f"{what} keys must be modules (or tuples of modules) of the model")
        label = ", ".join(names[m] or "<model>" for m in modules)
        if upper is not None and not 0 <= value < upper:
            raise RmtdeployError(
                f"{what} gives {label} the ratio {value}: ratios must lie in [0, 1) "
                "(1 would leave the layer empty)"
            )
        if upper is None and not 0 <= value <= 1:
            raise RmtdeployError(f"{what} gives {label} {value}: a kept fraction lies in [0, 1]")
        hit = {unit_of_owner[sub] for m in modules for sub in _names_below(m, names) if sub in unit_of_owner}
        for i in hit:
            by_unit[i].append(float(value))
    return by_unit


def _reference_fulls(
    dense: nn.Module, units: list[PruningUnit], reference: nn.Module | None
) -> list[int] | None:
    """Each unit's full count (heads, or channels per group) in ``reference``, from its root layer's
    width there and here (the units are found on ``dense``, a copy of the model being pruned)."""
    if reference is None:
        return None
    here, there = dict(dense.named_modules()), dict(reference.named_modules())
    fulls = []
    for unit in units:
        now, then = _root_width(here.get(unit.root), unit.fn), _root_width(there.get(unit.root), unit.fn)
        if now is None or then is None or then < now or (unit.full * then) % now:
            raise RmtdeployError(
                f"the reference model does not match the model being pruned at {unit.root}: "
                "pass the model this one was pruned from"
            )
        fulls.append(unit.full * then // now)
    return fulls


def _root_width(module: nn.Module | None, fn: str) -> int | None:
    """The width of ``module``'s dimension that the pruning function ``fn`` prunes (Linear / Conv roots)."""
    outputs = fn == "prune_out_channels"
    if isinstance(module, nn.Linear):
        return module.out_features if outputs else module.in_features
    if isinstance(module, nn.modules.conv._ConvNd):
        return module.out_channels if outputs else module.in_channels
    return None


def _names_below(module: nn.Module, names: dict[nn.Module, str]) -> list[str]:
    return [names[sub] for sub in module.modules() if sub in names]
