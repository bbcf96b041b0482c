"""ms_optim: maintained, cross-backend LARS and THOR optimizers for MindSpore.

Public API (English and Chinese documentation for every name in ``__all__``):

- :class:`LARS`, :func:`lars_filter_for` -- layer-wise adaptive rate scaling around any optimizer.
- THOR (second-order, Kronecker-factored natural gradient): see ``ms_optim.thor``.
"""
__version__ = "0.1.0"

# --- LARS ---
from .lars import LARS, lars_filter_for

# --- THOR ---
from .thor import (Conv2dThor, ConvertModelUtils, ConvertNetUtils, DenseThor, EmbeddingLookupThor,
                   EmbeddingThor, ThorTrainOneStepCell, register_thor_layer, thor,
                   thor_damping_schedule, thor_lr_schedule)

# --- telemetry ---
from .callbacks import OptimizerMonitor

__all__ = ["LARS", "lars_filter_for"]
__all__ += ["thor", "DenseThor", "Conv2dThor", "EmbeddingThor", "EmbeddingLookupThor",
            "ConvertNetUtils", "ConvertModelUtils", "ThorTrainOneStepCell", "register_thor_layer",
            "thor_lr_schedule", "thor_damping_schedule"]
__all__ += ["OptimizerMonitor"]
