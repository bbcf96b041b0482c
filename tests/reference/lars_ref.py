"""Float64 NumPy reference for LARS (You, Gitman & Ginsburg 2017, arXiv:1708.03888, eq. (6)
with MindSpore's epsilon placement and LARC-style clipping), plus the inner optimizers' rules.

Notation map (paper -> code): eta -> coefficient, beta (weight decay) -> wd, local lr lambda^l ->
trust, gamma_t -> lr. Imports only numpy.
"""
import numpy as np


def trust_ratio(w, g, wd, coefficient, epsilon, use_clip=False, lr=None):
    """tau = eta*||w|| / (||g|| + wd*||w|| + eps); 1 where ||w|| = 0 or the denominator is 0;
    with clipping min(max(tau/lr, 0), 1), and 1 where lr = 0."""
    w = np.asarray(w, np.float64)
    g = np.asarray(g, np.float64)
    w_norm = np.sqrt(np.sum(w * w))
    g_norm = np.sqrt(np.sum(g * g))
    denom = g_norm + wd * w_norm + epsilon
    if w_norm == 0.0 or denom == 0.0:
        return 1.0
    tau = coefficient * w_norm / denom
    if use_clip:
        if lr <= 0.0:
            return 1.0
        tau = min(max(tau / lr, 0.0), 1.0)
    return tau


def lars_gradient(w, g, wd, coefficient, epsilon, use_clip=False, lr=None, adapt=True):
    """g' = tau * (g + wd*w) for adapted parameters, g + wd*w otherwise."""
    w = np.asarray(w, np.float64)
    g = np.asarray(g, np.float64)
    decayed = g + wd * w
    if not adapt:
        return decayed
    return trust_ratio(w, g, wd, coefficient, epsilon, use_clip, lr) * decayed


def momentum_step(w, v, g, lr, momentum, nesterov=False):
    """MindSpore ApplyMomentum: v <- mu*v + g; w <- w - lr*v (Nesterov: w - lr*(g + mu*v))."""
    v = momentum * v + g
    if nesterov:
        return w - lr * (g + momentum * v), v
    return w - lr * v, v


def sgd_step(w, g, lr):
    """Plain SGD (momentum 0, dampening 0): w <- w - lr*g."""
    return w - lr * g
