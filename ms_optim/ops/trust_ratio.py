"""The LARS trust ratio and the LARS-transformed gradient: the formulas, once."""
import mindspore as ms
from mindspore import ops

__all__ = ["lars_trust_ratio", "lars_scales", "lars_gradient", "square_sum", "apply_scales"]


def lars_trust_ratio(w_norm, g_norm, weight_decay, coefficient, epsilon, use_clip=False,
                     learning_rate=None):
    r"""
    Layer-wise trust ratio of LARS, with the zero-norm guard.

    .. math::

        \tau = \begin{cases}
            \dfrac{\eta\,\|w\|}{\|g\| + \lambda\|w\| + \epsilon}
                & \text{if } \|w\| > 0 \text{ and } \|g\| + \lambda\|w\| + \epsilon > 0,\\[2ex]
            1 & \text{otherwise,}
        \end{cases}

        \tau_{\text{clip}} = \begin{cases}
            \min\!\big(\max(\tau / \gamma_t,\ 0),\ 1\big)
                & \text{if } \|w\| > 0,\ \|g\| + \lambda\|w\| + \epsilon > 0,\ \gamma_t > 0,\\
            1 & \text{otherwise.}
        \end{cases}

    Here :math:`\eta` is `coefficient`, :math:`\epsilon` is `epsilon`, :math:`\lambda` is
    `weight_decay`, :math:`\gamma_t` is `learning_rate`, :math:`\|w\|` is `w_norm` and
    :math:`\|g\|` is `g_norm`. With `use_clip` the function returns :math:`\tau_{\text{clip}}`,
    otherwise :math:`\tau`.

    Args:
        w_norm (Tensor): :math:`\|w\|_2`, float32 scalar, or one entry per layer (the
            formula is elementwise).
        g_norm (Tensor): :math:`\|g\|_2`, float32, same shape as `w_norm`.
        weight_decay (Union[Tensor, float]): :math:`\lambda \ge 0`.
        coefficient (float): :math:`\eta \ge 0`.
        epsilon (float): :math:`\epsilon \ge 0`.
        use_clip (bool): return the clipped ratio. Default: ``False`` .
        learning_rate (Union[Tensor, float]): :math:`\gamma_t`, only read when `use_clip` is
            ``True``. Default: ``None`` .

    Returns:
        Tensor, float32, shape of `w_norm`: the trust ratio (never NaN for finite inputs).

    Supported Platforms:
        ``Ascend`` ``GPU`` ``CPU``

    Examples:
        >>> import mindspore as ms
        >>> from ms_optim.ops import lars_trust_ratio
        >>> tau = lars_trust_ratio(ms.Tensor(2.0), ms.Tensor(1.0), 0.0, 0.001, 0.0)
        >>> print(round(float(tau), 6))
        0.002
        >>> print(float(lars_trust_ratio(ms.Tensor(0.0), ms.Tensor(1.0), 0.0, 0.001, 1e-5)))
        1.0
    """
    one = ops.ones_like(w_norm)
    denom = g_norm + weight_decay * w_norm + epsilon
    safe = ops.logical_and(w_norm > 0, denom > 0)
    trust = coefficient * w_norm / ops.select(safe, denom, one)
    if use_clip:
        lr = ops.cast(learning_rate, ms.float32) * one  # broadcast a shared lr to every layer
        lr_pos = lr > 0
        safe = ops.logical_and(safe, lr_pos)
        trust = ops.clamp(trust / ops.select(lr_pos, lr, one), 0.0, 1.0)
    return ops.select(safe, trust, one)


def lars_scales(w_sq, g_sq, weight_decay, coefficient, epsilon, use_clip=False,
                learning_rate=None, grad_scale=1.0):
    r"""
    The two factors of the LARS gradient, elementwise over any number of layers at once.

    For layer :math:`i` with weight :math:`w_i`, stored gradient :math:`\hat g_i` (the gradient
    times the loss scale, :math:`g_i = s\,\hat g_i`) and weight decay :math:`\lambda_i`:

    .. math::

        \|w_i\| = \sqrt{q^w_i}, \qquad \|g_i\| = s\sqrt{q^g_i}, \qquad
        \tau_i = \mathrm{lars\_trust\_ratio}(\|w_i\|, \|g_i\|, \lambda_i), \qquad
        a_i = \tau_i\, s, \qquad b_i = \tau_i\, \lambda_i,

    so that :math:`g'_i = a_i \hat g_i + b_i w_i = \tau_i (g_i + \lambda_i w_i)`. Here
    :math:`q^w_i = \sum w_i^2` is `w_sq`, :math:`q^g_i = \sum \hat g_i^2` is `g_sq` and
    :math:`s` is `grad_scale`. A layer whose `w_sq` is 0 gets :math:`\tau_i = 1`
    (:func:`lars_trust_ratio`'s guard), hence :math:`a_i = s`, :math:`b_i = \lambda_i`: the plain
    decayed gradient. The optimizer passes 0 for layers that `lars_filter` excludes.

    Args:
        w_sq (Tensor): :math:`q^w`, float32, any shape (one entry per layer).
        g_sq (Tensor): :math:`q^g`, float32, same shape as `w_sq`.
        weight_decay (Union[Tensor, float]): :math:`\lambda`, broadcastable to `w_sq`.
        coefficient (float): :math:`\eta`.
        epsilon (float): :math:`\epsilon`.
        use_clip (bool): clip the trust ratio. Default: ``False`` .
        learning_rate (Union[Tensor, float]): :math:`\gamma_t`, broadcastable to `w_sq` (only
            with `use_clip`). Default: ``None`` .
        grad_scale (Union[Tensor, float]): :math:`s`, the reciprocal loss scale.
            Default: ``1.0`` .

    Returns:
        tuple(Tensor, Tensor), :math:`(a, b)`, float32, shape of `w_sq`.

    Supported Platforms:
        ``Ascend`` ``GPU`` ``CPU``

    Examples:
        >>> import numpy as np
        >>> import mindspore as ms
        >>> from ms_optim.ops.trust_ratio import lars_scales
        >>> a, b = lars_scales(ms.Tensor(np.array([4.0, 0.0], np.float32)),
        ...                    ms.Tensor(np.array([1.0, 1.0], np.float32)), 0.5, 0.001, 0.0)
        >>> print(np.round(a.asnumpy(), 6), np.round(b.asnumpy(), 6))
        [0.000667 1.      ] [0.000333 0.5     ]
    """
    w_norm = ops.sqrt(w_sq)
    g_norm = ops.sqrt(g_sq)
    if not _is_one(grad_scale):
        g_norm = g_norm * grad_scale
    trust = lars_trust_ratio(w_norm, g_norm, weight_decay, coefficient, epsilon, use_clip,
                             learning_rate)
    a = trust if _is_one(grad_scale) else trust * grad_scale
    return a, trust * weight_decay


