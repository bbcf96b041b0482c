"""Large-batch training on real data: test accuracy vs batch size, Momentum vs LARS(Momentum).

    PYTHONPATH=$PWD .venv/bin/python benchmarks/bench_large_batch.py [--quick] [--epochs 40]

What it measures
    For each data set (sklearn digits with a 2-hidden-layer MLP with BatchNorm,
    ``datasets.digits_mlp``; MNIST-1D, generated locally, with a 2-hidden-layer MLP,
    ``datasets.mnist1d_mlp``) and each batch size B in 64, 128, 256, 512, 1024, trained for the
    SAME number of epochs (default 30, so a larger B takes proportionally fewer steps):

    * ``momentum``: ``nn.Momentum`` (0.9) with linear learning-rate scaling,
      ``lr = base_lr * B / 64``, linear warm-up, then polynomial (power 2) decay to 0;
    * ``lars``: ``ms_optim.LARS(nn.Momentum)`` (trust coefficient 0.001,
      ``lars_filter=ms_optim.lars_filter_for(net)``: biases and BatchNorm scale/shift excluded)
      with the recipe of You, Gitman & Ginsburg (2017): linear warm-up then polynomial (power 2)
      decay, with its own learning-rate grid, scaled by sqrt(B / 64).

    Both use the same warm-up length (``--warmup-epochs``, at least one step) and the same decay,
    so the optimizers differ only by the LARS trust ratio and their lr grids (a Momentum run
    without decay would be handicapped by noisy final weights). Weight decay 1e-4 on
    Dense/Conv2d weights for both. Per (data set, optimizer, B) every grid lr is trained with every
    seed; the lr with the best MEAN VALIDATION accuracy (a split of the training data) is chosen
    and its TEST accuracy is reported as mean +- std over the seeds (the seed sets weights and
    shuffle order). The table adds, per optimizer, the drop from B=64 and whether the target
    holds: at 8x the base batch (512 vs 64) LARS within 1 point of its B=64 accuracy and at or
    above Momentum at B=512. The steps per epoch are printed next to every B, because at equal
    epochs the largest batches on these small sets get very few updates (digits: 1077 train
    samples -> 1 step per epoch at B=1024).

    Engineering: GRAPH mode; one network and one compiled train step per (data set, optimizer,
    B); every run restores the weights of its seed, zeroes the optimizer state and writes its lr
    schedule into the optimizer's per-step learning-rate Parameter (a 1-D Tensor, gathered at
    ``global_step``), so nothing recompiles between runs.

What it leaves out
    No CNN here: MindSpore's CPU convolutions cost about 0.5 ms per sample, which would not fit
    the time budget (the digits CNN is used by ``bench_thor_accuracy.py``). No ImageNet/ResNet-scale run (the regime LARS was made for: batch 8k-32k, 90 epochs); CPU
    only; tiny models and data sets (a few thousand samples), so "large" batch here means large
    relative to the data set - up to half of it - not large in absolute terms. No wall-clock
    comparison (the per-step cost of LARS is measured by ``bench_lars_step.py``). Accuracy is
    read once, after the last epoch.

Output: the table; ``outputs/bench/large_batch.json``; ``outputs/bench/large_batch.png`` (test
accuracy vs batch size, one line per optimizer with std error bars, one panel per data set).
"""
import argparse
import math
import os
import sys
import time

import numpy as np

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

import _common  # noqa: E402  (puts the repo root on sys.path)
import datasets  # noqa: E402

import mindspore as ms  # noqa: E402
from mindspore import Tensor, nn  # noqa: E402

import ms_optim  # noqa: E402

BASE_BATCH = 64
BATCHES = (64, 128, 256, 512, 1024)
#: base learning rates (the value at B=64; scaled with B by SCALING). Five points each.
GRIDS = {"momentum": (0.05, 0.1, 0.2, 0.4, 0.8), "lars": (1.0, 2.0, 4.0, 8.0, 16.0)}
SETUPS = {"digits": "digits-mlp", "mnist1d": "mnist1d-mlp"}
#: how each optimizer's grid lr is scaled with the batch: Momentum linearly (Goyal et al. 2017);
#: LARS with the square root (probe runs: unscaled, its best lr still grew with B on MNIST-1D;
#: linear scaling diverged on digits at B=512 - the trust ratio already adapts part of the step).
SCALING = {"momentum": "linear", "lars": "sqrt"}


def peak_lr(opt_name, base_lr, batch):
    """Peak (post-warm-up) learning rate of ``opt_name`` at ``batch`` for grid value ``base_lr``."""
    rule = SCALING[opt_name]
    if rule == "linear":
        return base_lr * batch / BASE_BATCH
    if rule == "sqrt":
        return base_lr * math.sqrt(batch / BASE_BATCH)
    return base_lr
