"""THOR's optional controls (keyword-only, off by default) against float64 references."""
import numpy as np
import pytest

import mindspore as ms
from mindspore import Tensor, nn

from ms_optim.ops import kfac
from reference import controls_ref


class _KlClip(nn.Cell):
    def __init__(self, kappa):
        super().__init__()
        self.kappa = kappa

    def construct(self, pre, grads, lr):
        return kfac.kl_clip_scale(pre, grads, lr, self.kappa)


@pytest.mark.parametrize("kappa,lr", [(1e-3, 0.1), (1e-6, 0.5), (10.0, 0.01), (1e-3, 0.0)])
def test_kl_clip_scale_matches_float64(mode, kappa, lr):
    rng = np.random.default_rng(7)
    shapes = [(4, 3), (5,), (2, 3, 3, 3)]
    grads = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    # preconditioned gradients correlated with the gradients (positive curvature)
    pre = [(g * rng.uniform(0.5, 2.0, g.shape)).astype(np.float32) for g in grads]
    fn = _KlClip(kappa)
    got = float(fn(tuple(Tensor(p) for p in pre), tuple(Tensor(g) for g in grads),
                   Tensor(lr, ms.float32)).asnumpy())
    want = controls_ref.kl_clip_scale(pre, grads, lr, kappa)
    assert got == pytest.approx(want, rel=1e-5)
    assert 0.0 < got <= 1.0


def test_kl_clip_scale_guards(mode):
    g = np.ones((3,), np.float32)
    fn = _KlClip(1e-3)
    lr = Tensor(0.1, ms.float32)
    # negative or zero inner product: no scaling
    assert float(fn((Tensor(-g),), (Tensor(g),), lr).asnumpy()) == 1.0
    assert float(fn((Tensor(0 * g),), (Tensor(g),), lr).asnumpy()) == 1.0
    # non-finite: no scaling (the fault guards handle the step), never NaN
    bad = g.copy()
    bad[0] = np.inf
    assert float(fn((Tensor(bad),), (Tensor(g),), lr).asnumpy()) == 1.0


@pytest.mark.parametrize("kind", ["mlp", "conv"])
def test_kl_clip_training_matches_float64(mode, kind):
    """thor(kl_clip=...) end to end (refresh and stale steps) against the float64 reference."""
    import thor_helpers as H
    from ms_optim import ThorTrainOneStepCell, thor
    from reference import thor_ref
    rng = np.random.default_rng(11)
    if kind == "mlp":
        spec = H.mlp_spec(rng)
        data = H.batches(rng, 5, 8, (6,))
    else:
        spec = H.finish_conv_spec(H.conv_spec(rng), rng)
        data = H.batches(rng, 5, 3, H.conv_input_shape())
    lr, damping, kappa = [0.3, 0.2], [0.1], 1e-3
    net = H.build_net(spec)
    opt = thor(net, Tensor(np.asarray(lr, np.float32)), Tensor(np.asarray(damping, np.float32)),
               0.9, weight_decay=1e-3, frequency=2, kl_clip=kappa)
    step = ThorTrainOneStepCell(nn.WithLossCell(net, H.loss_fn()), opt)
    losses = [float(step(*H.to_ms(x, y)).asnumpy()) for x, y in data]
    ref_layers, ref_losses = thor_ref.run_thor(spec, data, lr, damping, 0.9, 2, weight_decay=1e-3,
                                               kl_clip=kappa)
    unclipped, _ = thor_ref.run_thor(spec, data, lr, damping, 0.9, 2, weight_decay=1e-3)
    np.testing.assert_allclose(losses, ref_losses, rtol=5e-4)
    for got, want in zip(net.trainable_params(), H.spec_params(ref_layers)):
        np.testing.assert_allclose(got.asnumpy(), want, rtol=5e-4, atol=1e-5, err_msg=got.name)
    # the clip was active (otherwise this test would not test it)
    assert float(opt.thor_kl_scale.asnumpy()) < 1.0
    assert any(not np.allclose(a, b) for a, b in zip(H.spec_params(ref_layers),
                                                      H.spec_params(unclipped)))


@pytest.mark.parametrize("bad,err", [("0.1", TypeError), (True, TypeError), (0.0, ValueError),
                                     (-1.0, ValueError), (float("inf"), ValueError)])
def test_kl_clip_validation(bad, err):
    from ms_optim import thor
    net = nn.SequentialCell([nn.Dense(3, 2)])
    with pytest.raises(err, match="'kl_clip'"):
        thor(net, Tensor(0.1, ms.float32), Tensor(0.1, ms.float32), 0.9, kl_clip=bad)
    assert type(net[0]) is nn.Dense  # untouched
