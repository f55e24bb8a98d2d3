"""rmtdeploy.retention, the library behind benchmarks/accuracy_retention.py: the families train through the
trainer and cache of `compress --weights trained`, the TP gradient peers read what they should, every
criterion prunes to its keep, and the criteria table's statistics and goal check are right. The whole
benchmark in its quick mode runs in tests/test_benchmark_accuracy_retention.py (slow)."""

from __future__ import annotations

import dataclasses
import statistics

import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

from rmtdeploy.finetuning.scratch import build_small_model, trained_model
from rmtdeploy.retention import (
    ALL_FAMILIES,
    CRITERIA,
    EDGE_FAMILIES,
    FAMILIES,
    Settings,
    prune_with,
    run_family_seed,
    seeded_draw,
    summarise,
    train_dense,
)
from rmtdeploy.retention.criteria import gradient_copy
from rmtdeploy.retention.table import goal

QUICK = Settings(dataset="digits", image_size=16, keeps=(0.5,), calibration_images=64, hessian_samples=8,
                 distill_images=64, distill_steps=2, val_images=64, epochs_scale=0.1)  # fmt: skip


# -- families -----------------------------------------------------------------------------------------------


def test_patch_embedding_families_are_built_for_the_input_size_and_cnns_are_not():
    assert FAMILIES["vit"].scratch_recipe("digits", 16, seed=3).model_kwargs == {
        "img_size": 16,
        "patch_size": 8,
        "depth": 6,
    }
    resnet = FAMILIES["resnet"].scratch_recipe("digits", 16, seed=3, epochs_scale=0.1)
    assert resnet.model_kwargs == {} and resnet.seed == 3
    assert resnet.epochs == 1 and resnet.lr == FAMILIES["resnet"].lr  # 6 × 0.1 rounds to 1, never to 0
    assert FAMILIES["swin"].scratch_recipe("mnist5k", 32, seed=0).epochs == 10


def test_the_edge_families_are_asked_for_by_name_and_leave_the_default_run_alone():
    assert list(FAMILIES) == ["vit", "deit", "swin", "convnext", "hiera", "resnet"]  # the default run
    assert list(EDGE_FAMILIES) == ["mobilenetv3", "efficientvit"]
    assert ALL_FAMILIES == {**FAMILIES, **EDGE_FAMILIES}


@pytest.mark.parametrize("family", ["mobilenetv3", "efficientvit"])
def test_an_edge_family_builds_at_64_px_and_prunes_to_half_its_macs(family, single_torch_thread):
    """Random weights, the size the edge run uses; EfficientViT's attention blocks (LiteMLA, the
    ``context_module``) take part: the residual stream they read and write loses channels."""
    member = EDGE_FAMILIES[family]
    model = build_small_model(member.timm_name, member.scratch_recipe("mnist5k", 64, seed=0), 10)
    result, _ = prune_with(
        "magnitude", model, 0.5, None, image_size=64, round_to=8, hessian_samples=8, seed=0
    )
    assert abs(result.macs_kept / 0.5 - 1) <= 0.03, result.macs_kept
    assert result.model(torch.zeros(2, 3, 64, 64)).shape == (2, 10)
    dense, pruned = result.plan["widths"]["dense"], result.plan["widths"]["pruned"]
    narrower = {name for name in dense if pruned[name] < dense[name]}
    assert len(narrower) > 10
    if family == "efficientvit":
        assert any("context_module" in name for name in narrower)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, single_torch_thread):
    """resnet18 trained on digits at 16×16 for one epoch by train_dense, in a private cache."""
    cache = tmp_path_factory.mktemp("trained")
    lines: list[str] = []
    model, record = train_dense("resnet", 0, QUICK, cache, lines.append)
    return model, record, cache, lines


def test_train_dense_trains_through_the_shared_trainer_and_its_cache(trained):
    model, record, cache, lines = trained
    assert lines == [f"resnet seed 0: epoch 1/1 val top-1 {record['top1']:.1f}"]
    assert record["family"] == "resnet" and record["timm_name"] == "resnet18" and record["epochs"] == 1
    assert len(record["val_curve"]) == 1 and record["top1"] > 30  # ten classes: chance is 10
    assert not model.training
    # compress --weights trained asks the trainer for the same training: it finds it in the cache.
    recipe = FAMILIES["resnet"].scratch_recipe("digits", 16, seed=0, epochs_scale=0.1)
    loaded, again, _ = trained_model("resnet18", recipe, cache=cache, val_images=QUICK.val_images)
    assert again["cached"] is True and again["val_curve"] == record["val_curve"]
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, loaded.model.state_dict()[name]), name


