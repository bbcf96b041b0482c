"""ms_optim.ops.kfac against float64 NumPy (tests/reference/thor_ref.py)."""
import numpy as np
import pytest

import mindspore as ms
from mindspore import Tensor, nn

from ms_optim.ops import kfac
from ms_optim.thor import _kernels
import kernel_standins
from reference import thor_ref

RTOL = 2e-4  # float32 Cholesky/matmul vs float64 inv on well-conditioned matrices


def _spd(d, rng, cond=10.0):
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    return (q * np.linspace(1.0, cond, d)) @ q.T


class _Fn(nn.Cell):
    """Run a pure kfac function inside a Cell so GRAPH mode compiles it."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def construct(self, *args):
        return self.fn(*args)


def _run(fn, *args):
    return _Fn(fn)(*[Tensor(np.asarray(a, np.float32)) for a in args]).asnumpy()


def test_factors(mode):
    rng = np.random.default_rng(0)
    p = rng.standard_normal((24, 7))
    d = rng.standard_normal((24, 5))
    a_ref, g_ref = thor_ref.factors(p, d, 6, 4)
    np.testing.assert_allclose(_run(kfac.input_covariance, p), a_ref, rtol=1e-5, atol=1e-6)
    def g_fn(x):
        return kfac.output_grad_covariance(x, 6, 4, 2.0)
    got = _Fn(g_fn)(Tensor((2.0 * d).astype(np.float32)))
    np.testing.assert_allclose(got.asnumpy(), g_ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dim", [5, 128, 300])
def test_damped_block_inverse(mode, dim):
    rng = np.random.default_rng(dim)
    m = _spd(dim, rng)
    delta = 0.3
    got = _Fn(kfac.damped_block_inverse)(
        Tensor(m.astype(np.float32)), Tensor(np.float32(delta))).asnumpy()
    ref = thor_ref.block_diag_inverse(m, delta)
    s = min(dim, 128)
    nb = -(-dim // s)
    assert got.shape == (nb, s, s)
    for b in range(nb):
        e = min((b + 1) * s, dim) - b * s
        np.testing.assert_allclose(got[b, :e, :e], ref[b * s:b * s + e, b * s:b * s + e],
                                   rtol=RTOL, atol=1e-5)
        if e < s:  # identity padding of the last block
            np.testing.assert_allclose(got[b, e:, e:], np.eye(s - e), atol=1e-6)


@pytest.mark.parametrize("dim", [7, 128, 300])
def test_statistic_diagonal_blocks(mode, dim):
    """A_b, G_b computed from column groups == diagonal blocks of the full A, G (float64 reference
    and the float32 full-matrix path), zero padding in the last block."""
    rng = np.random.default_rng(dim)
    p = rng.standard_normal((24, dim))
    d = rng.standard_normal((24, dim))
    a_ref, g_ref = thor_ref.factors(p, d, 6, 4)

    def g_fn(x):
        return kfac.output_grad_covariance_blocks(x, 6, 4, 128, 2.0)

    def full_fn(x, y):
        return (kfac.diagonal_blocks(kfac.input_covariance(x)),
                kfac.diagonal_blocks(kfac.output_grad_covariance(y, 6, 4, 2.0)))
    a_b = _run(kfac.input_covariance_blocks, p)
    g_b = _Fn(g_fn)(Tensor((2.0 * d).astype(np.float32))).asnumpy()
    np.testing.assert_allclose(a_b, thor_ref.diag_blocks(a_ref), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(g_b, thor_ref.diag_blocks(g_ref), rtol=1e-5, atol=1e-5)
    a_full, g_full = _Fn(full_fn)(Tensor(p.astype(np.float32)), Tensor((2.0 * d).astype(np.float32)))
    s = min(dim, 128)
    nb = -(-dim // s)
    mask = thor_ref.diag_blocks(np.ones((dim, dim))) > 0  # diagonal_blocks pads with I instead
    assert a_b.shape == g_b.shape == (nb, s, s)
    np.testing.assert_allclose(a_b[mask], a_full.asnumpy()[mask], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(g_b[mask], g_full.asnumpy()[mask], rtol=1e-6, atol=1e-6)
    assert not a_b[~mask].any() and not g_b[~mask].any()


@pytest.mark.parametrize("dim", [5, 128, 300])
def test_damped_inverse_of_blocks_equals_full_path(mode, dim):
    rng = np.random.default_rng(dim + 1)
    m = _spd(dim, rng)
    delta = 0.3

    def blocks_fn(b, dl):
        return kfac.damped_inverse_of_blocks(b, dim, dl)

    got = _Fn(blocks_fn)(Tensor(thor_ref.diag_blocks(m).astype(np.float32)),
                         Tensor(np.float32(delta))).asnumpy()
    full = _Fn(kfac.damped_block_inverse)(Tensor(m.astype(np.float32)),
                                          Tensor(np.float32(delta))).asnumpy()
    np.testing.assert_allclose(got, full, rtol=1e-6, atol=1e-7)
    ref = thor_ref.block_diag_inverse(m, delta)
    mask = thor_ref.diag_blocks(np.ones((dim, dim))) > 0
    np.testing.assert_allclose(got[mask], thor_ref.diag_blocks(ref)[mask], rtol=RTOL, atol=1e-5)
    s = min(dim, 128)
    pad = -(-dim // s) * s - dim
    if pad:  # padding becomes an identity block
        np.testing.assert_allclose(got[-1, s - pad:, s - pad:], np.eye(pad), atol=1e-7)


@pytest.mark.parametrize("shape", [(7, 5), (130, 260)])
def test_kron_precondition(mode, shape):
    rng = np.random.default_rng(1)
    out, inn = shape
    a = _spd(inn, rng)
    g = _spd(out, rng)
    grad = rng.standard_normal(shape)
    a_inv_full = thor_ref.block_diag_inverse(a, 0.1)
    g_inv_full = thor_ref.block_diag_inverse(g, 0.1)
    ref = thor_ref.precondition(g_inv_full, grad, a_inv_full, 3.0)
    def inv_fn(x):
        return kfac.damped_block_inverse(x, 0.1)

    def pre_fn(gi, gr, ai):
        return kfac.kron_precondition(gi, gr, ai, 3.0)
    blocks = _Fn(inv_fn)
    a_b = blocks(Tensor(a.astype(np.float32)))
    g_b = blocks(Tensor(g.astype(np.float32)))
    got = _Fn(pre_fn)(
        g_b, Tensor(grad.astype(np.float32)), a_b).asnumpy()
    np.testing.assert_allclose(got, ref, rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("groups,d_in,d_out", [(3, 5, 2), (2, 140, 130)])
def test_grouped_statistics_inverses_precondition(mode, groups, d_in, d_out):
    """groups > 1: the blocks of every group's own A^(j), G^(j) (group-major), their damped
    inverses, and G^(j)^-1 dW^(j) A^(j)^-1 / T per group, against float64 per-group NumPy."""
    rng = np.random.default_rng(groups * d_in)
    rows, t, n, delta = 600, 4, 150, 0.5  # rows > d: well-conditioned factors
    p = rng.standard_normal((rows, groups * d_in))
    dout = rng.standard_normal((rows, groups * d_out)) / np.sqrt(n * rows / t)  # G of order 1
    grad = rng.standard_normal((groups * d_out, d_in))

    def fn(pp, dd, gr, dl):
        a_b = kfac.input_covariance_blocks(pp, groups=groups)
        g_b = kfac.output_grad_covariance_blocks(dd, n, t, groups=groups)
        a_inv = kfac.damped_inverse_of_blocks(a_b, d_in, dl)
        g_inv = kfac.damped_inverse_of_blocks(g_b, d_out, dl)
        return a_b, g_b, kfac.kron_precondition(g_inv, gr, a_inv, t, groups)
    a_b, g_b, got = _Fn(fn)(Tensor(p.astype(np.float32)), Tensor(dout.astype(np.float32)),
                            Tensor(grad.astype(np.float32)), Tensor(np.float32(delta)))
    want_a, want_g, want = [], [], []
    for j in range(groups):
        a, g = thor_ref.factors(p[:, j * d_in:(j + 1) * d_in], dout[:, j * d_out:(j + 1) * d_out],
                                n, t)
        want_a.append(thor_ref.diag_blocks(a))
        want_g.append(thor_ref.diag_blocks(g))
        want.append(thor_ref.precondition(thor_ref.block_diag_inverse(g, delta),
                                          grad[j * d_out:(j + 1) * d_out],
                                          thor_ref.block_diag_inverse(a, delta), t))
    np.testing.assert_allclose(a_b.asnumpy(), np.concatenate(want_a), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(g_b.asnumpy(), np.concatenate(want_g), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got.asnumpy(), np.concatenate(want), rtol=1e-3, atol=1e-5)


def test_one_sample_dense_equals_kron_solve(mode):
    """N = 1 Dense: A (x) G is the exact Fisher block; THOR = solve(kron(A+dI, G+dI), vec g)."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((1, 4))
    d = rng.standard_normal((1, 3))
    lam = 0.04
    a, g = thor_ref.factors(x, d, 1, 1)
    grad = d.T @ x  # dL/dW for one sample
    delta = np.sqrt(lam)
    fisher = np.kron(a + delta * np.eye(4), g + delta * np.eye(3))
    ref = np.linalg.solve(fisher, grad.reshape(-1, order="F")).reshape(3, 4, order="F")

    def fn(xx, dd, gr, lm):
        a_m = kfac.input_covariance(xx)
        g_m = kfac.output_grad_covariance(dd, 1, 1)
        dl = kfac.factored_damping(lm, 1)
        return kfac.kron_precondition(kfac.damped_block_inverse(g_m, dl), gr,
                                      kfac.damped_block_inverse(a_m, dl), 1)
    got = _run(fn, x, d, grad, np.float32(lam))
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-6)


