"""The ``Examples`` of upstream ``mindspore.nn.LARS`` and ``mindspore.nn.thor``, run with ms_optim.

Each function below is the upstream docstring example (MindSpore 2.10) line for line, with the
import changed (``from mindspore import nn`` -> ``import ms_optim.nn as nn``,
``ms.ConvertModelUtils`` -> ``ms_optim.ConvertModelUtils``), plus what the upstream example leaves
to the reader: ``LeNet5`` and ``create_dataset`` (the MindSpore docs' ``lenet.py`` / ``mnist.py``;
here LeNet5 is written from its description and the data are the real scikit-learn digits scaled
to 32x32, since MNIST cannot be downloaded), the missing ``mstype`` import of the thor example,
and a ``model.train`` call so that the example actually trains.

    python examples/zoo/upstream_examples.py
"""
import os
import sys

import numpy as np

import mindspore as ms
import mindspore.dataset as ds
from mindspore import dtype as mstype  # the upstream thor example uses mstype without importing it

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import ms_optim  # noqa: E402
import ms_optim.nn as nn  # noqa: E402   (upstream: from mindspore import nn)
from mindspore import Tensor  # noqa: E402


class LeNet5(nn.Cell):
    """LeNet-5 of the MindSpore docs: two 5x5 valid convolutions, max-pool, three Dense layers."""

    def __init__(self, num_class=10, num_channel=1):
        super().__init__()
        self.conv1 = nn.Conv2d(num_channel, 6, 5, pad_mode="valid")
        self.conv2 = nn.Conv2d(6, 16, 5, pad_mode="valid")
        self.fc1 = nn.Dense(16 * 5 * 5, 120, weight_init=ms.common.initializer.Normal(0.02))
        self.fc2 = nn.Dense(120, 84, weight_init=ms.common.initializer.Normal(0.02))
        self.fc3 = nn.Dense(84, num_class, weight_init=ms.common.initializer.Normal(0.02))
        self.relu = nn.ReLU()
        self.max_pool2d = nn.MaxPool2d(kernel_size=2, stride=2)
        self.flatten = nn.Flatten()

    def construct(self, x):
        x = self.max_pool2d(self.relu(self.conv1(x)))
        x = self.max_pool2d(self.relu(self.conv2(x)))
        x = self.flatten(x)
        x = self.relu(self.fc1(x))
        x = self.relu(self.fc2(x))
        return self.fc3(x)


def create_dataset(batch_size=32, one_hot=False, n_batches=8):
    """Real digits (sklearn, bundled), 8x8 scaled to 1x32x32, as a mindspore.dataset pipeline."""
    from sklearn.datasets import load_digits
    digits = load_digits()
    n = batch_size * n_batches
    x = np.kron(digits.images[:n] / 16.0, np.ones((4, 4))).astype(np.float32)[:, None]
    y = digits.target[:n].astype(np.int32)
    label = np.eye(10, dtype=np.float32)[y] if one_hot else y
    return ds.NumpySlicesDataset({"image": x, "label": label}, shuffle=False).batch(
        batch_size, drop_remainder=True)


class _Losses(ms.train.Callback):
    def __init__(self):
        super().__init__()
        self.values = []

    def on_train_step_end(self, run_context):
        out = run_context.original_args().net_outputs
        out = out[0] if isinstance(out, (tuple, list)) else out
        self.values.append(float(out.asnumpy().reshape(-1)[0]))


def lars_example(epochs=2):
    """upstream ``nn.LARS`` Examples (+ train)."""
    net = LeNet5()
    loss = nn.SoftmaxCrossEntropyWithLogits()
    opt = nn.Momentum(net.trainable_params(), 0.1, 0.9)
    opt_lars = nn.LARS(opt, epsilon=1e-08, coefficient=0.02)
    model = ms.train.Model(net, loss_fn=loss, optimizer=opt_lars, metrics=None)
    # -- not in the upstream example: train it
    losses = _Losses()
    model.train(epochs, create_dataset(one_hot=True), callbacks=[losses], dataset_sink_mode=False)
    return losses.values


def thor_example(epochs=2):
    """upstream ``nn.thor`` Examples (+ train)."""
    net = LeNet5()
    dataset = create_dataset()
    temp = Tensor([4e-4, 1e-4, 1e-5, 1e-5], mstype.float32)
    optim = nn.thor(net, learning_rate=temp, damping=temp, momentum=0.9, loss_scale=128, frequency=4)
    loss = nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction='mean')
    loss_scale = ms.FixedLossScaleManager(128, drop_overflow_update=False)
    model = ms.Model(net, loss_fn=loss, optimizer=optim, loss_scale_manager=loss_scale, metrics={'acc'},
                     amp_level="O2", keep_batchnorm_fp32=False)
    model = ms_optim.ConvertModelUtils.convert_to_thor_model(model=model, network=net, loss_fn=loss,
                                                             optimizer=optim, loss_scale_manager=loss_scale,
                                                             metrics={'acc'}, amp_level="O2",
                                                             keep_batchnorm_fp32=False)
    # -- not in the upstream example: train it
    losses = _Losses()
    model.train(epochs, dataset, callbacks=[losses], dataset_sink_mode=False)
    return losses.values, optim


if __name__ == "__main__":
    ms.set_device("CPU")
    ms.set_context(mode=ms.GRAPH_MODE)
    print("nn.LARS example losses:", [round(v, 4) for v in lars_example()])
    thor_losses, _ = thor_example()
    print("nn.thor example losses:", [round(v, 4) for v in thor_losses])
