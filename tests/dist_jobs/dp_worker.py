"""msrun worker: data-parallel training of the configurations named on the command line.

Usage (started by ``tests/test_distributed.py``; by hand from the repository root)::

    msrun --worker_num=2 --local_worker_num=2 --master_port=PORT --join=True \
          --log_dir=LOGS tests/dist_jobs/dp_worker.py OUT_DIR lars-graph [thor-graph ...]

Every rank writes ``OUT_DIR/<config>.rank<r>.npz`` (see :func:`dp_common.train`) and prints
``DP-WORKER DONE rank=<r>`` at the end.
"""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402

import mindspore as ms  # noqa: E402
from mindspore.communication import get_group_size, get_rank, init  # noqa: E402

import dp_common  # noqa: E402


def main(out_dir, configs):
    ms.set_device("CPU")
    init()
    ms.set_auto_parallel_context(parallel_mode=ms.ParallelMode.DATA_PARALLEL, gradients_mean=True)
    rank, world = get_rank(), get_group_size()
    for config in configs:
        t0 = time.perf_counter()
        state = dp_common.train(config, rank, world)
        np.savez(os.path.join(out_dir, f"{config}.rank{rank}.npz"), **state)
        print(f"DP-WORKER {config} rank={rank}/{world} {time.perf_counter() - t0:.1f}s", flush=True)
    print(f"DP-WORKER DONE rank={rank}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
