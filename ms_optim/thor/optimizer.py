r"""THOR: Kronecker-factored natural-gradient optimizer, one algorithm for every backend.

Written from the formulas of Chen et al., "THOR, Trace-based Hardware-driven Layer-Oriented
Natural Gradient Descent Computation", AAAI 2021 (https://ojs.aaai.org/index.php/AAAI/article/view/16867)
and Martens & Grosse 2015 (K-FAC, https://arxiv.org/abs/1503.05671), keeping the signature and
defaults of ``mindspore.nn.thor``. The formulas are :mod:`ms_optim.ops.kfac`; the backend only
swaps the block-inverse kernel (:mod:`ms_optim.thor._kernels`).
"""
import logging
import numbers
import warnings

import numpy as np

import mindspore as ms
from mindspore import Parameter, ParameterTuple, Tensor, nn, ops

from .. import _backend
from .._nonfinite import add_nonfinite_state, check_gradients
from .._validation import (check_bool, check_callable, check_float, check_int,
                           check_non_negative, check_positive, check_type)
from ..ops import kfac
from . import _kernels, _parallel, blocks
from .convert import THOR_LAYER_MAP, ConvertNetUtils

__all__ = ["thor", "ThorOptimizer"]

_LOG = logging.getLogger("ms_optim")
_NAME = "thor"
CLIP_NORM = 1.0


def _validate_schedule(value, arg_name):
    """Return a float32 1-D numpy copy of a 0-D/1-D schedule (lr, damping) or raise."""
    if not isinstance(value, (Tensor, np.ndarray)):
        raise TypeError(f"For '{_NAME}', the argument '{arg_name}' must be Tensor or numpy.ndarray, "
                        f"but got {type(value).__name__}.")
    arr = value.asnumpy() if isinstance(value, Tensor) else np.asarray(value)
    if arr.dtype.kind != "f":
        raise TypeError(f"For '{_NAME}', the argument '{arg_name}' must have a float dtype, "
                        f"but got {arr.dtype}.")
    if arr.ndim > 1:
        raise ValueError(f"For '{_NAME}', the argument '{arg_name}' must be 0-D or 1-D, "
                         f"but got {arr.ndim}-D.")
    if arr.size == 0:
        raise ValueError(f"For '{_NAME}', the argument '{arg_name}' must not be empty.")
    if not np.all(np.isfinite(arr)) or np.any(arr < 0):
        raise ValueError(f"For '{_NAME}', every value of '{arg_name}' must be finite and >= 0.")
    return arr.astype(np.float32).reshape(-1)


#: the values of inverse_method
INVERSE_METHODS = ("cholesky", "eigh")

#: default bounds of the adaptive damping multiplier
DAMPING_SCALE_BOUNDS = (1e-3, 1e3)


def _validate_adaptive_damping(omega, bounds):
    """``(omega, (s_min, s_max))`` as floats (bounds None when omega is None), or raise."""
    if omega is None:
        if bounds is not None:
            raise ValueError(f"For '{_NAME}', the argument 'damping_scale_bounds' needs "
                             "'adaptive_damping' (the factor omega of the adaptation).")
        return None, None
    check_type(_NAME, "adaptive_damping", omega, (float, numbers.Integral), "None or float")
    omega = float(omega)
    if not 0.0 < omega < 1.0:
        raise ValueError(f"For '{_NAME}', the argument 'adaptive_damping' (the factor omega) "
                         f"must be in (0, 1), but got {omega}.")
    if bounds is None:
        return omega, DAMPING_SCALE_BOUNDS
    if not isinstance(bounds, (tuple, list)) or len(bounds) != 2 or any(
            isinstance(b, bool) or not isinstance(b, (float, numbers.Integral)) for b in bounds):
        raise TypeError(f"For '{_NAME}', the argument 'damping_scale_bounds' must be a pair of "
                        f"floats (s_min, s_max), but got {bounds!r}.")
    lower, upper = float(bounds[0]), float(bounds[1])
    if not (0.0 < lower <= 1.0 <= upper < float("inf")):
        raise ValueError(f"For '{_NAME}', the argument 'damping_scale_bounds' must satisfy "
                         f"0 < s_min <= 1 <= s_max < inf, but got {bounds!r}.")
    return omega, (lower, upper)


_UNDRIVEN_WARNED = []


def _warn_undriven(frequency):
    """Called while the optimizer's graph is built outside ms_optim's train cells (GRAPH: once per
    compilation; PYNATIVE: once per process)."""
    if _UNDRIVEN_WARNED:
        return True
    _UNDRIVEN_WARNED.append(True)
    msg = ("ms_optim.thor: the optimizer is called outside ms_optim.ThorTrainOneStepCell / "
           "ms_optim.ConvertModelUtils.convert_to_thor_model, so every step is a refresh step "
           f"(frequency={frequency} is not applied). mindspore.train.ConvertModelUtils does not "
           "know ms_optim's optimizer: use ms_optim.ConvertModelUtils.")
    _LOG.warning(msg)
    warnings.warn(msg, UserWarning)
    return True


