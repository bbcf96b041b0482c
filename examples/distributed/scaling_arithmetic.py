"""The arithmetic of ``docs/source_en/scaling.rst``: ResNet-50 communication and THOR's costs.

Derives every conv/FC layer of ResNet-50 (v1.5: stride on the 3x3 conv; 224x224 input; 53
convolutions + 1 FC = the 54 THOR layers of the model zoo) with THOR's factor sizes
``d_A = C_in*k*k`` and ``d_G = C_out`` and the output locations ``T`` of each layer, then prints,
as ``ms_optim.thor`` implements it:

* what each all-reduce sends: the gradients (every step, every optimizer); THOR's statistics on
  refresh steps, which are only the diagonal blocks of A and G, shape ``(n_b, s, s)`` with
  ``s = min(d, 128)``, ``n_b = ceil(d/s)``, the last block zero-padded (the layers'
  ``matrix_a``/``matrix_g``); with ``distribute_inversion`` the shared inverses, per layer the
  block inverses of A and G plus 2 scalars (ok flag, T), summed over zero-filled buffers;
* the ring-all-reduce traffic through each rank's link for 8 and 256 ranks;
* the flops per rank and refresh of forming the statistics (blocks, and the full matrices they
  replace) and of inverting them, with and without ``distribute_inversion``.

Pure Python, no MindSpore needed::

    python examples/distributed/scaling_arithmetic.py

Cost model (stated in the docs): an s x s SPD block is inverted by Cholesky (s^3/3 flops), a
triangular inverse (s^3/3) and the product U^-1 U^-T (s^3/3): s^3 flops. A product of an
(r x m) and an (m x c) matrix costs 2 r m c flops, so the blocks of A cost 2 NT n_A s_A^2 (the
batched product of the zero-padded column groups of the (NT x d_A) patch matrix), the full A
2 NT d_A^2, and the forward pass of a layer 2 N T C_out C_in k^2. Ring all-reduce moves
``2 (P-1)/P`` times the buffer through every rank's link.
"""
import math

BLOCK = 128
BYTES = 4  # float32
BATCH = 32  # samples per rank for the statistics-cost example
RANKS = (8, 256)
SPLIT = (26, 53)  # the model zoo's split_indices for ResNet-50
SHARED_SCALARS = 2  # per layer, with the shared inverses: ok flag and T


def resnet50_layers():
    """``[(name, C_in, k, C_out, T)]`` for the 54 THOR layers of ResNet-50, in network order.

    ``T`` is the number of output locations per sample (224x224 input; 1 for the FC layer).
    """
    layers = [("conv1", 3, 7, 64, 112 * 112)]
    c_in, side = 64, 56  # after the stride-2 conv1 and the stride-2 max-pool
    for stage, (width, blocks) in enumerate(zip((64, 128, 256, 512), (3, 4, 6, 3)), start=1):
        out_side = side if stage == 1 else side // 2
        for b in range(blocks):
            p = f"layer{stage}.{b}"
            in_side = side if b == 0 else out_side  # v1.5: conv1 of block 0 runs before the stride
            layers += [(p + ".conv1", c_in, 1, width, in_side * in_side),
                       (p + ".conv2", width, 3, width, out_side * out_side),
                       (p + ".conv3", width, 1, 4 * width, out_side * out_side)]
            if b == 0:
                layers.append((p + ".downsample", c_in, 1, 4 * width, out_side * out_side))
            c_in = 4 * width
        side = out_side
    layers.append(("fc", 2048, 1, 1000, 1))
    return layers


def blocks(d):
    """(number of blocks, block size) of THOR's diagonal blocks of a d x d factor."""
    s = min(d, BLOCK)
    return math.ceil(d / s), s


def layer_costs(layers):
    """Per-layer sizes and costs; statistics flops are per sample (multiply by the batch)."""
    rows = []
    for name, c_in, k, c_out, t in layers:
        d_a, d_g = c_in * k * k, c_out
        (na, sa), (ng, sg) = blocks(d_a), blocks(d_g)
        block_floats = na * sa * sa + ng * sg * sg
        full_floats = d_a * d_a + d_g * d_g
        rows.append(dict(name=name, d_a=d_a, d_g=d_g, t=t, n_a=na, s_a=sa, n_g=ng, s_g=sg,
                         weights=c_out * d_a,
                         blocks=block_floats,               # A, G statistics = block inverses
                         full=full_floats,                  # the full A and G (not formed)
                         flops=na * sa ** 3 + ng * sg ** 3,  # inversion
                         stat_flops=2 * t * block_floats,    # forming the blocks, per sample
                         full_stat_flops=2 * t * full_floats,
                         fwd_flops=2 * t * c_out * d_a))
    return rows


def greedy(costs, ranks):
    """Largest first onto the least-loaded rank (the assignment ``distribute_inversion`` uses)."""
    load = [0.0] * ranks
    for c in sorted(costs, reverse=True):
        r = min(range(ranks), key=lambda j: load[j])
        load[r] += c
    return max(load)


