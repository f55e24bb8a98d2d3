"""The training loop: distillation + cross-entropy, AdamW on a warm-up + cosine schedule, checkpoints.

Every batch is a function of (seed, epoch, position) (``rmtdeploy.data.sampling``) and every RNG's state
is checkpointed, so a run stopped anywhere — Ctrl-C, a kill after a checkpoint, a crash — and resumed
ends with the weights an uninterrupted run would have (tested). Ctrl-C asks the loop to stop after the
current step and write a checkpoint; a second Ctrl-C stops at once.

The student trains in train mode (BatchNorm on batch statistics, dropout and drop-path on), after its
BatchNorm statistics were re-estimated on the training images; the teacher is a copy whose statistics are
re-estimated on the same images (a briefly trained model's lag its weights). The student is evaluated
(top-1 / top-5) on the validation split before training — the starting point — and after every epoch,
and the best of these is kept: the output is never worse on validation than where the run started.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import signal
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from rmtdeploy.data.sampling import epoch_loader
from rmtdeploy.errors import RmtdeployError
from rmtdeploy.finetuning.checkpoint import Checkpoints, rng_state, set_rng_state
from rmtdeploy.finetuning.distill import adamw_param_groups, kd_loss
from rmtdeploy.finetuning.distributed import Distributed
from rmtdeploy.finetuning.recipe import FinetuneRecipe

TEACHER_CACHE_LIMIT_BYTES = 1 << 30  # cache the teacher's logits (unaugmented data) up to 1 GiB
LOG_EVERY_FRACTION = 0.1  # a metrics line every tenth of an epoch


class Reporter:
    """Progress callbacks of a training run; the library's default says nothing."""

    def status(self, text: str) -> None: ...

    def epoch_started(self, epoch: int, epochs: int, batches: int, done: int) -> None: ...

    def step(self, loss: float, top1: float) -> None: ...

    def epoch_ended(self, record: dict[str, Any]) -> None: ...


@dataclass
class TrainingData:
    """The datasets of one run: ``train`` (augmented or not, per the recipe), ``plain`` (the training
    images with the eval transform, for BatchNorm recalibration) and ``val``."""

    train: Any
    plain: Any
    val: Any
    workers: int = 0


class StopRequested(KeyboardInterrupt):
    """Ctrl-C reached the loop, which stopped after a whole step and checkpointed."""


