"""Latency tables: measured on a tiny model (structure, not timings), the JSON file and its checks, the
prediction's arithmetic, and the allocation that keeps the most importance per predicted millisecond."""

from __future__ import annotations

import json

import pytest
import timm
import torch

from rmtdeploy.benchmark.latency_table import (
    assemble_latency_table,
    grid_widths,
    measure_latency_table,
    timings_from_macs,
)
from rmtdeploy.benchmark.latency_table_plan import TablePlan, plan_latency_table
from rmtdeploy.errors import RmtdeployError
from rmtdeploy.pruning import prune_model
from rmtdeploy.pruning.allocate import WidthAllocator, WidthRules
from rmtdeploy.pruning.graph import PruningUnit, layer_widths
from rmtdeploy.pruning.latency_table import LatencyTable, LayerGrid, UnitCurve, load_latency_table, monotone
from rmtdeploy.pruning.table_allocation import (
    allocate_by_table,
    centre_at_latency,
    index_for_latency,
    table_path,
)

pytestmark = pytest.mark.usefixtures("single_torch_thread")
EXAMPLE = torch.zeros(1, 3, 32, 32)


def _vit():
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", img_size=32, depth=1, num_classes=10).eval()


@pytest.fixture(scope="module")
def measured(single_torch_thread):
    """A real table of a one-block ViT: two widths per unit, a few rounds (the timings are not checked)."""
    return _vit(), measure_latency_table(
        _vit(), example_inputs=EXAMPLE, points=2, runs=3, warmup=1, threads=1
    )


def test_a_measured_table_names_every_unit_and_every_layer_between_two_units(measured):
    model, table = measured
    assert table.model == "vit_tiny_patch16_224" and table.input_size == (3, 32, 32)
    assert table.layer_widths == layer_widths(model)
    residual, hidden, heads = "blocks.0.mlp.fc2", "blocks.0.mlp.fc1", "blocks.0.attn.proj"
    assert {name: (c.kind, c.widths) for name, c in table.units.items()} == {
        residual: ("channels", (8, 192)), hidden: ("channels", (8, 768)), heads: ("heads", (1, 3))
    }  # fmt: skip
    for curve in table.units.values():  # narrower: fewer MACs; the dense width is the dense model
        assert curve.macs[0] < curve.macs[-1] == table.dense_macs and curve.ms[-1] == table.dense_ms
    # qkv and proj sit between the residual width and the heads, fc1 and fc2 between it and the hidden width
    assert {name: (g.in_unit, g.out_unit) for name, g in table.layers.items()} == {
        "blocks.0.attn.qkv": (residual, heads), "blocks.0.attn.proj": (heads, residual),
        "blocks.0.mlp.fc1": (residual, hidden), "blocks.0.mlp.fc2": (hidden, residual),
    }  # fmt: skip
    fc1 = table.layers["blocks.0.mlp.fc1"]
    assert fc1.graph["op"] == "linear" and fc1.graph["input_shape"] == [1, 5, 192]  # 4 patches + class token
    assert len(fc1.ms) == 2 and all(len(row) == 2 for row in fc1.ms)
    assert table.measured["backend"] == "onnxruntime-cpu" and table.measured["runs"] == 3
    assert table.predict({}) == pytest.approx(table.dense_ms)
    assert table.predict({name: c.full for name, c in table.units.items()}) == pytest.approx(table.dense_ms)


