"""The fine-tune stage: a pruned model earns its accuracy back by learning from its dense self.

* :func:`rmtdeploy.finetuning.stage.finetune` — the stage (``rmtdeploy finetune``): data streamed from a
  built-in set or an ImageFolder, distillation + cross-entropy, AdamW with warm-up and cosine, resumable
  checkpoints, DDP; its output folder is read by ``rmtdeploy.load_pruned`` like a pruned one.
* :func:`distill` — the short label-free loop the ``dynamic`` strategy runs between its pruning steps.
"""

from rmtdeploy.finetuning.distill import DistillRecord, distill, evaluate_top1, kd_loss, teacher_outputs

__all__ = ["DistillRecord", "distill", "evaluate_top1", "kd_loss", "teacher_outputs"]
