"""THOR against Momentum to a target test accuracy: epochs and wall-clock seconds (issue 10).

For each set-up (data set + model) and batch size, every optimizer trains with every learning
rate of one shared grid, for several seeds; a run stops once it reaches the set-up's target test
accuracy (``--full-curves``: it runs all epochs). Per (set-up, batch, optimizer) the best learning
rate is the one with the fewest mean epochs to the target (runs that never reach it count as
``epochs + 1``; ties: fewer seconds), and the script prints

* epochs to target, THOR / Momentum (target <= 0.6),
* seconds to target *including compilation*, THOR / Momentum (target <= 0.8),
* steady-state seconds to target (compilation excluded),
* how many learning rates of the grid reach the target in every seed (target for
  ``thor+recommended``: >= 3 of 4).

Optimizers: ``momentum`` (``nn.Momentum``), ``thor`` (``ms_optim.thor`` with upstream-compatible
arguments only) and ``thor+rec`` (``ms_optim.thor(..., **ms_optim.THOR_RECOMMENDED)``).
THOR: ``frequency`` 10, constant damping 0.03 (the issue's set-up), momentum 0.9 for all,
weight decay 1e-4 on Dense/Conv2d weights.

How it is timed. One train cell is compiled per (set-up, batch, optimizer); every run resets the
weights (to the seed's initialisation), the optimizer state and the learning-rate array in place.
``compile_s`` is the time of the first call of each compiled graph (Momentum: one graph; THOR: the
refresh and the stale graph) minus one steady step each, measured in a fresh process (within one
process MindSpore reuses parsed functions, so later THOR cells would look cheaper); a run's "seconds incl. compilation" is
``compile_s`` plus its training seconds, i.e. what a fresh process would pay. Evaluation time is
not counted. What this leaves out: data-pipeline cost (batches are sliced from NumPy arrays), and
every number comes from a 2-core CPU (on Ascend/GPU the forward/backward is much cheaper, so
THOR's per-step overhead weighs more there).

Run: ``python benchmarks/bench_thor_accuracy.py`` (full: 3 set-ups x batch 32/256 x 3 seeds) or
``--quick`` (digits only, batch 32, 1 seed). Writes ``outputs/bench/thor_accuracy.json`` and
``outputs/bench/thor_accuracy.png``.
"""
import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time

import numpy as np

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(_HERE))
sys.path.insert(0, _HERE)

import mindspore as ms  # noqa: E402
from mindspore import Tensor, nn  # noqa: E402

import ms_optim  # noqa: E402
import datasets  # noqa: E402
from _common import OUT_DIR, peak_rss_mb, stamp, write_json  # noqa: E402

LR_GRID = (0.01, 0.03, 0.1, 0.3)
OPTIMIZERS = ("momentum", "thor", "thor+rec")
#: set-up -> (target test accuracy, epochs)
TARGETS = {"digits-cnn": (0.97, 10), "mnist1d-mlp": (0.60, 20), "mnist1d-cnn": (0.85, 12)}
MOMENTUM = 0.9
WEIGHT_DECAY = 1e-4
DAMPING = 0.03
FREQUENCY = 10


