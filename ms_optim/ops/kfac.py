r"""THOR / K-FAC formulas, once, as pure functions on Tensors.

Every formula THOR uses is written here, one function each, exactly as its docstring states it
(Martens & Grosse 2015, https://arxiv.org/abs/1503.05671; Chen et al., AAAI 2021,
https://ojs.aaai.org/index.php/AAAI/article/view/16867). The functions hold no state, read no
device information and run in GRAPH and PYNATIVE mode. The backend-specific realisations of the
symmetric-positive-definite block inverse live in :mod:`ms_optim.thor._kernels`; they are passed
in as ``spd_block_inverse`` and must satisfy the contract of :func:`spd_block_inverse_cholesky`.

Notation: :math:`N` samples in the minibatch, :math:`T` output locations per sample
(1 for Dense, :math:`H_{out} W_{out}` for Conv2d), :math:`\lambda` the damping of the step.
"""
import mindspore as ms
from mindspore import ops

__all__ = [
    "BLOCK_SIZE", "input_covariance", "output_grad_covariance", "input_covariance_blocks",
    "output_grad_covariance_blocks", "factored_damping", "diagonal_blocks",
    "spd_block_inverse_cholesky", "inverse_from_upper_inverse", "damped_block_inverse",
    "damped_inverse_of_blocks", "kron_precondition", "layernorm_precondition",
    "embedding_input_statistic", "embedding_damped_inverse", "embedding_precondition",
    "momentum_step", "kl_clip_scale", "kl_clip_factor", "factor_moving_average",
    "kron_curvature", "embedding_curvature", "layernorm_curvature", "quadratic_model",
    "reduction_ratio", "lm_damping_scale", "eigen_of_blocks", "kron_eigen_precondition",
    "kron_eigen_curvature", "conv_patches",
]

#: Block size of the block-diagonal inverses (THOR's hardware-driven 128 split).
BLOCK_SIZE = 128


def input_covariance(patches):
    r"""Input-side Kronecker factor of a Dense or Conv2d layer.

    .. math::

        A = \frac{1}{N T} P^\top P

    Args:
        patches (Tensor): :math:`P`, shape :math:`(N T, d_{in})`: the layer inputs (Dense) or the
            im2col patches (Conv2d, :math:`d_{in} = C k_h k_w`), one row per sample and location.

    Returns:
        Tensor of shape :math:`(d_{in}, d_{in})`.
    """
    rows = patches.shape[0]
    return ops.matmul(patches.T, patches) / rows


def output_grad_covariance(dout, n, t, loss_scale=1.0):
    r"""Output-side Kronecker factor: covariance of the per-sample output gradients.

    .. math::

        G = \frac{N}{T} D^\top D, \qquad D = \frac{1}{s}\,\frac{\partial (s L)}{\partial Y}

    where :math:`L` is the *mean* loss over the :math:`N` samples, so :math:`N D_i` is the
    gradient of sample :math:`i`'s own loss, and :math:`s` is the loss scale.

    Args:
        dout (Tensor): :math:`s\,\partial L/\partial Y`, shape :math:`(N T, d_{out})`.
        n (int): :math:`N`, samples in the minibatch.
        t (int): :math:`T`, output locations per sample.
        loss_scale (Union[float, Tensor]): :math:`s`. Default: ``1.0``.

    Returns:
        Tensor of shape :math:`(d_{out}, d_{out})`.
    """
    d = dout / loss_scale
    return ops.matmul(d.T, d) * (n / t)


def conv_patches(x, kernel_size, stride, dilation, pads):
    r"""The im2col patches of a convolution's input: one row per sample and output location.

    .. math::

        P_{(n, y, x),\,(c, i, j)} = \tilde X_{n,\; c,\; y s_h + i d_h,\; x s_w + j d_w},\qquad
        H_{out} = \Big\lfloor \frac{H + p_t + p_b - d_h (k_h - 1) - 1}{s_h} \Big\rfloor + 1

    (:math:`W_{out}` alike), where :math:`\tilde X` is :math:`X` zero-padded by
    :math:`(p_t, p_b)` rows and :math:`(p_l, p_r)` columns. Rows are ordered
    :math:`(n, y, x)`, columns :math:`(c, i, j)` like a flattened
    :math:`(C_{out}, C_{in}, k_h, k_w)` weight, so that :math:`P\,W^\top` is the convolution
    (without groups). Each entry is one input element: exact in any dtype. One
    ``mindspore.ops.unfold`` (the ``Im2Col`` kernel of every backend).

    Args:
        x (Tensor): :math:`X`, shape :math:`(N, C, H, W)`.
        kernel_size (tuple[int]): :math:`(k_h, k_w)`.
        stride (tuple[int]): :math:`(s_h, s_w)`.
        dilation (tuple[int]): :math:`(d_h, d_w)`.
        pads (tuple[int]): :math:`(p_t, p_b, p_l, p_r)`.

    Returns:
        Tensor of shape :math:`(N H_{out} W_{out},\; C k_h k_w)`, dtype of `x`.
    """
    if pads[0] or pads[1] or pads[2] or pads[3]:
        x = ops.pad(x, (pads[2], pads[3], pads[0], pads[1]))
    cols = ops.unfold(x, kernel_size, dilation, 0, stride)
    n, d, locations = cols.shape
    return ops.reshape(ops.transpose(cols, (0, 2, 1)), (n * locations, d))


