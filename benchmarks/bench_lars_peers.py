"""The peers' LARS overhead on the ResNet-50 parameter set: timm ``Lars`` / torch SGD and
``optax.lars`` / ``optax.sgd`` (CPU), next to ms_optim's own ratio from ``bench_lars_step.py``.

    /work/peers-venv/bin/python benchmarks/bench_lars_peers.py [--quick] [--steps 25]

Environment (not the project venv; torch/jax must not go into it)::

    python3 -m venv /work/peers-venv
    /work/peers-venv/bin/pip install torch==2.13.0 timm jax optax numpy
    /work/peers-venv/bin/pip uninstall -y torchvision   # see below

(no setup.py extra: the PyPI ``torchvision`` that ``timm`` pulls in does not load next to the
CPU ``torch`` 2.13.0 here - "operator torchvision::nms does not exist". This script therefore
loads ``timm/optim/lars.py`` and its only import, ``timm/optim/_helpers.py``, as files, which
need nothing but torch.)

What it measures: the optimizer step alone, on fixed random gradients, for the 161 tensors /
25,557,032 parameters of ResNet-50 (the shapes are generated here in pure Python and checked
against those totals; ``benchmarks/resnet50.py`` needs MindSpore). Hyper-parameters as in
``bench_lars_step.py``: lr 0.1, momentum 0.9, weight decay 1e-4, trust coefficient 0.001.

* torch: ``torch.optim.SGD(momentum=0.9, weight_decay=1e-4)`` vs timm ``Lars`` with the same
  arguments (its default ``foreach`` choice), ``optimizer.step()`` after setting ``.grad``.
* jax: one ``jax.jit`` update (``optax.apply_updates(params, optimizer.update(...))``), weights
  and state donated, ``block_until_ready``; ``optax.chain(add_decayed_weights(1e-4),
  sgd(0.1, momentum=0.9))`` vs ``optax.lars(0.1, weight_decay=1e-4, momentum=0.9)``.

Base and LARS are called round-robin within each library, median of ``--steps`` after warm-up.
A library that is not importable is skipped with a printed message. Writes
``outputs/bench/lars_peers.json`` (directly, without MindSpore's ``_common.stamp``).
"""
import argparse
import importlib.util
import json
import os
import platform
import statistics
import sys
import time
import types

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(os.path.dirname(HERE), "outputs", "bench", "lars_peers.json")


def resnet50_shapes(num_classes=1000):
    """Trainable tensor shapes of ResNet-50 v1.5 (same as benchmarks/resnet50.py)."""
    shapes = [(64, 3, 7, 7), (64,), (64,)]
    cin = 64
    for width, n, _ in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
        for i in range(n):
            cout = 4 * width
            shapes += [(width, cin, 1, 1), (width,), (width,), (width, width, 3, 3), (width,),
                       (width,), (cout, width, 1, 1), (cout,), (cout,)]
            if i == 0:
                shapes += [(cout, cin, 1, 1), (cout,), (cout,)]
            cin = cout
    shapes += [(num_classes, cin), (num_classes,)]
    return shapes


def _interleaved(fns, steps):
    times = [[] for _ in fns]
    for _ in range(steps):
        for i, fn in enumerate(fns):
            t0 = time.perf_counter()
            fn()
            times[i].append(time.perf_counter() - t0)
    return [statistics.median(t) for t in times]


def _timm_lars_class():
    spec = importlib.util.find_spec("timm")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("timm is not installed")
    optim_dir = os.path.join(list(spec.submodule_search_locations)[0], "optim")
    pkg = types.ModuleType("_timm_optim_files")
    pkg.__path__ = [optim_dir]
    sys.modules["_timm_optim_files"] = pkg
    for name in ("_helpers", "lars"):
        sub = importlib.util.spec_from_file_location(f"_timm_optim_files.{name}",
                                                     os.path.join(optim_dir, f"{name}.py"))
        mod = importlib.util.module_from_spec(sub)
        sys.modules[sub.name] = mod
        sub.loader.exec_module(mod)
    return sys.modules["_timm_optim_files.lars"].Lars