def test_train_dense_loads_the_same_model_and_record_from_the_cache(trained):
    model, record, cache, _ = trained
    lines: list[str] = []
    again, record_again = train_dense("resnet", 0, QUICK, cache, lines.append)
    assert lines == [] and record_again == record
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, again.state_dict()[name]), name


def test_a_record_on_fewer_validation_images_is_cached_under_its_own_name(trained):
    # Its curve is on 64 images: a later request for the whole validation split must not load it.
    names = sorted(path.name for path in trained[2].iterdir())
    assert len(names) == 2 and all(name.rsplit(".", 1)[0].endswith("-val64") for name in names), names


# -- criteria -----------------------------------------------------------------------------------------------


def _tiny():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))


def test_taylor_copy_holds_the_summed_gradient_and_leaves_the_model_alone():
    model = _tiny()
    batches = [(torch.randn(5, 4), torch.randint(0, 2, (5,))) for _ in range(2)]
    copy_ = gradient_copy(model, batches, None)
    expected = sum(torch.autograd.grad(F.cross_entropy(model(x), y), model[0].weight)[0] for x, y in batches)
    assert torch.allclose(copy_[0].weight.grad, expected)
    assert model[0].weight.grad is None


def test_hessian_copy_holds_the_mean_squared_per_sample_gradient_not_the_last_sample():
    model = _tiny()
    batches = [(torch.randn(5, 4), torch.randint(0, 2, (5,))) for _ in range(2)]
    copy_ = gradient_copy(model, batches, per_sample=7)
    images, labels = torch.cat([b[0] for b in batches])[:7], torch.cat([b[1] for b in batches])[:7]
    squares = [
        torch.autograd.grad(F.cross_entropy(model(x[None]), y[None]), model[2].weight)[0].pow(2)
        for x, y in zip(images, labels, strict=True)
    ]
    assert torch.allclose(copy_[2].weight.grad, torch.stack(squares).mean(0))
    assert not torch.allclose(copy_[2].weight.grad, squares[-1])


def test_an_unknown_criterion_is_refused(trained):
    with pytest.raises(ValueError, match="unknown criterion tp-l3"):
        prune_with("tp-l3", trained[0], 0.5, [], image_size=16, round_to=8, hessian_samples=8, seed=0)


def test_seeded_draws_differ_by_purpose_and_repeat_by_seed():
    model = timm.create_model("resnet18", pretrained=False, num_classes=10)
    first = seeded_draw(QUICK, seed=0, count=16, salt=1, model=model)
    assert torch.equal(first[0][0], seeded_draw(QUICK, seed=0, count=16, salt=1, model=model)[0][0])
    assert not torch.equal(first[0][0], seeded_draw(QUICK, seed=0, count=16, salt=2, model=model)[0][0])
    assert not torch.equal(first[0][0], seeded_draw(QUICK, seed=1, count=16, salt=1, model=model)[0][0])


def test_seeded_draws_are_normalised_as_the_model_was_trained():
    """ViT's mean/std are 0.5 and ResNet's ImageNet's: calibration and distillation images drawn with one
    default once fed ViT inputs it had never seen."""
    vit = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, num_classes=10, img_size=16, patch_size=8
    )
    resnet = timm.create_model("resnet18", pretrained=False, num_classes=10)
    for model in (vit, resnet):
        drawn = seeded_draw(QUICK, seed=0, count=16, salt=1, model=model)[0][0]
        config = timm.data.resolve_data_config({}, model=model)
        mean, std = (torch.tensor(config[k]).view(1, 3, 1, 1) for k in ("mean", "std"))
        pixels = drawn * std + mean
        assert float(pixels.min()) >= -1e-5 and float(pixels.max()) <= 1 + 1e-5
        assert float(pixels.amin(dim=(2, 3)).min()) < 0.01  # the background is black in either case


def test_every_point_reaches_its_keep_and_reports_both_columns(trained):
    _, _, cache, _ = trained
    settings = dataclasses.replace(QUICK, criteria=("magnitude", "tp-l1", "tp-hessian"))
    events = []

    class Queue:
        put = staticmethod(events.append)

    out = run_family_seed("resnet", 0, settings, cache, Queue())
    assert [(p["criterion"], p["keep"]) for p in out["points"]] == [(c, 0.5) for c in settings.criteria]
    for point in out["points"]:
        assert abs(point["macs_kept"] / 0.5 - 1) <= 0.03, point
        assert point["widths"] and all(0 < kept < 1 for kept in point["widths"].values())
        assert point["kd_loss_after"] < point["kd_loss_before"]  # the distillation trained
    assert [e for e in events if e[0] == "point"] == [("point", "resnet")] * 3
    assert out["dense"]["top1_eval"] > 30


