"""Lesson 01: the attention mechanism, computed by hand and checked against PyTorch.

What you will learn
  1. What queries (Q), keys (K) and values (V) are, on 3 words with numbers you can check by hand.
  2. The computation softmax(Q K^T / sqrt(d_k)) V step by step, with every shape printed.
  3. Why the scores are divided by sqrt(d_k): variance, saturated rows, the gradient to the queries.
  4. Self-attention: Q, K and V made from the input by three learned layers W_q, W_k, W_v.
  5. Cross-attention: queries from one sequence, keys and values from another (T_q != T_k).
  6. Causal and padding masks; why a query with nothing to attend to (left padding) must give 0, not NaN.
  7. That our function gives the same result as PyTorch's F.scaled_dot_product_attention.
  8. What attention costs: time and memory grow with T^2.

Run it (from the repository root)
  python 01_attention_mechanism.py                  # figures go to the current folder (--out-dir DIR)
  python 01_attention_mechanism.py --quick          # tiny sizes, for a quick check
  python 01_attention_mechanism.py --help           # every flag (--show, --device, --seed, --threads)
It writes attention_weights.png, attention_scaling.png and attention_masks.png.

Shapes
  B batch, T sequence length (T_q queries and T_k keys/values when they differ),
  d_model size of a token's vector, d_k size of a query and a key, d_v size of a value.
  "scores" (..., T_q, T_k) are before the softmax, "weights" (..., T_q, T_k) after it.
"""
import math
import textwrap

import common  # first: it checks $OMP_NUM_THREADS before torch reads it
import torch
import torch.nn as nn
import torch.nn.functional as F

from common import claims, fmt  # claims: each sentence below that states a property is checked

# %% Knobs: edit these and re-run
# The hand-worked example (sections 1-2). Features of Q and K: (article, noun, verb, past tense).
TOKENS = ["the", "cat", "sat"]
HAND_Q = [[0, 2, 0, 0],    # "the" looks for the noun it belongs to
          [1, 0, 1, 0],    # "cat" looks for its article and its verb
          [0, 3, 0, 0]]    # "sat" looks (strongly) for who sat: a noun
HAND_K = [[2, 0, 0, 0],    # "the" offers: I am an article
          [0, 2, 0, 0],    # "cat" offers: I am a noun
          [0, 0, 2, 2]]    # "sat" offers: I am a verb, in the past tense
HAND_V = [[0, 0],          # what each word hands over: (about an animal, about an action)
          [1, 0],
          [0, 1]]
D_MODEL = 8                # size of each token's vector in sections 4-6
D_K = 4                    # size of the queries, keys and values made by W_q, W_k, W_v
SEQ_LEN = 6                # T in the self-attention and mask examples
LENGTHS = [6, 4]           # real tokens in each sequence of the batch; the rest is padding
T_Q_CROSS, T_K_CROSS = 3, 5            # cross-attention: 3 queries look at 5 keys
D_K_SWEEP = [4, 16, 64, 256, 512]      # section 3: the d_k values measured
N_KEYS_SWEEP = 16          # keys per query in section 3 (a uniform softmax gives each 1/16)
N_QUERIES_SWEEP = 500      # random queries per d_k in section 3
SATURATED = 0.99           # section 3: a row is saturated when one key holds more than this weight
T_SWEEP = [256, 512, 1024, 2048]       # section 8: sequence lengths timed (d_k = COST_D_K)
COST_D_K = 64              # section 8: size of the queries and keys timed
QUICK_D_K_SWEEP, QUICK_N_QUERIES, QUICK_T_SWEEP = [4, 16, 64], 50, [64, 128, 256]  # with --quick


# %% Building blocks
def causal_mask(T: int, device=None) -> torch.Tensor:
    """A (T, T) boolean mask, True on and below the diagonal: query t may attend to keys 0..t.

    True = may attend (the convention of F.scaled_dot_product_attention). Row = query position,
    column = key position; everything above the diagonal is the future and is blocked.
    """
    return torch.tril(torch.ones(T, T, dtype=torch.bool, device=device))


def scaled_dot_product_attention(query, key, value, mask=None):
    """Attention: each query takes a weighted average of the values, weighted by key similarity.

    query (..., T_q, d_k), key (..., T_k, d_k), value (..., T_k, d_v).
    mask: optional boolean, broadcastable to (..., T_q, T_k), True = may attend.
    Returns (output (..., T_q, d_v), weights (..., T_q, T_k)). Each row of weights sums to 1,
    except a query row with nothing to attend to, whose weights and output are all 0 (not NaN).
    """
    d_k = query.size(-1)
    # scores = Q K^T / sqrt(d_k): the division keeps the scores' variance near 1 (section 3)
    scores = query @ key.transpose(-2, -1) / math.sqrt(d_k)  # (..., T_q, d_k) @ (..., d_k, T_k) -> (..., T_q, T_k)
    if mask is not None:
        if mask.dtype != torch.bool:
            raise TypeError(f"mask must be boolean (True = may attend), got {mask.dtype}")
        # Blocked keys get weight exp(-inf) = 0. In the backward pass this masked_fill also sets the
        # gradient of every blocked score to 0: for a row with no key at all the softmax's gradient
        # is NaN, and this replacement (not a multiplication: NaN * 0 = NaN) keeps NaN out of Q and K.
        scores = scores.masked_fill(~mask, float("-inf"))
    # weights = softmax(scores) over the keys
    weights = torch.softmax(scores, dim=-1)  # (..., T_q, T_k)
    if mask is not None:
        # A row where every key is blocked is softmax(all -inf) = 0/0 = NaN; make its weights 0.
        weights = weights.masked_fill(~mask, 0.0)
    # output = weights V
    output = weights @ value  # (..., T_q, T_k) @ (..., T_k, d_v) -> (..., T_q, d_v)
    return output, weights