def test_the_json_file_round_trips_and_a_broken_one_is_refused(measured, tmp_path):
    _, table = measured
    table.save(tmp_path / "table.json")
    again = load_latency_table(tmp_path / "table.json")
    assert again.to_dict() == table.to_dict()
    widths = {"blocks.0.mlp.fc1": 256, "blocks.0.mlp.fc2": 96, "blocks.0.attn.proj": 2}
    assert again.predict(widths) == pytest.approx(table.predict(widths))
    data = table.to_dict()
    data["units"]["blocks.0.mlp.fc1"]["ms"] = [1.0]  # two widths, one time
    (tmp_path / "short.json").write_text(json.dumps(data))
    with pytest.raises(
        RmtdeployError, match="is not a usable latency table: unit blocks.0.mlp.fc1: one value per"
    ):
        load_latency_table(tmp_path / "short.json")
    (tmp_path / "other.json").write_text(json.dumps({"format": "rmtdeploy-bench"}))
    with pytest.raises(RmtdeployError, match="its format is not rmtdeploy-latency-table"):
        load_latency_table(tmp_path / "other.json")
    with pytest.raises(RmtdeployError, match="latency_table not found"):
        load_latency_table(tmp_path / "missing.json")


def test_a_table_of_another_model_is_refused(measured):
    _, table = measured
    other = timm.create_model("vit_tiny_patch16_224", img_size=32, depth=1, mlp_ratio=2, num_classes=10)
    with pytest.raises(
        RmtdeployError, match="dense widths differ, blocks.0.mlp.fc1 is 768 wide there and 384"
    ):
        table.check_model(layer_widths(other), "vit_tiny_patch16_224")
    with pytest.raises(RmtdeployError, match="measured on another model"):
        prune_model(timm.create_model("vit_tiny_patch16_224", img_size=32, depth=2, num_classes=10).eval(),
                    keep_macs=0.5, example_inputs=EXAMPLE, latency_table=table)  # fmt: skip


def test_prediction_adds_unit_curves_and_the_layer_grid_second_difference():
    # Unit a (16 wide) and b (8 wide); one layer between them costs 0.01 ms per in x out pair.
    curves = {"a": UnitCurve("channels", 16, (8, 16), (9.0, 10.0), (9.0, 10.0), (9.0, 10.0), (50, 100)),
              "b": UnitCurve("channels", 8, (4, 8), (9.5, 10.0), (9.5, 10.0), (9.5, 10.0), (80, 100))}  # fmt: skip
    grid = LayerGrid(
        "a", "b", (8, 16), (4, 8), ((0.01 * 8 * 4, 0.01 * 8 * 8), (0.01 * 16 * 4, 0.01 * 16 * 8))
    )
    table = LatencyTable("m", (3, 8, 8), 8, 10.0, 100, {}, curves, {"layer": grid}, {})
    assert table.predict({"a": 8}) == pytest.approx(9.0)  # alone: the curve, no interaction
    # both halved: -1.0 and -0.5, but the layer saved its share twice: + 0.01 * (16 - 8) * (8 - 4)
    assert table.predict({"a": 8, "b": 4}) == pytest.approx(10.0 - 1.0 - 0.5 + 0.32)
    assert table.predict({"a": 12}) == pytest.approx(9.5)  # linear between measured widths
    assert monotone([3.0, 2.0, 4.0]) == (2.5, 2.5, 4.0)  # a narrower width measured slower is pooled


def _unit(root: str, scores: torch.Tensor) -> PruningUnit:
    return PruningUnit(root, "prune_out_channels", len(scores), 1, scores, (root,))


def _linear_curve(full: int, dense_ms: float, ms_per_channel: float, macs_per_channel: int) -> UnitCurve:
    widths = tuple(range(8, full + 1, 8))
    ms = tuple(dense_ms - ms_per_channel * (full - w) for w in widths)
    return UnitCurve("channels", full, widths, ms, ms, ms, tuple(macs_per_channel * w for w in widths))


def _slow_and_fast():
    """Two units alike in width and scores; cutting "slow" saves 10x the time of cutting "fast"."""
    scores = torch.linspace(0.5, 1.5, 64)
    units = [_unit("slow", scores.clone()), _unit("fast", scores.flip(0).clone())]
    curves = {"slow": _linear_curve(64, 20.0, 1.0 / 8, 1000), "fast": _linear_curve(64, 20.0, 0.1 / 8, 1000)}
    table = LatencyTable("m", (3, 8, 8), 8, 20.0, 128_000, {}, curves, {}, {})
    return units, table, WidthAllocator(units, WidthRules(8, 8, True, False), [1.0, 1.0])