WEIGHT_DECAY = 1e-4
MOMENTUM = 0.9
LARS_COEFFICIENT = 0.001


# --------------------------------------------------------------------------- schedule
def lr_schedule(peak, steps, warmup_steps, power=2.0):
    """Per-step learning rates: linear warm-up to ``peak`` over ``warmup_steps``, then
    ``peak * (1 - (t - w) / (steps - w)) ** power`` (polynomial decay, reaching 0 after the last
    step). Step ``t`` (0-based) of warm-up uses ``peak * (t + 1) / w``."""
    t = np.arange(steps, dtype=np.float64)
    w = max(1, min(int(warmup_steps), steps))
    warm = peak * (t + 1) / w
    decay_len = max(1, steps - w)
    decay = peak * (1.0 - (t - w) / decay_len) ** power
    return np.where(t < w, warm, decay).astype(np.float32)


# --------------------------------------------------------------------------- one configuration
def _decay_filter(net):
    keep = ms_optim.lars_filter_for(net)  # weights of Dense/Conv2d; no bias, no norm scale/shift
    return keep


class Trainer:
    """One compiled train step for (set-up, optimizer, batch size, epochs); many runs.

    ``run(seed, base_lr)`` resets weights (to the seed's initialisation), optimizer state and
    lr schedule in place, trains, and returns validation and test accuracy.
    """

    def __init__(self, setup, opt_name, batch, epochs, warmup_epochs, data):
        self.setup, self.opt_name, self.batch, self.epochs = setup, opt_name, batch, epochs
        self.data = data
        _, _, self.factory = datasets.SETUPS[setup]
        n = len(data["y_train"])
        if batch > n:
            raise ValueError(f"batch {batch} larger than the {n} training samples")
        self.steps_per_epoch = n // batch  # drop the last partial batch: every step sees B samples
        self.steps = self.steps_per_epoch * epochs
        self.warmup_steps = max(1, int(round(warmup_epochs * self.steps_per_epoch)))
        ms.set_seed(0)
        self.net = self.factory()
        keep = _decay_filter(self.net)
        params = self.net.trainable_params()
        groups = [{"params": [p for p in params if keep(p)], "weight_decay": WEIGHT_DECAY},
                  {"params": [p for p in params if not keep(p)], "weight_decay": 0.0}]
        lr0 = Tensor(np.zeros(self.steps, np.float32))
        opt = nn.Momentum(groups, learning_rate=lr0, momentum=MOMENTUM)
        if opt_name == "lars":
            opt = ms_optim.LARS(opt, coefficient=LARS_COEFFICIENT, lars_filter=keep)
        elif opt_name != "momentum":
            raise ValueError(f"unknown optimizer {opt_name!r}")
        self.opt = opt
        loss = nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean")
        self.train_step = nn.TrainOneStepCell(nn.WithLossCell(self.net, loss), opt)
        self.train_step.set_train(True)
        all_params = list(self.train_step.get_parameters())
        self._lr_param = [p for p in all_params
                          if p.name.endswith("learning_rate") and tuple(p.shape) == (self.steps,)]
        if len(self._lr_param) != 1:
            raise RuntimeError(f"expected one per-step learning_rate Parameter, found "
                               f"{[p.name for p in self._lr_param]}")
        self._lr_param = self._lr_param[0]
        net_ids = {id(p) for p in self.net.get_parameters()}
        # Optimizer state (moments, global_step) as constructed: restored before every run.
        self._opt_state = [(p, p.asnumpy().copy()) for p in all_params
                           if id(p) not in net_ids and p is not self._lr_param]
        self._net_params = list(self.net.get_parameters())
        self._eval_x = Tensor(np.concatenate([data["x_val"], data["x_test"]]))
        self._n_val = len(data["y_val"])
        self.compile_seconds = None

    _init_cache = {}

    def _seed_init(self, seed):
        """Initial values of every network Parameter (weights and BN statistics) for ``seed``."""
        key = (self.setup, seed)
        if key not in Trainer._init_cache:
            ms.set_seed(seed)
            fresh = self.factory()
            Trainer._init_cache[key] = [p.asnumpy().copy() for p in fresh.get_parameters()]
        values = Trainer._init_cache[key]
        if len(values) != len(self._net_params):
            raise RuntimeError("fresh network has a different parameter list")
        return values

    def _reset(self, seed, base_lr):
        for p, v in zip(self._net_params, self._seed_init(seed)):
            if tuple(p.shape) != v.shape:
                raise RuntimeError(f"shape mismatch resetting {p.name}")
            p.set_data(Tensor(v))
        for p, v in self._opt_state:
            p.set_data(Tensor(v))
        peak = peak_lr(self.opt_name, base_lr, self.batch)
        self._lr_param.set_data(Tensor(lr_schedule(peak, self.steps, self.warmup_steps)))

    def _evaluate(self):
        self.net.set_train(False)
        pred = self.net(self._eval_x).asnumpy().argmax(axis=1)
        self.net.set_train(True)
        y_val, y_test = self.data["y_val"], self.data["y_test"]
        val = float((pred[:self._n_val] == y_val).mean())
        test = float((pred[self._n_val:] == y_test).mean())
        return val, test

    def run(self, seed, base_lr):
        t0 = time.perf_counter()
        self._reset(seed, base_lr)
        x, y = self.data["x_train"], self.data["y_train"]
        rng = np.random.default_rng(1000 + seed)
        b, spe = self.batch, self.steps_per_epoch
        final_loss, diverged = float("nan"), False
        for _ in range(self.epochs):
            order = rng.permutation(len(y))
            for s in range(spe):
                idx = order[s * b:(s + 1) * b]
                loss = self.train_step(Tensor(x[idx]), Tensor(y[idx]))
                if self.compile_seconds is None:
                    loss.asnumpy()
                    self.compile_seconds = time.perf_counter() - t0
            final_loss = float(loss.asnumpy())
            if not math.isfinite(final_loss):
                diverged = True
                break
        if diverged:
            val, test = 0.0, 0.0  # weights are garbage; counted as failed, not evaluated
        else:
            val, test = self._evaluate()
        step = int(self.opt.global_step.asnumpy().reshape(-1)[0])
        if not diverged and step != self.steps:
            raise RuntimeError(f"global_step {step} != {self.steps}: state reset failed")
        return {"seed": seed, "base_lr": base_lr, "val_acc": val, "test_acc": test,
                "final_loss": final_loss, "diverged": diverged,
                "seconds": time.perf_counter() - t0}


