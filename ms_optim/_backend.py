"""The one place that decides which backend an optimizer uses.

``resolve_backend`` turns the user's ``backend=`` choice (``"auto"``, ``"ascend"``, ``"cpu"``
or ``"portable"``) into a concrete backend once, at construction, and the optimizer stores it.
Nothing else in the package reads ``device_target`` or probes for primitives.

* ``"ascend"``: Ascend device in GRAPH mode, and the fused primitives exist in the installed
  MindSpore. The fused kernels (``LARSUpdate``, THOR's ``Cus*`` ops) are used where they
  exist; the mathematics is still the one of :mod:`ms_optim.ops`.
* ``"cpu"``: CPU device, and the package's compiled CPU kernels (``ms_optim/_csrc``, built on
  first use, see ``ms_optim._cpu_kernels``) are available; only optimizers that have such
  kernels offer it (LARS). GRAPH and PYNATIVE mode.
* ``"gpu"``: GPU device, GRAPH mode, and the GPU primitive an optimizer offers exists (LARS:
  ``FusedWeightScaleApplyMomentum`` for a wrapped ``nn.Momentum``).
* ``"portable"``: built from public ``mindspore.ops`` only; runs on CPU, GPU and Ascend, in GRAPH
  and PYNATIVE mode.

``"auto"`` picks ``"ascend"`` when every condition of it holds, else ``"cpu"`` when that is
offered and usable, and ``"portable"`` otherwise.
"""
import functools
import importlib
import logging

import mindspore as ms

__all__ = ["AUTO", "ASCEND", "CPU", "GPU", "PORTABLE", "BACKENDS", "resolve_backend", "has_primitive",
           "get_primitive"]

AUTO = "auto"
ASCEND = "ascend"
CPU = "cpu"
GPU = "gpu"
PORTABLE = "portable"
BACKENDS = (AUTO, ASCEND, CPU, GPU, PORTABLE)

_LOG = logging.getLogger("ms_optim")

# Where the fused primitives live. LARSUpdate is public (deprecated since 2.10); the THOR
# kernels are only importable from the private operations modules.
_PRIMITIVE_MODULES = (
    "mindspore.ops.operations",
    "mindspore.ops.operations.nn_ops",
    "mindspore.ops.operations._thor_ops",
    "mindspore.ops.operations._inner_ops",
)


@functools.lru_cache(maxsize=None)
def _find_primitive(name):
    for mod_name in _PRIMITIVE_MODULES:
        try:
            mod = importlib.import_module(mod_name)
        except ImportError:
            continue
        prim = getattr(mod, name, None)
        if prim is not None:
            return prim
    return None


def has_primitive(name):
    """Return whether the installed MindSpore defines primitive class ``name`` (cached)."""
    return _find_primitive(name) is not None


def get_primitive(name):
    """Return primitive class ``name``; ``LookupError`` if this MindSpore does not have it."""
    prim = _find_primitive(name)
    if prim is None:
        raise LookupError(f"The installed MindSpore {ms.__version__} has no primitive '{name}'.")
    return prim


