"""Reusable pieces of the ms_optim main job: sklearn digits, a small CNN, and one training run.

Everything here runs on the CPU backend in GRAPH or PYNATIVE mode:

* :func:`load_digits_arrays` / :func:`make_datasets` - the real scikit-learn digits data set
  (1797 grey 8x8 images, 10 classes) split once into train/test with a fixed seed (stratified),
  as ``mindspore.dataset`` pipelines (train: shuffled with a fixed seed, ``drop_remainder=True``
  so every step sees the same batch size, which THOR's statistics assume).
* :class:`DigitsCNN` - Conv2d/BatchNorm/ReLU/MaxPool x2 + Dense, input ``(N, 1, 8, 8)``.
* :class:`AccuracyPerEpoch` - a ``mindspore.train.Callback`` that evaluates test accuracy after
  every epoch and prints a progress line (epoch, mean train loss, test accuracy, elapsed).
* :func:`build_optimizer` - ``"momentum"``, ``"lars"`` (``ms_optim.LARS`` wrapping ``nn.Momentum``,
  with ``ms_optim.lars_filter_for(net)``) or ``"thor"`` (``ms_optim.thor``).
* :func:`train_config` - trains one optimizer configuration through ``ms.Model`` and returns the
  test accuracy after every epoch plus timings; :func:`epochs_to_reach` reads off when a target
  accuracy is first reached.

Example (the THOR convergence test uses it the same way)::

    from digits import train_config, epochs_to_reach
    res = train_config("momentum", lr=0.1, epochs=10, batch_size=256)
    print(res["test_acc"], epochs_to_reach(res["test_acc"], 0.97))
"""
import os
import sys
import time

import numpy as np

import mindspore as ms
import mindspore.dataset as ds
from mindspore import Tensor, nn
from mindspore.train import Callback, Model

# Let `import ms_optim` work when the examples are run from a source checkout without installing.
_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _REPO not in sys.path:
    sys.path.insert(0, _REPO)

import ms_optim  # noqa: E402  (path set-up above)

OPTIMIZERS = ("momentum", "lars", "thor")
NUM_CLASSES = 10
IMAGE_SHAPE = (1, 8, 8)
BN_MOMENTUM = 0.7


