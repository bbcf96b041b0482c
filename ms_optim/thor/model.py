"""THOR's frequency scheduling: a train-step cell that picks the refresh or the stale graph,
and :class:`ConvertModelUtils`, which builds a ``Model`` around it (with amp and loss scaling).

MindSpore compiles one graph per ``Cell.phase`` and reuses it: the compile-time flag ``thor`` is
read when a phase is compiled (verified in GRAPH mode: a cached phase ignores later flag
changes; in PYNATIVE the flag is read at run time). :class:`ThorTrainOneStepCell` therefore
selects the flag *and* the phase per step, so refresh steps (statistics + inverses) happen at
global steps 0, F, 2F, ... and stale steps run the cheap graph. The step number is the
optimizer's checkpointed ``global_step``, so resuming from a checkpoint continues the pattern.

Host cost per step: the step number is kept on the host and read from the device (a sync) only
on the first call, whenever ``global_step``'s storage was replaced (``load_checkpoint`` /
``load_param_into_net`` / ``set_data`` all replace it; the old storage is held, so its address
cannot be reused unnoticed), and around refresh steps: after a refresh step and before a step the
host count predicts to be a refresh step (two reads per `frequency` steps). A step with
non-finite gradients leaves ``global_step`` unchanged (the optimizer skips it), so the host count
can run one ahead; these reads put the refresh back on the device's step (a skipped refresh step is
retried on the next call). The ``thor`` flag rests False (evaluation compiles and runs without
statistics) and is flipped to True, on the cached THOR layers and the optimizer only, around
refresh steps; stale steps touch no flag. With ``factor_frequency`` K (statistics every K
steps into the running means, inverses every F) a third graph, the factor step, runs at the
multiples of K that are not refresh steps (layers' ``thor`` flag True, optimizer's
``thor_factors`` True); with K > 1 the host count is also confirmed before each of them.
"""
import logging
import types
import warnings

import mindspore as ms
from mindspore import Parameter, ParameterTuple, Tensor, nn, ops
from mindspore.ops import functional as F
from mindspore.nn.layer.normalization import _BatchNorm
from mindspore.train import Model

from .._validation import check_bool
from ..ops import kfac
from . import blocks
from .layers import Conv2dThor, DenseThor

__all__ = ["ThorTrainOneStepCell", "ThorWrapTrainCell", "ThorModel", "ConvertModelUtils"]

_LOG = logging.getLogger("ms_optim")
_REFRESH_PHASE = "thor_refresh"
_FACTOR_PHASE = "thor_factors"
_STALE_PHASE = "thor_stale"


