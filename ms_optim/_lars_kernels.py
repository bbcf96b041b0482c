"""Kernel sets of LARS's fused paths, one per backend (THOR's are :mod:`ms_optim.thor._kernels`).

LARS computes the formula of :mod:`ms_optim.ops.trust_ratio` on every backend; a kernel set only
supplies the operators a fused path calls, through factory methods with the contracts below.
``LARS(..., kernels=...)`` takes one in place of the set its ``backend`` would pick: the tests run
the Ascend and GPU compositions on CPU with stand-ins of those contracts
(``tests/kernel_standins.py``), and a user can bring a kernel of their own. The portable path has
no kernel set (``mindspore.ops`` only).

* :class:`AscendLarsKernels` (``"ascend"``): ``square_sum_all()`` returns an operator
  ``(w, g) -> (sum w^2, sum g^2)`` (``SquareSumAll``); ``lars_update(epsilon, coefficient,
  use_clip)`` one ``(w, g, sum w^2, sum g^2, wd, lr) -> tau (g + wd w)`` (``LARSUpdate``).
* :class:`GpuLarsKernels` (``"gpu"``, around a plain ``nn.Momentum``): ``fused_momentum()``
  returns an operator ``(wd, scale, w, v, lr, g, mu)`` that sets
  :math:`v \\leftarrow \\mu v + (w\\,wd + g)\\,scale`, :math:`w \\leftarrow w - lr\\,v` in place
  (``FusedWeightScaleApplyMomentum``).
* :class:`CpuLarsKernels` (``"cpu"``): ``square_sums(n)`` and ``lars_momentum()``, the compiled
  operators of :mod:`ms_optim._cpu_kernels`.

Each default factory obtains its primitive only when called (:func:`ms_optim._backend.get_primitive`),
so building a set never needs the device.
"""
from . import _backend, _cpu_kernels

__all__ = ["LarsKernels", "AscendLarsKernels", "GpuLarsKernels", "CpuLarsKernels",
           "default_kernels", "check_kernels"]


class LarsKernels:
    """Base of the kernel sets; ``backend`` names the fused path a set serves."""

    backend = None


class AscendLarsKernels(LarsKernels):
    """``SquareSumAll`` + ``LARSUpdate``.

    Args:
        lars_update (Callable): ``lars_update(epsilon, hyperpara, use_clip)`` returns the
            operator. Default: the ``LARSUpdate`` primitive class.
        square_sum_all (Callable): ``square_sum_all()`` returns the operator. Default: the
            ``SquareSumAll`` primitive class.
    """

    backend = _backend.ASCEND
    primitives = ("LARSUpdate", "SquareSumAll")

    def __init__(self, lars_update=None, square_sum_all=None):
        self._lars_update = lars_update
        self._square_sum_all = square_sum_all

    def lars_update(self, epsilon, coefficient, use_clip):
        """The ``LARSUpdate`` operator for these attributes."""
        make = self._lars_update or _backend.get_primitive("LARSUpdate")
        return make(epsilon, coefficient, use_clip)

    def square_sum_all(self):
        """The ``SquareSumAll`` operator."""
        make = self._square_sum_all or _backend.get_primitive("SquareSumAll")
        return make()


class GpuLarsKernels(LarsKernels):
    """``FusedWeightScaleApplyMomentum`` (a wrapped plain ``nn.Momentum`` only).

    Args:
        fused_momentum (Callable): ``fused_momentum()`` returns the operator. Default: the
            ``FusedWeightScaleApplyMomentum`` primitive class.
    """

    backend = _backend.GPU
    primitives = ("FusedWeightScaleApplyMomentum",)

    def __init__(self, fused_momentum=None):
        self._fused_momentum = fused_momentum

    def fused_momentum(self):
        """The ``FusedWeightScaleApplyMomentum`` operator."""
        make = self._fused_momentum or _backend.get_primitive(self.primitives[0])
        return make()


class CpuLarsKernels(LarsKernels):
    """The package's compiled CPU operators (:mod:`ms_optim._cpu_kernels`)."""

    backend = _backend.CPU

    def square_sums(self, n_outputs):
        """One operator computing ``n_outputs`` sums of squares in float64."""
        return _cpu_kernels.square_sums_op(n_outputs)

    def lars_momentum(self):
        """The in-place LARS + momentum operator."""
        return _cpu_kernels.lars_momentum_op()


_DEFAULTS = {_backend.ASCEND: AscendLarsKernels, _backend.GPU: GpuLarsKernels,
             _backend.CPU: CpuLarsKernels}


def default_kernels(backend):
    """The kernel set of a resolved backend name (``None`` for ``"portable"``)."""
    cls = _DEFAULTS.get(backend)
    return None if cls is None else cls()


def check_kernels(kernels, backend, gpu_usable, float32):
    """The backend an injected kernel set runs, after checking that LARS can use it here.

    Args:
        kernels (LarsKernels): the set given to ``LARS(kernels=...)``.
        backend (str): the ``backend`` argument; ``"auto"`` or the set's own backend.
        gpu_usable (bool): the wrapped optimizer is a plain ``nn.Momentum`` (no Nesterov, no
            gradient centralization) over float32 parameters: the condition under which
            ``backend="auto"`` offers ``"gpu"``.
        float32 (bool): every parameter is float32.

    Raises:
        TypeError: If `kernels` is not a kernel set.
        ValueError: If `backend` names another backend, or the set cannot serve this optimizer.
    """
    if not isinstance(kernels, LarsKernels) or kernels.backend not in _DEFAULTS:
        raise TypeError("For 'LARS', the argument 'kernels' must be an AscendLarsKernels, "
                        f"GpuLarsKernels or CpuLarsKernels, but got {type(kernels).__name__}.")
    if backend not in (_backend.AUTO, kernels.backend):
        raise ValueError(f"For 'LARS', the argument 'kernels' serves backend "
                         f"'{kernels.backend}', but the argument 'backend' is '{backend}'.")
    if kernels.backend == _backend.GPU and not gpu_usable:
        raise ValueError("For 'LARS', the argument 'kernels' (GpuLarsKernels) needs a wrapped "
                         "plain nn.Momentum without Nesterov or gradient centralization, over "
                         "float32 parameters.")
    if kernels.backend == _backend.CPU and not float32:
        raise ValueError("For 'LARS', the argument 'kernels' (CpuLarsKernels) takes float32 "
                         "parameters only.")
    return kernels.backend
