"""Data-parallel training of the digits demo CNN with ms_optim, started by ``msrun``.

One script for every scale: 2 CPU processes on one machine here, 8 Ascend devices (or GPUs) on a
server. Every rank runs this file; MindSpore's data parallelism averages the gradients
(``gradients_mean=True``) before the optimizer sees them, so

* ``LARS`` takes its norms of the full (replicated) weights and of the averaged gradients, and
* ``thor`` averages its curvature statistics A and G over the ranks on refresh steps (before
  inverting), optionally splitting the inversions over the ranks (``--distribute-inversion``),

and P ranks with b samples each compute what one process computes with P*b samples (up to float
rounding; BatchNorm keeps per-rank batch statistics, as in any MindSpore data-parallel job).

Run (from the repository root; see ``examples/distributed/README.md``)::

    PATH=$PWD/.venv/bin:$PATH msrun --worker_num=2 --local_worker_num=2 --master_port=8118 \\
        --join=True --log_dir=outputs/msrun_logs \\
        examples/distributed/train_digits_dp.py --optimizer lars --epochs 10

Rank 0 prints one progress line per epoch (test accuracy of its replica) and a final summary;
every rank's output is in ``--log_dir``/worker_<rank>.log.
"""
import argparse
import os
import sys
import time

os.environ.setdefault("GLOG_v", "3")  # keep MindSpore's C++ logging quiet
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(_HERE))  # examples/ (digits.py)

import numpy as np  # noqa: E402

import mindspore as ms  # noqa: E402
import mindspore.dataset as ds  # noqa: E402
from mindspore import Tensor, nn, ops  # noqa: E402
from mindspore.communication import get_group_size, get_rank, init  # noqa: E402
from mindspore.train import Callback, Model  # noqa: E402

import digits  # noqa: E402  (examples/digits.py: data set and model of the main demo)
import ms_optim  # noqa: E402

DEFAULTS = {  # learning rates of the single-process demo at batch 256 (examples/train_digits.py)
    "momentum": dict(lr=0.1),
    "lars": dict(lr=0.2, coefficient=0.02, use_clip=True),
    "thor": dict(lr=0.2, damping=0.03, frequency=5),
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--optimizer", choices=sorted(DEFAULTS), default="lars")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--global-batch", type=int, default=256,
                   help="samples per step over all ranks; each rank takes global/ranks")
    p.add_argument("--lr", type=float, default=None, help="learning rate (default: per optimizer)")
    p.add_argument("--device", choices=("CPU", "GPU", "Ascend"), default="CPU",
                   help="device of every rank (msrun gives rank r local device r)")
    p.add_argument("--mode", choices=("graph", "pynative"), default="graph")
    p.add_argument("--distribute-inversion", action="store_true",
                   help="THOR: invert each layer on one rank and share the inverses")
    p.add_argument("--split-indices", default=None,
                   help="THOR: all-reduce bucket ends, e.g. '1' (layers 0-1 | 2); default one bucket")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def build_optimizer(name, net, args, steps):
    """The optimizer exactly as a single-process user would write it: nothing rank-specific."""
    cfg = dict(DEFAULTS[name])
    lr = args.lr if args.lr is not None else cfg.pop("lr")
    cfg.pop("lr", None)
    keep = ms_optim.lars_filter_for(net)  # no weight decay / LARS for BatchNorm and biases
    groups = [{"params": [p for p in net.trainable_params() if keep(p)], "weight_decay": 1e-4},
              {"params": [p for p in net.trainable_params() if not keep(p)], "weight_decay": 0.0}]
    if name == "momentum":
        return nn.Momentum(groups, learning_rate=lr, momentum=0.9)
    if name == "lars":
        return ms_optim.LARS(nn.Momentum(groups, learning_rate=lr, momentum=0.9),
                             coefficient=cfg["coefficient"], use_clip=cfg["use_clip"],
                             lars_filter=keep)
    split = None if args.split_indices is None else [int(s) for s in args.split_indices.split(",")]
    return ms_optim.thor(net, Tensor(np.full(steps, lr, np.float32)),
                         Tensor(np.full(steps, cfg["damping"], np.float32)), 0.9,
                         weight_decay=1e-4, decay_filter=keep, frequency=cfg["frequency"],
                         split_indices=split, distribute_inversion=args.distribute_inversion)


