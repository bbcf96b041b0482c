"""THOR (and LARS) under mixed precision, trained in real float16 on CPU (nothing monkeypatched).

A conv + BatchNorm + dense net on fixed data trains a few steps (THOR frequency 2: refreshes at
global steps 0 and 2) at every amp level, through ``ms.Model`` + ``convert_to_thor_model`` and
through ``ThorTrainOneStepCell``. Each run checks: finite, falling loss; statistics and inverses
float32 (and actually refreshed); the weight *updates* after the run agree with the float32 (O0)
run within ``UPDATE_RTOL``.

Tolerance, measured (``python tests/test_thor_amp.py`` prints the table): the relative error of
the per-parameter update :math:`\\|\\Delta w - \\Delta w_{O0}\\| / \\|\\Delta w_{O0}\\|` after
4 steps (two refreshes) is at most 1.8e-3 at every level, GRAPH and PYNATIVE (float16 unit
roundoff 2^-11 = 4.9e-4, amplified by the forward/backward and the inverses), 3.6e-4..4.2e-4 for
LARS. ``UPDATE_RTOL = 1e-2`` leaves a ~5x margin and still fails on the errors this file guards
against: a refresh that read the statistics before the backward hook wrote them (fixed here:
57 % on the last Dense), a missing or doubled loss-scale division (>= 100 %). Loss scales 1, 128
and 1024 (powers of two: exact rescaling in binary floating point) gave bit-identical weights.
"""
import os
import sys

import numpy as np
import pytest

import mindspore as ms
import mindspore.dataset as ds
from mindspore import Tensor, amp, nn
from mindspore.amp import FixedLossScaleManager

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ms_optim  # noqa: E402
from ms_optim import ConvertModelUtils, ThorTrainOneStepCell, thor  # noqa: E402
import thor_helpers as H

UPDATE_RTOL = 1e-2
STEPS, BATCH, FREQ = 4, 8, 2
LR, DAMP = 0.01, 0.3