def block_geometry(d, block=BLOCK_SIZE):
    """``(n_b, s, p)`` of a dimension ``d`` cut into diagonal blocks: block size
    ``s = min(d, block)``, ``n_b = ceil(d / s)`` blocks, ``p = n_b * s - d`` padding (the one
    definition every block-diagonal statistic, inverse and initial value uses)."""
    s = min(d, block)
    nb = (d + s - 1) // s
    return nb, s, nb * s - d


def _column_blocks(x, block, groups=1):
    """``(R, g d)`` -> ``(g n_b, R, s)``: each group's ``d`` columns cut into column groups of
    width ``s = min(d, block)``, the last one zero-padded; group-major order."""
    rows, width = x.shape
    d = width // groups
    nb, s, pad = block_geometry(d, block)
    if groups > 1:
        x = ops.reshape(ops.transpose(ops.reshape(x, (rows, groups, d)), (1, 0, 2)),
                        (groups * rows, d))
    if pad > 0:
        x = ops.pad(x, (0, pad))
    if nb == 1:
        return ops.reshape(x, (groups, rows, s))
    x = ops.reshape(x, (groups, rows, nb, s))
    return ops.reshape(ops.transpose(x, (0, 2, 1, 3)), (groups * nb, rows, s))


def input_covariance_blocks(patches, block=BLOCK_SIZE, groups=1):
    r"""Diagonal blocks of the input factor :math:`A`, computed without forming :math:`A`.

    .. math::

        A_b = \frac{1}{N T} P_b^\top P_b,\qquad
        P_b = \tilde P_{[:,\; bs:(b+1)s]},\qquad \tilde P = (P \;\; 0_{NT \times p})

    with :math:`s = \min(d_{in}, \text{block})`, :math:`n_b = \lceil d_{in}/s \rceil`,
    :math:`p = n_b s - d_{in}`: :math:`A_b` is the :math:`b`-th diagonal block of
    :func:`input_covariance` (the padding rows/columns of the last block are zero). Cost
    :math:`2 NT d_{in} s` instead of :math:`2 NT d_{in}^2`. With :math:`g` = `groups` > 1 (a
    grouped convolution) the columns of :math:`P` are :math:`g` groups of :math:`d_{in}` each,
    :math:`P = (P^{(0)} \cdots P^{(g-1)})`, and the result is the blocks of every group's own
    factor :math:`A^{(j)} = \frac{1}{NT} P^{(j)\top} P^{(j)}`, group after group.

    Args:
        patches (Tensor): :math:`P`, shape :math:`(N T, g\, d_{in})`.
        block (int): maximal block size. Default: ``128``.
        groups (int): :math:`g`. Default: ``1``.

    Returns:
        Tensor of shape :math:`(g\, n_b, s, s)`.
    """
    p_b = _column_blocks(patches, block, groups)
    return ops.BatchMatMul(transpose_a=True)(p_b, p_b) / patches.shape[0]


def output_grad_covariance_blocks(dout, n, t, block=BLOCK_SIZE, loss_scale=1.0, groups=1):
    r"""Diagonal blocks of the output-side factor :math:`G`, computed without forming :math:`G`.

    .. math::

        G_b = \frac{N}{T} D_b^\top D_b,\qquad D_b = \tilde D_{[:,\; bs:(b+1)s]},\qquad
        \tilde D = \frac{1}{s_L}\,(\partial (s_L L)/\partial Y \;\; 0)

    the :math:`b`-th diagonal block of :func:`output_grad_covariance` (:math:`s_L` the loss
    scale; block size :math:`s = \min(d_{out}, \text{block})`, zero padding as in
    :func:`input_covariance_blocks`). With :math:`g` = `groups` > 1 the columns of :math:`D`
    are :math:`g` groups of :math:`d_{out}` each and the result is the blocks of every group's
    own factor :math:`G^{(j)}`, group after group.

    Args:
        dout (Tensor): :math:`s_L\,\partial L/\partial Y`, shape :math:`(N T, g\, d_{out})`.
        n (int): :math:`N`, samples in the minibatch.
        t (int): :math:`T`, output locations per sample.
        block (int): maximal block size. Default: ``128``.
        loss_scale (Union[float, Tensor]): :math:`s_L`. Default: ``1.0``.
        groups (int): :math:`g`. Default: ``1``.

    Returns:
        Tensor of shape :math:`(g\, n_b, s, s)`.
    """
    d_b = _column_blocks(dout / loss_scale, block, groups)
    return ops.BatchMatMul(transpose_a=True)(d_b, d_b) * (n / t)


def factored_damping(damping, t):
    r"""Damping added to each Kronecker factor (factored Tikhonov damping).

    .. math::

        \delta = \sqrt{\lambda / T}

    Args:
        damping (Tensor): :math:`\lambda \ge 0`, scalar.
        t (Union[int, Tensor]): :math:`T`.

    Returns:
        Tensor, :math:`\delta`.
    """
    return ops.sqrt(damping / t)