class AttentionHead(nn.Module):
    """One attention head with learned projections: queries from x_q, keys and values from x_kv.

    Self-attention is head(x, x); cross-attention is head(x_q, x_kv) with another sequence as x_kv.
    forward(x_q (B, T_q, d_model), x_kv (B, T_k, d_model), mask=None)
    -> (output (B, T_q, d_k), weights (B, T_q, T_k)).
    """

    def __init__(self, d_model: int, d_k: int):
        super().__init__()
        self.W_q = nn.Linear(d_model, d_k, bias=False)  # what each token looks for
        self.W_k = nn.Linear(d_model, d_k, bias=False)  # what each token offers to be found by
        self.W_v = nn.Linear(d_model, d_k, bias=False)  # what each token hands over (d_v = d_k)

    def forward(self, x_q, x_kv, mask=None):
        Q = self.W_q(x_q)   # (B, T_q, d_model) -> (B, T_q, d_k)
        K = self.W_k(x_kv)  # (B, T_k, d_model) -> (B, T_k, d_k)
        V = self.W_v(x_kv)  # (B, T_k, d_model) -> (B, T_k, d_k)
        return scaled_dot_product_attention(Q, K, V, mask)


def query_gradient_size(weights, keys, scale):
    """Per query, the size (Frobenius norm) of d weights / d q: the gradient that reaches the query.

    weights = softmax(K q / scale), so d weights / d q = (diag(p) - p p^T) K / scale.
    weights (N, T_k), keys (N, T_k, d_k) -> (N,)
    """
    softmax_jacobian = torch.diag_embed(weights) - weights[:, :, None] * weights[:, None, :]  # (N, T_k, T_k)
    return (softmax_jacobian @ keys / scale).flatten(1).norm(dim=1)  # (N, T_k, d_k) -> (N,)


def vec(t) -> str:
    """A short vector as '(0.1, 0.2)', rounded for reading."""
    return "(" + ", ".join(fmt(v, 3) for v in t.tolist()) + ")"


def plot_weights(ax, weights, title, labels=None, mask=None):
    """Annotated heatmap of a (T_q, T_k) weight matrix: key on x, query on y, blocked cells grey."""
    import seaborn as sns

    w = weights.detach().float().cpu().numpy()
    sns.heatmap(w, ax=ax, mask=None if mask is None else ~mask.cpu().numpy(), vmin=0.0, vmax=1.0,
                cmap="viridis", square=True, annot=w.size <= 64, fmt=".2f", annot_kws={"fontsize": 8},
                xticklabels=labels or "auto", yticklabels=labels or "auto",
                cbar_kws={"label": "attention weight", "shrink": 0.8})
    ax.set_facecolor("lightgrey")  # masked (blocked) cells are left out and show this background
    ax.tick_params(axis="y", labelrotation=0)
    ax.set(xlabel="key position (attended to)", ylabel="query position (attending)")
    ax.set_title("\n".join(textwrap.fill(line, 64) for line in title.split("\n")), fontsize=10)


# %% 1. Q, K and V on a tiny example you can follow by hand
def section_1_qkv_by_hand(device):
    common.section(1, "Q, K and V on a tiny example you can follow by hand")
    d_k = len(HAND_Q[0])
    common.explain(f"""Attention lets each token gather information from the other tokens. Every
    token has three vectors: a query (what it looks for), a key (what it offers, so that others
    can find it) and a value (what it hands over when it is found). Here they are picked by hand
    for {len(TOKENS)} words, with d_k = {d_k} features (article, noun, verb, past tense), so
    sqrt(d_k) = {fmt(math.sqrt(d_k))}.""")
    Q = torch.tensor(HAND_Q, dtype=torch.float32, device=device)  # (T, d_k)
    K = torch.tensor(HAND_K, dtype=torch.float32, device=device)  # (T, d_k)
    V = torch.tensor(HAND_V, dtype=torch.float32, device=device)  # (T, d_v)
    common.show_tensor("Q (one row per word: what it looks for)", Q)
    common.show_tensor("K (what each word offers)", K)
    common.show_tensor("V (what each word hands over)", V)

    t = len(TOKENS) - 1
    q = Q[t]
    print(f"\nBy hand, for the query of {TOKENS[t]!r}, q = {vec(q)}:")
    dots = [float(q @ K[j]) for j in range(len(TOKENS))]
    # scaled score = q . k_j / sqrt(d_k); weight_j = exp(scaled_j) / sum_i exp(scaled_i)
    scaled = [d / math.sqrt(d_k) for d in dots]
    exps = [math.exp(s) for s in scaled]
    weights = torch.tensor([e / sum(exps) for e in exps], device=device)
    common.table([[f"{j} {TOKENS[j]!r}", dots[j], scaled[j], exps[j], float(weights[j]),
                   vec(weights[j] * V[j])] for j in range(len(TOKENS))],
                 ["key", "q . k", "/ sqrt(d_k)", "exp", "weight = exp / sum", "weight * v"])
    output = weights @ V  # (T_k,) @ (T_k, d_v) -> (d_v,)
    top = [TOKENS[j] for j in range(len(TOKENS)) if weights[j] >= weights.max() - 1e-6]  # most weight
    best = [TOKENS[j] for j in range(len(TOKENS)) if dots[j] >= max(dots) - 1e-6]          # largest q . k
    common.explain(f"""The exps sum to {fmt(sum(exps))}; dividing by that sum turns them into weights
    that sum to {fmt(float(weights.sum()))}. The output of {TOKENS[t]!r} is the weighted sum of the
    value rows: {vec(output)}.""")
    to = ("most to " if len(top) == 1 else "equally most to ") + " and ".join(repr(w) for w in top)
    listens = claims.equal("largest-score-wins", f"Attention is a weighted average of values: {TOKENS[t]!r} listens "
                           f"{to} (weight {fmt(float(weights.max()))}), the key{'s' * (len(top) > 1)} with the largest "
                           f"q . k.", top, best, f"most weight on {top}, largest q . k on {best}").say()
    return Q, K, V, output, listens


