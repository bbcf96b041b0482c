"""THOR end to end: against the float64 NumPy reference, degenerate cases, loss scale, faults."""
import numpy as np
import pytest

import mindspore as ms
from mindspore import Tensor, nn

from ms_optim import ThorTrainOneStepCell, thor
from reference import thor_ref
import thor_helpers as H
import kernel_standins

STEPS = 5      # F = 2: refreshes at 0, 2, 4 and stale steps 1, 3 (past the end of lr at 4)
FREQ = 2
RTOL = 5e-4    # float32 vs float64 over 5 steps; measured worst case fails 1e-4, passes 5e-4


def _train(spec, data, lr, damping, momentum=0.9, loss_scale=1.0, weight_decay=0.0, **kw):
    net = H.build_net(spec)
    opt = thor(net, Tensor(np.asarray(lr, np.float32)), Tensor(np.asarray(damping, np.float32)),
               momentum, weight_decay=weight_decay, loss_scale=loss_scale, frequency=FREQ, **kw)
    step = ThorTrainOneStepCell(nn.WithLossCell(net, H.loss_fn()), opt, sens=loss_scale)
    losses = [float(step(*H.to_ms(x, y)).asnumpy()) for x, y in data]
    return net, opt, losses


@pytest.mark.parametrize("kind", ["mlp", "conv"])
def test_matches_numpy_reference(mode, kind):
    rng = np.random.default_rng(0)
    if kind == "mlp":
        spec = H.mlp_spec(rng)
        data = H.batches(rng, STEPS, 8, (6,))
    else:
        spec = H.finish_conv_spec(H.conv_spec(rng), rng)
        data = H.batches(rng, STEPS, 3, H.conv_input_shape())
    lr = [0.2, 0.15, 0.1, 0.05]            # shorter than the run: the last value holds
    damping = [0.3, 0.2, 0.1, 0.05, 0.04]
    net, opt, losses = _train(spec, data, lr, damping, weight_decay=1e-3)
    ref_layers, ref_losses = thor_ref.run_thor(spec, data, lr, damping, 0.9, FREQ,
                                               weight_decay=1e-3)
    np.testing.assert_allclose(losses, ref_losses, rtol=RTOL)
    for got, want in zip(net.trainable_params(), H.spec_params(ref_layers)):
        np.testing.assert_allclose(got.asnumpy(), want, rtol=RTOL, atol=1e-5, err_msg=got.name)
    assert int(opt.global_step.asnumpy()[0]) == STEPS
    assert not opt.thor_fault_count.asnumpy().any()


@pytest.mark.parametrize("extra", [{}, {"kl_clip": 1e-3, "factor_decay": 0.5}])
def test_grouped_and_depthwise_conv_match_reference(mode, extra):
    """Grouped (2 groups) and depthwise (channel multiplier 2) convolutions: one Kronecker pair
    per group, against the float64 reference (which treats each group as a conv of its own)."""
    rng = np.random.default_rng(11)
    spec = H.grouped_conv_spec(rng)
    data = H.batches(rng, STEPS, 3, (4, 7, 6))
    lr, damping = [0.1], [0.2, 0.1, 0.05]
    net, opt, losses = _train(spec, data, lr, damping, weight_decay=1e-3, **extra)
    assert opt.n_layers == 3
    assert net[0].matrix_a.shape == (2, 18, 18) and net[0].matrix_g.shape == (2, 3, 3)
    assert net[2].matrix_a.shape == (6, 6, 6) and net[2].matrix_g.shape == (6, 2, 2)
    ref_layers, ref_losses = thor_ref.run_thor(spec, data, lr, damping, 0.9, FREQ,
                                               weight_decay=1e-3, **extra)
    np.testing.assert_allclose(losses, ref_losses, rtol=RTOL)
    for got, want in zip(net.trainable_params(), H.spec_params(ref_layers)):
        np.testing.assert_allclose(got.asnumpy(), want, rtol=RTOL, atol=1e-5, err_msg=got.name)
    assert not opt.thor_fault_count.asnumpy().any()


