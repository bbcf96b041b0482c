"""Real, small data sets for the accuracy benchmarks, all available offline.

* :func:`digits` - scikit-learn's digits (1797 grey 8x8 images, 10 classes, shipped inside
  scikit-learn), with the train/test split of ``examples/digits.py`` (25 % test, stratified,
  seed 0) and optionally a validation split carved out of the train part.
* :func:`mnist1d` - MNIST-1D (Greydanus 2020; the ``mnist1d`` package): 5000 one-dimensional
  signals of length 40, 10 classes, 4000 train / 1000 test. It is *generated locally* by
  ``mnist1d.data.make_dataset(get_dataset_args())`` (deterministic, seed 42 of the package's
  defaults); ``mnist1d.get_dataset`` is never called because its default path downloads a pickle.
  The arrays are cached in ``outputs/datasets/mnist1d_<n>.npz``.

Every loader returns a dict of float32 inputs / int32 labels: ``x_train, y_train, x_val, y_val,
x_test, y_test`` (``x_val``/``y_val`` empty when ``val_fraction=0``). The test split is the same
whatever ``val_fraction`` is; the validation split is stratified and fixed by ``seed``.
"""
import os

import numpy as np

_HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(_HERE)
EXAMPLES = os.path.join(REPO, "examples")
CACHE_DIR = os.path.join(REPO, "outputs", "datasets")

__all__ = ["digits", "mnist1d", "load", "DATASETS", "SETUPS", "digits_cnn", "digits_mlp", "mnist1d_mlp",
           "mnist1d_cnn"]


def _split_val(x, y, val_fraction, seed):
    if val_fraction <= 0:
        return x, y, x[:0], y[:0]
    from sklearn.model_selection import train_test_split
    x_tr, x_val, y_tr, y_val = train_test_split(x, y, test_size=val_fraction, random_state=seed,
                                                stratify=y)
    return x_tr, y_tr, x_val, y_val


def _pack(x_tr, y_tr, x_val, y_val, x_te, y_te):
    f, i = np.float32, np.int32
    return {"x_train": np.ascontiguousarray(x_tr, f), "y_train": np.asarray(y_tr, i),
            "x_val": np.ascontiguousarray(x_val, f), "y_val": np.asarray(y_val, i),
            "x_test": np.ascontiguousarray(x_te, f), "y_test": np.asarray(y_te, i)}


def digits(val_fraction=0.2, seed=0):
    """sklearn digits as ``(N, 1, 8, 8)`` images in [0, 1]; test split as in ``examples/digits.py``.

    Args:
        val_fraction (float): fraction of the train part held out for validation. Default ``0.2``
            (1347 train -> 1077 train + 270 validation; 450 test).
        seed (int): seed of the validation split.
    """
    import sys
    if EXAMPLES not in sys.path:
        sys.path.insert(0, EXAMPLES)
    from digits import load_digits_arrays  # examples/digits.py

    x_tr, y_tr, x_te, y_te = load_digits_arrays(test_fraction=0.25, seed=0)
    return _pack(*_split_val(x_tr, y_tr, val_fraction, seed), x_te, y_te)


def _mnist1d_arrays(num_samples):
    """Generate (or read from the cache) the MNIST-1D arrays; no network access."""
    path = os.path.join(CACHE_DIR, f"mnist1d_{num_samples}.npz")
    if os.path.exists(path):
        with np.load(path) as z:
            return {k: z[k] for k in ("x", "y", "x_test", "y_test")}
    from mnist1d.data import get_dataset_args, make_dataset
    args = get_dataset_args()
    args.num_samples = num_samples
    d = make_dataset(args)  # local generation; get_dataset() would try to download
    arrays = {"x": np.asarray(d["x"], np.float32), "y": np.asarray(d["y"], np.int32),
              "x_test": np.asarray(d["x_test"], np.float32),
              "y_test": np.asarray(d["y_test"], np.int32)}
    os.makedirs(CACHE_DIR, exist_ok=True)
    tmp = path + ".tmp.npz"
    np.savez(tmp, **arrays)
    os.replace(tmp, path)
    return arrays


