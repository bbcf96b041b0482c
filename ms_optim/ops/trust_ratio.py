"""The LARS trust ratio and the LARS-transformed gradient: the formulas, once."""
import mindspore as ms
from mindspore import ops

__all__ = ["lars_trust_ratio", "lars_gradient"]


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
        \qquad
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
        w_norm (Tensor): :math:`\|w\|_2`, float32 scalar.
        g_norm (Tensor): :math:`\|g\|_2`, float32 scalar.
        weight_decay (Union[Tensor, float]): :math:`\lambda \ge 0`.
        coefficient (float): :math:`\eta \ge 0`.
        epsilon (float): :math:`\epsilon \ge 0`.
        use_clip (bool): return the clipped ratio. Default: ``False`` .
        learning_rate (Union[Tensor, float]): :math:`\gamma_t`, only read when `use_clip` is
            ``True``. Default: ``None`` .

    Returns:
        Tensor, float32 scalar: the trust ratio (never NaN for finite inputs).

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
        lr_pos = ops.cast(learning_rate, ms.float32) > 0
        safe = ops.logical_and(safe, lr_pos)
        trust = ops.clamp(trust / ops.select(lr_pos, ops.cast(learning_rate, ms.float32), one),
                          0.0, 1.0)
    return ops.select(safe, trust, one)


def lars_gradient(weight, gradient, weight_decay, coefficient, epsilon, use_clip=False,
                  learning_rate=None, adapt=True):
    r"""
    The gradient that LARS hands to the wrapped optimizer for one parameter.

    .. math::

        g' = \begin{cases}
            \tau\,(g + \lambda w) & \text{if the parameter is LARS-adapted (`adapt`)},\\
            g + \lambda w & \text{otherwise,}
        \end{cases}

    with :math:`\tau` from :func:`lars_trust_ratio` evaluated at :math:`\|w\|_2` and
    :math:`\|g\|_2` (computed in float32 whatever the parameter dtype). :math:`g` is the gradient
    with the loss scale already removed and :math:`\lambda` the wrapped optimizer's weight decay
    for this parameter (0 where its decay filter excludes it).

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
    w32 = ops.cast(weight, ms.float32)
    g32 = ops.cast(gradient, ms.float32)
    decayed = g32 + weight_decay * w32
    if adapt:
        w_norm = ops.sqrt(ops.reduce_sum(ops.square(w32)))
        g_norm = ops.sqrt(ops.reduce_sum(ops.square(g32)))
        trust = lars_trust_ratio(w_norm, g_norm, weight_decay, coefficient, epsilon, use_clip,
                                 learning_rate)
        decayed = trust * decayed
    return ops.cast(decayed, ops.dtype(gradient))