def block_flops(rows):
    """Inversion flops of every single block (for a per-block split)."""
    return [s ** 3 for r in rows for n, s in ((r["n_a"], r["s_a"]), (r["n_g"], r["s_g"]))
            for _ in range(n)]


def bucket_floats(rows, split):
    """Statistics floats of each all-reduce bucket for ``split_indices=split``."""
    out, start = [], 0
    for end in split:
        out.append(sum(r["blocks"] for r in rows[start:end + 1]))
        start = end + 1
    if start < len(rows):
        out.append(sum(r["blocks"] for r in rows[start:]))
    return out


def parameter_count(layers, rows):
    """Weights + FC bias + BatchNorm scale/shift (one BatchNorm after every convolution)."""
    n_bn = 2 * sum(layer[3] for layer in layers if layer[0] != "fc")
    return sum(r["weights"] for r in rows) + 1000 + n_bn


def totals(rows):
    keys = ("blocks", "full", "flops", "stat_flops", "full_stat_flops", "fwd_flops")
    return {k: sum(r[k] for r in rows) for k in keys}


def main():
    layers = resnet50_layers()
    rows = layer_costs(layers)
    assert len(rows) == 54
    params = parameter_count(layers, rows)
    tot = totals(rows)
    shared = tot["blocks"] + SHARED_SCALARS * len(rows)
    print("ResNet-50 THOR layers (grouped; per layer; statistics flops per sample)")
    seen = {}
    for r in rows:
        seen.setdefault((r["d_a"], r["d_g"], r["t"]), [0, r])[0] += 1
    print(f"{'d_A':>5} {'d_G':>5} {'T':>6} {'count':>5} {'block floats':>12} {'inv flops':>12} "
          f"{'stat flops':>12} {'full A,G floats':>15}")
    for (d_a, d_g, t), (n, r) in seen.items():
        print(f"{d_a:>5} {d_g:>5} {t:>6} {n:>5} {r['blocks']:>12,} {r['flops']:>12,} "
              f"{r['stat_flops']:>12,} {r['full']:>15,}")
    print(f"weights+biases+BN parameters: {params:,} floats = {params * BYTES / 1e6:.1f} MB")
    print(f"A, G diagonal blocks:         {tot['blocks']:,} floats = "
          f"{tot['blocks'] * BYTES / 1e6:.1f} MB ({tot['blocks'] / params:.2f}x the gradients)")
    print(f"  (the full A, G, not formed: {tot['full']:,} floats = {tot['full'] * BYTES / 1e6:.1f} MB)")
    print(f"shared inverses + 2 scalars:  {shared:,} floats = {shared * BYTES / 1e6:.1f} MB")
    print(f"statistics buckets, split_indices={list(SPLIT)}: "
          + ", ".join(f"{f:,} floats" for f in bucket_floats(rows, SPLIT)))
    print(f"inversion, all 54 layers:     {tot['flops']:,} flops = {tot['flops'] / 1e9:.3f} GFLOP")
    print(f"largest single layer:         {max(r['flops'] for r in rows) / 1e9:.3f} GFLOP")
    n_blocks = sum(r["n_a"] + r["n_g"] for r in rows)
    print(f"blocks to invert:             {n_blocks}")
    print(f"per sample: forward {tot['fwd_flops']:,} flops, statistics blocks "
          f"{tot['stat_flops']:,}, full A, G {tot['full_stat_flops']:,}")
    print(f"per rank and refresh at b = {BATCH}: forming the blocks "
          f"{BATCH * tot['stat_flops'] / 1e9:.1f} GFLOP (full A, G: "
          f"{BATCH * tot['full_stat_flops'] / 1e9:,.1f} GFLOP, "
          f"{tot['full_stat_flops'] / tot['stat_flops']:.1f}x more); forward + backward ~ 3 x "
          f"{BATCH * tot['fwd_flops'] / 1e9:.1f} GFLOP = {3 * BATCH * tot['fwd_flops'] / 1e9:.0f} GFLOP")
    for p in RANKS:
        ring = 2 * (p - 1) / p
        print(f"P = {p}: ring factor 2(P-1)/P = {ring:.4f}")
        print(f"  gradients every step:   {params * BYTES * ring / 1e6:.1f} MB through each rank")
        print(f"  THOR A,G blocks/refresh:{tot['blocks'] * BYTES * ring / 1e6:.1f} MB")
        print(f"  shared inverses/refresh:{shared * BYTES * ring / 1e6:.1f} MB (distribute_inversion)")
        best = greedy([r["flops"] for r in rows], p)
        print(f"  inversion per rank: {tot['flops'] / 1e9:.3f} GFLOP replicated, {best / 1e9:.3f} GFLOP "
              f"split ({tot['flops'] / best:.1f}x less; ideal {tot['flops'] / p / 1e9:.3f})")
        print(f"  a per-block split would reach {greedy(block_flops(rows), p) / 1e6:.1f} MFLOP per rank")


if __name__ == "__main__":
    main()