class ThorTrainOneStepCell(nn.TrainOneStepCell):
    r"""One THOR training step, refreshing the curvature every `frequency` global steps.

    .. math::

        \text{refresh}_t = (t \bmod F = 0),\qquad t = \text{optimizer.global_step}

    Note:
        ``sens`` is a static loss scale; build the optimizer with the same ``loss_scale``.
        After each call the ``thor`` flag of the THOR layers is left False, so evaluation
        between steps collects no statistics. The step number is read from the device only on
        the first call, after ``global_step`` was replaced (checkpoint load), after a refresh
        step and before a step the host count predicts to be a refresh step (a step skipped
        for non-finite gradients does not advance ``global_step``; these reads keep refreshes
        at global steps 0, F, 2F, ...); see :meth:`resync_step` for other in-place changes.
        With the optimizer's ``factor_frequency`` :math:`K < F`, the steps
        :math:`t \bmod K = 0` that are not refresh steps run a third graph, the factor step
        (statistics into the running means, no inversion); with :math:`K > 1` the step number
        is also read before each of them. With the optimizer's ``adaptive_damping``, each refresh
        step is followed by one more forward pass of the loss network on the same inputs (a
        separate graph; BatchNorm moving statistics restored afterwards), from which the damping
        multiplier ``thor_damping_scale`` is adapted by the Levenberg-Marquardt rule.

    Args:
        network (Cell): network with loss.
        optimizer (Cell): the optimizer from :func:`ms_optim.thor`.
        sens (float): static loss scale. Default: ``1.0``.

    Inputs:
        - **\*inputs** (tuple[Tensor]) - the inputs of `network`.

    Outputs:
        Tensor, the loss.

    Raises:
        TypeError: If `optimizer` is not the optimizer returned by :func:`ms_optim.thor`.

    Supported Platforms:
        ``Ascend`` ``GPU`` ``CPU``

    Examples:
        >>> import numpy as np
        >>> import mindspore as ms
        >>> from mindspore import nn
        >>> from ms_optim import thor, ThorTrainOneStepCell
        >>> net = nn.SequentialCell([nn.Dense(3, 2)])  # the Dense becomes a DenseThor
        >>> opt = thor(net, ms.Tensor(0.1, ms.float32), ms.Tensor(0.1, ms.float32), 0.9, frequency=3)
        >>> step = ThorTrainOneStepCell(nn.WithLossCell(net, nn.MSELoss()), opt)
        >>> x, y = ms.Tensor(np.ones((4, 3), np.float32)), ms.Tensor(np.zeros((4, 2), np.float32))
        >>> refreshes = []
        >>> for _ in range(4):
        ...     refreshes.append(step.next_step_refreshes())
        ...     _ = step(x, y)
        >>> refreshes
        [True, False, False, True]
    """

    def __init__(self, network, optimizer, sens=1.0):
        # Checked before nn.TrainOneStepCell.__init__, which would fail with an AttributeError.
        if not hasattr(optimizer, "frequency") or not hasattr(optimizer, "n_layers"):
            raise TypeError("For 'ThorTrainOneStepCell', the argument 'optimizer' must be the "
                            f"optimizer returned by ms_optim.thor, but got {type(optimizer).__name__}.")
        super().__init__(network, optimizer, sens)
        self.frequency = optimizer.frequency
        #: steps between statistics collections (``factor_frequency``; the refresh period if None)
        self.factor_frequency = getattr(optimizer, "factor_frequency", None) or self.frequency
        optimizer.thor_driven = True
        # the cells that read the flag, found once (a walk of the whole network per step is
        # what this replaces)
        self._thor_cells = [c for _, c in network.cells_and_names()
                            if blocks.block_class_for(c) is not None]
        self._set_mode(False)
        self._host_step = None  # host copy of optimizer.global_step, None: read it
        self._step_storage = None  # global_step's storage when it was read (held: no reuse)
        self._host_counted = False  # _host_step was counted on the host since it was read
        # adaptive_damping: the Levenberg-Marquardt adaptation after refresh steps (a separate
        # graph; not a registered sub-cell: the network's parameters are not listed twice)
        object.__setattr__(self, "damping_adaptation", None)
        if getattr(optimizer, "adaptive_damping", None) is not None:
            object.__setattr__(self, "damping_adaptation",
                               _DampingAdaptation(self._loss_network(), optimizer))

    def _loss_network(self):
        """The cell that maps the step's inputs to the loss."""
        return self.network

    def _next_step(self):
        """The global step of the next call, from the host copy unless it may be stale."""
        gs = self.optimizer.global_step
        if self._host_step is None or self._step_storage is None \
                or gs.data_ptr() != self._step_storage.data_ptr():
            self._host_step = int(gs.asnumpy().reshape(-1)[0])
            self._step_storage = gs.data
            self._host_counted = False
        return self._host_step

    def resync_step(self):
        """Forget the host copy of ``global_step``: the next call reads it from the device.

        Needed only if ``global_step`` was changed in place by other code than this cell (for
        example by calling the optimizer directly); a checkpoint load is detected by itself.
        """
        self._host_step = None
        self._step_storage = None

    def _collects(self, step):
        """Whether global step ``step`` collects statistics (a refresh or a factor step)."""
        return step % self.factor_frequency == 0

    def _confirm(self, step):
        """Whether the host count must be confirmed on the device before step ``step``: before a
        refresh step, and before a factor step when only every K-th step is one (with K = 1
        every non-refresh step is a factor step, nothing to confirm)."""
        return step % self.frequency == 0 or (self.factor_frequency > 1 and self._collects(step))

    def next_step_refreshes(self):
        """Whether the next call is a refresh step (from the optimizer's ``global_step``)."""
        if self._confirm(self._next_step()) and self._host_counted:
            # predicted by the host count: confirm it (a skipped non-finite step did not advance
            # global_step)
            self.resync_step()
        return self._next_step() % self.frequency == 0

    def _set_mode(self, refresh, factors=False):
        for cell in self._thor_cells:
            cell.add_flags(thor=refresh or factors)
        self.optimizer.add_flags(thor=refresh, thor_factors=factors)
        self.optimizer.thor = refresh
        self.optimizer.thor_factors = factors

    def __call__(self, *args, **kwargs):
        refresh = self.next_step_refreshes()
        factors = not refresh and self._collects(self._next_step())
        ok = False
        if refresh or factors:
            self._set_mode(refresh, factors)
            self.phase = _REFRESH_PHASE if refresh else _FACTOR_PHASE
        else:
            self.phase = _STALE_PHASE
        try:
            out = super().__call__(*args, **kwargs)
            ok = True
        finally:
            if refresh or factors:
                self._set_mode(False)
            if ok and not refresh and not getattr(self, "dynamic_loss_scale", False):
                self._host_step += 1
                self._host_counted = True
            else:
                # a refresh step skipped for non-finite gradients is retried: read the step
                # a loss-scale cell may skip the optimizer (overflow): read the step next time
                self.resync_step()
        if refresh and self.damping_adaptation is not None:
            self.damping_adaptation(out[0] if isinstance(out, tuple) else out, *args)
        return out