# %% 2. The whole computation as matrices, shape by shape
def section_2_step_by_step(Q, K, V, hand_output, args):
    common.section(2, "The whole computation as matrices, shape by shape")
    common.explain("""Doing every query at once is two matrix products and a softmax. Each line below
    is one step of scaled_dot_product_attention, with its shape.""")
    d_k = Q.size(-1)
    scores = Q @ K.transpose(-2, -1)  # (T_q, d_k) @ (d_k, T_k) -> (T_q, T_k)
    common.show_tensor("scores = Q @ K^T", scores)
    scaled = scores / math.sqrt(d_k)  # (T_q, T_k)
    common.show_tensor(f"scores / sqrt(d_k) = scores / {fmt(math.sqrt(d_k))}", scaled)
    weights = torch.softmax(scaled, dim=-1)  # (T_q, T_k), softmax over the keys of each row
    common.show_tensor("weights = softmax(scores / sqrt(d_k)) over each row", weights)
    output = weights @ V  # (T_q, T_k) @ (T_k, d_v) -> (T_q, d_v)
    common.show_tensor("output = weights @ V", output)

    fn_output, fn_weights = scaled_dot_product_attention(Q, K, V)
    claims.same("matches-by-hand", "The last output row equals section 1's by-hand result", output[-1],
                hand_output).say()
    steps = claims.same("function-matches-steps", "The building block scaled_dot_product_attention computes "
                        "these steps, output = softmax(Q K^T / sqrt(d_k)) V: (T_q, d_k) @ (d_k, T_k) -> scores "
                        "(T_q, T_k); weights (T_q, T_k) @ V (T_k, d_v) -> output (T_q, d_v)", fn_output, output,
                        hint="compare its lines with the steps above").say()
    rows = claims.same("rows-sum-to-1", "Each row of the weights sums to 1", fn_weights.sum(-1), 1.0,
                       hint="the softmax must run over the keys, dim=-1").say()

    fig, ax = common.new_figure(figsize=(5.6, 4.6), show=args.show)
    labels = [f"{i} {w}" for i, w in enumerate(TOKENS)]
    plot_weights(ax, fn_weights, "Attention weights of the hand-picked example\n(each row: how much a word "
                 f"listens to each word)\n{rows.title()}", labels)
    common.save_figure(fig, args.out_dir, "attention_weights.png", show=args.show)
    return steps


# %% 3. Why divide by sqrt(d_k)
def scaling_statistics(d_k, n_queries, device):
    """Random q and k with N(0, 1) entries; per d_k, statistics of the softmax without and with scaling."""
    q = torch.randn(n_queries, d_k, 1, device=device)              # one query per row, as a column
    k = torch.randn(n_queries, N_KEYS_SWEEP, d_k, device=device)   # (N, T_k, d_k)
    stats = {"d_k": d_k}
    for name, scale in (("raw", 1.0), ("scaled", math.sqrt(d_k))):
        scores = (k @ q).squeeze(-1) / scale  # (N, T_k, d_k) @ (N, d_k, 1) -> (N, T_k)
        weights = torch.softmax(scores, dim=-1)
        top = weights.max(-1).values          # (N,) the largest weight of each row
        grad = query_gradient_size(weights, k, scale)  # (N,)
        stats[name] = {"var": float(scores.var()), "top": float(top.mean()),
                       "saturated": float((top > SATURATED).float().mean()),
                       "grad": [float(grad.quantile(f)) for f in (0.1, 0.5, 0.9)]}
    return stats