# --------------------------------------------------------------------------- data
def load_digits_arrays(test_fraction=0.25, seed=0):
    """Load sklearn digits as float32 ``(N, 1, 8, 8)`` images in [0, 1] and int32 labels.

    The split is stratified and fixed by ``seed``; it is the same for every optimizer.

    Returns:
        tuple ``(x_train, y_train, x_test, y_test)`` of NumPy arrays.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    x = (data.images.astype(np.float32) / 16.0).reshape((-1,) + IMAGE_SHAPE)
    y = data.target.astype(np.int32)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=test_fraction, random_state=seed, stratify=y)
    return x_train, y_train, x_test, y_test


def make_datasets(batch_size=32, seed=0, test_fraction=0.25):
    """Build the train and test ``mindspore.dataset`` pipelines.

    The train pipeline is shuffled with ``seed`` (same order for every optimizer) and drops the last
    partial batch; the test pipeline is unshuffled and keeps every sample.

    Returns:
        tuple ``(train_ds, test_ds, arrays)`` where ``arrays`` is the tuple from
        :func:`load_digits_arrays`.
    """
    arrays = load_digits_arrays(test_fraction, seed)
    x_train, y_train, x_test, y_test = arrays
    ds.config.set_seed(seed)
    train_ds = ds.NumpySlicesDataset({"image": x_train, "label": y_train}, shuffle=True)
    train_ds = train_ds.batch(batch_size, drop_remainder=True)
    test_ds = ds.NumpySlicesDataset({"image": x_test, "label": y_test}, shuffle=False)
    test_ds = test_ds.batch(256, drop_remainder=False)
    return train_ds, test_ds, arrays


# --------------------------------------------------------------------------- model
class DigitsCNN(nn.Cell):
    """Small CNN for 1x8x8 digits: [Conv3x3-BN-ReLU-MaxPool] x2 -> Dense(10).

    Args:
        channels (tuple[int, int]): output channels of the two conv blocks. Default: ``(16, 32)``.
        num_classes (int): number of classes. Default: ``10``.
        bn_momentum (float): BatchNorm moving-statistics momentum. Default: ``BN_MOMENTUM``; lower
            than MindSpore's 0.9 because at batch 256 an epoch has only 5 steps, and test accuracy
            should measure the weights, not moving averages that lag several epochs behind.
    """

    def __init__(self, channels=(16, 32), num_classes=NUM_CLASSES, bn_momentum=None):
        super().__init__()
        c1, c2 = channels
        bn_momentum = BN_MOMENTUM if bn_momentum is None else bn_momentum
        self.features = nn.SequentialCell([
            nn.Conv2d(1, c1, 3, pad_mode="same", has_bias=False, weight_init="HeUniform"),
            nn.BatchNorm2d(c1, momentum=bn_momentum),
            nn.ReLU(),
            nn.MaxPool2d(2, 2),  # 8x8 -> 4x4
            nn.Conv2d(c1, c2, 3, pad_mode="same", has_bias=False, weight_init="HeUniform"),
            nn.BatchNorm2d(c2, momentum=bn_momentum),
            nn.ReLU(),
            nn.MaxPool2d(2, 2),  # 4x4 -> 2x2
        ])
        self.flatten = nn.Flatten()
        self.classifier = nn.Dense(c2 * 4, num_classes, weight_init="HeUniform", bias_init="zeros")

    def construct(self, x):
        return self.classifier(self.flatten(self.features(x)))


# --------------------------------------------------------------------------- callback
def _loss_value(outputs):
    """Extract a float loss from ``cb_params.net_outputs`` (a Tensor or a tuple starting with it)."""
    if isinstance(outputs, (tuple, list)):
        outputs = outputs[0]
    return float(outputs.asnumpy()) if isinstance(outputs, Tensor) else float(outputs)


def evaluate_accuracy(net, x, y, batch=512):
    """Top-1 accuracy of ``net`` (in inference mode) on NumPy arrays ``x`` and ``y``."""
    was_training = net.training
    net.set_train(False)
    correct = 0
    for i in range(0, len(x), batch):
        logits = net(Tensor(x[i:i + batch])).asnumpy()
        correct += int((logits.argmax(axis=1) == y[i:i + batch]).sum())
    net.set_train(was_training)
    return correct / len(x)


class AccuracyPerEpoch(Callback):
    """Record mean train loss and test accuracy after every epoch, and print progress.

    Test accuracy is computed directly on the (possibly THOR-converted) network in inference mode,
    so it works the same for every optimizer. Time spent evaluating is excluded from
    ``train_seconds``.

    Args:
        net (nn.Cell): the network being trained.
        x_test, y_test (numpy.ndarray): test images and labels.
        label (str): prefix of progress lines.
        verbose (bool): print one line per epoch. Default: ``True``.
        stream (file): where progress lines go. Default: ``sys.stdout``.
    """

    def __init__(self, net, x_test, y_test, label="", verbose=True, stream=None):
        super().__init__()
        self.net = net
        self.x_test, self.y_test = x_test, y_test
        self.label = label
        self.verbose = verbose
        self.stream = stream if stream is not None else sys.stdout
        self.test_acc, self.train_loss, self.epoch_seconds = [], [], []
        self.train_seconds = 0.0
        self._losses = []
        self._t_epoch = None
        self._t0 = None

    def on_train_begin(self, run_context):
        self._t0 = time.perf_counter()

    def on_train_epoch_begin(self, run_context):
        self._t_epoch = time.perf_counter()
        self._losses = []

    def on_train_step_end(self, run_context):
        self._losses.append(_loss_value(run_context.original_args().net_outputs))

    def on_train_epoch_end(self, run_context):
        cb = run_context.original_args()
        seconds = time.perf_counter() - self._t_epoch
        self.epoch_seconds.append(seconds)
        self.train_seconds += seconds
        if not self._losses:  # dataset-sink mode: only the epoch's last loss is visible
            self._losses.append(_loss_value(cb.net_outputs))
        loss = float(np.mean(self._losses))
        acc = evaluate_accuracy(self.net, self.x_test, self.y_test)
        self.train_loss.append(loss)
        self.test_acc.append(acc)
        if self.verbose:
            elapsed = time.perf_counter() - self._t0
            print(f"  [{self.label}] epoch {cb.cur_epoch_num:>2}/{cb.epoch_num}  loss {loss:.4f}  "
                  f"test acc {acc:.4f}  elapsed {elapsed:6.1f}s", file=self.stream, flush=True)
        if not np.isfinite(loss):
            run_context.request_stop()


# --------------------------------------------------------------------------- optimizers
def build_optimizer(name, net, lr, *, momentum=0.9, weight_decay=1e-4, steps=None,
                    batch_size=32, coefficient=0.001, use_clip=False, damping=0.03, frequency=10,
                    thor_kwargs=None):
    """Create the optimizer called ``name`` for ``net``.

    Args:
        name (str): ``"momentum"``, ``"lars"`` or ``"thor"``.
        net (nn.Cell): the network (THOR converts its Dense/Conv2d layers in place).
        lr (float): learning rate (constant).
        momentum (float): momentum of every optimizer. Default: ``0.9``.
        weight_decay (float): weight decay. Momentum/LARS decay every parameter except BatchNorm
            scale/shift and biases (the recommended practice); THOR decays the same set.
        steps (int): total training steps (THOR takes per-step lr/damping arrays).
        batch_size (int): THOR's ``batch_size``.
        coefficient (float): LARS trust coefficient :math:`\\eta`.
        use_clip (bool): LARS ``use_clip`` (LARC: trust ratio / lr clipped to [0, 1]).
        damping (float): THOR damping :math:`\\lambda` (constant).
        frequency (int): THOR inverse refresh period in steps.
        thor_kwargs (dict): more keyword arguments of ``ms_optim.thor`` (e.g. ``kl_clip``).
    """
    if name == "thor":
        if steps is None:
            raise ValueError("THOR needs `steps` to build its per-step lr/damping arrays")
        lr_arr = Tensor(np.full(steps, lr, np.float32))
        damping_arr = Tensor(np.full(steps, damping, np.float32))
        return ms_optim.thor(net, lr_arr, damping_arr, momentum, weight_decay=weight_decay,
                             batch_size=batch_size, decay_filter=_decay_filter(net),
                             frequency=frequency, **(thor_kwargs or {}))
    decayed = [p for p in net.trainable_params() if _decay_filter(net)(p)]
    others = [p for p in net.trainable_params() if not _decay_filter(net)(p)]
    groups = [{"params": decayed, "weight_decay": weight_decay},
              {"params": others, "weight_decay": 0.0}]
    if name == "momentum":
        return nn.Momentum(groups, learning_rate=lr, momentum=momentum)
    if name == "lars":
        base = nn.Momentum(groups, learning_rate=lr, momentum=momentum)
        return ms_optim.LARS(base, coefficient=coefficient, use_clip=use_clip,
                             lars_filter=ms_optim.lars_filter_for(net))
    raise ValueError(f"unknown optimizer {name!r}; choose from {OPTIMIZERS}")


def _decay_filter(net):
    """Weight-decay predicate: weights of Conv2d/Dense only (no BatchNorm scale/shift, no bias)."""
    return ms_optim.lars_filter_for(net)


# --------------------------------------------------------------------------- one run
def train_config(name, lr, epochs, *, batch_size=32, seed=0, mode=None, momentum=0.9,
                 weight_decay=1e-4, verbose=True, label=None, dataset_sink_mode=False, **opt_kwargs):
    """Train a fresh :class:`DigitsCNN` with one optimizer configuration through ``ms.Model``.

    Args:
        name (str): ``"momentum"``, ``"lars"`` or ``"thor"``.
        lr (float): learning rate.
        epochs (int): number of epochs.
        batch_size (int): batch size. Default: ``32``.
        seed (int): seed for the weights, the data split and the shuffle order. Default: ``0``.
        mode (int): ``ms.GRAPH_MODE`` or ``ms.PYNATIVE_MODE``; ``None`` keeps the current context.
        momentum (float): momentum of every optimizer. Default: ``0.9``.
        weight_decay (float): weight decay of Conv2d/Dense weights. Default: ``1e-4``.
        verbose (bool): print one progress line per epoch.
        label (str): progress-line prefix. Default: ``"<name> lr=<lr>"``.
        dataset_sink_mode (bool): passed to ``Model.train``; with sink mode the epoch loss is the
            last step's loss. Default: ``False``.
        **opt_kwargs: passed to :func:`build_optimizer` (``coefficient``, ``damping``, ``frequency``).

    Returns:
        dict with ``name``, ``lr``, ``epochs`` (requested), ``test_acc`` (list, one per epoch run;
        shorter than ``epochs`` when the loss became non-finite and training stopped), ``train_loss`` (list),
        ``epoch_seconds`` (list, training only, epoch 1 includes graph compilation),
        ``train_seconds`` (sum of ``epoch_seconds``) and ``total_seconds`` (wall time incl. set-up
        and evaluation).
    """
    t0 = time.perf_counter()
    if mode is not None:
        ms.set_context(mode=mode)
    ms.set_seed(seed)
    np.random.seed(seed)
    train_ds, _, (_, _, x_test, y_test) = make_datasets(batch_size, seed)
    steps = train_ds.get_dataset_size() * epochs
    net = DigitsCNN()
    loss_fn = nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean")
    opt = build_optimizer(name, net, lr, momentum=momentum, weight_decay=weight_decay, steps=steps,
                          batch_size=batch_size, **opt_kwargs)
    model = Model(net, loss_fn=loss_fn, optimizer=opt)
    if name == "thor":
        model = ms_optim.ConvertModelUtils.convert_to_thor_model(
            model, network=net, loss_fn=loss_fn, optimizer=opt)
    cb = AccuracyPerEpoch(net, x_test, y_test, label=label or f"{name} lr={lr:g}", verbose=verbose)
    model.train(epochs, train_ds, callbacks=[cb], dataset_sink_mode=dataset_sink_mode)
    return {
        "name": name, "lr": lr, "epochs": epochs, "test_acc": list(cb.test_acc), "train_loss": list(cb.train_loss),
        "epoch_seconds": list(cb.epoch_seconds), "train_seconds": cb.train_seconds,
        "total_seconds": time.perf_counter() - t0,
    }


def epochs_to_reach(test_acc, target=0.97):
    """First epoch (1-based) whose test accuracy is >= ``target``; ``None`` if never reached."""
    for i, acc in enumerate(test_acc):
        if acc >= target:
            return i + 1
    return None