class _DampingAdaptation(nn.Cell):
    r"""The Levenberg-Marquardt damping adaptation of ``thor(..., adaptive_damping=omega)``, run
    by :class:`ThorTrainOneStepCell` after each refresh step on the step's inputs.

    .. math::

        \rho = \frac{L(w_{t+1}) - L(w_t)}{\Delta M},\qquad
        s \leftarrow \operatorname{clip}(\omega^{\pm 1} s \text{ or } s,\ s_{\min},\ s_{\max})

    (:func:`ms_optim.ops.kfac.reduction_ratio`, :func:`ms_optim.ops.kfac.lm_damping_scale`).
    :math:`L(w_{t+1})` is one forward pass of the loss network on the same inputs (THOR layers'
    ``thor`` flag False: no statistics); the moving statistics of its BatchNorm cells are
    restored afterwards, so the extra pass changes nothing but :math:`s`. Data parallel: the
    loss change is averaged over the ranks. :math:`\Delta M` is the optimizer's
    ``thor_lm_model`` of the refresh step (reset to 0 here, so a refresh step whose optimizer
    call was skipped, e.g. a loss-scale overflow, adapts nothing).

    Args:
        network (Cell): the loss network (inputs -> loss).
        optimizer (Cell): the optimizer of :func:`ms_optim.thor` with `adaptive_damping`.

    Inputs:
        - **loss** (Tensor) - :math:`L(w_t)`, the loss the refresh step returned.
        - **\*inputs** (tuple[Tensor]) - the refresh step's inputs.

    Outputs:
        Tensor, :math:`\rho`.
    """

    def __init__(self, network, optimizer):
        super().__init__(auto_prefix=False)
        self.network = network
        self.omega = optimizer.adaptive_damping
        self.lower, self.upper = optimizer.damping_scale_bounds
        self.scale = optimizer.thor_damping_scale
        self.rho = optimizer.thor_lm_rho
        self.model = optimizer.thor_lm_model
        self.bn_state = ParameterTuple(
            [p for _, c in network.cells_and_names() if isinstance(c, _BatchNorm)
             for p in (c.moving_mean, c.moving_variance)])
        self.parallel = optimizer.dp.parallel
        self.group_size = float(optimizer.dp.group_size)
        self.allreduce = ops.AllReduce() if self.parallel else None
        self.hyper_map = ops.HyperMap()

    def construct(self, loss, *inputs):
        saved = self.hyper_map(_copy_state, self.bn_state)
        new_loss = self.network(*ops.depend(inputs, saved))
        change = ops.cast(new_loss, ms.float32) - ops.cast(loss, ms.float32)
        if self.parallel:
            change = self.allreduce(change) / self.group_size
        rho = kfac.reduction_ratio(change, self.model)
        scale = kfac.lm_damping_scale(self.scale, rho, self.omega, self.lower, self.upper)
        done = ops.assign(self.scale, scale)
        done = ops.depend(done, ops.assign(self.rho, rho))
        done = ops.depend(done, ops.assign(self.model, ops.zeros_like(self.model)))
        restored = self.hyper_map(_restore_state, self.bn_state, ops.depend(saved, new_loss))
        return ops.depend(ops.depend(rho, done), restored)


_copy_state = ops.MultitypeFuncGraph("thor_copy_state")


@_copy_state.register("Tensor")
def _copy_state_tensor(param):
    return param * 1


_restore_state = ops.MultitypeFuncGraph("thor_restore_state")


@_restore_state.register("Tensor", "Tensor")
def _restore_state_tensor(param, value):
    return ops.assign(param, value)


def _portable_start_overflow_check(self, pre_cond, compute_input):
    """Portable ``start_overflow_check``: no float-status register to clear."""
    status = ops.depend(ops.zeros((8,), ms.int32), pre_cond)
    return status, compute_input


def _portable_get_overflow_status(self, status, compute_output):
    """Portable ``get_overflow_status``: True when any gradient element is not finite."""
    finite = ops.depend(ops.ones((), ms.bool_), status)
    for grad in compute_output:
        finite = ops.logical_and(finite, ops.isfinite(grad).all())
    overflow = ops.logical_not(finite)
    if self.is_distributed:  # overflow on any rank is overflow everywhere
        flag = self.allreduce(ops.cast(overflow, ms.float32))
        overflow = flag > 0.5
    return overflow


def _has_overflow_kernel(cell):
    """Whether MindSpore's own overflow check of `cell` has kernels on this backend (GPU, Ascend)."""
    return bool(getattr(cell, "gpu_target", False) or getattr(cell, "ascend_910a_target", False)
                or getattr(cell, "ascend_910b_target", False))


def _loss_scale_parameter(cell):
    """The Parameter holding the dynamic loss scale of a loss-scale train cell.

    ``loss_scale`` when it is a Parameter (the convention of the model zoo's BERT cells, whose
    ``scale_sense`` stays at its initial value), otherwise MindSpore's ``scale_sense``.
    """
    for attr in ("loss_scale", "scale_sense"):
        value = getattr(cell, attr, None)
        if isinstance(value, Parameter):
            return attr, value
    return None, None