def section_3_scaling(device, args):
    common.section(3, "Why divide by sqrt(d_k)")
    common.explain(f"""A score q . k is a sum of d_k products. If the entries of q and k have mean 0
    and variance 1, each product has variance 1, so the sum has variance d_k. Large scores push the
    softmax to give almost all weight to one key (a saturated row: here more than {SATURATED}).
    We measure this for random q and k, {N_KEYS_SWEEP} keys per query (a uniform row gives each key
    {fmt(1 / N_KEYS_SWEEP)}; top weight: the average largest weight of a row), and the size of the
    gradient that reaches the query, |d weights / d q| = |(diag(p) - p p^T) K / scale|, where scale is
    1 or sqrt(d_k).""")
    sweep = QUICK_D_K_SWEEP if args.quick else D_K_SWEEP
    n_queries = QUICK_N_QUERIES if args.quick else N_QUERIES_SWEEP
    rows = [scaling_statistics(d_k, n_queries, device) for d_k in sweep]
    common.table([[r["d_k"], r["raw"]["var"], r["scaled"]["var"], r["raw"]["top"], r["scaled"]["top"],
                   f"{r['raw']['saturated']:.0%}", f"{r['scaled']['saturated']:.0%}"] for r in rows],
                 ["d_k", "var raw", "var scaled", "top weight raw", "scaled", "saturated raw", "scaled"])
    print(f"\n  |d weights / d q| over {n_queries} queries: the median row and the 90th percentile")
    common.table([[r["d_k"], r["raw"]["grad"][1], r["raw"]["grad"][2], r["scaled"]["grad"][1],
                   r["scaled"]["grad"][2]] for r in rows],
                 ["d_k", "raw median", "raw 90%", "scaled median", "scaled 90%"])
    first, last, raw, scaled = rows[0], rows[-1], rows[-1]["raw"], rows[-1]["scaled"]
    tol = max(0.3, 4 / math.sqrt(n_queries))  # sampling noise: a variance measured on n_queries rows
    ratio = max((r["raw"]["var"] / r["d_k"] for r in rows), key=lambda v: abs(v - 1))  # the furthest from 1
    var, grad = [r["scaled"]["var"] for r in rows], [r["scaled"]["grad"][1] for r in rows]
    alike = f"variance {fmt(min(var), 3)}-{fmt(max(var), 3)}, median gradient {fmt(min(grad), 3)}-{fmt(max(grad), 3)}"
    said = [claims.near("variance-follows-d_k", f"Unscaled, the variance follows d_k ({fmt(first['raw']['var'])} at "
                        f"d_k = {first['d_k']}, {fmt(raw['var'])} at d_k = {last['d_k']}) and the share of saturated "
                        f"rows grows from {first['raw']['saturated']:.0%} to {raw['saturated']:.0%}.", ratio, 1, tol,
                        f"variance / d_k {fmt(ratio, 3)} at worst").say(),
            claims.check("scaling-keeps-variance", all(abs(v - 1) <= tol for v in var) and max(grad) < (1 + tol)
                         * min(grad), f"Scaled, every d_k looks alike ({alike}): training sees the same softmax at "
                         "any d_k.", alike, f"variances within {fmt(tol, 2)} of 1, gradients within a factor "
                         f"{fmt(1 + tol, 2)}").say()]
    if raw["saturated"] >= 0.5:  # most rows saturated: compare the gradient they send back
        said.append(claims.below("saturated-rows-starve", f"At d_k = {last['d_k']}, {raw['saturated']:.0%} of "
                                 "unscaled rows are saturated, and a saturated row sends little gradient back to its "
                                 f"query: the median row gets {fmt(raw['grad'][1], 3)}, against "
                                 f"{fmt(scaled['grad'][1], 3)} scaled (the 90th percentile: {fmt(raw['grad'][2], 3)}).",
                                 raw["grad"][1], scaled["grad"][1]).say())
        saturation = said[-1].text  # key insight 3 ends with the same sentence
    else:
        saturation = (f"Up to d_k = {last['d_k']} at most {raw['saturated']:.0%} of unscaled rows are saturated "
                      f"(median gradient {fmt(raw['grad'][1], 3)}): larger d_k show the rows that starve.")
        print("  " + saturation)
    plot_scaling(rows, args)
    return rows, said, saturation


def plot_scaling(rows, args):
    fig, axes = common.new_figure(1, 3, figsize=(13, 4), show=args.show)
    d = [r["d_k"] for r in rows]
    for name, marker in (("raw", "o-"), ("scaled", "s-")):
        axes[0].loglog(d, [r[name]["var"] for r in rows], marker, label=name)
        axes[1].semilogx(d, [r[name]["saturated"] for r in rows], marker, label=name)
        low, mid, high = ([r[name]["grad"][i] for r in rows] for i in range(3))
        axes[2].loglog(d, mid, marker, label=f"{name}: median")
        axes[2].fill_between(d, low, high, alpha=0.25, label=f"{name}: 10%-90% of rows")
    axes[0].loglog(d, d, "k:", label="y = d_k")
    axes[0].set(xlabel="d_k", ylabel="variance of the scores", title="Score variance: raw q . k vs q . k / sqrt(d_k)")
    axes[1].set(xlabel="d_k", ylabel=f"share of rows with a weight > {SATURATED}", ylim=(-0.03, 1.03),
                title="Saturated rows: one key takes almost everything")
    axes[2].set(xlabel="d_k", ylabel="|d weights / d q| per query (log)", title="Size of the gradient that reaches q")
    for ax in axes:
        ax.set_xticks(d, [str(v) for v in d])
        ax.minorticks_off()
        ax.legend(fontsize=8)
    common.save_figure(fig, args.out_dir, "attention_scaling.png", show=args.show)


