"""Training telemetry for THOR and LARS as a MindSpore ``Callback``."""
import json
import logging
import os
import time
import warnings

import numpy as np

import mindspore as ms
from mindspore import Tensor
from mindspore.train import Callback

from ._validation import check_int, check_type

__all__ = ["OptimizerMonitor", "factor_condition"]

_LOG = logging.getLogger("ms_optim")


def _scalar(value):
    return float(np.asarray(value.asnumpy() if hasattr(value, "asnumpy") else value).reshape(-1)[0])


def _array(value):
    return np.asarray(value.asnumpy() if hasattr(value, "asnumpy") else value).reshape(-1)


def factor_condition(inverse, d):
    r"""Condition number of a damped Kronecker factor from its stored inverse (host, float64).

    .. math::

        \kappa = \max_b \frac{\lambda_{\max}(\hat B_b^{-1})}{\lambda_{\min}(\hat B_b^{-1})}
        = \max_b \kappa(B_b + \delta I)

    over the diagonal blocks :math:`\hat B_b^{-1}` of one factor (each group's :math:`n_b`
    blocks of size :math:`s`; only the first :math:`d - (n_b - 1)s` rows and columns of a
    group's last block are the factor's, the rest is identity padding and is left out). A 1-D
    `inverse` is a diagonal factor (embedding :math:`\operatorname{diag}(a + \delta)^{-1}`).

    Args:
        inverse (numpy.ndarray): ``(g n_b, s, s)`` block inverses, or ``(d,)`` diagonal.
        d (int): :math:`d`, the size of the factor (per group).

    Returns:
        float, :math:`\kappa` (``inf`` if an inverse is singular, e.g. zeroed by a fault).
    """
    inv = np.asarray(inverse, np.float64)
    if inv.ndim == 1:
        vals = np.abs(inv)
        return float(vals.max() / vals.min()) if vals.min() > 0 else float("inf")
    s = inv.shape[-1]
    nb = -(-d // s)
    worst = 1.0
    for b in range(inv.shape[0]):
        size = d - (nb - 1) * s if b % nb == nb - 1 else s
        ev = np.linalg.eigvalsh(inv[b, :size, :size])
        if ev.min() <= 0:
            return float("inf")
        worst = max(worst, float(ev.max() / ev.min()))
    return worst


class OptimizerMonitor(Callback):
    r"""Write what THOR or LARS did at each step to a JSON-lines file (and a PNG at the end).

    One JSON object per logged step, with the keys

    * all optimizers: ``step`` (the optimizer's global step after the step, 1-based), ``epoch``,
      ``loss``, ``seconds`` (wall-clock time of the step, host side), ``lr``;
    * THOR (:func:`ms_optim.thor`): ``refresh`` (whether the step refreshed the inverses),
      ``damping`` (:math:`\lambda_t`), ``faults`` (per-layer ``thor_fault_count``), ``kl_scale``
      (:math:`\nu` of `kl_clip`, when the optimizer has one); on refresh steps also, per
      layer, ``layer_damping`` (the :math:`\delta` added to its factors: :math:`\sqrt{\lambda_t / T}`
      for Dense/Conv2d, :math:`\sqrt{\lambda_t}` for embeddings) and ``condition`` (the larger
      condition number of its two damped factors, :func:`ms_optim.callbacks.factor_condition`,
      computed on the host from the stored inverses; with ``inverse_method="eigh"``
      :math:`(T \max e_G \max e_A + \lambda_t) / (T \min e_G \min e_A + \lambda_t)` from the
      stored eigenvalues, and ``layer_damping`` is :math:`\sqrt{\lambda_t / T}` there too, the
      square root of what is added to :math:`e_G e_A`); with `adaptive_damping`, ``damping`` is
      the damping in effect, :math:`s\lambda_t`, ``damping_scale`` the multiplier :math:`s` the
      step used and, on refresh steps, ``lm_rho`` the reduction ratio :math:`\rho` measured
      after the step (from which the next :math:`s` follows);
    * LARS (:class:`ms_optim.LARS`): ``trust_min`` / ``trust_median`` / ``trust_max`` of the
      trust ratios :math:`\tau` of the adapted parameters, and ``clipped_fraction`` (share of
      ratios at the clip bounds 0 or 1 with `use_clip`), when the optimizer records them.

    * both, and any optimizer with the Parameter ``nonfinite_steps``: ``nonfinite_steps``, the
      number of steps skipped so far because a gradient was not finite.

    A new fault of a THOR layer is also logged as a warning (logger ``ms_optim``) naming the
    step and the layer. A step skipped for a non-finite gradient (NaN or Inf; THOR and LARS
    leave weights, optimizer state and ``global_step`` unchanged) is logged as a warning
    (logger ``ms_optim``) and issued with ``warnings.warn``, naming the step (the 1-based
    training step ``cur_step_num``, and the optimizer's ``global_step``) and the first parameter
    whose gradient was not finite; it is checked after every step, whatever `per_steps`.
    Reading the values synchronises host and device after every step; on THOR refresh steps
    the condition numbers add one host eigenvalue decomposition per diagonal block (at most
    128x128; ResNet-50 has a few hundred).

    Args:
        path (str): the JSON-lines file (created or overwritten).
        optimizer (Cell): the THOR or LARS optimizer (or any ``nn.Optimizer``).
        png (str): write a summary plot here at the end of training (needs matplotlib).
            Default: ``None`` (no plot).
        per_steps (int): log every `per_steps` steps. Default: ``1``.

    Raises:
        TypeError: If `path` is not a str, `png` neither None nor str, or `per_steps` not an int.
        ValueError: If `per_steps` < 1.

    Supported Platforms:
        ``Ascend`` ``GPU`` ``CPU``

    Examples:
        >>> import json, os, tempfile
        >>> import numpy as np
        >>> import mindspore as ms
        >>> from mindspore import nn
        >>> import ms_optim
        >>> net = nn.SequentialCell([nn.Dense(4, 3)])
        >>> opt = ms_optim.thor(net, ms.Tensor(0.1, ms.float32), ms.Tensor(0.03, ms.float32),
        ...                     0.9, frequency=2)
        >>> loss = nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction='mean')
        >>> model = ms_optim.ConvertModelUtils.convert_to_thor_model(
        ...     ms.train.Model(net, loss, opt), net, loss, opt)
        >>> data = ms.dataset.NumpySlicesDataset(
        ...     {"x": np.ones((12, 4), np.float32), "y": np.zeros(12, np.int32)}).batch(4)
        >>> path = os.path.join(tempfile.mkdtemp(), "thor.jsonl")
        >>> model.train(1, data, callbacks=[ms_optim.OptimizerMonitor(path, opt)],
        ...             dataset_sink_mode=False)
        >>> rows = [json.loads(line) for line in open(path)]
        >>> [(r["step"], r["refresh"]) for r in rows]
        [(1, True), (2, False), (3, True)]
    """

    def __init__(self, path, optimizer, png=None, per_steps=1):
        super().__init__()
        check_type("OptimizerMonitor", "path", path, str, "str")
        if png is not None:
            check_type("OptimizerMonitor", "png", png, str, "str")
        check_int("OptimizerMonitor", "per_steps", per_steps)
        if per_steps < 1:
            raise ValueError("For 'OptimizerMonitor', the argument 'per_steps' must be >= 1, "
                             f"but got {per_steps}.")
        self.path, self.png, self.per_steps = path, png, per_steps
        self.optimizer = optimizer
        self.rows = []
        self._file = None
        self._t0 = None
        self._faults = None
        self._nonfinite = None
        self._scale = None
        self._layer_names = self._names()

    def _names(self):
        opt = self.optimizer
        if hasattr(opt, "a_inv"):
            return [p.name.replace("thor_a_inv.", "") for p in opt.a_inv]
        return []

    # -- Callback hooks ---------------------------------------------------------------------
    def on_train_begin(self, run_context):
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        self._file = open(self.path, "w", encoding="utf-8")  # pylint: disable=consider-using-with
        if hasattr(self.optimizer, "thor_fault_count"):
            self._faults = _array(self.optimizer.thor_fault_count).copy()
        if hasattr(self.optimizer, "nonfinite_steps"):
            self._nonfinite = int(_scalar(self.optimizer.nonfinite_steps))

    def on_train_step_begin(self, run_context):
        if getattr(self.optimizer, "adaptive_damping", None) is not None:
            self._scale = _scalar(self.optimizer.thor_damping_scale)  # the step's multiplier
        self._t0 = time.perf_counter()

    def on_train_step_end(self, run_context):
        seconds = time.perf_counter() - self._t0 if self._t0 is not None else float("nan")
        opt = self.optimizer
        step = int(_scalar(opt.global_step))
        cb = run_context.original_args()
        nonfinite = self._check_nonfinite(cb, step)
        if step % self.per_steps:
            return
        out = cb.net_outputs
        out = out[0] if isinstance(out, (tuple, list)) else out
        row = {"step": step, "epoch": int(cb.cur_epoch_num), "seconds": seconds,
               "loss": _scalar(out) if out is not None else None, "lr": self._lr(step - 1)}
        if nonfinite is not None:
            row["nonfinite_steps"] = nonfinite
        if hasattr(opt, "thor_fault_count"):
            self._thor_row(row, step)
        if hasattr(opt, "lars_trust"):
            self._lars_row(row)
        self.rows.append(row)
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()

    def on_train_end(self, run_context):
        if self._file is not None:
            self._file.close()
            self._file = None
        if self.png is not None and self.rows:
            self.plot(self.png)

    # -- values -----------------------------------------------------------------------------
    def _lr(self, step):
        opt = self.optimizer
        lr = getattr(opt, "_lr_values", None)
        if lr is None:
            lr = opt.learning_rate
        try:
            values = _array(lr)
        except (TypeError, AttributeError):  # a LearningRateSchedule cell
            return None
        return float(values[min(step, values.size - 1)])

    def _check_nonfinite(self, cb, step):
        """Warn when the optimizer skipped a step for a non-finite gradient since the last call;
        returns the count (None: the optimizer keeps none)."""
        opt = self.optimizer
        if not hasattr(opt, "nonfinite_steps"):
            return None
        count = int(_scalar(opt.nonfinite_steps))
        if self._nonfinite is not None and count > self._nonfinite:
            idx = int(_scalar(opt.nonfinite_param))
            params = list(getattr(opt, "_parameters", ()))
            name = params[idx].name if 0 <= idx < len(params) else str(idx)
            train_step = getattr(cb, "cur_step_num", None)
            msg = (f"ms_optim: step {train_step if train_step is not None else step} "
                   f"(global_step {step}): the gradient of '{name}' is not finite (NaN or Inf); "
                   f"{type(opt).__name__} skipped the step (weights, optimizer state and "
                   f"global_step unchanged; {count} skipped steps so far).")
            _LOG.warning(msg)
            warnings.warn(msg, UserWarning, stacklevel=2)
        self._nonfinite = count
        return count

    def _thor_row(self, row, step):
        opt = self.optimizer
        row["refresh"] = (step - 1) % opt.frequency == 0
        damping = _array(opt.thor_damping)
        row["damping"] = float(damping[min(step - 1, damping.size - 1)])
        if self._scale is not None:
            row["damping_scale"] = self._scale
            row["damping"] *= self._scale
            if row["refresh"]:
                row["lm_rho"] = _scalar(opt.thor_lm_rho)
        faults = _array(opt.thor_fault_count)
        row["faults"] = faults.tolist()
        if self._faults is not None:
            for k in np.nonzero(faults > self._faults)[0]:
                name = self._layer_names[k] if k < len(self._layer_names) else str(k)
                _LOG.warning("THOR: step %d: layer '%s' kept its last good inverses (non-finite or "
                             "ill-conditioned statistics; %d faults so far).", step, name,
                             int(faults[k]))
        self._faults = faults.copy()
        if hasattr(opt, "thor_kl_scale"):
            row["kl_scale"] = _scalar(opt.thor_kl_scale)
        if row["refresh"] and hasattr(opt, "blocks"):
            lam = Tensor(row["damping"], ms.float32)
            row["layer_damping"] = [_scalar(type(b).delta(lam, b.t_of(t.asnumpy())))
                                    for b, t in zip(opt.blocks, opt.t_keep)]
            row["condition"] = [self._condition(k, b) for k, b in enumerate(opt.blocks)]

    def _condition(self, k, block):
        opt = self.optimizer
        a, g = opt.a_inv[k].asnumpy(), opt.g_inv[k].asnumpy()
        own = block.host_condition(a, g, opt.t_keep[k].asnumpy())
        if own is not None:
            return own
        d_a, d_g = block.dims()
        return max(factor_condition(a, d_a), factor_condition(g, d_g))

    def _lars_row(self, row):
        tau = _array(self.optimizer.lars_trust)
        if tau.size:
            row["trust_min"] = float(tau.min())
            row["trust_median"] = float(np.median(tau))
            row["trust_max"] = float(tau.max())
            if getattr(self.optimizer, "use_clip", False):
                row["clipped_fraction"] = float(np.mean((tau <= 0.0) | (tau >= 1.0)))

    # -- summary ----------------------------------------------------------------------------
    def plot(self, png):
        """Write the summary figure of the logged rows to `png`.

        Args:
            png (str): the PNG file.
        """
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        rows = self.rows
        steps = [r["step"] for r in rows]
        panels = [("loss", "loss"), ("seconds", "step time (s)")]
        if "kl_scale" in rows[0]:
            panels.append(("kl_scale", "KL-clip factor"))
        if any("condition" in r for r in rows):
            panels.append(("condition", "largest factor condition (refresh)"))
        if "damping_scale" in rows[0]:
            panels.append(("damping_scale", "damping multiplier s"))
        if "trust_median" in rows[0]:
            panels.append(("trust_median", "median trust ratio"))
        fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.2))
        for ax, (key, title) in zip(np.atleast_1d(axes), panels):
            vals = [r.get(key) for r in rows]
            if key == "seconds" and "refresh" in rows[0]:
                for flag, label in ((True, "refresh"), (False, "stale")):
                    pts = [(s, v) for s, v, r in zip(steps, vals, rows) if r["refresh"] == flag]
                    if pts:
                        ax.plot(*zip(*pts), ".", label=label)
                ax.legend()
            elif key == "condition":
                pts = [(s, max(v)) for s, v in zip(steps, vals) if v]
                if pts:
                    ax.semilogy(*zip(*pts), "o-")
            else:
                ax.plot(steps, vals)
            ax.set_title(title)
            ax.set_xlabel("step")
        fig.tight_layout()
        os.makedirs(os.path.dirname(os.path.abspath(png)), exist_ok=True)
        fig.savefig(png, dpi=100)
        plt.close(fig)
