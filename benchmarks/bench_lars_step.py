"""Step time of LARS(Momentum) against plain Momentum (GRAPH mode, CPU unless told otherwise).

    .venv/bin/python benchmarks/bench_lars_step.py [--steps 20] [--device CPU] [--width 16]

Prints the device, MindSpore version, commit, network size and the median step time of each
optimizer over `--steps` timed steps (after warm-up/compilation), and the ratio LARS/Momentum.
"""
import argparse
import statistics
import subprocess
import time

import numpy as np

import mindspore as ms
from mindspore import Tensor, nn

import ms_optim


def _net(width):
    layers = [nn.Conv2d(3, width, 3), nn.BatchNorm2d(width), nn.ReLU()]
    for _ in range(4):
        layers += [nn.Conv2d(width, width, 3), nn.BatchNorm2d(width), nn.ReLU()]
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dense(width, 10)]
    return nn.SequentialCell(layers)


def _train_cell(make_opt, width, batch):
    ms.set_seed(0)
    net = _net(width)
    train = nn.TrainOneStepCell(nn.WithLossCell(net, nn.SoftmaxCrossEntropyWithLogits(
        sparse=True, reduction="mean")), make_opt(net))
    x = Tensor(np.random.default_rng(0).standard_normal((batch, 3, 16, 16)).astype(np.float32))
    y = Tensor(np.random.default_rng(1).integers(0, 10, batch).astype(np.int32))
    for _ in range(3):
        train(x, y).asnumpy()  # compile + warm-up
    n_params = sum(int(np.prod(p.shape)) for p in net.trainable_params())
    return (lambda: train(x, y).asnumpy()), n_params


def _time_interleaved(steps_fns, steps):
    """Alternate the candidates step by step so that load changes hit all of them alike."""
    times = [[] for _ in steps_fns]
    for _ in range(steps):
        for i, fn in enumerate(steps_fns):
            t0 = time.perf_counter()
            fn()
            times[i].append(time.perf_counter() - t0)
    return [statistics.median(t) for t in times]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--device", default="CPU")
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--batch", type=int, default=32)
    args = ap.parse_args()
    ms.set_device(args.device)
    ms.set_context(mode=ms.GRAPH_MODE)
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, check=False).stdout.strip()
    except OSError:
        commit = "?"
    momentum = lambda net: nn.Momentum(net.trainable_params(), 0.1, 0.9, weight_decay=1e-4)  # noqa
    lars = lambda net: ms_optim.LARS(momentum(net), lars_filter=ms_optim.lars_filter_for(net))  # noqa
    step_m, n = _train_cell(momentum, args.width, args.batch)
    step_l, _ = _train_cell(lars, args.width, args.batch)
    t_m, t_l = _time_interleaved([step_m, step_l], args.steps)
    print(f"device={args.device} mindspore={ms.__version__} ms_optim={ms_optim.__version__} "
          f"commit={commit} params={n} batch={args.batch} steps={args.steps}")
    print(f"{'optimizer':<18}{'median step (ms)':>18}")
    print(f"{'Momentum':<18}{t_m * 1e3:>18.2f}")
    print(f"{'LARS(Momentum)':<18}{t_l * 1e3:>18.2f}")
    print(f"ratio LARS/Momentum: {t_l / t_m:.3f}")


if __name__ == "__main__":
    main()
