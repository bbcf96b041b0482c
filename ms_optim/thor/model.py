"""THOR's frequency scheduling: a train-step cell that picks the refresh or the stale graph.

MindSpore compiles one graph per ``Cell.phase`` and reuses it: the compile-time flag ``thor`` is
read when a phase is compiled (verified in GRAPH mode: a cached phase ignores later flag
changes; in PYNATIVE the flag is read at run time). :class:`ThorTrainOneStepCell` therefore sets
the flag *and* the phase from the optimizer's ``global_step`` before every call, so refresh steps
(statistics + inverses) happen at global steps 0, F, 2F, ... and stale steps run the cheap graph.
Because the counter is the optimizer's checkpointed ``global_step``, resuming from a checkpoint
continues the same pattern.
"""
import logging

from mindspore import nn
from mindspore.train import Model

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
        After each call the network's ``thor`` flag is left False, so evaluation between steps
        collects no statistics.

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
        optimizer.thor_driven = True

    def next_step_refreshes(self):
        """Whether the next call is a refresh step (reads the optimizer's ``global_step``)."""
        step = int(self.optimizer.global_step.asnumpy().reshape(-1)[0])
        return step % self.frequency == 0

    def _set_mode(self, refresh):
        self.network.add_flags_recursive(thor=refresh)
        self.optimizer.add_flags(thor=refresh)
        self.optimizer.thor = refresh

    def __call__(self, *args, **kwargs):
        refresh = self.next_step_refreshes()
        self._set_mode(refresh)
        self.phase = _REFRESH_PHASE if refresh else _STALE_PHASE
        try:
            return super().__call__(*args, **kwargs)
        finally:
            self.network.add_flags_recursive(thor=False)


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
