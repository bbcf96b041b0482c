"""Optimizer step of LARS(X) against X on the ResNet-50 parameter set (CPU unless told otherwise).

    PYTHONPATH=$PWD .venv/bin/python benchmarks/bench_lars_step.py [--quick] [--steps 25]
        [--modes GRAPH,PYNATIVE] [--device CPU]

What it measures: the optimizer cell alone, called on fixed random gradients, for the 161
trainable tensors (25.56M parameters) of ``benchmarks/resnet50.py`` at 1000 classes. Four wrapped
optimizers, each with weight decay 1e-4: ``nn.Momentum`` (lr 0.1, momentum 0.9), ``nn.SGD``
(lr 0.1), ``nn.Adam`` (lr 1e-3), ``nn.AdamWeightDecay`` (lr 1e-3), each against
``ms_optim.LARS`` around its own instance (default arguments, so the upstream default
``lars_filter``: 160 of 161 tensors adapted), twice: with the backend ``"auto"`` picks (on the CPU
device the compiled kernels, ``"cpu"``; LARS(Momentum) then runs one fused in-place pass) and with
``backend="portable"`` (the ``mindspore.ops`` path that GPU runs). Every candidate has its own copy of the weights
and state; all eight are called round-robin in one process (load hits them alike), the median
of ``--steps`` timed steps after two warm-up steps (compilation) is reported, per execution
mode, with the ratio LARS(X)/X. Each timed call ends by reading the smallest parameter back
(``asnumpy``), which waits for the step to finish. Peak RSS is of the whole process.

What it leaves out: the forward and backward pass (see ``bench_lars_e2e.py``), data loading,
loss scaling, other devices. Targets (issue 9, printed, never asserted): LARS(Momentum) <= 1.5x
Momentum, every other LARS(X) <= 2x X, GRAPH mode.

Writes ``outputs/bench/lars_step.json`` and ``outputs/bench/lars_step.png`` (step-time bars).
"""
import argparse
import os

import numpy as np

import mindspore as ms
from mindspore import Parameter, Tensor, nn

import _common
from _common import peak_rss_mb, time_interleaved, write_json
from plots import plot_lars_step
from resnet50 import param_count, resnet50

import ms_optim

BASES = {
    "Momentum": lambda ps: nn.Momentum(ps, 0.1, 0.9, weight_decay=1e-4),
    "SGD": lambda ps: nn.SGD(ps, 0.1, weight_decay=1e-4),
    "Adam": lambda ps: nn.Adam(ps, 1e-3, weight_decay=1e-4),
    "AdamWeightDecay": lambda ps: nn.AdamWeightDecay(ps, 1e-3, weight_decay=1e-4),
}
TARGETS = {"Momentum": 1.5, "SGD": 2.0, "Adam": 2.0, "AdamWeightDecay": 2.0}


def _copy_params(params):
    return [Parameter(Tensor(p.asnumpy().copy()), name=p.name) for p in params]


def _candidates(params, grads, names):
    out = []
    backends = {}
    for name in names:
        for lars in (None, "auto", "portable"):
            ps = _copy_params(params)
            opt = BASES[name](ps)
            if lars:
                opt = ms_optim.LARS(opt, backend=lars)
                backends[lars] = opt.backend
            probe = min(ps, key=lambda p: int(np.prod(p.shape)))

            def step(opt=opt, probe=probe):
                opt(grads)
                probe.asnumpy()  # wait for the step
            label = name if lars is None else f"LARS({name})" + ("/portable" if lars == "portable" else "")
            out.append((label, name, lars, step))
    return out, backends


def run_mode(mode, params, grads, names, steps):
    ms.set_context(mode=ms.GRAPH_MODE if mode == "GRAPH" else ms.PYNATIVE_MODE)
    cands, backends = _candidates(params, grads, names)
    for _, _, _, fn in cands:
        for _ in range(2):
            fn()  # compile + warm-up
    times = time_interleaved([c[3] for c in cands], steps)
    med = {c[0]: t for c, t in zip(cands, times)}
    rows = {}
    for name in names:
        base, lars = med[name], med[f"LARS({name})"]
        portable = med[f"LARS({name})/portable"]
        rows[name] = {"base_ms": round(base * 1e3, 2), "lars_ms": round(lars * 1e3, 2),
                      "ratio": round(lars / base, 3), "backend": backends["auto"],
                      "portable_ms": round(portable * 1e3, 2),
                      "portable_ratio": round(portable / base, 3), "target": TARGETS[name],
                      "met": bool(lars / base <= TARGETS[name])}
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--steps", type=int, default=None, help="timed steps (default 25, quick 5)")
    ap.add_argument("--quick", action="store_true", help="5 timed steps")
    ap.add_argument("--modes", default="GRAPH,PYNATIVE")
    ap.add_argument("--device", default="CPU")
    ap.add_argument("--optimizers", default=",".join(BASES))
    args = ap.parse_args()
    steps = args.steps or (5 if args.quick else 25)
    names = [n for n in args.optimizers.split(",") if n]
    ms.set_device(args.device)
    ms.set_seed(0)
    net = resnet50(1000)
    params = net.trainable_params()
    n_tensors, n_params = param_count(net)
    rng = np.random.default_rng(0)
    grads = tuple(Tensor((rng.standard_normal(p.shape) * 0.01).astype(np.float32)) for p in params)
    results = {}
    for mode in [m for m in args.modes.split(",") if m]:
        results[mode] = run_mode(mode, params, grads, names, steps)
    print(f"ResNet-50 parameter set: {n_tensors} tensors, {n_params} parameters; device "
          f"{args.device}; median of {steps} interleaved steps; peak RSS {peak_rss_mb():.0f} MiB")
    print(f"{'mode':<9}{'optimizer':<17}{'X (ms)':>8}{'LARS(X) (ms)':>14}{'backend':>9}{'ratio':>7}"
          f"{'portable (ms)':>15}{'ratio':>7}{'target':>8}  met")
    for mode, rows in results.items():
        for name, r in rows.items():
            print(f"{mode:<9}{name:<17}{r['base_ms']:>8.1f}{r['lars_ms']:>14.1f}{r['backend']:>9}"
                  f"{r['ratio']:>7.2f}{r['portable_ms']:>15.1f}{r['portable_ratio']:>7.2f}"
                  f"{r['target']:>8.1f}  {'yes' if r['met'] else 'NO'}")
    write_json("lars_step", {"benchmark": "lars_step", "tensors": n_tensors, "parameters": n_params,
                             "steps": steps, "results": results})
    png = plot_lars_step(results, os.path.join(_common.OUT_DIR, "lars_step.png"))
    print(f"wrote {os.path.relpath(png, _common.REPO)}")


if __name__ == "__main__":
    main()
