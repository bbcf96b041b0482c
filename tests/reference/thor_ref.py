"""Float64 NumPy reference of THOR (imports only numpy).

Paper notation (Martens & Grosse 2015, K-FAC; Chen et al. 2021, THOR) mapped to the code:
    a_{l-1} (layer input)            -> x, or the im2col patches P for a convolution
    g_l = dL/ds_l (pre-activation)   -> dout (gradient of the layer output before bias/act.)
    A_{l-1} = E[a a^T]               -> A = P^T P / (N T)
    G_l = E[g g^T] (per sample)      -> G = (N / T) D^T D   (D: gradient of the *mean* loss)
    F_l ~ A (x) G, damping gamma     -> A + sqrt(lambda/T) I, G + sqrt(lambda/T) I
    natural gradient                 -> (1/T) G^-1 dW A^-1   (block-diagonal, 128-blocks)
Everything is float64 and the inverses are taken with np.linalg.inv per block (not Cholesky), so
the reference is independent of the implementation's linear algebra.
"""
import numpy as np

BLOCK = 128


# ------------------------------------------------------------------------------------------
# A tiny sequential network with explicit backward: layers are dicts
#   {"kind": "dense", "w": (out, in), "b": (out,) or None}
#   {"kind": "conv", "w": (out, C / groups, kh, kw), "b": ..., "stride": (sh, sw),
#    "pad": (top, bottom, left, right), "dilation": (dh, dw), "groups": g (optional, 1)}
#   A grouped convolution is g independent convolutions: group j maps input channels
#   [j C/g, (j+1) C/g) to output channels [j out/g, (j+1) out/g).
#   {"kind": "relu"}, {"kind": "flatten"}
# ------------------------------------------------------------------------------------------
def im2col(x, kh, kw, stride, pad, dilation):
    """Patches (N*Ho*Wo, C*kh*kw), columns ordered (c, i, j) like a flattened OIHW weight."""
    n, c, h, w = x.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad[0], pad[1]), (pad[2], pad[3])))
    sh, sw = stride
    dh, dw = dilation
    ho = (h + pad[0] + pad[1] - dh * (kh - 1) - 1) // sh + 1
    wo = (w + pad[2] + pad[3] - dw * (kw - 1) - 1) // sw + 1
    cols = np.empty((n, ho, wo, c, kh, kw))
    for i in range(kh):
        for j in range(kw):
            sl = xp[:, :, i * dh: i * dh + sh * (ho - 1) + 1: sh, j * dw: j * dw + sw * (wo - 1) + 1: sw]
            cols[:, :, :, :, i, j] = sl.transpose(0, 2, 3, 1)
    return cols.reshape(n * ho * wo, c * kh * kw), ho, wo


def col2im_grad(dcols, x_shape, kh, kw, stride, pad, dilation, ho, wo):
    """Adjoint of im2col: gradient w.r.t. x from the gradient w.r.t. the patches."""
    n, c, h, w = x_shape
    dxp = np.zeros((n, c, h + pad[0] + pad[1], w + pad[2] + pad[3]))
    d = dcols.reshape(n, ho, wo, c, kh, kw)
    sh, sw = stride
    dh, dw = dilation
    for i in range(kh):
        for j in range(kw):
            dxp[:, :, i * dh: i * dh + sh * (ho - 1) + 1: sh, j * dw: j * dw + sw * (wo - 1) + 1: sw] += \
                d[:, :, :, :, i, j].transpose(0, 3, 1, 2)
    return dxp[:, :, pad[0]: pad[0] + h, pad[2]: pad[2] + w]