# %% 4. Self-attention: Q, K and V come from the input through W_q, W_k, W_v
def section_4_self_attention(device):
    common.section(4, "Self-attention: Q, K and V come from the input through W_q, W_k, W_v")
    common.explain(f"""In a model nobody picks Q, K and V by hand. Three learned linear layers make them
    from the token vectors x: Q = x W_q^T, K = x W_k^T, V = x W_v^T; in self-attention all three come
    from the same sequence. Here x is random (B = {len(LENGTHS)} sequences of T = {SEQ_LEN} tokens,
    d_model = {D_MODEL}) and the layers untrained: the weights mean nothing yet; training shapes them.""")
    x = torch.randn(len(LENGTHS), SEQ_LEN, D_MODEL, device=device)  # (B, T, d_model)
    head = AttentionHead(D_MODEL, D_K).to(device).eval()
    with torch.no_grad():  # only looking here, no training: no gradients needed
        Q, K, V = head.W_q(x), head.W_k(x), head.W_v(x)  # each (B, T, d_k)
        output, weights = head(x, x)  # self-attention: (B, T, d_k), (B, T, T)
    common.table([["x", str(tuple(x.shape)), "(B, T, d_model): the token vectors"],
                  ["W_q.weight", str(tuple(head.W_q.weight.shape)),
                   "(d_k, d_model): nn.Linear stores (out, in), computes x @ W^T"],
                  ["Q, K, V", str(tuple(Q.shape)) if Q.shape == K.shape == V.shape else "differ", "(B, T, d_k) each"],
                  ["weights", str(tuple(weights.shape)), "(B, T_q, T_k): T_q = T_k = T"],
                  ["output", str(tuple(output.shape)), "(B, T, d_k): one new vector per token"]],
                 ["tensor", "shape", "meaning"])
    claims.equal("head-parameters", f"Parameters: 3 * d_k * d_model = 3 * {D_K} * {D_MODEL} = {3 * D_MODEL * D_K} "
                 "(W_q, W_k, W_v, no biases).", sum(p.numel() for p in head.parameters()), 3 * D_MODEL * D_K).say()
    return x, head


# %% 5. Cross-attention: queries from one sequence, keys and values from another
def section_5_cross_attention(head, device):
    common.section(5, "Cross-attention: queries from one sequence, keys and values from another")
    common.explain(f"""In a translation model the decoder's tokens (queries) look at the encoder's
    tokens (keys and values). The same head works unchanged: only where Q and K, V come from
    differs. Here T_q = {T_Q_CROSS} queries look at T_k = {T_K_CROSS} keys.""")
    B = len(LENGTHS)
    x_dec = torch.randn(B, T_Q_CROSS, D_MODEL, device=device)  # (B, T_q, d_model)
    x_enc = torch.randn(B, T_K_CROSS, D_MODEL, device=device)  # (B, T_k, d_model)
    with torch.no_grad():
        output, weights = head(x_dec, x_enc)  # (B, T_q, d_k), (B, T_q, T_k)
        shapes = [tuple(head.W_q(x_dec).shape), tuple(head.W_k(x_enc).shape), tuple(head.W_v(x_enc).shape)]
    common.table([["queries from x_dec", str(shapes[0]), "(B, T_q, d_k)"],
                  ["keys from x_enc", str(shapes[1]), "(B, T_k, d_k)"],
                  ["values from x_enc", str(shapes[2]), "(B, T_k, d_v)"],
                  ["weights", str(tuple(weights.shape)), "(B, T_q, T_k): not square"],
                  ["output", str(tuple(output.shape)), "(B, T_q, d_v): one row per query"]],
                 ["tensor", "shape", "shape names"])
    common.show_tensor("weights[0] (rows: decoder queries, columns: encoder keys)", weights[0])
    claims.same("cross-rows-sum-to-1", f"The output has one row per query: the T_k = {T_K_CROSS} keys are summed "
                "away in a weighted average whose weights still sum to 1", weights.sum(-1), 1.0,
                hint="the softmax must run over the keys").say()
    return tuple(weights.shape)


# %% 6. Masks: causal and padding
def example_masks(T, lengths, device):
    """The masks of section 6 (boolean, True = may attend) and keep, the (B, T) real-token flags."""
    causal = causal_mask(T, device)                                      # (T, T)
    keep = torch.arange(T, device=device) < lengths[:, None]             # (B, T): tokens, then padding
    keep_left = torch.arange(T, device=device) >= T - lengths[:, None]   # (B, T): padding, then tokens
    return keep, {"causal": causal,
                  "padding": keep[:, None, :],                    # (B, 1, T_k): same for every query
                  "causal + padding": causal & keep[:, None, :],  # (T, T) & (B, 1, T_k) -> (B, T, T)
                  "left padding + causal": causal & keep_left[:, None, :]}


def empty_rows_check(head, x, mask):
    """Queries with no key to attend to: NaN rows of a plain softmax, of ours, and of our gradient."""
    x = x.clone().requires_grad_(True)
    out, _ = head(x, x, mask)
    out.sum().backward()
    out = out.detach()
    empty = ~mask.expand(x.size(0), -1, -1).any(-1)  # (B, T_q): queries that see no key
    with torch.no_grad():
        scores = head.W_q(x) @ head.W_k(x).transpose(-2, -1) / math.sqrt(head.W_q.out_features)
        plain = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)  # no 0 for empty rows
    return {"empty": int(empty.sum()), "plain_nan": int(plain.isnan().any(-1).sum()),
            "ours_nan": int(out.isnan().any(-1).sum()), "grad_nan": int(x.grad.isnan().sum()),
            "empty_out": float(out[empty].abs().max()) if empty.any() else 0.0}  # torch's max keeps NaN