@dataclass
class Trainer:
    """Long: the loop's state is one object so that it checkpoints and resumes as one."""

    student: nn.Module
    teacher: nn.Module | None
    recipe: FinetuneRecipe
    data: TrainingData
    device: torch.device
    dist: Distributed
    checkpoints: Checkpoints | None
    fingerprint: dict[str, Any]
    reporter: Reporter = field(default_factory=Reporter)
    extra_state: dict[str, Any] = field(default_factory=dict)  # saved with each checkpoint (plans)
    # position and history
    step: int = 0
    epoch: int = 0
    batch: int = 0
    metrics: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)
    best: dict[str, Any] | None = None
    saving: bool = True  # off while a progressive prune changes the structure
    tracking_best: bool = True

    def __post_init__(self):
        per_rank = -(-len(self.data.train) // self.dist.world)
        self.steps_per_epoch = -(-per_rank // self.recipe.batch_size)
        self.total_steps = self.recipe.epochs * self.steps_per_epoch
        self.amp = self.device.type == "cuda"
        with torch.random.fork_rng(devices=[]):  # its DataLoader draws a seed from the global generator
            self.teacher = self._recalibrated_teacher(self.teacher)
        self._teacher_cache = self._make_teacher_cache()
        self._stop = False
        self._running = {"loss": 0.0, "correct": 0, "seen": 0}
        self.set_student(self.student)

    # -- model and optimizer ---------------------------------------------------------------------------

    def set_student(self, student: nn.Module) -> None:
        """Train ``student`` from here on (after a structural change: a fresh optimizer, same schedule)."""
        memory = torch.channels_last if self.amp else torch.preserve_format
        self.student = student.to(self.device, memory_format=memory)
        self.module = self.student
        if self.dist.active:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.module = nn.parallel.DistributedDataParallel(self.student, device_ids=ids)
        groups = adamw_param_groups(self.student, self.recipe.weight_decay)
        self.optimizer = torch.optim.AdamW(groups, lr=self.recipe.lr)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)

    @torch.no_grad()
    def _recalibrated_teacher(self, teacher: nn.Module | None) -> nn.Module | None:
        """A copy of the teacher whose BatchNorm statistics are re-estimated on the images the student's are
        (the given model is left alone): a briefly trained model's running statistics lag its weights, and
        its soft targets with them (docs/finetune.md, small datasets)."""
        if (
            teacher is None
            or not self.recipe.kd_weight
            or not self.recipe.bn_images
            or not _has_batchnorm(teacher)
        ):
            return teacher
        from rmtdeploy.pruning.batchnorm import recalibrate_batchnorm

        teacher = copy.deepcopy(teacher)
        recalibrate_batchnorm(teacher, self._bn_batches(), max_batches=self._bn_batch_count())
        return teacher.eval()

    def _bn_batches(self):
        """The seeded training images (eval transform) that re-estimate BatchNorm statistics."""
        loader = epoch_loader(self.data.plain, batch_size=self.recipe.batch_size, seed=self.recipe.seed,
                              shuffle=True, workers=self.data.workers)  # fmt: skip
        return (b[0] for b in loader if b[0] is not None)

    def _bn_batch_count(self) -> int:
        return math.ceil(self.recipe.bn_images / self.recipe.batch_size)

    def _make_teacher_cache(self):
        if self.teacher is None or self.recipe.augment or self.recipe.kd_weight == 0:
            return None
        classes = _num_outputs(self.teacher)
        if len(self.data.train) * classes * 4 > TEACHER_CACHE_LIMIT_BYTES:
            return None
        return {
            "logits": torch.zeros(len(self.data.train), classes),
            "filled": torch.zeros(len(self.data.train), dtype=torch.bool),
        }

    # -- the loop ----------------------------------------------------------------------------------------

    def start(self) -> dict[str, Any]:
        """BatchNorm recalibration and the starting point's evaluation (epoch 0); returns its record."""
        from rmtdeploy.pruning.batchnorm import recalibrate_batchnorm

        before = self.evaluate()
        if self.recipe.bn_images and _has_batchnorm(self.student):
            self.reporter.status(f"re-estimating BatchNorm statistics on {self.recipe.bn_images} images")
            recalibrate_batchnorm(self.student, self._bn_batches(), max_batches=self._bn_batch_count())
        after = self.evaluate()
        # The teacher's own score on this val split: how far the student can be led (a report says it).
        # Forked RNG: a measurement must not change the training after it (a DataLoader draws its seed from
        # the global generator, which Swin's drop-path then reads).
        with torch.random.fork_rng(devices=[]):
            teacher = self.evaluate(self.teacher)[0] if self.teacher is not None else None
        record = {"event": "start", "epoch": self.epoch, "step": self.step, "val_top1_as_given": before[0],
                  "val_top1": after[0], "val_top5": after[1], "val_top1_teacher": teacher,
                  "bn_recalibrated": bool(self.recipe.bn_images)}  # fmt: skip
        self._log(record)
        self._keep_if_best(after[0], self.epoch)
        return record

    def train_until(self, goal: int) -> None:
        """Train until ``goal`` optimizer steps were taken in all (epoch ends evaluated on the way)."""
        goal = min(goal, self.total_steps)
        with self._stop_on_interrupt():
            while self.step < goal:
                self._train_epoch_part(goal)
                if self.batch >= self.steps_per_epoch:
                    self._end_epoch()
        self.sync_buffers()

    def _train_epoch_part(self, goal: int) -> None:
        loader = epoch_loader(
            self.data.train, batch_size=self.recipe.batch_size, seed=self.recipe.seed, shuffle=True,
            epoch=self.epoch, start_batch=self.batch, rank=self.dist.rank, world=self.dist.world,
            workers=self.data.workers,
        )  # fmt: skip
        self.reporter.epoch_started(self.epoch + 1, self.recipe.epochs, self.steps_per_epoch, self.batch)
        log_every = max(1, round(self.steps_per_epoch * LOG_EVERY_FRACTION))
        for images, labels, indices, skipped in loader:
            self.skipped.extend(skipped.tolist())
            if images is not None:
                self._train_batch(images, labels, indices)
            self.batch += 1
            self.step += 1
            if self.batch % log_every == 0:
                self._log_step()
            if self.recipe.checkpoint_every and self.step % self.recipe.checkpoint_every == 0:
                self.save()
            if self._should_stop():
                self.save()
                where = f"stopped at epoch {self.epoch + 1}, step {self.step}"
                raise StopRequested(where if self.saving else f"{where}, while pruning (no checkpoint yet)")
            if self.step >= goal:
                return

    def _train_batch(self, images: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor) -> None:
        memory = torch.channels_last if self.amp else torch.contiguous_format
        images = images.to(self.device, non_blocking=True, memory_format=memory)
        labels = labels.to(self.device, non_blocking=True)
        for group in self.optimizer.param_groups:
            group["lr"] = self.recipe.lr_at(self.step, self.total_steps)
        self.module.train()
        with torch.autocast(self.device.type, enabled=self.amp):
            targets = self._teacher_logits(images, indices)
            logits = self.module(images)
            loss = self._loss(logits.float(), labels, targets)
        if not torch.isfinite(loss):
            raise RmtdeployError(
                f"training diverged at step {self.step} (loss {loss.item()}); lower the learning rate",
                param="lr",
            )
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.recipe.clip_grad:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.student.parameters(), self.recipe.clip_grad)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        running = self._running
        running["loss"] += loss.item() * len(labels)
        running["correct"] += int((logits.argmax(-1) == labels).sum())
        running["seen"] += len(labels)
        self.reporter.step(running["loss"] / running["seen"], 100 * running["correct"] / running["seen"])

    def _loss(self, logits: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor | None) -> torch.Tensor:
        loss = logits.new_zeros(())
        if self.recipe.kd_weight and targets is not None:
            loss = loss + self.recipe.kd_weight * kd_loss(logits, targets.float(), self.recipe.temperature)
        if self.recipe.ce_weight:
            ce = F.cross_entropy(logits, labels, label_smoothing=self.recipe.label_smoothing)
            loss = loss + self.recipe.ce_weight * ce
        return loss

    @torch.no_grad()
    def _teacher_logits(self, images: torch.Tensor, indices: torch.Tensor) -> torch.Tensor | None:
        if self.teacher is None or not self.recipe.kd_weight:
            return None
        cache = self._teacher_cache
        if cache is None:
            return self.teacher(images)
        missing = ~cache["filled"][indices]
        if missing.any():
            cache["logits"][indices[missing]] = self.teacher(images[missing.to(images.device)]).float().cpu()
            cache["filled"][indices[missing]] = True
        return cache["logits"][indices].to(images.device)

    def _end_epoch(self) -> None:
        self.sync_buffers()
        top1, top5 = self.evaluate()
        running = self._running
        record = {
            "event": "epoch", "epoch": self.epoch + 1, "step": self.step,
            "train_loss": running["loss"] / max(1, running["seen"]),
            "train_top1": 100 * running["correct"] / max(1, running["seen"]),
            "val_top1": top1, "val_top5": top5, "skipped_images": len(self.skipped),
        }  # fmt: skip
        self._log(record)
        self._keep_if_best(top1, self.epoch + 1)
        self.reporter.epoch_ended(record)
        self.epoch, self.batch = self.epoch + 1, 0
        self._running = {"loss": 0.0, "correct": 0, "seen": 0}
        self.save()

    @torch.no_grad()
    def sync_buffers(self) -> None:
        """Rank 0's BatchNorm statistics on every rank (DDP keeps parameters equal; each rank's last forward
        updated its own running statistics)."""
        if self.dist.active:
            for buffer in self.student.buffers():
                torch.distributed.broadcast(buffer, src=0)

    @torch.no_grad()
    def evaluate(self, model: nn.Module | None = None) -> tuple[float, float]:
        """(top-1, top-5) in % of ``model`` (the student) on the validation split, computed by rank 0 and
        shared with every rank."""
        result = None
        if self.dist.is_main:
            result = evaluate_topk(model or self.student, self.data.val, batch_size=2 * self.recipe.batch_size,
                                   device=self.device, workers=self.data.workers)  # fmt: skip
        return self.dist.broadcast(result)

    # -- bookkeeping -------------------------------------------------------------------------------------

    def _keep_if_best(self, top1: float, epoch: int) -> None:
        if not self.tracking_best:
            return
        if self.best is None or top1 > self.best["val_top1"]:
            state = {k: v.detach().cpu().clone() for k, v in self.student.state_dict().items()}
            self.best = {"val_top1": top1, "epoch": epoch, "state": state}

    def _log_step(self) -> None:
        running = self._running
        if running["seen"]:
            self._log({"event": "step", "epoch": self.epoch + 1, "step": self.step,
                       "lr": self.recipe.lr_at(self.step - 1, self.total_steps),
                       "train_loss": running["loss"] / running["seen"],
                       "train_top1": 100 * running["correct"] / running["seen"]})  # fmt: skip

    def _log(self, record: dict[str, Any]) -> None:
        self.metrics.append(record)  # no clock times: identical runs write identical files
        if self.checkpoints is not None:
            self.checkpoints.append_metrics(record)

    def state_dict(self) -> dict[str, Any]:
        return {
            "fingerprint": self.fingerprint, "student": self.student.state_dict(),
            "optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict(),
            "position": {"step": self.step, "epoch": self.epoch, "batch": self.batch},
            "running": dict(self._running), "rng": rng_state(), "metrics_json": json.dumps(self.metrics),
            "skipped": list(self.skipped), "best": self.best, "extra_json": json.dumps(self.extra_state),
        }  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.student.load_state_dict(state["student"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.step, self.epoch, self.batch = (state["position"][k] for k in ("step", "epoch", "batch"))
        self._running = dict(state["running"])
        set_rng_state(state["rng"])
        self.metrics = json.loads(state["metrics_json"])
        self.skipped, self.best = list(state["skipped"]), state["best"]
        if self.checkpoints is not None:
            self.checkpoints.rewrite_metrics(self.metrics)

    def save(self) -> None:
        if self.checkpoints is not None and self.saving:
            self.checkpoints.save(self.state_dict())

    # -- Ctrl-C ------------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _stop_on_interrupt(self):
        """The first Ctrl-C asks for a stop after the current step; the second interrupts at once."""
        if not hasattr(signal, "SIGINT") or signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
            yield  # not the main thread, or someone else handles SIGINT
            return

        def ask(signum, frame):
            if self._stop:
                raise KeyboardInterrupt
            self._stop = True
            self.reporter.status("stopping after this step (Ctrl-C again to stop at once)")

        previous = signal.signal(signal.SIGINT, ask)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)

    def request_stop(self) -> None:
        """What Ctrl-C does (for callers and tests that stop a run from code)."""
        self._stop = True

    def _should_stop(self) -> bool:
        if not self.dist.active:
            return self._stop
        flag = torch.tensor([int(self._stop)])
        torch.distributed.all_reduce(flag)
        return bool(flag.item())


@torch.no_grad()
def evaluate_topk(model: nn.Module, dataset, *, batch_size: int, device: torch.device, workers: int = 0,
                  k: int = 5) -> tuple[float, float]:  # fmt: skip
    """(top-1, top-k) in % of ``model`` in eval mode over ``dataset``'s (image, label) items; images that
    fail to load are left out."""
    was_training = model.training
    model.eval()
    loader = epoch_loader(dataset, batch_size=batch_size, seed=0, shuffle=False, workers=workers)
    correct1 = correctk = total = 0
    for images, labels, _, _ in loader:
        if images is None:
            continue
        with torch.autocast(device.type, enabled=device.type == "cuda"):
            logits = model(images.to(device)).float().cpu()
        top = logits.topk(min(k, logits.shape[-1]), dim=-1).indices
        correct1 += int((top[:, 0] == labels).sum())
        correctk += int((top == labels[:, None]).any(-1).sum())
        total += len(labels)
    model.train(was_training)
    if total == 0:
        raise RmtdeployError("evaluation needs at least one readable validation image")
    return round(100.0 * correct1 / total, 3), round(100.0 * correctk / total, 3)


def _num_outputs(model: nn.Module) -> int:
    classes = getattr(model, "num_classes", None)
    if isinstance(classes, int) and classes > 0:
        return classes
    raise RmtdeployError(f"cannot tell how many classes {type(model).__name__} predicts")


def _has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def train_in_memory(student: nn.Module, teacher: nn.Module | None, data, *, recipe: FinetuneRecipe,
                    device: str = "cpu", keep: str = "best", reporter: Reporter | None = None) -> Trainer:  # fmt: skip
    """The stage's loop without folders (benchmarks, notebooks): BatchNorm recalibration, the start's
    evaluation, ``recipe.epochs`` epochs on ``data`` (a :class:`rmtdeploy.data.DataSource`, or its name
    or folder); the student ends with the ``keep`` weights ("best" or "last"), in eval mode. Returns the
    trainer: ``.metrics``, ``.best``, ``.student``."""
    from rmtdeploy.data import open_data
    from rmtdeploy.finetuning.distributed import resolve_device

    source = open_data(data)
    recipe = recipe.check()
    plain = source.dataset("train", student)
    train = source.dataset("train", student, train=True) if recipe.augment else plain
    target = resolve_device(device)
    if teacher is not None:
        teacher = teacher.to(target).eval()  # runs under no_grad; its parameters are left as given
    trainer = Trainer(student, teacher, recipe, TrainingData(train, plain, source.dataset("val", student)),
                      target, Distributed(), None, {}, reporter or Reporter())  # fmt: skip
    trainer.start()
    trainer.train_until(trainer.total_steps)
    if keep == "best":
        trainer.student.load_state_dict(trainer.best["state"])
    trainer.student.eval()
    return trainer
