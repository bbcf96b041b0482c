"""LARS: layer-wise adaptive rate scaling as a wrapper around any ``nn.Optimizer``.

Written from the formulas of You, Gitman & Ginsburg (2017), "Large Batch Training of
Convolutional Networks" (arXiv:1708.03888), keeping the signature, defaults and documented
exceptions of the deprecated ``mindspore.nn.LARS``.
"""
import numpy as np

import mindspore as ms
from mindspore import Parameter, Tensor, nn, ops
from mindspore.ops import composite as C

from . import _backend, _cpu_kernels, _lars_kernels
from ._nonfinite import add_nonfinite_state, check_gradients
from ._validation import (check_bool, check_callable, check_float, check_non_negative)
from .ops.trust_ratio import apply_scales, lars_scales, square_sum

__all__ = ["LARS", "lars_filter_for"]

_NORM_CELLS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.LayerNorm, nn.GroupNorm,
               nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)


class _UpstreamDefaultFilter:
    """The default ``lars_filter`` of ``mindspore.nn.LARS``; shown (``help``, ``inspect``) as the
    lambda upstream writes."""

    source_text = "lambda x: 'LayerNorm' not in x.name and 'bias' not in x.name"

    def __call__(self, x):
        return 'LayerNorm' not in x.name and 'bias' not in x.name

    def __repr__(self):
        return self.source_text


_upstream_default_filter = _UpstreamDefaultFilter()


# --------------------------------------------------------------------------------------------
# Kernels. Both realise ops.trust_ratio.lars_gradient; the backend only decides which runs.
# Portable (every device, both modes): per parameter one multiply-reduce for sum(w^2) and one for
# sum(g^2); the trust ratios of all layers in one vectorised ops.trust_ratio.lars_scales call;
# then per parameter one fused g' = a*g + b*w (loss scale and weight decay folded into a, b).
# --------------------------------------------------------------------------------------------
_square_sum = C.MultitypeFuncGraph("ms_optim_square_sum")


@_square_sum.register("Bool", "Tensor")
def _square_sum_tensor(adapt, x):
    # Excluded layers get 0, which lars_scales maps to tau = 1 (its zero-norm guard).
    return square_sum(x) if adapt else _ZERO


_ZERO = Tensor(0.0, ms.float32)

_apply = C.MultitypeFuncGraph("ms_optim_apply_lars_scales")


@_apply.register("Bool", "Tensor", "Tensor", "Bool", "Tensor", "Tensor")
def _apply_tensor(scale_gradient, a, b, decay, weight, gradient):
    return apply_scales(a, b, weight, gradient, scale_gradient, decay)


_to_f32_scalar = C.MultitypeFuncGraph("ms_optim_to_f32_scalar")


@_to_f32_scalar.register("Tensor")
def _to_f32_scalar_tensor(x):
    return ops.reshape(ops.cast(x, ms.float32), ())


_fused_lars = C.MultitypeFuncGraph("ms_optim_fused_lars")


@_fused_lars.register("Function", "Function", "Number", "Bool", "Tensor", "Tensor", "Tensor",
                      "Tensor", "Bool")
def _fused_lars_tensor(lars_update, square_sum_all, epsilon, use_clip, lr, weight_decay, weight,
                       gradient, adapt):
    """Ascend: SquareSumAll + LARSUpdate, with the zero-norm guard of ``lars_trust_ratio``."""
    decayed = gradient + ops.cast(weight_decay, ops.dtype(gradient)) * weight
    if not adapt:
        return decayed
    w_sq, g_sq = square_sum_all(weight, gradient)
    wd = ops.reshape(ops.cast(weight_decay, ms.float32), (1,))
    lr32 = ops.reshape(ops.cast(lr, ms.float32), (1,))
    fused = lars_update(weight, gradient, w_sq, g_sq, wd, lr32)
    # The kernel has no guard: where the trust ratio is undefined it is 1 (see lars_trust_ratio).
    # denom > 0 <=> not (||g|| = 0 and lambda*||w|| + eps = 0); ||w|| > 0 <=> w_sq > 0.
    safe = ops.logical_and(w_sq > 0, ops.sqrt(g_sq) + wd * ops.sqrt(w_sq) + epsilon > 0)
    if use_clip:
        safe = ops.logical_and(safe, lr32 > 0)
    return ops.select(ops.broadcast_to(safe, ops.shape(gradient)), fused, decayed)


_gpu_momentum_update = C.MultitypeFuncGraph("ms_optim_gpu_momentum_update")


@_gpu_momentum_update.register("Function", "Tensor", "Tensor", "Tensor", "Tensor", "Tensor",
                               "Tensor", "Tensor")
