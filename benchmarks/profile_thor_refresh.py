"""Where a THOR refresh step's extra time goes, part by part (issue 10: "refresh cost profiled").

Builds the benchmarks' ResNet-50 (``--net resnet50``, the default) or the small CNN of
``bench_thor_step.py``, converts it with ``ms_optim.thor`` and times, each as its own compiled
graph on the same batch (GRAPH mode, medians of ``--steps`` calls after one compiling call):

* forward + backward of the loss without statistics (what every step, and Momentum, pays),
* the same with the THOR layers' statistics on (``thor`` flag: :math:`A` in the forward,
  :math:`G` in the backward), and the forward alone with and without them,
* the damped block inversion of every layer (each layer's ``KroneckerBlock.invert`` with the
  portable kernel, on the statistics of that batch; what a refresh adds in the optimizer),
* the preconditioning of every weight (``KroneckerBlock.precondition``; paid on every step).

It prints the first-call seconds (compilation + one call) too. What it leaves out: the
optimizer's other per-step work (non-finite check, weight decay, momentum update, the commit of
the inverses), which ``bench_thor_step.py`` measures inside whole train steps; parts overlap
nothing here (each graph runs alone), so the parts need not add up to a train step exactly; on the
small CNN (``--quick``) the statistics' parts are differences of a few milliseconds, within noise.

Run: ``python benchmarks/profile_thor_refresh.py [--image 32 --batch 16]``; writes
``outputs/bench/thor_refresh_profile.json``.
"""
import argparse
import time

import numpy as np

import mindspore as ms
from mindspore import Tensor, nn, ops

from _common import write_json  # also puts the repository on sys.path
import ms_optim
from ms_optim.ops import kfac
from ms_optim.thor import layers as thor_layers
from ms_optim.thor.blocks import KroneckerBlock


class _Loss(nn.Cell):
    def __init__(self, loss_net):
        super().__init__()
        self.loss_net = loss_net

    def construct(self, x, y):
        return self.loss_net(x, y)


class _LossAndGrad(nn.Cell):
    def __init__(self, loss_net, weights):
        super().__init__()
        self.loss_net = loss_net
        self.weights = weights
        self.grad = ops.GradOperation(get_by_list=True)

    def construct(self, x, y):
        return self.grad(self.loss_net, self.weights)(x, y)


class _Invert(nn.Cell):
    """Every layer's damped inversion, as the optimizer's refresh runs it."""

    def __init__(self, dims):
        super().__init__()
        self.dims = dims

    def construct(self, lam, stat_a, stat_g, stat_t):
        out = ()
        for i in range(len(self.dims)):
            d_a, d_g = self.dims[i]
            out = out + KroneckerBlock.invert(kfac.spd_block_inverse_cholesky, lam, d_a, d_g,
                                              stat_a[i], stat_g[i], stat_t[i])[:2]
        return out


class _Precondition(nn.Cell):
    def __init__(self, groups):
        super().__init__()
        self.groups = groups

    def construct(self, g_inv, a_inv, stat_t, grads):
        out = ()
        for i in range(len(grads)):
            out = out + (KroneckerBlock.precondition(g_inv[i], a_inv[i], stat_t[i], grads[i],
                                                     self.groups[i]),)
        return out


def _sync(value):
    if isinstance(value, (tuple, list)):
        for v in value:
            _sync(v)
    elif isinstance(value, Tensor):
        value.asnumpy()


