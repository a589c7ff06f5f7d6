"""Lesson 01: the attention mechanism, computed by hand and checked against PyTorch.

What you will learn
  1. What queries (Q), keys (K) and values (V) are, on 3 words with numbers you can check by hand.
  2. The computation softmax(Q K^T / sqrt(d_k)) V step by step, with every shape printed.
  3. Why the scores are divided by sqrt(d_k): measured score variance and softmax saturation.
  4. Self-attention: Q, K and V made from the input by three learned layers W_q, W_k, W_v.
  5. Cross-attention: queries from one sequence, keys and values from another (T_q != T_k).
  6. Causal and padding masks, and why a query with nothing to attend to must give 0, not NaN.
  7. That our function gives the same result as PyTorch's F.scaled_dot_product_attention.

Run it (from the repository root)
  python 01_attention_mechanism.py                  # figures go to the current folder
  python 01_attention_mechanism.py --out-dir out    # ... or into ./out
  python 01_attention_mechanism.py --quick          # tiny sizes, for a quick check
  python 01_attention_mechanism.py --show           # also open each figure in a window
  python 01_attention_mechanism.py --help           # every flag (--device, --seed, --threads)
It writes attention_weights.png, attention_scaling.png and attention_masks.png.

Shapes
  B batch, T sequence length (T_q queries and T_k keys/values when they differ),
  d_model size of a token's vector, d_k size of a query and a key, d_v size of a value.
  "scores" (..., T_q, T_k) are before the softmax, "weights" (..., T_q, T_k) after it.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

import common
from common import fmt

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
QUICK_D_K_SWEEP, QUICK_N_QUERIES = [4, 16, 64], 50     # the same with --quick


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
        scores = scores.masked_fill(~mask, float("-inf"))  # blocked keys get weight exp(-inf) = 0
    # weights = softmax(scores) over the keys
    weights = torch.softmax(scores, dim=-1)  # (..., T_q, T_k)
    if mask is not None:
        # A row where every key is blocked is softmax(all -inf) = 0/0 = NaN; make it 0 instead.
        # masked_fill replaces the NaN (multiplying by the mask would not: NaN * 0 = NaN), and its
        # backward sends zero gradient to the blocked scores, so the gradients stay NaN-free too.
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


def entropy(weights):
    """Entropy of each weight row, in nats: log(T_k) when uniform, 0 when one key gets everything."""
    return -(weights * torch.log(weights.clamp_min(1e-30))).sum(-1)


def softmax_gradient_size(weights):
    """Per row, the Frobenius norm of d softmax / d scores = diag(p) - p p^T. Near 0 when saturated."""
    p2, p3 = (weights ** 2).sum(-1), (weights ** 3).sum(-1)
    # ||diag(p) - p p^T||^2 = sum p_i^2 - 2 sum p_i^3 + (sum p_i^2)^2
    return (p2 - 2 * p3 + p2 ** 2).clamp_min(0).sqrt()


def vec(t) -> str:
    """A short vector as '(0.1, 0.2)', rounded for reading."""
    return "(" + ", ".join(fmt(v, 3) for v in t.tolist()) + ")"


def plot_weights(fig, ax, weights, title, x_labels=None, y_labels=None, mask=None):
    """Heatmap of a (T_q, T_k) weight matrix: key on x, query on y, colour bar, values in cells.

    With a mask (True = may attend), blocked cells are drawn grey; their value is still written.
    """
    import numpy as np

    w = weights.detach().float().cpu()
    T_q, T_k = w.shape
    blocked = np.zeros((T_q, T_k), dtype=bool) if mask is None else ~mask.cpu().numpy()
    cmap = common.pyplot().get_cmap("viridis").with_extremes(bad="lightgrey")
    image = ax.imshow(np.ma.masked_where(blocked, w.numpy()), cmap=cmap, vmin=0.0, vmax=1.0)
    ax.set_xticks(range(T_k), x_labels if x_labels else range(T_k))
    ax.set_yticks(range(T_q), y_labels if y_labels else range(T_q))
    ax.set_xlabel("key position (attended to)")
    ax.set_ylabel("query position (attending)")
    ax.set_title(title, fontsize=10)
    if T_q * T_k <= 64:
        for i in range(T_q):
            for j in range(T_k):
                ax.text(j, i, f"{w[i, j]:.2f}", ha="center", va="center", fontsize=8,
                        color="black" if w[i, j] > 0.6 or blocked[i, j] else "white")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="attention weight")


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
    common.show_tensor("V (what each word hands over: animal?, action?)", V)

    t = len(TOKENS) - 1
    q = Q[t]
    print(f"\nBy hand, for the query of {TOKENS[t]!r}, q = {vec(q)}:")
    dots = [float(q @ K[j]) for j in range(len(TOKENS))]
    # scaled score = q . k_j / sqrt(d_k); weight_j = exp(scaled_j) / sum_i exp(scaled_i)
    scaled = [d / math.sqrt(Q.size(-1)) for d in dots]
    exps = [math.exp(s) for s in scaled]
    weights = torch.tensor([e / sum(exps) for e in exps], device=device)
    common.table([[f"{j} {TOKENS[j]!r}", dots[j], scaled[j], exps[j], float(weights[j]),
                   vec(weights[j] * V[j])] for j in range(len(TOKENS))],
                 ["key", "q . k", "/ sqrt(d_k)", "exp", "weight = exp / sum", "weight * v"])
    output = weights @ V  # (T_k,) @ (T_k, d_v) -> (d_v,)
    best = int(weights.argmax())
    common.explain(f"""The exps sum to {fmt(sum(exps))}; dividing by that sum turns the exps into
    weights that sum to {fmt(float(weights.sum()))}. The output of {TOKENS[t]!r} is the weighted sum
    of the value rows: {vec(output)}. It listens most to {TOKENS[best]!r} (weight
    {fmt(float(weights[best]))}), the key that best matches what its query asks for.""")
    return Q, K, V, output


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
    diff_fn = float((fn_output - output).abs().max())
    diff_hand = float((output[-1] - hand_output).abs().max())
    row_sum_err = float((weights.sum(-1) - 1).abs().max())
    same_hand = "equals" if diff_hand < 1e-5 else "DIFFERS from"
    same_fn = "gives the same output" if diff_fn < 1e-5 else "gives ANOTHER output: look for a bug"
    common.explain(f"""Every row of weights sums to 1 (largest error {fmt(row_sum_err)}). The last
    row of output {same_hand} the by-hand result of section 1 (largest difference
    {fmt(diff_hand)}), and the building block scaled_dot_product_attention {same_fn} (largest
    difference {fmt(diff_fn)}).""")

    fig, ax = common.new_figure(figsize=(5.6, 4.4), show=args.show)
    labels = [f"{i} {w}" for i, w in enumerate(TOKENS)]
    plot_weights(fig, ax, fn_weights, "Attention weights of the hand-picked example\n"
                 "(each row: how much a word listens to each word; rows sum to 1)", labels, labels)
    common.save_figure(fig, args.out_dir, "attention_weights.png", show=args.show)
    return weights


# %% 3. Why divide by sqrt(d_k)
def section_3_scaling(device, args):
    common.section(3, "Why divide by sqrt(d_k)")
    common.explain(f"""A score q . k is a sum of d_k products. If the entries of q and k have mean 0
    and variance 1, each product has variance 1, so the sum has variance d_k. Large scores push the
    softmax to put almost all weight on one key, and then its gradient almost vanishes. We measure
    this for random q and k: {N_KEYS_SWEEP} keys per query, so a uniform softmax gives each key
    1/{N_KEYS_SWEEP} = {fmt(1 / N_KEYS_SWEEP)} and has entropy log({N_KEYS_SWEEP}) =
    {fmt(math.log(N_KEYS_SWEEP))}.""")
    sweep = QUICK_D_K_SWEEP if args.quick else D_K_SWEEP
    n_queries = QUICK_N_QUERIES if args.quick else N_QUERIES_SWEEP
    rows = []
    for d_k in sweep:
        q = torch.randn(n_queries, 1, d_k, device=device)             # entries ~ N(0, 1)
        k = torch.randn(n_queries, N_KEYS_SWEEP, d_k, device=device)
        raw = (q @ k.transpose(-2, -1)).squeeze(1)  # (N, 1, d_k) @ (N, d_k, T_k) -> (N, T_k)
        scaled = raw / math.sqrt(d_k)
        p_raw, p_scaled = torch.softmax(raw, -1), torch.softmax(scaled, -1)
        rows.append([d_k, float(raw.var()), float(scaled.var()),
                     float(p_raw.max(-1).values.mean()), float(p_scaled.max(-1).values.mean()),
                     float(entropy(p_raw).mean()), float(entropy(p_scaled).mean()),
                     float(softmax_gradient_size(p_raw).mean()),
                     float(softmax_gradient_size(p_scaled).mean())])
    common.table(rows, ["d_k", "var raw", "var scaled", "top raw", "top scaled",
                        "H raw", "H scaled", "grad raw", "grad scaled"])
    last = rows[-1]
    ratio = last[8] / max(last[7], 1e-12)
    common.explain(f"""(var = variance of the scores; top = average largest weight of a row; H =
    average entropy of a row; grad = average size of the softmax's gradient.) The raw variance
    tracks d_k: {fmt(last[1])} at d_k = {last[0]}, while the scaled scores stay at {fmt(last[2])}. Without scaling, at d_k =
    {last[0]} the largest of {N_KEYS_SWEEP} weights averages {fmt(last[3])} (entropy {fmt(last[5])});
    with scaling {fmt(last[4])} (entropy {fmt(last[6])}). The softmax's gradient is
    {fmt(ratio, 3)} times larger with scaling, so the scores can keep learning.""")

    fig, axes = common.new_figure(1, 3, figsize=(13, 4), show=args.show)
    d = [r[0] for r in rows]
    axes[0].loglog(d, [r[1] for r in rows], "o-", label="raw q . k")
    axes[0].loglog(d, d, "k:", label="y = d_k")
    axes[0].loglog(d, [r[2] for r in rows], "s-", label="scaled: q . k / sqrt(d_k)")
    axes[0].set(xlabel="d_k", ylabel="variance of the scores",
                title="Raw score variance grows like d_k;\nscaled stays near 1")
    axes[1].semilogx(d, [r[3] for r in rows], "o-", label="raw")
    axes[1].semilogx(d, [r[4] for r in rows], "s-", label="scaled")
    axes[1].axhline(1 / N_KEYS_SWEEP, color="k", ls=":", label=f"uniform (1/{N_KEYS_SWEEP})")
    axes[1].set(xlabel="d_k", ylabel="average largest weight in a row", ylim=(0, 1.05),
                title="Without scaling the softmax saturates:\none key takes almost everything")
    axes[2].semilogx(d, [r[5] for r in rows], "o-", label="raw")
    axes[2].semilogx(d, [r[6] for r in rows], "s-", label="scaled")
    axes[2].axhline(math.log(N_KEYS_SWEEP), color="k", ls=":", label=f"uniform (log {N_KEYS_SWEEP})")
    axes[2].set(xlabel="d_k", ylabel="average entropy of a row (nats)", ylim=(0, None),
                title="Entropy of the weights:\nraw scores lose it as d_k grows")
    for ax in axes:
        ax.set_xticks(d, [str(v) for v in d])
        ax.minorticks_off()
        ax.legend(fontsize=8)
    common.save_figure(fig, args.out_dir, "attention_scaling.png", show=args.show)
    return rows


# %% 4. Self-attention: Q, K and V come from the input through W_q, W_k, W_v
def section_4_self_attention(device):
    common.section(4, "Self-attention: Q, K and V come from the input through W_q, W_k, W_v")
    common.explain(f"""In a model nobody picks Q, K and V by hand. Three learned linear layers make
    them from the token vectors x: Q = x W_q^T, K = x W_k^T, V = x W_v^T. In self-attention all
    three come from the same sequence. Here x is random (B = {len(LENGTHS)} sequences of T =
    {SEQ_LEN} tokens, d_model = {D_MODEL}) and the layers are untrained, so the pattern of weights
    means nothing yet; training shapes it.""")
    x = torch.randn(len(LENGTHS), SEQ_LEN, D_MODEL, device=device)  # (B, T, d_model)
    head = AttentionHead(D_MODEL, D_K).to(device).eval()
    with torch.no_grad():  # only looking here, no training: no gradients needed
        Q, K, V = head.W_q(x), head.W_k(x), head.W_v(x)  # each (B, T, d_k)
        output, weights = head(x, x)  # self-attention: (B, T, d_k), (B, T, T)
    common.table([["x", str(tuple(x.shape)), "(B, T, d_model): the token vectors"],
                  ["W_q.weight", str(tuple(head.W_q.weight.shape)),
                   "(d_k, d_model): nn.Linear stores (out, in), computes x @ W^T"],
                  ["Q, K, V", str(tuple(Q.shape)), "(B, T, d_k) each"],
                  ["weights", str(tuple(weights.shape)), "(B, T_q, T_k): T_q = T_k = T"],
                  ["output", str(tuple(output.shape)), "(B, T, d_k): one new vector per token"]],
                 ["tensor", "shape", "meaning"])
    n_params = sum(p.numel() for p in head.parameters())
    common.explain(f"""Parameters: 3 * d_model * d_k = 3 * {D_MODEL} * {D_K} = {3 * D_MODEL * D_K}
    (counted: {n_params}; no biases here). Rows of weights sum to 1: largest error
    {fmt(float((weights.sum(-1) - 1).abs().max()))}.""")
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
    common.explain(f"""The output has one row per query: the T_k = {T_K_CROSS} keys are summed away
    in the weighted average. Rows still sum to 1 (largest error
    {fmt(float((weights.sum(-1) - 1).abs().max()))}).""")
    return tuple(weights.shape)


# %% 6. Masks: causal and padding
def section_6_masks(x, head, device, args):
    common.section(6, "Masks: causal and padding")
    common.explain("""A mask says which keys each query may use. Ours are boolean with True = may
    attend (as in F.scaled_dot_product_attention). A causal mask hides the future: query t sees keys
    0..t, so a model that predicts the next token cannot peek at it. A padding mask hides the filler
    tokens added so that sequences of different lengths fit in one batch.""")
    B, T = x.shape[0], x.shape[1]
    causal = causal_mask(T, device)  # (T, T), True = may attend
    lengths = torch.tensor(LENGTHS, device=device)
    valid = torch.arange(T, device=device) < lengths[:, None]  # (B, T): True for real tokens
    pad = valid[:, None, :]  # (B, 1, T_k): the same key mask for every query
    common.show_tensor("causal_mask(T) as 0/1 (1 = may attend)", causal.int())
    common.show_tensor(f"padding mask (B, 1, T_k), lengths {LENGTHS}", pad.int())
    both = causal & pad  # (T, T) & (B, 1, T) broadcast -> (B, T, T)
    # Padded queries too: (B, T_q, 1) & (B, 1, T_k) -> (B, T_q, T_k); padded rows have no key left.
    keys_and_queries = valid[:, :, None] & valid[:, None, :]
    results, rows, blocked_max = {}, [], 0.0
    with torch.no_grad():
        for name, mask in [("causal", causal), ("padding", pad), ("causal + padding", both),
                           ("padded keys and queries", keys_and_queries)]:
            _, w = head(x, x, mask)  # (B, T, T)
            shape, mask = tuple(mask.shape), mask.expand_as(w)
            results[name] = (w, mask)
            blocked = float(w[~mask].max()) if (~mask).any() else 0.0
            blocked_max = max(blocked_max, blocked)
            rows.append([name, str(shape), blocked,
                         f"{int(((w.sum(-1) - 1).abs() < 1e-5).sum())} of {B * T}"])
    common.table(rows, ["mask", "shape", "largest blocked weight", "rows summing to 1"])
    print()

    # A query with nothing to attend to: a plain softmax over all -inf gives 0/0 = NaN.
    x_grad = x.clone().requires_grad_(True)
    out, _ = head(x_grad, x_grad, keys_and_queries)
    out.sum().backward()
    out = out.detach()
    empty_rows = ~keys_and_queries.any(-1)  # (B, T_q): queries that see no key
    Q, K = head.W_q(x), head.W_k(x)
    naive = (Q @ K.transpose(-2, -1) / math.sqrt(D_K)).masked_fill(~keys_and_queries, float("-inf"))
    naive_nan = int(torch.softmax(naive, -1).isnan().any(-1).sum())
    common.explain(f"""{int(empty_rows.sum())} padded queries have no key at all. A plain softmax
    gives NaN in {naive_nan} rows there; ours gives NaN in {int(out.isnan().any(-1).sum())} rows, a
    largest |output| of {fmt(float(out[empty_rows].abs().max()) if empty_rows.any() else 0.0)} on
    them, and {int(x_grad.grad.isnan().sum())} NaN in the gradient.""")

    # nn.MultiheadAttention's boolean masks mean the opposite: True = blocked (do NOT attend).
    # (Its key_padding_mask works the same way; we use attn_mask, shape (B * n_heads, T_q, T_k),
    # because in torch 2.13 the first key_padding_mask call spends about a second importing sympy.)
    mha = nn.MultiheadAttention(D_MODEL, 1, batch_first=True).to(device).eval()
    s = int(lengths.argmin())  # the most padded sequence
    with torch.no_grad():
        _, w_right = mha(x, x, x, attn_mask=~pad.expand(B, T, T))  # inverted: True = blocked
        _, w_wrong = mha(x, x, x, attn_mask=pad.expand(B, T, T))   # ours passed as is: a bug

    def on_pad(w):  # average total weight that a query of sequence s puts on padding keys
        return fmt(float(w[s][:, ~valid[s]].sum(-1).mean()))
    n_nan = int(w_wrong.isnan().any(-1).sum())
    if (~valid[s]).any():
        common.explain(f"""Careful: nn.MultiheadAttention's boolean attn_mask and key_padding_mask use
        the opposite polarity, True = blocked. Given the inverted mask, sequence {s} puts weight
        {on_pad(w_right)} on its padding; given our mask unchanged, it puts {on_pad(w_wrong)} there
        (only the padding is left to attend to). Rows with no padding key at all have nothing left
        and become NaN: {n_nan} of {B * T} rows.""")
    else:
        common.explain(f"""Careful: nn.MultiheadAttention's boolean attn_mask and key_padding_mask use
        the opposite polarity, True = blocked. LENGTHS = {LENGTHS} has no padding, so our mask passed
        unchanged blocks every key: {n_nan} of {B * T} rows become NaN.""")

    fig, axes = common.new_figure(2, 2, figsize=(10, 8.6), show=args.show)
    titles = {"causal": "Causal: no weight above the diagonal (the future)",
              "padding": (f"Padding: keys {LENGTHS[s]}..{T - 1} are filler, weight 0" if LENGTHS[s] < T
                          else "Padding: this sequence has no filler keys"),
              "causal + padding": "Causal and padding combined",
              "padded keys and queries": ("Padded queries too: their rows are all 0 (not NaN)"
                                          if LENGTHS[s] < T else "Padded queries too (none here)")}
    for ax, (name, (w, mask)) in zip(axes.flat, results.items()):
        plot_weights(fig, ax, w[s], f"{titles[name]}\n(sequence {s}, length {LENGTHS[s]} of {T}; "
                     "grey = blocked)", mask=mask[s])
    common.save_figure(fig, args.out_dir, "attention_masks.png", show=args.show)
    return {"blocked_max": blocked_max, "naive_nan": naive_nan, "ours_nan": int(out.isnan().sum())}


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
    valid = torch.arange(T, device=device) < torch.tensor(LENGTHS, device=device)[:, None]  # (B, T)
    cases = [("no mask", (q, k, v), None, {}),
             ("causal vs is_causal=True", (q, k, v), causal_mask(T, device), {"is_causal": True}),
             ("padding (B, 1, 1, T_k)", (q, k, v), valid[:, None, None, :], None),
             ("padding (B, 1, T_q, T_k)", (q, k, v), (valid[:, :, None] & valid[:, None, :])[:, None], None),
             ("cross-attention", (q_x, k_x, v_x), None, {})]
    rows, worst, empty_out, n_empty = [], 0.0, 0.0, 0
    for name, (qq, kk, vv), mask, ref_kwargs in cases:
        ours, _ = scaled_dot_product_attention(qq, kk, vv, mask)
        if ref_kwargs is None:  # compare with the same boolean mask given to PyTorch
            ref_kwargs = {"attn_mask": mask}
        ref = F.scaled_dot_product_attention(qq, kk, vv, **ref_kwargs)
        diff = float((ours - ref).abs().max())
        worst = max(worst, diff)
        if mask is not None and not mask.any(-1).all():  # some query rows have no key at all
            empty = ~mask.any(-1, keepdim=True)  # (..., T_q, 1)
            n_empty += int(empty.sum())
            empty_out = max(empty_out, float(ours.masked_select(empty).abs().max()),
                            float(ref.masked_select(empty).abs().max()))
        rows.append([name, str(tuple(qq.shape)), str(tuple(kk.shape)),
                     str(tuple(mask.shape)) if mask is not None else "-", diff])
    common.table(rows, ["case", "query", "key", "mask", "largest |diff|"])
    verdict = "agree to float32 rounding" if worst < 1e-5 else "DISAGREE: look for a bug"
    empty_text = (f"""The padding cases have {n_empty} query rows with no key at all: the largest
    |output| there, ours or PyTorch's, is {fmt(empty_out)}.""" if n_empty else
                  f"No query row was left without keys: LENGTHS = {LENGTHS} has no padding.")
    common.explain(f"""Largest difference over all cases: {fmt(worst)}: the two {verdict}.
    {empty_text}""")
    return worst


