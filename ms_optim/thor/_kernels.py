"""Backend realisations of THOR's block inverse, with one contract.

A kernel set has one method, ``spd_block_inverse(blocks) -> inverses`` for a batch of symmetric
positive definite blocks of shape ``(n_b, s, s)``: the contract of
:func:`ms_optim.ops.kfac.spd_block_inverse_cholesky`. Nothing else in THOR differs between
backends; the mathematics (statistics, damping, block split, preconditioning) is
:mod:`ms_optim.ops.kfac` for all of them.

* :class:`PortableKernels`: ``ops.cholesky``, a batched ``MatrixTriangularSolve`` for
  :math:`L^{-1}` and :math:`L^{-\top} L^{-1}` (CPU, GPU; GRAPH and PYNATIVE; MindSpore 2.10
  documents ``ops.cholesky`` for GPU and CPU only).
* :class:`AscendKernels`: the Ascend ``CusCholeskyTrsm`` kernel, whose contract is "for a
  matrix cut into 128x128 diagonal blocks :math:`B_b = U_b^T U_b`, return :math:`U_b^{-1}`",
  composed as :math:`U_b^{-1} U_b^{-T}` (:func:`ms_optim.ops.kfac.inverse_from_upper_inverse`).
  Blocks smaller than 128 are padded with an identity block first (exact). The primitive is only
  obtained through :func:`ms_optim._backend.get_primitive`; tests inject a stand-in with the same
  contract (``tests/kernel_standins.py``) to verify the composition on CPU.
"""
from mindspore import ops

from .._backend import ASCEND, get_primitive
from ..ops import kfac

__all__ = ["PortableKernels", "AscendKernels", "get_kernels", "ASCEND_PRIMITIVES"]

#: Primitives the Ascend realisation needs (checked by ``resolve_backend``).
ASCEND_PRIMITIVES = ("CusCholeskyTrsm",)
_ASCEND_BLOCK = 128


class PortableKernels:
    """Block inverse from public ``mindspore.ops`` only."""

    def spd_block_inverse(self, blocks):
        """Inverse of each SPD block (contract of ``spd_block_inverse_cholesky``)."""
        return kfac.spd_block_inverse_cholesky(blocks)


class AscendKernels:
    """Block inverse through the Ascend ``CusCholeskyTrsm`` kernel (U^{-1} per 128-block).

    Args:
        upper_inverse (Callable): maps a ``(m, m)`` matrix, ``m`` a multiple of 128, to the
            ``(m // 128, 128, 128)`` stack of :math:`U_b^{-1}` where block :math:`b` equals
            :math:`U_b^T U_b`. Default: an instance of the ``CusCholeskyTrsm`` primitive.
    """

    def __init__(self, upper_inverse=None):
        if upper_inverse is None:
            upper_inverse = get_primitive("CusCholeskyTrsm")()
        self.upper_inverse = upper_inverse

    def spd_block_inverse(self, blocks):
        """Inverse of each SPD block via U^{-1} U^{-T} (identity-padded to 128)."""
        n_b, s = blocks.shape[0], blocks.shape[1]
        pad = _ASCEND_BLOCK - s if s < _ASCEND_BLOCK else 0
        if pad:
            eye_tail = ops.diag(ops.concat((ops.zeros(s, blocks.dtype), ops.ones(pad, blocks.dtype))))
            blocks = ops.pad(blocks, (0, pad, 0, pad)) + eye_tail
        size = blocks.shape[1]
        # block-diagonal matrix whose 128-blocks are the input blocks (the kernel's input layout)
        full = _block_diag(blocks)
        u_inv = self.upper_inverse(full)
        u_inv = ops.reshape(u_inv, (n_b, size, size))
        inv = kfac.inverse_from_upper_inverse(u_inv)
        if pad:
            inv = inv[:, :s, :s]
        return inv


def _block_diag(blocks):
    """Assemble ``(n_b, s, s)`` blocks into one ``(n_b s, n_b s)`` block-diagonal matrix."""
    n_b, s = blocks.shape[0], blocks.shape[1]
    if n_b == 1:
        return ops.reshape(blocks, (s, s))
    rows = []
    for b in range(n_b):
        left = ops.zeros((s, b * s), blocks.dtype) if b > 0 else None
        right = ops.zeros((s, (n_b - 1 - b) * s), blocks.dtype) if b < n_b - 1 else None
        parts = [p for p in (left, blocks[b], right) if p is not None]
        rows.append(ops.concat(parts, 1))
    return ops.concat(rows, 0)


def get_kernels(backend):
    """Kernel set for a resolved backend name (``"ascend"`` or ``"portable"``)."""
    if backend == ASCEND:
        return AscendKernels()
    return PortableKernels()
