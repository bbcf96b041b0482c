"""Step time of THOR (refresh and stale steps) against plain Momentum (GRAPH mode, CPU by default).

    .venv/bin/python benchmarks/bench_thor_step.py [--quick] [--steps 24] [--frequency 4]
                                                   [--width 16] [--batch 16] [--device CPU]
                                                   [--full-stats]

Prints the device, MindSpore version, commit, network size and the median time of

* a Momentum step (``nn.TrainOneStepCell``),
* a THOR refresh step (statistics + damped block inverses, global step divisible by F),
* a THOR stale step (stored inverses only; the issue asks that it cost about a first-order step),

measured interleaved (one Momentum step, one THOR step, ...) after both THOR graphs are compiled.
``--full-stats`` makes the THOR layers also form the full :math:`A`, :math:`G` (the cost before
THOR collected only the diagonal blocks; results unchanged). The network
is a small CNN whose 3x3 convolutions have :math:`d_{in} = 9 \\cdot` width (> 128 for width >= 15,
i.e. several diagonal blocks). No timing is asserted anywhere; these are numbers to report.
``--quick``: 8 timed steps. Leaves out: ResNet-50 (its THOR graphs take minutes to compile on
CPU), data loading, dataset sink mode (see ``bench_thor_sink.py``). Writes
``outputs/bench/thor_step.json``.
"""
import argparse
import statistics
import subprocess
import time

import numpy as np

import mindspore as ms
from mindspore import Tensor, nn, ops

from _common import write_json  # also puts the repository on sys.path

import ms_optim
from ms_optim.ops import kfac
from ms_optim.thor import layers as thor_layers


def _net(width):
    layers = [nn.Conv2d(3, width, 3), nn.BatchNorm2d(width), nn.ReLU()]
    for _ in range(3):
        layers += [nn.Conv2d(width, width, 3), nn.BatchNorm2d(width), nn.ReLU()]
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dense(width, 10)]
    return nn.SequentialCell(layers)


def _data(batch):
    x = Tensor(np.random.default_rng(0).standard_normal((batch, 3, 16, 16)).astype(np.float32))
    y = Tensor(np.random.default_rng(1).integers(0, 10, batch).astype(np.int32))
    return x, y


def _loss():
    return nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean")


def _momentum_step(width, batch):
    ms.set_seed(0)
    net = _net(width)
    train = nn.TrainOneStepCell(nn.WithLossCell(net, _loss()),
                                nn.Momentum(net.trainable_params(), 0.05, 0.9, weight_decay=1e-4))
    x, y = _data(batch)
    for _ in range(3):
        train(x, y).asnumpy()  # compile + warm-up
    n_params = sum(int(np.prod(p.shape)) for p in net.trainable_params())
    return (lambda: train(x, y).asnumpy()), n_params


def _thor_step(width, batch, frequency):
    ms.set_seed(0)
    net = _net(width)
    opt = ms_optim.thor(net, Tensor(0.05, ms.float32), Tensor(0.03, ms.float32), 0.9,
                        weight_decay=1e-4, batch_size=batch, frequency=frequency)
    train = ms_optim.ThorTrainOneStepCell(nn.WithLossCell(net, _loss()), opt)
    x, y = _data(batch)
    for _ in range(frequency + 1):
        train(x, y).asnumpy()  # compiles the refresh and the stale graph

    def step():
        refresh = train.next_step_refreshes()
        t0 = time.perf_counter()
        train(x, y).asnumpy()
        return refresh, time.perf_counter() - t0
    return step, opt


def _full_stats_patch():
    """Make the THOR layers also form the full A and G (the cost before THOR collected only the
    diagonal blocks); the blocks, hence every result, are unchanged."""
    blocks_a, blocks_g = kfac.input_covariance_blocks, kfac.output_grad_covariance_blocks

    def a_full(p, block=kfac.BLOCK_SIZE):
        return ops.depend(blocks_a(p, block), kfac.input_covariance(p))

    def g_full(d, n, t, block=kfac.BLOCK_SIZE, loss_scale=1.0):
        return ops.depend(blocks_g(d, n, t, block, loss_scale),
                          kfac.output_grad_covariance(d, n, t, loss_scale))
    thor_layers.kfac.input_covariance_blocks = a_full
    thor_layers.kfac.output_grad_covariance_blocks = g_full


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--steps", type=int, default=None,
                    help="timed THOR (and Momentum) steps (default 24, quick 8)")
    ap.add_argument("--quick", action="store_true", help="8 timed steps")
    ap.add_argument("--frequency", type=int, default=4)
    ap.add_argument("--device", default="CPU")
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--full-stats", action="store_true")
    args = ap.parse_args()
    args.steps = args.steps or (8 if args.quick else 24)
    ms.set_device(args.device)
    ms.set_context(mode=ms.GRAPH_MODE)
    commit = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True,
                            text=True, check=False).stdout.strip() or "?"

    label = "THOR"
    if args.full_stats:
        _full_stats_patch()  # for the whole process: graphs must not see the patch change
        label = "THOR full A/G"
    step_m, n_params = _momentum_step(args.width, args.batch)
    step_t, opt = _thor_step(args.width, args.batch, args.frequency)

    t_m, t_t = [], {True: [], False: []}
    for _ in range(args.steps):  # interleaved: load changes hit both alike
        t0 = time.perf_counter()
        step_m()
        t_m.append(time.perf_counter() - t0)
        refresh, dt = step_t()
        t_t[refresh].append(dt)

    print(f"device={args.device} mindspore={ms.__version__} ms_optim={ms_optim.__version__} "
          f"commit={commit} mode=GRAPH params={n_params} batch={args.batch} width={args.width} "
          f"frequency={args.frequency} timed_steps={args.steps}")
    print(f"THOR layers={opt.n_layers}, A^-1 block shapes={[tuple(p.shape) for p in opt.a_inv]}")
    med_m = statistics.median(t_m)
    med = {k: statistics.median(v) for k, v in t_t.items()}
    print(f"{'step':<28}{'n':>5}{'median (ms)':>14}{'x Momentum':>12}")
    print(f"{'Momentum':<28}{len(t_m):>5}{med_m * 1e3:>14.2f}{1.0:>12.2f}")
    for refresh, kind in ((True, "refresh"), (False, "stale")):
        print(f"{label + ' ' + kind:<28}{len(t_t[refresh]):>5}{med[refresh] * 1e3:>14.2f}"
              f"{med[refresh] / med_m:>12.2f}")
    amortised = (med[True] + (args.frequency - 1) * med[False]) / args.frequency
    print(f"{label} amortised over F={args.frequency}: {amortised * 1e3:.2f} ms "
          f"({amortised / med_m:.2f} x Momentum)")
    write_json("thor_step", {
        "benchmark": "thor_step", "label": label, "quick": args.quick, "steps": args.steps,
        "frequency": args.frequency, "width": args.width, "batch": args.batch, "params": n_params,
        "momentum_ms": round(med_m * 1e3, 2),
        "refresh_ms": round(med[True] * 1e3, 2), "stale_ms": round(med[False] * 1e3, 2),
        "refresh_ratio": round(med[True] / med_m, 3), "stale_ratio": round(med[False] / med_m, 3),
        "amortised_ms": round(amortised * 1e3, 2), "amortised_ratio": round(amortised / med_m, 3)})

if __name__ == "__main__":
    main()
