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
    spec, data = H.spec_and_data(kind, rng, 5)
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


class _FactorAverage(nn.Cell):
    def __init__(self, decay):
        super().__init__()
        self.decay = decay

    def construct(self, raw, weight, new):
        return kfac.factor_moving_average(raw, weight, new, self.decay)


@pytest.mark.parametrize("decay", [0.0, 0.5, 0.95])
def test_factor_moving_average_matches_float64(mode, decay):
    """Four refreshes: the running mean equals the normalised weighted mean of the factors."""
    rng = np.random.default_rng(3)
    factors = [rng.standard_normal((2, 4, 4)).astype(np.float32) for _ in range(4)]
    fn = _FactorAverage(decay)
    raw, weight = Tensor(np.zeros((2, 4, 4), np.float32)), Tensor(0.0, ms.float32)
    for k in range(1, 5):
        raw, weight, avg = fn(raw, weight, Tensor(factors[k - 1]))
        want = controls_ref.factor_average(factors[:k], decay)
        np.testing.assert_allclose(avg.asnumpy(), want, rtol=2e-6, atol=2e-6, err_msg=f"k={k}")


@pytest.mark.parametrize("kind", ["mlp", "conv"])
def test_factor_decay_training_matches_float64(mode, kind):
    """thor(factor_decay=...) over three refreshes (F = 2, 6 steps) against the float64
    reference, together with kl_clip; the averaging changes the result (it is active)."""
    import thor_helpers as H
    from ms_optim import ThorTrainOneStepCell, thor
    from reference import thor_ref
    rng = np.random.default_rng(12)
    spec, data = H.spec_and_data(kind, rng, 6)
    lr, damping, beta = [0.3, 0.2], [0.1], 0.8
    net = H.build_net(spec)
    opt = thor(net, Tensor(np.asarray(lr, np.float32)), Tensor(np.asarray(damping, np.float32)),
               0.9, weight_decay=1e-3, frequency=2, kl_clip=1e-2, factor_decay=beta)
    step = ThorTrainOneStepCell(nn.WithLossCell(net, H.loss_fn()), opt)
    losses = [float(step(*H.to_ms(x, y)).asnumpy()) for x, y in data]
    ref_layers, ref_losses = thor_ref.run_thor(spec, data, lr, damping, 0.9, 2, weight_decay=1e-3,
                                               kl_clip=1e-2, factor_decay=beta)
    plain, _ = thor_ref.run_thor(spec, data, lr, damping, 0.9, 2, weight_decay=1e-3, kl_clip=1e-2)
    np.testing.assert_allclose(losses, ref_losses, rtol=5e-4)
    for got, want in zip(net.trainable_params(), H.spec_params(ref_layers)):
        np.testing.assert_allclose(got.asnumpy(), want, rtol=5e-4, atol=1e-5, err_msg=got.name)
    assert any(not np.allclose(a, b, rtol=1e-3) for a, b in zip(H.spec_params(ref_layers),
                                                                 H.spec_params(plain)))
    assert float(opt.thor_factor_weight[0].asnumpy()) == pytest.approx(1 - beta ** 3, rel=1e-6)


@pytest.mark.parametrize("kwargs,steps,saved,state", [
    (dict(frequency=2, factor_decay=0.7), 6, 4, "thor_avg_a."),
    # factor_frequency: saved mid-period, after a factor step
    (dict(frequency=4, factor_decay=0.7, factor_frequency=2), 9, 5, "thor_avg_a."),
    # the damping multiplier after two adaptations
    (dict(frequency=2, adaptive_damping=0.5), 7, 3, "thor_damping_scale"),
    # eigen-decompositions and their (T, lambda)
    (dict(frequency=2, inverse_method="eigh"), 6, 3, "thor_t.")])
def test_control_state_is_checkpointed_and_resume_is_exact(tmp_path, kwargs, steps, saved,
                                                           state):
    """The controls' state (`state`: running means, damping multiplier, eigen-decompositions)
    and global_step are in the checkpoint: `saved` steps, save, load into a fresh run, the
    remaining steps == the uninterrupted run, bit for bit."""
    import thor_helpers as H
    from ms_optim import ThorTrainOneStepCell, thor
    rng = np.random.default_rng(5)
    spec = H.mlp_spec(rng)
    data = H.batches(rng, steps, 8, (6,))

    def build():
        net = H.build_net(spec)
        opt = thor(net, Tensor(np.float32(0.2)), Tensor(np.float32(0.1)), 0.9, **kwargs)
        return net, opt, ThorTrainOneStepCell(nn.WithLossCell(net, H.loss_fn()), opt)

    net, _, step = build()
    for x, y in data:
        step(*H.to_ms(x, y))
    _, opt2, step2 = build()
    initial = {p.name: p.asnumpy().copy() for p in opt2.get_parameters() if p.name.startswith(state)}
    for x, y in data[:saved]:
        step2(*H.to_ms(x, y))
    changed = [n for n, v in initial.items()
               if not np.array_equal(v, dict(opt2.parameters_and_names())[n].asnumpy())]
    assert initial and changed, f"no {state}* state was written: the test would test nothing"
    ckpt = str(tmp_path / "ctrl.ckpt")
    ms.save_checkpoint(step2, ckpt)
    net3, opt3, step3 = build()
    ms.load_param_into_net(step3, ms.load_checkpoint(ckpt))
    for name in changed:
        np.testing.assert_array_equal(dict(opt3.parameters_and_names())[name].asnumpy(),
                                      dict(opt2.parameters_and_names())[name].asnumpy())
    for x, y in data[saved:]:
        step3(*H.to_ms(x, y))
    for a, b in zip(net.trainable_params(), net3.trainable_params()):
        np.testing.assert_array_equal(b.asnumpy(), a.asnumpy(), err_msg=a.name)


