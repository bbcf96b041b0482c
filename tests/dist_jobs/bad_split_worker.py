"""msrun worker that must fail: THOR with an invalid ``split_indices`` under data parallelism.

The 3-layer network of :mod:`dp_common` has preconditioned layers 0..2, so ``[1, 5]`` is out of
range. ``ms_optim.thor`` must raise a ``ValueError`` naming ``split_indices`` on every rank,
before anything is converted; the exception is left uncaught so the worker exits non-zero and its
log carries the traceback.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402

import mindspore as ms  # noqa: E402
from mindspore import Tensor  # noqa: E402
from mindspore.communication import get_rank, init  # noqa: E402

import dp_common  # noqa: E402
import ms_optim  # noqa: E402

BAD_SPLIT = [1, 5]

if __name__ == "__main__":
    ms.set_device("CPU")
    init()
    ms.set_auto_parallel_context(parallel_mode=ms.ParallelMode.DATA_PARALLEL, gradients_mean=True)
    print(f"BAD-SPLIT rank={get_rank()} calling thor(split_indices={BAD_SPLIT})", flush=True)
    net = dp_common.make_net("conv")
    ms_optim.thor(net, Tensor(np.float32(0.05)), Tensor(np.float32(0.03)), 0.9, frequency=3,
                  split_indices=BAD_SPLIT)
    print(f"BAD-SPLIT rank={get_rank()} thor() accepted the bad split_indices", flush=True)
