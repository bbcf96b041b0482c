"""thor(adaptive_damping=omega): the Levenberg-Marquardt damping multiplier, against float64."""
import numpy as np
import pytest

import mindspore as ms
from mindspore import Tensor, nn

import thor_helpers as H
from ms_optim import ThorTrainOneStepCell, thor
from ms_optim.ops import kfac
from reference import thor_ref


# ---- the pure functions --------------------------------------------------------------------
def _ref_rho(loss_change, model_change):
    if not (np.isfinite(model_change) and model_change < 0):
        return float("nan")
    if not np.isfinite(loss_change):
        return float("-inf")
    return loss_change / model_change


def _ref_scale(s, rho, omega, lo, hi):
    if rho > 0.75:
        s = s * omega
    elif rho < 0.25:
        s = s / omega
    return min(max(s, lo), hi)


class _Lm(nn.Cell):
    def construct(self, loss_change, model_change, scale):
        rho = kfac.reduction_ratio(loss_change, model_change)
        return rho, kfac.lm_damping_scale(scale, rho, 0.5, 0.1, 4.0)


@pytest.mark.parametrize("dl,dm,s", [
    (-0.3, -0.4, 1.0),       # rho 0.75: kept
    (-0.39, -0.4, 1.0),      # rho > 3/4: smaller damping
    (-0.05, -0.4, 1.0),      # rho < 1/4: larger damping
    (0.2, -0.4, 1.0),        # the loss went up: rho < 0
    (float("inf"), -0.4, 3.0),  # the loss blew up: -inf, larger damping, clipped at 4
    (float("nan"), -0.4, 1.0),
    (-0.3, 0.0, 1.0),        # no predicted decrease: no information, kept
    (-0.3, 0.2, 1.0),
    (-0.3, float("nan"), 1.0),
    (-0.39, -0.4, 0.15)])    # clipped at 0.1
def test_lm_rule_matches_reference(mode, dl, dm, s):
    rho, new = _Lm()(Tensor(dl, ms.float32), Tensor(dm, ms.float32), Tensor(s, ms.float32))
    want = _ref_rho(dl, dm)
    rho = float(rho.asnumpy())
    if np.isnan(want):
        assert np.isnan(rho)
    else:
        assert rho == pytest.approx(want, rel=1e-6)
    assert float(new.asnumpy()) == pytest.approx(_ref_scale(s, want, 0.5, 0.1, 4.0), rel=1e-6)


def _block_diag(m, block=128):
    return thor_ref.block_diag_part(m, block)


@pytest.mark.parametrize("d_out,d_in,groups", [(5, 7, 1), (130, 200, 1), (6, 9, 3)])
def test_kron_curvature_matches_float64_and_inverts_the_rule(d_out, d_in, groups):
    """T <D, (G_bd + dI) D (A_bd + dI)> per group, against float64 (blocks and their padding
    included); and C applied to the preconditioned gradient gives back the gradient:
    g~^T C g~ = <g~, g>."""
    rng = np.random.default_rng(4)
    t, lam = 3.0, 0.2
    delta = np.sqrt(lam / t)
    step = rng.standard_normal((groups * d_out, d_in))
    a_blocks, g_blocks, want = [], [], 0.0
    pa_inv, pg_inv = [], []
    for j in range(groups):
        xa = rng.standard_normal((2 * d_in, d_in))
        xg = rng.standard_normal((2 * d_out, d_out))
        a, g = xa.T @ xa / d_in, xg.T @ xg / d_out
        a_d, g_d = _block_diag(a + delta * np.eye(d_in)), _block_diag(g + delta * np.eye(d_out))
        sj = step[j * d_out:(j + 1) * d_out]
        want += t * np.sum(sj * (g_d @ sj @ a_d))
        a_blocks.append(thor_ref.diag_blocks(a))
        g_blocks.append(thor_ref.diag_blocks(g))
        pa_inv.append(thor_ref.diag_blocks(np.linalg.inv(a_d)))
        pg_inv.append(thor_ref.diag_blocks(np.linalg.inv(g_d)))
    f32 = lambda x: Tensor(np.concatenate(x).astype(np.float32))  # noqa: E731
    got = float(kfac.kron_curvature(f32(g_blocks), Tensor(step.astype(np.float32)), f32(a_blocks),
                                    t, Tensor(np.float32(delta)), groups).asnumpy())
    assert got == pytest.approx(want, rel=2e-5)
    grad = rng.standard_normal(step.shape).astype(np.float32)
    pre = kfac.kron_precondition(f32(pg_inv), Tensor(grad), f32(pa_inv), t, groups)
    quad = float(kfac.kron_curvature(f32(g_blocks), pre, f32(a_blocks), t,
                                     Tensor(np.float32(delta)), groups).asnumpy())
    assert quad == pytest.approx(float(np.sum(pre.asnumpy() * grad)), rel=1e-4)