def forward_backward(layers, x, labels):
    """Mean softmax cross-entropy; returns loss, grads, and per Dense/Conv layer (P, D, N, T)."""
    cache = []
    h = x
    for layer in layers:
        k = layer["kind"]
        if k == "dense":
            cache.append(h)
            h = h @ layer["w"].T + (layer["b"] if layer["b"] is not None else 0.0)
        elif k == "conv":
            out_c, _, kh, kw = layer["w"].shape
            groups = layer.get("groups", 1)
            p, ho, wo = im2col(h, kh, kw, layer["stride"], layer["pad"], layer["dilation"])
            cache.append((h.shape, p, ho, wo))
            y = np.concatenate([pj @ wj.T for pj, wj in
                                zip(_split_cols(p, groups), _group_rows(layer["w"], groups))], 1)
            if layer["b"] is not None:
                y = y + layer["b"]
            h = y.reshape(h.shape[0], ho, wo, out_c).transpose(0, 3, 1, 2)
        elif k == "relu":
            cache.append(h)
            h = np.maximum(h, 0.0)
        elif k == "flatten":
            cache.append(h.shape)
            h = h.reshape(h.shape[0], -1)
    n = x.shape[0]
    z = h - h.max(axis=1, keepdims=True)
    prob = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    loss = -np.mean(np.log(prob[np.arange(n), labels]))
    dh = prob.copy()
    dh[np.arange(n), labels] -= 1.0
    dh /= n
    grads = [None] * len(layers)
    stats = [None] * len(layers)
    for li in range(len(layers) - 1, -1, -1):
        layer, c = layers[li], cache[li]
        k = layer["kind"]
        if k == "dense":
            gw = dh.T @ c
            gb = dh.sum(0) if layer["b"] is not None else None
            grads[li] = (gw, gb)
            stats[li] = (c, dh, c.shape[0], 1)
            dh = dh @ layer["w"]
        elif k == "conv":
            x_shape, p, ho, wo = c
            out_c = layer["w"].shape[0]
            groups = layer.get("groups", 1)
            d = dh.transpose(0, 2, 3, 1).reshape(-1, out_c)
            w_g = _group_rows(layer["w"], groups)
            gw = np.concatenate([dj.T @ pj for dj, pj in
                                 zip(_split_cols(d, groups), _split_cols(p, groups))], 0)
            gb = d.sum(0) if layer["b"] is not None else None
            grads[li] = (gw.reshape(layer["w"].shape), gb)
            stats[li] = (p, d, x_shape[0], ho * wo)
            dcols = np.concatenate([dj @ wj for dj, wj in zip(_split_cols(d, groups), w_g)], 1)
            _, _, kh, kw = layer["w"].shape
            dh = col2im_grad(dcols, x_shape, kh, kw, layer["stride"], layer["pad"],
                             layer["dilation"], ho, wo)
        elif k == "relu":
            dh = dh * (c > 0)
        elif k == "flatten":
            dh = dh.reshape(c)
    return loss, grads, stats


def _split_cols(m, groups):
    """The column groups of a (rows, groups * d) matrix."""
    return np.split(m, groups, axis=1)


def _group_rows(w, groups):
    """Per group, the (out / groups, C / groups * kh * kw) matrix view of a conv weight."""
    return [wj.reshape(wj.shape[0], -1) for wj in np.split(w, groups, axis=0)]


# ------------------------------------------------------------------------------------------
# THOR formulas (float64)
# ------------------------------------------------------------------------------------------
def factors(p, d, n, t):
    """A = P^T P / (N T), G = (N / T) D^T D."""
    return p.T @ p / (n * t), (n / t) * d.T @ d


def block_diag_inverse(m, delta, block=BLOCK):
    """Block-diagonal inverse of M + delta I with blocks of `block` (np.linalg.inv per block)."""
    dim = m.shape[0]
    mh = m + delta * np.eye(dim)
    out = np.zeros_like(mh)
    for s in range(0, dim, block):
        e = min(s + block, dim)
        out[s:e, s:e] = np.linalg.inv(mh[s:e, s:e])
    return out