class ThorWrapTrainCell(ThorTrainOneStepCell):
    r"""THOR's refresh/stale switching around a train-step cell the user built.

    The MindSpore model zoo builds its own train cell (e.g. a ``BertTrainOneStepCell`` derived
    from ``nn.TrainOneStepCell``, or a ``BertTrainOneStepWithLossScaleCell`` derived from
    ``nn.TrainOneStepWithLossScaleCell``) around the THOR optimizer. This cell calls that
    `train_cell` unchanged and inherits the switching of :class:`ThorTrainOneStepCell`: before
    every call the compile-time flag ``thor`` of the layers and the optimizer and the phase of
    this (top) cell are set from the optimizer's ``global_step``, so refresh steps happen at
    global steps 0, F, 2F, ...

    .. math::

        \text{refresh}_t = (t \bmod F = 0),\qquad t = \text{optimizer.global_step}

    Note:
        - ``nn.TrainOneStepCell`` subclass: its ``sens`` is the static loss scale and must equal
          the optimizer's `loss_scale` (the curvature statistics carry ``sens``).
        - ``nn.TrainOneStepWithLossScaleCell`` subclass (dynamic loss scaling): the cell removes
          the scale from the gradients and calls the optimizer only on steps without overflow
          (its own ``construct`` decides; a skipped step leaves weights, moments, inverses and
          ``global_step`` unchanged, so the refresh is retried on the next step). Before each
          call this cell copies the cell's current scale (the Parameter ``loss_scale`` if the
          cell has one, as the model zoo's BERT cells do, else ``scale_sense``) into a Parameter
          that the optimizer divides out of :math:`G` (as :math:`1/s_t^2`): the result does not
          depend on the scale. Build the optimizer with ``loss_scale=1.0`` (another value
          divides the already unscaled gradients once more, as with any MindSpore optimizer; a
          warning is logged).
        - On a backend without MindSpore's overflow kernels (CPU: ``NPUGetFloatStatusV2`` has no
          CPU kernel), the cell instance gets portable ``start_overflow_check`` and
          ``get_overflow_status`` methods (overflow = any non-finite gradient element; summed
          over the ranks in data parallel); in GRAPH mode the compiled graph calls these
          instance methods.

    Args:
        train_cell (Cell): an ``nn.TrainOneStepCell`` (or ``nn.TrainOneStepWithLossScaleCell``)
            subclass instance whose ``optimizer`` is `optimizer`.
        optimizer (Cell): the optimizer from :func:`ms_optim.thor`.

    Inputs:
        - **\*inputs** (tuple[Tensor]) - the inputs of `train_cell`.

    Outputs:
        The outputs of `train_cell`.

    Raises:
        TypeError: If `train_cell` is not an ``nn.TrainOneStepCell`` or `optimizer` is not the
            optimizer returned by :func:`ms_optim.thor`.
        ValueError: If ``train_cell.optimizer`` is not `optimizer`, the static ``sens`` differs
            from the optimizer's `loss_scale`, or a loss-scale cell has no loss-scale Parameter.

    Supported Platforms:
        ``Ascend`` ``GPU`` ``CPU``

    Examples:
        >>> import numpy as np
        >>> import mindspore as ms
        >>> from mindspore import nn
        >>> from ms_optim import thor
        >>> from ms_optim.thor.model import ThorWrapTrainCell
        >>> net = nn.SequentialCell([nn.Dense(3, 2)])
        >>> opt = thor(net, ms.Tensor(0.1, ms.float32), ms.Tensor(0.1, ms.float32), 0.9, frequency=2)
        >>> user_cell = nn.TrainOneStepCell(nn.WithLossCell(net, nn.MSELoss()), opt)
        >>> step = ThorWrapTrainCell(user_cell, opt)
        >>> x, y = ms.Tensor(np.ones((4, 3), np.float32)), ms.Tensor(np.zeros((4, 2), np.float32))
        >>> refreshes = []
        >>> for _ in range(3):
        ...     refreshes.append(step.next_step_refreshes())
        ...     _ = step(x, y)
        >>> refreshes
        [True, False, True]
    """

    def __init__(self, train_cell, optimizer):
        if not isinstance(train_cell, nn.TrainOneStepCell):
            raise TypeError("For 'ThorWrapTrainCell', the argument 'train_cell' must be an "
                            "nn.TrainOneStepCell (or nn.TrainOneStepWithLossScaleCell) instance, "
                            f"but got {type(train_cell).__name__}.")
        if not hasattr(optimizer, "frequency") or not hasattr(optimizer, "n_layers"):
            raise TypeError("For 'ThorWrapTrainCell', the argument 'optimizer' must be the "
                            f"optimizer returned by ms_optim.thor, but got {type(optimizer).__name__}.")
        if getattr(train_cell, "optimizer", None) is not optimizer:
            raise ValueError("For 'ThorWrapTrainCell', the optimizer of 'train_cell' must be the "
                             "THOR optimizer given as 'optimizer', but 'train_cell.optimizer' is "
                             f"{type(getattr(train_cell, 'optimizer', None)).__name__}"
                             f" object {id(getattr(train_cell, 'optimizer', None)):#x}.")
        dynamic = isinstance(train_cell, nn.TrainOneStepWithLossScaleCell)
        scale_attr, scale_param = _loss_scale_parameter(train_cell) if dynamic else (None, None)
        if dynamic and scale_param is None:
            raise ValueError("For 'ThorWrapTrainCell', the loss-scale cell 'train_cell' has no "
                             "loss-scale Parameter ('loss_scale' or 'scale_sense'): THOR must "
                             "remove the current scale from its curvature statistics.")
        if not dynamic:
            sens = getattr(train_cell, "sens", 1.0)
            if not isinstance(sens, (int, float)) or isinstance(sens, bool) \
                    or abs(float(sens) - optimizer.loss_scale) > 1e-6 * abs(float(sens)):
                raise ValueError("For 'ThorWrapTrainCell', the static loss scale 'sens' of "
                                 f"'train_cell' ({sens!r}) must equal the optimizer's "
                                 f"'loss_scale' ({optimizer.loss_scale}).")
        # the inherited set-up (switching state); the user cell differentiates its own network
        super().__init__(train_cell, optimizer)
        train_cell.set_grad(False)
        self.dynamic_loss_scale = dynamic
        if dynamic:
            if optimizer.loss_scale != 1.0:
                _LOG.warning("THOR: the loss-scale cell '%s' already removes the loss scale from "
                             "the gradients; the optimizer's loss_scale=%s divides them once "
                             "more.", type(train_cell).__name__, optimizer.loss_scale)
            self.scale_attr = scale_attr
            self.user_loss_scale = scale_param
            self.thor_step_loss_scale = Parameter(
                Tensor(scale_param.asnumpy().copy()), name="thor_step_loss_scale",
                requires_grad=False)
            optimizer.stat_loss_scale = ParameterTuple([self.thor_step_loss_scale])
            if not _has_overflow_kernel(train_cell):
                train_cell.start_overflow_check = types.MethodType(
                    _portable_start_overflow_check, train_cell)
                train_cell.get_overflow_status = types.MethodType(
                    _portable_get_overflow_status, train_cell)

    def _loss_network(self):
        return self.network.network

    def construct(self, *inputs):
        if self.dynamic_loss_scale:
            # the scale this step's backward runs with (the cell may update it before calling
            # the optimizer): the optimizer removes it from G
            done = ops.assign(self.thor_step_loss_scale, self.user_loss_scale)
            out = self.network(*inputs)
            return ops.depend(out, done)
        return self.network(*inputs)


