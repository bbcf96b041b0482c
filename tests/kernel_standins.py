"""Stand-ins for fused kernels that do not exist on CPU, with the kernels' documented contracts
(used by the tests of the fused code paths; not part of the package)."""
from mindspore import nn, ops

from ms_optim.ops import kfac

ASCEND_BLOCK = 128


def upper_inverse_standin(full):
    """Portable stand-in with the ``CusCholeskyTrsm`` contract (tests on CPU).

    For each 128-block :math:`B_b = U_b^T U_b` (:math:`U_b = L_b^T`) it returns
    :math:`U_b^{-1} = B_b^{-1} U_b^T`.
    """
    m = full.shape[0]
    n_b = m // ASCEND_BLOCK
    blocks = kfac.diagonal_blocks(full, ASCEND_BLOCK)
    low = ops.cholesky(blocks, upper=False)
    inv = kfac.spd_block_inverse_cholesky(blocks)
    return ops.reshape(ops.BatchMatMul()(inv, low), (n_b, ASCEND_BLOCK, ASCEND_BLOCK))


class EmulatedLARSUpdate(nn.Cell):
    """The Ascend LARSUpdate contract: inputs (w, g, sum w^2, sum g^2, wd, lr), attributes
    (epsilon, hyperpara, use_clip); trust = hyperpara*||w||/(||g|| + wd*||w|| + eps), optionally
    clamp(trust/lr, 0, 1) (min then max); returns trust*(g + wd*w). No zero-norm guard."""

    def __init__(self, epsilon=1e-05, hyperpara=0.001, use_clip=False):
        super().__init__()
        self.epsilon, self.hyperpara, self.use_clip = epsilon, hyperpara, use_clip

    def construct(self, w, g, w_sq, g_sq, wd, lr):
        w_norm, g_norm = ops.sqrt(w_sq), ops.sqrt(g_sq)
        trust = self.hyperpara * w_norm / (g_norm + wd * w_norm + self.epsilon)
        if self.use_clip:
            trust = ops.maximum(ops.minimum(trust / lr, 1.0), 0.0)
        return trust * (g + wd * w)


class EmulatedFusedWeightScaleApplyMomentum(nn.Cell):
    """The contract of MindSpore's CUDA kernel FusedWeightDecayScaleMomentum (inputs
    weight_decay, scale, variable, accumulation, learning_rate, gradient, momentum):
    grad = (variable * weight_decay + gradient) * scale; accumulation = momentum * accumulation
    + grad; variable -= learning_rate * accumulation (in place); returns variable."""

    def construct(self, weight_decay, scale, variable, accumulation, learning_rate, gradient,
                  momentum):
        grad = (variable * weight_decay + gradient) * scale
        acc = ops.assign(accumulation, momentum * accumulation + grad)
        return ops.assign(variable, variable - learning_rate * acc)