# --------------------------------------------------------------------------- sweep
def sweep(data_names, batches, opt_names, seeds, epochs, warmup_epochs, grids, log=print):
    results = []
    loaded = {}
    for dname in data_names:
        setup = SETUPS[dname]
        ds_name, kw, _ = datasets.SETUPS[setup]
        loaded[dname] = datasets.load(ds_name, val_fraction=0.2, seed=0, **kw)
    for dname in data_names:
        data = loaded[dname]
        for batch in batches:
            for opt_name in opt_names:
                t0 = time.perf_counter()
                tr = Trainer(SETUPS[dname], opt_name, batch, epochs, warmup_epochs, data)
                runs = [tr.run(seed, lr) for lr in grids[opt_name] for seed in seeds]
                by_lr = {}
                for r in runs:
                    by_lr.setdefault(r["base_lr"], []).append(r)
                mean_val = {lr: float(np.mean([r["val_acc"] for r in rs])) for lr, rs in by_lr.items()}
                best = max(grids[opt_name], key=lambda lr: (mean_val[lr], -lr))
                tests = [r["test_acc"] for r in by_lr[best]]
                row = {"data": dname, "setup": SETUPS[dname], "optimizer": opt_name,
                       "batch": batch, "epochs": epochs, "steps_per_epoch": tr.steps_per_epoch,
                       "steps": tr.steps, "warmup_steps": tr.warmup_steps,
                       "best_base_lr": best, "best_peak_lr": peak_lr(opt_name, best, batch),
                       "val_mean": mean_val[best],
                       "test_mean": float(np.mean(tests)), "test_std": float(np.std(tests)),
                       "test_per_seed": tests,
                       "val_by_lr": {str(k): v for k, v in mean_val.items()},
                       "diverged_runs": sum(r["diverged"] for r in runs),
                       "compile_seconds": tr.compile_seconds,
                       "seconds": time.perf_counter() - t0, "runs": runs}
                results.append(row)
                log(f"  {dname:8s} {opt_name:8s} B={batch:5d} ({tr.steps_per_epoch:3d} steps/ep, "
                    f"{tr.steps:5d} steps)  best base lr {best:<6g} val {mean_val[best]:.4f}  "
                    f"test {row['test_mean']:.4f} +- {row['test_std']:.4f}  "
                    f"[{len(runs)} runs, {row['seconds']:.1f}s]", flush=True)
    return results


