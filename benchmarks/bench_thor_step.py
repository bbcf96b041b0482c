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
``--quick``: 8 timed steps. ``--net resnet50``: the bottleneck ResNet-50 of ``resnet50.py``
(161 parameter tensors, 54 THOR layers; 32x32 images by default, its THOR graphs take minutes to
compile on CPU), written to ``outputs/bench/thor_step_resnet50.json``; ``--image 224`` gives the
recipe's image size (``--batch 8`` fits in 24 GB; 16 does not). The first-call time of
every graph (compilation plus one step) is printed too. Leaves out: data loading, dataset sink
mode (see ``bench_thor_sink.py``). ``--inverse-method eigh``: THOR with eigen-decompositions
(``*_eigh.json``); ``--adaptive-damping 0.8``: with the extra forward of the Levenberg-Marquardt
adaptation on refresh steps (``*_adaptive.json``). Both optimizers run with learning rate 0 (:data:`LR`): the
same kernels, and random data cannot diverge. Writes ``outputs/bench/thor_step.json``.
"""
import argparse
import statistics
import subprocess
import time

import numpy as np

import mindspore as ms
from mindspore import Tensor, nn, ops

from _common import peak_rss_mb, write_json  # also puts the repository on sys.path

import ms_optim
from ms_optim.ops import kfac
from ms_optim.thor import layers as thor_layers


_NET = {"name": "cnn", "image": 16, "classes": 10}


def _net(width):
    if _NET["name"] == "resnet50":
        from resnet50 import resnet50  # benchmarks/resnet50.py: bottleneck ResNet-50
        return resnet50(num_classes=_NET["classes"])
    layers = [nn.Conv2d(3, width, 3), nn.BatchNorm2d(width), nn.ReLU()]
    for _ in range(3):
        layers += [nn.Conv2d(width, width, 3), nn.BatchNorm2d(width), nn.ReLU()]
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dense(width, 10)]
    return nn.SequentialCell(layers)


def _data(batch):
    im = _NET["image"]
    x = Tensor(np.random.default_rng(0).standard_normal((batch, 3, im, im)).astype(np.float32))
    y = Tensor(np.random.default_rng(1).integers(0, _NET["classes"], batch).astype(np.int32))
    return x, y


def _loss():
    return nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean")


def _momentum_step(width, batch):
    ms.set_seed(0)
    net = _net(width)
    train = nn.TrainOneStepCell(nn.WithLossCell(net, _loss()),
                                nn.Momentum(net.trainable_params(), LR, 0.9, weight_decay=1e-4))
    x, y = _data(batch)
    t0 = time.perf_counter()
    train(x, y).asnumpy()  # compile
    COMPILE["momentum_first_call_s"] = time.perf_counter() - t0
    for _ in range(2):
        train(x, y).asnumpy()  # warm-up
    n_params = sum(int(np.prod(p.shape)) for p in net.trainable_params())
    return (lambda: train(x, y).asnumpy()), n_params


def _nbytes(params):
    return int(sum(int(np.prod(p.shape)) * np.dtype(p.asnumpy().dtype).itemsize for p in params))


def thor_state_bytes(opt):
    """Bytes of THOR's state, from the shapes: statistics (A, G per layer), inverses, moments,
    running means (``factor_decay``), against the network's weights."""
    inverses = list(opt.a_inv) + list(opt.g_inv)
    averages = [p for p in opt.get_parameters() if p.name.startswith("thor_avg_")]
    return {"weights": _nbytes(opt.parameters),
            "statistics": _nbytes(list(opt.stat_a) + list(opt.stat_g)),
            "inverses": _nbytes(inverses), "moments": _nbytes(opt.moments),
            "factor_averages": _nbytes(averages)}


def _thor_step(width, batch, frequency, inverse_method="cholesky", adaptive_damping=None):
    ms.set_seed(0)
    net = _net(width)
    opt = ms_optim.thor(net, Tensor(LR, ms.float32), Tensor(0.03, ms.float32), 0.9,
                        weight_decay=1e-4, batch_size=batch, frequency=frequency,
                        inverse_method=inverse_method, adaptive_damping=adaptive_damping)
    train = ms_optim.ThorTrainOneStepCell(nn.WithLossCell(net, _loss()), opt)
    x, y = _data(batch)
    for i in range(frequency + 1):
        t0 = time.perf_counter()
        train(x, y).asnumpy()  # step 0 compiles the refresh graph, step 1 the stale graph
        if i < 2:
            COMPILE[("thor_refresh" if i == 0 else "thor_stale") + "_first_call_s"] = \
                time.perf_counter() - t0

    def step():
        refresh = train.next_step_refreshes()
        t0 = time.perf_counter()
        train(x, y).asnumpy()
        return refresh, time.perf_counter() - t0
    return step, opt


