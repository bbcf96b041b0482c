r"""Curvature blocks: what THOR does for each kind of layer, in one class per kind.

A block class owns, for the layers of its kind, the shapes of the inverses and their initial
values, the inversion cost (used to balance ``distribute_inversion``), the damped inversion with
its fault guard, and the preconditioning rule; the optimizer only maps them over the layers.
The formulas themselves are the pure functions of :mod:`ms_optim.ops.kfac`.

* :class:`KroneckerBlock` (``DenseThor``, ``Conv2dThor``, grouped convolutions per group):
  :math:`\tilde g = \frac{1}{T}\hat G^{-1}_{bd}\nabla W \hat A^{-1}_{bd}` with 128-block inverses
  of :math:`A + \delta I`, :math:`G + \delta I`, :math:`\delta = \sqrt{\lambda/T}`.
* :class:`EigenKroneckerBlock` (``DenseThor``, ``Conv2dThor`` with ``inverse_method="eigh"``):
  :math:`\tilde g = Q_G[(Q_G^\top \nabla W Q_A) \oslash (T e_G e_A^\top + \lambda)]Q_A^\top`, the
  exact inverse of :math:`T A_{bd} \otimes G_{bd} + \lambda I` from the blocks'
  eigen-decompositions.
* :class:`EmbeddingBlock` (``EmbeddingThor``, ``EmbeddingLookupThor``): diagonal :math:`A`
  (token frequencies), full :math:`G`, :math:`\delta = \sqrt{\lambda}`.
* The LayerNorm rule needs no statistics and no inverse: it is a per-parameter rule
  (:func:`ms_optim.ops.kfac.layernorm_precondition`) applied by the optimizer.

The registry maps THOR layer classes to block classes. It is filled for the built-in layers
here and by :func:`ms_optim.register_thor_layer` (``block=``) for user layers; a layer class
without a block is never converted (:class:`ms_optim.ConvertNetUtils` raises ``TypeError``).

Extension point: a subclass of :class:`CurvatureBlock` implements the static graph functions
:meth:`~CurvatureBlock.invert` and :meth:`~CurvatureBlock.precondition` (and
:meth:`~CurvatureBlock.curvature` for ``adaptive_damping``) and the host-side
:meth:`~CurvatureBlock.inverse_shapes`; its layer collects the statistics ``matrix_a``,
``matrix_g``, ``thor_t`` and ``thor_n`` (as the built-in layers do) on refresh steps.
"""
import numpy as np

import mindspore as ms
from mindspore import ops

from ..ops import kfac

__all__ = ["CurvatureBlock", "KroneckerBlock", "EigenKroneckerBlock", "EmbeddingBlock", "register_block",
           "block_class_for", "BLOCK_KINDS"]

_F32_EPS = 2.0 ** -23

#: Block classes in registration order; a class's index is its ``kind`` in the compiled graphs.
BLOCK_KINDS = []
#: THOR layer class -> block class.
_BLOCK_OF_LAYER = {}
_STATISTICS = ("matrix_a", "matrix_g", "thor_t", "thor_n")


def _guard(delta, scale, a, g):
    """The fault guard of a damped inversion: False for non-finite statistics or a damping too
    small for float32 Cholesky (:math:`\\delta \\le s\\, 2^{-23} \\max\\operatorname{diag}`,
    ``scale`` the largest diagonal entry)."""
    finite = ops.logical_and(ops.isfinite(a).all(), ops.isfinite(g).all())
    tol = g.shape[-1] * _F32_EPS
    ok = ops.logical_and(finite, delta > tol * scale)
    return ok


def _safe(ok, delta, a, g):
    """``(delta, a, g)``, with a rejected factor replaced by :math:`I` (zeros and
    :math:`\\delta = 1`) so that the inversion never fails."""
    zero = ops.zeros((), ms.float32)
    return ops.where(ok, delta, ops.ones((), ms.float32)), ops.where(ok, a, zero), \
        ops.where(ok, g, zero)


def _checked(ok, a_new, g_new):
    """Reject non-finite inverses too; returns ``(a_inv, g_inv, ok as 0./1.)``, zeros if bad."""
    ok = ops.logical_and(ok, ops.logical_and(ops.isfinite(a_new).all(),
                                             ops.isfinite(g_new).all()))
    okf = ops.cast(ok, ms.float32)
    return a_new * okf, g_new * okf, okf


