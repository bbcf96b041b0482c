"""Shared pieces of the data-parallel equivalence jobs (``tests/test_distributed.py``).

The same functions run in two places:

* inside every ``msrun`` worker (:mod:`dp_worker`): rank ``r`` of ``P`` trains on its shard
  ``global_batch[r*b:(r+1)*b]`` of every step's global batch, under
  ``ParallelMode.DATA_PARALLEL`` with ``gradients_mean=True``;
* inside the pytest process as the single-process reference: ``P = 1``, the full global batch.

Everything that could make the two runs differ other than the data parallelism itself is pinned:
weights come from a NumPy ``RandomState`` (not MindSpore's initialisers), the data of every step is
fixed, the datasets are not shuffled, and training goes through ``Model.train`` (the user path;
THOR through ``ConvertModelUtils.convert_to_thor_model``) with ``dataset_sink_mode=False``.

A configuration is ``"<optimizer>-<mode>"``; optimizers are the keys of :data:`CONFIGS`, modes
``graph`` / ``pynative``. :func:`train` returns every parameter of the training cell (weights,
moments, THOR inverses, step counters) as NumPy arrays, keyed by parameter name.
"""
import os
import sys

import numpy as np

_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if _REPO not in sys.path:
    sys.path.insert(0, _REPO)

import mindspore as ms  # noqa: E402
import mindspore.dataset as ds  # noqa: E402
from mindspore import Tensor, nn  # noqa: E402
from mindspore.train import Model  # noqa: E402

import ms_optim  # noqa: E402

GLOBAL_BATCH = 16          # P * b with P = 2 ranks, b = 8 samples per rank
IMAGE = (1, 6, 6)
CLASSES = 5
LOCAL_STATE = (".matrix_a", ".matrix_g", ".thor_n")
MODES = {"graph": ms.GRAPH_MODE, "pynative": ms.PYNATIVE_MODE}

# optimizer settings of every configuration the jobs know
CONFIGS = {
    # LARS(Momentum): coefficient large enough that weights move visibly (~lr*eta per step)
    "lars": dict(kind="lars", net="conv_ln", steps=5, lr=1.0, coefficient=0.02),
    # THOR, frequency 3 over 7 steps: refresh at 0, 3, 6; stale steps 1, 2, 4, 5.
    "thor": dict(kind="thor", net="conv", steps=7, lr=0.05, damping=0.03, frequency=3,
                 split_indices=None, distribute_inversion=False),
    # same, with two all-reduce buckets and the inversion work split over the ranks
    "thor_dist": dict(kind="thor", net="conv", steps=7, lr=0.05, damping=0.03, frequency=3,
                      split_indices=[0], distribute_inversion=True),
    # diagnostics: the two data-parallel options one at a time
    "thor_buckets": dict(kind="thor", net="conv", steps=7, lr=0.05, damping=0.03, frequency=3,
                         split_indices=[0], distribute_inversion=False),
    "thor_dist1": dict(kind="thor", net="conv", steps=7, lr=0.05, damping=0.03, frequency=3,
                       split_indices=None, distribute_inversion=True),
    # the keyword-only controls (KL clip, running means of the factors collected at every step
    # and inverted every 3rd, Levenberg-Marquardt damping, eigen-decompositions) with the
    # inversion split
    "thor_ctrl": dict(kind="thor", net="conv", steps=7, lr=0.05, damping=0.03, frequency=3,
                      split_indices=[0], distribute_inversion=True, kl_clip=1e-4,
                      factor_decay=0.8, factor_frequency=1, adaptive_damping=0.5,
                      inverse_method="eigh"),
    # THOR with a LayerNorm (its rule uses the batch size N)
    "thor_ln": dict(kind="thor", net="conv_ln", steps=4, lr=0.05, damping=0.03, frequency=3,
                    split_indices=None, distribute_inversion=False),
}


class ConvNet(nn.Cell):
    """Conv2d(1->4, 3x3, same) -> ReLU -> Dense(144->16) [-> LayerNorm] -> ReLU -> Dense(16->5).

    Three preconditioned THOR layers; A of the first Dense is 144 wide, so THOR's 128-blocks are
    exercised. No BatchNorm: its batch statistics are per rank under data parallelism, so a
    network with BatchNorm is *not* expected to match the single process.
    """

    def __init__(self, layer_norm=False, conv_bias=False):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, pad_mode="same", has_bias=conv_bias)
        self.relu = nn.ReLU()
        self.flatten = nn.Flatten()
        self.fc1 = nn.Dense(4 * IMAGE[1] * IMAGE[2], 16)
        self.norm = nn.LayerNorm((16,)) if layer_norm else None
        self.fc2 = nn.Dense(16, CLASSES)

    def construct(self, x):
        h = self.fc1(self.flatten(self.relu(self.conv(x))))
        if self.norm is not None:
            h = self.norm(h)
        return self.fc2(self.relu(h))


