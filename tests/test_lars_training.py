"""LARS in real training set-ups: ms.Model, TrainOneStepCell, loss-scale managers, AMP,
non-finite gradients, and checkpoint resume in a fresh process."""
import os
import subprocess
import sys

import numpy as np
import pytest

import mindspore as ms
import mindspore.dataset as ds
from mindspore import Tensor, nn
from mindspore.amp import FixedLossScaleManager
from mindspore.train import Model

import ms_optim

HERE = os.path.dirname(os.path.abspath(__file__))


def _data(n=64, batch=16, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 1, 6, 6)).astype(np.float32)
    y = (x.reshape(n, -1)[:, :3].argmax(1)).astype(np.int32)
    return x, y, batch


def _dataset(x, y, batch):
    return ds.NumpySlicesDataset({"x": x, "y": y}, shuffle=False).batch(batch)


def _net():
    ms.set_seed(7)
    return nn.SequentialCell([nn.Conv2d(1, 4, 3, pad_mode="valid", has_bias=True),
                              nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Dense(4 * 16, 3)])


def _loss():
    return nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean")


def _weights(net):
    return {p.name: p.asnumpy().copy() for p in net.trainable_params()}


def _train_model(loss_scale=1.0, manager=None, amp_level="O0", epochs=2, coefficient=0.01):
    net = _net()
    opt = nn.Momentum(net.trainable_params(), 0.05, 0.9, weight_decay=1e-4, loss_scale=loss_scale)
    lars = ms_optim.LARS(opt, coefficient=coefficient, lars_filter=ms_optim.lars_filter_for(net))
    kw = {"loss_scale_manager": manager} if manager is not None else {}
    model = Model(net, _loss(), optimizer=lars, metrics={"acc"}, amp_level=amp_level, **kw)
    x, y, b = _data()
    model.train(epochs, _dataset(x, y, b), dataset_sink_mode=False)
    return net, lars, model


def test_model_train_loss_scale_invariance(mode):
    """A fixed loss scale (the only manager ms.Model accepts on CPU) gives the unscaled
    trajectory; the dynamic scale is covered with TrainOneStepWithLossScaleCell below."""
    ref, lars_ref, _ = _train_model()
    assert int(lars_ref.global_step.asnumpy()[0]) == 8
    fixed, _, _ = _train_model(128.0, FixedLossScaleManager(128.0, drop_overflow_update=False))
    w_ref = _weights(ref)
    for name, w in _weights(fixed).items():
        np.testing.assert_allclose(w, w_ref[name], rtol=2e-4, atol=2e-6, err_msg=name)


def test_model_train_improves_and_evaluates(mode):
    net, lars, model = _train_model(epochs=1, coefficient=0.5)
    x, y, b = _data(seed=0)
    before = model.eval(_dataset(x, y, b), dataset_sink_mode=False)["acc"]
    model.train(8, _dataset(x, y, b), dataset_sink_mode=False)
    after = model.eval(_dataset(x, y, b), dataset_sink_mode=False)["acc"]
    print("train accuracy before/after", before, after)
    assert after > before + 0.2, (before, after)


def test_amp_o2_trains(mode):
    net, lars, model = _train_model(amp_level="O2", manager=FixedLossScaleManager(
        64.0, drop_overflow_update=False), loss_scale=64.0, epochs=3)
    for p in net.trainable_params():
        assert p.dtype == ms.float32 and np.all(np.isfinite(p.asnumpy())), p.name
    assert int(lars.global_step.asnumpy()[0]) == 12


class PortableOverflowCell(nn.TrainOneStepWithLossScaleCell):
    """MindSpore 2.10's cell detects overflow with NPU/FloatStatus kernels that the CPU backend
    lacks; detect it portably: any non-finite gradient element."""

    def get_overflow_status(self, status, compute_output):
        flags = ()
        for grad in compute_output:
            flags += (ms.ops.cast(ms.ops.logical_not(ms.ops.isfinite(grad).all()), ms.float32),)
        return ms.ops.addn(flags) > 0


def _plain_steps(x, y, n):
    net = _net()
    lars = ms_optim.LARS(nn.Momentum(net.trainable_params(), 0.05, 0.9, weight_decay=1e-4),
                         lars_filter=ms_optim.lars_filter_for(net))
    train = nn.TrainOneStepCell(nn.WithLossCell(net, _loss()), lars)
    for _ in range(n):
        train(Tensor(x), Tensor(y))
    return _weights(net)