def _kept_importance(units, widths) -> float:
    return sum(
        float(torch.sort(u.channel_scores, descending=True).values[:w].sum())
        for u, w in zip(units, widths, strict=True)
    )


def test_the_allocation_cuts_where_time_is_saved_and_keeps_more_importance_than_a_latency_blind_one():
    units, table, allocator = _slow_and_fast()
    path = table_path(allocator, table)
    assert path.widths[0] == (64, 64) and path.widths[-1] == (8, 8)
    assert all(b <= a for a, b in zip(path.predicted_ms, path.predicted_ms[1:], strict=False))
    budget = 16.0
    chosen = path.widths[index_for_latency(path, budget)]
    assert table.predict(dict(zip(("slow", "fast"), chosen, strict=True))) <= budget
    assert chosen == (32, 64)  # four slices of the unit where time goes, none of the other
    # Latency-blind: the same ratio everywhere, the least cut that meets the budget.
    blind = next(w for f in torch.linspace(0, 1, 201).tolist()
                 if table.predict(dict(zip(("slow", "fast"), w := allocator.widths(f), strict=True))) <= budget)  # fmt: skip
    assert blind[0] < 64 and blind[1] < 64
    assert _kept_importance(units, chosen) > _kept_importance(units, blind) + 5


def _by_table(allocator, table, budget_ms, trust):
    return allocate_by_table(allocator, table, budget_ms=budget_ms, count=len, dense_value=1.0, target=None,
                             tolerance=0.03, metric_name="MACs", trust=trust)  # fmt: skip


def test_the_trust_region_keeps_each_unit_near_the_strategys_own_width():
    units, table, allocator = _slow_and_fast()
    budget = 16.0
    free, _, record = _by_table(allocator, table, budget, trust=0.0)
    assert free == (32, 64) and record["trust"] == 0.0  # no region: the slow unit alone, down to half
    centre = centre_at_latency(allocator, table, budget)  # the strategy's one ratio, the least cut within
    assert (
        centre[0] == centre[1] and table.predict(dict(zip(("slow", "fast"), centre, strict=True))) <= budget
    )
    wider = allocator.widths(0.0)
    assert table.predict(dict(zip(("slow", "fast"), wider, strict=True))) > budget
    held, _, record = _by_table(allocator, table, budget, trust=0.75)
    assert all(0.75 * c <= kept <= c / 0.75 for kept, c in zip(held, centre, strict=True)), (held, centre)
    assert held != centre and held[0] < held[1]  # the region still moves width to where time goes
    assert table.predict(dict(zip(("slow", "fast"), held, strict=True))) <= budget
    assert _kept_importance(units, centre) < _kept_importance(units, held) < _kept_importance(units, free)
    assert record["trust"] == 0.75 and record["strategy_predicted_ms"] <= budget
    assert (
        _by_table(allocator, table, budget, trust=1.0)[0] == centre
    )  # a region of one point: the strategy's


def test_the_strategys_centre_at_a_latency_budget_survives_a_prediction_that_rises_again_at_the_floors():
    # Two alike units; a layer between them whose interaction k(64-a)(64-b) adds back more than deep cuts
    # save (as the ConvNeXt table did): the prediction along one shared ratio falls to 16 ms at 32 channels
    # and rises to 18.25 ms at the floors.
    scores = torch.linspace(0.5, 1.5, 64)
    units = [_unit("a", scores.clone()), _unit("b", scores.clone())]
    curves = {"a": _linear_curve(64, 20.0, 1.0 / 8, 1000), "b": _linear_curve(64, 20.0, 1.0 / 8, 1000)}
    widths = tuple(range(8, 65, 8))
    grid = LayerGrid("a", "b", widths, widths, tuple(tuple(w * v / 256 for v in widths) for w in widths))
    table = LatencyTable("m", (3, 8, 8), 8, 20.0, 128_000, {}, curves, {"layer": grid}, {})
    allocator = WidthAllocator(units, WidthRules(8, 8, True, False), [1.0, 1.0])
    assert table.predict({"a": 8, "b": 8}) == pytest.approx(18.25)
    assert table.predict({"a": 32, "b": 32}) == pytest.approx(16.0)
    assert centre_at_latency(allocator, table, 17.0) == (48, 48)  # the least cut within 17 ms