class CurvatureBlock:
    """Base class of the curvature blocks (one instance per preconditioned layer).

    A subclass gives a new kind of layer its curvature rule: the host-side shapes and initial
    values of the inverses, and two static graph functions, :meth:`invert` (refresh steps) and
    :meth:`precondition` (every step), which the optimizer maps over the layers of the kind.
    Register it for a layer with ``ms_optim.register_thor_layer(layer_cls, converter,
    block=MyBlock)``.

    Args:
        cell (Cell): the THOR layer.

    Examples:
        >>> import numpy as np
        >>> import mindspore as ms
        >>> from mindspore import nn
        >>> import ms_optim
        >>> from ms_optim.thor.blocks import KroneckerBlock
        >>> class DoubleDamping(KroneckerBlock):  # the Kronecker rule at twice the damping
        ...     @staticmethod
        ...     def invert(spd_block_inverse, lam, d_a, d_g, a, g, t):
        ...         return KroneckerBlock.invert(spd_block_inverse, 2 * lam, d_a, d_g, a, g, t)
        >>> class MyDense(nn.Dense):
        ...     pass
        >>> class MyDenseThor(ms_optim.DenseThor):
        ...     pass
        >>> def convert(cell):
        ...     new = MyDenseThor(cell.in_channels, cell.out_channels)
        ...     new.weight, new.bias = cell.weight, cell.bias
        ...     return new
        >>> ms_optim.register_thor_layer(MyDense, convert, block=DoubleDamping)
        >>> net = nn.SequentialCell([MyDense(4, 3), nn.Dense(3, 2)])
        >>> opt = ms_optim.thor(net, ms.Tensor(0.1, ms.float32), ms.Tensor(0.03, ms.float32), 0.9)
        >>> [type(b).__name__ for b in opt.blocks]
        ['DoubleDamping', 'KroneckerBlock']
    """

    #: attribute of the layer holding the preconditioned weight
    weight_name = "weight"

    def __init__(self, cell):
        self.cell = cell
        #: independent factor pairs of the layer (the groups of a grouped convolution)
        self.groups = getattr(cell, "thor_groups", 1)

    @property
    def weight(self):
        """The preconditioned Parameter."""
        return getattr(self.cell, self.weight_name)

    def dims(self):
        """``(d_a, d_g)``: the sizes :meth:`invert` receives as ``d_a``, ``d_g``."""
        raise NotImplementedError

    def inverse_shapes(self):
        """Shapes of the stored inverses ``(A^-1, G^-1)``."""
        raise NotImplementedError

    def initial_inverses(self):
        """float32 arrays ``(A^-1, G^-1)`` used before the first refresh (identities)."""
        raise NotImplementedError

    def initial_kept(self):
        """float32 value of the layer's ``thor_t`` Parameter before the first refresh: what
        :meth:`kept` stores at a refresh (default: :math:`T`, so 1.0)."""
        return np.float32(1.0)

    @staticmethod
    def kept(lam, t):
        """Graph function: what a refresh keeps beside the inverses for :meth:`precondition`
        (its ``t`` argument): by default :math:`T`."""
        return t

    @staticmethod
    def t_of(kept):
        """Host side: :math:`T` from a kept value (numpy)."""
        return float(np.asarray(kept).reshape(-1)[0])

    def host_condition(self, a_store, g_store, kept):
        """Host side: the condition number of the damped curvature from the stored values, or
        None to use the two factors' inverses (:func:`ms_optim.callbacks.factor_condition`)."""
        return None

    def inversion_cost(self):
        """Relative cost of one inversion (balances ``distribute_inversion``)."""
        a, g = self.inverse_shapes()
        return float(sum(int(np.prod(s[:-2] or (1,))) * s[-1] ** 3 for s in (a, g) if len(s) >= 2)
                     + sum(s[0] for s in (a, g) if len(s) == 1))

    @staticmethod
    def delta(lam, t):
        """The damping :math:`\\delta` added to the layer's factors at damping :math:`\\lambda`
        (Tensor) and :math:`T` output locations per sample."""
        raise NotImplementedError

    @staticmethod
    def invert(spd_block_inverse, lam, d_a, d_g, a, g, t):
        """Graph function: damped inverses of one layer's statistics with the fault guard.

        Returns ``(a_inv, g_inv, ok)``: ``ok`` 1.0 if accepted, else 0.0 and zero inverses.
        """
        raise NotImplementedError

    @staticmethod
    def precondition(g_inv, a_inv, t, grad, groups):
        """Graph function: the preconditioned float32 gradient of the layer's weight."""
        raise NotImplementedError

    @staticmethod
    def curvature(lam, a, g, t, step, groups):
        r"""Graph function: :math:`\delta^\top C \delta` (float32 scalar) for a step
        :math:`\delta` of the weight, :math:`C` the damped curvature whose inverse
        :meth:`precondition` applies, from the statistics ``a``, ``g``, ``t`` at damping
        ``lam``. Needed only with ``adaptive_damping`` (its quadratic model); a block class that
        does not implement it cannot be used with ``adaptive_damping`` (``TypeError``)."""
        raise NotImplementedError

    @classmethod
    def has_curvature(cls):
        """Whether the class implements :meth:`curvature`."""
        return cls.curvature is not CurvatureBlock.curvature


