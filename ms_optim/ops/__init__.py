"""Pure mathematical building blocks (functions of Tensors; no Parameters, no device checks).

Each formula of the package lives here exactly once; every backend calls these functions or is
tested against them.
"""
from .trust_ratio import lars_trust_ratio, lars_gradient

__all__ = ["lars_trust_ratio", "lars_gradient"]