def _gpu_momentum_update_tensor(fused, momentum, weight_decay, scale, lr, weight, moment, gradient):
    """GPU: ``FusedWeightScaleApplyMomentum`` for one parameter (see ``LARS._gpu_step``)."""
    return ops.depend(True, fused(weight_decay, scale, weight, moment, lr, gradient, momentum))


_scale_grad = C.MultitypeFuncGraph("ms_optim_scale_grad")


@_scale_grad.register("Tensor", "Tensor")
def _scale_grad_tensor(scale, grad):
    return grad * ops.cast(scale, ops.dtype(grad))


def _momentum_fusable(optimizer):
    """Whether a fused LARS + momentum kernel can replace `optimizer`'s update: ``nn.Momentum``
    itself (a subclass may change construct), no Nesterov (CPU ApplyMomentum ignores it and the
    fused GPU kernel has none), no gradient centralization (it would act on g' between LARS and
    the update)."""
    return (type(optimizer) is nn.Momentum  # pylint: disable=unidiomatic-typecheck
            and not optimizer.use_nesterov
            and not any(getattr(optimizer, "grad_centralization_flags", ())))


def _cpu_unusable(params):
    """Why the "cpu" backend cannot run LARS over `params` (``None`` if it can)."""
    odd = [p.name for p in params if p.dtype != ms.float32]
    if odd:
        return f"the kernels take float32 parameters, not {odd[0]!r}"
    return _cpu_kernels.unavailable_reason()


# --------------------------------------------------------------------------------------------
# Role-based filter
# --------------------------------------------------------------------------------------------
class _LarsFilter:
    """Predicate returned by :func:`lars_filter_for` (see there)."""

    def __init__(self, rows):
        self._rows = rows  # (name, owner cell type, role, adapted)
        self._excluded_ids = {pid for pid, row in rows.items() if not row[3]}
        self._excluded_names = {row[0] for row in rows.values() if not row[3]}

    def __call__(self, param):
        return id(param) not in self._excluded_ids and param.name not in self._excluded_names

    def unknown(self, params):
        """Names of ``params`` that the network this filter was built for does not hold."""
        names = {row[0] for row in self._rows.values()}
        return [p.name for p in params if id(p) not in self._rows and p.name not in names]

    def table(self):
        """Return a text table: parameter, owning cell, role, LARS-adapted."""
        lines = [("parameter", "cell", "role", "LARS")]
        lines += [(n, c, r, "yes" if a else "no") for n, c, r, a in self._rows.values()]
        return _format_rows(lines)


def _format_rows(lines):
    widths = [max(len(str(row[i])) for row in lines) for i in range(len(lines[0]))]
    out = []
    for k, row in enumerate(lines):
        out.append("  ".join(str(v).ljust(w) for v, w in zip(row, widths)).rstrip())
        if k == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def lars_filter_for(net, verbose=False):
    r"""
    Build a `lars_filter` that excludes parameters by the role of the cell owning them.

    Every trainable parameter of `net` is LARS-adapted except the scale and shift of
    normalisation layers (``BatchNorm1d/2d/3d``, ``LayerNorm``, ``GroupNorm``,
    ``InstanceNorm1d/2d/3d``) and every bias (a parameter held by its cell under the attribute
    name ``bias``). Unlike the upstream default, which tests for the substrings ``'LayerNorm'``
    and ``'bias'`` in parameter names and therefore adapts BatchNorm ``gamma``/``beta``, the
    decision does not depend on how parameters are named.

    Note:
        Call it on the network whose parameters the optimizer holds, after the network is
        fully built. The predicate recognises parameters by identity and by name.

    Args:
        net (Cell): the network.
        verbose (bool): print the table of every trainable parameter (name, owning cell,
            role, LARS-adapted). Default: ``False`` .

    Returns:
        Callable[[Parameter], bool], ``True`` for parameters that LARS adapts. Its method
        ``table()`` returns the table as a string.

    Raises:
        TypeError: If `net` is not a Cell.
        TypeError: If `verbose` is not a bool.

    Supported Platforms:
        ``Ascend`` ``GPU`` ``CPU``

    Examples:
        >>> from mindspore import nn
        >>> import ms_optim
        >>> net = nn.SequentialCell([nn.Dense(4, 8), nn.BatchNorm1d(8), nn.Dense(8, 2)])
        >>> keep = ms_optim.lars_filter_for(net)
        >>> print([p.name for p in net.trainable_params() if keep(p)])
        ['0.weight', '2.weight']
    """
    if not isinstance(net, nn.Cell):
        raise TypeError(f"For 'lars_filter_for', the argument 'net' must be Cell, "
                        f"but got {type(net).__name__}.")
    check_bool("lars_filter_for", "verbose", verbose)
    trainable = {id(p) for p in net.trainable_params()}
    rows = {}
    for _, cell in net.cells_and_names():
        for attr, param in cell._params.items():  # pylint: disable=protected-access
            if param is None or id(param) not in trainable or id(param) in rows:
                continue
            if isinstance(cell, _NORM_CELLS):
                role, adapt = "norm scale/shift", False
            elif attr == "bias":
                role, adapt = "bias", False
            else:
                role, adapt = attr, True
            rows[id(param)] = (param.name, type(cell).__name__, role, adapt)
    flt = _LarsFilter(rows)
    if verbose:
        print(flt.table())
    return flt