def section_6_masks(x, head, device, args):
    common.section(6, "Masks: causal and padding")
    common.explain("""A mask says which keys each query may use. Ours are boolean with True = may
    attend (as in F.scaled_dot_product_attention). A causal mask hides the future: query t sees keys
    0..t, so a model that predicts the next token cannot peek at it. A padding mask hides the filler
    tokens added so that sequences of different lengths fit in one batch, after the tokens (right
    padding) or before them (left padding, common when a batch of prompts is continued).""")
    B, T = x.shape[0], x.shape[1]
    keep, masks = example_masks(T, torch.tensor(LENGTHS, device=device), device)
    common.show_tensor("causal_mask(T) as 0/1 (1 = may attend)", masks["causal"].int())
    common.show_tensor(f"padding mask keep[:, None, :] (B, 1, T_k), lengths {LENGTHS}", masks["padding"].int())
    with torch.no_grad():
        runs = {name: head(x, x, mask) for name, mask in masks.items()}  # (B, T, d_k), (B, T, T) each
    common.table([[name, str(tuple(mask.shape)), torch.where(~mask, w, 0).amax(),
                   f"{int((~mask.expand_as(w).any(-1)).sum())} of {B * T}"]
                  for (name, mask), (_, w) in zip(masks.items(), runs.values())],
                 ["mask", "shape", "largest weight on a blocked key", "query rows with no key"])
    # Measured where the cells are (above the diagonal, on filler keys): a wrong mask cannot vouch for itself.
    (_, causal), (_, padded) = runs["causal"], runs["padding"]                   # (B, T, T) weights
    above = torch.where(torch.ones_like(causal, dtype=torch.bool).triu(1), causal, 0).amax()  # the future
    on_filler = torch.where(~keep[:, None, :], padded, 0).amax()                 # keys past each length
    row_error = torch.stack([torch.where(mask.expand_as(w).any(-1), (w.sum(-1) - 1).abs(), 0).amax()
                             for mask, (_, w) in zip(masks.values(), runs.values())]).amax()  # rows with a key
    said = {"causal": claims.below("causal-hides-future", "Causal: no weight above the diagonal (the future): "
                                   f"largest {fmt(above)}", above, 1e-6, hint="see causal_mask").say(),
            "padding": claims.below("padding-hides-filler", f"Padding: no weight on the filler keys: largest "
                                    f"{fmt(on_filler)}", on_filler, 1e-6, hint="a padding mask blocks keys").say(),
            "rows": claims.below("masked-rows-sum-to-1", "Every row with a key to attend to sums to 1 over its "
                                 f"keys (largest error {fmt(row_error)})", row_error, 1e-5).say()}
    empty = empty_rows_check(head, x, masks["left padding + causal"])
    nan_rows, out, nan_grad = empty["ours_nan"], fmt(empty["empty_out"]), empty["grad_nan"]
    common.explain(f"""
    With left padding and a causal mask, a padding query at the start sees only keys at or before
    it, all padding: {empty['empty']} queries have no key at all. A plain softmax gives NaN in
    {empty['plain_nan']} rows there. One NaN would spread through every later layer and the loss,
    even though those rows are ignored.""")
    said["empty"] = claims.check("empty-rows-give-0", nan_rows == 0 == nan_grad and empty["empty_out"] == 0,
                                 f"Ours gives 0, not NaN, on those rows: {nan_rows} NaN rows, |output| up to {out}, "
                                 f"{nan_grad} NaN in the gradient", f"{nan_rows}, {out} and {nan_grad}",
                                 "0, 0 and 0", "see the masked_fill after the softmax").say()
    s, said["polarity"] = section_6_polarity(x, keep, device)
    plot_masks(runs, masks, s, said, args)
    return said, empty


def section_6_polarity(x, keep, device):
    """keep and ~keep as nn.MultiheadAttention's key_padding_mask. Returns the sequence it shows, and the claim."""
    B, T = keep.shape
    padded = [b for b in range(B) if 0 < LENGTHS[b] < T]  # sequences with tokens AND padding
    s = min(padded, key=lambda b: LENGTHS[b]) if padded else 0  # the most padded of them
    # nn.MultiheadAttention's boolean masks mean the opposite: True = blocked (do NOT attend).
    mha = nn.MultiheadAttention(D_MODEL, num_heads=1, batch_first=True).to(device).eval()
    polarity = []
    with torch.no_grad():
        for label, key_padding_mask in (("~keep (True = padding)", ~keep), ("keep, unchanged (a bug)", keep)):
            _, w = mha(x, x, x, key_padding_mask=key_padding_mask)  # (B, T_q, T_k)
            polarity.append([label, float(w[s][:, ~keep[s]].sum(-1).mean()), int(w.isnan().any(-1).sum())])
    common.table([[label, on_padding, f"{nan_rows} of {B * T}"] for label, on_padding, nan_rows in polarity],
                 ["key_padding_mask", f"weight on padding, sequence {s}", "NaN rows"])
    said = claims.below("mha-polarity", "nn.MultiheadAttention's key_padding_mask (and its boolean attn_mask) "
                        f"use the opposite polarity, True = blocked: with ~keep, sequence {s} puts "
                        f"{fmt(polarity[0][1])} of its weight on padding. Invert our mask with ~ before passing it.",
                        polarity[0][1], 1e-6).say()
    if polarity[0][2]:
        common.explain(f"""Even with ~keep, {polarity[0][2]} rows are NaN: nn.MultiheadAttention gives NaN to a
        query with no key at all (a sequence of length 0).""", indent=2)
    if not padded:
        common.explain(f"""No sequence in LENGTHS = {LENGTHS} has both tokens and padding, so sequence {s} shows
        no difference here nor in the figure: give one a length from 1 to {T - 1}.""", indent=2)
    return s, said


