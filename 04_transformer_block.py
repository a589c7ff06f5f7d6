"""Lesson 04: the transformer encoder block: attention, feed-forward, residuals and LayerNorm.

What you will learn:
  1. How a block is wired, post-LN (the paper) and pre-LN (modern code), where dropout sits; equal
     to PyTorch's nn.TransformerEncoderLayer with no mask, a causal mask and a padding mask.
  2. LayerNorm normalises each token on its own (by hand, and PyTorch's).
  3. The feed-forward network is position-wise; attention is what mixes tokens.
  4. What each costs as the sequence grows: attention T^2 in time and memory, the feed-forward T.
  5. Stacking blocks: shapes and parameter counts.
  6. What residual connections do in a deep stack.
  7. Post-LN against pre-LN as the stack gets deeper.

Run:  python 04_transformer_block.py                 (a few seconds on a CPU)
      python 04_transformer_block.py --d-model 128 --heads 8 --d-ff 512 --layers 6

Shapes: B batch, T sequence length, d_model token width, n_heads heads, d_head = d_model // n_heads,
d_ff feed-forward hidden width.
Masks are boolean with True = may attend (lesson 01); PyTorch's modules use True = blocked.
"""
import common  # first: it checks $OMP_NUM_THREADS before torch reads it
import torch
import torch.nn as nn
import torch.nn.functional as F

from common import claims, fmt, load_lesson
from common.report import seed_range  # '0.515 (0.47-0.56)': the mean over seeds, and their range

# Reused from earlier lessons (one source for each component).
MultiHeadAttention = load_lesson(2).MultiHeadAttention
causal_mask = load_lesson(1).causal_mask

# %% Knobs: edit these and re-run
D_MODEL = 64          # token width of the block in sections 1-5 (--d-model overrides it)
N_HEADS = 4           # attention heads (--heads overrides it); must divide d_model
D_FF = 256            # feed-forward hidden width, 4 * d_model as in the paper (--d-ff overrides it)
N_LAYERS = 4          # blocks in the stack of section 5 (--layers overrides it)
B, T = 2, 6           # batch size and sequence length of the small examples (T at least 2)
DROPOUT = 0.1         # section 1: the dropout probability shown in training mode (the paper's)
COST_LENGTHS = (128, 256, 512, 1024)  # section 4: sequence lengths T at which both sublayers are timed
# sections 6-7 (depth study): the seeds are added to --seed, so another --seed draws other stacks
DEPTH_STUDY = dict(depths=(2, 4, 8, 16, 32), d_model=32, heads=4, B=8, T=16, seeds=(0, 1))  # sections 6-7
QUICK_COST_LENGTHS = (32, 64, 128)                                                  # --quick
QUICK_DEPTH_STUDY = dict(depths=(2, 32), d_model=32, heads=4, B=8, T=16, seeds=(0, 1))  # --quick: 2 depths
MAX_PARAMETERS = 250_000_000  # sections 1-5 hold about 2 * n_layers + 9 blocks: keep them under 1 GB


# %% Building blocks
class FeedForward(nn.Module):
    """Position-wise feed-forward: FFN(x) = linear2(dropout(relu(linear1(x)))), d_model -> d_ff ->
    d_model, the same two-layer MLP applied to every token on its own."""

    def __init__(self, d_model: int, d_ff: int, dropout: float = 0.0):
        super().__init__()
        self.linear1 = nn.Linear(d_model, d_ff)
        self.activation = nn.ReLU()
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(d_ff, d_model)

    def forward(self, x):
        # Only the last dimension is touched: no token ever sees another token here.
        return self.linear2(self.dropout(self.activation(self.linear1(x))))  # (B, T, d_model)


