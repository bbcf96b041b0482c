"""Stand-ins for fused kernels that do not exist on CPU, with the kernels' documented contracts
(used by the tests of the fused code paths; not part of the package)."""
from mindspore import ops

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
