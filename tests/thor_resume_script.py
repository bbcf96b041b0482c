"""Fresh-process half of the THOR checkpoint-resume test (run by tests/test_thor_model.py)."""
import sys

import numpy as np

import mindspore as ms

ms.set_context(device_target="CPU", mode=int(sys.argv[3]))
sys.path.insert(0, sys.argv[4])
import thor_helpers as H  # noqa: E402
from test_thor_model import build_run  # noqa: E402


def main():
    ckpt, out = sys.argv[1], sys.argv[2]
    net, opt, step, data = build_run()
    params = ms.load_checkpoint(ckpt)
    not_loaded, _ = ms.load_param_into_net(step, params, strict_load=True)
    assert not not_loaded, not_loaded
    for x, y in data[3:]:
        step(*H.to_ms(x, y))
    np.savez(out, **{p.name: p.asnumpy() for p in net.trainable_params()},
             global_step=opt.global_step.asnumpy())


if __name__ == "__main__":
    main()