def diagonal_blocks(m, block=BLOCK_SIZE):
    r"""Split a square matrix into its diagonal blocks, padding the last one with the identity.

    .. math::

        \tilde M = \begin{pmatrix} M & 0 \\ 0 & I_p \end{pmatrix},\qquad
        B_b = \tilde M_{[bs:(b+1)s,\; bs:(b+1)s]},\quad b = 0,\dots,n_b-1

    with :math:`s = \min(d, \text{block})`, :math:`n_b = \lceil d/s \rceil`, :math:`p = n_b s - d`.

    Args:
        m (Tensor): :math:`M`, shape :math:`(d, d)`.
        block (int): maximal block size. Default: ``128``.

    Returns:
        Tensor of shape :math:`(n_b, s, s)`.
    """
    d = m.shape[0]
    nb, s, pad = block_geometry(d, block)
    if pad > 0:
        m = ops.pad(m, (0, pad, 0, pad))
        tail = ops.concat((ops.zeros(d, m.dtype), ops.ones(pad, m.dtype)))
        m = m + ops.diag(tail)
    if nb == 1:
        return ops.reshape(m, (1, s, s))
    m4 = ops.transpose(ops.reshape(m, (nb, s, nb, s)), (0, 2, 1, 3))
    m4 = ops.reshape(m4, (nb * nb, s, s))
    idx = ms.Tensor([b * nb + b for b in range(nb)], ms.int32)
    return ops.gather(m4, idx, 0)


_lower_triangular_solve = ops.MatrixTriangularSolve(lower=True, adjoint=False)


def spd_block_inverse_cholesky(blocks):
    r"""Inverse of a batch of symmetric positive definite blocks by Cholesky (portable contract).

    .. math::

        B_b = L_b L_b^\top,\qquad B_b^{-1} = L_b^{-\top} L_b^{-1}

    Args:
        blocks (Tensor): :math:`(n_b, s, s)`, each block symmetric positive definite.

    Returns:
        Tensor :math:`(n_b, s, s)`, the block inverses.
    """
    low = ops.cholesky(blocks, upper=False)
    s = blocks.shape[-1]
    eye = ops.broadcast_to(ops.eye(s, s, blocks.dtype), blocks.shape)
    # L^{-1} by one batched triangular solve, then L^{-T} L^{-1}: on CPU 0.77x the time of
    # cholesky_solve(I, L) (two triangular solves) for 633 blocks of 128
    low_inv = _lower_triangular_solve(low, eye)
    return ops.BatchMatMul(transpose_a=True)(low_inv, low_inv)


def inverse_from_upper_inverse(u_inv):
    r"""Block inverse from the inverse upper Cholesky factor (Ascend ``CusCholeskyTrsm`` contract).

    .. math::

        B_b = U_b^\top U_b \;\Rightarrow\; B_b^{-1} = U_b^{-1} U_b^{-\top}

    Args:
        u_inv (Tensor): :math:`U_b^{-1}`, shape :math:`(n_b, s, s)`.

    Returns:
        Tensor :math:`(n_b, s, s)`.
    """
    return ops.BatchMatMul(transpose_b=True)(u_inv, u_inv)


def damped_block_inverse(m, delta, block=BLOCK_SIZE, spd_block_inverse=spd_block_inverse_cholesky):
    r"""Block-diagonal inverse of a damped Kronecker factor.

    .. math::

        \hat M = M + \delta I,\qquad
        \hat M^{-1}_{bd} = \operatorname{blockdiag}\big(B_0^{-1},\dots,B_{n_b-1}^{-1}\big)

    where :math:`B_b` are the diagonal blocks of :math:`\hat M` (:func:`diagonal_blocks`); exact
    for :math:`d \le` ``block``.

    Args:
        m (Tensor): :math:`M`, shape :math:`(d, d)`, symmetric positive semi-definite.
        delta (Tensor): :math:`\delta`, scalar.
        block (int): block size. Default: ``128``.
        spd_block_inverse (Callable): batch SPD inverse with the contract of
            :func:`spd_block_inverse_cholesky`.

    Returns:
        Tensor :math:`(n_b, s, s)`.
    """
    d = m.shape[0]
    m_hat = m + delta * ops.eye(d, d, m.dtype)
    return spd_block_inverse(diagonal_blocks(m_hat, block))