def plot_masks(runs, masks, s, said, args):
    T, n = masks["causal"].size(-1), LENGTHS[s]
    no_key = ~masks["left padding + causal"].expand(len(LENGTHS), T, T)[s].any(-1)  # (T_q,)
    empty = no_key.nonzero().flatten().tolist()                                     # those queries
    titles = {"causal": said["causal"].title(), "padding": said["padding"].title(),
              "causal + padding": "Causal and padding combined",
              "left padding + causal": (f"Left padding + causal: rows {empty[0]}..{empty[-1]} have no key\n"
                                        + said["empty"].title() if empty else "Left padding + causal")}
    fig, axes = common.new_figure(2, 2, figsize=(10, 9.6), show=args.show)
    for ax, (name, (_, w)) in zip(axes.flat, runs.items()):
        plot_weights(ax, w[s], f"{titles[name]}\n(sequence {s}, length {n} of {T}; grey = blocked)",
                     mask=masks[name].expand_as(w)[s])
    common.save_figure(fig, args.out_dir, "attention_masks.png", show=args.show)


# %% 7. Checked against PyTorch's F.scaled_dot_product_attention
def section_7_check_against_pytorch(device):
    common.section(7, "Checked against PyTorch's F.scaled_dot_product_attention")
    common.explain("""PyTorch ships attention as one fused function. Same inputs, same boolean mask
    (True = may attend): the outputs must agree up to rounding. The inputs have an extra heads
    dimension, (B, n_heads, T, d_k), to show that any leading dimensions work.""")
    B, H, T = len(LENGTHS), 2, SEQ_LEN
    q, k, v = (torch.randn(B, H, T, D_K, device=device) for _ in range(3))
    q_x = torch.randn(B, H, T_Q_CROSS, D_K, device=device)
    k_x, v_x = (torch.randn(B, H, T_K_CROSS, D_K, device=device) for _ in range(2))
    keep, masks = example_masks(T, torch.tensor(LENGTHS, device=device), device)
    cases = [("no mask", (q, k, v), None, {}),
             ("causal vs is_causal=True", (q, k, v), masks["causal"], {"is_causal": True}),
             ("padding (B, 1, 1, T_k)", (q, k, v), masks["padding"][:, None], None),
             ("padded queries too (B, 1, T_q, T_k)", (q, k, v),
              (keep[:, :, None] & keep[:, None, :])[:, None], None),
             ("left padding + causal (B, 1, T, T)", (q, k, v), masks["left padding + causal"][:, None], None),
             ("cross-attention", (q_x, k_x, v_x), None, {})]
    rows, n_empty = [], 0
    for name, (qq, kk, vv), mask, ref_kwargs in cases:
        ours, _ = scaled_dot_product_attention(qq, kk, vv, mask)
        ref_kwargs = {"attn_mask": mask} if ref_kwargs is None else ref_kwargs  # the same mask, or is_causal
        ref = F.scaled_dot_product_attention(qq, kk, vv, **ref_kwargs)
        if mask is not None:  # count the query rows with no key at all, in every head
            n_empty += int((~mask.any(-1, keepdim=True)).expand(*ours.shape[:-1], 1).sum())
        rows.append([name, str(tuple(qq.shape)), str(tuple(kk.shape)),
                     str(tuple(mask.shape)) if mask is not None else "-", (ours - ref).abs().max()])
    common.table(rows, ["case", "query", "key", "mask", "largest |diff|"])
    worst = torch.stack([r[-1] for r in rows]).max().item()  # torch's max keeps a NaN, Python's max() not
    return claims.below("matches-pytorch", f"Our function agrees with F.scaled_dot_product_attention in every "
                        f"case, the {n_empty} query rows with no key at all included: largest difference "
                        f"{fmt(worst)} (float32 rounding is about 1e-7).", worst, 1e-5,
                        hint="find the nan or large number in the table").say()


