"""ResNet training in the call sequence of the MindSpore model zoo, with ms_optim.

Follows ``mindspore-ai/models`` ``official/cv/ResNet/train.py`` (and its ``resnet50_imagenet2012_*
_Thor_config.yaml``) step by step: group parameters, ``nn.Momentum(..., loss_scale=...)``,
optionally wrapped by ``nn.LARS(...)`` with the zoo's name filter; ``FixedLossScaleManager``;
``ms.Model`` (fp32 on CPU, or ``amp_level="O3"`` with the loss-scale manager as on Ascend/GPU);
for THOR ``nn.thor(net, lr, damping, momentum, weight_decay, loss_scale, batch_size,
split_indices=[26, 53], frequency=...)`` and
``ConvertModelUtils().convert_to_thor_model(model=..., network=net, loss_fn=loss, optimizer=opt,
loss_scale_manager=loss_scale, metrics={'acc'}, amp_level="O3")``; ``ModelCheckpoint`` with
``append_info``; resume with ``load_checkpoint(..., filter_prefix=[...])`` and
``load_param_into_net`` on the network and the optimizer; ``model.train(..., sink_size=
dataset.get_dataset_size(), dataset_sink_mode=<not CPU>)``.

The only lines that differ from the zoo script are the imports::

    import mindspore.nn as nn                                    ->  import ms_optim.nn as nn
    from mindspore.train.train_thor import ConvertModelUtils     ->  from ms_optim import ConvertModelUtils

What is not the zoo's: the data (a fixed synthetic image set, so that the script runs anywhere
without ImageNet), the learning-rate/damping generators (``ms_optim.thor_lr_schedule`` /
``thor_damping_schedule`` have the zoo's ``get_thor_lr`` / ``get_thor_damping`` form) and the size
switches (``--layers``, ``--width``, ``--image``) that make a small network for tests.

    python examples/zoo/resnet_train.py --optimizer Thor --epochs 2
    python examples/zoo/resnet_train.py --optimizer LARS --amp      # the Ascend/GPU branch on CPU
"""
import argparse
import os
import sys

import numpy as np

import mindspore as ms
import mindspore.dataset as ds
from mindspore.train.callback import CheckpointConfig, LossMonitor, ModelCheckpoint

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(_HERE)))  # a source checkout, not installed
sys.path.insert(0, _HERE)

# ---- the only change from the zoo script -------------------------------------------------
import ms_optim.nn as nn  # noqa: E402   (zoo: import mindspore.nn as nn)
from ms_optim import ConvertModelUtils  # noqa: E402   (zoo: from mindspore.train.train_thor ...)
# -------------------------------------------------------------------------------------------
import ms_optim  # noqa: E402  (the zoo's src/lr_generator.py counterparts)
from resnet import resnet  # noqa: E402


class CrossEntropySmooth(nn.LossBase):
    """The zoo's label-smoothed cross-entropy (src/CrossEntropySmooth.py), written here."""

    def __init__(self, sparse=True, reduction="mean", smooth_factor=0.0, num_classes=1000):
        super().__init__()
        self.onehot = ms.ops.OneHot()
        self.sparse = sparse
        self.on_value = ms.Tensor(1.0 - smooth_factor, ms.float32)
        self.off_value = ms.Tensor(1.0 * smooth_factor / (num_classes - 1), ms.float32)
        self.ce = nn.SoftmaxCrossEntropyWithLogits(reduction=reduction)

    def construct(self, logit, label):
        if self.sparse:
            label = self.onehot(label, ms.ops.shape(logit)[1], self.on_value, self.off_value)
        return self.ce(logit, label)


def create_dataset(batch_size, image, class_num, n_batches, seed=0):
    """Fixed synthetic images whose class shifts the channel means (learnable)."""
    rng = np.random.default_rng(seed)
    n = batch_size * n_batches
    labels = rng.integers(0, class_num, n).astype(np.int32)
    x = rng.standard_normal((n, 3, image, image)).astype(np.float32)
    x += (labels[:, None, None, None] % 3 == np.arange(3)[None, :, None, None]) * 1.5
    data = ds.NumpySlicesDataset({"image": x, "label": labels}, shuffle=False)
    return data.batch(batch_size, drop_remainder=True)


def init_group_params(net, weight_decay):
    """The zoo's grouping: weight decay on convolution/dense weights, none on BN and biases."""
    decay, no_decay = [], []
    for p in net.trainable_params():
        if "beta" not in p.name and "gamma" not in p.name and "bias" not in p.name:
            decay.append(p)
        else:
            no_decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay},
            {"order_params": net.trainable_params()}]


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--optimizer", choices=["Momentum", "LARS", "Thor"], default="Thor")
    ap.add_argument("--mode_name", choices=["GRAPH", "PYNATIVE"], default="GRAPH")
    ap.add_argument("--amp", action="store_true",
                    help="take the zoo's Ascend/GPU branch: loss-scale manager + amp_level O3")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch_size", type=int, default=32)
    ap.add_argument("--steps_per_epoch", type=int, default=4)
    ap.add_argument("--class_num", type=int, default=10)
    ap.add_argument("--image", type=int, default=32)
    ap.add_argument("--layers", default="3,4,6,3", help="bottlenecks per stage (ResNet-50: 3,4,6,3)")
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--loss_scale", type=int, default=128)   # an int, as in the zoo's yaml
    ap.add_argument("--lr_init", type=float, default=0.05672)
    ap.add_argument("--lr_decay", type=float, default=4.9687)
    ap.add_argument("--damping_init", type=float, default=0.02345)
    ap.add_argument("--damping_decay", type=float, default=0.5467)
    ap.add_argument("--frequency", type=int, default=3)
    ap.add_argument("--momentum", type=float, default=0.9)
    ap.add_argument("--weight_decay", type=float, default=0.0005)
    ap.add_argument("--lars_epsilon", type=float, default=1e-8)
    ap.add_argument("--lars_coefficient", type=float, default=0.001)
    ap.add_argument("--save_ckpt_dir", default="outputs/zoo_resnet_ckpt")
    ap.add_argument("--resume_ckpt", default="")
    return ap.parse_args(argv)