def damped_inverse_of_blocks(blocks, d, delta, spd_block_inverse=spd_block_inverse_cholesky):
    r"""Block-diagonal inverse of a damped Kronecker factor given only its diagonal blocks.

    .. math::

        \hat B_b = B_b + \operatorname{diag}(e_b),\qquad
        e = (\underbrace{\delta,\dots,\delta}_{d},\underbrace{1,\dots,1}_{p}),

        \hat M^{-1}_{bd} = \operatorname{blockdiag}\big(\hat B_0^{-1},\dots,\hat B_{n_b-1}^{-1}\big)

    where :math:`B_b` are the diagonal blocks of :math:`M` (zero padding, as returned by
    :func:`input_covariance_blocks`) and :math:`e_b` is the :math:`b`-th length-:math:`s` piece of
    :math:`e`. The result equals :func:`damped_block_inverse` of the full :math:`M`: the padding
    becomes an identity block. `blocks` may hold the blocks of :math:`g` factors of size
    :math:`d` one after the other (a grouped convolution, :math:`g n_b` blocks): each is
    damped and inverted in the same way.

    Args:
        blocks (Tensor): :math:`B_b`, shape :math:`(g\, n_b, s, s)`, symmetric positive
            semi-definite.
        d (int): :math:`d`, the size of :math:`M` (:math:`p = n_b s - d`).
        delta (Tensor): :math:`\delta`, scalar.
        spd_block_inverse (Callable): batch SPD inverse with the contract of
            :func:`spd_block_inverse_cholesky`.

    Returns:
        Tensor :math:`(g\, n_b, s, s)`.
    """
    s = blocks.shape[1]
    # indexed, not unpacked: an unused unpacked element is an isolated node that MindSpore's
    # GRAPH compiler reports with a warning ("side effect nodes were eliminated by mistake")
    geometry = block_geometry(d, s)
    nb, pad = geometry[0], geometry[2]
    groups = blocks.shape[0] // nb
    e = delta * ops.ones(d, blocks.dtype)
    if pad > 0:
        e = ops.concat((e, ops.ones(pad, blocks.dtype)))
    if groups > 1:
        e = ops.tile(e, (groups,))
    e = ops.reshape(e, (groups * nb, s, 1))
    eye = ops.eye(s, s, blocks.dtype)
    return spd_block_inverse(blocks + e * eye)


def kron_precondition(g_inv, grad, a_inv, t, groups=1):
    r"""Kronecker-factored natural-gradient direction of a Dense/Conv2d weight.

    .. math::

        \tilde\nabla W = \frac{1}{T}\,\hat G^{-1}_{bd}\,\nabla W\,\hat A^{-1}_{bd}

    With :math:`g` = `groups` > 1 (a grouped convolution: the rows of :math:`\nabla W` are
    :math:`g` groups of :math:`d_{out}`, group :math:`j` seeing only its own :math:`d_{in}`
    input columns) the rule applies per group,
    :math:`\tilde\nabla W^{(j)} = \frac{1}{T}\hat G^{(j)-1}_{bd}\,\nabla W^{(j)}\,\hat A^{(j)-1}_{bd}`.

    Args:
        g_inv (Tensor): blocks of :math:`\hat G^{-1}_{bd}`, shape :math:`(g\, n_G, s_G, s_G)`.
        grad (Tensor): :math:`\nabla W`, shape :math:`(g\, d_{out}, d_{in})`.
        a_inv (Tensor): blocks of :math:`\hat A^{-1}_{bd}`, shape :math:`(g\, n_A, s_A, s_A)`.
        t (Union[int, Tensor]): :math:`T`.
        groups (int): :math:`g`. Default: ``1``.

    Returns:
        Tensor of shape :math:`(g\, d_{out}, d_{in})`.
    """
    # 1/T applied to the G-side blocks (far fewer entries than the weight): one pass less
    return _kron_block_product(g_inv / t, grad, a_inv, groups)


