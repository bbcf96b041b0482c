"""The batched LARS factors (ops.trust_ratio.lars_scales) against the float64 reference.

Feature: the portable LARS path computes all trust ratios in one vector.
Description: random layers incl. a zero weight, a zero gradient with eps 0, clipping with lr 0,
    a loss scale; the square sums are computed by ops.trust_ratio.square_sum.
Expectation: a*g_hat + b*w equals lars_ref.lars_gradient layer by layer.
"""
import numpy as np
import pytest

import mindspore as ms
from mindspore import Tensor

from ms_optim.ops.trust_ratio import apply_scales, lars_scales, square_sum
from reference import lars_ref


@pytest.mark.parametrize("use_clip", [False, True])
@pytest.mark.parametrize("eps", [0.0, 1e-5])
def test_lars_scales_match_reference(use_clip, eps):
    rng = np.random.default_rng(int(use_clip) * 10 + int(eps > 0))
    shapes = [(64, 3, 7, 7), (7,), (5, 4), (2048, 3), (3, 3)]
    ws = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    gs = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    ws[1][:] = 0.0                      # ||w|| = 0 -> tau = 1
    gs[4][:] = 0.0                      # ||g|| = 0 (with wd 0 and eps 0: denominator 0)
    wds = np.array([1e-4, 0.05, 0.0, 0.01, 0.0], np.float32)
    lrs = np.array([0.1, 0.1, 0.0, 0.5, 0.2], np.float32)  # lr 0 -> tau = 1 with clipping
    scale = 8.0
    w_sq = ms.ops.stack([square_sum(Tensor(w)) for w in ws])
    g_sq = ms.ops.stack([square_sum(Tensor(g * scale)) for g in gs])
    a, b = lars_scales(w_sq, g_sq, Tensor(wds), 0.02, eps, use_clip, Tensor(lrs),
                       Tensor(1.0 / scale, ms.float32))
    a, b = a.asnumpy(), b.asnumpy()
    for i, (w, g) in enumerate(zip(ws, gs)):
        got = apply_scales(Tensor(a[i]), Tensor(b[i]), Tensor(w), Tensor(g * scale)).asnumpy()
        ref = lars_ref.lars_gradient(w, g, float(wds[i]), 0.02, eps, use_clip, float(lrs[i]))
        np.testing.assert_allclose(got, ref, rtol=2e-5, atol=1e-7, err_msg=f"layer {i}")
    assert a[1] == pytest.approx(1.0 / scale) and b[1] == pytest.approx(0.05)  # guard: tau = 1


def test_square_sum_row_split_and_float16():
    rng = np.random.default_rng(3)
    for shape in [(2048, 1000), (3,), (64, 64, 3, 3), (1001,)]:
        x = rng.standard_normal(shape).astype(np.float32)
        np.testing.assert_allclose(float(square_sum(Tensor(x))), np.sum(x.astype(np.float64) ** 2),
                                   rtol=1e-5)
    h = rng.standard_normal((256, 64)).astype(np.float16)
    out = square_sum(Tensor(h))
    assert out.dtype == ms.float32
    np.testing.assert_allclose(float(out), np.sum(h.astype(np.float64) ** 2), rtol=1e-5)