# %% 8. What attention costs: T^2
def section_8_cost(device, args):
    common.section(8, "What attention costs: time and memory grow with T^2")
    common.explain(f"""Every query is compared with every key, so one head makes a (T, T) matrix of
    scores and one of weights. We time our function on T tokens with d_k = {COST_D_K} (the fastest of
    5 runs, common.best_time), and, for comparison, a linear layer d_k -> d_k on the same tokens,
    whose work grows like T.""")
    import numpy as np

    sweep = QUICK_T_SWEEP if args.quick else T_SWEEP
    layer = nn.Linear(COST_D_K, COST_D_K).to(device)
    rows = []
    with torch.no_grad():
        for T in sweep:
            q, k, v = (torch.randn(T, COST_D_K, device=device) for _ in range(3))  # (T, d_k)
            _, weights = scaled_dot_product_attention(q, k, v)                       # (T, T)
            rows.append([T, common.best_time(lambda: scaled_dot_product_attention(q, k, v), device) * 1e3,
                         common.best_time(lambda: layer(q), device) * 1e3,
                         weights.numel() * weights.element_size() / 2**20])
    common.table(rows, ["T", "attention (ms)", "linear layer (ms)", "weights (MiB, T^2 x 4 bytes)"])
    log_T = np.log([r[0] for r in rows])
    slope = {name: float(np.polyfit(log_T, np.log([r[i] for r in rows]), 1)[0])  # time grows as T^slope
             for i, name in ((1, "attention"), (2, "linear"))}
    a, b, long_T = fmt(slope["attention"], 3), fmt(slope["linear"], 3), 32 * 1024
    growth = ("fixed costs per call and cache effects make the exponents stray from 2 and 1" if slope["attention"]
              >= 1.8 else "these T are too short to show T^2: fixed costs per call still dominate such small calls")
    faster = claims.above("attention-outgrows-linear", f"Cost: over these T attention's time grew like T^{a}, "
                          f"faster than a linear layer's, T^{b} ({growth}).", slope["attention"] - slope["linear"],
                          0, f"exponents {a} and {b}").say()
    common.explain(f"""Doubling T doubles the linear layer's arithmetic and quadruples attention's. The
    weights' size is computed, not measured: T^2 float32 numbers, so at T = {long_T:,} one head's
    weights alone would take {fmt(long_T ** 2 * 4 / 2**30, 3)} GiB: why long contexts need fused kernels
    that never store the (T, T) matrix, or other attention variants.""")
    return slope, faster


# %% Key insights
def key_insights(listens, steps, scaling, cross_shape, masks, agree, cost):
    (rows, said, saturation), (on_masks, empty) = scaling, masks
    first, last = rows[0], rows[-1]  # the smallest and the largest d_k
    common.key_insights([
        listens,
        steps,
        claims.every("insight-scaling", f"Raw scores have variance ~ d_k ({fmt(first['raw']['var'])} at "
                     f"d_k={first['d_k']}, {fmt(last['raw']['var'])} at d_k={last['d_k']}); divided by sqrt(d_k) it "
                     f"stays near 1 ({fmt(last['scaled']['var'])}). {saturation}", said),
        "Self-attention: Q, K, V all come from one sequence through W_q, W_k, W_v. "
        f"Cross-attention: queries from another; weights were {cross_shape} = (B, T_q, T_k).",
        claims.every("insight-masks", "Masks are boolean, True = may attend: no weight above the diagonal with a "
                     "causal mask, none on the filler keys with a padding mask. Left padding with a causal mask "
                     f"left {empty['empty']} queries without keys: {empty['ours_nan']} NaN rows in ours, "
                     f"{empty['plain_nan']} in a plain softmax. nn.MultiheadAttention's masks use the opposite "
                     "polarity.", on_masks.values()),
        agree,
        cost,
    ])


def check_knobs():
    """An edited knob that cannot work stops the lesson with one line naming it (common.knobs)."""
    for name in ("D_MODEL", "D_K", "SEQ_LEN", "T_Q_CROSS", "T_K_CROSS", "N_KEYS_SWEEP", "COST_D_K",
                 "N_QUERIES_SWEEP", "QUICK_N_QUERIES"):
        common.whole(globals()[name], name, low=1)
    rows = [len(TOKENS), len(HAND_Q), len(HAND_K), len(HAND_V)]
    common.require(len(set(rows)) == 1 and len({len(r) for r in HAND_Q + HAND_K} - {0}) == 1
                   and len({len(r) for r in HAND_V} - {0}) == 1,
                   f"TOKENS, HAND_Q, HAND_K and HAND_V need one row per word (they have {rows} rows), "
                   "HAND_Q and HAND_K rows of one length; edit the knobs at the top of the lesson")
    common.whole_numbers(LENGTHS, "LENGTHS", low=0, high=SEQ_LEN, hint=f"SEQ_LEN = {SEQ_LEN} is the longest")
    common.number(SATURATED, "SATURATED", 0, 1, low_open=True, high_open=True, hint="e.g. 0.99")
    for name, sizes in (("D_K_SWEEP", D_K_SWEEP), ("QUICK_D_K_SWEEP", QUICK_D_K_SWEEP)):
        common.whole_numbers(sizes, name, low=1)
    for name, sizes in (("T_SWEEP", T_SWEEP), ("QUICK_T_SWEEP", QUICK_T_SWEEP)):
        common.whole_numbers(sizes, name, low=1, distinct=2, hint="two lengths at least, to measure growth")


@common.entry_point
def main(argv=None):
    args = common.parse_args(common.lesson_parser(__doc__), argv)
    check_knobs()
    common.quick_note(args, D_K_SWEEP=(D_K_SWEEP, QUICK_D_K_SWEEP), N_QUERIES_SWEEP=(N_QUERIES_SWEEP, QUICK_N_QUERIES),
                      T_SWEEP=(T_SWEEP, QUICK_T_SWEEP))         # the one line --quick prints
    device = common.setup(args, "Lesson 01: the attention mechanism")
    Q, K, V, hand_output, listens = section_1_qkv_by_hand(device)
    steps = section_2_step_by_step(Q, K, V, hand_output, args)
    scaling = section_3_scaling(device, args)
    x, head = section_4_self_attention(device)
    cross_shape = section_5_cross_attention(head, device)
    masks = section_6_masks(x, head, device, args)
    agree = section_7_check_against_pytorch(device)
    _, cost = section_8_cost(device, args)
    key_insights(listens, steps, scaling, cross_shape, masks, agree, cost)


if __name__ == "__main__":
    main()
