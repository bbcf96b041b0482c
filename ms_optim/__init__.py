"""ms_optim: maintained, cross-backend LARS and THOR optimizers for MindSpore.

Public API (English and Chinese documentation for every name in ``__all__``):

- :class:`LARS`, :func:`lars_filter_for` -- layer-wise adaptive rate scaling around any optimizer.
- THOR (second-order, Kronecker-factored natural gradient): see ``ms_optim.thor``.
"""
__version__ = "0.1.0"

from types import MappingProxyType as _MappingProxyType

# --- LARS ---
from .lars import LARS, lars_filter_for

# --- THOR ---
from .thor import (Conv2dThor, ConvertModelUtils, ConvertNetUtils, DenseThor, EmbeddingLookupThor,
                   EmbeddingThor, ThorTrainOneStepCell, register_thor_layer, thor,
                   thor_damping_schedule, thor_lr_schedule)

#: Recommended values of THOR's keyword-only controls, found by experiment
#: (``benchmarks/bench_thor_accuracy.py``; the evidence is in the THOR guide, "Controls and
#: recommended settings"): KAISA's KL clip :math:`\kappa = 3\cdot 10^{-3}` (``kl_clip``) and running
#: means of the Kronecker factors with :math:`\beta = 0.9` (``factor_decay``). Use it as
#: ``ms_optim.thor(net, lr, damping, momentum, ..., **ms_optim.THOR_RECOMMENDED)``; calls without
#: it keep the results of upstream ``nn.thor``. Read-only: ``dict(ms_optim.THOR_RECOMMENDED)``
#: gives a copy to change.
THOR_RECOMMENDED = _MappingProxyType({"kl_clip": 3e-3, "factor_decay": 0.9})

# --- telemetry ---
from .callbacks import OptimizerMonitor

__all__ = ["LARS", "lars_filter_for"]
__all__ += ["thor", "DenseThor", "Conv2dThor", "EmbeddingThor", "EmbeddingLookupThor",
            "ConvertNetUtils", "ConvertModelUtils", "ThorTrainOneStepCell", "register_thor_layer",
            "thor_lr_schedule", "thor_damping_schedule", "THOR_RECOMMENDED"]
__all__ += ["OptimizerMonitor"]