def _time(name, fn, steps, rows):
    t0 = time.perf_counter()
    _sync(fn())
    first = time.perf_counter() - t0
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        _sync(fn())
        times.append(time.perf_counter() - t0)
    med = 1000.0 * float(np.median(times))
    rows[name] = {"first_call_s": round(first, 2), "median_ms": round(med, 1)}
    print(f"{name:44s} first call {first:6.1f} s   median {med:8.1f} ms", flush=True)
    return med


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--net", choices=("resnet50", "cnn"), default="resnet50")
    ap.add_argument("--image", type=int, default=32)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="small CNN, 3 timed calls")
    args = ap.parse_args(argv)
    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_device("CPU")
    import bench_thor_step as bts  # the networks of the step benchmark
    if args.quick:
        args.net, args.image, args.steps = "cnn", 16, 3
    bts._NET.update(name=args.net, image=args.image, classes=args.classes)
    ms.set_seed(0)
    net = bts._net(16)
    ms_optim.thor(net, Tensor(0.0, ms.float32), Tensor(0.03, ms.float32), 0.9,
                  batch_size=args.batch)
    layers = [c for _, c in net.cells_and_names()
              if isinstance(c, (thor_layers.Conv2dThor, thor_layers.DenseThor))]
    loss_net = nn.WithLossCell(net, bts._loss())
    weights = ms.ParameterTuple(net.trainable_params())
    x, y = bts._data(args.batch)
    print(f"net={args.net} image={args.image} batch={args.batch} THOR layers={len(layers)}")

    def set_statistics(flag):
        for cell in layers:
            cell.add_flags(thor=flag)

    rows = {}
    set_statistics(False)
    plain_fb = _time("forward+backward", lambda c=_LossAndGrad(loss_net, weights): c(x, y),
                     args.steps, rows)
    plain_f = _time("forward", lambda c=_Loss(loss_net): c(x, y), args.steps, rows)
    set_statistics(True)
    stats_fb = _time("forward+backward with statistics (A, G)",
                     lambda c=_LossAndGrad(loss_net, weights): c(x, y), args.steps, rows)
    stats_f = _time("forward with statistics (A)", lambda c=_Loss(loss_net): c(x, y),
                    args.steps, rows)
    set_statistics(False)
    stat_a = tuple(Tensor(c.matrix_a.asnumpy()) for c in layers)
    stat_g = tuple(Tensor(c.matrix_g.asnumpy()) for c in layers)
    stat_t = tuple(Tensor(c.thor_t.asnumpy()) for c in layers)
    invert = _Invert(tuple(c.thor_dims for c in layers))
    lam = Tensor(0.03, ms.float32)
    t_inv = _time("inversion, all layers", lambda: invert(lam, stat_a, stat_g, stat_t),
                  args.steps, rows)
    inv = invert(lam, stat_a, stat_g, stat_t)
    rng = np.random.default_rng(2)
    grads = tuple(Tensor(rng.standard_normal(c.weight.shape).astype(np.float32)) for c in layers)
    precond = _Precondition(tuple(c.thor_groups for c in layers))
    t_pre = _time("preconditioning, all weights",
                  lambda: precond(inv[1::2], inv[0::2], stat_t, grads), args.steps, rows)
    blocks = sum(a.shape[0] + g.shape[0] for a, g in zip(stat_a, stat_g))
    parts = {"statistics_ms": round(stats_fb - plain_fb, 1),
             "statistics_A_ms": round(stats_f - plain_f, 1),
             "statistics_G_ms": round((stats_fb - stats_f) - (plain_fb - plain_f), 1),
             "inversion_ms": round(t_inv, 1), "preconditioning_ms": round(t_pre, 1),
             "blocks": blocks}
    print(f"refresh-only parts: statistics {parts['statistics_ms']:.1f} ms (A "
          f"{parts['statistics_A_ms']:.1f}, G {parts['statistics_G_ms']:.1f}), inversion "
          f"{t_inv:.1f} ms ({blocks} blocks); every step: preconditioning {t_pre:.1f} ms; "
          f"against forward+backward {plain_fb:.1f} ms")
    path = write_json("thor_refresh_profile", {
        "benchmark": "profile_thor_refresh", "net": args.net, "image": args.image,
        "batch": args.batch, "classes": args.classes, "steps": args.steps,
        "thor_layers": len(layers), "timings": rows, "parts": parts})
    return path


if __name__ == "__main__":
    main()