def _is_one(x):
    return isinstance(x, (int, float)) and x == 1.0


def _row_split(shape):
    """Rows for a two-stage sum: MindSpore's CPU ReduceSum to a scalar runs on one thread and
    several times slower than a row-wise reduction (measured on the ResNet-50 tensors)."""
    n = 1
    for d in shape:
        n *= d
    for rows in (1024, 512, 256, 128, 64, 32, 16, 8, 4, 2):
        if n % rows == 0 and n // rows >= 1024:
            return rows, n // rows
    return 1, n


def square_sum(x):
    """:math:`\\sum x^2` in float32: rows of the flattened tensor reduced first, then the rows
    (no cast of a float32 input)."""
    x32 = x if x.dtype == ms.float32 else ops.cast(x, ms.float32)
    rows, cols = _row_split(x.shape)
    if rows == 1:
        return ops.reduce_sum(x32 * x32)
    x32 = ops.reshape(x32, (rows, cols))
    return ops.reduce_sum(ops.reduce_sum(x32 * x32, 1))


def apply_scales(a, b, weight, gradient, scale_gradient=True, decay=True):
    r"""
    :math:`g' = a\,\hat g + b\,w` in float32, returned in the dtype of `gradient`.

    `scale_gradient` ``False`` means :math:`a = 1` is known when the graph is built and
    `decay` ``False`` means :math:`b = 0` is known: the multiply (or the add) is then left out.
    """
    if gradient.dtype == ms.float32:
        g32, out_dtype = gradient, None
    else:
        g32, out_dtype = ops.cast(gradient, ms.float32), gradient.dtype
    out = a * g32 if scale_gradient else g32
    if decay:
        w32 = weight if weight.dtype == ms.float32 else ops.cast(weight, ms.float32)
        out = out + b * w32
    if out_dtype is not None:
        out = ops.cast(out, out_dtype)
    return out


def lars_gradient(weight, gradient, weight_decay, coefficient, epsilon, use_clip=False,
                  learning_rate=None, adapt=True):
    r"""
    The gradient that LARS hands to the wrapped optimizer for one parameter.

    .. math::

        g' = \begin{cases}
            \tau\,g + (\tau\lambda)\,w & \text{if the parameter is LARS-adapted (`adapt`)},\\
            g + \lambda w & \text{otherwise,}
        \end{cases}

    with :math:`\tau` from :func:`lars_trust_ratio` evaluated at :math:`\|w\|_2` and
    :math:`\|g\|_2` (computed in float32 whatever the parameter dtype), i.e.
    :math:`\tau\,(g + \lambda w)`. :math:`g` is the gradient with the loss scale already
    removed and :math:`\lambda` the wrapped optimizer's weight decay for this parameter (0
    where its decay filter excludes it). The two factors come from
    :func:`ms_optim.ops.trust_ratio.lars_scales` (the batched form the optimizer uses).

    Args:
        weight (Tensor): :math:`w`.
        gradient (Tensor): :math:`g`, same shape as `weight`.
        weight_decay (Union[Tensor, float]): :math:`\lambda`.
        coefficient (float): :math:`\eta`.
        epsilon (float): :math:`\epsilon`.
        use_clip (bool): clip the trust ratio. Default: ``False`` .
        learning_rate (Union[Tensor, float]): :math:`\gamma_t` (only with `use_clip`).
            Default: ``None`` .
        adapt (bool): whether the layer-wise ratio applies. Default: ``True`` .

    Returns:
        Tensor, :math:`g'` with the dtype and shape of `gradient`.

    Supported Platforms:
        ``Ascend`` ``GPU`` ``CPU``

    Examples:
        >>> import numpy as np
        >>> import mindspore as ms
        >>> from ms_optim.ops import lars_gradient
        >>> w = ms.Tensor(np.array([[0.5, 0.8, 0.2], [0.6, 0.4, 0.2]], np.float32))
        >>> g = ms.Tensor(np.array([[0.4, 0.4, 0.5], [0.2, 0.4, 0.3]], np.float32))
        >>> out = lars_gradient(w, g, 0.0, 0.001, 1e-5)
        >>> print(np.round(out.asnumpy() * 1e4, 3))
        [[5.265 5.265 6.581]
         [2.633 5.265 3.949]]
    """
    if adapt:
        a, b = lars_scales(square_sum(weight), square_sum(gradient), weight_decay, coefficient,
                           epsilon, use_clip, learning_rate)
        return apply_scales(a, b, weight, gradient)
    return apply_scales(1.0, weight_decay, weight, gradient, scale_gradient=False)