def test_multi_block_statistics_match_reference(mode):
    """Widths 140 and 130 > 128: every factor is two diagonal blocks, collected as blocks only."""
    rng = np.random.default_rng(8)
    spec = H.mlp_spec(rng, sizes=(140, 130, 4))
    data = H.batches(rng, 3, 8, (140,))
    net, opt, losses = _train(spec, data, [0.1], [0.3])
    assert net[0].matrix_a.shape == (2, 128, 128) and net[0].matrix_g.shape == (2, 128, 128)
    ref_layers, ref_losses = thor_ref.run_thor(spec, data, [0.1], [0.3], 0.9, FREQ)
    np.testing.assert_allclose(losses, ref_losses, rtol=RTOL)
    for got, want in zip(net.trainable_params(), H.spec_params(ref_layers)):
        np.testing.assert_allclose(got.asnumpy(), want, rtol=RTOL, atol=1e-5, err_msg=got.name)
    assert not opt.thor_fault_count.asnumpy().any()


def test_nesterov_matches_reference(mode):
    rng = np.random.default_rng(1)
    spec = H.mlp_spec(rng)
    data = H.batches(rng, 3, 8, (6,))
    net, _, _ = _train(spec, data, [0.1], [0.1], use_nesterov=True)
    ref_layers, _ = thor_ref.run_thor(spec, data, [0.1], [0.1], 0.9, FREQ, nesterov=True)
    for got, want in zip(net.trainable_params(), H.spec_params(ref_layers)):
        np.testing.assert_allclose(got.asnumpy(), want, rtol=RTOL, atol=1e-5)


def test_identity_factors_equal_momentum(mode):
    """Stored inverses pinned to I and no refresh (global step starts at 1): THOR == Momentum."""
    rng = np.random.default_rng(2)
    spec = H.mlp_spec(rng)
    data = H.batches(rng, 3, 8, (6,))
    net = H.build_net(spec)
    opt = thor(net, Tensor(0.1, ms.float32), Tensor(0.5, ms.float32), 0.9, frequency=100)
    opt.global_step.set_data(Tensor(np.array([1], np.int32)))  # test hook: skip the refresh
    step = ThorTrainOneStepCell(nn.WithLossCell(net, H.loss_fn()), opt)
    ref_net = H.build_net(spec)
    ref = nn.TrainOneStepCell(nn.WithLossCell(ref_net, H.loss_fn()),
                              nn.Momentum(ref_net.trainable_params(), 0.1, 0.9))
    for x, y in data:
        step(*H.to_ms(x, y))
        ref(*H.to_ms(x, y))
    for got, want in zip(net.trainable_params(), ref_net.trainable_params()):
        np.testing.assert_allclose(got.asnumpy(), want.asnumpy(), rtol=1e-6, atol=1e-7)


def test_loss_scale_invariance(mode):
    rng = np.random.default_rng(3)
    spec = H.finish_conv_spec(H.conv_spec(rng), rng)
    data = H.batches(rng, 3, 3, H.conv_input_shape())
    net1, _, _ = _train(spec, data, [0.1], [0.1])
    net2, _, _ = _train(spec, data, [0.1], [0.1], loss_scale=128.0)
    for a, b in zip(net1.trainable_params(), net2.trainable_params()):
        np.testing.assert_allclose(a.asnumpy(), b.asnumpy(), rtol=1e-4, atol=1e-6)


def test_stale_steps_collect_nothing(mode):
    rng = np.random.default_rng(4)
    spec = H.mlp_spec(rng)
    data = H.batches(rng, 3, 8, (6,))
    net = H.build_net(spec)
    opt = thor(net, Tensor(0.1, ms.float32), Tensor(0.1, ms.float32), 0.9, frequency=3)
    step = ThorTrainOneStepCell(nn.WithLossCell(net, H.loss_fn()), opt)
    seen = []
    for x, y in data:
        step(*H.to_ms(x, y))
        seen.append((net[0].matrix_a.asnumpy().copy(), opt.a_inv[0].asnumpy().copy()))
    assert seen[0][0].shape == (1, 6, 6)  # the single diagonal block of A (6 <= 128)
    np.testing.assert_allclose(seen[0][0][0], data[0][0].T @ data[0][0] / 8, rtol=1e-4, atol=1e-6)
    for i in (1, 2):  # stale: statistics and inverses untouched
        np.testing.assert_array_equal(seen[i][0], seen[0][0])
        np.testing.assert_array_equal(seen[i][1], seen[0][1])