class Trainer:
    """One compiled train cell for (set-up, optimizer, batch, epochs); many (seed, lr) runs."""

    def __init__(self, setup, opt_name, batch, epochs, data, rec=None):
        self.setup, self.opt_name, self.batch, self.epochs = setup, opt_name, batch, epochs
        self.data = data
        self.factory = datasets.SETUPS[setup][2]
        n = len(data["y_train"])
        self.steps_per_epoch = n // batch  # drop the partial batch: THOR's statistics assume B
        self.steps = self.steps_per_epoch * epochs
        ms.set_seed(0)
        self.net = self.factory()
        keep = ms_optim.lars_filter_for(self.net)  # Dense/Conv2d weights (no bias, no BN)
        loss = nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean")
        self.thor = opt_name.startswith("thor")
        if self.thor:
            rec = dict(ms_optim.THOR_RECOMMENDED) if rec is None else rec
            extra = rec if opt_name == "thor+rec" else {}
            self.opt = ms_optim.thor(
                self.net, Tensor(np.zeros(self.steps, np.float32)),
                Tensor(np.full(self.steps, DAMPING, np.float32)), MOMENTUM,
                weight_decay=WEIGHT_DECAY, batch_size=batch, decay_filter=keep,
                frequency=FREQUENCY, **extra)
            self.cell = ms_optim.ThorTrainOneStepCell(nn.WithLossCell(self.net, loss), self.opt)
        else:
            params = self.net.trainable_params()
            groups = [{"params": [p for p in params if keep(p)], "weight_decay": WEIGHT_DECAY},
                      {"params": [p for p in params if not keep(p)], "weight_decay": 0.0}]
            self.opt = nn.Momentum(groups, Tensor(np.zeros(self.steps, np.float32)), MOMENTUM)
            self.cell = nn.TrainOneStepCell(nn.WithLossCell(self.net, loss), self.opt)
        self.cell.set_train(True)
        params = list(self.cell.get_parameters())
        lr = [p for p in params if p.name.endswith("learning_rate") and tuple(p.shape) == (self.steps,)]
        if len(lr) != 1:
            raise RuntimeError(f"expected one per-step learning_rate Parameter, got {[p.name for p in lr]}")
        self._lr = lr[0]
        net_ids = {id(p) for p in self.net.get_parameters()}
        self._net_params = {p.name: p for p in self.net.get_parameters()}
        self._opt_state = [(p, p.asnumpy().copy()) for p in params
                           if id(p) not in net_ids and p is not self._lr]
        self._eval_x = Tensor(data["x_test"])
        self.compile_s = self._compile()

    def _step(self, x, y):
        return self.cell(Tensor(x), Tensor(y))

    def _compile(self):
        """First-call time of every graph minus one steady step of it (see the module doc)."""
        self._reset(0, LR_GRID[0])
        x, y = self.data["x_train"][:self.batch], self.data["y_train"][:self.batch]
        graphs = 2 if self.thor else 1  # THOR: refresh graph (step 0), stale graph (step 1)
        first = []
        for _ in range(graphs):
            t0 = time.perf_counter()
            self._step(x, y).asnumpy()
            first.append(time.perf_counter() - t0)
        # steady time of each graph: THOR steps F and F+1 are a refresh and a stale step
        for _ in range(FREQUENCY - graphs if self.thor else 0):
            self._step(x, y).asnumpy()
        steady = []
        for _ in range(graphs):
            t0 = time.perf_counter()
            self._step(x, y).asnumpy()
            steady.append(time.perf_counter() - t0)
        self.first_s, self.steady_s = first, steady
        return float(sum(max(f - s, 0.0) for f, s in zip(first, steady)))

    _init_cache = {}

    def _reset(self, seed, lr):
        key = (self.setup, seed)
        if key not in Trainer._init_cache:
            ms.set_seed(seed)
            Trainer._init_cache[key] = {p.name: p.asnumpy().copy()
                                        for p in self.factory().get_parameters()}
        init = Trainer._init_cache[key]
        missing = set(init) - set(self._net_params)
        if missing:
            raise RuntimeError(f"converted network lacks parameters {sorted(missing)[:3]}")
        for name, v in init.items():
            self._net_params[name].set_data(Tensor(v))
        for p, v in self._opt_state:
            p.set_data(Tensor(v))
        self._lr.set_data(Tensor(np.full(self.steps, lr, np.float32)))
        if self.thor:
            self.cell.resync_step()

    def _accuracy(self):
        self.net.set_train(False)
        pred = self.net(self._eval_x).asnumpy().argmax(axis=1)
        self.net.set_train(True)
        return float((pred == self.data["y_test"]).mean())

    def run(self, seed, lr, target, full_curves=False):
        self._reset(seed, lr)
        x, y = self.data["x_train"], self.data["y_train"]
        rng = np.random.default_rng(1000 + seed)
        b, spe = self.batch, self.steps_per_epoch
        accs, cum, train_s = [], [], 0.0
        reached = None
        for epoch in range(self.epochs):
            order = rng.permutation(len(y))
            t0 = time.perf_counter()
            for s in range(spe):
                idx = order[s * b:(s + 1) * b]
                loss = self._step(x[idx], y[idx])
            loss = float(loss.asnumpy())
            train_s += time.perf_counter() - t0
            if not math.isfinite(loss):
                break  # diverged: never reaches the target
            accs.append(self._accuracy())
            cum.append(self.compile_s + train_s)
            if reached is None and accs[-1] >= target:
                reached = epoch + 1
                if not full_curves:
                    break
        return {"seed": seed, "lr": lr, "test_acc": accs, "cum_seconds": cum,
                "epochs_to_target": reached,
                "seconds_to_target": cum[reached - 1] if reached else None,
                "steady_seconds_to_target": cum[reached - 1] - self.compile_s if reached else None,
                "diverged": len(accs) < self.epochs and reached is None}


