"""Drop-in namespace for scripts written against ``mindspore.nn``.

``import ms_optim.nn as nn`` gives every public name of ``mindspore.nn`` unchanged, except that
``nn.LARS`` is :class:`ms_optim.LARS`, ``nn.thor`` is :func:`ms_optim.thor` and the THOR layers
(``nn.DenseThor``, ``nn.Conv2dThor``, ``nn.EmbeddingThor``, ``nn.EmbeddingLookupThor``) are
ms_optim's. A zoo script that does ``import mindspore.nn as nn`` and calls ``nn.LARS(...)`` or
``nn.thor(...)`` then runs with that one import changed (and ``ConvertModelUtils`` imported from
``ms_optim`` instead of ``mindspore.train``).

Examples:
    >>> import ms_optim
    >>> import ms_optim.nn as nn
    >>> nn.LARS is ms_optim.LARS and nn.thor is ms_optim.thor
    True
    >>> import mindspore
    >>> nn.Momentum is mindspore.nn.Momentum
    True
"""
# pylint: disable=wildcard-import,unused-wildcard-import
from mindspore.nn import *  # noqa: F401,F403
from mindspore.nn import __all__ as _MINDSPORE_NN_ALL

from .lars import LARS
from .thor import Conv2dThor, DenseThor, EmbeddingLookupThor, EmbeddingThor, thor

_OURS = ["LARS", "thor", "DenseThor", "Conv2dThor", "EmbeddingThor", "EmbeddingLookupThor"]
__all__ = [n for n in _MINDSPORE_NN_ALL if n not in _OURS] + _OURS