class ThorOptimizer(nn.Optimizer):
    r"""The THOR optimizer cell returned by :func:`thor` (see there for the algorithm).

    Construct it through :func:`thor`, which validates the arguments and converts the network.

    Inputs:
        - **gradients** (tuple[Tensor]) - gradients of the trainable parameters.

    Outputs:
        bool, True.

    Supported Platforms:
        ``Ascend`` ``GPU`` ``CPU``
    """

    def __init__(self, net, params, learning_rate, damping, momentum, weight_decay, loss_scale,
                 batch_size, use_nesterov, decay_filter, split_indices, enable_clip_grad,
                 frequency, backend, distribute_inversion, kl_clip=None, factor_decay=None,
                 factor_frequency=None, adaptive_damping=None, damping_scale_bounds=None,
                 inverse_method="cholesky"):
        super().__init__(learning_rate, params, 0.0, loss_scale)
        self.thor = True
        #: compile-time flag of a factor step (set by ThorTrainOneStepCell)
        self.thor_factors = False
        self.frequency = frequency
        #: steps between statistics collections into the running means (None: `frequency`)
        self.factor_frequency = factor_frequency
        #: set by ThorTrainOneStepCell: the refresh/stale switch drives this optimizer
        self.thor_driven = False
        self.backend = backend
        self.kernels = _kernels.get_kernels(backend)  # a property: tests may swap the kernel set
        self.momentum = Parameter(Tensor(momentum, ms.float32), name="momentum")
        self.moments = self._parameters.clone(prefix="moments", init="zeros")
        self.use_nesterov = use_nesterov
        # per parameter: the momentum step as one ApplyMomentum kernel (not for Nesterov, which
        # MindSpore's CPU kernel ignores; not for float16 parameters, whose update runs in float32)
        self._apply_momentum = ops.ApplyMomentum()
        self._fused_momentum = tuple(not use_nesterov and p.dtype == ms.float32
                                     for p in self._parameters)
        self.weight_decay_value = float(weight_decay)
        self.decay_flags = tuple(bool(decay_filter(p)) for p in self._parameters)
        self.enable_clip_grad = enable_clip_grad
        self.batch_size = batch_size
        # the per-step damping schedule: a constant of the graph, like the learning-rate array
        # (not checkpointed; the zoo resumes with a re-sliced schedule of another length)
        self.thor_damping = Tensor(damping)
        self._lr_values = self.learning_rate.learning_rate if self.dynamic_lr else self.learning_rate
        self._n_lr = int(self._lr_values.shape[0]) if self.dynamic_lr else 1
        self._n_damping = int(damping.shape[0])
        self._inv_ls2 = 1.0 / (float(loss_scale) ** 2)
        #: empty: G carries the static `loss_scale`; (s,): the Parameter holding the dynamic loss
        #: scale of the step's backward (set by ms_optim.thor.model.ThorWrapTrainCell)
        self.stat_loss_scale = ParameterTuple(())

        # --- map parameters to layers (by identity, never by name counting) -------------------
        # every THOR layer's curvature is its block (ms_optim.thor.blocks); LayerNorm scale and
        # shift get the per-parameter LayerNorm rule
        pid = {id(p): i for i, p in enumerate(self._parameters)}
        layers, widx = [], []
        ln_idx = set()
        #: "cholesky" or "eigh" (the built-in Kronecker blocks become EigenKroneckerBlock)
        self.inverse_method = inverse_method
        for _, cell in net.cells_and_names():
            block_cls = blocks.block_class_for(cell)
            if block_cls is blocks.KroneckerBlock and inverse_method == "eigh":
                block_cls = blocks.EigenKroneckerBlock
            if block_cls is not None:
                block = block_cls(cell)
                if id(block.weight) in pid:
                    layers.append(block)
                    widx.append(pid[id(block.weight)])
            elif isinstance(cell, nn.LayerNorm):
                for p in (cell.gamma, cell.beta):
                    if id(p) in pid:
                        ln_idx.add(pid[id(p)])
        #: the curvature block of every preconditioned layer, in network order
        self.blocks = tuple(layers)
        self.n_layers = len(layers)
        self._layer_kind = tuple(blocks.kind_of(type(b)) for b in layers)
        self._layer_of_param = tuple(widx.index(i) if i in widx else -1
                                     for i in range(len(self._parameters)))
        self._is_layernorm = tuple(i in ln_idx for i in range(len(self._parameters)))
        self._is_preconditioned = tuple(self._layer_of_param[i] >= 0 or self._is_layernorm[i]
                                        for i in range(len(self._parameters)))
        self._preconditioned = tuple(i for i, f in enumerate(self._is_preconditioned) if f)
        #: KAISA's KL clip: kappa (None: off) and the last step's factor nu (checkpointed)
        self.kl_clip = kl_clip
        self.thor_kl_scale = Parameter(Tensor(1.0, ms.float32), name="thor_kl_scale",
                                       requires_grad=False)
        #: Levenberg-Marquardt damping (adaptive_damping): omega (None: off) and the bounds of
        #: the multiplier s; s (checkpointed), the last reduction ratio rho, and the quadratic
        #: model change of the last refresh step (0 once ThorTrainOneStepCell has consumed it)
        #: (only with adaptive_damping: checkpoints of other runs keep their keys)
        self.adaptive_damping = adaptive_damping
        self.damping_scale_bounds = damping_scale_bounds
        if adaptive_damping is not None:
            self.thor_damping_scale = Parameter(Tensor(1.0, ms.float32),
                                                name="thor_damping_scale", requires_grad=False)
            self.thor_lm_rho = Parameter(Tensor(float("nan"), ms.float32), name="thor_lm_rho",
                                         requires_grad=False)
            self.thor_lm_model = Parameter(Tensor(0.0, ms.float32), name="thor_lm_model",
                                           requires_grad=False)
        # The layers' statistics, held unregistered (plain tuples) like in the layers: not in
        # parameters_and_names(), hence not checkpointed (the next refresh recomputes them).
        object.__setattr__(self, "stat_a", tuple(b.cell.matrix_a for b in layers))
        object.__setattr__(self, "stat_g", tuple(b.cell.matrix_g for b in layers))
        object.__setattr__(self, "stat_t", tuple(b.cell.thor_t for b in layers))
        object.__setattr__(self, "stat_n", (layers[0].cell.thor_n,) if layers else ())

        a_inv, g_inv, t_keep = [], [], []
        for k, block in enumerate(layers):
            wname = self._parameters[widx[k]].name
            a0, g0 = block.initial_inverses()
            a_inv.append(Parameter(Tensor(a0), name=f"thor_a_inv.{wname}", requires_grad=False))
            g_inv.append(Parameter(Tensor(g0), name=f"thor_g_inv.{wname}", requires_grad=False))
            t_keep.append(Parameter(Tensor(block.initial_kept()), name=f"thor_t.{wname}",
                                    requires_grad=False))
        dims = tuple(b.dims() for b in layers)
        self.a_inv = ParameterTuple(a_inv)
        self.g_inv = ParameterTuple(g_inv)
        self.t_keep = ParameterTuple(t_keep)
        self.thor_fault_count = Parameter(Tensor(np.zeros((max(self.n_layers, 1),), np.int32)),
                                          name="thor_fault_count", requires_grad=False)
        #: running means of the factors across refreshes (factor_decay; checkpointed: unlike the
        #: statistics they cannot be recomputed): raw sums R, weights w (kfac.factor_moving_average)
        self.factor_decay = factor_decay
        avg_a, avg_g, avg_w = [], [], []
        if factor_decay is not None:
            for k, block in enumerate(layers):
                wname = self._parameters[widx[k]].name
                avg_a.append(Parameter(Tensor(np.zeros(block.cell.matrix_a.shape, np.float32)),
                                       name=f"thor_avg_a.{wname}", requires_grad=False))
                avg_g.append(Parameter(Tensor(np.zeros(block.cell.matrix_g.shape, np.float32)),
                                       name=f"thor_avg_g.{wname}", requires_grad=False))
                avg_w.append(Parameter(Tensor(0.0, ms.float32), name=f"thor_avg_w.{wname}",
                                       requires_grad=False))
        self.thor_avg_a = ParameterTuple(avg_a)
        self.thor_avg_g = ParameterTuple(avg_g)
        self.thor_factor_weight = ParameterTuple(avg_w)
        add_nonfinite_state(self, len(self._parameters))

        # --- data parallel seam (ms_optim.thor._parallel) ------------------------------------
        self.dp = _parallel.ThorDataParallel(split_indices, [b.inversion_cost() for b in layers],
                                             distribute_inversion)

        # --- aligned tuples for the hyper_map'ed graph functions ------------------------------
        self._dims_a = tuple(d[0] for d in dims)
        self._weight_index = tuple(widx)
        self._layer_groups = tuple(b.groups for b in layers)
        self._dims_g = tuple(d[1] for d in dims)
        param_kind, pp_g, pp_a, pp_t, pp_groups = [], [], [], [], []
        for i in range(len(self._parameters)):
            k = self._layer_of_param[i]
            pp_groups.append(layers[k].groups if k >= 0 else 1)
            if k >= 0:
                param_kind.append(self._layer_kind[k])
                pp_g.append(self.g_inv[k])
                pp_a.append(self.a_inv[k])
                pp_t.append(self.t_keep[k])
            else:
                param_kind.append(_KIND_LAYERNORM if self._is_layernorm[i] else _KIND_PLAIN)
                # placeholders of the rules without a layer: never read
                pp_g.append(self.momentum)
                pp_a.append(self.momentum)
                pp_t.append(self.momentum)
        self._param_kind = tuple(param_kind)
        self._param_groups = tuple(pp_groups)
        self._pp_g_inv = ParameterTuple(pp_g)
        self._pp_a_inv = ParameterTuple(pp_a)
        self._pp_t = ParameterTuple(pp_t)

    @property
    def kernels(self):
        """The block-inverse kernel set (:mod:`ms_optim.thor._kernels`); settable."""
        return self._kernels

    @kernels.setter
    def kernels(self, value):
        self._kernels = value
        self._invert_fn = _make_invert_fn(value.spd_block_inverse)

    # ----------------------------------------------------------------------------------------
    # Graph structure. The per-layer and per-parameter rules are MultitypeFuncGraphs mapped with
    # ``hyper_map`` over aligned tuples (as ``nn.Momentum`` does), not unrolled Python loops: a
    # loop of 161 parameter updates exceeds MindSpore's call-depth limit when ResNet-50 is
    # compiled in GRAPH mode, and layers/parameters of equal shapes share one inferred subgraph.
    # ----------------------------------------------------------------------------------------
    def _factors(self, gradients, finite):
        """This step's statistics ``(A..., G...)``, averaged over the ranks; with `factor_decay`
        folded into the running means, which are returned instead (not updated when ``finite``
        is False)."""
        # the statistics were written in this step's forward/backward: read them after it
        # (hyper_map inputs are flat tuples: PYNATIVE's HyperMap recurses into nested ones)
        stat_a = self.hyper_map(ops.partial(_read_stat, gradients, 1.0), self.stat_a)
        if self.stat_loss_scale:
            # a user loss-scale cell's current scale (copied by the driver before the step)
            inv_s2 = 1.0 / ops.square(self.stat_loss_scale[0])
            stat_g = self.hyper_map(ops.partial(_read_stat_scaled, gradients, inv_s2), self.stat_g)
        else:
            stat_g = self.hyper_map(ops.partial(_read_stat, gradients, self._inv_ls2), self.stat_g)
        if self.dp.parallel:
            stats = self.dp.reduce_statistics(_interleave((stat_a, stat_g)))
            stat_a, stat_g = stats[0::2], stats[1::2]
        if self.factor_decay is not None:
            # the inverses are formed from the running means (every rank: same reduced input)
            means = _flatten(self.hyper_map(ops.partial(_average_factors, self.factor_decay, finite),
                                            self.thor_avg_a, self.thor_avg_g,
                                            self.thor_factor_weight, stat_a, stat_g))
            stat_a, stat_g = means[0::2], means[1::2]
        return stat_a, stat_g

    def _factor_step(self, gradients, finite):
        """Factor step (``factor_frequency``): the statistics enter the running means; the
        inverses are kept. Returns a token that the preconditioning depends on."""
        stat_a, stat_g = self._factors(gradients, finite)
        token = finite
        for a in stat_a + stat_g:
            token = ops.depend(token, a)
        return token

    def _refresh(self, lam, gradients, finite):
        """Refresh step: statistics -> damped inverses (kept where the statistics are bad).

        Writes ``a_inv``, ``g_inv``, ``t_keep`` and ``fault_count``; returns a token that the
        preconditioning depends on. With non-finite gradients (``finite`` False) nothing changes.
        """
        stat_a, stat_g = self._factors(gradients, finite)
        bufs = self.hyper_map(ops.partial(self._invert_fn, lam), self._layer_kind, self._dims_a,
                              self._dims_g, self.dp.owns_tuple(), stat_a, stat_g, self.stat_t,
                              self.a_inv, self.g_inv, self.t_keep)
        bufs = self.dp.share_inverses(_flatten(bufs))
        bad = self.hyper_map(ops.partial(_commit_inverses, finite), bufs[0::4], bufs[1::4], bufs[2::4], bufs[3::4],
                             self.a_inv, self.g_inv, self.t_keep)
        if self.n_layers:
            return ops.assign_add(self.thor_fault_count, ops.stack(bad)), stat_a, stat_g
        return bad, stat_a, stat_g

    def _model_change(self, lam, n_batch, gradients, stat_a, stat_g, steps):
        r""":func:`ms_optim.ops.kfac.quadratic_model` of this step's weight changes ``steps``:
        :math:`\langle g, \delta\rangle + \frac{1}{2}\delta^\top C\delta`, :math:`C` the
        damped curvature each rule inverts (a block's :meth:`curvature` from this refresh's
        factors; LayerNorm: its diagonal; other parameters: :math:`I`)."""
        inner = self.hyper_map(_inner, gradients, steps)
        curv = self.hyper_map(ops.partial(_param_curvature, lam, n_batch), self._param_kind,
                              gradients, steps)
        total = ops.stack(inner).sum()
        curv_total = ops.stack(curv).sum()
        if self.n_layers:
            layer_curv = self.hyper_map(ops.partial(_layer_curvature, lam), self._layer_kind,
                                        self._layer_groups, stat_a, stat_g, self.stat_t,
                                        _pick(steps, self._weight_index))
            curv_total = curv_total + ops.stack(layer_curv).sum()
        return kfac.quadratic_model(total, curv_total)

    def _clamped(self, values, length):
        idx = ops.minimum(self.global_step, length - 1)
        return ops.reshape(ops.gather(values, idx, 0), ())

    def construct(self, gradients):
        if not self.thor_driven:
            _warn_undriven(self.frequency)
        gradients = self.flatten_gradients(gradients)
        # One flag over all gradients: a non-finite step writes nothing (every assign below keeps
        # the old value where it is False) and is recorded in nonfinite_steps / nonfinite_param.
        finite = check_gradients(self, gradients)
        gradients = self.scale_grad(gradients)
        lam = self._clamped(self.thor_damping, self._n_damping)
        adapt = self.adaptive_damping is not None and self.thor
        if self.adaptive_damping is not None:
            lam = lam * self.thor_damping_scale
        lr = self._clamped(self._lr_values, self._n_lr) if self.dynamic_lr \
            else ops.reshape(self._lr_values, ())
        stat_a, stat_g = (), ()
        if self.thor:
            # statistics are written during forward/backward of this step; the preconditioning
            # below reads the inverses this refresh writes
            token, stat_a, stat_g = self._refresh(lam, gradients, finite)
        elif self.thor_factors:
            token = ops.depend(lam, self._factor_step(gradients, finite))
        else:
            token = lam
        if self.stat_n:
            n_batch = ops.depend(self.stat_n[0], gradients)
        else:
            n_batch = Tensor(float(self.batch_size), ms.float32)
        # data parallel: the rule uses the global batch (equal per-rank batches)
        n_batch = n_batch * self.dp.group_size
        precond = self.hyper_map(ops.partial(_thor_precondition, token, lam, n_batch),
                                 self._param_kind, self._param_groups, self._pp_g_inv,
                                 self._pp_a_inv, self._pp_t, gradients)
        success = True
        before = ()
        if adapt:
            # the weights before the update (copies): the step is their change
            before = self.hyper_map(_copy, self._parameters)
            token = ops.depend(token, before)
        if self.kl_clip is not None:
            dots = self.hyper_map(_precond_dot, self._is_preconditioned, precond, gradients)
            nu = kfac.kl_clip_factor(ops.stack(dots).sum(), lr, self.kl_clip)
            success = ops.depend(success, ops.assign(
                self.thor_kl_scale, ops.where(finite, nu, self.thor_kl_scale)))
            precond = self.hyper_map(ops.partial(_scale_precond, nu), self._is_preconditioned,
                                     precond)
        updated = self.hyper_map(
            ops.partial(_thor_update, finite, lr, self.momentum,
                        (ops.where(finite, lr, ops.zeros_like(lr)),
                         ops.where(finite, self.momentum, ops.ones_like(self.momentum))),
                        self.weight_decay_value,
                        self.use_nesterov, self.enable_clip_grad, self._apply_momentum),
            self.decay_flags, self._fused_momentum, self._parameters, self.moments, precond)
        success = ops.depend(success, updated)
        if adapt:
            steps = self.hyper_map(_change, self._parameters, ops.depend(before, updated))
            model = self._model_change(lam, n_batch, gradients, stat_a, stat_g, steps)
            success = ops.depend(success, ops.assign(
                self.thor_lm_model, ops.where(finite, model, ops.zeros_like(model))))
        # a skipped step does not advance the step (as a loss-scale cell's overflow skip)
        success = ops.depend(success, ops.assign_add(
            self.global_step, ops.reshape(ops.cast(finite, ms.int32), (1,))))
        return success


