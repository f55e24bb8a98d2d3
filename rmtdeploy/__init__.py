"""rmtdeploy: Random-Matrix-Theory guided structured pruning and deployment of timm vision models.

The package follows the pipeline a model flows through:
spectra → scores → pruning plan → pruned model → fine-tune → export → engine → benchmark → report.
"""

__version__ = "0.1.0"
