"""The arithmetic of ``docs/source_en/scaling.rst``: ResNet-50 communication and inversion cost.

Derives every conv/FC layer of ResNet-50 (v1.5: stride on the 3x3 conv; 53 convolutions + 1 FC =
the 54 THOR layers of the model zoo) with THOR's factor sizes ``d_A = C_in*k*k`` and
``d_G = C_out``, then prints the per-step all-reduce volumes of data-parallel training with
``ms_optim.LARS`` and ``ms_optim.thor`` and the per-rank inversion cost with and without
``distribute_inversion``, for 8 and 256 ranks. Pure Python, no MindSpore needed::

    python examples/distributed/scaling_arithmetic.py

Cost model (stated in the docs): an s x s SPD block is inverted by Cholesky (s^3/3 flops), a
triangular inverse (s^3/3) and the product U^-1 U^-T (s^3/3): s^3 flops; THOR uses blocks of
``min(d, 128)`` (the last block padded), i.e. ``ceil(d/128)`` blocks of 128 when d > 128.
Ring all-reduce moves ``2 (P-1)/P`` times the buffer through every rank's link.
"""
import math

BLOCK = 128
BYTES = 4  # float32


def resnet50_layers():
    """``[(name, C_in, k, C_out)]`` for the 54 THOR layers of ResNet-50, in network order."""
    layers = [("conv1", 3, 7, 64)]
    c_in = 64
    for stage, (width, blocks) in enumerate(zip((64, 128, 256, 512), (3, 4, 6, 3)), start=1):
        for b in range(blocks):
            p = f"layer{stage}.{b}"
            layers += [(p + ".conv1", c_in, 1, width), (p + ".conv2", width, 3, width),
                       (p + ".conv3", width, 1, 4 * width)]
            if b == 0:
                layers.append((p + ".downsample", c_in, 1, 4 * width))
            c_in = 4 * width
    layers.append(("fc", 2048, 1, 1000))
    return layers


def blocks(d):
    """(number of blocks, block size) of THOR's block-diagonal inverse of a d x d factor."""
    s = min(d, BLOCK)
    return math.ceil(d / s), s


def layer_costs(layers):
    rows = []
    for name, c_in, k, c_out in layers:
        d_a, d_g = c_in * k * k, c_out
        (na, sa), (ng, sg) = blocks(d_a), blocks(d_g)
        rows.append(dict(name=name, d_a=d_a, d_g=d_g, weights=c_out * c_in * k * k,
                         stats=d_a * d_a + d_g * d_g,                 # full A and G
                         inv=na * sa * sa + ng * sg * sg,              # block inverses
                         flops=na * sa ** 3 + ng * sg ** 3))
    return rows


def greedy(costs, ranks):
    """Largest first onto the least-loaded rank (the assignment ``distribute_inversion`` uses)."""
    load = [0.0] * ranks
    for c in sorted(costs, reverse=True):
        r = min(range(ranks), key=lambda j: load[j])
        load[r] += c
    return max(load)


def main():
    layers = resnet50_layers()
    rows = layer_costs(layers)
    assert len(rows) == 54
    n_bn = 2 * sum(c_out for name, _, _, c_out in layers if name != "fc")
    params = sum(r["weights"] for r in rows) + 1000 + n_bn   # + FC bias + BatchNorm gamma/beta
    stats = sum(r["stats"] for r in rows)
    inv = sum(r["inv"] for r in rows)
    flops = sum(r["flops"] for r in rows)
    print("ResNet-50 THOR layers (grouped)")
    seen = {}
    for r in rows:
        key = (r["d_a"], r["d_g"])
        seen.setdefault(key, [0, r])[0] += 1
    print(f"{'d_A':>5} {'d_G':>5} {'count':>5} {'A,G floats':>12} {'inv floats':>11} {'inv flops':>12}")
    for (d_a, d_g), (n, r) in seen.items():
        print(f"{d_a:>5} {d_g:>5} {n:>5} {r['stats']:>12,} {r['inv']:>11,} {r['flops']:>12,}")
    print(f"weights+biases+BN parameters: {params:,} floats = {params * BYTES / 1e6:.1f} MB")
    print(f"A and G (full matrices):      {stats:,} floats = {stats * BYTES / 1e6:.1f} MB")
    print(f"block inverses:               {inv:,} floats = {inv * BYTES / 1e6:.1f} MB")
    print(f"inversion, all 54 layers:     {flops:,} flops = {flops / 1e9:.2f} GFLOP")
    print(f"largest single layer:         {max(r['flops'] for r in rows) / 1e9:.3f} GFLOP")
    for p in (8, 256):
        ring = 2 * (p - 1) / p
        print(f"P = {p}: ring factor 2(P-1)/P = {ring:.4f}")
        print(f"  gradients every step:   {params * BYTES * ring / 1e6:.1f} MB through each rank")
        print(f"  THOR A,G per refresh:   {stats * BYTES * ring / 1e6:.1f} MB")
        print(f"  shared inverses/refresh:{inv * BYTES * ring / 1e6:.1f} MB (distribute_inversion)")
        best = greedy([r["flops"] for r in rows], p)
        print(f"  inversion per rank: {flops / 1e9:.2f} GFLOP replicated, {best / 1e9:.3f} GFLOP split "
              f"({flops / best:.1f}x less; ideal {flops / p / 1e9:.3f})")


if __name__ == "__main__":
    main()