def _kron_block_product(left, x, right, groups):
    r""":math:`L_{bd}\,X\,R_{bd}` per group, for ``(g n_L, s_L, s_L)`` / ``(g n_R, s_R, s_R)``
    diagonal blocks and :math:`X` of shape ``(g d_out, d_in)`` (zero-padded to whole blocks)."""
    rows, d_in = x.shape
    xp = _pad_to_blocks(x, groups, left.shape[0] // groups * left.shape[1],
                        right.shape[0] // groups * right.shape[1])
    return _crop_from_blocks(_padded_block_product(left, xp, right, groups), rows, d_in)


def _pad_to_blocks(x, groups, out_p, in_p):
    """``(g d_out, d_in)`` -> ``(g, out_p, in_p)``, zero-padded."""
    rows, d_in = x.shape
    d_out = rows // groups
    x = ops.reshape(x, (groups, d_out, d_in))
    if out_p != d_out or in_p != d_in:
        x = ops.pad(x, (0, in_p - d_in, 0, out_p - d_out))
    return x


def _crop_from_blocks(x, rows, d_in):
    """``(g, out_p, in_p)`` -> ``(g d_out, d_in)``."""
    groups, out_p, in_p = x.shape
    d_out = rows // groups
    if out_p != d_out or in_p != d_in:
        x = x[:, :d_out, :d_in]
    return ops.reshape(x, (rows, d_in))


def _padded_block_product(left, x, right, groups):
    """:math:`L_{bd}\\,X\\,R_{bd}` per group on a padded ``(g, out_p, in_p)`` tensor."""
    n_g, s_g = left.shape[0] // groups, left.shape[1]
    n_a, s_a = right.shape[0] // groups, right.shape[1]
    out_p, in_p = n_g * s_g, n_a * s_a
    x = ops.BatchMatMul()(left, ops.reshape(x, (groups * n_g, s_g, in_p)))
    if n_a == 1:
        # one column block (d_in <= 128): the column-block transposes below would be copies
        # that move nothing
        return ops.reshape(ops.BatchMatMul()(ops.reshape(x, (groups, out_p, s_a)), right),
                           (groups, out_p, in_p))
    x = ops.transpose(ops.reshape(x, (groups, out_p, n_a, s_a)), (0, 2, 1, 3))
    x = ops.BatchMatMul()(ops.reshape(x, (groups * n_a, out_p, s_a)), right)
    x = ops.transpose(ops.reshape(x, (groups, n_a, out_p, s_a)), (0, 2, 1, 3))
    return ops.reshape(x, (groups, out_p, in_p))


def _plus_delta_identity(blocks, delta):
    r"""Diagonal blocks :math:`M_{bd} + \delta I`."""
    eye = ops.eye(blocks.shape[-1], blocks.shape[-1], ms.float32)
    return blocks + delta * eye


def kron_curvature(g_blocks, step, a_blocks, t, delta, groups=1):
    r"""The damped Kronecker curvature that THOR's Dense/Conv2d rule inverts, applied to a step.

    .. math::

        \Delta^\top C \Delta = T\,\big\langle \Delta,\ (G_{bd} + \delta I)\,\Delta\,
        (A_{bd} + \delta I) \big\rangle

    where :math:`\langle X, Y\rangle = \sum_{ij} X_{ij} Y_{ij}`: the quadratic form of
    :math:`C = T\,(A_{bd} + \delta I) \otimes (G_{bd} + \delta I)`, whose inverse applied to
    :math:`\nabla W` is :func:`kron_precondition` (per group for `groups` > 1).

    Args:
        g_blocks (Tensor): diagonal blocks of :math:`G`, shape :math:`(g\, n_G, s_G, s_G)`.
        step (Tensor): :math:`\Delta`, shape :math:`(g\, d_{out}, d_{in})`.
        a_blocks (Tensor): diagonal blocks of :math:`A`, shape :math:`(g\, n_A, s_A, s_A)`.
        t (Union[int, Tensor]): :math:`T`.
        delta (Tensor): :math:`\delta` (:func:`factored_damping`).
        groups (int): :math:`g`. Default: ``1``.

    Returns:
        Tensor, float32 scalar.
    """
    step = ops.cast(step, ms.float32)
    prod = _kron_block_product(_plus_delta_identity(g_blocks, delta), step,
                               _plus_delta_identity(a_blocks, delta), groups)
    return t * ops.reduce_sum(step * prod)


def layernorm_precondition(grad, n, damping):
    r"""Diagonal empirical-Fisher rule for LayerNorm scale and shift.

    .. math::

        \tilde g = \frac{g}{g \odot g / N + \sqrt{\lambda}}

    Args:
        grad (Tensor): :math:`g`.
        n (Union[int, Tensor]): :math:`N`.
        damping (Tensor): :math:`\lambda`.

    Returns:
        Tensor like ``grad``.
    """
    return grad / (grad * grad / n + ops.sqrt(damping))


def embedding_input_statistic(ids, vocab_size, n):
    r"""Diagonal input factor of an embedding table: token frequencies.

    .. math::

        a_v = \frac{1}{N}\,\#\{\text{ids equal to } v\}

    Args:
        ids (Tensor): flattened token ids, shape :math:`(N T,)`.
        vocab_size (int): number of rows of the table.
        n (int): :math:`N`.

    Returns:
        Tensor of shape :math:`(\text{vocab_size},)`, float32.
    """
    ones = ops.ones(ids.shape, ms.float32)
    return ops.unsorted_segment_sum(ones, ops.cast(ids, ms.int32), vocab_size) / n


def embedding_damped_inverse(a_diag, delta):
    r"""Inverse of the damped diagonal input factor of an embedding table.

    .. math::

        \hat a^{-1}_v = \frac{1}{a_v + \delta},\qquad \delta = \sqrt{\lambda}

    Args:
        a_diag (Tensor): :math:`a`, shape :math:`(V,)`.
        delta (Tensor): :math:`\delta`.

    Returns:
        Tensor of shape :math:`(V,)`.
    """
    return 1.0 / (a_diag + delta)


def embedding_precondition(a_inv, grad, g_inv):
    r"""Natural-gradient direction of an embedding table (one row per token).

    .. math::

        \tilde\nabla E = \operatorname{diag}(\hat a^{-1})\,\nabla E\,\hat G^{-1}

    Args:
        a_inv (Tensor): :math:`\hat a^{-1}`, shape :math:`(V,)` (:func:`embedding_damped_inverse`).
        grad (Tensor): :math:`\nabla E`, shape :math:`(V, E)`.
        g_inv (Tensor): :math:`\hat G^{-1}` (full, not block-diagonal), shape :math:`(E, E)`.

    Returns:
        Tensor of shape :math:`(V, E)`.
    """
    return ops.matmul(ops.expand_dims(a_inv, 1) * grad, g_inv)


def embedding_curvature(a_diag, step, g, delta):
    r"""The damped curvature that THOR's embedding rule inverts, applied to a step.

    .. math::

        \Delta^\top C \Delta = \big\langle \Delta,\ \operatorname{diag}(a + \delta)\,\Delta\,
        (G + \delta I) \big\rangle

    (the inverse of :math:`C = \operatorname{diag}(a + \delta) \otimes (G + \delta I)` applied
    to :math:`\nabla E` is :func:`embedding_precondition`).

    Args:
        a_diag (Tensor): :math:`a`, shape :math:`(V,)` (:func:`embedding_input_statistic`).
        step (Tensor): :math:`\Delta`, shape :math:`(V, E)`.
        g (Tensor): :math:`G`, shape :math:`(E, E)`.
        delta (Tensor): :math:`\delta = \sqrt{\lambda}`.

    Returns:
        Tensor, float32 scalar.
    """
    step = ops.cast(step, ms.float32)
    eye = ops.eye(g.shape[-1], g.shape[-1], ms.float32)
    left = ops.expand_dims(a_diag + delta, 1) * step
    return ops.reduce_sum(step * ops.matmul(left, g + delta * eye))


def layernorm_curvature(grad, step, n, damping):
    r"""The diagonal curvature of the LayerNorm rule (:func:`layernorm_precondition`) applied
    to a step.

    .. math::

        \Delta^\top C \Delta = \sum \Delta \odot \Delta \odot \big(g \odot g / N +
        \sqrt{\lambda}\big)

    Args:
        grad (Tensor): :math:`g`.
        step (Tensor): :math:`\Delta`, shape of `grad`.
        n (Union[int, Tensor]): :math:`N`.
        damping (Tensor): :math:`\lambda`.

    Returns:
        Tensor, float32 scalar.
    """
    step = ops.cast(step, ms.float32)
    return ops.reduce_sum(step * step * (grad * grad / n + ops.sqrt(damping)))


def momentum_step(weight, velocity, grad, lr, momentum, nesterov):
    r"""Heavy-ball (or Nesterov) momentum step.

    .. math::

        v' = \mu v + g,\qquad
        w' = \begin{cases} w - lr\,(g + \mu v') & \text{Nesterov} \\
                            w - lr\, v' & \text{otherwise} \end{cases}

    Note:
        Written with portable ops because the CPU kernel of ``ops.ApplyMomentum`` ignores
        ``use_nesterov`` (MindSpore 2.10).

    Args:
        weight (Tensor): :math:`w`.
        velocity (Tensor): :math:`v`.
        grad (Tensor): :math:`g`.
        lr (Tensor): :math:`lr`.
        momentum (Tensor): :math:`\mu`.
        nesterov (bool): Nesterov variant.

    Returns:
        tuple(Tensor, Tensor), :math:`(w', v')`.
    """
    v_new = momentum * velocity + grad
    if nesterov:
        return weight - lr * (grad + momentum * v_new), v_new
    return weight - lr * v_new, v_new


def kl_clip_scale(preconditioned, gradients, lr, kl_clip):
    r"""KL-clip factor of KAISA (Pauloski et al. 2021): bound the natural-gradient step's size.

    .. math::

        s = lr^2 \sum_i \langle \tilde g_i, g_i \rangle, \qquad
        \nu = \begin{cases}
            \min\big(1,\ \sqrt{\kappa / s}\big) & \text{if } s > 0 \text{ and finite},\\
            1 & \text{otherwise,}
        \end{cases}

    so that the scaled step :math:`\nu\tilde g` has :math:`lr^2\,(\nu\tilde g)^\top F\,(\nu
    \tilde g) \approx \nu^2 s \le \kappa` (:math:`\tilde g_i = F_i^{-1} g_i`, summed over the
    preconditioned parameters :math:`i`).

    Args:
        preconditioned (tuple[Tensor]): :math:`\tilde g_i`.
        gradients (tuple[Tensor]): :math:`g_i`, same shapes.
        lr (Tensor): :math:`lr`, scalar.
        kl_clip (float): :math:`\kappa > 0`.

    Returns:
        Tensor, float32 scalar :math:`\nu \in (0, 1]`.

    Examples:
        >>> import numpy as np
        >>> import mindspore as ms
        >>> from ms_optim.ops.kfac import kl_clip_scale
        >>> g = ms.Tensor(np.full((2, 2), 3.0, np.float32))
        >>> print(round(float(kl_clip_scale((g,), (g,), ms.Tensor(0.1), 0.0009)), 6))  # s = 0.36
        0.05
    """
    s = ops.zeros((), ms.float32)
    for pg, g in zip(preconditioned, gradients):
        s = s + ops.reduce_sum(ops.cast(pg, ms.float32) * ops.cast(g, ms.float32))
    return kl_clip_factor(s, lr, kl_clip)


def kl_clip_factor(inner, lr, kl_clip):
    r"""The factor :math:`\nu` of :func:`kl_clip_scale` from :math:`\sum_i \langle \tilde g_i,
    g_i\rangle` (the optimizer sums it per parameter).

    Args:
        inner (Tensor): :math:`\sum_i \langle \tilde g_i, g_i \rangle`, float32 scalar.
        lr (Tensor): :math:`lr`.
        kl_clip (float): :math:`\kappa > 0`.

    Returns:
        Tensor, float32 scalar :math:`\nu \in (0, 1]`.
    """
    s = inner * ops.cast(lr, ms.float32) * ops.cast(lr, ms.float32)
    ok = ops.logical_and(s > 0, ops.isfinite(s))
    one = ops.ones((), ms.float32)
    nu = ops.sqrt(kl_clip / ops.select(ok, s, one))
    return ops.select(ok, ops.minimum(nu, one), one)


def factor_moving_average(raw, weight, new, decay):
    r"""Running average of a Kronecker factor across refreshes (KAISA / kfac-jax style), with the
    start-up bias removed.

    .. math::

        R_k = \beta R_{k-1} + (1 - \beta) F_k,\qquad
        w_k = \beta w_{k-1} + (1 - \beta),

        \bar F_k = R_k / w_k,\qquad R_0 = 0,\ w_0 = 0

    so :math:`\bar F_1 = F_1` and :math:`\bar F_k = \sum_{j \le k} \beta^{k-j} F_j / \sum_{j \le k}
    \beta^{k-j}`: a normalised exponentially weighted mean of the refreshes' factors :math:`F_j`
    (:math:`A` or :math:`G`, or their diagonal blocks: the mean is linear).

    Args:
        raw (Tensor): :math:`R_{k-1}`, float32, the factor's shape.
        weight (Tensor): :math:`w_{k-1}`, float32 scalar.
        new (Tensor): :math:`F_k`, the refresh's factor (same shape as `raw`).
        decay (float): :math:`\beta \in [0, 1)`.

    Returns:
        tuple ``(raw, weight, average)``: :math:`R_k`, :math:`w_k`, :math:`\bar F_k`.

    Examples:
        >>> import numpy as np
        >>> import mindspore as ms
        >>> from ms_optim.ops.kfac import factor_moving_average
        >>> r, w = ms.Tensor(np.zeros(2, np.float32)), ms.Tensor(0.0)
        >>> r, w, avg = factor_moving_average(r, w, ms.Tensor(np.array([1.0, 2.0], np.float32)), 0.5)
        >>> avg.asnumpy().tolist()  # the first refresh: the factor itself
        [1.0, 2.0]
        >>> r, w, avg = factor_moving_average(r, w, ms.Tensor(np.array([3.0, 4.0], np.float32)), 0.5)
        >>> avg.asnumpy().tolist()  # (0.5*0.5*[1, 2] + 0.5*[3, 4]) / 0.75
        [2.3333332538604736, 3.3333332538604736]
    """
    raw = decay * raw + (1.0 - decay) * ops.cast(new, ms.float32)
    weight = decay * weight + (1.0 - decay)
    return raw, weight, raw / weight


def quadratic_model(inner, curvature):
    r"""Change of the local quadratic model of the loss for a step :math:`\delta`
    (Martens & Grosse 2015, section 6.5).

    .. math::

        M(\delta) - M(0) = \langle g, \delta\rangle + \tfrac{1}{2}\,\delta^\top C\,\delta

    Args:
        inner (Tensor): :math:`\langle g, \delta\rangle`, summed over the parameters.
        curvature (Tensor): :math:`\delta^\top C \delta`, summed over the parameters.

    Returns:
        Tensor, float32 scalar.
    """
    return inner + 0.5 * curvature


def reduction_ratio(loss_change, model_change):
    r"""Levenberg-Marquardt reduction ratio: observed over predicted change of the loss.

    .. math::

        \rho = \begin{cases}
            \Delta L / \Delta M & \text{if } \Delta M < 0 \text{ and both are finite},\\
            -\infty & \text{if } \Delta M < 0 \text{ is finite and } \Delta L \text{ is not},\\
            \text{NaN} & \text{otherwise (no information: no adaptation)}
        \end{cases}

    with :math:`\Delta L = L(\theta + \delta) - L(\theta)` on the same batch and
    :math:`\Delta M` from :func:`quadratic_model`.

    Args:
        loss_change (Tensor): :math:`\Delta L`, float32 scalar.
        model_change (Tensor): :math:`\Delta M`, float32 scalar.

    Returns:
        Tensor, float32 scalar :math:`\rho`.

    Examples:
        >>> import mindspore as ms
        >>> from ms_optim.ops.kfac import reduction_ratio
        >>> print(float(reduction_ratio(ms.Tensor(-0.3), ms.Tensor(-0.4))))
        0.75
    """
    model_ok = ops.logical_and(model_change < 0, ops.isfinite(model_change))
    safe_model = ops.select(model_ok, model_change, -ops.ones((), ms.float32))
    rho = ops.select(ops.isfinite(loss_change), loss_change / safe_model,
                     ops.fill(ms.float32, (), float("-inf")))
    return ops.select(model_ok, rho, ops.fill(ms.float32, (), float("nan")))


def lm_damping_scale(scale, rho, omega, lower, upper):
    r"""Levenberg-Marquardt update of the damping multiplier :math:`s` (Martens & Grosse 2015,
    section 6.5, applied to a multiplier of the damping schedule).

    .. math::

        s' = \operatorname{clip}\Big(\begin{cases}
            \omega\, s & \rho > 3/4\\
            s / \omega & \rho < 1/4\\
            s & \text{otherwise (also } \rho = \text{NaN)}
        \end{cases},\ s_{\min},\ s_{\max}\Big)

    Args:
        scale (Tensor): :math:`s > 0`, float32 scalar.
        rho (Tensor): :math:`\rho` (:func:`reduction_ratio`).
        omega (float): :math:`\omega \in (0, 1)`.
        lower (float): :math:`s_{\min} > 0`.
        upper (float): :math:`s_{\max} \ge s_{\min}`.

    Returns:
        Tensor, float32 scalar :math:`s'`.

    Examples:
        >>> import mindspore as ms
        >>> from ms_optim.ops.kfac import lm_damping_scale
        >>> s = ms.Tensor(1.0)
        >>> [round(float(lm_damping_scale(s, ms.Tensor(r), 0.5, 0.1, 10.0)), 6) for r in (0.9, 0.5, 0.1)]
        [0.5, 1.0, 2.0]
    """
    new = ops.select(rho > 0.75, scale * omega, scale)
    new = ops.select(rho < 0.25, scale / omega, new)
    return ops.minimum(ops.maximum(new, lower), upper)


def eigen_of_blocks(blocks):
    r"""Eigen-decomposition of symmetric positive semi-definite blocks.

    .. math::

        M_b = Q_b \operatorname{diag}(e_b)\, Q_b^\top,\qquad Q_b^\top Q_b = I,\quad e_b \ge 0

    computed with the batched singular value decomposition (``ops.svd``; MindSpore 2.10 has no
    batched ``eigh``): for a symmetric positive semi-definite matrix the two coincide, and an
    eigenvalue that rounding makes slightly negative comes back as its absolute value.

    Args:
        blocks (Tensor): :math:`(n, s, s)`, float32.

    Returns:
        tuple ``(q, e)``: :math:`Q` of shape :math:`(n, s, s)` (eigenvectors in columns) and
        :math:`e` of shape :math:`(n, s)`.
    """
    e, q, _ = ops.svd(blocks, full_matrices=False, compute_uv=True)
    return q, e


def kron_eigen_precondition(q_g, e_g, grad, q_a, e_a, t, damping, groups=1):
    r"""Kronecker-factored natural gradient with the damping on the eigenvalues (KAISA's
    eigen method): the exact inverse of :math:`T\,A_{bd} \otimes G_{bd} + \lambda I`.

    .. math::

        \tilde\nabla W = Q_G \Big[\big(Q_G^\top\,\nabla W\,Q_A\big) \oslash
        \big(T\, e_G e_A^\top + \lambda\big)\Big] Q_A^\top

    with :math:`A_{bd} = Q_A \operatorname{diag}(e_A) Q_A^\top` and
    :math:`G_{bd} = Q_G \operatorname{diag}(e_G) Q_G^\top` block by block
    (:func:`eigen_of_blocks`; :math:`\oslash` element-wise division), per group for
    `groups` > 1. The padding of the last blocks is carried through and cut at the end.

    Args:
        q_g (Tensor): eigenvectors of the blocks of :math:`G`, :math:`(g\, n_G, s_G, s_G)`.
        e_g (Tensor): their eigenvalues, :math:`(g\, n_G, s_G)`.
        grad (Tensor): :math:`\nabla W`, shape :math:`(g\, d_{out}, d_{in})`.
        q_a (Tensor): eigenvectors of the blocks of :math:`A`, :math:`(g\, n_A, s_A, s_A)`.
        e_a (Tensor): their eigenvalues, :math:`(g\, n_A, s_A)`.
        t (Union[int, Tensor]): :math:`T`.
        damping (Tensor): :math:`\lambda > 0`.
        groups (int): :math:`g`. Default: ``1``.

    Returns:
        Tensor of shape :math:`(g\, d_{out}, d_{in})`.
    """
    rows, d_in = grad.shape
    out_p = q_g.shape[0] // groups * q_g.shape[1]
    in_p = q_a.shape[0] // groups * q_a.shape[1]
    x = _pad_to_blocks(ops.cast(grad, ms.float32), groups, out_p, in_p)
    x = _padded_block_product(ops.transpose(q_g, (0, 2, 1)), x, q_a, groups)
    den = t * ops.expand_dims(ops.reshape(e_g, (groups, out_p)), 2) \
        * ops.expand_dims(ops.reshape(e_a, (groups, in_p)), 1) + damping
    x = _padded_block_product(q_g, x / den, ops.transpose(q_a, (0, 2, 1)), groups)
    return _crop_from_blocks(x, rows, d_in)


def kron_eigen_curvature(g_blocks, step, a_blocks, t, damping, groups=1):
    r"""The curvature that :func:`kron_eigen_precondition` inverts, applied to a step.

    .. math::

        \Delta^\top C \Delta = T\,\big\langle \Delta,\ G_{bd}\,\Delta\,A_{bd} \big\rangle
        + \lambda\,\langle \Delta, \Delta\rangle,\qquad
        C = T\,A_{bd} \otimes G_{bd} + \lambda I

    Args:
        g_blocks (Tensor): diagonal blocks of :math:`G`, shape :math:`(g\, n_G, s_G, s_G)`.
        step (Tensor): :math:`\Delta`, shape :math:`(g\, d_{out}, d_{in})`.
        a_blocks (Tensor): diagonal blocks of :math:`A`, shape :math:`(g\, n_A, s_A, s_A)`.
        t (Union[int, Tensor]): :math:`T`.
        damping (Tensor): :math:`\lambda`.
        groups (int): :math:`g`. Default: ``1``.

    Returns:
        Tensor, float32 scalar.
    """
    step = ops.cast(step, ms.float32)
    prod = _kron_block_product(g_blocks, step, a_blocks, groups)
    return t * ops.reduce_sum(step * prod) + damping * ops.reduce_sum(step * step)