# ---- graph functions (mapped with hyper_map) -------------------------------------------------
#: parameter kinds of the rules without a block (a block's kind is its index in BLOCK_KINDS)
_KIND_PLAIN, _KIND_LAYERNORM = -1, -2
_BLOCK_KINDS = blocks.BLOCK_KINDS


def _flatten(pairs):
    """((x0, y0), (x1, y1), ...) -> (x0, y0, x1, y1, ...)."""
    out = ()
    for p in pairs:
        out = out + p
    return out


def _interleave(tuples):
    """((x0, x1, ...), (y0, y1, ...)) -> (x0, y0, x1, y1, ...)."""
    out = ()
    for k in range(len(tuples[0])):
        for t in tuples:
            out = out + (t[k],)
    return out


_average_factors = ops.MultitypeFuncGraph("thor_average_factors")


@_average_factors.register("Number", "Tensor", "Tensor", "Tensor", "Tensor", "Tensor", "Tensor")
def _average_factors_layer(decay, finite, raw_a, raw_g, weight, a, g):
    """One layer's running means of A and G; the state is updated only with finite factors of a
    step with finite gradients (a non-finite mean is rejected by the inversion's fault guard)."""
    ok = ops.logical_and(finite, ops.logical_and(ops.isfinite(a).all(), ops.isfinite(g).all()))
    new_ra, new_w, mean_a = kfac.factor_moving_average(raw_a, weight, a, decay)
    new_rg, _, mean_g = kfac.factor_moving_average(raw_g, weight, g, decay)
    done = ops.assign(raw_a, ops.where(ok, new_ra, raw_a))
    done = ops.depend(done, ops.assign(raw_g, ops.where(ok, new_rg, raw_g)))
    done = ops.depend(done, ops.assign(weight, ops.where(ok, new_w, weight)))
    return ops.depend(mean_a, done), ops.depend(mean_g, done)