def make_net(name, seed=0):
    """Build the network ``name`` with weights drawn from ``np.random.RandomState(seed)``."""
    net = ConvNet(layer_norm=(name == "conv_ln"), conv_bias=(name == "conv_ln"))
    rng = np.random.RandomState(seed)
    for p in net.trainable_params():  # deterministic order: definition order of the cells
        shape = p.shape
        if p.name.endswith("gamma"):
            value = 1.0 + 0.1 * rng.standard_normal(shape)
        elif len(shape) == 1:
            value = 0.1 * rng.standard_normal(shape)
        else:
            fan_in = int(np.prod(shape[1:]))
            value = rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)
        p.set_data(Tensor(value.astype(np.float32)))
    return net


def make_data(steps, seed=1):
    """``steps`` global batches: images ``(steps, B, 1, 6, 6)`` float32 and labels ``(steps, B)``."""
    rng = np.random.RandomState(seed)
    x = rng.standard_normal((steps, GLOBAL_BATCH) + IMAGE).astype(np.float32)
    y = rng.randint(0, CLASSES, size=(steps, GLOBAL_BATCH)).astype(np.int32)
    return x, y


def shard(x, y, rank, world):
    """Rank ``rank``'s rows of every global batch (contiguous blocks of ``B / world``)."""
    if GLOBAL_BATCH % world:
        raise ValueError(f"global batch {GLOBAL_BATCH} is not divisible by {world} ranks")
    b = GLOBAL_BATCH // world
    return x[:, rank * b:(rank + 1) * b], y[:, rank * b:(rank + 1) * b]


def build(cfg, net, steps):
    """Return ``(model, train_cell_params_owner)`` for configuration dict ``cfg``."""
    loss_fn = nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean")
    if cfg["kind"] == "lars":
        base = nn.Momentum(net.trainable_params(), learning_rate=cfg["lr"], momentum=0.9,
                           weight_decay=1e-4)
        opt = ms_optim.LARS(base, coefficient=cfg["coefficient"],
                            lars_filter=ms_optim.lars_filter_for(net))
        return Model(net, loss_fn=loss_fn, optimizer=opt), opt
    lr = Tensor(np.full(steps, cfg["lr"], np.float32))
    damping = Tensor(np.full(steps, cfg["damping"], np.float32))
    opt = ms_optim.thor(net, lr, damping, 0.9, weight_decay=1e-4, batch_size=GLOBAL_BATCH,
                        split_indices=cfg["split_indices"], frequency=cfg["frequency"],
                        distribute_inversion=cfg["distribute_inversion"],
                        kl_clip=cfg.get("kl_clip"), factor_decay=cfg.get("factor_decay"),
                        factor_frequency=cfg.get("factor_frequency"),
                        adaptive_damping=cfg.get("adaptive_damping"),
                        inverse_method=cfg.get("inverse_method", "cholesky"))
    model = Model(net, loss_fn=loss_fn, optimizer=opt)
    model = ms_optim.ConvertModelUtils.convert_to_thor_model(model, network=net, loss_fn=loss_fn,
                                                             optimizer=opt)
    return model, opt


def train(config, rank=0, world=1):
    """Run configuration ``config`` (``"<opt>-<mode>"``) as rank ``rank`` of ``world``.

    Returns:
        dict: parameter name -> float64 NumPy array for the network and the optimizer state.
    """
    opt_name, mode = config.split("-")
    cfg = CONFIGS[opt_name]
    ms.set_context(mode=MODES[mode])
    steps = cfg["steps"]
    net = make_net(cfg["net"])
    x, y = shard(*make_data(steps), rank, world)
    b = x.shape[1]
    data = ds.NumpySlicesDataset({"x": x.reshape((-1,) + IMAGE), "y": y.reshape(-1)},
                                 shuffle=False).batch(b, drop_remainder=True)
    model, opt = build(cfg, net, steps)
    model.train(1, data, dataset_sink_mode=False)
    out = {}
    for p in net.trainable_params():
        out["net/" + p.name] = p.asnumpy().astype(np.float64)
    trainable = {p.name for p in net.trainable_params()}
    for p in opt.get_parameters():
        # matrix_a / matrix_g / thor_n are this rank's raw statistics: per rank by design
        if p.name in trainable or p.name.endswith(LOCAL_STATE):
            continue
        out["opt/" + p.name] = p.asnumpy().astype(np.float64)
    return out
