"""The fine-tune stage on real images (scikit-learn's digits): recovery with the gentle default recipe,
resume equivalence after Ctrl-C or a crash, pruning during training, DDP on two CPU processes, output
readable by ``load_pruned``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F

import rmtdeploy
from rmtdeploy.finetuning.recipe import FinetuneRecipe
from rmtdeploy.finetuning.stage import StageInterrupted, finetune
from rmtdeploy.finetuning.trainer import Reporter
from rmtdeploy.models import LoadedModel

pytestmark = pytest.mark.usefixtures("single_torch_thread")
SIZE = 16  # digits are 8×8: 16×16 inputs keep a resnet18 epoch at about a second
QUICK = {"batch_size": 64, "bn_images": 256}


def _train_dense(seed: int = 0, epochs: int = 4) -> torch.nn.Module:
    """resnet18 trained on digits from scratch (a few seconds): a converged teacher to prune."""
    from rmtdeploy.data import builtin_loader

    torch.manual_seed(seed)
    model = timm.create_model("resnet18", num_classes=10)
    model.pretrained_cfg = {**model.pretrained_cfg, "input_size": (3, SIZE, SIZE)}
    loader = builtin_loader("digits", "train", model=model, batch_size=64, augment=True, seed=seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, 2e-3, total_steps=epochs * len(loader))
    model.train()
    for _ in range(epochs):
        for images, labels in loader:
            loss = F.cross_entropy(model(images), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    return model.eval()


@pytest.fixture(scope="module")
def pruned(tmp_path_factory):
    """A trained dense resnet18 (its checkpoint recorded in the plan) and its hybrid prune to keep 0.5."""
    root = tmp_path_factory.mktemp("finetune")
    dense = _train_dense()
    torch.save(dense.state_dict(), root / "dense.pth")
    loaded = LoadedModel(dense, "resnet18", "resnet", f"checkpoint:{root / 'dense.pth'}")
    rmtdeploy.prune(loaded, root / "pruned", keep_macs=0.5, calibration="digits", calibration_images=256)
    return root, dense


def test_the_gentle_default_recipe_never_ends_below_its_start_on_real_data(pruned, tmp_path):
    """The issue's bar: from a converged teacher, the default recipe's *last* epoch is not below the pruned +
    BatchNorm-recalibrated start (a plain AdamW at lr 5e-4 without warm-up dropped a pruned resnet18 from
    97% to 78% in one epoch)."""
    root, _ = pruned
    run = finetune(
        root / "pruned", "digits", tmp_path / "out", recipe=FinetuneRecipe(epochs=2, **QUICK), keep="last"
    )
    top1 = run.record["top1"]
    assert top1["start"] > 50  # a real model: the pruned start is far above chance (10%)
    assert all(epoch >= top1["start"] for epoch in top1["epochs"]), top1
    assert top1["last"] >= top1["start"] and top1["start"] >= top1["as_given"] - 2


def test_the_output_is_a_pruned_folder_with_the_record_appended(pruned, tmp_path):
    root, _ = pruned
    run = finetune(root / "pruned", "digits", tmp_path / "out", recipe=FinetuneRecipe(epochs=1, **QUICK))
    reloaded = rmtdeploy.load_pruned(tmp_path / "out")
    prune_plan = json.loads((root / "pruned" / "plan.json").read_text())
    assert reloaded.plan["operations"] == prune_plan["operations"]
    assert reloaded.plan["finetune"][-1]["top1"] == run.record["top1"]
    assert reloaded.plan["weights_sha256"] != prune_plan["weights_sha256"]
    images = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(reloaded.model(images), run.model(images))
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["stage"] == "finetune"
    assert set(manifest["files"]) == {"model.safetensors", "plan.json", "metrics.jsonl", "finetune.json"}
    lines = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert [m["event"] for m in lines][0] == "start" and lines[-1]["event"] == "epoch"
    assert 0 < lines[-1]["val_top1"] <= lines[-1]["val_top5"] <= 100
    assert not (tmp_path / "out.checkpoints").exists()  # removed once the output is whole
    # Fine-tuning a fine-tuned folder appends a second record.
    again = finetune(tmp_path / "out", "digits", tmp_path / "again", recipe=FinetuneRecipe(epochs=1, **QUICK))
    assert len(again.plan["finetune"]) == 2


class _InterruptAt(Reporter):
    """Sends the process a real SIGINT (Ctrl-C) at training step ``at``, or raises a crash there."""

    def __init__(self, at: int, crash: bool = False):
        self.at, self.crash, self.steps = at, crash, 0

    def step(self, loss, top1):
        self.steps += 1
        if self.steps == self.at:
            if self.crash:
                raise RuntimeError("simulated crash")
            os.kill(os.getpid(), signal.SIGINT)


# make test-slow: 15 s each; make test keeps compress's Ctrl-C-and-resume test (tests/test_compress.py).
@pytest.mark.slow
@pytest.mark.parametrize("crash", [False, True], ids=["ctrl-c", "crash-after-a-checkpoint"])
def test_an_interrupted_run_resumes_to_the_same_weights(pruned, tmp_path, crash):
    """Mid-epoch (23 steps per epoch): Ctrl-C at step 17 checkpoints there; a crash at step 17 leaves the
    step-15 checkpoint. Either way the resumed run ends where the uninterrupted one does."""
    root, _ = pruned
    recipe = FinetuneRecipe(epochs=1, checkpoint_every=5, seed=3, **QUICK)
    whole = finetune(root / "pruned", "digits", tmp_path / "whole", recipe=recipe, keep="last")
    error = RuntimeError if crash else StageInterrupted
    with pytest.raises(error, match="simulated crash" if crash else "continue with resume"):
        finetune(
            root / "pruned",
            "digits",
            tmp_path / "cut",
            recipe=recipe,
            keep="last",
            reporter=_InterruptAt(17, crash),
        )
    assert not (tmp_path / "cut").exists() and (tmp_path / "cut.checkpoints" / "last.pt").is_file()
    resumed = finetune(root / "pruned", "digits", tmp_path / "cut", recipe=recipe, keep="last", resume=True)
    for name, value in whole.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[name], value, rtol=1e-5, atol=1e-6, msg=name)
    assert resumed.record["top1"] == whole.record["top1"]
    assert resumed.record["steps"] == whole.record["steps"] == 23


def test_pruning_during_training_reaches_the_budget_step_by_step(pruned, tmp_path):
    from rmtdeploy.finetuning.progressive import ProgressivePruning

    _, dense = pruned
    progressive = ProgressivePruning(keep_macs=0.5, knobs={"steps": 2}, fraction=0.5)
    loaded = LoadedModel(dense, "resnet18", "resnet", "checkpoint:dense")
    run = finetune(
        loaded, "digits", tmp_path / "out", recipe=FinetuneRecipe(epochs=2, **QUICK), progressive=progressive
    )
    steps = run.record["progressive"]["steps"]
    assert [s["step"] for s in steps] == [1, 2]
    assert steps[0]["kept"] > steps[1]["kept"] and abs(steps[1]["kept"] - 0.5) < 0.05
    assert steps[0]["at_step"] < steps[1]["at_step"] <= run.record["steps"] // 2 + 1  # within the first half
    assert run.record["steps"] == 46
    reloaded = rmtdeploy.load_pruned(tmp_path / "out")
    assert reloaded.plan["pruned_while_training"] is True
    assert reloaded.pruned_macs == run.result.pruned_macs


DDP_SCRIPT = """
import hashlib, json, sys, torch
torch.set_num_threads(1)
from rmtdeploy.finetuning.recipe import FinetuneRecipe
from rmtdeploy.finetuning.stage import finetune
out, result = sys.argv[1], sys.argv[2]
run = finetune(sys.argv[3], "digits", out, recipe=FinetuneRecipe(epochs=1, batch_size=32, bn_images=128), keep="last")
rank = torch.distributed.get_rank()
digest = hashlib.sha256(b"".join(v.float().numpy().tobytes() for v in run.model.state_dict().values())).hexdigest()
steps = [m["train_loss"] for m in run.metrics if m["event"] == "step"]
json.dump({"digest": digest, "losses": steps, "world": run.record["world_size"]}, open(f"{result}.{rank}", "w"))
"""


@pytest.mark.slow  # 15 s of two processes on two cores; make test-slow
def test_ddp_on_two_cpu_processes_keeps_the_ranks_identical(pruned, tmp_path):
    root, _ = pruned
    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT)
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
               str(_free_port()), str(script), str(tmp_path / "out"), str(tmp_path / "result"), str(root / "pruned")]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads(Path(f"{tmp_path / 'result'}.{rank}").read_text()) for rank in (0, 1)]
    assert ranks[0]["digest"] == ranks[1]["digest"]
    assert ranks[0]["world"] == 2
    losses = ranks[0]["losses"]
    assert len(losses) >= 3 and losses[-1] < losses[0]
    record = json.loads((tmp_path / "out" / "finetune.json").read_text())
    assert record["world_size"] == 2 and record["steps_per_epoch"] == 23  # 1437 images / 2 ranks / 32


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