def test_hybrid_table_prunes_to_the_latency_its_table_predicts_for_hybrid_and_exports_both(trained, tmp_path):
    from rmtdeploy.benchmark.latency_table import measure_latency_table

    model, _, cache, _ = trained
    # MACs for times: a prediction is then a MAC count, so equal predicted latency must mean equal MACs.
    table = measure_latency_table(model, example_inputs=torch.zeros(1, 3, 16, 16), points=3, backend="macs")
    (tmp_path / "tables").mkdir()
    table.save(tmp_path / "tables" / "resnet.latency_table.json")
    settings = dataclasses.replace(QUICK, criteria=("hybrid", "hybrid-table"), latency_tables=str(tmp_path / "tables"),
                                   export_onnx=str(tmp_path / "onnx"))  # fmt: skip
    mac_point, table_point = run_family_seed("resnet", 0, settings, cache)["points"]
    assert table_point["predicted_ms"] <= mac_point["predicted_ms"] * (1 + 1e-6)
    assert table_point["macs_kept"] == pytest.approx(mac_point["macs_kept"], abs=0.03)
    assert table_point["widths"] != mac_point["widths"]  # the table's allocation, not hybrid's ratios
    exported = {p.name for p in (tmp_path / "onnx").iterdir()}
    assert exported == {"resnet-s0-dense.onnx", mac_point["onnx"], table_point["onnx"]}
    with pytest.raises(ValueError, match="latency table"):
        run_family_seed("resnet", 0, dataclasses.replace(settings, latency_tables=None), cache)


# -- the table ----------------------------------------------------------------------------------------------


def _point(criterion, keep, seed, pruned, after):
    return {"family": "vit", "criterion": criterion, "keep": keep, "seed": seed, "macs_kept": keep,
            "top1_pruned": pruned, "top1_distilled": after, "scoring_s": 1.0}  # fmt: skip


TABLE_SETTINGS = Settings(keeps=(0.5, 0.3), criteria=("magnitude", "rmt", "hybrid", "tp-taylor"))
# Per (criterion, keep): top-1 after pruning and after distillation, for seeds 0 and 1.
TOP1 = {
    ("magnitude", 0.5): [(60, 70), (62, 72)], ("magnitude", 0.3): [(30, 50), (32, 52)],
    ("rmt", 0.5): [(61, 69), (61, 69)], ("rmt", 0.3): [(31, 40), (31, 40)],
    ("hybrid", 0.5): [(64, 71), (66, 73)], ("hybrid", 0.3): [(35, 49), (33, 51)],
    ("tp-taylor", 0.5): [(50, 74), (50, 74)], ("tp-taylor", 0.3): [(20, 51), (20, 45)],
}  # fmt: skip
POINTS = [_point(c, k, seed, *cells[seed]) for (c, k), cells in TOP1.items() for seed in (0, 1)]


def test_the_table_is_mean_and_std_over_seeds():
    table = summarise(POINTS, ["vit"], TABLE_SETTINGS)["table"]["vit"]
    assert table["magnitude"]["0.5"]["pruned"] == (61.0, statistics.stdev([60, 62]))
    assert table["hybrid"]["0.3"]["distilled"] == (50.0, statistics.stdev([49, 51]))
    assert table["tp-taylor"]["0.3"]["kd_below_start"] == 0 and table["rmt"]["0.5"]["seeds"] == 2


def test_the_goal_compares_the_best_spectral_strategy_with_group_l2_and_the_peers():
    result = goal(POINTS, "vit", TABLE_SETTINGS)
    assert result["best_spectral"] == "hybrid"  # 49.5 mean over the curve vs rmt's 46
    assert result["gap_pruned_vs_l2"]["0.5"] == {"mean": 4.0, "std": 0.0, "min": 4}
    assert result["gap_pruned_vs_l2"]["0.3"] == {"mean": 3.0, "std": statistics.stdev([5, 1]), "min": 1}
    assert result["above_l2_every_keep"] and result["deep_gap_met"]
    # After distillation at 0.5, TP Taylor (74) beats hybrid (72) by more than either's spread (1.41).
    assert result["after_distill"]["0.5"] == {
        "ours": 72.0,
        "best_peer": "tp-taylor",
        "peer": 74.0,
        "level": False,
    }
    assert result["after_distill"]["0.3"]["level"] and not result["level_after_distill"]


def test_without_group_l2_there_is_no_goal():
    settings = Settings(keeps=(0.5, 0.3), criteria=("rmt", "hybrid", "tp-taylor"))
    assert goal(POINTS, "vit", settings) == {}


def test_the_default_criteria_are_the_strategies_and_the_four_peers():
    assert Settings().criteria == CRITERIA == ("magnitude", "rmt", "hybrid", "edge-budget", "dynamic", "data-rmt",
                                               "tp-l1", "tp-taylor", "tp-hessian", "tp-random")  # fmt: skip
