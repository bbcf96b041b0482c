"""THOR and dataset sink mode: what the backend allows, the warning, sink_size semantics.

MindSpore 2.10 has no dataset sink mode on CPU (checked below on MindSpore itself), so
``ThorModel`` runs a sink request as the non-sink loop, warns with the reason, and keeps
`sink_size` as the number of steps per epoch, continuing through the data like a sunk loop.
"""
import logging
import warnings

import numpy as np
import pytest

import mindspore as ms
import mindspore.dataset as ds
from mindspore import Tensor, nn

from ms_optim import ConvertModelUtils, ThorTrainOneStepCell, thor
import thor_helpers as H

LR = np.array([0.2, 0.1, 0.08, 0.06, 0.05], np.float32)
DAMP = np.array([0.3, 0.2, 0.15, 0.1, 0.08, 0.06], np.float32)


def _build(freq=2, steps=3):
    rng = np.random.default_rng(21)
    spec = H.mlp_spec(rng)
    data = H.batches(rng, steps, 4, (6,))
    net = H.build_net(spec)
    opt = thor(net, Tensor(LR), Tensor(DAMP), 0.9, weight_decay=1e-3, frequency=freq)
    return net, opt, data


def _dataset(data):
    x = np.concatenate([b[0] for b in data]).astype(np.float32)
    y = np.concatenate([b[1] for b in data]).astype(np.int32)
    return ds.NumpySlicesDataset({"x": x, "y": y}, shuffle=False).batch(4)


class _Steps(ms.train.Callback):
    def __init__(self, opt):
        super().__init__()
        self.opt = opt
        self.steps, self.epochs, self.losses = [], [], []

    def on_train_step_end(self, run_context):
        cb = run_context.original_args()
        self.steps.append(int(self.opt.global_step.asnumpy()[0]))
        self.epochs.append(cb.cur_epoch_num)
        self.losses.append(float(cb.net_outputs.asnumpy()))


def _thor_model(net, opt):
    loss = H.loss_fn()
    model = ms.train.Model(net, loss_fn=loss, optimizer=opt)
    return ConvertModelUtils.convert_to_thor_model(model, net, loss, opt)


def test_mindspore_cpu_has_no_dataset_sink():
    """The reason the warning gives, checked on MindSpore itself."""
    from mindspore.train.dataset_helper import DatasetHelper
    _, _, data = _build()
    for mode in (ms.GRAPH_MODE, ms.PYNATIVE_MODE):
        old = ms.get_context("mode")
        ms.set_context(mode=mode)
        try:
            with pytest.raises(RuntimeError,
                               match="device target is CPU|InitDataSetQueue.* on CPU"):
                DatasetHelper(_dataset(data), dataset_sink_mode=True, sink_size=2, epoch_num=1)
        finally:
            ms.set_context(mode=old)
    with pytest.raises(ValueError, match="ascend or gpu"):
        ms.data_sink(lambda x, y: x, _dataset(data), sink_size=2)


def test_sink_request_warns_with_reason(caplog):
    net, opt, data = _build()
    model = _thor_model(net, opt)
    with caplog.at_level(logging.WARNING, logger="ms_optim"):
        with pytest.warns(RuntimeWarning, match="no dataset sink mode on the CPU backend"):
            model.train(1, _dataset(data), dataset_sink_mode=True)
    assert any("no dataset sink mode on the CPU backend" in r.getMessage() for r in caplog.records)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the non-sink request does not warn
        model.train(1, _dataset(data), dataset_sink_mode=False)
    assert int(opt.global_step.asnumpy()[0]) == 6


def test_sink_size_is_steps_per_epoch_continuing_through_data(mode):
    """3 batches, sink_size 2, 3 epochs: 6 steps over batches 0 1 | 2 0 | 1 2 (as a sunk loop),
    F = 2 refreshing at global steps 0, 2, 4; bit-identical to 2 non-sink epochs and to the
    step-by-step loop."""
    net_a, opt_a, data = _build()
    cb_a = _Steps(opt_a)
    with pytest.warns(RuntimeWarning):
        _thor_model(net_a, opt_a).train(3, _dataset(data), callbacks=[cb_a],
                                        dataset_sink_mode=True, sink_size=2)
    assert cb_a.steps == [1, 2, 3, 4, 5, 6] and cb_a.epochs == [1, 1, 2, 2, 3, 3]

    net_b, opt_b, _ = _build()
    cb_b = _Steps(opt_b)
    _thor_model(net_b, opt_b).train(2, _dataset(data), callbacks=[cb_b], dataset_sink_mode=False)

    net_c, opt_c, _ = _build()
    step = ThorTrainOneStepCell(nn.WithLossCell(net_c, H.loss_fn()), opt_c)
    losses_c = [float(step(*H.to_ms(x, y)).asnumpy()) for x, y in data + data]

    np.testing.assert_array_equal(cb_a.losses, cb_b.losses)
    np.testing.assert_array_equal(cb_a.losses, losses_c)
    for a, b, c in zip(net_a.trainable_params(), net_b.trainable_params(),
                       net_c.trainable_params()):
        np.testing.assert_array_equal(a.asnumpy(), b.asnumpy(), err_msg=a.name)
        np.testing.assert_array_equal(a.asnumpy(), c.asnumpy(), err_msg=a.name)
    for a, c in zip(opt_a.a_inv, opt_c.a_inv):
        np.testing.assert_array_equal(a.asnumpy(), c.asnumpy(), err_msg=a.name)
