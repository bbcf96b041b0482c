"""thor(inverse_method="eigh"): the damping on the eigenvalues of the Kronecker factors."""
import numpy as np
import pytest

import mindspore as ms
from mindspore import Tensor, nn

import thor_helpers as H
from ms_optim import ThorTrainOneStepCell, thor
from ms_optim.ops import kfac
from reference import thor_ref


def _spd(rng, d, rank=None):
    x = rng.standard_normal((rank or 2 * d, d))
    return x.T @ x / (rank or 2 * d)


@pytest.mark.parametrize("d_out,d_in,groups,rank", [(5, 7, 1, None), (4, 6, 3, None),
                                                    (5, 7, 1, 3)])
def test_kron_eigen_precondition_is_the_exact_damped_inverse(d_out, d_in, groups, rank):
    """Against a float64 solve with the full Kronecker matrix: (T A (x) G + lambda I)^-1 vec(g)
    per group (also with rank-deficient factors: the damping alone keeps it invertible)."""
    rng = np.random.default_rng(3)
    t, lam = 4.0, 0.05
    grad = rng.standard_normal((groups * d_out, d_in))
    q_a, e_a, q_g, e_g, want = [], [], [], [], []
    for j in range(groups):
        a, g = _spd(rng, d_in, rank), _spd(rng, d_out, rank)
        gj = grad[j * d_out:(j + 1) * d_out]
        mat = t * np.kron(a, g) + lam * np.eye(d_in * d_out)  # acts on column-major vec
        want.append(np.linalg.solve(mat, gj.reshape(-1, order="F")).reshape(gj.shape, order="F"))
        qa, ea = kfac.eigen_of_blocks(Tensor(a[None].astype(np.float32)))
        qg, eg = kfac.eigen_of_blocks(Tensor(g[None].astype(np.float32)))
        q_a.append(qa.asnumpy()), e_a.append(ea.asnumpy()), q_g.append(qg.asnumpy())
        e_g.append(eg.asnumpy())
    cat = lambda x: Tensor(np.concatenate(x))  # noqa: E731
    got = kfac.kron_eigen_precondition(cat(q_g), cat(e_g), Tensor(grad.astype(np.float32)),
                                       cat(q_a), cat(e_a), t, Tensor(np.float32(lam)), groups)
    np.testing.assert_allclose(got.asnumpy(), np.concatenate(want), rtol=2e-3, atol=2e-4)


def test_eigen_of_blocks_and_padded_blocks_match_float64():
    """A 200-wide input factor: two 128-blocks, the last one zero-padded; the eigen rule on the
    blocks equals the float64 rule on the block-diagonal factor (padding cut)."""
    rng = np.random.default_rng(5)
    d_out, d_in, t, lam = 6, 200, 2.0, 0.1
    a, g = _spd(rng, d_in), _spd(rng, d_out)
    blocks_a = thor_ref.diag_blocks(a)
    q, e = kfac.eigen_of_blocks(Tensor(blocks_a.astype(np.float32)))
    rebuilt = np.einsum("bij,bj,bkj->bik", q.asnumpy(), e.asnumpy(), q.asnumpy())
    np.testing.assert_allclose(rebuilt, blocks_a, atol=2e-5)
    assert np.all(e.asnumpy() >= 0)
    grad = rng.standard_normal((d_out, d_in))
    qg, eg = kfac.eigen_of_blocks(Tensor(g[None].astype(np.float32)))
    got = kfac.kron_eigen_precondition(qg, eg, Tensor(grad.astype(np.float32)), q, e, t,
                                       Tensor(np.float32(lam)))
    want = thor_ref.eigen_precondition(np.linalg.eigh(g), grad,
                                       np.linalg.eigh(thor_ref.block_diag_part(a)), t, lam)
    np.testing.assert_allclose(got.asnumpy(), want, rtol=2e-3, atol=2e-4)


def _spec_data(kind, rng, steps):
    if kind == "grouped":
        return H.grouped_conv_spec(rng), H.batches(rng, steps, 3, (4, 7, 6))
    return H.spec_and_data(kind, rng, steps)


@pytest.mark.parametrize("kind,controls", [
    ("conv", {}), ("grouped", {}),
    ("mlp", dict(kl_clip=1e-2, factor_decay=0.8, adaptive_damping=0.5)),
    ("grouped", dict(kl_clip=1e-2, factor_decay=0.8, adaptive_damping=0.5))])