def test_embedding_and_layernorm_curvature_match_float64():
    rng = np.random.default_rng(8)
    v, e, lam, n = 6, 4, 0.09, 10
    a = rng.uniform(0, 1, v)
    xg = rng.standard_normal((8, e))
    g = xg.T @ xg
    step = rng.standard_normal((v, e))
    delta = np.sqrt(lam)
    want = np.sum(step * (np.diag(a + delta) @ step @ (g + delta * np.eye(e))))
    got = kfac.embedding_curvature(Tensor(a.astype(np.float32)), Tensor(step.astype(np.float32)),
                                   Tensor(g.astype(np.float32)), Tensor(np.float32(delta)))
    assert float(got.asnumpy()) == pytest.approx(want, rel=1e-5)
    grad = rng.standard_normal(5)
    s5 = rng.standard_normal(5)
    want = np.sum(s5 * s5 * (grad * grad / n + np.sqrt(lam)))
    got = kfac.layernorm_curvature(Tensor(grad.astype(np.float32)), Tensor(s5.astype(np.float32)),
                                   n, Tensor(np.float32(lam)))
    assert float(got.asnumpy()) == pytest.approx(want, rel=1e-5)


# ---- end to end ----------------------------------------------------------------------------
def _spec_data(kind, rng, steps):
    if kind == "grouped":
        return H.grouped_conv_spec(rng), H.batches(rng, steps, 3, (4, 7, 6))
    return H.spec_and_data(kind, rng, steps)


@pytest.mark.parametrize("kind", ["mlp", "conv", "grouped"])
def test_adaptive_damping_training_matches_float64(mode, kind):
    """Nine steps, refreshes at 0, 2, 4, 6, 8: losses, weights, the reduction ratios and the
    damping multiplier after every refresh equal the float64 reference (which evaluates the
    loss at the new weights on the same batch); the multiplier moved."""
    rng = np.random.default_rng(21)
    spec, data = _spec_data(kind, rng, 9)
    lr, damping, omega, bounds = [0.1, 0.05], [0.05], 0.5, (0.01, 100.0)
    net = H.build_net(spec)
    opt = thor(net, Tensor(np.asarray(lr, np.float32)), Tensor(np.asarray(damping, np.float32)),
               0.9, weight_decay=1e-3, frequency=2, kl_clip=1e-2, adaptive_damping=omega,
               damping_scale_bounds=bounds)
    step = ThorTrainOneStepCell(nn.WithLossCell(net, H.loss_fn()), opt)
    losses, trace = [], []
    for t, (x, y) in enumerate(data):
        losses.append(float(step(*H.to_ms(x, y)).asnumpy()))
        if t % 2 == 0:
            trace.append((t, float(opt.thor_lm_rho.asnumpy()),
                          float(opt.thor_damping_scale.asnumpy())))
    ref_trace = []
    ref_layers, ref_losses = thor_ref.run_thor(spec, data, lr, damping, 0.9, 2, weight_decay=1e-3,
                                               kl_clip=1e-2, adaptive_damping=omega,
                                               scale_bounds=bounds, trace=ref_trace)
    np.testing.assert_allclose(losses, ref_losses, rtol=5e-4)
    for got, want in zip(net.trainable_params(), H.spec_params(ref_layers)):
        np.testing.assert_allclose(got.asnumpy(), want, rtol=5e-4, atol=1e-5, err_msg=got.name)
    assert [t for t, _, _ in trace] == [t for t, _, _ in ref_trace]
    for (t, rho, s), (_, rho_ref, s_ref) in zip(trace, ref_trace):
        if np.isnan(rho_ref):
            assert np.isnan(rho), t
        else:
            assert rho == pytest.approx(rho_ref, rel=2e-3, abs=1e-4), t
        assert s == pytest.approx(s_ref, rel=1e-6), t
    assert any(s != 1.0 for _, _, s in trace)  # the adaptation acted
    assert float(opt.thor_lm_model.asnumpy()) == 0.0  # consumed