_read_stat_scaled = ops.MultitypeFuncGraph("thor_read_stat_scaled")


@_read_stat_scaled.register("Tuple", "Tensor", "Tensor")
def _read_stat_scaled_layer(gradients, scale, stat):
    """One layer's statistic times a run-time scale (dynamic loss scale removal)."""
    return ops.depend(stat, gradients) * scale


_read_stat = ops.MultitypeFuncGraph("thor_read_stat")


@_read_stat.register("Tuple", "Number", "Tensor")
def _read_stat_layer(gradients, scale, stat):
    """One layer's statistic, read after the backward pass (``scale``: loss scale removal)."""
    stat = ops.depend(stat, gradients)
    if scale != 1.0:
        stat = stat * scale
    return stat


def _make_invert_fn(spd_block_inverse):
    """Per-layer inversion graph for one kernel set (the kernel is a closure constant)."""
    fn = ops.MultitypeFuncGraph("thor_invert_layer")

    @fn.register("Tensor", "Number", "Number", "Number", "Bool", "Tensor", "Tensor", "Tensor",
                 "Tensor", "Tensor", "Tensor")
    def _invert_layer(lam, kind, d_a, d_g, owns, a, g, stat_t, a_old, g_old, t_old):
        if owns:
            t = ops.depend(stat_t, a)
            a_new, g_new, okf = _BLOCK_KINDS[kind].invert(spd_block_inverse, lam, d_a, d_g, a, g, t)
            tk = _BLOCK_KINDS[kind].kept(lam, ops.depend(stat_t, a)) * okf
        else:
            # not constants: the sharing all-reduce must not be scheduled before the
            # statistics all-reduces (see the collective order in ms_optim.thor._parallel)
            a_new = ops.depend(ops.zeros(a_old.shape, ms.float32), a)
            g_new = ops.depend(ops.zeros(g_old.shape, ms.float32), a)
            okf = ops.depend(ops.zeros((), ms.float32), a)
            tk = ops.depend(ops.zeros(t_old.shape, ms.float32), a)
        return a_new, g_new, okf, tk
    return fn


_commit_inverses = ops.MultitypeFuncGraph("thor_commit_inverses")


@_commit_inverses.register("Tensor", "Tensor", "Tensor", "Tensor", "Tensor", "Tensor", "Tensor",
                           "Tensor")
def _commit_layer(finite, a_new, g_new, okf, tk, a_inv, g_inv, t_keep):
    """Keep the new inverses where they are good, the last good ones otherwise; 1 if rejected.

    ``finite`` False (non-finite gradients: the step is skipped): keep all, count nothing.
    """
    ok = ops.logical_and(okf > 0.5, finite)
    a_k = ops.where(ok, a_new, a_inv)
    g_k = ops.where(ok, g_new, g_inv)
    t_k = ops.where(ok, tk, t_keep)
    bad = ops.cast(1 - ops.cast(okf > 0.5, ms.int32), ms.int32) * ops.cast(finite, ms.int32)
    bad = ops.depend(bad, ops.assign(a_inv, a_k))
    bad = ops.depend(bad, ops.assign(g_inv, g_k))
    return ops.depend(bad, ops.assign(t_keep, t_k))


_thor_precondition = ops.MultitypeFuncGraph("thor_precondition")


@_thor_precondition.register("Tensor", "Tensor", "Tensor", "Number", "Number", "Tensor", "Tensor",
                             "Tensor", "Tensor")
def _thor_precondition_param(token, lam, n_batch, kind, groups, g_inv, a_inv, t, grad):
    """Precondition one gradient by its rule (float32)."""
    grad = ops.cast(grad, ms.float32)
    if kind >= 0:
        grad = _BLOCK_KINDS[kind].precondition(ops.depend(g_inv, token), ops.depend(a_inv, token),
                                               ops.depend(t, token), grad, groups)
    elif kind == _KIND_LAYERNORM:
        grad = kfac.layernorm_precondition(grad, n_batch, lam)
    return grad


def _pick(values, indices):
    """(values[i] for i in indices) as a tuple."""
    out = ()
    for i in indices:
        out = out + (values[i],)
    return out


_copy = ops.MultitypeFuncGraph("thor_copy")