# %% Key insights
def key_insights(hand_weights, scaling_rows, cross_shape, masks, worst):
    top = int(hand_weights[-1].argmax())
    first, last = scaling_rows[0], scaling_rows[-1]
    common.key_insights([
        f"Attention is a weighted average of values: {TOKENS[-1]!r} gave weight "
        f"{fmt(float(hand_weights[-1, top]))} to {TOKENS[top]!r}, whose key best matched its query.",
        "output = softmax(Q K^T / sqrt(d_k)) V: (T_q, d_k) @ (d_k, T_k) -> scores (T_q, T_k); "
        "weights (T_q, T_k) @ V (T_k, d_v) -> output (T_q, d_v).",
        f"Raw scores have variance ~ d_k ({fmt(first[1])} at d_k={first[0]}, {fmt(last[1])} at "
        f"d_k={last[0]}); dividing by sqrt(d_k) keeps it near 1 ({fmt(last[2])}). Unscaled, the "
        f"top weight averaged {fmt(last[3])} vs {fmt(last[4])} scaled, and the softmax's gradient was "
        f"{fmt(last[8] / max(last[7], 1e-12), 3)} times smaller: a saturated softmax barely learns.",
        "Self-attention: Q, K, V all come from one sequence through W_q, W_k, W_v. "
        f"Cross-attention: queries from another; weights were {cross_shape} = (B, T_q, T_k).",
        f"Masks are boolean, True = may attend: the largest weight on a blocked key was "
        f"{fmt(masks['blocked_max'])}; "
        f"fully masked rows gave {masks['ours_nan']} NaN (a plain softmax: {masks['naive_nan']} NaN rows). "
        "nn.MultiheadAttention uses the opposite polarity.",
        f"Our function {'matches' if worst < 1e-5 else 'does NOT match'} F.scaled_dot_product_attention: "
        f"largest difference {fmt(worst)} over every case tested.",
    ])


def main(argv=None):
    parser = common.lesson_parser(__doc__)
    args = common.parse_args(parser, argv)
    if not all(0 <= n <= SEQ_LEN for n in LENGTHS):
        common.fail(f"LENGTHS {LENGTHS} must each be between 0 and SEQ_LEN = {SEQ_LEN}; edit the knobs")
    device = common.setup(args, "Lesson 01: the attention mechanism")
    Q, K, V, hand_output = section_1_qkv_by_hand(device)
    hand_weights = section_2_step_by_step(Q, K, V, hand_output, args)
    scaling_rows = section_3_scaling(device, args)
    x, head = section_4_self_attention(device)
    cross_shape = section_5_cross_attention(head, device)
    masks = section_6_masks(x, head, device, args)
    worst = section_7_check_against_pytorch(device)
    key_insights(hand_weights, scaling_rows, cross_shape, masks, worst)


if __name__ == "__main__":
    main()