def mnist1d(val_fraction=0.2, seed=0, num_samples=5000, layout="flat"):
    """MNIST-1D generated locally.

    Args:
        val_fraction (float): fraction of the 4000 train signals held out for validation.
            Default ``0.2`` (3200 train + 800 validation; 1000 test).
        seed (int): seed of the validation split.
        num_samples (int): total signals generated (80 % train). Default ``5000`` (the standard set).
        layout (str): ``"flat"`` -> ``(N, 40)`` (for MLPs); ``"nchw"`` -> ``(N, 1, 1, 40)`` (for
            a 1-D CNN written with ``nn.Conv2d`` kernels ``(1, k)``, which THOR converts).
    """
    if layout not in ("flat", "nchw"):
        raise ValueError(f"layout must be 'flat' or 'nchw', got {layout!r}")
    a = _mnist1d_arrays(num_samples)
    out = _pack(*_split_val(a["x"], a["y"], val_fraction, seed), a["x_test"], a["y_test"])
    if layout == "nchw":
        for k in ("x_train", "x_val", "x_test"):
            out[k] = out[k].reshape(len(out[k]), 1, 1, out[k].shape[-1])
    return out


DATASETS = {"digits": digits, "mnist1d": mnist1d}


def load(name, **kwargs):
    """``load("digits", val_fraction=0.2)`` / ``load("mnist1d", layout="nchw")``."""
    if name not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; choose from {sorted(DATASETS)}")
    return DATASETS[name](**kwargs)


# --------------------------------------------------------------------------- small models
def _nn():
    from mindspore import nn
    return nn


def mnist1d_mlp(hidden=256, num_classes=10):
    """MLP for flat MNIST-1D signals: Dense(40, h)-ReLU-Dense(h, h)-ReLU-Dense(h, 10)."""
    nn = _nn()
    return nn.SequentialCell([
        nn.Dense(40, hidden, weight_init="HeUniform"), nn.ReLU(),
        nn.Dense(hidden, hidden, weight_init="HeUniform"), nn.ReLU(),
        nn.Dense(hidden, num_classes, weight_init="HeUniform")])


def digits_mlp(hidden=128, num_classes=10):
    """MLP for ``(N, 1, 8, 8)`` digits: Flatten-[Dense(., h)-BatchNorm1d-ReLU] x2-Dense(h, 10).

    Dense layers are cheap on MindSpore's CPU backend (the conv kernels cost about 0.5 ms per
    sample there), so the batch-size sweep uses this instead of :func:`digits_cnn`. The
    BatchNorm layers exercise ``lars_filter_for`` (their scale/shift are not LARS-adapted).
    """
    nn = _nn()
    return nn.SequentialCell([
        nn.Flatten(),
        nn.Dense(64, hidden, weight_init="HeUniform"), nn.BatchNorm1d(hidden, momentum=0.7), nn.ReLU(),
        nn.Dense(hidden, hidden, weight_init="HeUniform"), nn.BatchNorm1d(hidden, momentum=0.7),
        nn.ReLU(),
        nn.Dense(hidden, num_classes, weight_init="HeUniform")])


def mnist1d_cnn(channels=32, num_classes=10):
    """1-D CNN for ``(N, 1, 1, 40)`` MNIST-1D signals, written with ``nn.Conv2d`` kernels ``(1, k)``.

    Three stride-2 convolutions (kernel (1,5), (1,3), (1,3); 40 -> 20 -> 10 -> 5 positions), ReLU
    after each, then Dense(channels*5, 10) - the shape of the MNIST-1D paper's CNN. Every layer
    is an ``nn.Conv2d``/``nn.Dense``, so THOR converts all of them.
    """
    nn = _nn()
    c = channels
    return nn.SequentialCell([
        nn.Conv2d(1, c, (1, 5), stride=(1, 2), pad_mode="same", has_bias=True, weight_init="HeUniform"),
        nn.ReLU(),
        nn.Conv2d(c, c, (1, 3), stride=(1, 2), pad_mode="same", has_bias=True, weight_init="HeUniform"),
        nn.ReLU(),
        nn.Conv2d(c, c, (1, 3), stride=(1, 2), pad_mode="same", has_bias=True, weight_init="HeUniform"),
        nn.ReLU(),
        nn.Flatten(),
        nn.Dense(c * 5, num_classes, weight_init="HeUniform")])


def digits_cnn():
    """The two-conv CNN of ``examples/digits.py`` (:class:`digits.DigitsCNN`)."""
    import sys
    if EXAMPLES not in sys.path:
        sys.path.insert(0, EXAMPLES)
    from digits import DigitsCNN
    return DigitsCNN()


#: set-up name -> (data set, loader kwargs, model factory)
SETUPS = {
    "digits-cnn": ("digits", {}, digits_cnn),
    "digits-mlp": ("digits", {}, digits_mlp),
    "mnist1d-mlp": ("mnist1d", {"layout": "flat"}, mnist1d_mlp),
    "mnist1d-cnn": ("mnist1d", {"layout": "nchw"}, mnist1d_cnn),
}
