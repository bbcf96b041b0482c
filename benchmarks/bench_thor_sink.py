"""THOR with ``dataset_sink_mode=True`` against the non-sink loop, on the digits CNN.

    .venv/bin/python benchmarks/bench_thor_sink.py [--quick] [--rounds 5] [--batch 32]
                                                   [--frequency 10] [--device CPU]

Trains the same ``DigitsCNN`` (examples/digits.py, same weights, same shuffled data order) through
``ConvertModelUtils.convert_to_thor_model`` three ways, one epoch per call, the calls interleaved
round-robin after a warm-up epoch each (compilation of both THOR graphs):

* ``non-sink``: ``model.train(1, ds, dataset_sink_mode=False)``;
* ``sink``: ``dataset_sink_mode=True`` (``sink_size=-1``);
* ``sink, sink_size=half``: ``model.train(spe // h, ds, dataset_sink_mode=True, sink_size=h)``
  with ``h`` the largest divisor of the steps per epoch ``spe`` up to ``spe // 2`` (the same steps
  and data order as one epoch).

It prints whether THOR actually sank on this backend (and the reason when not), the median time
per step of each way and its ratio to non-sink, and whether the weights after all rounds are
bit-identical to the non-sink run. On CPU MindSpore 2.10 has no dataset sink mode, so both sink
requests run ms_optim's non-sink fallback: the ratio then measures the fallback's overhead (the
sink_size re-feed through a ``GeneratorDataset``), not a sink speed-up. Leaves out: evaluation,
graph compilation (warm-up), data loading outside the training calls.
"""
import argparse
import os
import statistics
import sys
import time
import warnings

import numpy as np

import _common
import mindspore as ms
from mindspore import nn
from mindspore.train import Model

sys.path.insert(0, os.path.join(_common.REPO, "examples"))
import digits  # noqa: E402
import ms_optim  # noqa: E402
from ms_optim.thor import model as thor_model  # noqa: E402


def _build(batch, frequency, steps):
    ms.set_seed(0)
    np.random.seed(0)
    train_ds, _, _ = digits.make_datasets(batch, seed=0)
    net = digits.DigitsCNN()
    loss = nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean")
    opt = digits.build_optimizer("thor", net, 0.05, steps=steps, batch_size=batch,
                                 frequency=frequency)
    model = ms_optim.ConvertModelUtils.convert_to_thor_model(
        Model(net, loss_fn=loss, optimizer=opt), network=net, loss_fn=loss, optimizer=opt)
    return net, opt, model, train_ds


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 rounds")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--frequency", type=int, default=10)
    parser.add_argument("--device", default="CPU")
    args = parser.parse_args()
    rounds = 2 if args.quick else args.rounds
    ms.set_device(args.device)
    ms.set_context(mode=ms.GRAPH_MODE)
    warnings.simplefilter("ignore", RuntimeWarning)  # the fallback warning, reported below

    spe = digits.make_datasets(args.batch, seed=0)[0].get_dataset_size()
    steps = spe * (rounds + 1) + 1
    runs = {name: _build(args.batch, args.frequency, steps)
            for name in ("non-sink", "sink", "sink, sink_size=half")}
    half = next(d for d in range(spe // 2, 0, -1) if spe % d == 0)  # a divisor of spe

    def call(name):
        _, _, model, data = runs[name]
        if name == "non-sink":
            model.train(1, data, dataset_sink_mode=False)
        elif name == "sink":
            model.train(1, data, dataset_sink_mode=True)
        else:
            model.train(spe // half, data, dataset_sink_mode=True, sink_size=half)

    names = list(runs)
    for name in names:  # warm-up: both graphs compiled, one epoch each
        call(name)
    times = {name: [] for name in names}
    for _ in range(rounds):
        for name in names:
            t0 = time.perf_counter()
            call(name)
            times[name].append((time.perf_counter() - t0) / spe)
    ref_net = runs["non-sink"][0]
    sunk = False  # ms_optim runs every sink request as the non-sink loop (see the reason)
    reason = thor_model._sink_unsupported_reason()
    rows, results = [], {}
    base = statistics.median(times["non-sink"])
    for name in names:
        net, opt = runs[name][0], runs[name][1]
        same = all(np.array_equal(a.asnumpy(), b.asnumpy())
                   for a, b in zip(net.trainable_params(), ref_net.trainable_params()))
        gstep = int(opt.global_step.asnumpy()[0])
        med = statistics.median(times[name])
        rows.append((name, med * 1e3, med / base, same, gstep))
        results[name] = {"ms_per_step": med * 1e3, "ratio_to_non_sink": med / base,
                         "weights_equal_non_sink": same, "global_step": gstep}
    print(f"device {ms.get_context('device_target')}, MindSpore {ms.__version__}, "
          f"digits CNN batch {args.batch}, {spe} steps/epoch, F = {args.frequency}, "
          f"{rounds} rounds (interleaved)")
    print(f"THOR sunk: {sunk}" + ("" if sunk else f"  (reason: {reason})"))
    print(f"{'way':<24}{'ms/step':>10}{'vs non-sink':>13}{'weights == non-sink':>22}{'global step':>13}")
    for name, ms_step, ratio, same, gstep in rows:
        print(f"{name:<24}{ms_step:>10.2f}{ratio:>12.3f}x{str(same):>22}{gstep:>13}")
    _common.write_json("bench_thor_sink", {"rounds": rounds, "batch": args.batch,
                                           "frequency": args.frequency, "steps_per_epoch": spe,
                                           "sunk": sunk, "reason": None if sunk else reason,
                                           "results": results})


if __name__ == "__main__":
    main()