#: first-call seconds (compilation + one step) of each graph
COMPILE = {}
#: Learning rate of both optimizers. Zero: the weights stay where they are, so no step of the
#: random-data benchmark can diverge into non-finite gradients (THOR skips such steps without
#: advancing global_step, which would stop the refresh pattern); the kernels run are the same.
LR = 0.0


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
    ap.add_argument("--net", choices=("cnn", "resnet50"), default="cnn",
                    help="resnet50: the bottleneck ResNet-50 of benchmarks/resnet50.py (161 "
                         "parameter tensors; its THOR graphs take minutes to compile on CPU)")
    ap.add_argument("--image", type=int, default=None, help="image side (cnn 16, resnet50 32)")
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--inverse-method", choices=("cholesky", "eigh"), default="cholesky",
                    help="THOR's inverse_method (eigh: results go to *_eigh.json)")
    ap.add_argument("--adaptive-damping", type=float, default=None,
                    help="THOR's adaptive_damping omega: refresh steps include the extra forward "
                         "of the adaptation (results go to *_adaptive.json)")
    args = ap.parse_args()
    _NET.update(name=args.net, image=args.image or (32 if args.net == "resnet50" else 16),
                classes=args.classes)
    args.steps = args.steps or (8 if args.quick else 24)
    if args.steps < args.frequency:  # at least one refresh and one stale step are timed
        print(f"timing {args.frequency} steps instead of {args.steps}: fewer would miss the refresh")
        args.steps = args.frequency
    ms.set_device(args.device)
    ms.set_context(mode=ms.GRAPH_MODE)
    commit = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True,
                            text=True, check=False).stdout.strip() or "?"

    label = "THOR"
    if args.full_stats:
        _full_stats_patch()  # for the whole process: graphs must not see the patch change
        label = "THOR full A/G"
    if args.inverse_method != "cholesky":
        label += f" {args.inverse_method}"
    if args.adaptive_damping is not None:
        label += " adaptive"
    step_m, n_params = _momentum_step(args.width, args.batch)
    step_t, opt = _thor_step(args.width, args.batch, args.frequency, args.inverse_method,
                             args.adaptive_damping)

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
    print(f"net={args.net} image={_NET['image']} THOR layers={opt.n_layers}"
          + ("" if args.net == "resnet50" else
             f", A^-1 block shapes={[tuple(p.shape) for p in opt.a_inv]}"))
    print("first call (compile + 1 step): " + ", ".join(f"{k[:-13]} {v:.1f} s"
                                                       for k, v in COMPILE.items()))
    if not t_t[True] or not t_t[False] or int(opt.nonfinite_steps.asnumpy()[0]):
        raise SystemExit(f"no refresh or no stale step was timed (refresh {len(t_t[True])}, "
                         f"stale {len(t_t[False])}; non-finite steps "
                         f"{int(opt.nonfinite_steps.asnumpy()[0])}): use more --steps")
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
    # other refresh periods from the same two medians: (refresh + (F - 1) stale) / F
    other_f = {f: (med[True] + (f - 1) * med[False]) / f / med_m for f in (10, 100)}
    print("amortised (from the medians): " + ", ".join(f"F={f}: {r:.2f} x Momentum"
                                                       for f, r in other_f.items()))
    state = thor_state_bytes(opt)
    print("THOR state (MiB, from the shapes): " + ", ".join(
        f"{k} {v / 2**20:.2f}" for k, v in state.items()) + f"; peak RSS {peak_rss_mb():.0f} MiB")
    name = "thor_step" if args.net == "cnn" else f"thor_step_{args.net}"
    if args.inverse_method != "cholesky":
        name += f"_{args.inverse_method}"
    if args.adaptive_damping is not None:
        name += "_adaptive"
    write_json(name, {
        "net": args.net, "image": _NET["image"], **{k: round(v, 2) for k, v in COMPILE.items()},
        "benchmark": "thor_step", "label": label, "inverse_method": args.inverse_method,
        "adaptive_damping": args.adaptive_damping, "quick": args.quick, "steps": args.steps,
        "frequency": args.frequency, "width": args.width, "batch": args.batch, "params": n_params,
        "momentum_ms": round(med_m * 1e3, 2),
        "refresh_ms": round(med[True] * 1e3, 2), "stale_ms": round(med[False] * 1e3, 2),
        "refresh_ratio": round(med[True] / med_m, 3), "stale_ratio": round(med[False] / med_m, 3),
        "amortised_ms": round(amortised * 1e3, 2), "amortised_ratio": round(amortised / med_m, 3),
        "amortised_ratio_by_frequency": {str(f): round(r, 3) for f, r in other_f.items()},
        "state_bytes": state, "peak_rss_mb": round(peak_rss_mb(), 1)})

if __name__ == "__main__":
    main()