def _data(seed=3):
    """One fixed batch, fed STEPS times (so the loss must fall step after step)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((BATCH, 2, 6, 6)).astype(np.float32)
    y = (x.reshape(len(x), -1)[:, :3].argmax(1)).astype(np.int32)
    return np.tile(x, (STEPS, 1, 1, 1)), np.tile(y, STEPS)


def _dataset(x, y):
    return ds.NumpySlicesDataset({"x": x, "y": y}, shuffle=False).batch(BATCH)


class ConvNet(nn.Cell):
    """conv (THOR) -> BatchNorm -> ReLU -> flatten -> dense (THOR), fixed initial weights."""

    def __init__(self):
        super().__init__()
        rng = np.random.default_rng(0)
        self.conv = nn.Conv2d(2, 4, 3, pad_mode="pad", padding=1, has_bias=False,
                              weight_init=Tensor((rng.standard_normal((4, 2, 3, 3)) * 0.3)
                                                 .astype(np.float32)))
        self.bn = nn.BatchNorm2d(4)
        self.relu = nn.ReLU()
        self.flat = nn.Flatten()
        self.fc = nn.Dense(4 * 36, 3, bias_init="zeros", weight_init=Tensor((rng.standard_normal((3, 144)) * 0.1)
                                                       .astype(np.float32)))

    def construct(self, x):
        return self.fc(self.flat(self.relu(self.bn(self.conv(x)))))


def _loss():
    return nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean")


def _weights(net):
    return {p.name: p.asnumpy().astype(np.float64) for p in net.trainable_params()}


def _thor(net, loss_scale):
    return thor(net, Tensor(LR, ms.float32), Tensor(DAMP, ms.float32), 0.9, weight_decay=1e-4,
                loss_scale=float(loss_scale), frequency=FREQ)


def run_model(level, keep_bn=False, loss_scale=1.0, zoo_order=False):
    """ms.Model(amp_level=level) + convert_to_thor_model(amp_level=level). ``zoo_order``: as the
    model zoo's ResNet script, the Model is built (with Momentum, casting the network) before
    ``thor`` converts the network."""
    x, y = _data()
    net = ConvNet()
    init = _weights(net)
    loss = _loss()
    kw = {}
    if loss_scale != 1.0 or level == "O2":  # Model's O2 default manager is dynamic (not on CPU)
        kw["loss_scale_manager"] = FixedLossScaleManager(loss_scale, drop_overflow_update=False)
    if zoo_order:
        first = nn.Momentum(net.trainable_params(), LR, 0.9, loss_scale=float(loss_scale))
        model = ms.train.Model(net, loss_fn=loss, optimizer=first, amp_level=level,
                               keep_batchnorm_fp32=keep_bn, **kw)
        opt = _thor(net, loss_scale)
    else:
        opt = _thor(net, loss_scale)
        model = ms.train.Model(net, loss_fn=loss, optimizer=opt, amp_level=level,
                               keep_batchnorm_fp32=keep_bn, **kw)
    model = ConvertModelUtils.convert_to_thor_model(model, net, loss, opt, amp_level=level,
                                                    keep_batchnorm_fp32=keep_bn, **kw)
    cb = H.LossRecorder()
    model.train(1, _dataset(x, y), callbacks=[cb], dataset_sink_mode=False)
    return net, opt, init, cb.losses


def run_cell(how, loss_scale=1.0):
    """ThorTrainOneStepCell on a network made float16 by the user: ``how`` is an
    ``amp.auto_mixed_precision`` level applied after ``thor``, or ``"to_float"``
    (``net.to_float(float16)`` before ``thor``; the loss kept float32)."""
    x, y = _data()
    net = ConvNet()
    init = _weights(net)
    loss = _loss()
    if how == "to_float":
        net.to_float(ms.float16)
        opt = _thor(net, loss_scale)
        backbone = net
        loss.to_float(ms.float32)
    else:
        opt = _thor(net, loss_scale)
        backbone = amp.auto_mixed_precision(net, how)
    step = ThorTrainOneStepCell(nn.WithLossCell(backbone, loss), opt, sens=float(loss_scale))
    step.set_train()
    losses = []
    for i in range(STEPS):
        sl = slice(i * BATCH, (i + 1) * BATCH)
        losses.append(float(step(Tensor(x[sl]), Tensor(y[sl])).asnumpy()))
    return net, opt, init, losses


def update_errors(init, net, ref_init, ref_net):
    """Per-parameter relative error of the update against the reference run."""
    out = {}
    ref = _weights(ref_net)
    for name, w in _weights(net).items():
        du, du_ref = w - init[name], ref[name] - ref_init[name]
        out[name] = float(np.linalg.norm(du - du_ref) / max(np.linalg.norm(du_ref), 1e-30))
    return out


def check_run(net, opt, losses):
    assert all(np.isfinite(losses)), losses
    assert all(b < a for a, b in zip(losses, losses[1:])), losses
    assert int(opt.global_step.asnumpy()[0]) == STEPS
    for group in (opt.stat_a, opt.stat_g, opt.stat_t, opt.stat_n, opt.a_inv, opt.g_inv,
                  opt.t_keep):
        for p in group:
            assert p.dtype == ms.float32, (p.name, p.dtype)
            assert np.all(np.isfinite(p.asnumpy())), p.name
    # refreshed from this step's statistics: inverses are not a multiple of I, which is what
    # a refresh that read the statistics before the backward hook wrote them leaves: (0 + dI)^-1
    for stat, inv in list(zip(opt.stat_a, opt.a_inv)) + list(zip(opt.stat_g, opt.g_inv)):
        assert np.abs(stat.asnumpy()).max() > 0, stat.name
        v = inv.asnumpy()
        eye = np.broadcast_to(np.eye(v.shape[-1], dtype=np.float32), v.shape)
        assert np.abs(v - v[..., :1, :1] * eye).max() > 1e-3 * np.abs(v).max(), inv.name
    assert not opt.thor_fault_count.asnumpy().any()
    for p in net.trainable_params():
        assert p.dtype == ms.float32 and np.all(np.isfinite(p.asnumpy())), p.name


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    """MindSpore's O1 rewrite writes ./rewritten_network/: keep it out of the repository."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="module")
def reference():
    old = ms.get_context("mode")
    ms.set_context(mode=ms.GRAPH_MODE)
    try:
        net, opt, init, losses = run_model("O0")
    finally:
        ms.set_context(mode=old)
    check_run(net, opt, losses)
    return net, init, losses


def _assert_close_to_reference(reference, net, init):
    ref_net, ref_init, _ = reference
    errs = update_errors(init, net, ref_init, ref_net)
    assert max(errs.values()) < UPDATE_RTOL, errs
    return errs


SLOW = pytest.mark.slow  # the other combinations of the same code paths (make test-all)


@pytest.mark.parametrize("level,keep_bn,loss_scale,zoo_order", [
    ("O1", False, 1.0, False), ("O2", True, 128.0, False),
    pytest.param("O2", False, 128.0, False, marks=SLOW),
    pytest.param("O3", True, 128.0, False, marks=SLOW), ("O3", False, 128.0, False),
    pytest.param("auto", False, 128.0, False, marks=SLOW),
    ("O3", False, 128.0, True), pytest.param("O2", True, 128.0, True, marks=SLOW)])