@pytest.mark.parametrize("bad,err", [("0.9", TypeError), (True, TypeError), (1.0, ValueError),
                                     (-0.1, ValueError), (float("nan"), ValueError)])
def test_factor_decay_validation(bad, err):
    from ms_optim import thor
    net = nn.SequentialCell([nn.Dense(3, 2)])
    with pytest.raises(err, match="'factor_decay'"):
        thor(net, Tensor(0.1, ms.float32), Tensor(0.1, ms.float32), 0.9, factor_decay=bad)
    assert type(net[0]) is nn.Dense  # untouched


def test_thor_recommended_is_read_only_and_usable(mode):
    """thor(..., **THOR_RECOMMENDED) sets exactly those controls and trains; the mapping is
    read-only (dict() gives a copy)."""
    import ms_optim
    import thor_helpers as H
    from ms_optim import THOR_RECOMMENDED, ThorTrainOneStepCell, thor
    with pytest.raises(TypeError):
        THOR_RECOMMENDED["kl_clip"] = 1.0
    assert set(THOR_RECOMMENDED) <= {"kl_clip", "factor_decay"}
    rng = np.random.default_rng(2)
    spec = H.mlp_spec(rng)
    data = H.batches(rng, 4, 8, (6,))
    net = H.build_net(spec)
    opt = thor(net, Tensor(np.float32(0.1)), Tensor(np.float32(0.03)), 0.9, frequency=2,
               **ms_optim.THOR_RECOMMENDED)
    assert opt.kl_clip == THOR_RECOMMENDED.get("kl_clip")
    assert opt.factor_decay == THOR_RECOMMENDED.get("factor_decay")
    step = ThorTrainOneStepCell(nn.WithLossCell(net, H.loss_fn()), opt)
    losses = [float(step(*H.to_ms(x, y)).asnumpy()) for x, y in data]
    assert np.all(np.isfinite(losses))


@pytest.mark.parametrize("kind,freq,k", [("mlp", 4, 1), ("conv", 4, 2)])
def test_factor_frequency_training_matches_float64(mode, kind, freq, k):
    """factor_frequency K: statistics every K steps into the running means, inverses every F
    steps, over 9 steps (refreshes 0, 4, 8) against the float64 reference; differs from K = F."""
    import thor_helpers as H
    from ms_optim import ThorTrainOneStepCell, thor
    from reference import thor_ref
    rng = np.random.default_rng(21)
    spec, data = H.spec_and_data(kind, rng, 9)
    lr, damping, beta = [0.05], [0.2], 0.7
    net = H.build_net(spec)
    opt = thor(net, Tensor(np.asarray(lr, np.float32)), Tensor(np.asarray(damping, np.float32)),
               0.9, weight_decay=1e-3, frequency=freq, factor_decay=beta, factor_frequency=k)
    step = ThorTrainOneStepCell(nn.WithLossCell(net, H.loss_fn()), opt)
    losses, inv = [], []
    for x, y in data:
        losses.append(float(step(*H.to_ms(x, y)).asnumpy()))
        inv.append(opt.a_inv[0].asnumpy().copy())
    ref_layers, ref_losses = thor_ref.run_thor(spec, data, lr, damping, 0.9, freq,
                                               weight_decay=1e-3, factor_decay=beta,
                                               factor_frequency=k)
    every_f, _ = thor_ref.run_thor(spec, data, lr, damping, 0.9, freq, weight_decay=1e-3,
                                   factor_decay=beta)
    np.testing.assert_allclose(losses, ref_losses, rtol=5e-4)
    for got, want in zip(net.trainable_params(), H.spec_params(ref_layers)):
        np.testing.assert_allclose(got.asnumpy(), want, rtol=5e-4, atol=1e-5, err_msg=got.name)
    assert any(not np.allclose(a, b, rtol=1e-3) for a, b in zip(H.spec_params(ref_layers),
                                                                 H.spec_params(every_f)))
    collected = len([t for t in range(9) if t % k == 0])
    assert float(opt.thor_factor_weight[0].asnumpy()) == pytest.approx(1 - beta ** collected,
                                                                        rel=1e-6)
    for t in range(1, 9):  # the inverses change on refresh steps only
        assert np.array_equal(inv[t], inv[t - 1]) == (t % freq != 0), t


@pytest.mark.parametrize("kwargs,err,match", [
    (dict(factor_frequency=2), ValueError, "needs 'factor_decay'"),
    (dict(factor_decay=0.9, factor_frequency=3), ValueError, "divisor of 'frequency'"),
    (dict(factor_decay=0.9, factor_frequency=0), ValueError, "divisor of 'frequency'"),
    (dict(factor_decay=0.9, factor_frequency=2.0), TypeError, "'factor_frequency'"),
    (dict(factor_decay=0.9, factor_frequency=True), TypeError, "'factor_frequency'")])
def test_factor_frequency_validation(kwargs, err, match):
    from ms_optim import thor
    net = nn.SequentialCell([nn.Dense(3, 2)])
    with pytest.raises(err, match=match):
        thor(net, Tensor(0.1, ms.float32), Tensor(0.1, ms.float32), 0.9, frequency=4, **kwargs)
    assert type(net[0]) is nn.Dense  # untouched