def test_a_count_the_region_cannot_meet_widens_the_region_and_says_so():
    units, table, allocator = _slow_and_fast()
    centre = (48, 48)  # region at trust 0.75: 40..64 per unit, so at least 80 channels in all

    def by_channels(trust):
        return allocate_by_table(allocator, table, budget_ms=None, count=sum, dense_value=128.0, target=56.0,
                                 tolerance=0.03, metric_name="channels", centre=centre, trust=trust)  # fmt: skip

    widths, _, record = by_channels(0.75)
    assert sum(widths) == 56 and record["trust"] == 0.375 and record["trust_asked"] == 0.75
    assert all(0.375 * c <= kept for kept, c in zip(widths, centre, strict=True))
    widths, _, record = allocate_by_table(allocator, table, budget_ms=None, count=sum, dense_value=128.0,
                                          target=96.0, tolerance=0.03, metric_name="channels", centre=centre,
                                          trust=0.75)  # fmt: skip
    assert sum(widths) == 96 and record["trust"] == 0.75 and "trust_asked" not in record


def test_with_full_trust_the_table_gives_the_strategys_own_mac_allocation(measured):
    model, table = measured
    table = _synthetic(table)
    plain = prune_model(model, keep_macs=0.5, example_inputs=EXAMPLE)
    held = prune_model(
        model, keep_macs=0.5, example_inputs=EXAMPLE, latency_table=table, latency_table_trust=1.0
    )
    assert held.plan["operations"] == plain.plan["operations"]
    assert held.plan["latency_allocation"]["trust"] == 1.0


def _synthetic(table: LatencyTable) -> LatencyTable:
    """The measured table's structure with known times: each unit at its floor saves a fifth of dense, no
    layer interaction (so every prediction is known without timing anything)."""
    dense = table.dense_ms
    units = {}
    for name, c in table.units.items():
        ms = tuple(dense * (1 - 0.2 * (c.full - w) / (c.full - c.widths[0])) for w in c.widths)
        units[name] = UnitCurve(c.kind, c.full, c.widths, ms, ms, ms, c.macs)
    layers = {name: LayerGrid(g.in_unit, g.out_unit, g.in_widths, g.out_widths,
                              tuple((0.01,) * len(g.out_widths) for _ in g.in_widths)) for name, g in table.layers.items()}  # fmt: skip
    return LatencyTable(table.model, table.input_size, table.round_to, dense, table.dense_macs, table.layer_widths,
                        units, layers, table.measured)  # fmt: skip


def test_prune_model_meets_macs_or_a_predicted_latency_with_the_table(measured):
    model, table = measured
    table = _synthetic(table)
    result = prune_model(model, keep_macs=0.5, example_inputs=EXAMPLE, latency_table=table)
    assert abs(result.macs_kept / 0.5 - 1) <= 0.03
    record = result.plan["latency_allocation"]
    assert record["chooser"] == "latency table" and 0 < record["path_step"] < record["path_steps"]
    assert record["predicted_ms"] == pytest.approx(
        table.predict(table.widths_of(result.plan["operations"])), rel=1e-3
    )
    budget = 0.7 * table.dense_ms  # the floor of all three units: 0.4 of dense
    timed = prune_model(model, latency_budget_ms=budget, example_inputs=EXAMPLE, latency_table=table)
    predicted = table.predict(table.widths_of(timed.plan["operations"]))
    assert predicted <= budget and timed.plan["latency_allocation"]["predicted_ms"] == pytest.approx(
        predicted, rel=1e-3
    )
    assert timed.plan["budget"] == {"metric": "latency_ms", "budget": budget, "judged_by": "latency table"}
    with pytest.raises(
        RmtdeployError, match="below what the latency table predicts for the narrowest widths"
    ):
        prune_model(
            model, latency_budget_ms=0.3 * table.dense_ms, example_inputs=EXAMPLE, latency_table=table
        )