class Progress(Callback):
    """Rank 0: one line per epoch with the mean train loss and the test accuracy of its replica."""

    def __init__(self, net, x_test, y_test, rank):
        super().__init__()
        self.net, self.x_test, self.y_test, self.rank = net, x_test, y_test, rank
        self.losses, self.acc, self.t0 = [], [], None

    def on_train_begin(self, run_context):
        self.t0 = time.perf_counter()

    def on_train_epoch_begin(self, run_context):
        self.losses = []

    def on_train_step_end(self, run_context):
        out = run_context.original_args().net_outputs
        out = out[0] if isinstance(out, (tuple, list)) else out
        self.losses.append(float(out.asnumpy()))

    def on_train_epoch_end(self, run_context):
        cb = run_context.original_args()
        acc = digits.evaluate_accuracy(self.net, self.x_test, self.y_test)
        self.acc.append(acc)
        if self.rank == 0:
            print(f"[rank 0] epoch {cb.cur_epoch_num:>2}/{cb.epoch_num}  loss "
                  f"{np.mean(self.losses):.4f}  test acc {acc:.4f}  "
                  f"elapsed {time.perf_counter() - self.t0:6.1f}s", flush=True)


def replica_spread(net, world):
    """Largest |w - mean over ranks of w| over all weights: 0 when the replicas are in sync."""
    worst = 0.0
    for p in net.trainable_params():
        mean = ops.AllReduce()(p.value()) / world
        worst = max(worst, float(ops.abs(p.value() - mean).max().asnumpy()))
    return worst


def main(argv=None):
    args = parse_args(argv)
    ms.set_context(mode=ms.GRAPH_MODE if args.mode == "graph" else ms.PYNATIVE_MODE)
    # --- the data-parallel set-up: the only lines that differ from a single-process script ---
    ms.set_device(args.device)
    init()  # collectives: MindSpore's TCP ones on CPU, NCCL on GPU, HCCL on Ascend
    ms.set_auto_parallel_context(parallel_mode=ms.ParallelMode.DATA_PARALLEL, gradients_mean=True)
    rank, world = get_rank(), get_group_size()
    if args.global_batch % world:
        raise ValueError(f"--global-batch {args.global_batch} must be divisible by {world} ranks")
    per_rank = args.global_batch // world
    # -------------------------------------------------------------------------------------------
    ms.set_seed(args.seed)  # same initial weights on every rank
    x_train, y_train, x_test, y_test = digits.load_digits_arrays(seed=args.seed)
    ds.config.set_seed(args.seed)  # same shuffle on every rank; each rank reads its own shard
    train = ds.NumpySlicesDataset({"image": x_train, "label": y_train}, shuffle=True,
                                  num_shards=world, shard_id=rank)
    train = train.batch(per_rank, drop_remainder=True)
    steps = train.get_dataset_size() * args.epochs

    net = digits.DigitsCNN()
    loss_fn = nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean")
    opt = build_optimizer(args.optimizer, net, args, steps)
    model = Model(net, loss_fn=loss_fn, optimizer=opt)
    if args.optimizer == "thor":
        model = ms_optim.ConvertModelUtils.convert_to_thor_model(model, network=net,
                                                                 loss_fn=loss_fn, optimizer=opt)
    if rank == 0:
        print(f"[rank 0] {args.optimizer} on {world} ranks x {per_rank} samples "
              f"(global batch {per_rank * world}), {train.get_dataset_size()} steps/epoch, "
              f"{args.mode} mode", flush=True)
    progress = Progress(net, x_test, y_test, rank)
    t0 = time.perf_counter()
    model.train(args.epochs, train, callbacks=[progress], dataset_sink_mode=False)
    seconds = time.perf_counter() - t0
    spread = replica_spread(net, world)
    print(f"[rank {rank}] done: final test acc {progress.acc[-1]:.4f}, best "
          f"{max(progress.acc):.4f}, {seconds:.1f}s, replica spread {spread:.2e}", flush=True)
    if spread > 1e-5:
        raise RuntimeError(f"rank {rank}: replicas drifted apart (max |w - mean| = {spread:.2e})")
    return progress.acc


if __name__ == "__main__":
    main()
