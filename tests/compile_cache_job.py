"""Train THOR or LARS(Momentum) a few steps with MindSpore's compile cache; print the losses.

    python compile_cache_job.py {thor,lars} {CACHE_DIR,none}   (run by tests/test_compile_cache.py)
"""
import json
import sys

import numpy as np

import mindspore as ms
from mindspore import Tensor, nn

ms.set_context(device_target="CPU", mode=ms.GRAPH_MODE)
if sys.argv[2] != "none":
    ms.set_context(enable_compile_cache=True, compile_cache_path=sys.argv[2])

import ms_optim  # noqa: E402

ms.set_seed(0)
net = nn.SequentialCell([nn.Dense(6, 16), nn.ReLU(), nn.Dense(16, 4)])
loss = nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean")
if sys.argv[1] == "thor":
    opt = ms_optim.thor(net, Tensor(np.full(20, 0.05, np.float32)),
                        Tensor(np.full(20, 0.03, np.float32)), 0.9, batch_size=8, frequency=3,
                        **ms_optim.THOR_RECOMMENDED)
    step = ms_optim.ThorTrainOneStepCell(nn.WithLossCell(net, loss), opt)
else:
    opt = ms_optim.LARS(nn.Momentum(net.trainable_params(), 0.1, 0.9, weight_decay=1e-4),
                        coefficient=0.02)
    step = nn.TrainOneStepCell(nn.WithLossCell(net, loss), opt)
rng = np.random.default_rng(0)
losses = []
for _ in range(7):
    x = Tensor(rng.standard_normal((8, 6)).astype(np.float32))
    y = Tensor(rng.integers(0, 4, 8).astype(np.int32))
    losses.append(float(step(x, y).asnumpy()))
print("LOSSES " + json.dumps({"losses": losses, "backend": opt.backend,
                              "step": int(opt.global_step.asnumpy()[0])}))