@_copy.register("Tensor")
def _copy_param(param):
    """A float32 copy of a parameter's value (read before the update)."""
    return ops.cast(param, ms.float32) * 1.0


_change = ops.MultitypeFuncGraph("thor_change")


@_change.register("Tensor", "Tensor")
def _change_param(param, before):
    r"""The step :math:`\delta = w_{new} - w_{old}` of one parameter (float32)."""
    return ops.cast(param, ms.float32) - before


_inner = ops.MultitypeFuncGraph("thor_inner")


@_inner.register("Tensor", "Tensor")
def _inner_param(grad, step):
    return ops.reduce_sum(ops.cast(grad, ms.float32) * step)


_param_curvature = ops.MultitypeFuncGraph("thor_param_curvature")


@_param_curvature.register("Tensor", "Tensor", "Number", "Tensor", "Tensor")
def _param_curvature_rule(lam, n_batch, kind, grad, step):
    r""":math:`\delta^\top C\delta` of the rules without a block (a block's layers: 0 here)."""
    if kind >= 0:
        return ops.zeros((), ms.float32)
    if kind == _KIND_LAYERNORM:
        return kfac.layernorm_curvature(ops.cast(grad, ms.float32), step, n_batch, lam)
    return ops.reduce_sum(step * step)


_layer_curvature = ops.MultitypeFuncGraph("thor_layer_curvature")


@_layer_curvature.register("Tensor", "Number", "Number", "Tensor", "Tensor", "Tensor", "Tensor")
def _layer_curvature_block(lam, kind, groups, a, g, stat_t, step):
    r""":math:`\delta^\top C\delta` of one layer's weight by its block."""
    return _BLOCK_KINDS[kind].curvature(lam, a, g, ops.depend(stat_t, a), step, groups)


_precond_dot = ops.MultitypeFuncGraph("thor_precond_dot")


@_precond_dot.register("Bool", "Tensor", "Tensor")
def _precond_dot_param(flag, precond, grad):
    """<g~, g> of a preconditioned parameter, 0 for the others (the KL-clip sum)."""
    if flag:
        return ops.reduce_sum(precond * ops.cast(grad, ms.float32))
    return ops.zeros((), ms.float32)


_scale_precond = ops.MultitypeFuncGraph("thor_scale_precond")


@_scale_precond.register("Tensor", "Bool", "Tensor")
def _scale_precond_param(nu, flag, precond):
    if flag:
        return precond * nu
    return precond


_thor_update = ops.MultitypeFuncGraph("thor_update")


@_thor_update.register("Tensor", "Tensor", "Tensor", "Tuple", "Number", "Bool", "Bool", "Function",
                       "Bool", "Bool", "Tensor", "Tensor", "Tensor")
def _thor_update_param(finite, lr, momentum, skip_or_step, weight_decay, use_nesterov, clip,
                       apply_momentum, decay, fused, param, moment, grad):
    """Weight decay, clipping and the momentum step of one (preconditioned) gradient; nothing
    is written where ``finite`` is False.

    ``fused`` (float32 parameter, no Nesterov): MindSpore's ``ApplyMomentum`` computes
    :func:`ms_optim.ops.kfac.momentum_step` in place, :math:`v \\leftarrow \\mu v + g`,
    :math:`w \\leftarrow w - lr\\,v`, in the same float32 operations (one kernel instead of a
    chain of element-wise ones); a skipped step applies it with :math:`g = 0`, :math:`\\mu = 1`,
    :math:`lr = 0`, which leaves both unchanged (``skip_or_step``: that :math:`(lr, \\mu)` pair,
    formed once per step)."""
    if weight_decay > 0 and decay:
        grad = grad + weight_decay * param
    if clip:
        grad = ops.clip_by_norm(grad, CLIP_NORM)
    if fused:
        grad = ops.where(finite, grad, ops.zeros_like(grad))
        return ops.depend(True, apply_momentum(param, moment, skip_or_step[0], grad,
                                               skip_or_step[1]))
    w_new, v_new = kfac.momentum_step(ops.cast(param, ms.float32), ops.cast(moment, ms.float32),
                                      grad, lr, momentum, use_nesterov)
    v_new = ops.where(finite, ops.cast(v_new, moment.dtype), moment)
    w_new = ops.where(finite, ops.cast(w_new, param.dtype), param)
    success = ops.depend(True, ops.assign(moment, v_new))
    return ops.depend(success, ops.assign(param, w_new))