def test_layernorm_and_embedding_rules(mode):
    rng = np.random.default_rng(3)
    g = rng.standard_normal(6)
    def ln_fn(x, lm):
        return kfac.layernorm_precondition(x, 8.0, lm)

    def emb_fn(i):
        return kfac.embedding_input_statistic(i, 5, 2)
    np.testing.assert_allclose(
        _run(ln_fn, g, np.float32(0.09)),
        thor_ref.layernorm_rule(g, 8.0, 0.09), rtol=1e-5)
    ids = np.array([1, 3, 3, 0, 3, 1], np.int32)
    got = _Fn(emb_fn)(Tensor(ids)).asnumpy()
    np.testing.assert_allclose(got, np.bincount(ids, minlength=5) / 2.0)
    a = np.array([0.5, 0.0, 2.0])
    gr = rng.standard_normal((3, 4))
    gm = _spd(4, rng)
    delta = 0.2
    ref = np.diag(1.0 / (a + delta)) @ gr @ np.linalg.inv(gm + delta * np.eye(4))

    def fn(aa, gg, gmm, dl):
        g_inv = kfac.damped_block_inverse(gmm, dl, block=4)[0]
        return kfac.embedding_precondition(kfac.embedding_damped_inverse(aa, dl), gg, g_inv)
    np.testing.assert_allclose(_run(fn, a, gr, gm, np.float32(delta)), ref, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("dim", [10, 200])
def test_ascend_composition_with_contract_standin(mode, dim):
    """CusCholeskyTrsm contract (U^{-1} per 128-block, A = U^T U) composed as U^{-1} U^{-T}."""
    rng = np.random.default_rng(dim)
    m = _spd(256, rng)
    # the stand-in honours the contract: upper-triangular U^{-1} with U^T U = block
    u_inv = _Fn(kernel_standins.upper_inverse_standin)(Tensor(m.astype(np.float32))).asnumpy()
    for b in range(2):
        blk = m[b * 128:(b + 1) * 128, b * 128:(b + 1) * 128]
        u = np.linalg.inv(u_inv[b].astype(np.float64))
        assert np.allclose(np.tril(u_inv[b], -1), 0.0, atol=1e-6)
        np.testing.assert_allclose(u.T @ u, blk, rtol=1e-3, atol=1e-3)
    ascend = _kernels.AscendKernels(upper_inverse=kernel_standins.upper_inverse_standin)
    portable = _kernels.PortableKernels()
    mm = _spd(dim, rng)
    def inv_a(x):
        return kfac.damped_block_inverse(x, 0.1, 128, ascend.spd_block_inverse)

    def inv_p(x):
        return kfac.damped_block_inverse(x, 0.1, 128, portable.spd_block_inverse)
    fn_a, fn_p = _Fn(inv_a), _Fn(inv_p)
    got_a = fn_a(Tensor(mm.astype(np.float32))).asnumpy()
    got_p = fn_p(Tensor(mm.astype(np.float32))).asnumpy()
    np.testing.assert_allclose(got_a, got_p, rtol=1e-3, atol=1e-5)
    # and the wrong (upstream fallback) order U^{-T} U^{-1} would not match
    wrong = np.einsum("bji,bjk->bik", u_inv, u_inv)
    right = np.einsum("bij,bkj->bik", u_inv, u_inv)
    assert np.abs(wrong - right).max() > 1e-2


# (kernel, stride, dilation, pad_mode, padding): odd and even kernels, non-square, 'same' with
# stride 2 (asymmetric padding), explicit asymmetric 'pad', 'valid', dilation, 1x1 strided
_CONV_GEOMETRIES = [
    ((3, 3), 1, 1, "same", 0), ((7, 7), 2, 1, "same", 0), ((2, 4), 2, 1, "same", 0),
    ((3, 2), (1, 2), (2, 1), "pad", (1, 1, 2, 0)), ((3, 3), 2, 2, "same", 0),
    ((1, 1), 2, 1, "same", 0), ((3, 3), 1, 1, "valid", 0), ((3, 3), 2, 1, "pad", 1),
]


@pytest.mark.parametrize("geometry", _CONV_GEOMETRIES)
def test_conv_patches(mode, geometry):
    """Conv2dThor's patches (its padding rule + kfac.conv_patches) against the float64 im2col of
    the reference with the padding that MindSpore's own convolution uses: P W^T reshaped must
    equal nn.Conv2d's output, which pins the padding of every pad_mode."""
    from ms_optim.thor import layers as thor_layers
    kernel, stride, dilation, pad_mode, padding = geometry
    rng = np.random.default_rng(len(str(geometry)))
    x = rng.standard_normal((2, 3, 9, 8)).astype(np.float32)
    conv = nn.Conv2d(3, 4, kernel, stride=stride, pad_mode=pad_mode, padding=padding,
                     dilation=dilation, weight_init=Tensor(
                         rng.standard_normal((4, 3) + kernel).astype(np.float32)))
    layer = thor_layers.Conv2dThor(3, 4, kernel, stride=stride, pad_mode=pad_mode,
                                   padding=padding, dilation=dilation)
    pads = thor_layers._conv_pads(pad_mode, layer.thor_pad, layer.kernel_size, layer.stride,
                                  layer.dilation, 9, 8)

    def patches(t):
        return kfac.conv_patches(t, layer.kernel_size, layer.stride, layer.dilation, pads)
    got = _Fn(patches)(Tensor(x)).asnumpy()
    ref, ho, wo = thor_ref.im2col(x.astype(np.float64), kernel[0], kernel[1], layer.stride,
                                  pads, layer.dilation)
    assert got.shape == ref.shape
    np.testing.assert_array_equal(got, ref.astype(np.float32))  # entries are copies: exact
    out = conv(Tensor(x)).asnumpy()
    assert out.shape[2:] == (ho, wo)
    w = conv.weight.asnumpy().reshape(4, -1).astype(np.float64)
    via_patches = (ref @ w.T).reshape(2, ho, wo, 4).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(out, via_patches, rtol=1e-4, atol=1e-4)