@pytest.mark.parametrize(
    ("kwargs", "phrase"),
    [
        ({"keep_macs": 0.5, "global_pruning": True}, "cannot be combined with global_pruning"),
        ({"keep_macs": 0.5, "latency_weights": {"blocks.0": 2.0}}, "give latency_table or latency_weights"),
        ({}, "give a budget"),
        ({"keep_macs": 0.5, "latency_budget_ms": 1.0}, "give one budget"),
        ({"latency_budget_ms": -1.0}, "latency_budget_ms must be a time in ms > 0"),
        ({"keep_macs": 0.5, "latency_table_trust": 1.5}, r"latency_table_trust must lie in \[0, 1\]"),
    ],
)
def test_table_arguments_are_checked_before_the_work(measured, kwargs, phrase):
    model, table = measured
    with pytest.raises(RmtdeployError, match=phrase):
        prune_model(model, example_inputs=EXAMPLE, latency_table=table, **kwargs)


def test_a_latency_budget_needs_a_table():
    with pytest.raises(RmtdeployError, match="latency_budget_ms"):
        prune_model(_vit(), latency_budget_ms=1.0, example_inputs=EXAMPLE)


def test_grid_widths_spread_over_the_allowed_widths():
    lattice = list(range(96, 0, -8))  # 96, 88, ..., 8
    assert grid_widths(lattice, 4) == (8, 40, 64, 96)
    assert grid_widths([3, 2, 1], 5) == (1, 2, 3)


def _resnet18_table(path) -> LatencyTable:
    """A table of timm's resnet18 with known times: each of its 12 units at its floor saves 0.5 of 10 ms."""
    import torch_pruning as tp

    from rmtdeploy.adapters import get_adapter
    from rmtdeploy.pruning.graph import build_dependency_graph, discover_units

    model = timm.create_model("resnet18").eval()
    adapter = get_adapter(model)
    units = discover_units(build_dependency_graph(model, adapter, adapter.example_inputs(model)), model, adapter,
                           tp.importance.GroupMagnitudeImportance(p=2))  # fmt: skip
    curves = {u.root: UnitCurve("channels", u.full, (8, u.full), (9.5, 10.0), (9.5, 10.0), (9.5, 10.0), (1, 2))
              for u in units}  # fmt: skip
    table = LatencyTable(
        "resnet18", (3, 224, 224), 8, 10.0, 2, layer_widths(model), curves, {}, {"cpu": "test"}
    )
    table.save(path)
    return table