def _sink_unsupported_reason():
    """Why THOR's training loop does not sink the dataset on this backend/mode."""
    target = ms.get_context("device_target")
    if target == "CPU":
        return ("MindSpore 2.10 has no dataset sink mode on the CPU backend: the dataset "
                "queue (InitDataSetQueue) has no CPU kernel, DatasetHelper refuses sink mode on "
                "CPU and Model.train falls back to the non-sink loop")
    if ms.get_context("mode") == ms.PYNATIVE_MODE:
        return "in PYNATIVE mode every step is run from the host"
    return (f"ms_optim does not sink THOR's refresh and stale graphs on {target} yet (one sunk "
            "call per phase is not implemented: it could not be tested without a device)")


class _SinkChunks:
    """Iterable source for ``GeneratorDataset``: each pass yields the next `sink_size` rows of
    `dataset`, continuing where the previous pass stopped (wrapping around), as a sunk loop
    consumes the data."""

    def __init__(self, dataset, sink_size):
        self._dataset = dataset
        self._sink_size = sink_size
        self._it = None

    def __len__(self):
        return self._sink_size

    def __iter__(self):
        if self._it is None:
            self._it = self._dataset.create_tuple_iterator(num_epochs=-1, output_numpy=True)
        for _ in range(self._sink_size):
            try:
                row = next(self._it)
            except StopIteration:  # end of a pass over the data: the next pass starts
                row = next(self._it)
            yield tuple(row)


def _chunked(dataset, sink_size):
    """A dataset of `sink_size` rows per epoch, continuing through `dataset` across epochs."""
    import mindspore.dataset as ds
    source = _SinkChunks(dataset, sink_size)
    return ds.GeneratorDataset(source, column_names=dataset.get_col_names(), shuffle=False)


class ThorModel(Model):
    """A ``Model`` whose training loop runs step by step through :class:`ThorTrainOneStepCell`.

    Built by :meth:`ms_optim.ConvertModelUtils.convert_to_thor_model`. Dataset sink mode is
    replaced by the non-sink loop so that every step can pick its graph; a warning naming the
    reason is logged (``logging.getLogger('ms_optim')``) and issued (``warnings.warn``). A
    `sink_size` smaller than the dataset keeps its sink meaning: each epoch trains `sink_size`
    steps, continuing through the dataset across epochs, so the number of steps and the data
    order are those of a sunk run. Evaluation (``eval``, ``fit``) works.
    """

    def _train(self, epoch, train_dataset, callbacks=None, dataset_sink_mode=True, sink_size=-1,
               initial_epoch=0, *args, **kwargs):
        if dataset_sink_mode:
            msg = (f"THOR: dataset_sink_mode=True is run as the non-sink loop ("
                   f"{_sink_unsupported_reason()}); the refresh/stale graph is chosen every step "
                   "on the host, sink_size is kept as the steps per epoch.")
            _LOG.warning(msg)
            warnings.warn(msg, RuntimeWarning, stacklevel=3)
            if 0 < sink_size != train_dataset.get_dataset_size():
                train_dataset = _chunked(train_dataset, sink_size)
        return super()._train(epoch, train_dataset, callbacks, False, sink_size, initial_epoch,
                              *args, **kwargs)


# ---- Model conversion (ConvertModelUtils) ----------------------------------------------------
_AMP_LEVELS = ("O0", "O1", "O2", "O3", "auto")