class TransformerEncoderBlock(nn.Module):
    """Self-attention and a feed-forward, each wrapped in a residual connection and a LayerNorm.

    post-LN (norm_first=False, the paper): x = norm(x + sublayer(x))
    pre-LN  (norm_first=True, most modern code): x = x + sublayer(norm(x))
    forward(x (B, T, d_model), mask=None) -> (B, T, d_model); mask as in lesson 02, True = may attend.
    With return_weights=True it returns (x, attention weights (B, n_heads, T, T)).
    """

    def __init__(self, d_model: int, n_heads: int, d_ff: int, dropout: float = 0.0, norm_first: bool = False):
        super().__init__()
        self.norm_first = norm_first
        self.self_attn = MultiHeadAttention(d_model, n_heads, dropout=dropout)  # lesson 02's
        self.feed_forward = FeedForward(d_model, d_ff, dropout=dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        # Dropout (training mode only) also acts on the attention weights and the feed-forward's hidden layer
        self.dropout1 = nn.Dropout(dropout)  # on the attention sublayer's output
        self.dropout2 = nn.Dropout(dropout)  # on the feed-forward sublayer's output

    def _attend(self, x, mask, return_weights):
        # Self-attention: queries, keys and values all come from the same x.
        out, weights = self.self_attn(x, x, x, mask=mask, need_weights=return_weights)
        return self.dropout1(out), weights

    def forward(self, x, mask=None, return_weights: bool = False):
        if self.norm_first:
            # pre-LN: the residual stream x is never normalised; each sublayer reads a normalised copy
            attended, weights = self._attend(self.norm1(x), mask, return_weights)
            x = x + attended                                          # (B, T, d_model)
            x = x + self.dropout2(self.feed_forward(self.norm2(x)))  # (B, T, d_model)
        else:
            # post-LN: add the sublayer's output to x, then normalise the sum
            attended, weights = self._attend(x, mask, return_weights)
            x = self.norm1(x + attended)                              # (B, T, d_model)
            x = self.norm2(x + self.dropout2(self.feed_forward(x)))  # (B, T, d_model)
        return (x, weights) if return_weights else x


class TransformerEncoder(nn.Module):
    """n_layers encoder blocks in a row (plus a final LayerNorm when pre-LN): forward(x (B, T, d_model),
    mask=None) -> (B, T, d_model); with return_weights=True -> (x, [each layer's (B, n_heads, T, T) weights])."""

    def __init__(self, n_layers: int, d_model: int, n_heads: int, d_ff: int, dropout: float = 0.0,
                 norm_first: bool = False):
        super().__init__()
        self.layers = nn.ModuleList(TransformerEncoderBlock(d_model, n_heads, d_ff, dropout, norm_first)
                                    for _ in range(n_layers))
        # Pre-LN leaves the last block's output un-normalised, so a final LayerNorm follows.
        self.norm = nn.LayerNorm(d_model) if norm_first else nn.Identity()

    def forward(self, x, mask=None, return_weights: bool = False):
        all_weights = []
        for layer in self.layers:
            x, weights = layer(x, mask, return_weights=True) if return_weights else (layer(x, mask), None)
            all_weights.append(weights)
        x = self.norm(x)
        return (x, all_weights) if return_weights else x


@torch.no_grad()
def copy_weights_from_torch(block, torch_layer):
    """Copy an nn.TransformerEncoderLayer's weights into our block (same sizes and norm_first); returns it."""
    if block.norm_first != torch_layer.norm_first:
        raise ValueError(f"norm_first differs: ours {block.norm_first}, PyTorch's {torch_layer.norm_first}")
    d_model = block.self_attn.d_model
    theirs = torch_layer.self_attn
    # PyTorch stores W_q, W_k, W_v stacked in one (3 d_model, d_model) matrix: rows [W_q; W_k; W_v].
    for i, linear in enumerate((block.self_attn.W_q, block.self_attn.W_k, block.self_attn.W_v)):
        linear.weight.copy_(theirs.in_proj_weight[i * d_model:(i + 1) * d_model])
        linear.bias.copy_(theirs.in_proj_bias[i * d_model:(i + 1) * d_model])
    for mine, same in ((block.self_attn.W_o, theirs.out_proj), (block.feed_forward.linear1, torch_layer.linear1),
                       (block.feed_forward.linear2, torch_layer.linear2), (block.norm1, torch_layer.norm1),
                       (block.norm2, torch_layer.norm2)):
        mine.load_state_dict(same.state_dict())
    return block


# %% 1. One block, step by step, and PyTorch's own
def section_1_block(d_model, n_heads, d_ff, device):
    common.section(1, "One encoder block, and PyTorch's nn.TransformerEncoderLayer")
    common.explain("""
        A block has two sublayers: self-attention (lesson 02's MultiHeadAttention) lets tokens exchange
        information; a feed-forward network then processes each token on its own. Each is wrapped in a
        residual connection (x + ...) and a LayerNorm, in one of two layouts: post-LN (the 2017 paper,
        section 3.1): x = LayerNorm(x + Sublayer(x)); pre-LN (GPT-2 and most modern code): x = x +
        Sublayer(LayerNorm(x)), plus one final LayerNorm after the last block. Post-LN by hand:""")
    block = TransformerEncoderBlock(d_model, n_heads, d_ff).to(device).eval()
    x = torch.randn(B, T, d_model, device=device)
    with torch.no_grad():
        attended, weights = block.self_attn(x, x, x)                        # (B, T, d_model)
        h = block.norm1(x + attended)                                       # (B, T, d_model)
        hidden = torch.relu(block.feed_forward.linear1(h))                  # (B, T, d_ff)
        ffn_out = block.feed_forward.linear2(hidden)                        # (B, T, d_model)
        y = block.norm2(h + ffn_out)                                        # (B, T, d_model)
        by_hand_diff = (y - block(x)).abs().max().item()
    steps = [("x", x), ("self-attention output", attended), ("attention weights", weights),
             ("x + attention (residual sum)", x + attended), ("h = norm1(x + attention)", h),
             ("feed-forward hidden, after ReLU", hidden), ("h + feed-forward (residual sum)", h + ffn_out),
             ("output = norm2(h + feed-forward)", y)]
    common.table([[name, str(tuple(t.shape)), t.std()] for name, t in steps], ["step", "shape", "std"])
    by_hand = claims.below("block-by-hand", f"block(x) is this post-LN computation (largest |by hand - block(x)| "
                           f"{fmt(by_hand_diff)})", by_hand_diff, 1e-5, hint="compare forward with these steps").say()
    matches = compare_with_torch(x, d_model, n_heads, d_ff, device)
    common.explain("""
        Dropout sits in three places, as in nn.TransformerEncoderLayer: on the attention weights, on
        the feed-forward's hidden layer, and on each sublayer's output before the residual add,
        x + dropout(sublayer(x)) (the one the paper names, with the embeddings of lesson 05).""")
    dropping = TransformerEncoderBlock(d_model, n_heads, d_ff, dropout=DROPOUT).to(device)
    plain = TransformerEncoderBlock(d_model, n_heads, d_ff, dropout=0.0).to(device).eval()
    plain.load_state_dict(dropping.state_dict())  # dropout has no weights: the same block without it
    with torch.no_grad():
        train_change = (dropping.train()(x) - dropping(x)).abs().max().item()  # two random draws
        eval_change = (dropping.eval()(x) - plain(x)).abs().max().item()
    dropout = claims.check("dropout-only-in-training", train_change > 1e-3 and eval_change < 1e-6, f"With p = "
                           f"{DROPOUT}, two training-mode calls on the same x differ by up to {fmt(train_change)}; "
                           f"after .eval() the block equals one without dropout (difference {fmt(eval_change)})",
                           f"{fmt(train_change)} and {fmt(eval_change)}", "above 1e-3 and below 1e-6",
                           "F.dropout needs training=self.training").say()
    return claims.all_of("insight-block", f"Our block equals nn.TransformerEncoderLayer with copied weights, post-LN "
                         f"and pre-LN, with no, causal or padding mask: {matches.measured}; dropout acts only in "
                         "training mode.", by_hand, matches, dropout)


def compare_with_torch(x, d_model, n_heads, d_ff, device):
    """Our block against nn.TransformerEncoderLayer with the same weights, three masks, two layouts."""
    keep = torch.ones(B, T, dtype=torch.bool, device=device)  # True = a real token
    keep[-1, T - T // 2:] = False  # the last sequence ends with T // 2 padding tokens
    common.explain(f"""
        Now against PyTorch's nn.TransformerEncoderLayer in eval mode, its weights moved off their
        initial values (each LayerNorm gets its own gamma and beta) and copied into our block. An
        encoder must block padding, the filler that makes sequences of different lengths fit in one
        batch (here the last sequence ends with {T // 2} of them): our mask keep[:, None, :] is True for
        a real token, PyTorch's ~mask True for a blocked one. Outputs at padding positions are thrown
        away (PyTorch's fast path may return zeros there).""")
    causal, rows = causal_mask(T, device=device), []
    masks = {"none": (None, {}), "causal": (causal, dict(src_mask=~causal)),  # ours, PyTorch's (~ours)
             "padding": (keep[:, None, :], dict(src_key_padding_mask=~keep))}
    for norm_first in (False, True):
        reference = nn.TransformerEncoderLayer(d_model, n_heads, d_ff, dropout=DROPOUT, batch_first=True,
                                               norm_first=norm_first).to(device).eval()
        with torch.no_grad():
            for p in reference.parameters():
                p.add_(0.1 * torch.randn_like(p))  # as after some training: LayerNorms no longer 1 and 0
        ours = TransformerEncoderBlock(d_model, n_heads, d_ff, DROPOUT, norm_first).to(device).eval()
        copy_weights_from_torch(ours, reference)
        with torch.no_grad():
            for name, (mask, torch_mask) in masks.items():
                diff = (ours(x, mask=mask) - reference(x, **torch_mask))[keep].abs().max()
                rows.append(["pre-LN" if norm_first else "post-LN", name, diff.item()])
            _, weights = ours(x, mask=masks["padding"][0], return_weights=True)  # (B, n_heads, T, T)
    common.table(rows, ["layout", "mask", "largest |ours - PyTorch| (real tokens)"])
    worst = max(rows, key=lambda row: row[2] if row[2] == row[2] else float("inf"))  # a NaN is the worst
    on_padding = weights[-1][..., ~keep[-1]].max().item()  # the last sequence's weights on its padding keys
    return claims.check("matches-pytorch", worst[2] < 1e-4 and on_padding < 1e-6, "Equal up to float32 rounding, in "
                        f"both layouts with every mask; the largest attention weight on a padding token is "
                        f"{fmt(on_padding)}", f"largest difference {fmt(worst[2])} ({worst[0]}, mask {worst[1]}), "
                        f"weight on padding {fmt(on_padding)}", "below 1e-4 and 1e-6").say()


# %% 2. LayerNorm works per token
def layer_norm(x, eps: float = 1e-5):
    """LayerNorm by hand with gamma = 1 and beta = 0 (their initial values): (B, T, d_model) -> same."""
    mean = x.mean(dim=-1, keepdim=True)                # (B, T, 1): over the d_model features of each token
    var = x.var(dim=-1, unbiased=False, keepdim=True)  # (B, T, 1): the biased variance, as nn.LayerNorm
    return (x - mean) / torch.sqrt(var + eps)          # (B, T, d_model)


def per_token_stats(x):
    """Mean and std of each token over its d_model features: (B, T, d_model) -> two (B, T)."""
    return x.mean(dim=-1), x.std(dim=-1, unbiased=False)  # LayerNorm uses the biased variance


def section_2_layernorm(d_model, device, out_dir, show):
    common.section(2, "LayerNorm normalises each token on its own")
    common.explain("""
        LayerNorm(x) = gamma * (x - mean(x)) / sqrt(var(x) + eps) + beta, mean and var over the
        d_model features of ONE token (layer_norm above); gamma starts at 1, beta at 0, both learned.
        Below, each token gets its own offset and scale, then goes through nn.LayerNorm:""")
    offsets = torch.linspace(-4.0, 6.0, T, device=device)
    scales = torch.logspace(-1, 1, T, device=device)  # 0.1 ... 10
    x = torch.randn(1, T, d_model, device=device) * scales[:, None] + offsets[:, None]  # (1, T, d_model)
    norm = nn.LayerNorm(d_model).to(device)
    t = T // 2  # one token, normalised alone below
    with torch.no_grad():
        y = norm(x)
        alone = (norm(x[:, t:t + 1]) - y[:, t:t + 1]).abs().max().item()  # token t without its neighbours
        by_hand = (layer_norm(x, norm.eps) - y).abs().max().item()
    mean_before, std_before = per_token_stats(x)
    mean_after, std_after = per_token_stats(y)
    expected = std_before / torch.sqrt(std_before**2 + norm.eps)
    common.table([[i, mean_before[0, i], std_before[0, i], mean_after[0, i], std_after[0, i], expected[0, i]]
                  for i in range(T)], ["token", "mean before", "std before", "mean after", "std after",
                                       "std/sqrt(std^2+eps)"])
    max_mean, max_std_err = mean_after.abs().max().item(), (std_after - 1).abs().max().item()
    off_std = (std_after - expected).abs().max().item()
    per_token = claims.check("layernorm-per-token", max_mean < 1e-4 and off_std < 1e-4 and alone < 1e-6, "After "
                             f"LayerNorm every token has mean ~0 (largest |mean| {fmt(max_mean)}) and std ~1 "
                             f"(largest |std - 1| {fmt(max_std_err)}), whatever it started with; exactly std / "
                             f"sqrt(std^2 + eps), the last column (eps = {norm.eps:g} keeps a token with all features "
                             f"equal from dividing by 0). Token {t} normalised alone gives the same (largest "
                             f"difference {fmt(alone)}): the statistics never mix tokens, nor the sequences of a "
                             "batch (unlike BatchNorm)", f"|mean| {fmt(max_mean)}, |std - last column| {fmt(off_std)}"
                             f", alone vs in the sequence {fmt(alone)}", "below 1e-4, 1e-4 and 1e-6").say()
    formula = claims.below("layernorm-by-hand", f"layer_norm(x), the formula by hand, equals nn.LayerNorm (largest "
                           f"difference {fmt(by_hand)})", by_hand, 1e-5, hint="mean and var are over dim=-1").say()
    plot_layernorm(x, y, per_token, out_dir, show)
    return claims.all_of("insight-layernorm", f"LayerNorm works per token, as its formula by hand shows: afterwards "
                         f"each token has |mean| <= {fmt(max_mean)} and |std - 1| <= {fmt(max_std_err)} (from eps), "
                         "whatever its neighbours.", per_token, formula)


def plot_layernorm(x, y, per_token, out_dir, show):
    fig, axes = common.new_figure(1, 2, figsize=(10, 4), show=show, sharex=True)
    jitter = torch.linspace(-0.25, 0.25, x.size(-1))
    for ax, values, when in ((axes[0], x, "before"), (axes[1], y, "after")):
        for t in range(T):
            ax.scatter(t + jitter, values[0, t].cpu(), s=6, alpha=0.6)
        mean, std = per_token_stats(values)
        ax.errorbar(range(T), mean[0].cpu(), yerr=std[0].cpu(), fmt="k_", capsize=4, ms=14,
                    label="mean +- std of the token")
        ax.set(title=f"{when} LayerNorm", xlabel="token position", ylabel="feature value", xticks=range(T))
    axes[1].axhline(0, color="gray", lw=0.8)
    axes[0].legend(loc="upper left")
    fig.suptitle(claims.figure_title("layernorm-title", "LayerNorm gives every token mean 0 and std 1", per_token))
    common.save_figure(fig, out_dir, "transformer_block_layernorm.png", show=show)


# %% 3. The feed-forward network is position-wise
def section_3_feed_forward(d_model, n_heads, d_ff, device):
    common.section(3, "The feed-forward network is position-wise")
    common.explain(f"""
        FFN(x) = linear2(relu(linear1(x))) widens each token from d_model={d_model} to d_ff={d_ff}
        and back. nn.Linear acts on the last dimension only, so each token is processed alone, with
        the same weights at every position. Change token 0 and see which outputs move:""")
    block = TransformerEncoderBlock(d_model, n_heads, d_ff).to(device).eval()
    ffn, attn = block.feed_forward, block.self_attn
    x = torch.randn(B, T, d_model, device=device)
    x_changed = torch.cat([x[:, :1] + 1.0, x[:, 1:]], dim=1)  # token 0 changed, the others as they were
    with torch.no_grad():
        moved = {name: (f(x_changed) - f(x)).abs().amax(dim=(0, 2))  # (T,): largest change per position
                 for name, f in (("attention", lambda z: attn(z, z, z)[0]), ("feed-forward", ffn))}
    common.table([[name, change[0], change[1:].max()] for name, change in moved.items()],
                 ["sublayer", "change at token 0", "largest change at tokens 1.."])
    attention, ffn = (change[1:].max().item() for change in moved.values())  # largest change at tokens 1..
    mixes = claims.above("attention-mixes", f"Attention mixes tokens: it moved the others by {fmt(attention)}",
                         attention, 1e-3).say()
    alone = claims.below("ffn-position-wise", f"The feed-forward then works on each mixed token alone: it moved them "
                         f"by {fmt(ffn)}", ffn, 1e-6, hint="the feed-forward must act on each token alone").say()
    return claims.all_of("insight-mixing", f"Attention mixes tokens (changing one moved the others by "
                         f"{fmt(attention)}); the feed-forward does not ({fmt(ffn)}).", mixes, alone)


# %% 4. What each sublayer costs as the sequence grows
@torch.no_grad()
def section_4_cost(d_model, n_heads, d_ff, lengths, device):
    common.section(4, "What attention and the feed-forward cost as T grows")
    common.explain(f"""
        Attention compares every query with every key: its weights are a (B, n_heads, T, T) tensor,
        and Q K^T and weights @ V each take T^2 d_model multiply-adds; the feed-forward takes
        2 d_model d_ff per token, whatever T. Below, one sequence of growing length through each
        sublayer (d_model={d_model}, {n_heads} heads, d_ff={d_ff}), the fastest of 5 runs each, and
        the size of the largest tensor each sublayer creates.""")
    block = TransformerEncoderBlock(d_model, n_heads, d_ff).to(device).eval()
    attn, ffn = block.self_attn, block.feed_forward
    rows, mib = [], lambda t: t.numel() * t.element_size() / 2**20  # noqa: E731  (a tensor's MiB)
    for length in lengths:
        x = torch.randn(1, length, d_model, device=device)
        attn_ms = 1000 * common.best_time(lambda: attn(x, x, x, need_weights=False), device)
        ffn_ms = 1000 * common.best_time(lambda: ffn(x), device)
        weights = attn(x, x, x)[1]                        # (1, n_heads, T, T)
        hidden = ffn.activation(ffn.linear1(x))           # (1, T, d_ff)
        rows.append([length, attn_ms, ffn_ms, attn_ms / ffn_ms, mib(weights), mib(hidden)])
    common.table(rows, ["T", "attention ms", "feed-forward ms", "ratio", "weights MiB", "FFN hidden MiB"])
    (t0, a0, f0, r0, w0, h0), (t1, a1, f1, r1, w1, h1) = rows[0], rows[-1]
    shown = a1 / a0 >= (t1 / t0) ** 1.8  # attention's time grew like T^1.8 or faster
    notice = (f"Notice the ratio column: attention took {fmt(r0)}x the feed-forward's time at T = {t0} and "
              f"{fmt(r1)}x at T = {t1}." if shown else "These lengths are too short to show T^2 in the times.")
    common.explain(f"""
        From T = {t0} to {t1} ({fmt(t1 / t0)}x longer), attention's weights tensor grew {fmt(w1 / w0)}x
        and its time {fmt(a1 / a0)}x; the feed-forward's hidden layer grew {fmt(h1 / h0)}x and its time
        {fmt(f1 / f0)}x. Memory is computed from the tensors' sizes; the times are measured and vary on
        a busy machine. {notice}""")
    return (f"From T = {t0} to {t1}: attention's weights x{fmt(w1 / w0)} (T^2), its time x{fmt(a1 / a0)}; the "
            f"feed-forward's hidden layer x{fmt(h1 / h0)} (T), its time x{fmt(f1 / f0)}"
            + ("." if shown else " (too short to show T^2 in time)."))


# %% 5. Stacking blocks: shapes and parameter counts
def section_5_stacking(n_layers, d_model, n_heads, d_ff, device):
    common.section(5, f"Stacking {n_layers} blocks: shapes and parameter counts")
    encoders = {nf: TransformerEncoder(n_layers, d_model, n_heads, d_ff, norm_first=nf).to(device).eval()
                for nf in (False, True)}
    x = torch.randn(B, T, d_model, device=device)
    out = encoders[True](x).detach()
    common.explain(f"""
        Every block maps (B, T, d_model) to (B, T, d_model), so blocks stack: the output of one is
        the input of the next. Here {tuple(x.shape)} in, {tuple(out.shape)} out of {n_layers} blocks.
        The parameters, part by part:""")
    numel = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    block, d, N = encoders[False].layers[0], d_model, n_layers
    per_block = 4 * (d * d + d) + (2 * d * d_ff + d_ff + d) + 4 * d
    rows = [["self-attention", "4 (d_model^2 + d_model): W_q, W_k, W_v, W_o", 4 * (d * d + d), numel(block.self_attn)],
            ["feed-forward", "2 d_model d_ff + d_ff + d_model", 2 * d * d_ff + d_ff + d, numel(block.feed_forward)],
            ["two LayerNorms", "4 d_model: gamma and beta of each", 4 * d, numel(block.norm1) + numel(block.norm2)],
            ["one block", "sum of the above", per_block, numel(block)],
            [f"{N} blocks, post-LN", "N x block", N * per_block, numel(encoders[False])],
            [f"{N} blocks, pre-LN", "N x block + 2 d_model (final LayerNorm)", N * per_block + 2 * d,
             numel(encoders[True])]]
    common.table(rows, ["part", "formula", "by the formula", "counted"])
    wrong, share = [row[0] for row in rows if row[2] != row[3]], numel(block.feed_forward) / numel(block)
    counted = claims.check("parameter-formulas", not wrong, "Every count equals its formula. Attention costs 4 "
                           f"d_model^2 and the feed-forward 2 d_model d_ff = {fmt(2 * d_ff / d_model, 3)} d_model^2: "
                           f"it holds {fmt(100 * share)}% of a block's parameters", f"{wrong} differ", "none").say()
    return claims.all_of("insight-stacking", f"Blocks stack, (B, T, d_model) in and out; the feed-forward holds "
                         f"{fmt(100 * share)}% of a block's {numel(block):,} parameters.", counted)


# %% 6-7. The depth study: residuals, and post-LN vs pre-LN
def without_residual(b: TransformerEncoderBlock):
    """A post-LN block (its very weights) with both residual connections ("x +") removed, for section 6."""
    return lambda x: b.norm2(b.feed_forward(b.norm1(b.self_attn(x, x, x, need_weights=False)[0])))


def sublayer_grad_norm(block) -> float:
    """L2 norm of the gradients of a block's attention and feed-forward parameters, as one vector. LayerNorms
    are left out, so that post-LN and pre-LN are measured alike: in post-LN the last block's norm2 produces
    the network's output, and its own gradient would swamp that block's."""
    params = [*block.self_attn.parameters(), *block.feed_forward.parameters()]
    return torch.sqrt(sum((p.grad ** 2).sum() for p in params)).item()


def token_similarity(x) -> float:
    """Mean cosine similarity between different tokens of the same sequence (1 = all identical)."""
    unit = F.normalize(x, dim=-1)
    cos = unit @ unit.transpose(1, 2)  # (B, T, d_model) @ (B, d_model, T) -> (B, T, T)
    return cos[:, ~torch.eye(x.size(1), dtype=torch.bool, device=x.device)].mean().item()  # off the diagonal


def measure_stack(steps, blocks, final_norm, x, target):
    """x through `steps` and final_norm, a random regression loss, backward; what depth_study keeps."""
    nn.ModuleList(blocks).zero_grad(set_to_none=True)
    h = x
    for step in steps:
        h = step(h)  # (B, T, d_model)
    out = final_norm(h)
    F.mse_loss(out, target).backward()
    norms = [sublayer_grad_norm(block) for block in blocks]
    return dict(first=norms[0], last=norms[-1], per_layer=norms, similarity=token_similarity(out.detach()),
                stream_std=h.std(correction=0).item())


def depth_study(study, device):
    """Per seed, one stack of max(depths) blocks shared by the three variants (only the wiring differs), depth N
    its first N blocks: {variant: {key: (seeds, depths)}}, and what the first block's attention does."""
    depths, d_model, heads = study["depths"], study["d_model"], study["heads"]
    results = {v: {k: [] for k in ("first", "last", "similarity", "stream_std", "per_layer")}
               for v in ("post-LN", "pre-LN", "no residual")}
    attention = []
    for seed in study["seeds"]:
        torch.manual_seed(seed)
        post = TransformerEncoder(depths[-1], d_model, heads, 4 * d_model).to(device)
        pre = TransformerEncoder(depths[-1], d_model, heads, 4 * d_model, norm_first=True).to(device)
        pre.load_state_dict(post.state_dict(), strict=False)  # same blocks; pre-LN adds a final norm
        stacks = {"post-LN": (post.layers, post.layers, post.norm),  # (steps to run, blocks, final norm)
                  "pre-LN": (pre.layers, pre.layers, pre.norm),
                  "no residual": ([without_residual(b) for b in post.layers], post.layers, post.norm)}
        x, target = (torch.randn(study["B"], study["T"], d_model, device=device) for _ in range(2))
        with torch.no_grad():
            out, weights = post.layers[0].self_attn(x, x, x)  # (B, T, d_model), (B, n_heads, T, T)
        attention.append([weights.max(dim=-1).values.mean().item(), token_similarity(out), token_similarity(x),
                          out.std().item(), (x + out).std().item()])
        for variant, (steps, blocks, final_norm) in stacks.items():
            measured = [measure_stack(steps[:d], blocks[:d], final_norm, x, target) for d in depths]
            for key in ("first", "last", "similarity", "stream_std"):
                results[variant][key].append([m[key] for m in measured])
            results[variant]["per_layer"].append(measured[-1]["per_layer"])  # the deepest stack's
    results = {v: {k: torch.tensor(values) for k, values in r.items()} for v, r in results.items()}
    names = ("largest", "sim_out", "sim_in", "std_out", "std_sum")
    return results, dict(zip(names, torch.tensor(attention).mean(0).tolist()))


def section_6_residuals(results, attention, study):
    depths, length = study["depths"], study["T"]
    sizes = ", ".join(f"{k} {v}" for k, v in study.items() if k != "depths")
    common.section(6, "What residual connections do in a deep stack")
    common.explain(f"""
        With a residual, a block computes x + f(x), whose derivative is I + f'(x): the gradient reaches
        every block through the identity path as well as through the sublayers; without it, through
        every sublayer in turn. We stack {depths[0]} to {depths[-1]} blocks ({sizes}), put a random
        regression loss on the output and measure the gradient norm of the FIRST block's attention and
        feed-forward weights (mean over the seeds, their range in brackets). The stacks share their
        weights; "no residual" is post-LN without "x +".""")
    v = ("post-LN", "pre-LN", "no residual")
    grads = {k: results[k]["first"] for k in v}  # (seeds, depths): the first block's gradient norms
    sims = {k: results[k]["similarity"] for k in v}
    common.table([[d, *(seed_range(grads[k][:, i]) for k in v), *(sims[k][:, i].mean() for k in v)]
                  for i, d in enumerate(depths)],
                 ["blocks", *(f"grad {k}" for k in v), "sim post-LN", "pre-LN", "no residual"])
    common.explain(f"""
        "sim": mean cosine similarity between different tokens at the output (1 = identical tokens).
        At initialisation attention's outputs are alike for every token (similarity {fmt(attention['sim_out'])},
        inputs {fmt(attention['sim_in'])}): each query spreads its weight, the largest {fmt(attention['largest'])}
        on average (1/T = {fmt(1 / length)} if spread evenly, 1 if it read one token).""")
    alike, distinct = sims["no residual"][:, 0].min(), max(sims["post-LN"][:, 0].max(), sims["pre-LN"][:, 0].max())
    apart = claims.check("residuals-keep-tokens-apart", alike > 0.99 and distinct < 0.5, "Without a residual that "
                         f"shared average replaces the token (sim {fmt(alike)} at {depths[0]} blocks); with one it is "
                         f"added to it (sim at most {fmt(distinct)})", f"{fmt(alike)} and {fmt(distinct)}",
                         "above 0.99, below 0.5").say()
    none, post = grads["no residual"], grads["post-LN"]
    ratio, peak = (none.mean(0) / post.mean(0)).tolist(), int(none.mean(0).argmax())  # means over the seeds
    shallow = claims.check("no-residual-more-when-shallow", claims.apart(none[:, 0], post[:, 0]), f"At {depths[0]} "
                           f"blocks the first block gets {fmt(ratio[0])}x post-LN's gradient without residuals, in "
                           f"every seed: each LayerNorm then divides a sublayer's output alone by its small std "
                           f"(attention's {fmt(attention['std_out'])}, x + attention {fmt(attention['std_sum'])}), "
                           f"which scales the gradient up", claims.versus(none[:, 0], post[:, 0], "post-LN's"),
                           "above post-LN's in every seed").say()
    stands_out = claims.apart(none[:, peak], torch.cat([none[:, :peak], none[:, peak + 1:]], 1).flatten())
    deep = claims.versus(none[:, -1], post[:, -1], "post-LN's")
    common.explain(f"""With depth the "no residual" gradient {"peaks" if stands_out else "has its largest mean"} at
        {depths[peak]} blocks ({"beyond" if stands_out else "within"} the seed spread of the other depths).
        At {depths[-1]} blocks it is {fmt(ratio[-1])}x post-LN's: {deep}.""")
    return claims.all_of("insight-residuals", f"Without residuals the tokens leave a {depths[0]}-block stack identical "
                         f"and its first block gets {fmt(ratio[0])}x post-LN's gradient; at {depths[-1]} blocks "
                         f"{fmt(ratio[-1])}x ({deep}).", apart, shallow)


def section_7_norm_placement(results, study, out_dir, show):
    depths = study["depths"]
    common.section(7, "Post-LN against pre-LN as the stack gets deeper")
    ratio = {k: results[k]["first"] / results[k]["last"] for k in ("post-LN", "pre-LN")}  # (seeds, depths)
    std = {k: results[k]["stream_std"] for k in ("post-LN", "pre-LN")}                   # (seeds, depths)
    common.table([[d, seed_range(ratio["post-LN"][:, i]), seed_range(ratio["pre-LN"][:, i]),
                   std["post-LN"][:, i].mean(), std["pre-LN"][:, i].mean()] for i, d in enumerate(depths)],
                 ["blocks", "grad first/last: post-LN", "pre-LN", "stream std: post-LN", "pre-LN"])
    common.explain(f"""
        "grad first/last": the first block's gradient norm over the last block's, both layouts measured
        alike. "stream std": std of the last block's output (pre-LN: before its final LayerNorm). In
        post-LN every path from the loss down to a block passes through the LayerNorms of every block
        above it; in pre-LN the stream is never normalised, so the gradient reaches every block
        through the identity path, plus what the blocks above add. At {depths[-1]} blocks:""")
    post, pre = ratio["post-LN"][:, -1], ratio["pre-LN"][:, -1]  # each seed's ratio at the deepest stack
    apart = claims.check("post-LN-less-pre-LN-more", post.max() < 1 < pre.min(), "post-LN's first block gets less "
                         f"gradient than its last in every seed ({seed_range(post)}), pre-LN's more "
                         f"({seed_range(pre)}): the usual reason given for warming up post-LN's learning rate",
                         f"largest post-LN {fmt(post.max())}, smallest pre-LN {fmt(pre.min())}",
                         "below 1, above 1").say()
    start, end = std["pre-LN"][:, 0], std["pre-LN"][:, -1]
    streams = claims.check("stream-std", (std["post-LN"] - 1).abs().max() < 2e-3 and (end > start).all(), "post-"
                           "LN's stream has std 1 at every depth (a LayerNorm comes last); the price of pre-LN: its "
                           f"stream's std grew from {fmt(start.mean())} to {fmt(end.mean())}, so a final LayerNorm",
                           f"post-LN {seed_range(std['post-LN'])}", "1 for post-LN, growing for pre-LN").say()
    plot_gradients(results, study, out_dir, show)
    return claims.all_of("insight-norm-placement", f"First/last block at {depths[-1]} blocks: {seed_range(post)} "
                         f"post-LN, {seed_range(pre)} pre-LN, whose stream grew to std {fmt(end.mean())}: hence its "
                         "final LayerNorm.", apart, streams)


def plot_gradients(results, study, out_dir, show):
    from common.figures import log_axis  # ticks at 0.1, 0.2, 0.5, 1, ... labelled as plain numbers
    depths, seeds = study["depths"], study["seeds"]
    fig, axes = common.new_figure(1, 2, figsize=(11, 4.2), show=show)
    for variant, style in {"post-LN": "o-", "pre-LN": "s-", "no residual": "^--"}.items():
        first, per_layer = results[variant]["first"], results[variant]["per_layer"]
        line, = axes[0].plot(depths, first.mean(0), style, label=variant)
        if len(seeds) > 1:  # shade the range over the random initialisations
            axes[0].fill_between(depths, *first.aminmax(dim=0), color=line.get_color(), alpha=0.15)
        axes[1].plot(range(1, depths[-1] + 1), per_layer.mean(0), style, label=variant, markersize=4)
    axes[0].set_xscale("log", base=2)
    axes[0].set_xticks(depths, [str(d) for d in depths])
    axes[0].set(xlabel="number of blocks in the stack", title="first block, stacks of each depth")
    axes[1].set(xlabel=f"block index (1 = first) in the {depths[-1]}-block stack",
                title=f"every block of the {depths[-1]}-block stack")
    axes[1].xaxis.get_major_locator().set_params(integer=True)  # block indices are whole numbers
    for ax in axes:
        log_axis(ax, "y")
        ax.set(ylabel="gradient norm (attention + FFN weights)")
        ax.legend()
    seeds_text = f"mean over seeds {seeds} (shaded: their range)" if len(seeds) > 1 else f"seed {seeds[0]}"
    fig.suptitle(f"Gradient reaching each block at initialisation, {seeds_text}")
    common.save_figure(fig, out_dir, "transformer_block_gradients.png", show=show)


# %% Settings and main
def settings(args):
    """Block sizes (flags first, else the knobs) and the measurement sizes, each checked (common.knobs)."""
    sizes = [common.flag_or_knob(args, dest, knob, value) for dest, knob, value in
             (("d_model", "D_MODEL", D_MODEL), ("heads", "N_HEADS", N_HEADS), ("d_ff", "D_FF", D_FF),
              ("layers", "N_LAYERS", N_LAYERS))]
    for value, label in sizes:
        common.whole(value, label, low=1)
    (d, d_label), (heads, h_label), (d_ff, f_label), (layers, l_label) = sizes
    common.require(d % heads == 0, f"{h_label} must divide {d_label} (each head gets d_model / n_heads)")
    needed = (2 * layers + 9) * (4 * (d * d + d) + 2 * d * d_ff + d_ff + 5 * d)
    common.require(needed <= MAX_PARAMETERS, f"{d_label}, {f_label}, {l_label} need about {needed / 1e6:,.0f} "
                   f"million parameters (section 5), at most {MAX_PARAMETERS // 10**6} million: e.g. 512, "
                   "2048 and 6")
    common.whole(B, "B", low=1)
    common.whole(T, "T", low=2, hint="the examples need sequences of at least 2 tokens")
    common.number(DROPOUT, "DROPOUT", low=0, high=1, high_open=True, hint="a probability, e.g. 0.1")
    q = "QUICK_" if args.quick else ""  # --quick reads the QUICK_ knobs
    common.quick_note(args, COST_LENGTHS=(COST_LENGTHS, QUICK_COST_LENGTHS),
                      DEPTH_STUDY=(DEPTH_STUDY, QUICK_DEPTH_STUDY))
    lengths = common.whole_numbers(QUICK_COST_LENGTHS if args.quick else COST_LENGTHS, f"{q}COST_LENGTHS",
                                   low=1, distinct=2)
    study = dict(common.whole_fields(QUICK_DEPTH_STUDY if args.quick else DEPTH_STUDY, f"{q}DEPTH_STUDY",
                                     d_model=1, heads=1, B=1, T=2))
    common.require(study["d_model"] % study["heads"] == 0, f"{q}DEPTH_STUDY: heads must divide d_model")
    depths = common.whole_numbers(study.get("depths"), f"{q}DEPTH_STUDY['depths']", low=1)
    offsets = common.whole_numbers(study.get("seeds"), f"{q}DEPTH_STUDY['seeds']", low=0, high=1000)
    study.update(depths=sorted(set(depths)), seeds=tuple(args.seed + k for k in offsets))
    return d, heads, d_ff, layers, sorted(set(lengths)), study


@common.entry_point
def main(argv=None):
    parser = common.lesson_parser(__doc__, quick_help="shorter lengths in section 4, two depths in sections 6 and 7")
    parser.add_argument("--d-model", type=int, help=f"token width, sections 1-5 (default D_MODEL = {D_MODEL})")
    parser.add_argument("--heads", type=int, help=f"heads, must divide d_model (default N_HEADS = {N_HEADS})")
    parser.add_argument("--d-ff", type=int, help=f"feed-forward hidden width (default D_FF = {D_FF})")
    parser.add_argument("--layers", type=int, help=f"blocks in section 5 (default N_LAYERS = {N_LAYERS})")
    args = common.parse_args(parser, argv)
    d_model, n_heads, d_ff, n_layers, lengths, study = settings(args)
    device = common.setup(args, "Lesson 04: the transformer encoder block")
    print("  reusing MultiHeadAttention from lesson 02 and causal_mask from lesson 01 (load_lesson)")
    insights = [section_1_block(d_model, n_heads, d_ff, device),
                section_2_layernorm(d_model, device, args.out_dir, args.show),
                section_3_feed_forward(d_model, n_heads, d_ff, device),
                section_4_cost(d_model, n_heads, d_ff, lengths, device),
                section_5_stacking(n_layers, d_model, n_heads, d_ff, device)]
    results, attention = depth_study(study, device)
    common.key_insights(insights + [section_6_residuals(results, attention, study),
                                    section_7_norm_placement(results, study, args.out_dir, args.show)])


if __name__ == "__main__":
    main()