def test_nonfinite_gradients_skip_the_step(mode):
    """With a dynamic loss scale an overflowing step leaves weights and state untouched, and
    the finite steps equal unscaled training."""
    net = _net()
    opt = nn.Momentum(net.trainable_params(), 0.05, 0.9, weight_decay=1e-4)
    lars = ms_optim.LARS(opt, lars_filter=ms_optim.lars_filter_for(net))
    scale = nn.DynamicLossScaleUpdateCell(loss_scale_value=2.0 ** 12, scale_factor=2, scale_window=100)
    train = PortableOverflowCell(nn.WithLossCell(net, _loss()), lars, scale)
    x, y, _ = _data(16)
    train(Tensor(x), Tensor(y))
    # Weights and optimizer state (moments, lr, global_step); the loss-scale manager's own
    # counters and scale legitimately change on overflow.
    watched = list(net.get_parameters()) + list(lars.get_parameters())
    state = {p.name: p.asnumpy().copy() for p in watched}
    bad = x.copy()
    bad[0, 0, 0, 0] = np.inf
    _, overflow, _ = train(Tensor(bad), Tensor(y))
    assert bool(overflow)
    for p in watched:
        np.testing.assert_array_equal(p.asnumpy(), state[p.name], err_msg=p.name)
    train(Tensor(x), Tensor(y))
    assert int(lars.global_step.asnumpy()[0]) == 2
    expected = _plain_steps(x, y, 2)
    for name, w in _weights(net).items():
        np.testing.assert_allclose(w, expected[name], rtol=2e-4, atol=2e-6, err_msg=name)


def _job(*args):
    env = dict(os.environ, GLOG_v="3")
    res = subprocess.run([sys.executable, os.path.join(HERE, "lars_resume_job.py"), *map(str, args)],
                         capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 0, res.stderr[-3000:]


@pytest.mark.parametrize("mode_name", ["graph", "pynative"])
def test_checkpoint_resume_in_fresh_process(tmp_path, mode_name):
    """Save mid-run, load in a new process, continue: same trajectory as without the break."""
    full, first, second = (str(tmp_path / n) for n in ("full", "first", "second"))
    _job(mode_name, 0, 10, full)
    _job(mode_name, 0, 4, first)
    _job(mode_name, 4, 6, second, first + ".ckpt")
    a, b = np.load(full + ".npz"), np.load(second + ".npz")
    assert int(b["global_step"][0]) == 10
    assert set(a.files) == set(b.files)
    for k in a.files:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


@pytest.mark.parametrize("backend, inner", [("cpu", "momentum"), ("cpu", "adam"),
                                            ("portable", "momentum"), ("portable", "adam")])
def test_load_checkpoint_after_compilation_restores_optimizer_state(tmp_path, backend, inner):
    """Train, save, train on, load the checkpoint into the *compiled* train cell, continue: the
    losses repeat those after the save exactly. (MindSpore rebinds Parameters replaced by
    load_param_into_net only where the top graph reads them; LARS's non-finite skip is a graph
    branch, so without care the moments and step counter silently kept their old buffers.)"""
    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_seed(0)
    net = nn.SequentialCell([nn.Dense(4, 8), nn.ReLU(), nn.Dense(8, 3)])
    params = net.trainable_params()
    lr = Tensor(np.linspace(0.1, 0.01, 6).astype(np.float32))  # a per-step lr Parameter
    base = (nn.Momentum(params, lr, 0.9, weight_decay=1e-4)
            if inner == "momentum" else nn.Adam(params, 1e-2, weight_decay=1e-4))
    lars = ms_optim.LARS(base, coefficient=0.02, backend=backend)
    step = nn.TrainOneStepCell(nn.WithLossCell(net, nn.SoftmaxCrossEntropyWithLogits(
        sparse=True, reduction="mean")), lars)
    rng = np.random.default_rng(0)
    xs = [Tensor(rng.standard_normal((8, 4)).astype(np.float32)) for _ in range(4)]
    y = Tensor(rng.integers(0, 3, 8).astype(np.int32))
    step(xs[0], y)
    ckpt = str(tmp_path / "lars.ckpt")
    ms.save_checkpoint(step, ckpt)
    want = [float(step(x, y).asnumpy()) for x in xs[1:]]
    ms.load_param_into_net(step, ms.load_checkpoint(ckpt))
    assert int(lars.global_step.asnumpy()[0]) == 1
    got = [float(step(x, y).asnumpy()) for x in xs[1:]]
    assert lars.backend == backend
    assert got == want
    assert int(lars.global_step.asnumpy()[0]) == 4
