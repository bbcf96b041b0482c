"""The benchmarks' ResNet-50: the network of ``examples/zoo/resnet.py`` (one definition).

    from resnet50 import resnet50, random_batch, param_count
"""
import os
import sys

_ZOO = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples", "zoo")
if _ZOO not in sys.path:
    sys.path.insert(0, _ZOO)

from resnet import param_count, random_batch, resnet, resnet50  # noqa: E402,F401

__all__ = ["resnet", "resnet50", "random_batch", "param_count"]