def resolve_backend(backend, required_primitives, cls_name, device_target=None, mode=None,
                    cpu_kernels=None, gpu_primitives=None):
    """Resolve ``backend`` to ``"ascend"``, ``"cpu"`` or ``"portable"``.

    Args:
        backend (str): ``"auto"``, ``"ascend"`` or ``"portable"``.
        required_primitives (tuple[str]): primitives the fused path needs.
        cls_name (str): name used in error messages.
        device_target (str): defaults to ``mindspore.get_context("device_target")``.
        mode (int): defaults to ``mindspore.get_context("mode")``.
        cpu_kernels (Callable[[], Optional[str]]): offered by optimizers with compiled CPU
            kernels: returns ``None`` when they can be used, else the reason. ``None`` (the
            default): the ``"cpu"`` backend is not offered.
        gpu_primitives (tuple[str]): offered by optimizers with a fused GPU path: the primitives
            it needs. ``None`` (the default): the ``"gpu"`` backend is not offered.

    Returns:
        str, ``"ascend"``, ``"cpu"``, ``"gpu"`` or ``"portable"``.

    Raises:
        TypeError: If `backend` is not a str.
        ValueError: If `backend` is not one of ``BACKENDS``, or ``"ascend"`` is requested
            where the fused path cannot run (not an Ascend device, not GRAPH mode, or a
            primitive missing), or ``"cpu"`` / ``"gpu"`` where it is not offered or cannot run.
    """
    if not isinstance(backend, str):
        raise TypeError(f"For '{cls_name}', the argument 'backend' must be str, "
                        f"but got {type(backend).__name__}.")
    if backend not in BACKENDS:
        raise ValueError(f"For '{cls_name}', the argument 'backend' must be one of {BACKENDS}, "
                         f"but got '{backend}'.")
    if backend == PORTABLE:
        return PORTABLE
    if device_target is None:
        device_target = ms.get_context("device_target")
    if mode is None:
        mode = ms.get_context("mode")
    if backend == CPU:
        return _resolve_cpu(cls_name, device_target, cpu_kernels)
    if backend == GPU:
        return _resolve_gpu(cls_name, device_target, mode, gpu_primitives)
    missing = [p for p in required_primitives if not has_primitive(p)]
    reasons = []
    if device_target != "Ascend":
        reasons.append(f"device_target is '{device_target}', not 'Ascend'")
    if mode != ms.GRAPH_MODE:
        reasons.append("the execution mode is not GRAPH_MODE")
    if missing:
        reasons.append(f"MindSpore {ms.__version__} lacks {', '.join(missing)}")
    if not reasons:
        return ASCEND
    if backend == AUTO and gpu_primitives is not None and device_target == "GPU":
        try:
            return _resolve_gpu(cls_name, device_target, mode, gpu_primitives)
        except ValueError:
            return PORTABLE
    if backend == AUTO and cpu_kernels is not None and device_target == "CPU":
        why = cpu_kernels()
        if why is None:
            return CPU
        if "MS_OPTIM_CPU_KERNELS=0" not in why:
            _LOG.warning("%s: compiled CPU kernels unavailable (%s); using the portable ops.",
                         cls_name, why)
        return PORTABLE
    if backend == ASCEND:
        raise ValueError(f"For '{cls_name}', backend='ascend' cannot be used: "
                         + "; ".join(reasons) + ". Use backend='auto' or 'portable'.")
    if device_target == "Ascend" and mode == ms.GRAPH_MODE:
        # Only worth a message where the user could have expected the fused kernels.
        _LOG.warning("%s: fused Ascend kernels unavailable (%s); using the portable ops.",
                     cls_name, "; ".join(reasons))
    return PORTABLE


def _resolve_cpu(cls_name, device_target, cpu_kernels):
    if cpu_kernels is None:
        raise ValueError(f"For '{cls_name}', backend='cpu' is not offered: {cls_name} has no "
                         "compiled CPU kernels. Use backend='auto' or 'portable'.")
    if device_target != "CPU":
        raise ValueError(f"For '{cls_name}', backend='cpu' cannot be used: device_target is "
                         f"'{device_target}', not 'CPU'. Use backend='auto' or 'portable'.")
    why = cpu_kernels()
    if why is not None:
        raise ValueError(f"For '{cls_name}', backend='cpu' cannot be used: {why}. "
                         "Use backend='auto' or 'portable'.")
    return CPU


def _resolve_gpu(cls_name, device_target, mode, gpu_primitives):
    if gpu_primitives is None:
        raise ValueError(f"For '{cls_name}', backend='gpu' is not offered: {cls_name} has no "
                         "fused GPU path. Use backend='auto' or 'portable'.")
    reasons = []
    if device_target != "GPU":
        reasons.append(f"device_target is '{device_target}', not 'GPU'")
    if mode != ms.GRAPH_MODE:
        reasons.append("the execution mode is not GRAPH_MODE")
    missing = [p for p in gpu_primitives if not has_primitive(p)]
    if missing:
        reasons.append(f"MindSpore {ms.__version__} lacks {', '.join(missing)}")
    if reasons:
        raise ValueError(f"For '{cls_name}', backend='gpu' cannot be used: " + "; ".join(reasons)
                         + ". Use backend='auto' or 'portable'.")
    return GPU