def summarize(results, batches, data_names, opt_names):
    """Table lines and the target checks (LARS at 8x base batch)."""
    get = {(r["data"], r["optimizer"], r["batch"]): r for r in results}
    lines, checks = [], {}
    head = f"{'data':8s} {'optimizer':9s} " + " ".join(f"{'B=' + str(b):>15s}" for b in batches)
    lines.append(head)
    for d in data_names:
        spe = " ".join(f"{str(get[(d, opt_names[0], b)]['steps_per_epoch']) + ' st/ep':>15s}"
                       for b in batches)
        lines.append(f"{d:8s} {'':9s} {spe}")
        for o in opt_names:
            cells = []
            for b in batches:
                r = get[(d, o, b)]
                cells.append(f"{100 * r['test_mean']:6.2f}+-{100 * r['test_std']:4.2f}".rjust(15))
            lines.append(f"{d:8s} {o:9s} " + " ".join(cells))
        if BASE_BATCH in batches and 8 * BASE_BATCH in batches and set(opt_names) >= {"lars", "momentum"}:
            lars64, lars512 = get[(d, "lars", 64)]["test_mean"], get[(d, "lars", 512)]["test_mean"]
            mom64, mom512 = get[(d, "momentum", 64)]["test_mean"], get[(d, "momentum", 512)]["test_mean"]
            c = {"lars_64": lars64, "lars_512": lars512, "momentum_64": mom64, "momentum_512": mom512,
                 "base_64_best": max(lars64, mom64),
                 "lars_512_within_1pt_of_base": lars512 >= max(lars64, mom64) - 0.01,
                 "lars_512_within_1pt_of_lars_64": lars512 >= lars64 - 0.01,
                 "lars_512_ge_momentum_512": lars512 >= mom512}
            checks[d] = c
            lines.append(f"  {d}: LARS B=512 {100 * lars512:.2f} vs best B=64 "
                         f"{100 * max(lars64, mom64):.2f} (LARS {100 * lars64:.2f}, Momentum "
                         f"{100 * mom64:.2f}): within 1 pt: "
                         f"{'yes' if c['lars_512_within_1pt_of_base'] else 'NO'}; "
                         f">= Momentum B=512 ({100 * mom512:.2f}): "
                         f"{'yes' if c['lars_512_ge_momentum_512'] else 'NO'}")
    return lines, checks


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="1 seed, batch 64/512 only, 3-point grids, 15 epochs (~1-2 min)")
    ap.add_argument("--epochs", type=int, default=None, help="epochs at every batch size")
    ap.add_argument("--warmup-epochs", type=float, default=None)
    ap.add_argument("--seeds", type=int, default=None)
    ap.add_argument("--data", nargs="+", default=["digits", "mnist1d"], choices=sorted(SETUPS))
    ap.add_argument("--batches", nargs="+", type=int, default=None)
    ap.add_argument("--device", default="CPU")
    ap.add_argument("--threads", type=int, default=2,
                    help="MindSpore runtime_num_threads (0: MindSpore's default). The default "
                         "thread pool is 3x slower on a loaded 2-core machine")
    ap.add_argument("--out", default="large_batch", help="JSON/PNG base name in outputs/bench")
    ap.add_argument("--no-plot", action="store_true")
    args = ap.parse_args(argv)

    ms.set_context(mode=ms.GRAPH_MODE, device_target=args.device)
    if args.threads:
        ms.set_context(runtime_num_threads=args.threads)
    if args.quick:
        epochs = args.epochs or 15
        seeds = list(range(args.seeds or 1))
        batches = tuple(args.batches or (64, 512))
        grids = {"momentum": GRIDS["momentum"][1:4], "lars": GRIDS["lars"][1:4]}
    else:
        epochs = args.epochs or 30
        seeds = list(range(args.seeds or 3))
        batches = tuple(args.batches or BATCHES)
        grids = GRIDS
    warmup = args.warmup_epochs if args.warmup_epochs is not None else max(1.0, epochs / 8)
    opt_names = ("momentum", "lars")
    print(f"large-batch sweep: data {args.data}, batches {batches}, {epochs} epochs "
          f"(warm-up {warmup:g} epochs, then poly-2 decay), seeds {seeds}, grids {grids}, "
          f"GRAPH mode on {args.device}", flush=True)
    t0 = time.perf_counter()
    results = sweep(args.data, batches, opt_names, seeds, epochs, warmup, grids)
    total = time.perf_counter() - t0
    lines, checks = summarize(results, batches, args.data, opt_names)
    print("\ntest accuracy (%), mean +- std over seeds, lr chosen on validation:")
    print("\n".join(lines))
    print(f"total {total:.1f}s")
    _common.write_json(args.out, {
        "benchmark": "large_batch", "quick": args.quick, "epochs": epochs, "warmup_epochs": warmup,
        "seeds": seeds, "batches": list(batches), "grids": {k: list(v) for k, v in grids.items()},
        "base_batch": BASE_BATCH, "weight_decay": WEIGHT_DECAY, "momentum": MOMENTUM,
        "lars_coefficient": LARS_COEFFICIENT, "setups": {d: SETUPS[d] for d in args.data},
        "total_seconds": total, "checks": checks, "table": lines, "results": results})
    if not args.no_plot:
        import plots
        path = os.path.join(_common.OUT_DIR, f"{args.out}.png")
        plots.plot_large_batch(results, args.data, opt_names, path)
        print(f"wrote {os.path.relpath(path, _common.REPO)}")
    return results


if __name__ == "__main__":
    main()