def train_net(config):
    """The zoo's train_net(), CPU branch unless --amp; returns (model, net, opt, loss history)."""
    ms.set_context(mode=ms.GRAPH_MODE if config.mode_name == "GRAPH" else ms.PYNATIVE_MODE,
                   device_target="CPU")
    ms.set_seed(1)
    target = "CPU"
    dataset = create_dataset(config.batch_size, config.image, config.class_num,
                             config.steps_per_epoch)
    step_size = dataset.get_dataset_size()
    layers = tuple(int(v) for v in config.layers.split(","))
    net = resnet(config.class_num, layers, config.width)
    config.start_epoch = 0
    if config.resume_ckpt:
        resume_param = ms.load_checkpoint(config.resume_ckpt,
                                          filter_prefix=["learning_rate", "global_step"])
        config.start_epoch = int(resume_param.get("epoch_num", ms.Tensor(0, ms.int32)).asnumpy().item())

    total = config.epochs
    if config.optimizer == "Thor":
        lr = ms_optim.thor_lr_schedule(config.start_epoch * step_size, config.lr_init,
                                       config.lr_decay, total, step_size)
    else:
        lr = np.full(total * step_size, 0.1, np.float32)[config.start_epoch * step_size:]
    lr = ms.Tensor(lr)
    group_params = init_group_params(net, config.weight_decay)
    opt = nn.Momentum(group_params, lr, config.momentum, loss_scale=config.loss_scale)
    if config.optimizer == "LARS":
        opt = nn.LARS(opt, epsilon=config.lars_epsilon, coefficient=config.lars_coefficient,
                      lars_filter=lambda x: 'beta' not in x.name and 'gamma' not in x.name
                      and 'bias' not in x.name)
    loss = CrossEntropySmooth(sparse=True, reduction="mean", smooth_factor=0.1,
                              num_classes=config.class_num)
    loss_scale = ms.FixedLossScaleManager(config.loss_scale, drop_overflow_update=False)
    metrics = {"acc"}
    if not config.amp:
        # fp32 training (the zoo's CPU branch)
        model = ms.Model(net, loss_fn=loss, optimizer=opt, metrics=metrics)
    else:
        model = ms.Model(net, loss_fn=loss, optimizer=opt, loss_scale_manager=loss_scale,
                         metrics=metrics, amp_level="O3")

    if config.optimizer == "Thor":
        damping = ms_optim.thor_damping_schedule(step_size * config.start_epoch,
                                                 config.damping_init, config.damping_decay, total,
                                                 step_size)
        split_indices = [26, 53] if layers == (3, 4, 6, 3) else None
        opt = nn.thor(net, lr, ms.Tensor(damping), config.momentum, config.weight_decay,
                      config.loss_scale, config.batch_size, split_indices=split_indices,
                      frequency=config.frequency)
        model = ConvertModelUtils().convert_to_thor_model(model=model, network=net, loss_fn=loss,
                                                          optimizer=opt,
                                                          loss_scale_manager=loss_scale,
                                                          metrics={'acc'}, amp_level="O3")

    if config.resume_ckpt:
        ms.load_param_into_net(net, resume_param)
        ms.load_param_into_net(opt, resume_param)

    history = []

    class _Record(ms.train.Callback):
        def on_train_step_end(self, run_context):
            out = run_context.original_args().net_outputs
            out = out[0] if isinstance(out, (tuple, list)) else out
            history.append(float(out.asnumpy().reshape(-1)[0]))

    cb = [LossMonitor(per_print_times=1), _Record()]
    ckpt_append_info = [{"epoch_num": 0, "step_num": 0}]
    config_ck = CheckpointConfig(save_checkpoint_steps=step_size, keep_checkpoint_max=2,
                                 append_info=ckpt_append_info)
    cb.append(ModelCheckpoint(prefix="resnet", directory=config.save_ckpt_dir, config=config_ck))
    dataset_sink_mode = target != "CPU"
    model.train(config.epochs - config.start_epoch, dataset, callbacks=cb,
                sink_size=dataset.get_dataset_size(), dataset_sink_mode=dataset_sink_mode)
    return model, net, opt, history


if __name__ == "__main__":
    _, _, _, losses = train_net(parse_args())
    print(f"first loss {losses[0]:.4f}, last loss {losses[-1]:.4f}, steps {len(losses)}")