def test_model_amp_trains_like_float32(reference, level, keep_bn, loss_scale, zoo_order):
    ms.set_context(mode=ms.GRAPH_MODE)
    net, opt, init, losses = run_model(level, keep_bn, loss_scale, zoo_order)
    assert type(net.conv).__name__ == "Conv2dThor" and type(net.fc).__name__ == "DenseThor"
    check_run(net, opt, losses)
    _assert_close_to_reference(reference, net, init)


@pytest.mark.parametrize("how", ["O1", "O2", pytest.param("O3", marks=SLOW),
                                 pytest.param("to_float", marks=SLOW)])
def test_train_cell_amp_trains_like_float32(reference, how):
    ms.set_context(mode=ms.GRAPH_MODE)
    net, opt, init, losses = run_cell(how, loss_scale=1.0 if how == "O1" else 128.0)
    check_run(net, opt, losses)
    _assert_close_to_reference(reference, net, init)


@pytest.mark.parametrize("level,keep_bn,loss_scale", [
    pytest.param("O1", False, 1.0, marks=SLOW), ("O2", True, 128.0),
    pytest.param("O3", False, 128.0, marks=SLOW)])
def test_model_amp_pynative(reference, level, keep_bn, loss_scale):
    old = ms.get_context("mode")
    ms.set_context(mode=ms.PYNATIVE_MODE)
    try:
        net, opt, init, losses = run_model(level, keep_bn, loss_scale)
    finally:
        ms.set_context(mode=old)
    check_run(net, opt, losses)
    _assert_close_to_reference(reference, net, init)


def test_loss_scale_does_not_change_the_float16_result():
    """O3 with loss scale 128 vs 1024: powers of two rescale exactly in binary floating point
    (no value under- or overflows here) and THOR removes the scale from gradients and G, so the
    weights are bit-identical (measured)."""
    ms.set_context(mode=ms.GRAPH_MODE)
    net_a, _, _, _ = run_model("O3", False, 128.0)
    net_b, _, _, _ = run_model("O3", False, 1024.0)
    for a, b in zip(net_a.trainable_params(), net_b.trainable_params()):
        np.testing.assert_array_equal(b.asnumpy(), a.asnumpy(), err_msg=a.name)


def test_float16_layers_compute_in_float16_and_statistics_in_float32():
    """The compute really is float16 (the O3 output differs from float32 by float16 rounding),
    while the statistics equal the float32 formulas of the float16-rounded inputs."""
    ms.set_context(mode=ms.GRAPH_MODE)
    rng = np.random.default_rng(5)
    x = rng.standard_normal((4, 2, 6, 6)).astype(np.float32)
    net32, net16 = ConvNet(), ConvNet()
    thor(net32, Tensor(LR, ms.float32), Tensor(DAMP, ms.float32), 0.9, frequency=FREQ)
    thor(net16, Tensor(LR, ms.float32), Tensor(DAMP, ms.float32), 0.9, frequency=FREQ)
    net16.to_float(ms.float16)
    net32.set_train(False)
    net16.set_train(False)
    out32 = net32(Tensor(x)).asnumpy()
    out16 = net16(Tensor(x))
    assert out16.dtype == ms.float16
    diff = np.abs(out16.asnumpy().astype(np.float32) - out32).max()
    assert 0 < diff < 5e-2 * np.abs(out32).max(), diff
    # conv statistic A from the float16-rounded input, formed in float32 (im2col is exact)
    x16 = x.astype(np.float16).astype(np.float64)
    xp = np.pad(x16, ((0, 0), (0, 0), (1, 1), (1, 1)))
    patches = np.stack([xp[:, c, i:i + 6, j:j + 6] for c in range(2) for i in range(3)
                        for j in range(3)], -1).reshape(-1, 18)
    a_ref = patches.T @ patches / (4 * 36)
    a16 = net16.conv.matrix_a.asnumpy()
    assert net16.conv.matrix_a.dtype == ms.float32
    np.testing.assert_allclose(a16[0], a_ref, rtol=1e-5, atol=1e-6)


def test_user_o1_rewrite_keeps_thor_layers_whole():
    """amp.auto_mixed_precision(net, "O1") (mindspore.rewrite) on a THOR net: no NameError, the
    THOR layers are the same objects (kept whole: their statistics are not cast to float16)."""
    ms.set_context(mode=ms.GRAPH_MODE)
    net = ConvNet()
    _thor(net, 1.0)
    conv, fc = net.conv, net.fc
    new = amp.auto_mixed_precision(net, "O1")
    assert new.conv is conv and new.fc is fc
    assert type(conv).__name__ == "Conv2dThor" and type(fc).__name__ == "DenseThor"


