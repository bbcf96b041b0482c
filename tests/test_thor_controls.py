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