def test_non_finite_statistics_keep_last_inverse(mode):
    rng = np.random.default_rng(5)
    spec = H.mlp_spec(rng)
    net = H.build_net(spec)
    opt = thor(net, Tensor(0.0, ms.float32), Tensor(0.1, ms.float32), 0.9, frequency=2)
    step = ThorTrainOneStepCell(nn.WithLossCell(net, H.loss_fn()), opt)
    x, y = H.batches(rng, 1, 8, (6,))[0]
    step(*H.to_ms(x, y))
    step(*H.to_ms(x, y))
    good = [p.asnumpy().copy() for p in opt.a_inv]
    x_bad = x.copy()
    x_bad[0, 0] = 1e20  # x^T x overflows to inf in float32; activations and gradients stay finite
    step(*H.to_ms(x_bad, y))
    # both layers see overflowing inputs (the hidden activations are ~1e19 too)
    for k in range(2):
        np.testing.assert_array_equal(opt.a_inv[k].asnumpy(), good[k])
    assert opt.thor_fault_count.asnumpy().tolist() == [1, 1]
    for p in list(net.trainable_params()) + list(opt.moments):
        assert np.isfinite(p.asnumpy()).all(), p.name
    step(*H.to_ms(x, y))  # stale
    step(*H.to_ms(x, y))  # next refresh (lr = 0: same weights, same data) recovers the inverse
    assert opt.thor_fault_count.asnumpy().tolist() == [1, 1]
    np.testing.assert_allclose(opt.a_inv[0].asnumpy(), good[0], rtol=1e-6)


def test_zero_damping_singular_factor_is_counted_not_fatal(mode):
    rng = np.random.default_rng(6)
    net = H.build_net(H.mlp_spec(rng))
    opt = thor(net, Tensor(0.1, ms.float32), Tensor(0.0, ms.float32), 0.9, frequency=2)
    step = ThorTrainOneStepCell(nn.WithLossCell(net, H.loss_fn()), opt)
    x, y = H.batches(rng, 1, 1, (6,))[0]  # one sample: A has rank 1, lambda = 0
    step(*H.to_ms(x, y))
    assert opt.thor_fault_count.asnumpy().tolist() == [1, 1]
    for p in net.trainable_params():
        assert np.isfinite(p.asnumpy()).all()


def test_ascend_kernel_composition_end_to_end(mode):
    """The optimizer with the Ascend kernel set (CusCholeskyTrsm contract emulated on CPU by a
    stand-in) gives the reference result: U^{-1} U^{-T} composition, identity padding to 128."""
    from ms_optim.thor import _kernels
    rng = np.random.default_rng(7)
    spec = H.finish_conv_spec(H.conv_spec(rng), rng)
    data = H.batches(rng, 3, 3, H.conv_input_shape())
    net = H.build_net(spec)
    opt = thor(net, Tensor(0.1, ms.float32), Tensor(0.2, ms.float32), 0.9, frequency=FREQ)
    opt.kernels = _kernels.AscendKernels(upper_inverse=kernel_standins.upper_inverse_standin)
    step = ThorTrainOneStepCell(nn.WithLossCell(net, H.loss_fn()), opt)
    for x, y in data:
        step(*H.to_ms(x, y))
    ref_layers, _ = thor_ref.run_thor(spec, data, [0.1], [0.2], 0.9, FREQ)
    for got, want in zip(net.trainable_params(), H.spec_params(ref_layers)):
        np.testing.assert_allclose(got.asnumpy(), want, rtol=RTOL, atol=1e-5, err_msg=got.name)