def test_eigh_training_matches_float64(mode, kind, controls):
    """Seven steps, refreshes at 0, 2, 4, 6, against the float64 reference (np.linalg.eigh of the
    block-diagonal factors); the result differs from the Cholesky rule (factored damping)."""
    rng = np.random.default_rng(17)
    spec, data = _spec_data(kind, rng, 7)
    lr, damping = [0.05, 0.03], [0.05]
    net = H.build_net(spec)
    opt = thor(net, Tensor(np.asarray(lr, np.float32)), Tensor(np.asarray(damping, np.float32)),
               0.9, weight_decay=1e-3, frequency=2, inverse_method="eigh", **controls)
    assert {type(b).__name__ for b in opt.blocks} == {"EigenKroneckerBlock"}
    step = ThorTrainOneStepCell(nn.WithLossCell(net, H.loss_fn()), opt)
    losses = [float(step(*H.to_ms(x, y)).asnumpy()) for x, y in data]
    ref_kw = dict(controls)
    if "adaptive_damping" in ref_kw:
        ref_kw["scale_bounds"] = (1e-3, 1e3)
    ref_layers, ref_losses = thor_ref.run_thor(spec, data, lr, damping, 0.9, 2, weight_decay=1e-3,
                                               inverse_method="eigh", **ref_kw)
    chol, _ = thor_ref.run_thor(spec, data, lr, damping, 0.9, 2, weight_decay=1e-3, **ref_kw)
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-3)
    # Compared relative to how far each parameter moved. Measured worst case (grouped net,
    # no controls, GRAPH): 2.1e-3 for eigh against 1.6e-6 for the Cholesky rule on the same run
    # (PYNATIVE: 9e-5): with batch 3 against widths up to 504 most eigenvalue products are ~0,
    # their directions are divided by lambda alone, and float32 rounding is amplified by up to
    # (T e_G e_A + lambda) / lambda; the other cases stay below 1.3e-4.
    for got, want, init in zip(net.trainable_params(), H.spec_params(ref_layers),
                               H.spec_params(spec)):
        moved = np.max(np.abs(want - init))
        assert np.max(np.abs(got.asnumpy() - want)) <= 5e-3 * moved, got.name
    assert any(not np.allclose(a, b, rtol=1e-3) for a, b in zip(H.spec_params(ref_layers),
                                                                 H.spec_params(chol)))
    assert int(opt.thor_fault_count.asnumpy().sum()) == 0


def test_eigh_fault_guard_keeps_the_last_good_decomposition():
    """Zero damping on singular factors (batch 2 < width): rejected, counted, the stored
    decomposition and kept (T, lambda) stay those of the last good refresh, weights finite."""
    rng = np.random.default_rng(2)
    spec = H.mlp_spec(rng)
    data = H.batches(rng, 3, 2, (6,))
    net = H.build_net(spec)
    damping = np.array([0.1, 0.1, 0.0], np.float32)  # the refresh at step 2 has lambda = 0
    opt = thor(net, Tensor(np.float32(0.05)), Tensor(damping), 0.9, frequency=2,
               inverse_method="eigh")
    step = ThorTrainOneStepCell(nn.WithLossCell(net, H.loss_fn()), opt)
    for x, y in data[:2]:
        step(*H.to_ms(x, y))
    before = [p.asnumpy().copy() for p in list(opt.a_inv) + list(opt.g_inv) + list(opt.t_keep)]
    assert before[-1].tolist() == pytest.approx([1.0, 0.1])
    step(*H.to_ms(*data[2]))
    assert opt.thor_fault_count.asnumpy().tolist() == [1, 1]
    for a, b in zip(before, [p.asnumpy() for p in list(opt.a_inv) + list(opt.g_inv)
                             + list(opt.t_keep)]):
        np.testing.assert_array_equal(b, a)
    assert all(np.all(np.isfinite(p.asnumpy())) for p in net.trainable_params())


@pytest.mark.parametrize("bad,err", [(1, TypeError), (None, TypeError), ("Cholesky", ValueError),
                                     ("eig", ValueError)])
def test_inverse_method_validation(bad, err):
    net = nn.SequentialCell([nn.Dense(3, 2)])
    with pytest.raises(err, match="'inverse_method'"):
        thor(net, Tensor(0.1, ms.float32), Tensor(0.1, ms.float32), 0.9, inverse_method=bad)
    assert type(net[0]) is nn.Dense  # untouched


def test_monitor_condition_of_the_eigen_rule(tmp_path):
    """OptimizerMonitor on a refresh step with inverse_method="eigh": per layer
    (T max e_G max e_A + lambda) / (T min e_G min e_A + lambda) from float64 eigenvalues of the
    layer's statistics (padding left out: the 504-wide Dense has a padded last block)."""
    rng = np.random.default_rng(3)
    lam = 0.5
    net, mon = H.monitored_grouped_run(rng, tmp_path / "m.jsonl", lam, 3, inverse_method="eigh")
    row = mon.rows[0]
    assert row["refresh"]
    for k, layer in enumerate([net[0], net[2], net[5]]):
        t = float(layer.thor_t.asnumpy())
        ext = []
        for stat, d in ((layer.matrix_a.asnumpy(), layer.thor_dims[0]),
                        (layer.matrix_g.asnumpy(), layer.thor_dims[1])):
            s = stat.shape[-1]
            nb = -(-d // s)
            vals = np.concatenate([
                np.linalg.eigvalsh(stat[b, :size, :size].astype(np.float64))
                for b in range(stat.shape[0])
                for size in [d - (nb - 1) * s if b % nb == nb - 1 else s]])
            ext.append((max(vals.min(), 0.0), vals.max()))
        want = (t * ext[0][1] * ext[1][1] + lam) / (t * ext[0][0] * ext[1][0] + lam)
        assert row["condition"][k] == pytest.approx(want, rel=2e-3), k
        assert row["layer_damping"][k] == pytest.approx(np.sqrt(lam / t), rel=1e-6)
