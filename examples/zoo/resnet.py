"""ResNet (v1.5, bottleneck blocks) built here, with the real layer shapes of the zoo recipe.

``resnet50()`` has the same 161 trainable tensors (53 convolutions and the final Dense with their
BatchNorms; 25.56M parameters at 1000 classes) as ``mindspore-ai/models`` ``official/cv/ResNet``
(``resnet50``); the benchmarks use it at the scale users run. ``resnet(layers=(1, 1, 1, 1),
width=8)`` is a small network of the same structure for quick tests. Only the number of classes,
the stage depths, the base width and the input resolution are free; the convolution shapes of
``resnet50`` do not depend on the input size.

    from resnet import resnet50, random_batch
    net = resnet50(num_classes=1000)
"""
import numpy as np

import mindspore as ms
from mindspore import Tensor, nn

__all__ = ["resnet", "resnet50", "random_batch", "param_count"]


def _conv(cin, cout, k, stride=1):
    return nn.Conv2d(cin, cout, k, stride=stride, pad_mode="same", has_bias=False,
                     weight_init="HeUniform")


def _bn(c, gamma=1.0):
    return nn.BatchNorm2d(c, momentum=0.9, gamma_init=gamma)


class Bottleneck(nn.Cell):
    """1x1 reduce, 3x3 (stride here, v1.5), 1x1 expand x4, projection shortcut where needed."""
    expansion = 4

    def __init__(self, cin, width, stride=1):
        super().__init__()
        cout = width * self.expansion
        self.conv1, self.bn1 = _conv(cin, width, 1), _bn(width)
        self.conv2, self.bn2 = _conv(width, width, 3, stride), _bn(width)
        self.conv3, self.bn3 = _conv(width, cout, 1), _bn(cout, 0.0)
        self.relu = nn.ReLU()
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.SequentialCell([_conv(cin, cout, 1, stride), _bn(cout)])

    def construct(self, x):
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.down is not None:
            identity = self.down(x)
        return self.relu(out + identity)


class ResNet(nn.Cell):
    """Stem 7x7/2 + max-pool, four stages of bottlenecks (widths w, 2w, 4w, 8w), global pool, Dense."""

    def __init__(self, num_classes=1000, layers=(3, 4, 6, 3), width=64):
        super().__init__()
        self.conv1, self.bn1 = _conv(3, width, 7, 2), _bn(width)
        self.relu = nn.ReLU()
        self.pool = nn.MaxPool2d(3, 2, pad_mode="same")
        blocks, cin = [], width
        for k, (n, stride) in enumerate(zip(layers, (1, 2, 2, 2))):
            w = width * 2 ** k
            for i in range(n):
                blocks.append(Bottleneck(cin, w, stride if i == 0 else 1))
                cin = w * Bottleneck.expansion
        self.layers = nn.SequentialCell(blocks)
        self.flatten = nn.Flatten()
        self.fc = nn.Dense(cin, num_classes, weight_init="Normal")

    def construct(self, x):
        x = self.pool(self.relu(self.bn1(self.conv1(x))))
        x = self.layers(x)
        x = x.mean(axis=(2, 3))
        return self.fc(self.flatten(x))


def resnet(num_classes=1000, layers=(3, 4, 6, 3), width=64):
    """Return a bottleneck ResNet cell (float32); the defaults are ResNet-50."""
    return ResNet(num_classes, tuple(layers), width)


def resnet50(num_classes=1000):
    """Return a ResNet-50 cell (float32)."""
    return ResNet(num_classes)


def random_batch(batch, image=64, num_classes=1000, seed=0):
    """A fixed random ``(batch, 3, image, image)`` float32 batch and int32 labels."""
    rng = np.random.default_rng(seed)
    x = Tensor(rng.standard_normal((batch, 3, image, image)).astype(np.float32))
    y = Tensor(rng.integers(0, num_classes, batch).astype(np.int32))
    return x, y


def param_count(net):
    """(number of trainable tensors, number of trainable scalars)."""
    params = net.trainable_params()
    return len(params), int(sum(int(np.prod(p.shape)) for p in params))


if __name__ == "__main__":
    ms.set_device("CPU")
    print(param_count(resnet50()))