class _BnNet(nn.Cell):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, pad_mode="same", has_bias=False)
        self.bn = nn.BatchNorm2d(3)
        self.relu = nn.ReLU()
        self.flatten = nn.Flatten()
        self.fc = nn.Dense(3 * 5 * 5, 4)

    def construct(self, x):
        return self.fc(self.flatten(self.relu(self.bn(self.conv(x)))))


def test_extra_forward_changes_nothing_but_the_multiplier(mode):
    """With bounds (1, 1) the multiplier stays 1: the run equals the run without
    adaptive_damping bit for bit, BatchNorm moving statistics included (the extra forward of the
    adaptation restores them), while rho was computed on every refresh step."""
    rng = np.random.default_rng(3)
    data = [(Tensor(rng.standard_normal((6, 2, 5, 5)).astype(np.float32)),
             Tensor(rng.integers(0, 4, 6).astype(np.int32))) for _ in range(5)]

    def run(**kw):
        ms.set_seed(1)
        net = _BnNet()
        opt = thor(net, Tensor(np.float32(0.05)), Tensor(np.float32(0.05)), 0.9, frequency=2, **kw)
        step = ThorTrainOneStepCell(nn.WithLossCell(net, H.loss_fn()), opt)
        rhos = []
        for x, y in data:
            step(x, y)
            if kw:
                rhos.append(float(opt.thor_lm_rho.asnumpy()))
        return {p.name: p.asnumpy() for p in net.get_parameters()}, rhos

    plain, _ = run()
    adapted, rhos = run(adaptive_damping=0.5, damping_scale_bounds=(1.0, 1.0))
    assert set(plain) == set(adapted)
    assert any(n.endswith("moving_mean") for n in plain)
    for name, value in plain.items():
        np.testing.assert_array_equal(adapted[name], value, err_msg=name)
    assert np.isfinite(rhos[0])