# --------------------------------------------------------------------------------------------
# The optimizer
# --------------------------------------------------------------------------------------------
class LARS(nn.Optimizer):
    r"""
    Layer-wise Adaptive Rate Scaling: rescales each layer's gradient by a trust ratio, then
    hands it to the wrapped optimizer.

    Reference: `You, Gitman, Ginsburg. Large Batch Training of Convolutional Networks (2017)
    <https://arxiv.org/abs/1708.03888>`_.

    For every parameter :math:`w` of the wrapped optimizer, with gradient :math:`g` (loss scale
    removed) and the wrapped optimizer's weight decay :math:`\lambda` for it:

    .. math::

        \begin{aligned}
            \tau &= \frac{\eta\,\|w\|_2}{\|g\|_2 + \lambda\|w\|_2 + \epsilon}
                \quad \text{without use_clip},\\[1ex]
            \tau &= \min\!\Big(\max\!\Big(\frac{\eta\,\|w\|_2}
                {(\|g\|_2 + \lambda\|w\|_2 + \epsilon)\,\gamma_t},\,0\Big),\,1\Big)
                \quad \text{with use_clip},\\[1ex]
            \tau &= 1 \quad \text{if } \|w\|_2 = 0, \text{ a denominator is } 0
                \text{ or (use_clip) } \gamma_t = 0,\\[1ex]
            g' &= \tau\,(g + \lambda w) \quad \text{if lars_filter}(w),
                \qquad g' = g + \lambda w \quad \text{otherwise;}
        \end{aligned}

    then the wrapped optimizer applies its own update rule to :math:`g'`.
    :math:`\eta` is `coefficient`, :math:`\epsilon` is `epsilon`, :math:`\gamma_t` the wrapped
    optimizer's learning rate for :math:`w` at the current step (static, dynamic or per group),
    :math:`\lambda` its weight decay for :math:`w` (0 where its decay filter excludes
    :math:`w`; per group; the current value of a dynamic weight decay). For example
    ``LARS(Momentum(params, lr, mu))`` computes :math:`v \leftarrow \mu v + g'`,
    :math:`w \leftarrow w - \gamma_t v`.

    Note:
        - The wrapped optimizer's own weight decay and loss-scale division are switched off
          (LARS applies both, once); `optimizer` must not be used on its own afterwards.
        - Differences from the deprecated ``mindspore.nn.LARS``, on purpose: (1) the zero-norm
          guard :math:`\tau = 1` (upstream returns 0 or NaN, so zero-initialised layers never
          learned); (2) parameters excluded by `lars_filter` keep their weight decay (upstream
          silently dropped it); (3) ``global_step`` advances exactly once per step (upstream
          advanced it twice with a dynamic weight decay). Elsewhere the result equals the fused
          ``LARSUpdate`` kernel.
        - The default `lars_filter` is the upstream one, which adapts BatchNorm ``gamma`` and
          ``beta``; :func:`ms_optim.lars_filter_for` excludes norm layers and biases by role.
        - Backend: on Ascend in GRAPH mode the fused ``SquareSumAll`` + ``LARSUpdate`` kernels are
          used when this MindSpore still has them. On the CPU device (``"cpu"``, GRAPH and
          PYNATIVE) the package's C++ kernels, compiled with ``g++`` on first use (see
          :ref:`cpu-kernels`), compute every :math:`\sum w^2`, :math:`\sum g^2` in one call
          (float64 accumulation) and, when `optimizer` is a plain ``nn.Momentum`` without
          Nesterov or gradient centralization, form :math:`g'` and the momentum update
          :math:`v \leftarrow \mu v + g'`, :math:`w \leftarrow w - \gamma_t v` in one
          in-place pass instead of calling it. On a GPU device in GRAPH mode, around such an
          ``nn.Momentum``, MindSpore's ``FusedWeightScaleApplyMomentum`` (``"gpu"``) replaces
          the rescale and ``ApplyMomentum``. Everywhere else, and where no compiler is
          found, the portable implementation built from ``mindspore.ops``. All compute the
          formula above. The portable and CPU paths keep the last step's :math:`\tau` of the
          adapted parameters (in their order) in the attribute ``lars_trust`` (a Parameter
          outside the checkpoint), which :class:`ms_optim.OptimizerMonitor` reports.
        - Non-finite gradients: a step in which any gradient holds a NaN or an Inf does not
          call the wrapped optimizer, so weights, its state (moments, beta powers, ...) and
          ``global_step`` stay bit-identical (the same rule as a loss-scale cell's overflow
          skip); LARS counts it in the Parameter ``nonfinite_steps`` (int32) and stores the
          index (into the optimizer's parameters) of the first non-finite gradient in
          ``nonfinite_param`` (-1 before any). Nothing reads them on the host by itself (no
          per-step sync): :class:`ms_optim.OptimizerMonitor` warns, naming the step and the
          parameter; without it, read the counter. Finite steps are unchanged bit for bit.
          The test reuses the float32 :math:`\|g\|^2` of the adapted parameters (one float32
          sum per other parameter; on the ``"cpu"`` backend the kernel's sums of squares of
          all parameters): a finite gradient whose sum of squares overflows float32
          (elements beyond about :math:`10^{19}`) counts as non-finite.
          To recover from overflows by rescaling, train with a ``DynamicLossScaleManager`` (or
          ``FixedLossScaleManager(drop_overflow_update=True)``). On the CPU backend MindSpore 2.10 has no overflow
          kernels: ``Model`` accepts only ``FixedLossScaleManager(drop_overflow_update=False)``,
          and a ``nn.TrainOneStepWithLossScaleCell`` needs a portable ``get_overflow_status``
          (any non-finite gradient element), as in the package's tests.

    Args:
        optimizer (Optimizer): the optimizer to wrap (``nn.Momentum``, ``nn.SGD``, ``nn.Adam``,
            ``nn.AdamWeightDecay``, ... with or without parameter groups).
        epsilon (float): :math:`\epsilon`, added to the denominator. Default: ``1e-05`` .
        coefficient (float): trust coefficient :math:`\eta`. Default: ``0.001`` .
        use_clip (bool): clip the ratio as :math:`\min(\max(\tau/\gamma_t, 0), 1)`.
            Default: ``False`` .
        lars_filter (Callable[[Parameter], bool]): which parameters are LARS-adapted.
            Default: ``lambda x: 'LayerNorm' not in x.name and 'bias' not in x.name`` .
        backend (str): keyword-only; ``"auto"``, ``"ascend"``, ``"cpu"``, ``"gpu"`` or
            ``"portable"``.
            Default: ``"auto"`` .
        kernels (object): keyword-only; the kernel set of a fused path (an
            ``AscendLarsKernels``, ``GpuLarsKernels`` or ``CpuLarsKernels`` of the module
            ``ms_optim._lars_kernels``, whose docstring gives each operator's contract), used
            instead of the one `backend` picks and without its device checks: for running a
            fused path with operators of one's own (the package's tests run the Ascend and GPU
            paths on CPU this way). ``None``: the set of the resolved backend. Default: ``None`` .

    Inputs:
        - **gradients** (tuple[Tensor]) - The gradients of the wrapped optimizer's parameters,
          in the same order and shapes.

    Outputs:
        Tensor, a bool scalar: True when the step was applied (all gradients finite).

    Raises:
        TypeError: If `optimizer` is not an ``nn.Optimizer`` (or is a LARS).
        TypeError: If `epsilon` or `coefficient` is not a float.
        TypeError: If `use_clip` is not a bool.
        TypeError: If `lars_filter` is not callable, or fails when called with a Parameter.
        ValueError: If `epsilon` or `coefficient` is negative (or not finite).
        ValueError: If `lars_filter` comes from :func:`lars_filter_for` of another network.
        ValueError: If `use_clip` is True and the wrapped optimizer has both group learning
            rates and a dynamic learning rate.
        ValueError: If `backend` is not one of the five names, or ``"ascend"``, ``"cpu"`` or
            ``"gpu"`` cannot be used.
        TypeError: If `kernels` is not ``None`` or a kernel set.
        ValueError: If `kernels` serves another backend than a `backend` other than ``"auto"``,
            or cannot serve `optimizer` (the GPU set: a plain ``nn.Momentum`` only; the GPU and
            CPU sets: float32 parameters only).

    Supported Platforms:
        ``Ascend`` ``GPU`` ``CPU``

    Examples:
        >>> import numpy as np
        >>> import mindspore as ms
        >>> from mindspore import nn
        >>> import ms_optim
        >>> net = nn.Dense(3, 2)
        >>> opt = nn.Momentum(net.trainable_params(), learning_rate=0.1, momentum=0.9)
        >>> lars = ms_optim.LARS(opt, epsilon=1e-08, coefficient=0.02,
        ...                      lars_filter=ms_optim.lars_filter_for(net))
        >>> train = nn.TrainOneStepCell(nn.WithLossCell(net, nn.MSELoss()), lars)
        >>> x, y = ms.Tensor(np.ones((4, 3), np.float32)), ms.Tensor(np.zeros((4, 2), np.float32))
        >>> losses = [float(train(x, y)) for _ in range(3)]
        >>> print(losses[2] < losses[0], int(lars.global_step.asnumpy()[0]))
        True 3
    """

    def __init__(self, optimizer, epsilon=1e-05, coefficient=0.001, use_clip=False,
                 lars_filter=_upstream_default_filter, *, backend="auto", kernels=None):
        # ---- validate everything before touching anything ----
        if not isinstance(optimizer, nn.Optimizer):
            raise TypeError(f"For 'LARS', the argument 'optimizer' must be a mindspore.nn.Optimizer, "
                            f"but got {type(optimizer).__name__}.")
        if isinstance(optimizer, LARS):
            raise TypeError("For 'LARS', the argument 'optimizer' must not itself be a LARS.")
        check_float("LARS", "epsilon", epsilon)
        check_float("LARS", "coefficient", coefficient)
        check_bool("LARS", "use_clip", use_clip)
        check_callable("LARS", "lars_filter", lars_filter)
        check_non_negative("LARS", "epsilon", epsilon)
        check_non_negative("LARS", "coefficient", coefficient)
        if use_clip and optimizer.is_group_lr and optimizer.dynamic_lr:
            raise ValueError("For 'LARS', if the argument 'use_clip' is True, the wrapped optimizer "
                             "cannot have both group learning rates and a dynamic learning rate.")
        params = tuple(optimizer.parameters)
        if isinstance(lars_filter, _LarsFilter) and lars_filter.unknown(params):
            unknown = lars_filter.unknown(params)
            raise ValueError("For 'LARS', the argument 'lars_filter' was built by lars_filter_for "
                             "for another network: the optimizer's parameters "
                             f"{unknown[:5]}{' ...' if len(unknown) > 5 else ''} are not in it. "
                             "Call lars_filter_for on the network whose parameters the optimizer "
                             "holds, after the network is fully built.")
        try:
            lars_flags = tuple(bool(lars_filter(p)) for p in params)
        except TypeError as err:
            raise TypeError("For 'LARS', the argument 'lars_filter' must be callable as "
                            f"lars_filter(param) -> bool, but calling it failed: {err}") from err
        float32 = all(p.dtype == ms.float32 for p in params)
        gpu_usable = _momentum_fusable(optimizer) and float32
        if kernels is None:
            self.backend = _backend.resolve_backend(
                backend, _lars_kernels.AscendLarsKernels.primitives, "LARS",
                cpu_kernels=lambda: _cpu_unusable(params),
                gpu_primitives=_lars_kernels.GpuLarsKernels.primitives if gpu_usable else None)
            kernels = _lars_kernels.default_kernels(self.backend)
        else:  # the caller vouches for the device: only what LARS itself needs is checked
            self.backend = _lars_kernels.check_kernels(kernels, backend, gpu_usable, float32)

        # ---- build ----
        super().__init__(0.0, list(params))
        self.opt = optimizer
        self.epsilon = epsilon
        self.coefficient = coefficient
        self.use_clip = use_clip
        self.lars_flag = lars_flags
        add_nonfinite_state(self, len(params))
        # Telemetry: the last step's trust ratios of the adapted parameters (portable path; the
        # fused Ascend kernel does not return them), read by ms_optim.OptimizerMonitor. Held
        # unregistered like THOR's statistics: not a Parameter of the cell, not checkpointed.
        adapted = [i for i, f in enumerate(lars_flags) if f]
        self._adapted_idx = Tensor(np.array(adapted, np.int32)) if adapted else None
        if adapted and self.backend != _backend.ASCEND:  # portable and cpu
            object.__setattr__(self, "lars_trust", Parameter(
                Tensor(np.ones(len(adapted), np.float32)), name="lars_trust", requires_grad=False))
        # One step counter, one learning rate: both are the wrapped optimizer's objects.
        self.global_step = optimizer.global_step
        delattr(self, "learning_rate")  # the base class's placeholder; may become a Cell below
        self.learning_rate = optimizer.learning_rate
        self.dynamic_lr = optimizer.dynamic_lr
        self.is_group = optimizer.is_group
        self.is_group_lr = optimizer.is_group_lr
        # Weight decay as the user configured it (stored multiplied by the loss scale upstream).
        self.weight_decay = optimizer.weight_decay
        self.dynamic_weight_decay = optimizer.dynamic_weight_decay
        self.dynamic_decay_flags = optimizer.dynamic_decay_flags
        self.decay_flags = tuple(bool(f) for f in optimizer.decay_flags)
        self.exec_weight_decay = optimizer.exec_weight_decay
        self.loss_scale = optimizer.loss_scale
        self.reciprocal_scale = Tensor(1.0 / optimizer.loss_scale, ms.float32)
        self.need_scale = optimizer.loss_scale != 1.0
        # The kernel set (ms_optim._lars_kernels; None on the portable path), kept unregistered.
        object.__setattr__(self, "kernels", kernels)
        if self.backend == _backend.ASCEND:
            self._lars_update = kernels.lars_update(epsilon, coefficient, use_clip)
            self._square_sum_all = kernels.square_sum_all()
        if self.backend == _backend.GPU:  # offered only for a fusable nn.Momentum
            self._gpu_momentum = kernels.fused_momentum()
        if self.backend == _backend.CPU:
            self._square_sums = kernels.square_sums(2 * len(params))
            self._adapt_mask = Tensor(np.array(lars_flags, np.bool_))
            self._fused_momentum = _momentum_fusable(optimizer)
            if self._fused_momentum:
                self._lars_momentum = kernels.lars_momentum()
        # What the portable graph is specialised on, known when it is built: which parameters
        # are decayed (b*w is left out elsewhere) and which need a*g (adapted or loss-scaled).
        self._decays = tuple(bool(self.exec_weight_decay and f) for f in self.decay_flags)
        self._decay_mask = Tensor(np.array(self._decays, np.float32))
        self._scales_grad = tuple(self.need_scale or f for f in lars_flags)

        # Every Parameter of the wrapped optimizer besides the weights (moments, step counter,
        # learning rate, beta powers, ...). The portable and Ascend paths call the optimizer in a
        # graph branch (the non-finite skip); MindSpore rebinds a Parameter replaced by set_data
        # (load_param_into_net) after compilation only where the top graph reads it, so the
        # construct reads them there (no copy; tests/test_lars_training.py, load after compile).
        weight_ids = {id(p) for p in params}
        # A plain tuple, not registered (the Parameters belong to the optimizer's cells already).
        object.__setattr__(self, "_branch_state", tuple(
            p for p in optimizer.get_parameters() if id(p) not in weight_ids))
        # The wrapped optimizer keeps only its update rule.
        optimizer.exec_weight_decay = False
        optimizer.decay_flags = tuple(False for _ in optimizer.decay_flags)
        optimizer.dynamic_weight_decay = False
        if optimizer.is_group:
            optimizer.dynamic_decay_flags = tuple(False for _ in optimizer.dynamic_decay_flags)
        else:
            optimizer.dynamic_decay_flags = False
        optimizer.need_scale = False
        optimizer.reciprocal_scale = Tensor(1.0, ms.float32)

    def _current_lr(self):
        """The wrapped optimizer's learning rate(s) at this step (per parameter if grouped)."""
        if self.use_clip:
            return self.get_lr()
        return ops.zeros((), ms.float32)  # unused without clipping

    def _current_weight_decay(self):
        """Raw weight decay per parameter: 0 where not decayed, loss scale divided out."""
        if not self.exec_weight_decay:
            return tuple(ops.zeros((), ms.float32) for _ in self.decay_flags)
        wd = self.get_weight_decay()
        if self.is_group:
            return tuple(ops.cast(w, ms.float32) / self.loss_scale if f else ops.zeros((), ms.float32)
                         for w, f in zip(wd, self.decay_flags))
        return tuple(ops.cast(wd, ms.float32) / self.loss_scale if f else ops.zeros((), ms.float32)
                     for f in self.decay_flags)

    def _weight_decay_vector(self):
        """lambda per parameter as one float32 vector: 0 where not decayed, loss scale divided out."""
        if not self.exec_weight_decay:
            return self._decay_mask  # all zeros
        wd = self.get_weight_decay()
        if self.is_group:
            wd = ops.stack(self.hyper_map(_to_f32_scalar, wd))
        else:
            wd = ops.reshape(ops.cast(wd, ms.float32), ())
        return wd / self.loss_scale * self._decay_mask

    def _clip_lr(self):
        """The learning rate(s) the clipped ratio divides by (a vector with group lr)."""
        if not self.use_clip:
            return None
        lr = self.get_lr()
        if self.is_group_lr:
            return ops.stack(self.hyper_map(_to_f32_scalar, lr))
        return ops.reshape(ops.cast(lr, ms.float32), ())

    # One graph, compiled once, in PYNATIVE mode too: op by op, the per-parameter square sums and
    # rescales of ResNet-50 made the LARS step ~38x the Momentum step (now ~2x; inside a GRAPH-mode
    # construct the decorator changes nothing). benchmarks/bench_lars_step.py --modes PYNATIVE.
    @ms.jit
    def _portable_checked(self, gradients):
        """(all gradients finite, the LARS gradients); the adapted gradients are judged by their
        sum of squares, which the trust ratios need anyway."""
        finite, a, b = self._portable_scales(gradients)
        return finite, self._apply_scales(a, b, gradients)

    def _portable_scales(self, gradients):
        """(all gradients finite, a, b) from per-parameter square sums in mindspore.ops."""
        g_sq = ops.stack(self.hyper_map(_square_sum, self.lars_flag, gradients))
        finite = check_gradients(self, gradients, g_sq, self.lars_flag)
        w_sq = ops.stack(self.hyper_map(_square_sum, self.lars_flag, self._parameters))
        a, b, trust = self._trust_scales(w_sq, g_sq)
        return self._record_trust(finite, trust), a, b

    def _gpu_step(self, gradients):
        """The "gpu" backend (a wrapped ``nn.Momentum``): portable trust ratios, then one
        ``FusedWeightScaleApplyMomentum`` per parameter instead of the rescale and
        ``ApplyMomentum``. Its contract (MindSpore's CUDA kernel):
        :math:`v \\leftarrow \\mu v + (w\\,wd + g)\\,scale`, :math:`w \\leftarrow w - \\gamma v`;
        with :math:`scale = a_i = \\tau_i s` and :math:`wd = \\lambda_i / s` it is
        :math:`v \\leftarrow \\mu v + g'`."""
        finite, a, _ = self._portable_scales(gradients)
        applied = ops.depend(finite, self._branch_state)
        if finite:
            lr = self._lr_vector(self.opt.get_lr(), a)
            step = ops.assign_add(self.opt.global_step, self.opt.global_step_increase_tensor)
            wd = self._weight_decay_vector()
            if self.need_scale:
                wd = wd * self.loss_scale  # lambda / s
            done = self.hyper_map(ops.partial(_gpu_momentum_update, self._gpu_momentum,
                                              self.opt.momentum),
                                  ops.unstack(wd), ops.unstack(a), ops.unstack(lr),
                                  self._parameters, self.opt.moments, gradients)
            applied = ops.depend(ops.depend(applied, done), step)
        return applied

    def _lr_vector(self, lr, like):
        """The wrapped optimizer's learning rate per parameter as one float32 vector."""
        if self.is_group_lr:
            return ops.stack(self.hyper_map(_to_f32_scalar, lr))
        return ops.broadcast_to(ops.reshape(ops.cast(lr, ms.float32), (1,)), ops.shape(like))

    @ms.jit
    def _cpu_step(self, gradients):
        """The "cpu" backend: every sum of squares in one compiled kernel call; then, for a
        wrapped ``nn.Momentum``, the LARS rescale and the momentum update of every parameter in
        one in-place kernel pass (else the portable rescale and the wrapped optimizer).
        Returns whether the step was applied."""
        squares = self._square_sums(*self._parameters, *gradients)
        n = len(self._parameters)
        g_all = squares[n:]
        finite = check_gradients(self, gradients, g_all)
        zero = ops.zeros_like(g_all)
        w_sq = ops.select(self._adapt_mask, squares[:n], zero)
        g_sq = ops.select(self._adapt_mask, g_all, zero)
        a, b, trust = self._trust_scales(w_sq, g_sq)
        finite = self._record_trust(finite, trust)
        if self._fused_momentum:
            # No graph branch: the kernel skips a non-finite step itself (see the kernel source).
            return ops.depend(finite, self._momentum_step(finite, a, b, gradients))
        applied = ops.depend(finite, self._branch_state)
        if finite:
            applied = ops.depend(applied, self.opt(self._apply_scales(a, b, gradients)))
        return applied

    def _momentum_step(self, finite, a, b, gradients):
        """What ``nn.Momentum.construct`` does (learning rate, step counter), with the LARS
        gradient :math:`a_i g_i + b_i w_i` formed inside the kernel's pass; a step that is not
        `finite` changes nothing (the counter included)."""
        lr = self._lr_vector(self.opt.get_lr(), a)
        step = ops.assign_add(self.opt.global_step,
                              self.opt.global_step_increase_tensor * ops.cast(finite, ms.int32))
        triples = ()
        for weight, moment, gradient in zip(self._parameters, self.opt.moments, gradients):
            triples = triples + (weight, moment, gradient)
        mu = ops.reshape(self.opt.momentum, (1,))
        run = ops.reshape(ops.cast(finite, ms.float32), (1,))
        return ops.depend(self._lars_momentum(run, a, b, lr, mu, *triples), step)

    def _trust_scales(self, w_sq, g_sq):
        """(a, b, tau) of ops.trust_ratio.lars_scales for every parameter at once."""
        grad_scale = self.reciprocal_scale if self.need_scale else 1.0
        a, b = lars_scales(w_sq, g_sq, self._weight_decay_vector(), self.coefficient,
                           self.epsilon, self.use_clip, self._clip_lr(), grad_scale)
        trust = a / grad_scale if self.need_scale else a  # a = tau * s (lars_scales)
        return a, b, trust

    def _record_trust(self, finite, trust):
        """Keep the adapted parameters' trust ratios of a finite step in ``lars_trust``."""
        if self._adapted_idx is None:
            return finite
        kept = ops.gather(trust, self._adapted_idx, 0)
        return ops.depend(finite, ops.assign(self.lars_trust,
                                             ops.where(finite, kept, self.lars_trust)))

    def _apply_scales(self, a, b, gradients):
        """g'_i = a_i g_i + b_i w_i, per parameter (graph specialised on which terms exist)."""
        return self.hyper_map(_apply, self._scales_grad, ops.unstack(a), ops.unstack(b),
                              self._decays, self._parameters, gradients)

    def _ascend(self, gradients):
        if self.need_scale:
            gradients = self.hyper_map(ops.partial(_scale_grad, self.reciprocal_scale), gradients)
        lr = self._current_lr()
        weight_decay = self._current_weight_decay()
        params, flags = self._parameters, self.lars_flag
        if self.use_clip and self.is_group_lr:
            return self.hyper_map(ops.partial(_fused_lars, self._lars_update, self._square_sum_all,
                                              self.epsilon, self.use_clip),
                                  lr, weight_decay, params, gradients, flags)
        return self.hyper_map(ops.partial(_fused_lars, self._lars_update, self._square_sum_all,
                                          self.epsilon, self.use_clip, lr),
                              weight_decay, params, gradients, flags)

    def construct(self, gradients):
        gradients = self.flatten_gradients(gradients)
        # A step with a non-finite gradient does not call the wrapped optimizer: its weights,
        # state (moments, beta powers, ...) and global_step stay as they were.
        if self.backend == _backend.ASCEND:
            finite = check_gradients(self, gradients)
            applied = ops.depend(finite, self._branch_state)
            if finite:
                applied = ops.depend(applied, self.opt(self._ascend(gradients)))
            return applied
        if self.backend == _backend.CPU:
            return self._cpu_step(gradients)
        if self.backend == _backend.GPU:
            return self._gpu_step(gradients)
        finite, lars_gradients = self._portable_checked(gradients)
        applied = ops.depend(finite, self._branch_state)
        if finite:
            applied = ops.depend(applied, self.opt(lars_gradients))
        return applied

    def parameter_table(self):
        """
        Describe what LARS does to each parameter.

        Returns:
            str, a table with one row per parameter: name, shape, LARS-adapted, weight decay
            (the static value, or ``dynamic``).

        Examples:
            >>> from mindspore import nn
            >>> import ms_optim
            >>> net = nn.Dense(3, 2)
            >>> lars = ms_optim.LARS(nn.Momentum(net.trainable_params(), 0.1, 0.9,
            ...                                  weight_decay=1e-4))
            >>> print(lars.parameter_table())
            parameter  shape   LARS  weight decay
            ---------  ------  ----  ------------
            weight     (2, 3)  yes   0.0001
            bias       (2,)    no    0.0001
        """
        lines = [("parameter", "shape", "LARS", "weight decay")]
        for i, p in enumerate(self._parameters):
            lines.append((p.name, str(tuple(p.shape)), "yes" if self.lars_flag[i] else "no",
                          self._wd_text(i)))
        return _format_rows(lines)

    def _wd_text(self, i):
        if not self.exec_weight_decay or not self.decay_flags[i]:
            return "0"
        wd = self.weight_decay[i] if self.is_group else self.weight_decay
        if isinstance(wd, nn.Cell):
            return "dynamic"
        return f"{float(wd.asnumpy()) / self.loss_scale:g}"