class _WithLossFloat32(nn.Cell):
    """``loss_fn(backbone(data), label)`` with the backbone's output cast to float32 first (what
    ``mindspore.train.Model`` builds under mixed precision): the loss runs in float32."""

    def __init__(self, backbone, loss_fn):
        super().__init__(auto_prefix=False)
        self._backbone = backbone
        self._loss_fn = loss_fn

    def construct(self, data, label):
        out = F.mixed_precision_cast(ms.float32, self._backbone(data))
        return self._loss_fn(out, F.mixed_precision_cast(ms.float32, label))


class _OutputFloat32(nn.Cell):
    """Runs a float16 cell and casts its output to float32 (amp O1's rule for whitelisted cells);
    ``auto_prefix=False``: Parameter names are unchanged."""

    def __init__(self, cell):
        super().__init__(auto_prefix=False)
        self.cell = cell

    def construct(self, *args):
        return F.mixed_precision_cast(ms.float32, self.cell(*args))


def _precision_set(cell):
    return any(cell.__dict__.get(k, False) for k in ("fp16", "fp32", "bf16"))


def _amp_o1_in_place(network, white):
    """Amp O1 without ``mindspore.rewrite``: every cell of a whitelisted class (Dense, Conv, RNN
    cells, hence every Dense/Conv2d THOR layer) runs in float16 with a float32 output; the rest
    stays float32. (MindSpore's O1 rewrite fails on a network it already rewrote, e.g. inside
    ``Model(amp_level="O1")``, and would cast the float32 statistic matmuls of THOR layers.)"""
    changed = False
    for name, sub in list(network.name_cells().items()):
        if sub is network or isinstance(sub, _OutputFloat32):
            continue
        if isinstance(sub, white) and not _precision_set(sub):
            sub.to_float(ms.float16)
            if isinstance(sub, (DenseThor, Conv2dThor)):
                sub.thor_float32_output = True  # kept in place: its attributes stay reachable
            else:
                network.insert_child_to_cell(name, _OutputFloat32(sub))
                changed = True
        else:
            _amp_o1_in_place(sub, white)
    if changed and isinstance(network, nn.SequentialCell):
        network.cell_list = list(network.cells())


def _amp_network_with_loss(network, loss_fn, amp_level, keep_batchnorm_fp32):
    """Network with loss under ``amp_level``, as ``mindspore.train.Model`` builds it: mixed
    precision applied to the backbone only (in place), the loss in float32."""
    if amp_level == "O0":
        return nn.WithLossCell(network, loss_fn)
    from mindspore import amp
    if amp_level == "O1":
        white = tuple(c for c in amp.get_white_list() if isinstance(c, type) and issubclass(c, nn.Cell))
        _amp_o1_in_place(network, white)
        return _WithLossFloat32(network, loss_fn)
    level = amp_level
    if amp_level in ("O2", "O3"):  # as mindspore.train.Model with keep_batchnorm_fp32
        level = "O2" if keep_batchnorm_fp32 else "O3"
    backbone = amp.auto_mixed_precision(network, level)  # O2/O3: cast in place, output to float32
    return _WithLossFloat32(backbone, loss_fn)


def _check_loss_scale_manager(manager, optimizer):
    """``(sens, update_cell)`` for `manager`: a static scale kept in the gradients (``sens``,
    equal to the optimizer's ``loss_scale``) or an update cell of MindSpore's loss-scale train
    cell (overflow steps dropped; the optimizer's ``loss_scale`` must be 1)."""
    from mindspore.amp import DynamicLossScaleManager, FixedLossScaleManager
    name = "convert_to_thor_model"
    if not isinstance(manager, (FixedLossScaleManager, DynamicLossScaleManager)):
        raise ValueError(f"For '{name}', 'loss_scale_manager' must be a FixedLossScaleManager or "
                         f"a DynamicLossScaleManager, but got {type(manager).__name__}.")
    dropping = isinstance(manager, DynamicLossScaleManager) or manager.get_drop_overflow_update()
    if dropping:
        if optimizer.loss_scale != 1.0:
            raise ValueError(f"For '{name}', with a {type(manager).__name__} that drops overflow "
                             "steps the train cell removes the loss scale from the gradients "
                             "itself: build the optimizer with loss_scale=1.0, but got "
                             f"loss_scale={optimizer.loss_scale}.")
        return 1.0, manager.get_update_cell()
    sens = float(manager.get_loss_scale())
    if abs(sens - optimizer.loss_scale) > 1e-6 * sens:
        raise ValueError(f"For '{name}', the loss scale of 'loss_scale_manager' ({sens}) must "
                         f"equal the optimizer's 'loss_scale' ({optimizer.loss_scale}) with "
                         "drop_overflow_update=False (the gradients keep the scale).")
    return sens, None


