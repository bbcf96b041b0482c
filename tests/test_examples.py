"""The main job (`make demo` = examples/train_digits.py): a quick run, its table, plot and numbers."""
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(ROOT, "examples")
sys.path.insert(0, EXAMPLES)

import digits  # noqa: E402
import train_digits  # noqa: E402

import ms_optim  # noqa: E402

EPOCHS = 2


def test_digits_split_is_fixed_stratified_and_complete():
    a = digits.load_digits_arrays(seed=0)
    b = digits.load_digits_arrays(seed=0)
    x_train, y_train, x_test, y_test = a
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)
    assert x_train.shape[1:] == (1, 8, 8) and x_train.dtype == np.float32
    assert len(x_train) + len(x_test) == 1797
    assert 0.0 <= x_train.min() and x_train.max() <= 1.0
    # stratified: every class has (almost) the same share of the test set as of the whole set
    counts = np.bincount(y_test, minlength=10) / len(y_test)
    assert np.all(np.abs(counts - 0.1) < 0.02), counts


def test_digits_cnn_shape():
    from mindspore import Tensor
    net = digits.DigitsCNN()
    out = net(Tensor(np.zeros((3, 1, 8, 8), np.float32)))
    assert out.shape == (3, 10)


def test_epochs_to_reach_and_table():
    assert digits.epochs_to_reach([0.5, 0.97, 0.99], 0.97) == 2
    assert digits.epochs_to_reach([0.5, 0.9], 0.97) is None
    res = [{"name": "momentum", "lr": 0.1, "test_acc": [0.5, 0.98], "epoch_seconds": [2.0, 1.0],
            "train_seconds": 3.0, "total_seconds": 4.0, "epochs": 2}]
    table = train_digits.format_table(res, 2)
    assert "momentum lr=0.1" in table
    assert re.search(r"^2\s+\|\s+0\.9800$", table, re.M)
    assert re.search(r"epochs to 97% test acc\s+\|\s+2$", table, re.M)


@pytest.mark.parametrize("argv", [["--optimizers", "sgd"], ["--epochs", "0"], ["--lr", "momentum"]])
def test_cli_rejects_bad_arguments(argv):
    with pytest.raises(SystemExit) as err:
        train_digits._parse_args(argv)
    assert err.value.code == 2


def test_main_job_quick_run(tmp_path):
    """Runs the real CLI in a subprocess (graph mode, all optimizers, 2 epochs, batch 64)."""
    out = tmp_path / "acc.png"
    cmd = [sys.executable, os.path.join(EXAMPLES, "train_digits.py"), "--epochs", str(EPOCHS),
           "--batch-size", "64", "--optimizers", "momentum,lars,thor", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=400, cwd=str(tmp_path),
                          env=dict(os.environ, GLOG_v="3"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    stdout = proc.stdout

    expected = ["momentum", "lars"]
    if hasattr(ms_optim, "thor"):
        expected.append("thor")
    else:
        assert "THOR not available yet" in stdout

    # progress: one line per epoch and optimizer, with loss, accuracy and elapsed time
    for name in expected:
        lines = re.findall(rf"\[{name} lr=[^\]]+\] epoch\s+(\d+)/{EPOCHS}\s+loss (\S+)\s+test acc (\S+)\s+"
                           rf"elapsed\s+(\S+)s", stdout)
        assert [int(e) for e, *_ in lines] == list(range(1, EPOCHS + 1)), (name, stdout[-3000:])
        assert all(np.isfinite(float(loss)) for _, loss, _, _ in lines)

    # table: a header with a column per optimizer, one row per epoch, accuracies in [0, 1]
    header = next(l for l in stdout.splitlines() if l.startswith("epoch "))
    cols = [c.strip() for c in header.split("|")[1:]]
    assert [c.split()[0] for c in cols] == expected
    for e in range(1, EPOCHS + 1):
        row = re.search(rf"^{e}\s+\|(.*)$", stdout, re.M)
        accs = [float(c) for c in row.group(1).split("|")]
        assert len(accs) == len(expected) and all(0.0 <= a <= 1.0 for a in accs)
    assert re.search(r"^train seconds \(all epochs\)\s+\|", stdout, re.M)

    # numbers file agrees with the table, and training did something (chance is 0.10)
    data = json.loads((tmp_path / "acc.json").read_text())
    assert [r["name"] for r in data["results"]] == expected
    final = {r["name"]: r["test_acc"][-1] for r in data["results"]}
    last_row = [float(c) for c in re.search(rf"^{EPOCHS}\s+\|(.*)$", stdout, re.M).group(1).split("|")]
    np.testing.assert_allclose(last_row, [final[n] for n in expected], atol=5e-5)
    # measured after 2 epochs at batch 64 (seed 0): momentum 0.964, lars 0.873, thor 0.962
    assert all(acc > 0.7 for acc in final.values()), final
    for r in data["results"]:
        assert len(r["test_acc"]) == EPOCHS and r["train_seconds"] > 0

    # the plot: printed path, a real PNG of a plausible size
    assert str(out) in stdout
    raw = out.read_bytes()
    assert raw[:8] == b"\x89PNG\r\n\x1a\n" and len(raw) > 10_000
    import matplotlib.image as mpimg
    img = mpimg.imread(str(out))
    assert img.shape[0] > 300 and img.shape[1] > 500
    assert img[..., :3].std() > 0.05  # not a blank canvas
