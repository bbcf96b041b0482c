"""Non-finite gradient guard shared by LARS and THOR (graph functions, both execution modes).

One flag per step over all gradients: a step whose gradients hold a NaN or an Inf leaves the
weights and every optimizer state untouched (each optimizer gates its own writes on the flag)
and is recorded in two Parameters of the optimizer: ``nonfinite_steps`` (int32, number of such
steps so far) and ``nonfinite_param`` (int32, index into the optimizer's parameters of the first
non-finite gradient of the last such step, -1 before any). :class:`ms_optim.OptimizerMonitor`
reads them and warns; nothing reads them from the host otherwise (no per-step sync).
"""
import numpy as np

import mindspore as ms
from mindspore import Parameter, Tensor, ops
from mindspore.ops import composite as C

__all__ = ["add_nonfinite_state", "check_gradients"]

_sum = C.MultitypeFuncGraph("ms_optim_nonfinite_sum")


@_sum.register("Tensor")
def _sum_tensor(grad):
    """The float32 sum of `grad`: NaN or Inf exactly when an element is (or when the sum of
    finite elements overflows float32, :math:`|\\sum g| > 3.4\\cdot 10^{38}`).

    One ReduceSum per gradient; the test itself (``IsFinite``) then runs once on the stacked
    sums: on the CPU a fraction of ``IsFinite`` + ``ReduceAll`` per gradient, and three kernels
    fewer per gradient than testing each sum.
    """
    x32 = grad if grad.dtype == ms.float32 else ops.cast(grad, ms.float32)
    return ops.reduce_sum(x32)


@_sum.register("Bool", "Tensor")
def _sum_unless_known(known, grad):
    """0 where the caller checks the gradient itself (`known`), else as for one tensor."""
    if known:
        return _ZERO_F32
    return _sum_tensor(grad)


_ZERO_F32 = Tensor(0.0, ms.float32)


def add_nonfinite_state(opt, n_params):
    """Create the report Parameters and the index constant on optimizer `opt`."""
    opt.nonfinite_steps = Parameter(Tensor(np.zeros((1,), np.int32)), name="nonfinite_steps",
                                    requires_grad=False)
    opt.nonfinite_param = Parameter(Tensor(np.full((1,), -1, np.int32)), name="nonfinite_param",
                                    requires_grad=False)
    opt._nonfinite_index = Tensor(np.arange(n_params, dtype=np.int32))  # pylint: disable=protected-access
    opt._nonfinite_none = Tensor(np.array(n_params, np.int32))  # pylint: disable=protected-access


def check_gradients(opt, gradients, square_sums=None, known=None):
    """Return the bool scalar 'all gradients finite'; records a non-finite step on `opt`.

    The records (``nonfinite_steps`` += 1, ``nonfinite_param`` = first bad index) change only
    when some gradient is not finite. `square_sums` (optional): a float32 vector already
    computed by the caller, :math:`\sum g_i^2` where ``known[i]`` (0 elsewhere); those
    gradients are judged by it (NaN/Inf, or a float32 overflow of the sum of squares) and not
    read again. `known` ``None`` with `square_sums`: every gradient's sum is in it.
    """
    if square_sums is None:
        sums = ops.stack(opt.hyper_map(_sum, gradients))
    elif known is None:
        sums = square_sums
    else:  # each entry is 0 in one of the two vectors
        sums = ops.stack(opt.hyper_map(_sum, known, gradients)) + square_sums
    bad = ops.logical_not(ops.isfinite(sums))
    finite = ops.logical_not(bad.any())
    first = ops.where(bad, opt._nonfinite_index, opt._nonfinite_none).min()  # pylint: disable=protected-access
    first = ops.reshape(first, (1,))
    done = ops.assign_add(opt.nonfinite_steps, ops.reshape(1 - ops.cast(finite, ms.int32), (1,)))
    done = ops.depend(done, ops.assign(opt.nonfinite_param,
                                       ops.where(finite, opt.nonfinite_param, first)))
    return ops.depend(finite, done)