def diag_blocks(m, block=BLOCK):
    """The diagonal blocks of M, (n_b, s, s) with s = min(d, block), last block zero-padded."""
    dim = m.shape[0]
    s = min(dim, block)
    nb = -(-dim // s)
    out = np.zeros((nb, s, s))
    for b in range(nb):
        e = min((b + 1) * s, dim)
        out[b, :e - b * s, :e - b * s] = m[b * s:e, b * s:e]
    return out


def block_diag_part(m, block=BLOCK):
    """M with the entries outside its diagonal `block`-blocks set to zero."""
    out = np.zeros_like(m)
    for s in range(0, m.shape[0], block):
        e = min(s + block, m.shape[0])
        out[s:e, s:e] = m[s:e, s:e]
    return out


def precondition(g_inv, grad, a_inv, t):
    """(1/T) G^-1 dW A^-1 on the (out, in*kh*kw) matrix view."""
    shape = grad.shape
    g2 = grad.reshape(shape[0], -1)
    return ((g_inv @ g2 @ a_inv) / t).reshape(shape)


def eigen_precondition(eig_g, grad, eig_a, t, lam):
    """Q_G [(Q_G^T dW Q_A) / (T e_G e_A^T + lambda)] Q_A^T on the matrix view (eig_*: np.linalg.eigh
    results (e, Q) of the block-diagonal factors)."""
    (e_g, q_g), (e_a, q_a) = eig_g, eig_a
    shape = grad.shape
    g2 = grad.reshape(shape[0], -1)
    x = (q_g.T @ g2 @ q_a) / (t * np.outer(e_g, e_a) + lam)
    return (q_g @ x @ q_a.T).reshape(shape)


def layernorm_rule(g, n, lam):
    return g / (g * g / n + np.sqrt(lam))


def run_thor(layers, batches, lr, damping, momentum, frequency, weight_decay=0.0,
             nesterov=False, decay_all=True, start_step=0, kl_clip=None, factor_decay=None,
             factor_frequency=None, adaptive_damping=None, scale_bounds=(1e-3, 1e3),
             trace=None, inverse_method="cholesky"):
    """Run THOR for len(batches) steps; returns (layers, losses). Mutates copies only.

    ``lr`` and ``damping`` are per-step arrays (indexed by the global step, clamped at the end).
    ``kl_clip``: KAISA's rule, the preconditioned weight gradients scaled by
    ``min(1, sqrt(kl_clip / (lr^2 sum <pg, g>)))``.
    ``factor_decay``: the inverses are formed from the normalised exponentially weighted means of
    the refreshes' full factors, ``sum_j b^(k-j) F_j / sum_j b^(k-j)``.
    ``factor_frequency`` K (with ``factor_decay``): the factors of every step with
    ``step % K == 0`` enter those means; the inverses are still formed every ``frequency`` steps.
    ``adaptive_damping`` omega: the damping is s * lambda_t; after each refresh step
    rho = (L(w_new) - L(w_old)) / (<g, d> + 0.5 d^T C d) on the step's batch, C the damped
    block-diagonal Kronecker curvature T (A_bd + delta I) (x) (G_bd + delta I) of the weights
    (identity for biases); s *= omega if rho > 3/4, s /= omega if rho < 1/4, clipped to
    ``scale_bounds``. ``trace`` (a list): gets (step, rho, s) after each adaptation.
    ``inverse_method="eigh"``: the weights' direction is the exact inverse of
    T A_bd (x) G_bd + lambda I applied to the gradient (np.linalg.eigh of the block-diagonal
    factors), and its curvature in the LM model is T <D, G_bd D A_bd> + lambda <D, D>.
    """
    collect = factor_frequency or frequency
    history = {}
    layers = [dict(l) for l in layers]
    vel = {}
    inv = {}
    losses = []
    lr = np.atleast_1d(np.asarray(lr, np.float64))
    damping = np.atleast_1d(np.asarray(damping, np.float64))
    scale = 1.0
    for s, (x, y) in enumerate(batches):
        step = start_step + s
        lr_t = lr[min(step, lr.size - 1)]
        lam = damping[min(step, damping.size - 1)]
        if adaptive_damping is not None:
            lam = lam * scale
        curvature = {}
        loss, grads, stats = forward_backward(layers, x, y)
        losses.append(loss)
        updates = {}
        for li, layer in enumerate(layers):
            if grads[li] is None:
                continue
            gw, gb = grads[li]
            groups = layer.get("groups", 1)
            if step % collect == 0:
                p, d, n, t = stats[li]
                pairs = [factors(pj, dj, n, t) for pj, dj in
                         zip(_split_cols(p, groups), _split_cols(d, groups))]
                if factor_decay is not None:
                    history.setdefault(li, []).append(pairs)
                    k = len(history[li])
                    wts = [factor_decay ** (k - 1 - j) for j in range(k)]
                    pairs = [(sum(wj * hj[q][0] for wj, hj in zip(wts, history[li])) / sum(wts),
                              sum(wj * hj[q][1] for wj, hj in zip(wts, history[li])) / sum(wts))
                             for q in range(groups)]
            if step % frequency == 0 and inverse_method == "eigh":
                inv[li] = ([(np.linalg.eigh(block_diag_part(a)), np.linalg.eigh(block_diag_part(g)))
                            for a, g in pairs], (t, lam))
                curvature[li] = ([(block_diag_part(a), block_diag_part(g)) for a, g in pairs],
                                 (t, lam))
            elif step % frequency == 0:
                delta = np.sqrt(lam / t)
                inv[li] = ([(block_diag_inverse(a, delta), block_diag_inverse(g, delta))
                            for a, g in pairs], t)
                curvature[li] = ([(block_diag_part(a + delta * np.eye(len(a))),
                                   block_diag_part(g + delta * np.eye(len(g)))) for a, g in pairs], t)
            w2 = layer["w"].reshape(layer["w"].shape[0], -1)
            rows = w2.shape[0] // groups
            eye = [(np.eye(w2.shape[1]), np.eye(rows))] * groups
            pair_inv, t = inv.get(li, (eye, 1))
            gw2 = gw.reshape(w2.shape)
            if isinstance(t, tuple):  # eigh: ((e_A, Q_A), (e_G, Q_G)) per group, (T, lambda)
                pw = np.concatenate([eigen_precondition(eg_qg, gw2[j * rows:(j + 1) * rows],
                                                        ea_qa, *t)
                                     for j, (ea_qa, eg_qg) in enumerate(pair_inv)], 0)
            else:
                pw = np.concatenate([precondition(g_inv, gw2[j * rows:(j + 1) * rows], a_inv, t)
                                     for j, (a_inv, g_inv) in enumerate(pair_inv)], 0)
            updates[li] = {"w": pw.reshape(gw.shape)}
            if gb is not None:
                updates[li]["b"] = gb
        if kl_clip is not None:
            vg = lr_t ** 2 * sum(np.sum(u["w"] * grads[li][0]) for li, u in updates.items())
            nu = min(1.0, np.sqrt(kl_clip / vg)) if vg > 0 else 1.0
            for u in updates.values():
                u["w"] = nu * u["w"]
        old = [dict(l) for l in layers]
        for li, new in updates.items():
            layer = layers[li]
            for key, g in new.items():
                if weight_decay > 0 and decay_all:
                    g = g + weight_decay * layer[key]
                v = momentum * vel.get((li, key), 0.0) + g
                vel[(li, key)] = v
                upd = g + momentum * v if nesterov else v
                layer[key] = layer[key] - lr_t * upd
        if adaptive_damping is not None and step % frequency == 0:
            inner, curv = 0.0, 0.0
            for li in updates:
                gw, gb = grads[li]
                dw = layers[li]["w"] - old[li]["w"]
                inner += np.sum(gw * dw)
                pairs, t = curvature[li]
                d2 = dw.reshape(dw.shape[0], -1)
                rows = d2.shape[0] // len(pairs)
                for j, (a_d, g_d) in enumerate(pairs):
                    dj = d2[j * rows:(j + 1) * rows]
                    if isinstance(t, tuple):
                        curv += t[0] * np.sum(dj * (g_d @ dj @ a_d)) + t[1] * np.sum(dj * dj)
                    else:
                        curv += t * np.sum(dj * (g_d @ dj @ a_d))
                if gb is not None:
                    db = layers[li]["b"] - old[li]["b"]
                    inner += np.sum(gb * db)
                    curv += np.sum(db * db)
            model = inner + 0.5 * curv
            new_loss = forward_backward(layers, x, y)[0]
            if model < 0:
                rho = (new_loss - loss) / model if np.isfinite(new_loss) else -np.inf
                if rho > 0.75:
                    scale *= adaptive_damping
                elif rho < 0.25:
                    scale /= adaptive_damping
                scale = min(max(scale, scale_bounds[0]), scale_bounds[1])
            else:
                rho = np.nan
            if trace is not None:
                trace.append((step, rho, scale))
    return layers, losses


# ------------------------------------------------------------------------------------------
# BERT-like layers: embedding lookup, LayerNorm, GELU (tanh form), masked-LM loss (float64)
# ------------------------------------------------------------------------------------------
_GELU_C = np.sqrt(2.0 / np.pi)


def gelu_tanh(x):
    """MindSpore ``nn.GELU()`` (approximate=True): 0.5 x (1 + tanh(sqrt(2/pi)(x + 0.044715 x^3)))."""
    return 0.5 * x * (1.0 + np.tanh(_GELU_C * (x + 0.044715 * x ** 3)))


def gelu_tanh_grad(x):
    t = np.tanh(_GELU_C * (x + 0.044715 * x ** 3))
    return 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * _GELU_C * (1.0 + 3 * 0.044715 * x * x)


def layernorm_forward(x, gamma, beta, eps):
    """LayerNorm over the last axis of the rows x (R, H); biased variance."""
    mu = x.mean(axis=-1, keepdims=True)
    var = ((x - mu) ** 2).mean(axis=-1, keepdims=True)
    inv = 1.0 / np.sqrt(var + eps)
    xhat = (x - mu) * inv
    return gamma * xhat + beta, (xhat, inv, gamma)


def layernorm_backward(dy, cache):
    """Returns (dx, dgamma, dbeta)."""
    xhat, inv, gamma = cache
    dxhat = dy * gamma
    dx = inv * (dxhat - dxhat.mean(axis=-1, keepdims=True)
                - xhat * (dxhat * xhat).mean(axis=-1, keepdims=True))
    return dx, (dy * xhat).sum(0), dy.sum(0)


def masked_lm_loss(logits, ids, weights):
    """sum(w * CE) / (sum(w) + 1e-5) as the model zoo's BERT pre-training loss; (loss, dlogits)."""
    z = logits - logits.max(axis=1, keepdims=True)
    prob = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    rows = np.arange(logits.shape[0])
    per = -np.log(prob[rows, ids])
    den = weights.sum() + 1e-5
    loss = (weights * per).sum() / den
    d = prob.copy()
    d[rows, ids] -= 1.0
    return loss, d * (weights / den)[:, None]


def embedding_factors(ids, d_rows, vocab_size, n, t):
    """a = counts / N (diagonal), G = (N / T) D^T D."""
    a = np.bincount(ids.reshape(-1), minlength=vocab_size).astype(np.float64) / n
    return a, (n / t) * d_rows.T @ d_rows


def embedding_precondition(a, g, grad, lam):
    """diag(a + sqrt(lam))^-1 grad (G + sqrt(lam) I)^-1 (full G inverse)."""
    delta = np.sqrt(lam)
    return (grad / (a + delta)[:, None]) @ np.linalg.inv(g + delta * np.eye(g.shape[0]))


def clip_by_norm(g, clip=1.0):
    return g * clip / max(np.sqrt((g * g).sum()), clip)


TINY_BERT_DENSE = ("query", "key", "value", "attn_out", "ffn_in", "ffn_out", "head", "decoder")
TINY_BERT_LAYERNORM = ("layernorm1", "layernorm_attn", "layernorm2", "layernorm3")


def _softmax_last(x):
    z = np.exp(x - x.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


def tiny_bert_forward_backward(p, ids, positions, mlm_ids, mlm_w, eps=1e-7):
    """Embedding -> LayerNorm -> one encoder layer [single-head self-attention (query, key,
    value, attn_out Dense; scores / sqrt(H), softmax), residual, LayerNorm; Dense+GELU -> Dense,
    residual, LayerNorm] -> gather masked positions -> Dense+GELU -> LayerNorm -> Dense (vocab)
    -> masked-LM loss.

    ``p``: {"embedding": (V, H), "<dense>.w": (out, in), "<dense>.b", "<ln>.g", "<ln>.b"}.
    Returns (loss, grads, stats): stats[dense] = (X rows, D rows, N); stats["embedding"] =
    (ids, D rows, N = batch, T = seq); "n" = the batch (N of the LayerNorm rule).
    """
    b, s = ids.shape
    h = p["embedding"].shape[1]
    scale = 1.0 / np.sqrt(h)
    x0 = p["embedding"][ids.reshape(-1)]
    h0, c1 = layernorm_forward(x0, p["layernorm1.g"], p["layernorm1.b"], eps)
    q = (h0 @ p["query.w"].T + p["query.b"]).reshape(b, s, h)
    k = (h0 @ p["key.w"].T + p["key.b"]).reshape(b, s, h)
    v = (h0 @ p["value.w"].T + p["value.b"]).reshape(b, s, h)
    probs = _softmax_last(q @ k.transpose(0, 2, 1) * scale)
    ctx = (probs @ v).reshape(b * s, h)
    za = ctx @ p["attn_out.w"].T + p["attn_out.b"]
    ha, ca = layernorm_forward(h0 + za, p["layernorm_attn.g"], p["layernorm_attn.b"], eps)
    z1 = ha @ p["ffn_in.w"].T + p["ffn_in.b"]
    a1 = gelu_tanh(z1)
    z2 = a1 @ p["ffn_out.w"].T + p["ffn_out.b"]
    h1, c2 = layernorm_forward(ha + z2, p["layernorm2.g"], p["layernorm2.b"], eps)
    idx = (positions + np.arange(b)[:, None] * s).reshape(-1)
    g_rows = h1[idx]
    z3 = g_rows @ p["head.w"].T + p["head.b"]
    a3 = gelu_tanh(z3)
    h3, c3 = layernorm_forward(a3, p["layernorm3.g"], p["layernorm3.b"], eps)
    logits = h3 @ p["decoder.w"].T + p["decoder.b"]
    loss, dlog = masked_lm_loss(logits, mlm_ids.reshape(-1), mlm_w.reshape(-1))
    grads, stats = {}, {"n": b}

    def dense_back(name, x, dz):
        grads[name + ".w"] = dz.T @ x
        grads[name + ".b"] = dz.sum(0)
        stats[name] = (x, dz, x.shape[0])
        return dz @ p[name + ".w"]

    def ln_back(name, dy, cache):
        dx, grads[name + ".g"], grads[name + ".b"] = layernorm_backward(dy, cache)
        return dx

    dh3 = dense_back("decoder", h3, dlog)
    da3 = ln_back("layernorm3", dh3, c3)
    dg = dense_back("head", g_rows, da3 * gelu_tanh_grad(z3))
    dh1 = np.zeros((b * s, h))
    np.add.at(dh1, idx, dg)
    dr = ln_back("layernorm2", dh1, c2)
    da1 = dense_back("ffn_out", a1, dr)
    dha = dr + dense_back("ffn_in", ha, da1 * gelu_tanh_grad(z1))
    dra = ln_back("layernorm_attn", dha, ca)
    dctx = dense_back("attn_out", ctx, dra).reshape(b, s, h)
    dprobs = dctx @ v.transpose(0, 2, 1)
    dv = probs.transpose(0, 2, 1) @ dctx
    dscores = probs * (dprobs - (dprobs * probs).sum(axis=-1, keepdims=True)) * scale
    dq = dscores @ k
    dk = dscores.transpose(0, 2, 1) @ q
    dh0 = dra
    for name, d in (("query", dq), ("key", dk), ("value", dv)):
        dh0 = dh0 + dense_back(name, h0, d.reshape(b * s, h))
    dx0 = ln_back("layernorm1", dh0, c1)
    ge = np.zeros_like(p["embedding"])
    np.add.at(ge, ids.reshape(-1), dx0)
    grads["embedding"] = ge
    stats["embedding"] = (ids, dx0, b, s)
    return loss, grads, stats


def run_thor_tiny_bert(params, batches, lr, damping, momentum, frequency, weight_decay=0.0,
                       clip_grad=False, adaptive_damping=None, scale_bounds=(1e-3, 1e3),
                       trace=None):
    """THOR on :func:`tiny_bert_forward_backward`: Kronecker rule for the Dense weights, the
    embedding rule for the table, the LayerNorm rule for gamma/beta, plain gradient for biases;
    weight decay on every parameter but LayerNorm and biases (the model zoo's decay_filter);
    optional per-tensor clipping to norm 1. ``adaptive_damping``: as :func:`run_thor`, the
    model's curvature (Dense: (A + d) (x) (G + d) block-diagonal; embedding:
    diag(a + d) (x) (G + d); LayerNorm: g*g/N + sqrt(lambda); biases: 1) at d = sqrt(s lambda).
    Returns (params, losses)."""
    p = {k: np.array(v, np.float64) for k, v in params.items()}
    vel, inv, losses = {}, {}, []
    lr = np.atleast_1d(np.asarray(lr, np.float64))
    damping = np.atleast_1d(np.asarray(damping, np.float64))
    vocab = p["embedding"].shape[0]
    scale = 1.0
    for step, batch in enumerate(batches):
        lr_t = lr[min(step, lr.size - 1)]
        lam = damping[min(step, damping.size - 1)]
        if adaptive_damping is not None:
            lam = lam * scale
        loss, grads, stats = tiny_bert_forward_backward(p, *batch)
        old = dict(p)
        losses.append(loss)
        if step % frequency == 0:
            for name in TINY_BERT_DENSE:
                x, d, n = stats[name]
                a, g = factors(x, d, n, 1)
                inv[name] = (block_diag_inverse(a, np.sqrt(lam)), block_diag_inverse(g, np.sqrt(lam)))
            ids, d, n, t = stats["embedding"]
            inv["embedding"] = embedding_factors(ids, d, vocab, n, t)
            inv["lam_embedding"] = lam
        for key in list(p):
            g = grads[key]
            layer, _, kind = key.partition(".")
            if key == "embedding":
                a, gf = inv["embedding"]
                g = embedding_precondition(a, gf, g, inv["lam_embedding"])
            elif layer in TINY_BERT_DENSE and kind == "w":
                a_inv, g_inv = inv[layer]
                g = precondition(g_inv, g, a_inv, 1)
            elif layer in TINY_BERT_LAYERNORM:
                g = layernorm_rule(g, stats["n"], lam)
            if weight_decay > 0 and layer not in TINY_BERT_LAYERNORM and kind != "b":
                g = g + weight_decay * p[key]
            if clip_grad:
                g = clip_by_norm(g)
            v = momentum * vel.get(key, 0.0) + g
            vel[key] = v
            p[key] = p[key] - lr_t * v
        if adaptive_damping is not None and step % frequency == 0:
            delta = np.sqrt(lam)
            inner, curv = 0.0, 0.0
            for key in p:
                d = p[key] - old[key]
                inner += np.sum(grads[key] * d)
                layer, _, kind = key.partition(".")
                if key == "embedding":
                    a, gf = inv["embedding"]
                    curv += np.sum(d * ((a + delta)[:, None] * d @ (gf + delta * np.eye(len(gf)))))
                elif layer in TINY_BERT_DENSE and kind == "w":
                    x, dd, n = stats[layer]
                    a, gf = factors(x, dd, n, 1)
                    curv += np.sum(d * (block_diag_part(gf + delta * np.eye(len(gf))) @ d
                                        @ block_diag_part(a + delta * np.eye(len(a)))))
                elif layer in TINY_BERT_LAYERNORM:
                    curv += np.sum(d * d * (grads[key] ** 2 / stats["n"] + delta))
                else:
                    curv += np.sum(d * d)
            model = inner + 0.5 * curv
            new_loss = tiny_bert_forward_backward(p, *batch)[0]
            rho = (new_loss - loss) / model if model < 0 else np.nan
            if rho > 0.75:
                scale *= adaptive_damping
            elif rho < 0.25:
                scale /= adaptive_damping
            scale = min(max(scale, scale_bounds[0]), scale_bounds[1])
            if trace is not None:
                trace.append((step, rho, scale))
    return p, losses