def fresh_compile(setup, opt_name, batch, epochs, mode, rec, cache_root=None):
    """Compile time of (set-up, optimizer, batch) in a fresh process, as a user's script pays it.

    In one process MindSpore reuses parsed functions across graphs, so a second THOR train cell
    compiles faster than the first; each configuration is therefore measured in its own process.

    `cache_root`: measure a *second* run with MindSpore's compile cache
    (``enable_compile_cache``), one cache folder per configuration (MindSpore's rule: a cache
    serves one network); the first probe fills it and is returned as ``cold_compile_s``.
    """
    cmd = [sys.executable, os.path.abspath(__file__), "--probe-compile", setup, opt_name,
           str(batch), str(epochs), "--mode", mode, "--rec", json.dumps(rec)]
    runs = 1
    if cache_root:
        cdir = os.path.join(cache_root, f"{setup}-{opt_name}-b{batch}-e{epochs}")
        shutil.rmtree(cdir, ignore_errors=True)
        cmd += ["--compile-cache", cdir]
        runs = 2
    probes = []
    for _ in range(runs):
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        line = [ln for ln in out.splitlines() if ln.startswith("PROBE ")][-1]
        probes.append(json.loads(line[len("PROBE "):]))
    if cache_root:
        probes[-1]["cold_compile_s"] = probes[0]["compile_s"]
    return probes[-1]


def _probe(setup, opt_name, batch, epochs, rec):
    ds_name, kw, _ = datasets.SETUPS[setup]
    data = datasets.load(ds_name, val_fraction=0.0, seed=0, **kw)
    tr = Trainer(setup, opt_name, batch, int(epochs), data, rec)
    print("PROBE " + json.dumps({"compile_s": tr.compile_s, "first_call_s": tr.first_s,
                                 "steady_step_s": tr.steady_s}), flush=True)


def rescore(cell, compile_s):
    """Replace a cell's compile time (its runs keep their training seconds) and re-summarise."""
    old = cell["compile_s"]
    for r in cell["runs"]:
        r["cum_seconds"] = [c - old + compile_s for c in r["cum_seconds"]]
        if r["seconds_to_target"] is not None:
            r["seconds_to_target"] = r["seconds_to_target"] - old + compile_s
    cell["compile_s"] = compile_s
    cell.update(summarize_cell(cell["runs"], cell["epochs"]))


def summarize_cell(runs, epochs):
    """Best lr of one (set-up, batch, optimizer) and the grid's reach count."""
    by_lr = {}
    for r in runs:
        by_lr.setdefault(r["lr"], []).append(r)
    rows = []
    for lr, rs in sorted(by_lr.items()):
        ep = [r["epochs_to_target"] if r["epochs_to_target"] else epochs + 1 for r in rs]
        all_reach = all(r["epochs_to_target"] for r in rs)
        sec = [r["seconds_to_target"] for r in rs if r["seconds_to_target"] is not None]
        steady = [r["steady_seconds_to_target"] for r in rs if r["seconds_to_target"] is not None]
        rows.append({"lr": lr, "mean_epochs": float(np.mean(ep)), "all_seeds_reach": all_reach,
                     "mean_seconds": float(np.mean(sec)) if all_reach else None,
                     "mean_steady_seconds": float(np.mean(steady)) if all_reach else None})
    reaching = [r for r in rows if r["all_seeds_reach"]]
    best = min(reaching, key=lambda r: (r["mean_epochs"], r["mean_seconds"])) if reaching else None
    return {"per_lr": rows, "best": best, "lrs_reaching": len(reaching), "grid_size": len(rows)}