def test_adaptive_damping_through_a_loss_scale_cell(mode):
    """ConvertModelUtils with a loss-scale manager (the user-cell path, ThorWrapTrainCell): the
    adaptation runs on the wrapped cell's loss network and gives the same run as
    ThorTrainOneStepCell."""
    from mindspore.train import DynamicLossScaleManager, Model
    from ms_optim import ConvertModelUtils
    rng = np.random.default_rng(6)
    spec, data = H.spec_and_data("mlp", rng, 5)

    def run(wrapped):
        net = H.build_net(spec)
        opt = thor(net, Tensor(np.float32(0.1)), Tensor(np.float32(0.05)), 0.9, frequency=2,
                   adaptive_damping=0.5)
        loss = H.loss_fn()
        if wrapped:
            model = ConvertModelUtils.convert_to_thor_model(
                Model(net, loss, opt), net, loss, opt,
                loss_scale_manager=DynamicLossScaleManager(2.0 ** 10, 2, 1000))
            cell = model._train_network
            assert type(cell).__name__ == "ThorWrapTrainCell"
        else:
            cell = ThorTrainOneStepCell(nn.WithLossCell(net, loss), opt)
        scales = []
        for x, y in data:
            cell(*H.to_ms(x, y))
            scales.append(float(opt.thor_damping_scale.asnumpy()))
        return [p.asnumpy() for p in net.trainable_params()], scales

    w_plain, s_plain = run(False)
    w_wrap, s_wrap = run(True)
    assert s_wrap == s_plain and s_plain[-1] != 1.0
    for a, b in zip(w_plain, w_wrap):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kwargs,err,match", [
    (dict(adaptive_damping="0.5"), TypeError, "'adaptive_damping'"),
    (dict(adaptive_damping=True), TypeError, "'adaptive_damping'"),
    (dict(adaptive_damping=1.0), ValueError, "'adaptive_damping'"),
    (dict(adaptive_damping=0.0), ValueError, "'adaptive_damping'"),
    (dict(adaptive_damping=float("nan")), ValueError, "'adaptive_damping'"),
    (dict(damping_scale_bounds=(0.1, 10.0)), ValueError, "needs 'adaptive_damping'"),
    (dict(adaptive_damping=0.5, damping_scale_bounds=(2.0, 10.0)), ValueError,
     "'damping_scale_bounds'"),
    (dict(adaptive_damping=0.5, damping_scale_bounds=(0.1, float("inf"))), ValueError,
     "'damping_scale_bounds'"),
    (dict(adaptive_damping=0.5, damping_scale_bounds=(0.1,)), TypeError,
     "'damping_scale_bounds'"),
    (dict(adaptive_damping=0.5, damping_scale_bounds="0.1,10"), TypeError,
     "'damping_scale_bounds'")])
def test_adaptive_damping_validation(kwargs, err, match):
    net = nn.SequentialCell([nn.Dense(3, 2)])
    with pytest.raises(err, match=match):
        thor(net, Tensor(0.1, ms.float32), Tensor(0.1, ms.float32), 0.9, **kwargs)
    assert type(net[0]) is nn.Dense  # untouched


def test_block_without_curvature_is_refused_before_conversion():
    import ms_optim
    from ms_optim.thor.blocks import CurvatureBlock, KroneckerBlock

    class NoCurvature(KroneckerBlock):
        curvature = CurvatureBlock.curvature

    class LmDense(nn.Dense):
        pass

    class LmDenseThor(ms_optim.DenseThor):
        pass

    def convert(cell):
        new = LmDenseThor(cell.in_channels, cell.out_channels)
        new.weight, new.bias = cell.weight, cell.bias
        return new

    ms_optim.register_thor_layer(LmDense, convert, block=NoCurvature)
    net = nn.SequentialCell([LmDense(4, 3), nn.Dense(3, 2)])
    with pytest.raises(TypeError, match="NoCurvature.*curvature"):
        thor(net, Tensor(0.1, ms.float32), Tensor(0.1, ms.float32), 0.9, adaptive_damping=0.5)
    assert type(net[0]) is LmDense and type(net[1]) is nn.Dense  # untouched
    opt = thor(net, Tensor(0.1, ms.float32), Tensor(0.1, ms.float32), 0.9)  # fine without it
    assert [type(b).__name__ for b in opt.blocks] == ["NoCurvature", "KroneckerBlock"]


def test_default_optimizer_has_no_adaptation_state():
    """Without adaptive_damping the optimizer carries no LM Parameters (checkpoint keys as
    before) and the train cell no adaptation graph."""
    net = nn.SequentialCell([nn.Dense(3, 2)])
    opt = thor(net, Tensor(0.1, ms.float32), Tensor(0.1, ms.float32), 0.9)
    names = {p.name for p in opt.get_parameters()}
    assert not {n for n in names if "lm_" in n or "damping_scale" in n}
    step = ThorTrainOneStepCell(nn.WithLossCell(net, H.loss_fn()), opt)
    assert step.damping_adaptation is None