def bench_torch(shapes, grads_np, steps):
    import torch
    lars_cls = _timm_lars_class()

    def make(lars):
        ps = [torch.nn.Parameter(torch.from_numpy(g.copy() * 10.0)) for g in grads_np]
        for p, g in zip(ps, grads_np):
            p.grad = torch.from_numpy(g)
        kw = dict(lr=0.1, momentum=0.9, weight_decay=1e-4)
        opt = lars_cls(ps, trust_coeff=0.001, **kw) if lars else torch.optim.SGD(ps, **kw)
        return opt.step

    fns = [make(False), make(True)]
    for f in fns:
        f()
        f()
    t_base, t_lars = _interleaved(fns, steps)
    return {"library": f"torch {torch.__version__} + timm (Lars)", "threads": torch.get_num_threads(),
            "base": "torch.optim.SGD", "lars": "timm.optim.Lars",
            "base_ms": round(t_base * 1e3, 2), "lars_ms": round(t_lars * 1e3, 2),
            "ratio": round(t_lars / t_base, 3)}


def bench_jax(shapes, grads_np, steps):
    import jax
    import optax

    grads = [jax.numpy.asarray(g) for g in grads_np]

    def make(opt):
        params = [jax.numpy.asarray(g * 10.0) for g in grads_np]
        state = [opt.init(params)]
        box = [params]

        def _step(p, s, g):
            upd, s = opt.update(g, s, p)
            return optax.apply_updates(p, upd), s
        step = jax.jit(_step, donate_argnums=(0, 1))

        def run():
            box[0], state[0] = step(box[0], state[0], grads)
            jax.block_until_ready(box[0])
        return run

    base = optax.chain(optax.add_decayed_weights(1e-4), optax.sgd(0.1, momentum=0.9))
    lars = optax.lars(0.1, weight_decay=1e-4, trust_coefficient=0.001, momentum=0.9)
    fns = [make(base), make(lars)]
    for f in fns:
        f()
        f()
    t_base, t_lars = _interleaved(fns, steps)
    return {"library": f"jax {jax.__version__} + optax {optax.__version__}",
            "base": "add_decayed_weights + optax.sgd", "lars": "optax.lars",
            "base_ms": round(t_base * 1e3, 2), "lars_ms": round(t_lars * 1e3, 2),
            "ratio": round(t_lars / t_base, 3)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--steps", type=int, default=None, help="timed steps (default 25, quick 5)")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    steps = args.steps or (5 if args.quick else 25)
    shapes = resnet50_shapes()
    n = sum(int(np.prod(s)) for s in shapes)
    assert (len(shapes), n) == (161, 25557032), (len(shapes), n)
    rng = np.random.default_rng(0)
    grads_np = [(rng.standard_normal(s) * 0.01).astype(np.float32) for s in shapes]
    results = {}
    for name, fn in (("torch_timm", bench_torch), ("jax_optax", bench_jax)):
        try:
            results[name] = fn(shapes, grads_np, steps)
        except ImportError as exc:
            print(f"skipping {name}: {exc}")
            results[name] = {"skipped": str(exc)}
    print(f"ResNet-50 parameter set: {len(shapes)} tensors, {n} parameters; CPU; median of {steps}"
          f" interleaved steps")
    print(f"{'library':<40}{'base (ms)':>11}{'LARS (ms)':>11}{'ratio':>8}")
    for r in results.values():
        if "skipped" not in r:
            print(f"{r['library']:<40}{r['base_ms']:>11.1f}{r['lars_ms']:>11.1f}{r['ratio']:>8.2f}")
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w", encoding="utf-8") as f:
        json.dump({"benchmark": "lars_peers", "steps": steps, "cpus": os.cpu_count(),
                   "python": platform.python_version(), "machine": platform.machine(),
                   "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "results": results}, f, indent=2)
    print(f"wrote {os.path.relpath(OUT, os.path.dirname(HERE))}")


if __name__ == "__main__":
    main()