def _ratio(a, b):
    return a / b if (a is not None and b) else None


def _fmt(x, spec=".2f"):
    return "-" if x is None else format(x, spec)


def never_reached_bounds(cell):
    """Lower bounds of a cell's best-lr mean epochs and seconds when no learning rate reaches the
    target in every seed within the epoch budget: per learning rate, the mean over seeds of the
    epochs and seconds a run needed (runs that never reach it count with all they spent, which is
    less than they would need); the smallest over the grid. ``None`` if some lr reaches it."""
    if cell["best"] is not None:
        return None
    by_lr = {}
    for r in cell["runs"]:
        ep = r["epochs_to_target"] or cell["epochs"]
        sec = r["seconds_to_target"] if r["seconds_to_target"] is not None else \
            (r["cum_seconds"][-1] if r["cum_seconds"] else cell["compile_s"])
        by_lr.setdefault(r["lr"], []).append((ep, sec))
    return (min(float(np.mean([e for e, _ in v])) for v in by_lr.values()),
            min(float(np.mean([x for _, x in v])) for v in by_lr.values()))


def report(cells):
    """Print the results table and the target verdicts; store the ratios in ``cells``.

    Where Momentum never reaches the target at any learning rate (in every seed), THOR's ratios
    are upper bounds ("<"), from :func:`never_reached_bounds` of the Momentum cell."""
    print("\n| set-up | batch | optimizer | best lr | epochs | s incl. compile | steady s | "
          "compile s | lrs reaching | epochs / Mom. | s / Mom. |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    verdicts = []
    for c in cells:
        mom = next((m for m in cells if m["setup"] == c["setup"] and m["batch"] == c["batch"]
                    and m["optimizer"] == "momentum"), None)
        b, mb = c["best"], (mom or {}).get("best")
        bounds = never_reached_bounds(mom) if (mom and c is not mom) else None
        if bounds is not None:
            mb = {"mean_epochs": bounds[0], "mean_seconds": bounds[1]}
        er = _ratio(b and b["mean_epochs"], mb and mb["mean_epochs"])
        sr = _ratio(b and b["mean_seconds"], mb and mb["mean_seconds"])
        c["epochs_ratio"], c["seconds_ratio"] = er, sr
        c["ratios_are_upper_bounds"] = bounds is not None
        lt = "<" if bounds is not None else ""
        print(f"| {c['setup']} | {c['batch']} | {c['optimizer']} | {_fmt(b and b['lr'], 'g')} | "
              f"{_fmt(b and b['mean_epochs'], '.2f')} | {_fmt(b and b['mean_seconds'], '.1f')} | "
              f"{_fmt(b and b['mean_steady_seconds'], '.1f')} | {c['compile_s']:.1f} | "
              f"{c['lrs_reaching']}/{c['grid_size']} | {lt}{_fmt(er)} | {lt}{_fmt(sr)} |")
        if c["optimizer"] != "momentum":
            ok = er is not None and sr is not None and er <= 0.6 and sr <= 0.8
            if c["optimizer"] == "thor+rec":
                ok = ok and c["lrs_reaching"] >= 3
            verdicts.append((c["setup"], c["batch"], c["optimizer"], ok, bounds is not None))
    print("\nTargets (epochs <= 0.6x and seconds incl. compilation <= 0.8x Momentum; thor+rec also "
          ">= 3 of 4 learning rates reaching the target; '<': Momentum never reached the target in "
          "the epoch budget, the ratios are upper bounds):")
    for setup, batch, opt_name, ok, bound in verdicts:
        print(f"  {setup} batch {batch} {opt_name}: {'MET' if ok else 'MISSED'}"
              f"{' (ratios are upper bounds)' if bound else ''}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="digits-cnn, batch 32, 1 seed")
    ap.add_argument("--setups", nargs="+", default=None, choices=sorted(TARGETS))
    ap.add_argument("--batches", nargs="+", type=int, default=None)
    ap.add_argument("--seeds", type=int, default=None)
    ap.add_argument("--optimizers", nargs="+", default=list(OPTIMIZERS), choices=OPTIMIZERS)
    ap.add_argument("--lrs", nargs="+", type=float, default=list(LR_GRID))
    ap.add_argument("--full-curves", action="store_true", help="train every epoch (plots)")
    ap.add_argument("--mode", choices=("graph", "pynative"), default="graph")
    ap.add_argument("--out", default="thor_accuracy")
    ap.add_argument("--rec", type=json.loads, default=None,
                    help="JSON dict of thor keywords for 'thor+rec' instead of THOR_RECOMMENDED "
                         "(exploring candidates)")
    ap.add_argument("--probe-compile", nargs=4, metavar=("SETUP", "OPT", "BATCH", "EPOCHS"),
                    help=argparse.SUPPRESS)  # internal: fresh-process compile time
    ap.add_argument("--compile-cache", metavar="DIR", default=None,
                    help="with --rescore: compile time of a second run with MindSpore's compile "
                         "cache (one folder per configuration under DIR)")
    ap.add_argument("--report", metavar="JSON",
                    help="print the table and verdicts of an earlier result file and plot it to "
                         "<out>.png (no runs)")
    ap.add_argument("--rescore", metavar="JSON",
                    help="re-measure the compile time of every cell of an earlier result file in "
                         "fresh processes, recompute the seconds and ratios, write <out>.json")
    args = ap.parse_args(argv)
    if args.report:
        with open(args.report, encoding="utf-8") as f:
            old = json.load(f)
        report(old["cells"])
        plot(old["cells"], args.out)
        return old
    if args.rescore:
        with open(args.rescore, encoding="utf-8") as f:
            old = json.load(f)
        for c in old["cells"]:
            probe = fresh_compile(c["setup"], c["optimizer"], c["batch"], c["epochs"], args.mode,
                                  old.get("thor_rec_used", dict(ms_optim.THOR_RECOMMENDED)),
                                  args.compile_cache)
            how = ("in a fresh process with a warm compile cache (cold "
                   f"{probe['cold_compile_s']:.1f}s)" if args.compile_cache else "in a fresh process")
            print(f"[{c['setup']} b={c['batch']} {c['optimizer']}] compile {c['compile_s']:.1f}s "
                  f"-> {probe['compile_s']:.1f}s {how}", flush=True)
            if args.compile_cache:
                c["cold_compile_s"] = probe["cold_compile_s"]
            rescore(c, probe["compile_s"])
        report(old["cells"])
        old.pop("stamp", None)
        old["rescored_from"] = os.path.abspath(args.rescore)
        old["compile_cache"] = bool(args.compile_cache)
        return write_json(args.out, old)
    if args.probe_compile:
        ms.set_context(mode=ms.GRAPH_MODE if args.mode == "graph" else ms.PYNATIVE_MODE)
        if args.compile_cache:
            ms.set_context(enable_compile_cache=True, compile_cache_path=args.compile_cache)
        setup, opt_name, batch, epochs = args.probe_compile
        return _probe(setup, opt_name, int(batch), int(epochs), args.rec)
    rec = dict(ms_optim.THOR_RECOMMENDED) if args.rec is None else dict(args.rec)
    setups = args.setups or (["digits-cnn"] if args.quick else sorted(TARGETS))
    batches = args.batches or ([32] if args.quick else [32, 256])
    n_seeds = args.seeds or (1 if args.quick else 3)
    ms.set_context(mode=ms.GRAPH_MODE if args.mode == "graph" else ms.PYNATIVE_MODE)
    t_start = time.perf_counter()
    print(f"THOR vs Momentum to target accuracy: set-ups {setups}, batches {batches}, "
          f"{n_seeds} seed(s), lr grid {args.lrs}, optimizers {args.optimizers}; "
          f"THOR_RECOMMENDED = {dict(ms_optim.THOR_RECOMMENDED)}; thor+rec uses {rec}", flush=True)
    cells = []
    for setup in setups:
        ds_name, kw, _ = datasets.SETUPS[setup]
        data = datasets.load(ds_name, val_fraction=0.0, seed=0, **kw)
        target, epochs = TARGETS[setup]
        for batch in batches:
            for opt_name in args.optimizers:
                probe = fresh_compile(setup, opt_name, batch, epochs, args.mode, rec)
                tr = Trainer(setup, opt_name, batch, epochs, data, rec)
                tr.compile_s = probe["compile_s"]
                print(f"[{setup} b={batch} {opt_name}] compile {tr.compile_s:.1f}s in a fresh "
                      f"process (first calls {[round(v, 2) for v in probe['first_call_s']]}, steady "
                      f"{[round(v, 4) for v in probe['steady_step_s']]}; in this process "
                      f"{[round(v, 2) for v in tr.first_s]})", flush=True)
                runs = []
                for lr in args.lrs:
                    for seed in range(n_seeds):
                        r = tr.run(seed, lr, target, args.full_curves)
                        runs.append(r)
                        acc = r["test_acc"][-1] if r["test_acc"] else float("nan")
                        print(f"  lr={lr:<5g} seed={seed} epochs to {target:.0%}: "
                              f"{r['epochs_to_target'] or 'never'}  last acc {acc:.4f}  "
                              f"s incl. compile {_fmt(r['seconds_to_target'], '.1f')}"
                              f"{'  DIVERGED' if r['diverged'] else ''}  "
                              f"[{time.perf_counter() - t_start:.0f}s]", flush=True)
                summary = summarize_cell(runs, epochs)
                cells.append({"setup": setup, "batch": batch, "optimizer": opt_name,
                              "target": target, "epochs": epochs, "compile_s": tr.compile_s,
                              "first_call_s": probe["first_call_s"],
                              "steady_step_s": probe["steady_step_s"],
                              "steps_per_epoch": tr.steps_per_epoch, "runs": runs, **summary})

    report(cells)
    out = {"stamp": stamp(mode=args.mode), "thor_recommended": dict(ms_optim.THOR_RECOMMENDED),
           "thor_rec_used": rec,
           "lr_grid": args.lrs, "seeds": n_seeds, "damping": DAMPING, "frequency": FREQUENCY,
           "cells": cells, "peak_rss_mb": peak_rss_mb(),
           "total_seconds": time.perf_counter() - t_start}
    path = write_json(args.out, out)
    print(f"wrote {path}; peak RSS {peak_rss_mb():.0f} MB; total {out['total_seconds']:.0f}s")
    plot(cells, args.out)
    return out


def plot(cells, name):
    """Accuracy curves of every cell's best learning rate (all seeds) to ``<OUT_DIR>/<name>.png``."""
    curves = []
    for c in cells:
        if c["best"]:
            best_runs = [r for r in c["runs"] if r["lr"] == c["best"]["lr"]]
            curves.append({"setup": c["setup"], "batch": c["batch"], "optimizer": c["optimizer"],
                           "lr": c["best"]["lr"], "test_acc": [r["test_acc"] for r in best_runs],
                           "cum_seconds": [r["cum_seconds"] for r in best_runs]})
    panels = list(dict.fromkeys((c["setup"], c["batch"]) for c in cells))
    try:
        from plots import plot_thor_accuracy
        png = plot_thor_accuracy(curves, panels, {c["setup"]: c["target"] for c in cells},
                                 os.path.join(OUT_DIR, name + ".png"))
        print(f"wrote {png}")
    except ImportError as exc:  # matplotlib is an optional extra
        print(f"no plot ({exc})")


if __name__ == "__main__":
    main()
