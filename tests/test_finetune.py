"""Label-free distillation moves a pruned student toward its dense teacher and touches nothing else."""

from __future__ import annotations

import copy

import pytest
import timm
import torch
from torch import nn

from rmtdeploy.errors import RmtdeployError
from rmtdeploy.finetuning import distill, kd_loss
from rmtdeploy.scores import get_strategy

CNN_AT_128 = {"input_size": (3, 128, 128)}  # small inputs keep the suite fast
pytestmark = pytest.mark.usefixtures("single_torch_thread")


@pytest.fixture(scope="module")
def dense_pruned_batches():
    """A seeded random resnet18, its magnitude-pruned copy at ~0.5 MACs (BatchNorm recalibrated), 2×8 images."""
    torch.manual_seed(0)
    dense = timm.create_model("resnet18", pretrained=False, pretrained_cfg_overlay=CNN_AT_128).eval()
    generator = torch.Generator().manual_seed(1)
    batches = [torch.randn(8, 3, 128, 128, generator=generator) for _ in range(2)]
    pruned = get_strategy("magnitude").prune(dense, keep_macs=0.5, calibration_batches=batches).model
    return dense, pruned, batches


def test_distillation_lowers_the_kd_loss_and_leaves_teacher_statistics_and_rng_alone(dense_pruned_batches):
    dense, pruned, batches = dense_pruned_batches
    student = copy.deepcopy(pruned)
    teacher_before = copy.deepcopy(dense.state_dict())
    rng_before = torch.random.get_rng_state()
    record = distill(student, dense, batches, steps=10)
    assert (record.steps, record.batches, record.images) == (10, 2, 16)
    assert record.loss_after < 0.5 * record.loss_before
    with torch.no_grad():  # the record's loss is the student's eval-mode loss on the batches
        measured = sum(kd_loss(student(x), dense(x), record.temperature).item() for x in batches) / 2
    assert measured == pytest.approx(record.loss_after, rel=1e-4)
    assert not any(module.training for module in student.modules())
    assert all(torch.equal(value, dense.state_dict()[name]) for name, value in teacher_before.items())
    # BatchNorm normalises with the recalibrated statistics and keeps them (see distill's docstring).
    assert torch.equal(student.bn1.running_mean, pruned.bn1.running_mean)
    assert not torch.equal(student.conv1.weight, pruned.conv1.weight)
    assert torch.equal(torch.random.get_rng_state(), rng_before)


def test_zero_steps_measures_and_changes_nothing(dense_pruned_batches):
    dense, pruned, batches = dense_pruned_batches
    student = copy.deepcopy(pruned)
    record = distill(student, dense, batches[:1], steps=0)
    assert record.loss_after == record.loss_before > 0
    assert all(torch.equal(value, pruned.state_dict()[name]) for name, value in student.state_dict().items())


@pytest.mark.parametrize(
    "options, message",
    [
        ({"steps": -1}, "steps >= 0"),
        ({"steps": 1, "batches": []}, "at least one batch"),
        ({"steps": 1, "temperature": 0.0}, "temperature > 0"),
        ({"steps": 1, "lr": 0.0}, "learning rate > 0"),
        ({"steps": 1, "teacher": nn.Linear(4, 5)}, "disagree on the output"),
    ],
)
def test_bad_distillation_arguments_are_clear_errors(options, message):
    student, teacher, batches = nn.Linear(4, 3), nn.Linear(4, 3), [torch.randn(2, 4)]
    options = {"teacher": teacher, "batches": batches, **options}
    with pytest.raises(RmtdeployError, match=message):
        distill(student, **options)