class KroneckerBlock(CurvatureBlock):
    r"""Dense / Conv2d: 128-block Kronecker factors, one pair per group.

    .. math::

        \tilde g^{(j)} = \frac{1}{T}\hat G^{(j)-1}_{bd}\,\nabla W^{(j)}\,\hat A^{(j)-1}_{bd},
        \qquad \delta = \sqrt{\lambda/T}
    """

    @staticmethod
    def block_shape(d, groups=1):
        """``(groups n_b, s, s)``: the diagonal blocks of ``groups`` factors of size ``d``, the
        shape of a statistic (``matrix_a``, ``matrix_g``) and of its inverse."""
        nb, s, _ = kfac.block_geometry(d)
        return (groups * nb, s, s)

    def dims(self):
        return self.cell.thor_dims

    def inverse_shapes(self):
        return tuple(self.block_shape(d, self.groups) for d in self.dims())

    def initial_inverses(self):
        return tuple(np.broadcast_to(np.eye(s[-1], dtype=np.float32), s).copy()
                     for s in self.inverse_shapes())

    @staticmethod
    def delta(lam, t):
        return kfac.factored_damping(lam, t)

    @staticmethod
    def invert(spd_block_inverse, lam, d_a, d_g, a, g, t):
        delta = KroneckerBlock.delta(lam, t)
        scale = ops.maximum(ops.diagonal(g, 0, -2, -1).max(), 0.0)
        scale = ops.maximum(scale, ops.diagonal(a, 0, -2, -1).max())
        ok = _guard(delta, scale, a, g)
        safe_delta, a_safe, g_safe = _safe(ok, delta, a, g)
        a_new = kfac.damped_inverse_of_blocks(a_safe, d_a, safe_delta, spd_block_inverse)
        g_new = kfac.damped_inverse_of_blocks(g_safe, d_g, safe_delta, spd_block_inverse)
        return _checked(ok, a_new, g_new)

    @staticmethod
    def precondition(g_inv, a_inv, t, grad, groups):
        shape = grad.shape
        g2 = kfac.kron_precondition(g_inv, ops.reshape(grad, (shape[0], -1)), a_inv, t, groups)
        return ops.reshape(g2, shape)

    @staticmethod
    def curvature(lam, a, g, t, step, groups):
        return kfac.kron_curvature(g, ops.reshape(step, (step.shape[0], -1)), a, t,
                                   KroneckerBlock.delta(lam, t), groups)


