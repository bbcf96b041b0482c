"""THOR's data-parallel seam: statistics averaged over the ranks, inverses optionally shared.

Identity in stand-alone mode. Under ``ParallelMode.DATA_PARALLEL`` (``msrun`` +
``mindspore.communication``) the refresh step all-reduces the layers' statistics, one all-reduce
per ``split_indices`` bucket with the bucket's tensors packed end to end, and with
``distribute_inversion`` each layer is inverted on one rank (cost-balanced owners) and the
zero-filled per-rank buffers are summed.

Collective order. Ranks may compile different graphs (``distribute_inversion``: each rank
inverts only its layers), so the order of the collectives must not be left to each rank's
scheduler. It is fixed by data dependencies: every reduced gradient -> statistics bucket 0 ->
bucket 1 -> ... -> inverse-sharing bucket 0 -> bucket 1 -> ...; each all-reduce's input depends
on the previous all-reduce's output, and every output of a phase depends on the phase's last
all-reduce.
"""
import numbers

import mindspore as ms
from mindspore import nn, ops

__all__ = ["ThorDataParallel", "validate_split_indices"]


def validate_split_indices(name, split_indices, n_layers):
    """The bucket ends as a list of int (default: one bucket), or TypeError/ValueError."""
    if split_indices is None:
        return [max(n_layers - 1, 0)]
    if not isinstance(split_indices, (list, tuple)):
        raise TypeError(f"For '{name}', the argument 'split_indices' must be list or tuple of int, "
                        f"but got {type(split_indices).__name__}.")
    if not split_indices:
        raise ValueError(f"For '{name}', the argument 'split_indices' must not be empty.")
    prev = -1
    for i in split_indices:
        if isinstance(i, bool) or not isinstance(i, numbers.Integral):
            raise TypeError(f"For '{name}', every element of 'split_indices' must be int, "
                            f"but got {type(i).__name__}.")
        if i <= prev or i >= max(n_layers, 1):
            raise ValueError(f"For '{name}', 'split_indices' must be strictly increasing layer "
                             f"indices in [0, {max(n_layers - 1, 0)}] (the network has {n_layers} "
                             f"preconditioned layers), but got {list(split_indices)}.")
        prev = i
    return [int(i) for i in split_indices]


def _buckets(split_indices, n_layers):
    """Layer index -> fusion bucket: split [26, 53] gives 0..26 -> 0, 27..53 -> 1."""
    out = []
    for k in range(n_layers):
        b = 0
        while b < len(split_indices) and k > split_indices[b]:
            b += 1
        out.append(b)
    return out


def _bucket_plan(bucket_of_layer, stride):
    """Packing plan of a per-layer flattened tuple (entry ``i`` is of layer ``i // stride``).

    Returns ``(plan, pos)``: ``plan`` lists ``(bucket, entry indices)`` for the non-empty buckets in
    bucket order; ``pos[i] = (slot in plan, place in that slot)``.
    """
    plan, pos = [], {}
    for b in sorted(set(bucket_of_layer)):
        idx = tuple(i for i in range(stride * len(bucket_of_layer)) if bucket_of_layer[i // stride] == b)
        for j, i in enumerate(idx):
            pos[i] = (len(plan), j)
        plan.append((b, idx))
    return tuple(plan), tuple(pos[i] for i in range(len(pos)))


def _numel(shape):
    n = 1
    for d in shape:
        n = n * d
    return n


def _assign_owners(costs, group_size):
    """Cost-balanced (greedy, largest first) assignment of layers to ranks; deterministic."""
    load = [0.0] * group_size
    owner = [0] * len(costs)
    for k in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        r = min(range(group_size), key=lambda j: (load[j], j))
        owner[k] = r
        load[r] += costs[k]
    return owner


class ThorDataParallel(nn.Cell):
    """The seam the THOR optimizer calls on refresh steps (a sub-cell of the optimizer).

    Args:
        split_indices (list[int]): validated bucket ends (:func:`validate_split_indices`).
        costs (list[float]): per preconditioned layer, the inversion cost (owner balancing).
        distribute_inversion (bool): invert each layer on one rank and share the result.
    """

    def __init__(self, split_indices, costs, distribute_inversion):
        super().__init__(auto_prefix=False)
        n_layers = len(costs)
        self.split_indices = split_indices
        self.bucket = tuple(_buckets(split_indices, n_layers))
        n_buckets = (max(self.bucket) + 1) if self.bucket else 1
        self._stat_plan, self._stat_pos = _bucket_plan(self.bucket, 2)
        self._share_plan, self._share_pos = _bucket_plan(self.bucket, 4)
        self.distribute_inversion = distribute_inversion
        self.parallel = ms.get_auto_parallel_context("parallel_mode") in (
            ms.ParallelMode.DATA_PARALLEL, "data_parallel")
        self.group_size = 1
        self.rank = 0
        if self.parallel:
            from mindspore.communication import get_group_size, get_rank
            self.group_size = get_group_size()
            self.rank = get_rank()
            # One all-reduce per bucket; the bucket's tensors are packed into it explicitly
            # (``_allreduce_buckets``), so no backend fusion pass is relied upon: fusion id 0.
            self.allreduce = [ops.AllReduce().add_prim_attr("fusion", 0) for _ in range(n_buckets)]
        self.owner = tuple(_assign_owners(costs, self.group_size)) if distribute_inversion \
            else tuple(0 for _ in costs)

    def _allreduce_buckets(self, tensors, plan, pos):
        """Sum over ranks, one all-reduce per bucket of ``plan`` (:func:`_bucket_plan`), chained."""
        if not self.parallel:
            return tensors
        slots = ()
        prev = None
        for b, idx in plan:
            flat = ()
            sizes = ()
            for i in idx:
                flat = flat + (ops.reshape(tensors[i], (-1,)),)
                sizes = sizes + (_numel(tensors[i].shape),)
            packed = ops.concat(flat) if len(flat) > 1 else flat[0]
            if prev is not None:
                packed = ops.depend(packed, prev)
            summed = self.allreduce[b](packed)
            prev = summed
            slots = slots + ((ops.split(summed, sizes) if len(sizes) > 1 else (summed,)),)
        out = ()
        for i in range(len(tensors)):
            slot, j = pos[i]
            out = out + (ops.depend(ops.reshape(slots[slot][j], tensors[i].shape), prev),)
        return out

    def reduce_statistics(self, stats):
        """Mean of the statistics ``(A_0, G_0, A_1, G_1, ...)`` over the data-parallel ranks."""
        if not self.parallel:
            return stats
        summed = self._allreduce_buckets(stats, self._stat_plan, self._stat_pos)
        return tuple(s / self.group_size for s in summed)

    def owns(self, k):
        """Whether this rank computes layer ``k``'s inverses."""
        return (not self.distribute_inversion) or self.owner[k] == self.rank

    def owns_tuple(self):
        """:meth:`owns` of every layer (a constant of the compiled graph)."""
        out = ()
        for k in range(len(self.owner)):
            out = out + (self.owns(k),)
        return out

    def share_inverses(self, tensors):
        """Every rank gets every inverse: the per-layer buffers ``(A^-1, G^-1, ok, T)``, zero on
        the ranks that do not own the layer, are summed over the ranks."""
        if not (self.parallel and self.distribute_inversion):
            return tensors
        return self._allreduce_buckets(tensors, self._share_plan, self._share_pos)
