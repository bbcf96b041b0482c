"""End-to-end training step of ResNet-50 with LARS(Momentum) against Momentum (CPU, GRAPH mode).

    PYTHONPATH=$PWD .venv/bin/python benchmarks/bench_lars_e2e.py [--quick] [--batch 16]
        [--image 32] [--steps 20] [--device CPU]

What it measures: one ``nn.TrainOneStepCell(nn.WithLossCell(resnet50(10), softmax CE))`` step
(forward, backward, optimizer) on a fixed random batch (default 16 x 3 x 32 x 32, 10 classes),
with ``nn.Momentum(lr 0.1, momentum 0.9, weight decay 1e-4)`` and with ``ms_optim.LARS`` around
the same optimizer (``lars_filter=ms_optim.lars_filter_for(net)``). Two networks with identical
initial weights; the two train cells are called round-robin in one process; median of
``--steps`` timed steps after three warm-up steps (compilation). The loss is read back
(``asnumpy``) each step. Also counts the optimizer's Parameters (objects and elements) of both,
to show that LARS adds no per-parameter state.

What it leaves out: data loading, larger images (the optimizer cost does not depend on them, the
forward/backward cost grows with them, so the ratio here is an upper bound for real inputs),
other devices. Target (issue 9, printed, never asserted): ratio <= 1.05.

Writes ``outputs/bench/lars_e2e.json``.
"""
import argparse

import numpy as np

import mindspore as ms
from mindspore import nn

from _common import peak_rss_mb, time_interleaved, write_json
from resnet50 import param_count, random_batch, resnet50

import ms_optim


def _state_count(opt):
    """(Parameter objects, elements) held by an optimizer cell, excluding the network weights."""
    weights = {id(p) for p in opt.parameters}
    seen, objs, elems = set(), 0, 0
    for _, p in opt.parameters_and_names():
        if id(p) in weights or id(p) in seen:
            continue
        seen.add(id(p))
        objs += 1
        elems += int(np.prod(p.shape)) if p.shape else 1
    return objs, elems


def _cell(lars, x, y):
    ms.set_seed(0)
    net = resnet50(10)
    opt = nn.Momentum(net.trainable_params(), 0.1, 0.9, weight_decay=1e-4)
    if lars:
        opt = ms_optim.LARS(opt, lars_filter=ms_optim.lars_filter_for(net))
    loss = nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean")
    train = nn.TrainOneStepCell(nn.WithLossCell(net, loss), opt)
    train.set_train()
    return net, opt, (lambda: train(x, y).asnumpy())


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--steps", type=int, default=None, help="timed steps (default 20, quick 5)")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--image", type=int, default=32)
    ap.add_argument("--device", default="CPU")
    args = ap.parse_args()
    steps = args.steps or (5 if args.quick else 20)
    ms.set_device(args.device)
    ms.set_context(mode=ms.GRAPH_MODE)
    x, y = random_batch(args.batch, args.image, 10)
    net_m, opt_m, step_m = _cell(False, x, y)
    _, opt_l, step_l = _cell(True, x, y)
    for _ in range(3):
        step_m()
        step_l()
    t_m, t_l = time_interleaved([step_m, step_l], steps)
    n_tensors, n_params = param_count(net_m)
    state_m, state_l = _state_count(opt_m), _state_count(opt_l)
    ratio = t_l / t_m
    print(f"ResNet-50 (10 classes): {n_tensors} tensors, {n_params} parameters; batch {args.batch}"
          f" x 3 x {args.image} x {args.image}; GRAPH; median of {steps} interleaved steps;"
          f" peak RSS {peak_rss_mb():.0f} MiB")
    print(f"{'optimizer':<18}{'step (ms)':>12}{'state Parameters':>18}{'state elements':>16}")
    print(f"{'Momentum':<18}{t_m * 1e3:>12.1f}{state_m[0]:>18}{state_m[1]:>16}")
    print(f"{'LARS(Momentum)':<18}{t_l * 1e3:>12.1f}{state_l[0]:>18}{state_l[1]:>16}")
    print(f"ratio LARS/Momentum: {ratio:.3f} (target <= 1.05: {'met' if ratio <= 1.05 else 'MISSED'})"
          f"; LARS adds {state_l[0] - state_m[0]} Parameters, "
          f"{state_l[1] - state_m[1]} elements of optimizer state")
    write_json("lars_e2e", {"benchmark": "lars_e2e", "batch": args.batch, "image": args.image,
                            "classes": 10, "steps": steps, "tensors": n_tensors,
                            "parameters": n_params, "momentum_ms": round(t_m * 1e3, 2),
                            "lars_ms": round(t_l * 1e3, 2), "ratio": round(ratio, 4),
                            "target": 1.05, "met": bool(ratio <= 1.05),
                            "state_parameters": {"Momentum": state_m[0], "LARS": state_l[0]},
                            "state_elements": {"Momentum": state_m[1], "LARS": state_l[1]}})


if __name__ == "__main__":
    main()