def test_the_prune_command_meets_a_latency_budget_by_the_tables_prediction(tmp_path):
    from rmtdeploy.cli import main

    table = _resnet18_table(tmp_path / "table.json")
    out = tmp_path / "pruned"
    args = ["prune", "--model", "resnet18", "--weights", "random", "--latency-table", str(tmp_path / "table.json"),
            "--latency-budget-ms", "8", "--target", "cpu-ort", "--json", "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    plan = json.loads((out / "plan.json").read_text())
    predicted = table.predict(table.widths_of(plan["operations"]))
    assert 7.5 < predicted <= 8.0 and plan["latency_allocation"]["predicted_ms"] == pytest.approx(
        predicted, rel=1e-3
    )
    assert plan["budget"]["metric"] == "latency_ms"


@pytest.mark.slow
def test_compress_meets_a_latency_budget_by_the_tables_prediction_without_a_search(tmp_path):
    from rmtdeploy.cli import main

    table = _resnet18_table(tmp_path / "table.json")
    out = tmp_path / "run"
    args = ["compress", "--model", "resnet18", "--weights", "random", "--target", "cpu-ort", "--latency-budget", "8",
            "--latency-table", str(tmp_path / "table.json"), "--runs", "3", "--json", "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    stages = {s["name"]: s for s in json.loads((out / "manifest.json").read_text())["stages"]}
    assert (
        stages["budget"]["status"] == "not-run" and "latency table's prediction" in stages["budget"]["reason"]
    )
    plan = json.loads((out / "pruned" / "plan.json").read_text())
    assert table.predict(table.widths_of(plan["operations"])) <= 8.0
    assert "met by the latency table's prediction" in (out / "report.md").read_text()


def test_with_macs_for_times_the_table_predicts_the_counted_macs_of_any_pruned_resnet():
    # backend="macs": every time is MACs, so a prediction must equal the count; the layers between two units
    # (each block's convs between its own width and its stage's) carry the interaction that makes it exact.
    torch.manual_seed(0)
    model = timm.create_model("resnet18", num_classes=10).eval()
    table = measure_latency_table(model, example_inputs=EXAMPLE, points=3, backend="macs")
    assert table.dense_ms == pytest.approx(table.dense_macs / 1e6) and len(table.layers) == 19
    assert table.scale == pytest.approx(
        1.0, rel=1e-4
    )  # the structure is exact: the joint fit changes nothing
    additive = LatencyTable(**{**table.__dict__, "layers": {}})
    for extra in ({}, {"latency_table": table}):
        result = prune_model(model, keep_macs=0.4, example_inputs=EXAMPLE, **extra)
        widths = table.widths_of(result.plan["operations"])
        assert table.predict(widths) == pytest.approx(
            result.pruned_macs / 1e6, rel=1e-5
        )  # ms rounded to 5 places
        if (
            not extra
        ):  # the same ratio everywhere narrows both sides of every conv: without the layers, far off
            assert additive.predict(widths) < 0.8 * result.pruned_macs / 1e6


def test_the_joint_configurations_fit_how_the_units_savings_add_up_and_a_foreign_record_is_refused(tmp_path):
    # Times are MACs, except that every joint configuration (all units cut at once) saves only half of what
    # its MACs say: the fitted scale must be 0.5, and the scaled prediction must then meet each joint time.
    torch.manual_seed(0)
    model = timm.create_model("resnet18", num_classes=10).eval()
    plan = plan_latency_table(model, None, example_inputs=EXAMPLE, points=3, calibration_points=4)
    plan = TablePlan.from_dict(json.loads(json.dumps(plan.to_dict())))  # what a board reads back
    timings = timings_from_macs(plan)
    joints = {c["label"] for c in plan.data["calibration"]}
    dense = plan.data["dense_macs"] / 1e6
    for group in timings["groups"]:
        for label in set(group["speedup"]) & joints:
            ms = dense - 0.5 * (dense - plan.data["macs"][label] / 1e6)
            group["speedup"][label] = [dense / ms] * 3
    table = assemble_latency_table(plan, timings, {"backend": "test"})
    assert table.scale == pytest.approx(0.5, rel=1e-3)
    for point in table.calibration["points"]:
        assert abs(point["error"]) < 1e-3
    assert load_latency_table_roundtrip(table, tmp_path).scale == table.scale
    timings["groups"][0]["labels"] = timings["groups"][0]["labels"][:-1]
    with pytest.raises(RmtdeployError, match="does not fit the plan"):
        assemble_latency_table(plan, timings, {"backend": "test"})


def load_latency_table_roundtrip(table, tmp_path):
    table.save(tmp_path / "table.json")
    return load_latency_table(tmp_path / "table.json")