def thor(net, learning_rate, damping, momentum, weight_decay=0.0, loss_scale=1.0, batch_size=32,
         use_nesterov=False, decay_filter=lambda x: x.name not in [], split_indices=None,
         enable_clip_grad=False, frequency=100, *, backend="auto", distribute_inversion=False,
         thor_filter=None, verbose=False, kl_clip=None, factor_decay=None, factor_frequency=None,
         adaptive_damping=None, damping_scale_bounds=None, inverse_method="cholesky"):
    r"""THOR, a Kronecker-factored natural-gradient optimizer (Chen et al., AAAI 2021).

    Paper: https://ojs.aaai.org/index.php/AAAI/article/view/16867. Converts ``net`` in place
    (:class:`ConvertNetUtils`) and returns the optimizer. One algorithm on every backend: at the
    0-based global step :math:`t`, with :math:`F` = `frequency`,

    .. math::

        \begin{array}{ll}
        \text{refresh } (t \bmod F = 0): & A = \frac{1}{NT}P^\top P,\quad
            G = \frac{N}{T}D^\top D,\quad \delta = \sqrt{\lambda_t / T} \\
        & \hat A^{-1} = \operatorname{blockdiag}_{128}(A + \delta I)^{-1} \\
        & \hat G^{-1} = \operatorname{blockdiag}_{128}(G + \delta I)^{-1} \\
        \text{Dense/Conv2d weight}: & \tilde g = \frac{1}{T}\hat G^{-1}\,\nabla W\,\hat A^{-1} \\
        \text{Embedding}: & \tilde g = \operatorname{diag}(a + \sqrt{\lambda_t})^{-1}\,\nabla E\,
            (G + \sqrt{\lambda_t} I)^{-1},\quad a = \mathrm{counts}/N \\
        \text{LayerNorm } \gamma, \beta: & \tilde g = g \,/\, (g \odot g / N + \sqrt{\lambda_t}) \\
        \text{other}: & \tilde g = g \\
        \text{then}: & \tilde g \leftarrow \tilde g + wd \cdot w \quad \text{if decay_filter}(w) \\
        & \tilde g \leftarrow \operatorname{clip}_{\|\cdot\| \le 1}(\tilde g)
            \quad \text{if enable_clip_grad} \\
        & v \leftarrow \mu v + \tilde g,\quad w \leftarrow w - lr_t\, v \\
        & \text{Nesterov: } w \leftarrow w - lr_t(\tilde g + \mu v)
        \end{array}

    The block inverses are computed by Cholesky and kept until the next refresh.
    :math:`P`: layer inputs / im2col patches; :math:`D = \frac{1}{s}\partial(sL)/\partial Y`: output
    gradients of the mean loss :math:`L` with the loss scale :math:`s` removed; :math:`N`: samples
    in the step's minibatch (for the LayerNorm rule: the rows seen by the first converted layer,
    e.g. :math:`B S` for a Dense applied to :math:`(B, S, H)` inputs, times the number of
    data-parallel ranks); :math:`T`: output locations per sample (1 for Dense,
    :math:`H_{out}W_{out}` for Conv2d, ids per sample for embeddings); :math:`\lambda_t` =
    ``damping[t]``, :math:`lr_t` = ``learning_rate[t]`` (0-D: constant; past the end the last
    value holds); :math:`\mu` = `momentum`; :math:`wd` = `weight_decay`. The damping is split as
    :math:`\sqrt{\lambda}` between the two factors (factored Tikhonov damping), which is what
    ``mindspore.nn.thor`` computes.

    Eigen-decompositions (``inverse_method="eigh"``, KAISA's eigen method): a refresh
    decomposes the diagonal 128-blocks, :math:`A_{bd} = Q_A \operatorname{diag}(e_A) Q_A^\top`,
    :math:`G_{bd} = Q_G \operatorname{diag}(e_G) Q_G^\top`
    (:func:`ms_optim.ops.kfac.eigen_of_blocks`), and the Dense/Conv2d rule becomes the exact
    inverse of :math:`T\,A_{bd} \otimes G_{bd} + \lambda_t I` (the damping on the eigenvalues
    instead of split between the factors),

    .. math::

        \tilde g = Q_G \Big[\big(Q_G^\top\,\nabla W\,Q_A\big) \oslash
        \big(T\, e_G e_A^\top + \lambda_t\big)\Big] Q_A^\top

    (:func:`ms_optim.ops.kfac.kron_eigen_precondition`; :math:`\oslash`: element-wise division;
    per group for grouped convolutions); the embedding and LayerNorm rules, and layers whose
    registered block is not the built-in ``KroneckerBlock``, are unchanged.

    Adaptive damping (``adaptive_damping`` :math:`\omega`; Martens & Grosse 2015, section 6.5):
    the multiplier :math:`s` (Parameter ``thor_damping_scale``, checkpointed, starts at 1) of
    every damping above is adapted after each refresh step :math:`t` from the step
    :math:`\delta = w_{t+1} - w_t` of all parameters,

    .. math::

        \Delta M = \langle g, \delta\rangle + \tfrac{1}{2}\delta^\top C\delta,
        \qquad \rho = \frac{L(w_{t+1}) - L(w_t)}{\Delta M},

    both losses on the step's batch (one extra forward pass per refresh step, run by
    :class:`ThorTrainOneStepCell` in a separate graph with the network's BatchNorm moving
    statistics restored afterwards, dropout drawing new masks; data parallel: averaged over the
    ranks). :math:`C` is the
    damped curvature that each rule inverts at :math:`s\lambda_t`
    (:func:`~ms_optim.ops.kfac.kron_curvature`, :func:`~ms_optim.ops.kfac.embedding_curvature`,
    :func:`~ms_optim.ops.kfac.layernorm_curvature`; :math:`I` for the other parameters), from
    the refresh's factors: the model THOR's step minimises, not the exact Fisher of kfac-jax.
    :math:`\rho` (:func:`ms_optim.ops.kfac.reduction_ratio`) is kept in ``thor_lm_rho``; with
    :math:`\Delta M \ge 0` (e.g. a skipped step) :math:`s` is kept.

    Note:
        - Refresh steps happen at global steps 0, F, 2F, ... when training goes through
          :class:`ThorTrainOneStepCell` or :meth:`ConvertModelUtils.convert_to_thor_model`
          (which select a "refresh" or a "stale" compiled graph per step). Used inside a plain
          ``nn.TrainOneStepCell`` every step is a refresh step (correct, but no reuse).
        - Statistics or inverses that are non-finite, or a damping too small for float32 Cholesky
          (:math:`\delta \le s\,2^{-23}\max \operatorname{diag}`), keep the layer's last good
          inverses; the event is counted in the Parameter ``thor_fault_count``.
        - Non-finite gradients: a step in which any gradient holds a NaN or an Inf (e.g. a NaN
          batch) writes nothing: weights, moments, the inverses (also on a refresh step),
          ``thor_kl_scale``, ``thor_fault_count``, ``thor_damping_scale`` and ``global_step``
          stay bit-identical (``thor_lm_rho`` becomes NaN: no adaptation), as
          when a loss-scale cell skips an overflow step; since ``global_step`` does not advance,
          a skipped refresh step is retried on the next step. The step is counted in the
          Parameter ``nonfinite_steps`` (int32) and the index (into the optimizer's
          parameters) of the first non-finite gradient is stored in ``nonfinite_param`` (-1
          before any). :class:`ThorTrainOneStepCell` does not read them (no per-step sync);
          :class:`ms_optim.OptimizerMonitor` warns, naming the step and the parameter; without
          it, read the counter. Finite steps are unchanged bit for bit. The test is one float32
          sum per gradient: a finite gradient whose sum overflows float32 counts as non-finite.
        - The result does not depend on `loss_scale` (a static loss scale, e.g.
          ``FixedLossScaleManager(s, drop_overflow_update=False)`` with ``loss_scale=s``).
          Dynamic loss scaling and dropped overflow steps: through
          :meth:`ConvertModelUtils.convert_to_thor_model` with a ``DynamicLossScaleManager`` /
          ``FixedLossScaleManager(s, drop_overflow_update=True)`` or the user's own
          ``nn.TrainOneStepWithLossScaleCell`` (the cell's current scale is removed from
          :math:`G`; build the optimizer with ``loss_scale=1.0``).
        - Grouped and depthwise convolutions (``group`` :math:`g > 1`) get one Kronecker pair
          per group: group :math:`j` (output channels :math:`[jC_{out}/g, (j+1)C_{out}/g)`, its
          :math:`C_{in}/g` input channels) is preconditioned as a layer of its own,
          :math:`\tilde g^{(j)} = \frac{1}{T}\hat G^{(j)-1}\nabla W^{(j)}\hat A^{(j)-1}`.
        - Layers are converted in place, as sub-cells of `net`: a `net` that is itself a
          convertible layer (e.g. a bare ``nn.Dense``) cannot be replaced and raises ValueError
          (wrap it: ``nn.SequentialCell([net])``). A network with no layer THOR can
          precondition (nothing converted, e.g. all excluded by `thor_filter`) is accepted,
          trains with the LayerNorm and plain momentum rules only, and a warning is logged.
        - Dense/Conv2d layers collect, reduce and invert only the diagonal 128-blocks of
          :math:`A` and :math:`G` (:func:`ms_optim.ops.kfac.input_covariance_blocks`); the full
          matrices are never formed (same result as forming them).
        - Data parallel (``ParallelMode.DATA_PARALLEL`` with ``gradients_mean=True``, equal
          batches on every rank): on refresh steps the statistics A and G (not the inverses) are
          averaged over the ranks, one all-reduce per `split_indices` bucket (the bucket's tensors
          packed into one buffer); the result equals one process on the global batch. :math:`N`
          of the LayerNorm rule is the global batch (per-rank batch times the number of ranks).
          The collectives are chained by data dependencies (gradients, then statistics buckets
          in order, then inverse-sharing buckets in order), so every rank runs them in the same
          order even when the ranks' graphs differ (`distribute_inversion`).

    Args:
        net (Cell): the network; converted in place after all arguments are validated.
        learning_rate (Union[Tensor, numpy.ndarray]): 0-D or 1-D per-step learning rates.
        damping (Union[Tensor, numpy.ndarray]): 0-D or 1-D per-step damping
            :math:`\lambda_t \ge 0`.
        momentum (float): :math:`\mu \ge 0`.
        weight_decay (Union[float, int]): :math:`wd \ge 0`. Default: ``0.0``.
        loss_scale (Union[float, int]): static loss scale :math:`s > 0`. Default: ``1.0``.
        batch_size (int): per-rank batch, used as :math:`N` (times the number of data-parallel
            ranks) only for LayerNorm rules of a network that has no converted layer (otherwise
            :math:`N` is read from the batch). Default: ``32``.
        use_nesterov (bool): Nesterov momentum. Default: ``False``.
        decay_filter (Callable): ``decay_filter(param) -> bool``, parameters to decay.
            Default: ``lambda x: x.name not in []`` (all).
        split_indices (list[int]): bucket ends (indices of preconditioned layers, in network
            order) for the data-parallel all-reduce of the statistics and of the shared inverses:
            ``[26, 53]`` makes layers 0-26 and 27-53 two buckets, each reduced by one all-reduce;
            layers after the last index form one more bucket. Default: ``None`` (one bucket).
        enable_clip_grad (bool): clip each preconditioned gradient to norm 1. Default: ``False``.
        frequency (int): :math:`F \ge 2`, steps between refreshes. Default: ``100``.
        backend (str): keyword-only; ``"auto"``, ``"ascend"`` or ``"portable"``. Default:
            ``"auto"``.
        distribute_inversion (bool): keyword-only; in data-parallel mode, each layer's inversion
            runs on one rank (cost-balanced) and the results are shared (sum of zero-filled
            buffers); identical result. Default: ``False``.
        thor_filter (Callable): keyword-only; ``thor_filter(name, cell) -> bool`` passed to
            :class:`ConvertNetUtils`: layers for which it returns False are not converted (plain
            gradient). Default: ``None`` (all convertible layers).
        verbose (bool): keyword-only; print the conversion table (every convertible layer: path,
            type, converted or why not; :meth:`ConvertNetUtils.table`). Default: ``False``.
        kl_clip (float): keyword-only; KAISA's KL clip :math:`\kappa > 0`: the preconditioned
            gradients :math:`\tilde g` of the Dense/Conv2d/Embedding weights and LayerNorm
            parameters are multiplied by :math:`\nu = \min(1, \sqrt{\kappa / (lr_t^2 \sum
            \langle \tilde g, g\rangle)})` (:func:`ms_optim.ops.kfac.kl_clip_scale`) before
            weight decay; the last :math:`\nu` is kept in the Parameter ``thor_kl_scale``.
            Default: ``None`` (off).
        factor_decay (float): keyword-only; :math:`\beta \in [0, 1)`: the inverses of the
            :math:`k`-th refresh are formed from the running means :math:`\bar A_k = R_k / w_k`,
            :math:`R_k = \beta R_{k-1} + (1 - \beta) A_k`, :math:`w_k = \beta w_{k-1} + (1 -
            \beta)`, :math:`R_0 = w_0 = 0` (and the same for :math:`G`;
            :func:`ms_optim.ops.kfac.factor_moving_average`) instead of the refresh's own
            factors; :math:`R` and :math:`w` are Parameters (``thor_avg_a.*``, ``thor_avg_g.*``,
            ``thor_avg_w.*``, checkpointed). The factors are averaged at the inverse cadence
            (every `frequency` steps) unless `factor_frequency` is given. Default: ``None``
            (off).
        factor_frequency (int): keyword-only; :math:`K`, a divisor of `frequency`, needs
            `factor_decay`: the statistics are collected at every global step
            :math:`t \bmod K = 0` and folded into the running means :math:`\bar A, \bar G`
            ("factor steps", a third compiled graph), while the inverses are still formed from
            the means only at refresh steps :math:`t \bmod F = 0` (KAISA's separate factor and
            inverse cadences). Default: ``None`` (:math:`K = F`).
        adaptive_damping (float): keyword-only; :math:`\omega \in (0, 1)`: Levenberg-Marquardt
            adaptation of the damping (see "Adaptive damping" above): every damping becomes
            :math:`s\,\lambda_t`, and after each refresh step :math:`s \leftarrow \omega s` if
            :math:`\rho > 3/4`, :math:`s / \omega` if :math:`\rho < 1/4`, clipped to
            `damping_scale_bounds` (:func:`ms_optim.ops.kfac.lm_damping_scale`). Needs
            :class:`ThorTrainOneStepCell` or :meth:`ConvertModelUtils.convert_to_thor_model`.
            Default: ``None`` (off).
        damping_scale_bounds (tuple[float]): keyword-only; :math:`(s_{\min}, s_{\max})` with
            :math:`0 < s_{\min} \le 1 \le s_{\max}`, needs `adaptive_damping`. Default:
            ``None`` (:math:`(10^{-3}, 10^{3})`).
        inverse_method (str): keyword-only; ``"cholesky"`` (the damped factors inverted by
            Cholesky, as upstream) or ``"eigh"`` (see "Eigen-decompositions" above; the stored
            ``thor_a_inv.*`` / ``thor_g_inv.*`` then hold :math:`[Q \mid e]` per block and
            ``thor_t.*`` holds :math:`(T, \lambda_t)` of the refresh). Default: ``"cholesky"``.

    Inputs:
        - **gradients** (tuple[Tensor]) - gradients of ``net.trainable_params()``.

    Outputs:
        bool, True.

    Raises:
        TypeError: If `net` is not a Cell, or is an optimizer.
        TypeError: If `learning_rate` or `damping` is not a Tensor or numpy array of a float dtype.
        TypeError: If `momentum` is not a float.
        TypeError: If `loss_scale` is neither float nor int.
        TypeError: If `weight_decay` is neither float nor int.
        TypeError: If `use_nesterov`, `enable_clip_grad`, `distribute_inversion` or `verbose` is
            not a bool.
        TypeError: If `frequency` or `batch_size` is not an int.
        TypeError: If `decay_filter` is not callable.
        TypeError: If `thor_filter` is neither None nor callable.
        TypeError: If `split_indices` is not a list/tuple of int.
        TypeError: If `kl_clip` or `factor_decay` is neither None nor a float or int.
        ValueError: If `loss_scale` <= 0.
        ValueError: If `kl_clip` <= 0, or `factor_decay` is not in [0, 1).
        TypeError: If `factor_frequency` is neither None nor an int.
        ValueError: If `factor_frequency` is given without `factor_decay`, or is not a positive
            divisor of `frequency`.
        TypeError: If `adaptive_damping` is neither None nor a float, or `damping_scale_bounds`
            is not a pair of floats.
        ValueError: If `adaptive_damping` is not in (0, 1), or `damping_scale_bounds` is given
            without it or does not satisfy :math:`0 < s_{\min} \le 1 \le s_{\max} < \infty`.
        TypeError: If `adaptive_damping` is given and a layer's curvature block has no
            :meth:`~ms_optim.thor.blocks.CurvatureBlock.curvature`.
        TypeError: If `inverse_method` is not a str.
        ValueError: If `inverse_method` is neither ``"cholesky"`` nor ``"eigh"``.
        ValueError: If `weight_decay` or `momentum` < 0.
        ValueError: If `frequency` < 2.
        ValueError: If `batch_size` <= 0.
        ValueError: If `learning_rate` or `damping` is not 0-D/1-D, empty, negative or not finite.
        ValueError: If `split_indices` is not strictly increasing within the preconditioned
            layers.
        TypeError: If `backend` is not a str.
        ValueError: If `net` has no trainable parameter, or `backend` is invalid.
        ValueError: If `net` is itself a layer that THOR converts (e.g. a bare ``nn.Dense``).
        TypeError: If a converter registered with :func:`register_thor_layer` returns a cell that
            is not a THOR layer (it would never be preconditioned).

    Supported Platforms:
        ``Ascend`` ``GPU`` ``CPU``

    Examples:
        >>> import numpy as np
        >>> import mindspore as ms
        >>> from mindspore import nn
        >>> from ms_optim import thor, ThorTrainOneStepCell
        >>> net = nn.SequentialCell([nn.Dense(4, 8, activation='relu'), nn.Dense(8, 3)])
        >>> opt = thor(net, ms.Tensor(0.1, ms.float32), ms.Tensor(0.03, ms.float32), 0.9,
        ...            frequency=2)
        >>> loss = nn.WithLossCell(net, nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction='mean'))
        >>> step = ThorTrainOneStepCell(loss, opt)
        >>> x = ms.Tensor(np.random.randn(16, 4).astype(np.float32))
        >>> y = ms.Tensor(np.random.randint(0, 3, 16).astype(np.int32))
        >>> losses = [float(step(x, y).asnumpy()) for _ in range(4)]
        >>> losses[-1] < losses[0]
        True
    """
    # ---- validation: everything before the network is touched ------------------------------
    if not isinstance(net, nn.Cell) or isinstance(net, nn.Optimizer):
        raise TypeError(f"For '{_NAME}', the argument 'net' must be the network (a Cell that is "
                        f"not an optimizer), but got {type(net).__name__}.")
    check_float(_NAME, "momentum", momentum)
    check_non_negative(_NAME, "momentum", momentum)
    check_type(_NAME, "weight_decay", weight_decay, (float, numbers.Integral), "float or int")
    check_non_negative(_NAME, "weight_decay", weight_decay)
    # as mindspore.nn.Optimizer (and upstream nn.thor): an int loss scale is taken as a float
    check_type(_NAME, "loss_scale", loss_scale, (float, numbers.Integral), "float or int")
    loss_scale = float(loss_scale)
    check_positive(_NAME, "loss_scale", loss_scale)
    check_int(_NAME, "frequency", frequency)
    if frequency < 2:
        raise ValueError(f"For '{_NAME}', the argument 'frequency' must be at least 2, "
                         f"but got {frequency}.")
    lr_values = _validate_schedule(learning_rate, "learning_rate")
    damping_values = _validate_schedule(damping, "damping")
    check_bool(_NAME, "use_nesterov", use_nesterov)
    check_int(_NAME, "batch_size", batch_size)
    if batch_size <= 0:
        raise ValueError(f"For '{_NAME}', the argument 'batch_size' must be > 0, but got {batch_size}.")
    check_callable(_NAME, "decay_filter", decay_filter)
    check_bool(_NAME, "enable_clip_grad", enable_clip_grad)
    check_bool(_NAME, "distribute_inversion", distribute_inversion)
    check_bool(_NAME, "verbose", verbose)
    if kl_clip is not None:
        check_type(_NAME, "kl_clip", kl_clip, (float, numbers.Integral), "None, float or int")
        kl_clip = float(kl_clip)
        check_positive(_NAME, "kl_clip", kl_clip)
    if factor_decay is not None:
        check_type(_NAME, "factor_decay", factor_decay, (float, numbers.Integral),
                   "None, float or int")
        factor_decay = float(factor_decay)
        if not 0.0 <= factor_decay < 1.0:
            raise ValueError(f"For '{_NAME}', the argument 'factor_decay' must be in [0, 1), "
                             f"but got {factor_decay}.")
    if factor_frequency is not None:
        check_int(_NAME, "factor_frequency", factor_frequency)
        if factor_decay is None:
            raise ValueError(f"For '{_NAME}', the argument 'factor_frequency' needs "
                             "'factor_decay': the statistics of the factor steps enter the "
                             "running means of the factors.")
        if factor_frequency < 1 or frequency % factor_frequency:
            raise ValueError(f"For '{_NAME}', the argument 'factor_frequency' must be a positive "
                             f"divisor of 'frequency' ({frequency}), but got {factor_frequency}.")
    adaptive_damping, damping_scale_bounds = _validate_adaptive_damping(adaptive_damping,
                                                                        damping_scale_bounds)
    check_type(_NAME, "inverse_method", inverse_method, str, "str")
    if inverse_method not in INVERSE_METHODS:
        raise ValueError(f"For '{_NAME}', the argument 'inverse_method' must be one of "
                         f"{list(INVERSE_METHODS)}, but got {inverse_method!r}.")
    resolved = _backend.resolve_backend(backend, _kernels.ASCEND_PRIMITIVES, _NAME)
    if not net.trainable_params():
        raise ValueError(f"For '{_NAME}', the argument 'net' must have trainable parameters.")
    if type(net) in THOR_LAYER_MAP:
        raise ValueError(f"For '{_NAME}', the argument 'net' is itself a {type(net).__name__}: "
                         "THOR converts sub-cells in place and cannot replace the root cell, so "
                         "it would not be preconditioned. Wrap it, e.g. "
                         "nn.SequentialCell([net]).")
    converter = ConvertNetUtils(thor_filter, verbose=verbose)
    planned = converter._plan_blocks(net)  # pylint: disable=protected-access
    n_layers = len(planned)
    if adaptive_damping is not None:
        for path, block_cls in planned:
            if block_cls is not None and not block_cls.has_curvature():
                raise TypeError(f"For '{_NAME}', 'adaptive_damping' needs the curvature of every "
                                f"preconditioned layer, but the block {block_cls.__name__} of "
                                f"'{path}' does not implement CurvatureBlock.curvature.")
    if n_layers == 0:
        _LOG.warning("THOR: '%s' has no layer THOR can precondition (no Dense/Conv2d/Embedding/"
                     "EmbeddingLookup converted); training uses the LayerNorm and plain "
                     "momentum rules only.", type(net).__name__)
    split_indices = _parallel.validate_split_indices(_NAME, split_indices, n_layers)
    for p in net.trainable_params():  # decay_filter must return a bool-like for every param
        decay_filter(p)
    # ---- only now change the network ---------------------------------------------------------
    converter.convert_to_thor_net(net)
    lr_tensor = Tensor(lr_values) if lr_values.size > 1 else Tensor(float(lr_values[0]), ms.float32)
    return ThorOptimizer(net, net.trainable_params(), lr_tensor, damping_values, momentum,
                         weight_decay, loss_scale, batch_size, use_nesterov, decay_filter,
                         split_indices, enable_clip_grad, frequency, resolved, distribute_inversion,
                         kl_clip=kl_clip, factor_decay=factor_decay,
                         factor_frequency=factor_frequency, adaptive_damping=adaptive_damping,
                         damping_scale_bounds=damping_scale_bounds, inverse_method=inverse_method)
