"""Float64 NumPy references of THOR's optional controls (independent of ms_optim)."""
import numpy as np


def kl_clip_scale(preconditioned, gradients, lr, kl_clip):
    """KAISA: nu = min(1, sqrt(kappa / (lr^2 sum <pg, g>))), 1 where the sum is <= 0."""
    s = sum(float(np.sum(np.asarray(p, np.float64) * np.asarray(g, np.float64)))
            for p, g in zip(preconditioned, gradients)) * float(lr) ** 2
    if not np.isfinite(s) or s <= 0:
        return 1.0
    return min(1.0, float(np.sqrt(kl_clip / s)))


def factor_average(factors, decay):
    """sum_j decay^(k-j) F_j / sum_j decay^(k-j) over the k factors given (float64)."""
    k = len(factors)
    w = [float(decay) ** (k - 1 - j) for j in range(k)]
    return sum(wj * np.asarray(f, np.float64) for wj, f in zip(w, factors)) / sum(w)
