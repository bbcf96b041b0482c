"""THOR's frequency scheduling: a train-step cell that picks the refresh or the stale graph.

MindSpore compiles one graph per ``Cell.phase`` and reuses it: the compile-time flag ``thor`` is
read when a phase is compiled (verified in GRAPH mode: a cached phase ignores later flag
changes; in PYNATIVE the flag is read at run time). :class:`ThorTrainOneStepCell` therefore
selects the flag *and* the phase per step, so refresh steps (statistics + inverses) happen at
global steps 0, F, 2F, ... and stale steps run the cheap graph. The step number is the
optimizer's checkpointed ``global_step``, so resuming from a checkpoint continues the pattern.

Host cost per step: the step number is kept on the host and read from the device (a sync) only
on the first call and whenever ``global_step``'s storage was replaced (``load_checkpoint`` /
``load_param_into_net`` / ``set_data`` all replace it; the old storage is held, so its address
cannot be reused unnoticed). The ``thor`` flag rests False (evaluation compiles and runs without
statistics) and is flipped to True, on the cached THOR layers and the optimizer only, around
refresh steps; stale steps touch no flag.
"""
import logging

from mindspore import nn
from mindspore.train import Model

from .layers import THOR_LAYERS

__all__ = ["ThorTrainOneStepCell", "ThorModel"]

_LOG = logging.getLogger("ms_optim")
_REFRESH_PHASE = "thor_refresh"
_STALE_PHASE = "thor_stale"


class ThorTrainOneStepCell(nn.TrainOneStepCell):
    r"""One THOR training step, refreshing the curvature every `frequency` global steps.

    .. math::

        \text{refresh}_t = (t \bmod F = 0),\qquad t = \text{optimizer.global\_step}

    Note:
        ``sens`` is a static loss scale; build the optimizer with the same ``loss_scale``.
        After each call the ``thor`` flag of the THOR layers is left False, so evaluation
        between steps collects no statistics. The step number is read from the device only on
        the first call and after ``global_step`` was replaced (checkpoint load); see
        :meth:`resync_step` for other in-place changes.

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
        # the cells that read the flag, found once (a walk of the whole network per step is
        # what this replaces)
        self._thor_cells = [c for _, c in network.cells_and_names() if isinstance(c, THOR_LAYERS)]
        self._set_mode(False)
        self._host_step = None  # host copy of optimizer.global_step, None: read it
        self._step_storage = None  # global_step's storage when it was read (held: no reuse)

    def _next_step(self):
        """The global step of the next call, from the host copy unless it may be stale."""
        gs = self.optimizer.global_step
        if self._host_step is None or self._step_storage is None \
                or gs.data_ptr() != self._step_storage.data_ptr():
            self._host_step = int(gs.asnumpy().reshape(-1)[0])
            self._step_storage = gs.data
        return self._host_step

    def resync_step(self):
        """Forget the host copy of ``global_step``: the next call reads it from the device.

        Needed only if ``global_step`` was changed in place by other code than this cell (for
        example by calling the optimizer directly); a checkpoint load is detected by itself.
        """
        self._host_step = None
        self._step_storage = None

    def next_step_refreshes(self):
        """Whether the next call is a refresh step (from the optimizer's ``global_step``)."""
        return self._next_step() % self.frequency == 0

    def _set_mode(self, refresh):
        for cell in self._thor_cells:
            cell.add_flags(thor=refresh)
        self.optimizer.add_flags(thor=refresh)
        self.optimizer.thor = refresh

    def __call__(self, *args, **kwargs):
        refresh = self.next_step_refreshes()
        ok = False
        if refresh:
            self._set_mode(True)
            self.phase = _REFRESH_PHASE
        else:
            self.phase = _STALE_PHASE
        try:
            out = super().__call__(*args, **kwargs)
            ok = True
            return out
        finally:
            if refresh:
                self._set_mode(False)
            if ok:
                self._host_step += 1
            else:
                self.resync_step()


class ThorModel(Model):
    """A ``Model`` whose training loop runs step by step through :class:`ThorTrainOneStepCell`.

    Built by :meth:`ms_optim.ConvertModelUtils.convert_to_thor_model`. Dataset sink mode is
    replaced by the non-sink loop (with a warning) so that every step can pick its graph;
    evaluation (``eval``, ``fit``) works.
    """

    def _train(self, epoch, train_dataset, callbacks=None, dataset_sink_mode=True, sink_size=-1,
               initial_epoch=0, *args, **kwargs):
        if dataset_sink_mode:
            _LOG.warning("THOR: dataset sink mode is run as the non-sink loop so that the refresh "
                         "and stale graphs alternate every step (frequency is honoured).")
        return super()._train(epoch, train_dataset, callbacks, False, sink_size, initial_epoch,
                              *args, **kwargs)