def test_convert_model_rejects_bad_amp_level():
    net = ConvNet()
    opt = _thor(net, 1.0)
    loss = _loss()
    model = ms.train.Model(net, loss_fn=loss, optimizer=opt)
    with pytest.raises(ValueError, match="'amp_level' must be one of"):
        ConvertModelUtils.convert_to_thor_model(model, net, loss, opt, amp_level="O4")


# ---- LARS under mixed precision ----------------------------------------------------------------
def run_lars(level, loss_scale=1.0):
    x, y = _data()
    net = ConvNet()
    init = _weights(net)
    opt = nn.Momentum(net.trainable_params(), 0.05, 0.9, weight_decay=1e-4, loss_scale=loss_scale)
    lars = ms_optim.LARS(opt, coefficient=0.01, lars_filter=ms_optim.lars_filter_for(net))
    kw = {}
    if level != "O0":
        kw["loss_scale_manager"] = FixedLossScaleManager(loss_scale, drop_overflow_update=False)
    model = ms.train.Model(net, _loss(), optimizer=lars, amp_level=level, **kw)
    cb = H.LossRecorder()
    model.train(1, _dataset(x, y), callbacks=[cb], dataset_sink_mode=False)
    return net, init, cb.losses


@pytest.fixture(scope="module")
def lars_reference():
    old = ms.get_context("mode")
    ms.set_context(mode=ms.GRAPH_MODE)
    try:
        return run_lars("O0")
    finally:
        ms.set_context(mode=old)


@pytest.mark.parametrize("level", ["O2", "O3"])
def test_lars_amp_trains_like_float32(lars_reference, level):
    ms.set_context(mode=ms.GRAPH_MODE)
    net, init, losses = run_lars(level, 128.0)
    assert all(np.isfinite(losses)), losses
    assert all(b < a for a, b in zip(losses, losses[1:])), losses
    ref_net, ref_init, _ = lars_reference
    errs = update_errors(init, net, ref_init, ref_net)
    assert max(errs.values()) < UPDATE_RTOL, errs


def _measure():
    """Print the update errors that justify UPDATE_RTOL (python tests/test_thor_amp.py)."""
    ms.set_device("CPU")
    ms.set_context(mode=ms.GRAPH_MODE)
    ref_net, _, ref_init, _ = run_model("O0")
    rows = []
    for level, keep_bn, ls in [("O0", False, 1.0), ("O1", False, 1.0), ("O2", True, 128.0),
                               ("O2", False, 128.0), ("O3", True, 128.0), ("O3", False, 128.0),
                               ("O3", False, 1024.0), ("O3", False, 1.0), ("auto", False, 128.0)]:
        net, _, init, losses = run_model(level, keep_bn, ls)
        rows.append((f"Model {level} keep_bn={keep_bn} ls={ls:g}",
                     max(update_errors(init, net, ref_init, ref_net).values()), losses))
    for level, keep_bn in [("O3", False), ("O2", True)]:
        net, _, init, losses = run_model(level, keep_bn, 128.0, zoo_order=True)
        rows.append((f"Model {level} keep_bn={keep_bn} ls=128 zoo order",
                     max(update_errors(init, net, ref_init, ref_net).values()), losses))
    for how in ["O1", "O2", "O3", "to_float"]:
        net, _, init, losses = run_cell(how, 1.0 if how == "O1" else 128.0)
        rows.append((f"ThorTrainOneStepCell {how}",
                     max(update_errors(init, net, ref_init, ref_net).values()), losses))
    net_a, _, init_a, _ = run_model("O3", False, 128.0)
    net_b, _, init_b, _ = run_model("O3", False, 1024.0)
    rows.append(("Model O3 ls=1024 vs ls=128", max(update_errors(init_b, net_b, init_a, net_a)
                                                   .values()), []))
    ms.set_context(mode=ms.PYNATIVE_MODE)
    for level, keep_bn, ls in [("O1", False, 1.0), ("O2", True, 128.0), ("O3", False, 128.0)]:
        net, _, init, losses = run_model(level, keep_bn, ls)
        rows.append((f"PYNATIVE Model {level} keep_bn={keep_bn} ls={ls:g}",
                     max(update_errors(init, net, ref_init, ref_net).values()), losses))
    ms.set_context(mode=ms.GRAPH_MODE)
    lref, lref_init, _ = run_lars("O0")
    for level in ["O2", "O3"]:
        net, init, losses = run_lars(level, 128.0)
        rows.append((f"LARS Model {level} ls=128",
                     max(update_errors(init, net, lref_init, lref).values()), losses))
    print(f"{'run':42s} {'max update rel err':>18s}  losses")
    for name, err, losses in rows:
        print(f"{name:42s} {err:18.3e}  {np.round(losses, 4).tolist()}")


if __name__ == "__main__":
    _measure()