class EigenKroneckerBlock(KroneckerBlock):
    r"""Dense / Conv2d with ``inverse_method="eigh"``: the damping on the eigenvalues.

    .. math::

        \tilde g^{(j)} = Q_G \Big[\big(Q_G^\top \nabla W^{(j)} Q_A\big) \oslash
        \big(T\, e_G e_A^\top + \lambda\big)\Big] Q_A^\top

    the exact inverse of :math:`T\,A_{bd} \otimes G_{bd} + \lambda I` from the eigen-decompositions
    of the 128-blocks (:func:`ms_optim.ops.kfac.kron_eigen_precondition`). A refresh stores
    :math:`[Q \mid e]` per block (shape :math:`(g\,n_b, s, s + 1)`) in the inverse Parameters and
    :math:`(T, \lambda)` in ``thor_t``. Fault guard: non-finite statistics, or
    :math:`\lambda \le s\,2^{-23}\,T \max\operatorname{diag} A \max\operatorname{diag} G`.
    """

    def inverse_shapes(self):
        return tuple((n, s, s + 1) for n, s, _ in KroneckerBlock.inverse_shapes(self))

    def initial_inverses(self):
        # Q = I, e = 1 (with kept (T, lambda) = (1, 0): the plain gradient before a refresh)
        out = []
        for n, s, _ in KroneckerBlock.inverse_shapes(self):
            x = np.zeros((n, s, s + 1), np.float32)
            x[:, :, :s] = np.eye(s, dtype=np.float32)
            x[:, :, s] = 1.0
            out.append(x)
        return tuple(out)

    def initial_kept(self):
        return np.array([1.0, 0.0], np.float32)

    @staticmethod
    def kept(lam, t):
        return ops.concat((ops.reshape(t * 1.0, (1,)), ops.reshape(lam * 1.0, (1,))))

    def inversion_cost(self):
        # one SVD per block: measured 8.6x a Cholesky inversion of the same 16 x 128 x 128 blocks
        # on the CPU backend (41.2 ms against 4.8 ms); only balances distribute_inversion
        return 8.0 * KroneckerBlock.inversion_cost(self)

    @staticmethod
    def invert(spd_block_inverse, lam, d_a, d_g, a, g, t):
        scale_a = ops.maximum(ops.diagonal(a, 0, -2, -1).max(), 0.0)
        scale_g = ops.maximum(ops.diagonal(g, 0, -2, -1).max(), 0.0)
        ok = _guard(lam, t * scale_a * scale_g, a, g)
        _, a_safe, g_safe = _safe(ok, lam, a, g)
        q_a, e_a = kfac.eigen_of_blocks(a_safe)
        q_g, e_g = kfac.eigen_of_blocks(g_safe)
        store_a = ops.concat((q_a, ops.expand_dims(e_a, -1)), -1)
        store_g = ops.concat((q_g, ops.expand_dims(e_g, -1)), -1)
        return _checked(ok, store_a, store_g)

    @staticmethod
    def precondition(g_inv, a_inv, t, grad, groups):
        s_g, s_a = g_inv.shape[1], a_inv.shape[1]
        shape = grad.shape
        g2 = kfac.kron_eigen_precondition(g_inv[:, :, :s_g], g_inv[:, :, s_g],
                                          ops.reshape(grad, (shape[0], -1)),
                                          a_inv[:, :, :s_a], a_inv[:, :, s_a], t[0], t[1], groups)
        return ops.reshape(g2, shape)

    @staticmethod
    def curvature(lam, a, g, t, step, groups):
        return kfac.kron_eigen_curvature(g, ops.reshape(step, (step.shape[0], -1)), a, t, lam,
                                         groups)

    def host_condition(self, a_store, g_store, kept):
        r""":math:`(T \max e_G \max e_A + \lambda) / (T \min e_G \min e_A + \lambda)` over
        the factors' eigenvalues (the zeros of a last block's padding left out)."""
        t, lam = (float(v) for v in np.asarray(kept, np.float64).reshape(-1)[:2])
        ext = []
        for store, d in ((a_store, self.dims()[0]), (g_store, self.dims()[1])):
            store = np.asarray(store, np.float64)
            s = store.shape[1]
            nb = -(-d // s)
            vals = []
            for b in range(store.shape[0]):
                pad = s - (d - (nb - 1) * s) if b % nb == nb - 1 else 0
                vals.append(np.sort(store[b, :, s])[pad:])
            vals = np.concatenate(vals)
            ext.append((vals.min(), vals.max()))
        low = t * ext[0][0] * ext[1][0] + lam
        return float((t * ext[0][1] * ext[1][1] + lam) / low) if low > 0 else float("inf")


class EmbeddingBlock(CurvatureBlock):
    r"""Embedding tables: diagonal :math:`A` (token frequencies), full :math:`G`.

    .. math::

        \tilde g = \operatorname{diag}(a + \delta)^{-1}\,\nabla E\,(G + \delta I)^{-1},
        \qquad \delta = \sqrt{\lambda}
    """

    weight_name = "embedding_table"

    def dims(self):
        return self.cell.matrix_a.shape[0], self.cell.matrix_g.shape[0]

    def inverse_shapes(self):
        d_a, d_g = self.dims()
        return (d_a,), (1, d_g, d_g)

    def initial_inverses(self):
        d_a, d_g = self.dims()
        return np.ones((d_a,), np.float32), np.eye(d_g, dtype=np.float32)[None]

    @staticmethod
    def delta(lam, t):
        return ops.sqrt(lam)

    @staticmethod
    def invert(spd_block_inverse, lam, d_a, d_g, a, g, t):
        delta = EmbeddingBlock.delta(lam, t)
        scale = ops.maximum(ops.diagonal(g, 0, -2, -1).max(), 0.0)
        ok = ops.logical_and(_guard(delta, scale, a, g), delta > 0)
        safe_delta, a_safe, g_safe = _safe(ok, delta, a, g)
        a_new = kfac.embedding_damped_inverse(a_safe, safe_delta)
        g_new = kfac.damped_block_inverse(g_safe, safe_delta, g.shape[0],
                                          kfac.spd_block_inverse_cholesky)
        return _checked(ok, a_new, g_new)

    @staticmethod
    def precondition(g_inv, a_inv, t, grad, groups):
        return kfac.embedding_precondition(a_inv, grad, g_inv[0])

    @staticmethod
    def curvature(lam, a, g, t, step, groups):
        return kfac.embedding_curvature(a, step, g, EmbeddingBlock.delta(lam, t))


def _keep_whole_under_rewrite(cls):
    """Make the THOR layers opaque to ``mindspore.rewrite`` (used by ``amp_level="O1"``).

    O1 regenerates a network's Python source, descending into every user cell and the functions
    its ``construct`` calls, and casts the whitelisted primitives it finds to float16. Inside a
    THOR layer that would cast the covariance matmuls of the statistics (which must stay
    float32), and the regenerated module loses module-level names (``NameError``). Cells listed
    in the rewrite's subtree black list are kept as one call of the original object instead.
    """
    try:
        from mindspore.rewrite.common import namespace
    except ImportError:  # no rewrite package: nothing descends into the layers
        return
    black = getattr(namespace, "_subtree_black_list", None)
    if isinstance(black, list):
        if cls not in black:
            black.append(cls)


def register_block(layer_cls, block_cls):
    """Precondition the THOR layer class `layer_cls` (and its subclasses) with `block_cls`.

    Raises:
        TypeError: If `block_cls` is not a :class:`CurvatureBlock` subclass, or `layer_cls` is
            already preconditioned by another block (return a subclass of it instead).
    """
    if not (isinstance(block_cls, type) and issubclass(block_cls, CurvatureBlock)):
        raise TypeError("For 'register_thor_layer', the argument 'block' must be a "
                        f"CurvatureBlock subclass, but got {block_cls!r}.")
    current = _BLOCK_OF_LAYER.get(layer_cls)
    if current is not None and current is not block_cls:
        raise TypeError(f"For 'register_thor_layer', {layer_cls.__name__} is preconditioned by "
                        f"{current.__name__}: to use {block_cls.__name__}, let the converter "
                        f"return a subclass of {layer_cls.__name__}.")
    if block_cls not in BLOCK_KINDS:
        BLOCK_KINDS.append(block_cls)
    _BLOCK_OF_LAYER[layer_cls] = block_cls
    _keep_whole_under_rewrite(layer_cls)


def block_class_for(cell):
    """The block class of a THOR layer (exact class, else its nearest registered base), or None."""
    for cls in type(cell).__mro__:
        if cls in _BLOCK_OF_LAYER:
            return _BLOCK_OF_LAYER[cls]
    return None


def missing_statistics(cell):
    """Names of the statistics a THOR layer must carry that `cell` lacks."""
    return [n for n in _STATISTICS if not hasattr(cell, n)]


def kind_of(block_cls):
    """The graph-side ``kind`` constant of a block class (its index in :data:`BLOCK_KINDS`)."""
    return BLOCK_KINDS.index(block_cls)


# the eigen variant of the Kronecker block is chosen by inverse_method="eigh", not by a layer
BLOCK_KINDS.append(EigenKroneckerBlock)
