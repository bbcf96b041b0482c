"""THOR: second-order (Kronecker-factored natural gradient) optimizer for MindSpore.

Public names (re-exported from :mod:`ms_optim`): :func:`thor`, the layers :class:`DenseThor`,
:class:`Conv2dThor`, :class:`EmbeddingThor`, :class:`EmbeddingLookupThor`, the conversion
utilities :class:`ConvertNetUtils` / :class:`ConvertModelUtils` (+ :data:`THOR_LAYER_MAP`,
:func:`register_thor_layer`), the train-step cell :class:`ThorTrainOneStepCell` and the recipe
schedules :func:`thor_lr_schedule` / :func:`thor_damping_schedule`.
"""
from .layers import Conv2dThor, DenseThor, EmbeddingLookupThor, EmbeddingThor
from .convert import ConvertNetUtils, THOR_LAYER_MAP, register_thor_layer
from .model import ConvertModelUtils, ThorModel, ThorTrainOneStepCell
from .optimizer import ThorOptimizer, thor
from .schedules import thor_damping_schedule, thor_lr_schedule

__all__ = ["thor", "ThorOptimizer", "DenseThor", "Conv2dThor", "EmbeddingThor",
           "EmbeddingLookupThor", "ConvertNetUtils", "ConvertModelUtils", "THOR_LAYER_MAP",
           "register_thor_layer", "ThorTrainOneStepCell", "ThorModel", "thor_lr_schedule",
           "thor_damping_schedule"]
