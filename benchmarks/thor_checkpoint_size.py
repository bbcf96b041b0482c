"""Size of a THOR checkpoint of ResNet-50 (10 classes), with and without the layer statistics.

    .venv/bin/python benchmarks/thor_checkpoint_size.py [--quick] [--classes 10]

Builds :func:`resnet50.resnet50` (the zoo's layer shapes), converts it with :func:`ms_optim.thor`
and wraps it in :class:`ms_optim.ThorTrainOneStepCell`. Without ``--quick`` it first runs one
refresh step (batch 2, 32x32 images, GRAPH mode) so the saved values are real. Then it writes

* ``save_checkpoint(train_cell)`` and ``save_checkpoint(net)`` as they are saved now (weights,
  BatchNorm statistics, momenta, inverses ``a_inv``/``g_inv``/``t_keep``, ``global_step``, ...),
* the pre-change layout: the same Parameters plus every converted layer's ``matrix_a``,
  ``matrix_g``, ``thor_t``, ``thor_n`` (what ``save_checkpoint(train_cell)`` stored while the
  statistics were registered Parameters),

and prints the file sizes (MiB = 2^20 bytes), the number of tensors, and checks that no
statistic name is in the saved file. Left out: the optimizer-side size of other recipes (only
ResNet-50's shapes), safetensors format, compression, and time to save/load.
"""
import argparse
import os
import sys
import tempfile

import numpy as np

import mindspore as ms
from mindspore import Tensor, nn

from _common import write_json  # noqa: F401  (also puts the repository on sys.path)
from resnet50 import random_batch, resnet50

import ms_optim
from ms_optim.thor.layers import THOR_LAYERS


def _mib(path):
    return os.path.getsize(path) / 2.0 ** 20


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="no training step (sizes only)")
    parser.add_argument("--classes", type=int, default=10)
    args = parser.parse_args(argv)
    ms.set_device("CPU")
    ms.set_context(mode=ms.GRAPH_MODE)

    net = resnet50(num_classes=args.classes)
    opt = ms_optim.thor(net, Tensor(0.1, ms.float32), Tensor(0.03, ms.float32), 0.9,
                        weight_decay=1e-4, frequency=10)
    loss = nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean")
    step = ms_optim.ThorTrainOneStepCell(nn.WithLossCell(net, loss), opt)
    step.set_train()
    if not args.quick:
        x, y = random_batch(2, image=32, num_classes=args.classes)
        step(Tensor(x), Tensor(y))
    layers = [c for _, c in net.cells_and_names() if isinstance(c, THOR_LAYERS)]
    stats = [p for c in layers for _, p in c._statistics()]  # pylint: disable=protected-access
    stat_names = {p.name for p in stats}

    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        cell_path = os.path.join(tmp, "train_cell.ckpt")
        net_path = os.path.join(tmp, "net.ckpt")
        old_path = os.path.join(tmp, "with_statistics.ckpt")
        ms.save_checkpoint(step, cell_path)
        ms.save_checkpoint(net, net_path)
        saved = [{"name": p.name, "data": Tensor(p.asnumpy())} for _, p in step.parameters_and_names()]
        ms.save_checkpoint(saved + [{"name": p.name, "data": Tensor(p.asnumpy())} for p in stats],
                           old_path)
        loaded = ms.load_checkpoint(cell_path)
        leaked = sorted(stat_names & set(loaded))
        for key, path, n in [("train_cell_now", cell_path, len(loaded)),
                             ("net_now", net_path, len(ms.load_checkpoint(net_path))),
                             ("train_cell_with_statistics", old_path, len(saved) + len(stats))]:
            rows[key] = {"mib": round(_mib(path), 2), "tensors": n}
    stat_mib = sum(int(np.prod(p.shape)) * 4 for p in stats) / 2.0 ** 20

    print(f"ResNet-50, {args.classes} classes, {len(layers)} THOR layers, "
          f"{'no step (--quick)' if args.quick else 'after one refresh step'}")
    print(f"{'checkpoint':34s} {'MiB':>9s} {'tensors':>8s}")
    for key, row in rows.items():
        print(f"{key:34s} {row['mib']:9.2f} {row['tensors']:8d}")
    before, after = rows["train_cell_with_statistics"]["mib"], rows["train_cell_now"]["mib"]
    print(f"statistics (float32 payload): {stat_mib:.2f} MiB; train-cell checkpoint "
          f"{before:.2f} -> {after:.2f} MiB ({after / before:.3f}x)")
    print(f"statistic names in the saved train-cell file: {len(leaked)}")
    write_json("thor_checkpoint_size", {"classes": args.classes, "quick": args.quick,
                                        "thor_layers": len(layers), "rows": rows,
                                        "statistics_mib": round(stat_mib, 2),
                                        "leaked_statistics": leaked})
    return 1 if leaked else 0


if __name__ == "__main__":
    sys.exit(main())
