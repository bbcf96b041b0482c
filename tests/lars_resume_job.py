"""Helper job for test_lars_training.py::test_checkpoint_resume_in_fresh_process.

python lars_resume_job.py MODE FIRST_STEP N_STEPS OUT_PREFIX [LOAD_CKPT]
Trains LARS(Momentum) with a dynamic lr for N_STEPS steps on fixed synthetic batches
starting at batch index FIRST_STEP, optionally after loading LOAD_CKPT, then writes
OUT_PREFIX.ckpt (whole train cell: weights + optimizer state) and OUT_PREFIX.npz (weights).
"""
import sys

import numpy as np

import mindspore as ms
from mindspore import Tensor, nn

import ms_optim


def main():
    mode, first, n_steps, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    load = sys.argv[5] if len(sys.argv) > 5 else None
    ms.set_device("CPU")
    ms.set_context(mode=ms.GRAPH_MODE if mode == "graph" else ms.PYNATIVE_MODE)
    ms.set_seed(1)
    net = nn.SequentialCell([nn.Dense(6, 8), nn.ReLU(), nn.Dense(8, 3)])
    lr = Tensor(np.linspace(0.1, 0.01, 20).astype(np.float32))
    opt = nn.Momentum(net.trainable_params(), lr, 0.9, weight_decay=1e-3)
    lars = ms_optim.LARS(opt, epsilon=1e-8, coefficient=0.02, use_clip=True,
                         lars_filter=ms_optim.lars_filter_for(net))
    train = nn.TrainOneStepCell(nn.WithLossCell(net, nn.SoftmaxCrossEntropyWithLogits(
        sparse=True, reduction="mean")), lars)
    if load:
        ms.load_param_into_net(train, ms.load_checkpoint(load))
    rng = np.random.default_rng(0)
    xs = rng.standard_normal((20, 16, 6)).astype(np.float32)
    ys = rng.integers(0, 3, (20, 16)).astype(np.int32)
    for step in range(first, first + n_steps):
        train(Tensor(xs[step]), Tensor(ys[step]))
    ms.save_checkpoint(train, out + ".ckpt")
    np.savez(out + ".npz",
             **{p.name: p.asnumpy() for p in train.get_parameters()})


if __name__ == "__main__":
    main()
