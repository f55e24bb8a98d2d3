"""rmtdeploy: Random-Matrix-Theory guided structured pruning and deployment of timm vision models.

The package follows the pipeline a model flows through:
spectra → scores → pruning plan → pruned model → fine-tune → export → engine → benchmark → report.
"""

__version__ = "0.1.0"

__all__ = ["__version__", "load_pruned"]


def load_pruned(directory):
    """Rebuild a pruned model saved by ``rmtdeploy prune`` (``model.safetensors`` + ``plan.json``).

    Returns a :class:`rmtdeploy.pruning.PruneResult`; ``.model`` is the pruned timm model in eval mode.
    """
    from rmtdeploy.pruning import load_pruned as _load_pruned

    return _load_pruned(directory)
