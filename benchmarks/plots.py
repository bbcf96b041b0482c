"""PNG figures of the accuracy benchmarks (matplotlib, Agg backend, no display needed)."""
import os

import numpy as np

COLORS = {"momentum": "tab:blue", "lars": "tab:orange", "thor": "tab:green", "thor+rec": "tab:red"}


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save(plt, fig, path, dpi=110):
    fig.tight_layout()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def plot_large_batch(results, data_names, opt_names, path):
    """Test accuracy vs batch size, one line per optimizer (mean +- std), one panel per data set."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(data_names), figsize=(5.2 * len(data_names), 4.0), squeeze=False)
    for ax, d in zip(axes[0], data_names):
        rows = [r for r in results if r["data"] == d]
        batches = sorted({r["batch"] for r in rows})
        for o in opt_names:
            sel = sorted((r for r in rows if r["optimizer"] == o), key=lambda r: r["batch"])
            if not sel:
                continue
            b = [r["batch"] for r in sel]
            m = [100 * r["test_mean"] for r in sel]
            s = [100 * r["test_std"] for r in sel]
            label = {"momentum": "Momentum (linear lr scaling)", "lars": "LARS(Momentum)"}.get(o, o)
            ax.errorbar(b, m, yerr=s, marker="o", capsize=3, color=COLORS.get(o), label=label)
        spe = {r["batch"]: r["steps_per_epoch"] for r in rows}
        ax.set_xscale("log", base=2)
        ax.set_xticks(batches)
        ax.set_xticklabels([f"{b}\n({spe[b]} st/ep)" for b in batches], fontsize=8)
        ax.set_xlabel("batch size (steps per epoch)")
        ax.set_ylabel("test accuracy (%)")
        setup = rows[0]["setup"] if rows else d
        ax.set_title(f"{setup}, {rows[0]['epochs'] if rows else '?'} epochs at every batch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _save(plt, fig, path)


def plot_thor_accuracy(curves, setups, target_of, path):
    """Test accuracy vs epoch (top row) and vs seconds incl. compilation (bottom row).

    ``curves``: list of dicts with ``setup``, ``batch``, ``optimizer``, ``lr``, ``test_acc`` (list
    of per-seed lists) and ``cum_seconds`` (list of per-seed lists); one panel per (set-up, batch)
    in ``setups``; one line per seed, one colour per optimizer, the target as a dashed line.
    """
    plt = _plt()
    n = len(setups)
    fig, axes = plt.subplots(2, n, figsize=(4.2 * n, 7.0), squeeze=False)
    for j, (setup, batch) in enumerate(setups):
        for c in curves:
            if c["setup"] != setup or c["batch"] != batch:
                continue
            color = COLORS.get(c["optimizer"])
            label = f"{c['optimizer']} lr={c['lr']:g}"
            for i, (acc, sec) in enumerate(zip(c["test_acc"], c["cum_seconds"])):
                ep = np.arange(1, len(acc) + 1)
                kw = {"label": label} if i == 0 else {}
                axes[0, j].plot(ep, 100 * np.asarray(acc), color=color, alpha=0.8, marker=".", **kw)
                axes[1, j].plot(sec, 100 * np.asarray(acc), color=color, alpha=0.8, marker=".", **kw)
        tgt = 100 * target_of[setup]
        for ax in axes[:, j]:
            ax.axhline(tgt, color="k", ls="--", lw=0.8)
            ax.grid(alpha=0.3)
            lo = max(0.0, tgt - 25)
            ax.set_ylim(lo, 100)
        axes[0, j].set_title(f"{setup}, batch {batch} (target {tgt:g}%)", fontsize=9)
        axes[0, j].set_xlabel("epoch")
        axes[1, j].set_xlabel("seconds (incl. compilation)")
        axes[0, j].legend(fontsize=7, loc="lower right")
    axes[0, 0].set_ylabel("test accuracy (%)")
    axes[1, 0].set_ylabel("test accuracy (%)")
    return _save(plt, fig, path, dpi=100)


def plot_lars_step(results, path):
    """Step time bars per wrapped optimizer X: X, LARS(X) on the default backend, LARS(X) on the
    portable path; one panel per execution mode."""
    plt = _plt()
    modes = list(results)
    fig, axes = plt.subplots(1, len(modes), figsize=(6.0 * len(modes), 3.8), squeeze=False)
    for ax, mode in zip(axes[0], modes):
        rows = results[mode]
        names = list(rows)
        x = np.arange(len(names))
        w = 0.27
        backend = rows[names[0]]["backend"] if names else "?"
        bars = (("base_ms", "X", "tab:blue"), ("lars_ms", f"LARS(X), {backend}", "tab:orange"),
                ("portable_ms", "LARS(X), portable", "tab:gray"))
        for k, (key, label, color) in enumerate(bars):
            vals = [rows[n][key] for n in names]
            ax.bar(x + (k - 1) * w, vals, w, label=label, color=color)
        for i, n in enumerate(names):
            ax.text(i, rows[n]["lars_ms"], f"{rows[n]['ratio']:.2f}x", ha="center",
                    va="bottom", fontsize=8)
        ax.set_xticks(x)
        ax.set_xticklabels(names, fontsize=9)
        ax.set_ylabel("optimizer step (ms, median)")
        ax.set_title(f"ResNet-50 parameter set, {mode} (label: LARS(X) / X)")
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8)
    return _save(plt, fig, path)