class ConvertModelUtils:
    """Turn a ``Model`` built with a THOR optimizer into one that refreshes every `frequency` steps.

    See :meth:`convert_to_thor_model`.

    Supported Platforms:
        ``Ascend`` ``GPU`` ``CPU``

    Examples:
        >>> from ms_optim import ConvertModelUtils
        >>> callable(ConvertModelUtils.convert_to_thor_model)
        True
    """

    @staticmethod
    def convert_to_thor_model(model, network, loss_fn=None, optimizer=None, metrics=None,
                              amp_level="O0", loss_scale_manager=None,
                              keep_batchnorm_fp32=False):
        r"""Return a :class:`mindspore.train.Model` whose training step follows THOR's frequency.

        With a THOR `optimizer` the returned model trains through
        :class:`ms_optim.ThorTrainOneStepCell`: refresh at global steps 0, F, 2F, ... (across
        epochs, counted by the optimizer's ``global_step``), stale steps without statistics;
        evaluation (``Model.eval``, ``Model.fit``) works. Unlike upstream, which silently returns
        `model` unchanged for any other optimizer, anything but a THOR optimizer raises TypeError.

        Without `loss_fn`, `network` is the user's own train cell (the model zoo's BERT-THOR
        pattern: an ``nn.TrainOneStepCell`` or ``nn.TrainOneStepWithLossScaleCell`` subclass,
        e.g. ``BertTrainOneStepCell``, whose ``optimizer`` is `optimizer`): it is driven by
        ``ms_optim.thor.model.ThorWrapTrainCell``, which calls it unchanged and switches the
        refresh and stale graphs of the layers inside it; a dynamic loss scale of the cell is
        removed from the curvature statistics every step, and on a backend without MindSpore's
        overflow kernels (CPU) the cell gets a portable overflow check (any non-finite gradient).
        The eval network, metrics and eval indexes of `model` are kept (`metrics`, if given,
        replaces the metrics).

        Note:
            Dataset sink mode is run as the non-sink loop, with a warning naming the reason
            (logged to ``logging.getLogger('ms_optim')`` and issued by ``warnings.warn``; on CPU
            MindSpore 2.10 has no sink mode at all): the per-step choice between the refresh and
            the stale graph is made on the host. A `sink_size` smaller than the dataset keeps its
            meaning (steps per epoch, continuing through the data as a sunk loop does). Loss scaling:
            ``FixedLossScaleManager(s, drop_overflow_update=False)`` needs the optimizer's
            ``loss_scale=s`` (the gradients keep the scale; THOR removes :math:`s^2` from
            :math:`G`). ``DynamicLossScaleManager`` and ``FixedLossScaleManager(s,
            drop_overflow_update=True)`` train through ``nn.TrainOneStepWithLossScaleCell``
            (driven as in the BERT pattern above, with the portable overflow check on CPU) and
            need ``loss_scale=1.0``: a step whose gradients overflow leaves weights, moments,
            inverses and ``global_step`` unchanged (the refresh is retried on the next step) and
            the dynamic scale drops; the current scale is removed from :math:`G` each step.
            Mixed precision follows ``mindspore.train.Model``'s rules, applied to `network` (in
            place), the loss computed in float32 on the output cast to float32: with `amp_level`
            ``"O2"`` or ``"O3"`` the network is cast to float16, and `keep_batchnorm_fp32` decides
            whether BatchNorm stays in float32 (``True``: ``mindspore.amp.auto_mixed_precision``
            level ``"O2"``; ``False``: level ``"O3"``, everything in float16). ``"O1"`` runs the
            cells of ``mindspore.amp.get_white_list()`` (Dense, Conv, RNN cells, hence every
            Dense/Conv2d THOR layer) in float16 with float32 outputs, the rest in float32; it is
            applied without ``mindspore.rewrite`` (which fails on a network it already rewrote,
            e.g. inside ``Model(amp_level="O1")``). THOR's statistics and inverses are float32 at
            every level. The model zoo's order (``Model(..., amp_level=...)`` built before
            :func:`ms_optim.thor` converts the network) works for ``"O2"``/``"O3"``; with
            ``"O1"`` build the Model after :func:`ms_optim.thor` (MindSpore's O1 rewrite replaces
            the classes of the network's Dense/Conv2d cells, which THOR then cannot convert).

        Args:
            model (Model): the model built by the user.
            network (Cell): the network (without loss); without `loss_fn`: the train cell.
            loss_fn (Cell): the loss. Default: ``None``.
            optimizer (Cell): the optimizer from :func:`ms_optim.thor`. Default: ``None``.
            metrics (Union[dict, set]): evaluation metrics. Default: ``None``.
            amp_level (str): ``"O0"``, ``"O1"``, ``"O2"``, ``"O3"`` or ``"auto"`` (see Note).
                Default: ``"O0"``.
            loss_scale_manager (Union[FixedLossScaleManager, DynamicLossScaleManager]): loss
                scaling (see Note). Default: ``None``.
            keep_batchnorm_fp32 (bool): with `amp_level` ``"O2"``/``"O3"``, keep BatchNorm in
                float32 (see Note); no effect at other levels. Default: ``False``.

        Returns:
            Model.

        Raises:
            TypeError: If `model` is not a ``mindspore.train.Model``.
            TypeError: If `network` is not a Cell.
            TypeError: If `optimizer` is not the optimizer returned by :func:`ms_optim.thor`.
            TypeError: If `keep_batchnorm_fp32` is not a bool.
            ValueError: If `amp_level` is not one of ``"O0"``, ``"O1"``, ``"O2"``, ``"O3"``,
                ``"auto"``.
            ValueError: If `loss_scale_manager` is neither a FixedLossScaleManager nor a
                DynamicLossScaleManager; if it drops overflow steps and the optimizer's
                `loss_scale` is not 1, or has ``drop_overflow_update=False`` and a scale other
                than the optimizer's `loss_scale`; or, without `loss_fn`,
                `network` is not an ``nn.TrainOneStepCell``, its optimizer is not `optimizer`,
                its static ``sens`` differs from the optimizer's `loss_scale`, or
                `loss_scale_manager`, `amp_level` or `keep_batchnorm_fp32` is not the default.

        Examples:
            >>> import numpy as np
            >>> import mindspore as ms
            >>> from mindspore import nn
            >>> from ms_optim import thor, ConvertModelUtils
            >>> net = nn.SequentialCell([nn.Dense(4, 3)])
            >>> opt = thor(net, ms.Tensor(0.1, ms.float32), ms.Tensor(0.03, ms.float32), 0.9,
            ...            frequency=2)
            >>> loss = nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction='mean')
            >>> model = ms.train.Model(net, loss_fn=loss, optimizer=opt, metrics={'acc'})
            >>> model = ConvertModelUtils.convert_to_thor_model(model, net, loss, opt, metrics={'acc'})
            >>> type(model).__name__
            'ThorModel'
        """
        from .optimizer import ThorOptimizer  # local: the optimizer module imports the converter
        if not isinstance(model, Model):
            raise TypeError("For 'convert_to_thor_model', the argument 'model' must be a "
                            f"mindspore.train.Model, but got {type(model).__name__}.")
        if not isinstance(network, nn.Cell):
            raise TypeError("For 'convert_to_thor_model', the argument 'network' must be Cell, "
                            f"but got {type(network).__name__}.")
        if not isinstance(optimizer, ThorOptimizer):
            raise TypeError("For 'convert_to_thor_model', the argument 'optimizer' must be the "
                            "optimizer returned by ms_optim.thor, but got "
                            f"{type(optimizer).__name__}.")
        check_bool("convert_to_thor_model", "keep_batchnorm_fp32", keep_batchnorm_fp32)
        if not isinstance(amp_level, str) or amp_level not in _AMP_LEVELS:
            raise ValueError("For 'convert_to_thor_model', the argument 'amp_level' must be one of "
                             f"{list(_AMP_LEVELS)}, but got {amp_level!r}.")
        if loss_fn is None:
            return ConvertModelUtils._convert_train_cell_model(
                model, network, optimizer, metrics, amp_level, loss_scale_manager,
                keep_batchnorm_fp32)
        sens, update_cell = 1.0, None
        if loss_scale_manager is not None:
            sens, update_cell = _check_loss_scale_manager(loss_scale_manager, optimizer)
        net_with_loss = _amp_network_with_loss(network, loss_fn, amp_level, keep_batchnorm_fp32)
        if update_cell is None:
            train_cell = ThorTrainOneStepCell(net_with_loss, optimizer, sens=sens)
        else:
            # overflow steps dropped: MindSpore's loss-scale train cell (it unscales the gradients
            # and calls the optimizer only without overflow), driven like the zoo's BERT cells
            train_cell = ThorWrapTrainCell(
                nn.TrainOneStepWithLossScaleCell(net_with_loss, optimizer, scale_sense=update_cell),
                optimizer)
        eval_network = nn.WithEvalCell(network, loss_fn, amp_level in ("O2", "O3", "auto"))
        return ThorModel(train_cell, eval_network=eval_network, metrics=metrics,
                         eval_indexes=[0, 1, 2])

    @staticmethod
    def _convert_train_cell_model(model, network, optimizer, metrics, amp_level,
                                  loss_scale_manager, keep_batchnorm_fp32):
        """`network` is the user's train cell (no `loss_fn`): drive it, keep the model's eval."""
        name = "convert_to_thor_model"
        if not isinstance(network, nn.TrainOneStepCell):
            raise ValueError(f"For '{name}', without 'loss_fn' the argument 'network' must be the "
                             "train cell (an nn.TrainOneStepCell or nn.TrainOneStepWithLossScaleCell "
                             f"subclass, e.g. the model zoo's BertTrainOneStepCell), but got "
                             f"{type(network).__name__}.")
        if loss_scale_manager is not None or amp_level != "O0" or keep_batchnorm_fp32:
            raise ValueError(f"For '{name}', with a train cell as 'network' (no 'loss_fn') the "
                             "cell carries its own loss scaling and precision: "
                             "'loss_scale_manager', 'amp_level' and 'keep_batchnorm_fp32' must "
                             "keep their defaults (None, 'O0', False).")
        if getattr(network, "optimizer", None) is not optimizer:
            raise ValueError(f"For '{name}', the optimizer of the train cell 'network' must be "
                             "the THOR optimizer given as 'optimizer'.")
        if isinstance(network, ThorTrainOneStepCell):
            train_cell = network
        else:
            train_cell = ThorWrapTrainCell(network, optimizer)
        eval_network = getattr(model, "_eval_network", None)
        eval_indexes = getattr(model, "_eval_indexes", None) if eval_network is not None else None
        if metrics is None:
            metrics = getattr(model, "_metrics", None)
        return ThorModel(train_cell, eval_network=eval_network, metrics=metrics,
                         eval_indexes=eval_indexes)
