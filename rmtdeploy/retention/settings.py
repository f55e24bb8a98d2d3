"""What one accuracy-retention run measures: the data, the keeps, the criteria and what follows pruning."""

from __future__ import annotations

from dataclasses import dataclass

from rmtdeploy.pruning.table_allocation import DEFAULT_TRUST
from rmtdeploy.retention.criteria import CRITERIA


@dataclass(frozen=True)
class Settings:
    """The run's settings; every field is recorded in the results (``conditions.settings``)."""

    dataset: str = "mnist5k"
    image_size: int = 32
    keeps: tuple[float, ...] = (0.75, 0.5, 0.3)
    criteria: tuple[str, ...] = CRITERIA
    calibration_images: int = 256  # BN recalibration, Taylor / Hessian gradients (a seeded draw per seed)
    hessian_samples: int = 64  # per-sample gradients averaged into the Hessian diagonal
    distill_images: int = 1024  # the distillation set (a seeded draw of the training split)
    distill_steps: int = 32  # AdamW steps of batch 32: one pass over the distillation set
    distill_batch: int = 32
    distill_lr: float = 1e-4
    val_images: int | None = None  # None: the whole validation split
    round_to: int = 8
    epochs_scale: float = 1.0  # quick mode trains for a fraction of the recipe's epochs
    finetune: str = "distill"  # after pruning: the short distillation above, or "default" (FinetuneRecipe())
    finetune_epochs: int | None = None  # None: the default recipe's epochs
    # A folder of <family>.latency_table.json (benchmarks/latency_table.py --tables-out), read by "hybrid-table".
    latency_tables: str | None = None
    # The hybrid-table criteria's trust region around hybrid's own widths (prune_model's latency_table_trust).
    table_trust: float = DEFAULT_TRUST
    # A folder the hybrid and hybrid-table points (and each dense model) are exported to as ONNX, for a later
    # latency pass on an idle machine (benchmarks/accuracy_latency.py).
    export_onnx: str | None = None

    @property
    def after_key(self) -> str:
        """The point's column for top-1 after the distillation or fine-tune."""
        return "top1_distilled" if self.finetune == "distill" else "top1_finetuned"

    @property
    def after_name(self) -> str:
        return "distillation" if self.finetune == "distill" else "fine-tuning"
