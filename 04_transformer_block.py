"""Lesson 04: the transformer encoder block: attention, feed-forward, residuals and LayerNorm.

What you will learn:
  1. How a block is wired, post-LN (the paper) and pre-LN (most modern code), checked equal to
     PyTorch's nn.TransformerEncoderLayer after copying its weights.
  2. LayerNorm normalises each token on its own.
  3. The feed-forward network is position-wise.
  4. Stacking blocks: shapes, and parameter counts by formula vs numel().
  5. What residual connections do in a deep stack.
  6. Post-LN against pre-LN as the stack gets deeper.

Run:  python 04_transformer_block.py                 (about 6 s on a 2-core CPU)
      python 04_transformer_block.py --d-model 128 --heads 8 --d-ff 512 --layers 6
      python 04_transformer_block.py --help          (all flags)

Shapes: B batch, T sequence length, d_model token width, n_heads heads,
        d_head = d_model // n_heads, d_ff feed-forward hidden width.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

import common
from common import load_lesson

# Reused from earlier lessons (one source for each component).
MultiHeadAttention = load_lesson(2).MultiHeadAttention
causal_mask = load_lesson(1).causal_mask

# %% Knobs: edit these and re-run
D_MODEL = 64          # token width of the block in sections 1-4 (--d-model)
N_HEADS = 4           # attention heads (--heads); must divide D_MODEL
D_FF = 256            # feed-forward hidden width, 4 * d_model as in the paper (--d-ff)
N_LAYERS = 4          # blocks in the stack of section 4 (--layers)
B, T = 2, 6           # batch size and sequence length of the small examples
DEPTHS = (2, 4, 8, 16, 32)   # stack depths of the depth study (sections 5-6)
DEPTH_D_MODEL = 32    # the depth study uses small blocks so that 32 of them run in a blink
DEPTH_HEADS = 4
DEPTH_B, DEPTH_T = 8, 16     # batch and sequence length of the depth study
DEPTH_SEEDS = (0, 1)  # random initialisations measured at each depth (results are averaged)
QUICK = dict(depths=(2, 4), d_model=16, heads=2, B=4, T=8, seeds=(0,))  # --quick
MAX_PARAMETERS = 250_000_000  # sections 1-4 hold about 2 * --layers + 7 blocks: keep them under 1 GB


# %% Building blocks
class FeedForward(nn.Module):
    """Position-wise feed-forward: the same two-layer MLP applied to every token on its own.

    FFN(x) = linear2(dropout(relu(linear1(x)))), d_model -> d_ff -> d_model.
    """

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
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)

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
    """n_layers encoder blocks in a row (plus a final LayerNorm when pre-LN).

    forward(x (B, T, d_model), mask=None) -> (B, T, d_model);
    with return_weights=True -> (x, [weights of each layer, (B, n_heads, T, T)]).
    """

    def __init__(self, n_layers: int, d_model: int, n_heads: int, d_ff: int, dropout: float = 0.0,
                 norm_first: bool = False):
        super().__init__()
        self.layers = nn.ModuleList(
            TransformerEncoderBlock(d_model, n_heads, d_ff, dropout, norm_first) for _ in range(n_layers)
        )
        # Pre-LN leaves the last block's output un-normalised, so a final LayerNorm follows.
        self.norm = nn.LayerNorm(d_model) if norm_first else nn.Identity()

    def forward(self, x, mask=None, return_weights: bool = False):
        all_weights = []
        for layer in self.layers:
            if return_weights:
                x, weights = layer(x, mask, return_weights=True)
                all_weights.append(weights)
            else:
                x = layer(x, mask)
        x = self.norm(x)
        return (x, all_weights) if return_weights else x


@torch.no_grad()
def copy_weights_from_torch(block, torch_layer):
    """Copy PyTorch's weights into ours, so both compute the same function. Returns `block`.

    block: our TransformerEncoderBlock, torch_layer: nn.TransformerEncoderLayer (same sizes and
    norm_first). Also accepts our TransformerEncoder and an nn.TransformerEncoder made of such
    layers (its `norm` must be a LayerNorm exactly when ours is pre-LN).
    """
    if isinstance(block, TransformerEncoder):  # a whole stack: block by block, then the final norm
        for ours, theirs in zip(block.layers, torch_layer.layers, strict=True):
            copy_weights_from_torch(ours, theirs)
        if isinstance(block.norm, nn.LayerNorm):
            block.norm.load_state_dict(torch_layer.norm.state_dict())
        return block
    if block.norm_first != torch_layer.norm_first:
        raise ValueError(f"norm_first differs: ours {block.norm_first}, PyTorch's {torch_layer.norm_first}")
    d_model = block.self_attn.d_model
    theirs = torch_layer.self_attn
    # PyTorch stores W_q, W_k, W_v stacked in one (3 d_model, d_model) matrix: rows [W_q; W_k; W_v].
    for i, linear in enumerate((block.self_attn.W_q, block.self_attn.W_k, block.self_attn.W_v)):
        linear.weight.copy_(theirs.in_proj_weight[i * d_model:(i + 1) * d_model])
        linear.bias.copy_(theirs.in_proj_bias[i * d_model:(i + 1) * d_model])
    block.self_attn.W_o.load_state_dict(theirs.out_proj.state_dict())
    block.feed_forward.linear1.load_state_dict(torch_layer.linear1.state_dict())
    block.feed_forward.linear2.load_state_dict(torch_layer.linear2.state_dict())
    block.norm1.load_state_dict(torch_layer.norm1.state_dict())
    block.norm2.load_state_dict(torch_layer.norm2.state_dict())
    return block


class WithoutResidual(nn.Module):
    """A post-LN block (its very weights) with both residual connections removed, for section 5."""

    def __init__(self, block: TransformerEncoderBlock):
        super().__init__()
        self.block = block

    def forward(self, x, mask=None):
        b = self.block
        x = b.norm1(b.self_attn(x, x, x, mask=mask, need_weights=False)[0])  # no "x +"
        return b.norm2(b.feed_forward(x))                                    # no "x +"


def fmt3(value) -> str:
    """A number with 3 significant digits, for sentences."""
    return common.fmt(value, 3)


def per_token_stats(x):
    """Mean and std of each token over its d_model features: (B, T, d_model) -> two (B, T)."""
    return x.mean(dim=-1), x.std(dim=-1, unbiased=False)  # LayerNorm uses the biased variance


def grad_norm(module) -> float:
    """The L2 norm of all of a module's parameter gradients, as one vector."""
    return torch.sqrt(sum((p.grad ** 2).sum() for p in module.parameters())).item()


def token_similarity(x) -> float:
    """Mean cosine similarity between different tokens of the same sequence (1 = all identical)."""
    unit = F.normalize(x, dim=-1)
    cos = unit @ unit.transpose(1, 2)  # (B, T, d_model) @ (B, d_model, T) -> (B, T, T)
    off_diagonal = ~torch.eye(x.size(1), dtype=torch.bool, device=x.device)
    return cos[:, off_diagonal].mean().item()


def ratio_first(variant_results) -> float:
    """How the first block's gradient changed from the shallowest to the deepest stack."""
    return variant_results["first"][-1] / variant_results["first"][0]


# %% 1. One block, step by step, and PyTorch's own
def section_1_block(d_model, n_heads, d_ff, device):
    common.section(1, "One encoder block, and PyTorch's nn.TransformerEncoderLayer")
    common.explain("""
        A block has two sublayers: self-attention (lesson 02's MultiHeadAttention, reused via
        load_lesson(2)) lets tokens exchange information; a feed-forward network then processes
        each token on its own. Each sublayer is wrapped in a residual connection (x + ...) and a
        LayerNorm, in one of two layouts you will meet in real code:

        post-LN (the 2017 paper, section 3.1):  x = LayerNorm(x + Sublayer(x))

        pre-LN (GPT-2 and most modern code):     x = x + Sublayer(LayerNorm(x)), plus one final
        LayerNorm after the last block. PyTorch: nn.TransformerEncoderLayer(norm_first=True).

        Here is post-LN computed by hand from the block's parts:""")
    block = TransformerEncoderBlock(d_model, n_heads, d_ff).to(device).eval()
    x = torch.randn(B, T, d_model, device=device)
    with torch.no_grad():
        attended, weights = block.self_attn(x, x, x)                        # (B, T, d_model)
        h = block.norm1(x + attended)                                       # (B, T, d_model)
        hidden = block.feed_forward.activation(block.feed_forward.linear1(h))  # (B, T, d_ff)
        ffn_out = block.feed_forward.linear2(hidden)                        # (B, T, d_model)
        y = block.norm2(h + ffn_out)                                        # (B, T, d_model)
        by_hand_diff = (y - block(x)).abs().max().item()
    steps = [("x", x), ("self-attention output", attended), ("attention weights", weights),
             ("x + attention (residual sum)", x + attended), ("h = norm1(x + attention)", h),
             ("feed-forward hidden, after ReLU", hidden), ("h + feed-forward (residual sum)", h + ffn_out),
             ("output = norm2(h + feed-forward)", y)]
    common.table([[name, str(tuple(t.shape)), t.std()] for name, t in steps], ["step", "shape", "std"])
    print(f"  largest |by hand - block(x)| = {common.fmt(by_hand_diff)}")

    common.explain("""
        Now against PyTorch: copy_weights_from_torch() copies the weights of an
        nn.TransformerEncoderLayer(batch_first=True, dropout=0.0) into our block (its in_proj_weight
        holds W_q, W_k, W_v stacked). PyTorch's src_mask uses the opposite polarity (True =
        blocked), so it gets ~mask.""")
    rows = []
    mask = causal_mask(T, device=device)  # True = may attend (on and below the diagonal)
    for norm_first in (False, True):
        reference = nn.TransformerEncoderLayer(d_model, n_heads, d_ff, dropout=0.0, batch_first=True,
                                               norm_first=norm_first).to(device).eval()
        ours = TransformerEncoderBlock(d_model, n_heads, d_ff, norm_first=norm_first).to(device).eval()
        copy_weights_from_torch(ours, reference)
        with torch.no_grad():
            for name, m in (("none", None), ("causal", mask)):
                diff = (ours(x, mask=m) - reference(x, src_mask=None if m is None else ~m)).abs().max()
                rows.append(["pre-LN" if norm_first else "post-LN", name, diff.item()])
    common.table(rows, ["layout", "mask", "largest |ours - PyTorch|"])
    worst = max(r[2] for r in rows)
    print(f"  -> {'equal up to float32 rounding' if worst < 1e-4 else 'NOT equal: check the wiring'}")
    pre = TransformerEncoderBlock(d_model, n_heads, d_ff, norm_first=True).to(device).eval()
    pre.load_state_dict(block.state_dict())  # the same weights, the other layout
    with torch.no_grad():
        wiring_diff = (pre(x) - y).abs().max().item()
    print(f"  same weights, pre-LN instead of post-LN: outputs differ by up to {common.fmt(wiring_diff)}")
    return dict(worst=worst, wiring_diff=wiring_diff)


# %% 2. LayerNorm works per token
def section_2_layernorm(d_model, device, out_dir, show):
    common.section(2, "LayerNorm normalises each token on its own")
    common.explain("""
        LayerNorm(x) = gamma * (x - mean(x)) / sqrt(var(x) + eps) + beta, where mean and var are
        taken over the d_model features of ONE token. gamma starts at 1 and beta at 0 (both are
        learned). Below, each token gets its own offset and scale; after LayerNorm every token has
        mean ~0 and std ~1, whatever it started with.""")
    offsets = torch.linspace(-4.0, 6.0, T, device=device)
    scales = torch.logspace(-1, 1, T, device=device)  # 0.1 ... 10
    x = torch.randn(1, T, d_model, device=device) * scales[:, None] + offsets[:, None]  # (1, T, d_model)
    norm = nn.LayerNorm(d_model).to(device)
    with torch.no_grad():
        y = norm(x)
        alone = norm(x[:, 2:3])  # token 2 on its own, without its neighbours
    mean_before, std_before = per_token_stats(x)
    mean_after, std_after = per_token_stats(y)
    common.table([[t, mean_before[0, t], std_before[0, t], mean_after[0, t], std_after[0, t]]
                  for t in range(T)], ["token", "mean before", "std before", "mean after", "std after"])
    alone_diff = (alone - y[:, 2:3]).abs().max().item()
    max_mean, max_std_err = mean_after.abs().max().item(), (std_after - 1).abs().max().item()
    print(f"  after: largest |mean| {common.fmt(max_mean)}, largest |std - 1| {common.fmt(max_std_err)}")
    print(f"  token 2 normalised alone vs inside the sequence: largest difference {common.fmt(alone_diff)}")
    common.explain("""
        The statistics never mix tokens (nor the sequences of a batch, unlike BatchNorm): LayerNorm,
        like the feed-forward below, treats every position the same way, on its own.""")

    fig, axes = common.new_figure(1, 2, figsize=(10, 4), show=show, sharex=True)
    for ax, values, when in ((axes[0], x, "before"), (axes[1], y, "after")):
        for t in range(T):
            jitter = torch.linspace(-0.25, 0.25, d_model)
            ax.scatter(t + jitter, values[0, t].cpu(), s=6, alpha=0.6)
        stats = per_token_stats(values)
        ax.errorbar(range(T), stats[0][0].cpu(), yerr=stats[1][0].cpu(), fmt="k_", capsize=4, ms=14,
                    label="mean +- std of the token")
        ax.set_title(f"{when} LayerNorm")
        ax.set_xlabel("token position")
        ax.set_ylabel("feature value")
        ax.set_xticks(range(T))
    axes[1].axhline(0, color="gray", lw=0.8)
    axes[0].legend(loc="upper left")
    fig.suptitle("LayerNorm gives every token mean 0 and std 1 over its own features")
    common.save_figure(fig, out_dir, "transformer_block_layernorm.png", show=show)
    return dict(max_mean=max_mean, max_std_err=max_std_err, alone_diff=alone_diff)


# %% 3. The feed-forward network is position-wise
def section_3_feed_forward(d_model, n_heads, d_ff, device):
    common.section(3, "The feed-forward network is position-wise")
    common.explain(f"""
        FFN(x) = linear2(relu(linear1(x))) widens each token from d_model={d_model} to d_ff={d_ff}
        and back. nn.Linear acts on the last dimension only, so each token is processed alone, with
        the same weights at every position. Measured:""")
    block = TransformerEncoderBlock(d_model, n_heads, d_ff).to(device).eval()
    ffn, attn = block.feed_forward, block.self_attn
    x = torch.randn(B, T, d_model, device=device)
    perm = torch.randperm(T, device=device)
    x_changed = x.clone()
    x_changed[:, 0] += 1.0  # change token 0 only
    with torch.no_grad():
        y = ffn(x)
        alone = (ffn(x[:, 3:4]) - y[:, 3:4]).abs().max().item()
        shuffled = (ffn(x[:, perm]) - y[:, perm]).abs().max().item()
        ffn_others = (ffn(x_changed) - y)[:, 1:].abs().max().item()
        attn_others = (attn(x_changed, x_changed, x_changed)[0] - attn(x, x, x)[0])[:, 1:].abs().max().item()
    common.table([["token 3 alone vs inside the sequence", alone],
                  ["FFN(shuffled tokens) vs shuffled FFN(tokens)", shuffled],
                  ["change token 0: largest change at tokens 1.., FFN", ffn_others],
                  ["change token 0: largest change at tokens 1.., attention", attn_others]],
                 ["measurement", "largest difference"])
    worst = max(alone, shuffled, ffn_others)
    common.explain(f"""
        The feed-forward {'is' if worst < 1e-5 else 'is NOT'} position-wise (differences <=
        {common.fmt(worst)}), while attention moved the other tokens by up to {common.fmt(attn_others)}:
        attention mixes tokens, then the feed-forward works on each mixed token alone.""")
    return dict(position_wise=worst, attn_others=attn_others)


# %% 4. Stacking blocks: shapes and parameter counts
def section_4_stacking(n_layers, d_model, n_heads, d_ff, device):
    common.section(4, f"Stacking {n_layers} blocks: shapes and parameter counts")
    encoders = {nf: TransformerEncoder(n_layers, d_model, n_heads, d_ff, norm_first=nf).to(device).eval()
                for nf in (False, True)}
    x = torch.randn(B, T, d_model, device=device)
    rows, h = [["input", str(tuple(x.shape)), x.std()]], x
    with torch.no_grad():
        for i, layer in enumerate(encoders[True].layers):
            h = layer(h)  # (B, T, d_model) -> (B, T, d_model)
            rows.append([f"after block {i + 1}", str(tuple(h.shape)), h.std()])
        rows.append(["after the final LayerNorm", str(tuple(h.shape)), encoders[True].norm(h).std()])
    common.table(rows, ["pre-LN stack", "shape", "std"])
    stds = [r[2] for r in rows[:-1]]
    steady = all(b > a for a, b in zip(stds, stds[1:]))
    grows = "grew after every block" if steady else "did not grow steadily"
    common.explain(f"""
        Every block maps (B, T, d_model) to (B, T, d_model), so blocks stack: the output of one is
        the input of the next. In pre-LN the std {grows} ({fmt3(stds[0])} -> {fmt3(stds[-1])}); the
        final LayerNorm brings it back to 1.""")

    attention = 4 * (d_model * d_model + d_model)  # W_q, W_k, W_v, W_o: weights + biases
    feed_forward = d_model * d_ff + d_ff + d_ff * d_model + d_model
    norms = 2 * 2 * d_model  # two LayerNorms, each with gamma and beta
    per_block = attention + feed_forward + norms
    numel = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    block = encoders[False].layers[0]
    rows = [["self-attention", "4 (d_model^2 + d_model)", attention, numel(block.self_attn)],
            ["feed-forward", "2 d_model d_ff + d_ff + d_model", feed_forward, numel(block.feed_forward)],
            ["two LayerNorms", "4 d_model", norms, numel(block.norm1) + numel(block.norm2)],
            ["one block", "sum of the above", per_block, numel(block)],
            [f"{n_layers} blocks, post-LN", "N x block", n_layers * per_block, numel(encoders[False])],
            [f"{n_layers} blocks, pre-LN", "N x block + 2 d_model (final norm)",
             n_layers * per_block + 2 * d_model, numel(encoders[True])]]
    common.table(rows, ["part", "formula", "by formula", "numel()"])
    all_match = all(r[2] == r[3] for r in rows)
    print(f"  formula == numel() in every row: {all_match}")
    common.explain(f"""
        Attention costs 4 d_model^2 and the feed-forward 2 d_model d_ff = {common.fmt(2 * d_ff / d_model, 3)}
        d_model^2: the feed-forward holds {common.fmt(100 * feed_forward / per_block, 3)}% of a block's
        parameters.""")
    return dict(per_block=per_block, all_match=all_match, ffn_share=feed_forward / per_block)


# %% 5-6. The depth study: residuals, and post-LN vs pre-LN
def depth_study(depths, d_model, n_heads, batch, length, seeds, device):
    """Gradients reaching each block of stacks of each depth, under a random regression loss.

    Per seed, one stack of max(depths) blocks; the stack of depth N is its first N blocks, and the
    three variants share these weights (only the wiring differs). Returns {variant: {"first",
    "last", "similarity", "stream_std": a value per depth, "per_layer": the deepest stack's
    gradient norm per block}}, averaged over the seeds, and the first block's mean largest
    attention weight per query.
    """
    results = {v: {k: [0.0] * len(depths) for k in ("first", "last", "similarity", "stream_std")}
               for v in ("post-LN", "pre-LN", "no residual")}
    attn_max = 0.0
    for seed in seeds:
        torch.manual_seed(seed)
        post = TransformerEncoder(max(depths), d_model, n_heads, 4 * d_model).to(device)
        pre = TransformerEncoder(max(depths), d_model, n_heads, 4 * d_model, norm_first=True).to(device)
        pre.load_state_dict(post.state_dict(), strict=False)  # same blocks; pre-LN adds a final norm
        stacks = {"post-LN": (post.layers, post.norm), "pre-LN": (pre.layers, pre.norm),
                  "no residual": ([WithoutResidual(b) for b in post.layers], post.norm)}
        x = torch.randn(batch, length, d_model, device=device)
        target = torch.randn(batch, length, d_model, device=device)
        with torch.no_grad():
            weights = post.layers[0].self_attn(x, x, x)[1]  # (B, n_heads, T, T)
            attn_max += weights.max(dim=-1).values.mean().item() / len(seeds)
        for variant, (layers, final_norm) in stacks.items():
            r = results[variant]
            for i, depth in enumerate(depths):
                post.zero_grad(set_to_none=True)
                pre.zero_grad(set_to_none=True)
                h = x
                for layer in layers[:depth]:
                    h = layer(h)  # (B, T, d_model)
                out = final_norm(h)
                F.mse_loss(out, target).backward()
                norms = [grad_norm(layer) for layer in layers[:depth]]
                r["first"][i] += norms[0] / len(seeds)
                r["last"][i] += norms[-1] / len(seeds)
                r["similarity"][i] += token_similarity(out.detach()) / len(seeds)
                r["stream_std"][i] += h.std().item() / len(seeds)  # before any final norm
            # depths are in increasing order, so `norms` is now the deepest stack's
            r["per_layer"] = [a + n / len(seeds) for a, n in zip(r.get("per_layer", [0.0] * depth), norms)]
    return results, attn_max


def section_5_residuals(results, attn_max, depths, length, size_note):
    common.section(5, "What residual connections do in a deep stack")
    common.explain(f"""
        With a residual, a block computes x + f(x), whose derivative is I + f'(x): the gradient from
        the loss reaches every block through the identity path as well as through the sublayers.
        Without it, the gradient must pass through every sublayer in turn. (In post-LN a LayerNorm
        sits on that identity path after every sublayer: section 6.) We stack {depths[0]} to
        {depths[-1]} blocks ({size_note}), put a random regression loss on the output and measure the
        gradient norm of the FIRST block's parameters. All stacks share the same weights; "no
        residual" is post-LN with both "x +" removed (class WithoutResidual).""")
    v = ("post-LN", "pre-LN", "no residual")
    common.table([[d] + [results[k]["first"][i] for k in v] + [results[k]["similarity"][i] for k in v]
                  for i, d in enumerate(depths)],
                 ["blocks", "grad post-LN", "grad pre-LN", "grad no-res", "sim post-LN", "sim pre-LN",
                  "sim no-res"])
    change = {k: ratio_first(results[k]) for k in v}
    sims = [results[k]["similarity"] for k in v]
    if change["no residual"] < min(1.0, change["post-LN"], change["pre-LN"]):
        kept = min(change["post-LN"], change["pre-LN"])
        kept = "all" if kept >= 1 else "most" if kept >= 0.5 else "more"
        verdict = ("without residuals the early blocks lose their gradient as the stack grows; with "
                   f"residuals they keep {kept} of it")
    else:
        verdict = "at these sizes this measure does not show an advantage of the residuals"
    creeps = "still creeps up with depth" if all(s[-1] > s[0] for s in sims[:2]) else "stays put"
    common.explain(f"""
        From {depths[0]} to {depths[-1]} blocks the first block's gradient went to
        {fmt3(change['no residual'])}x its value without residuals, and to {fmt3(change['post-LN'])}x
        (post-LN) and {fmt3(change['pre-LN'])}x (pre-LN) with them: {verdict}. (Compare how each column
        changes with depth, not the columns' levels.)

        "sim" is the mean cosine similarity between different tokens at the output (1 = identical
        tokens): {fmt3(sims[2][0])} without residuals at {depths[0]} blocks, against {fmt3(sims[0][0])}
        (post-LN) with them. Why: at initialisation a query's largest attention weight is
        {fmt3(attn_max)} on average, close to uniform (1/T = {fmt3(1 / length)}), so the attention output
        is about the average of all tokens, the same for every token. Without a residual that
        average replaces the token; with one it is added to it. With residuals the similarity
        {creeps} ({fmt3(sims[0][-1])} post-LN, {fmt3(sims[1][-1])} pre-LN at {depths[-1]} blocks).""")
    return change


def section_6_norm_placement(results, depths, out_dir, show):
    common.section(6, "Post-LN against pre-LN as the stack gets deeper")
    post, pre = results["post-LN"], results["pre-LN"]
    ratio_post = [f / l for f, l in zip(post["first"], post["last"])]
    ratio_pre = [f / l for f, l in zip(pre["first"], pre["last"])]
    common.table([[d, ratio_post[i], ratio_pre[i], post["stream_std"][i], pre["stream_std"][i]]
                  for i, d in enumerate(depths)],
                 ["blocks", "grad first/last: post-LN", "pre-LN", "stream std: post-LN", "pre-LN"])
    if ratio_post[-1] < ratio_post[0] < 1:
        post_verdict = ("Here the early blocks got less gradient than the late ones, the more so the "
                        "deeper the stack. This imbalance is the usual explanation of why post-LN, the "
                        "paper's layout, is trained with a warmup of the learning rate.")
    else:
        post_verdict = "Here that did not starve the early blocks."
    pre_verdict = ("the early blocks got at least as much as the late ones" if min(ratio_pre) >= 1
                   else "yet here some early blocks got less")
    grows = "grows with depth" if pre["stream_std"][-1] > pre["stream_std"][0] else "did not grow here"
    common.explain(f"""
        "grad first/last": gradient norm of the first block / of the last block. "stream std": std
        of the last block's output (for pre-LN, before its final LayerNorm).

        Post-LN: at {depths[-1]} blocks the first block gets {fmt3(ratio_post[-1])}x the gradient of the
        last ({fmt3(ratio_post[0])}x at {depths[0]} blocks). Every path from the loss down to a block
        passes through the two LayerNorms of every block above it; nothing bypasses them.
        {post_verdict}

        Pre-LN: the ratio is {fmt3(ratio_pre[-1])} at {depths[-1]} blocks ({fmt3(ratio_pre[0])} at
        {depths[0]}). The stream is never normalised, so the gradient at the top reaches every block
        unchanged through the identity path, plus what the blocks above add: {pre_verdict}. The
        price: the stream {grows} (std {fmt3(pre['stream_std'][0])} at {depths[0]} blocks,
        {fmt3(pre['stream_std'][-1])} at {depths[-1]}), hence the final LayerNorm; post-LN's output has
        std 1 by construction.""")

    from matplotlib.ticker import FormatStrFormatter, LogLocator, MaxNLocator, NullFormatter  # loaded by now

    fig, axes = common.new_figure(1, 2, figsize=(11, 4.2), show=show)
    for variant, style in {"post-LN": "o-", "pre-LN": "s-", "no residual": "^--"}.items():
        axes[0].plot(depths, results[variant]["first"], style, label=variant)
        per_layer = results[variant]["per_layer"]
        axes[1].plot(range(1, len(per_layer) + 1), per_layer, style, label=variant, markersize=4)
    axes[0].set_xscale("log", base=2)
    axes[0].set_xticks(depths, [str(d) for d in depths])
    axes[0].set(xlabel="number of blocks in the stack", title="gradient norm reaching the first block")
    axes[1].set(xlabel=f"block index (1 = first) in the {depths[-1]}-block stack",
                title=f"gradient norm of every block, {depths[-1]} blocks")
    axes[1].xaxis.set_major_locator(MaxNLocator(integer=True))  # block indices are whole numbers
    for ax in axes:
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1, 2, 5)))  # ticks at 0.1, 0.2, 0.5, 1 ...
        ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_ylabel("gradient norm of the block's parameters")
        ax.legend()
    fig.suptitle("Without residuals the first blocks lose their gradient as depth grows"
                 if ratio_first(results["no residual"]) < min(1.0, ratio_first(post), ratio_first(pre))
                 else f"Gradient reaching the first blocks, {depths[0]} to {depths[-1]} blocks deep")
    common.save_figure(fig, out_dir, "transformer_block_gradients.png", show=show)
    return dict(ratio_post=ratio_post[-1], ratio_pre=ratio_pre[-1], pre_std=pre["stream_std"][-1])


# %% main
def main(argv=None):
    parser = common.lesson_parser(__doc__, quick_help="tiny sizes for the depth study (2 and 4 blocks)")
    parser.add_argument("--d-model", type=int, default=D_MODEL,
                        help="token width of the block in sections 1-4 (the depth study of sections 5-6 "
                             "uses its own small sizes, DEPTH_* at the top of the file)")
    parser.add_argument("--heads", type=int, default=N_HEADS, help="attention heads; must divide --d-model")
    parser.add_argument("--d-ff", type=int, default=D_FF, help="feed-forward hidden width")
    parser.add_argument("--layers", type=int, default=N_LAYERS, help="blocks in the stack of section 4")
    args = common.parse_args(parser, argv)
    for flag, default in (("d_model", D_MODEL), ("heads", N_HEADS), ("d_ff", D_FF), ("layers", N_LAYERS)):
        try:
            common.check_positive("--" + flag.replace("_", "-"), getattr(args, flag))
        except common.UserError as exc:
            common.fail(f"{exc}; e.g. --{flag.replace('_', '-')} {default}")
    if args.d_model % args.heads != 0:
        valid = max(h for h in range(1, args.heads + 1) if args.d_model % h == 0)
        common.fail(f"--d-model {args.d_model} is not divisible by --heads {args.heads} (each head gets "
                    f"d_model / heads features); try --heads {valid}, or --d-model {args.heads * 16}")
    # one block: 4 (d^2 + d) attention + 2 d d_ff + d_ff + d feed-forward + 4 d LayerNorms (section 4)
    d, d_ff = args.d_model, args.d_ff
    needed = (2 * args.layers + 7) * (4 * (d * d + d) + 2 * d * d_ff + d_ff + 5 * d)
    if needed > MAX_PARAMETERS:
        common.fail(f"--d-model {d} --d-ff {d_ff} --layers {args.layers} need about {needed / 1e6:,.0f} "
                    f"million parameters ({4 * needed / 1e9:,.1f} GB) in this lesson; keep it under "
                    f"{MAX_PARAMETERS // 1_000_000} million, e.g. --d-model 512 --d-ff 2048 --layers 6")
    device = common.setup(args, "Lesson 04: the transformer encoder block")
    print("  reusing MultiHeadAttention from lesson 02 and causal_mask from lesson 01 (load_lesson)")

    r1 = section_1_block(args.d_model, args.heads, args.d_ff, device)
    r2 = section_2_layernorm(args.d_model, device, args.out_dir, args.show)
    r3 = section_3_feed_forward(args.d_model, args.heads, args.d_ff, device)
    r4 = section_4_stacking(args.layers, args.d_model, args.heads, args.d_ff, device)
    q = QUICK if args.quick else dict(depths=DEPTHS, d_model=DEPTH_D_MODEL, heads=DEPTH_HEADS,
                                      B=DEPTH_B, T=DEPTH_T, seeds=DEPTH_SEEDS)
    results, attn_max = depth_study(q["depths"], q["d_model"], q["heads"], q["B"], q["T"], q["seeds"],
                                    device)
    plural = "s" if len(q["seeds"]) > 1 else ""
    size_note = (f"d_model {q['d_model']}, {q['heads']} heads, d_ff {4 * q['d_model']}, B {q['B']}, "
                 f"T {q['T']}, averaged over {len(q['seeds'])} random initialisation{plural}")
    change = section_5_residuals(results, attn_max, q["depths"], q["T"], size_note)
    r6 = section_6_norm_placement(results, q["depths"], args.out_dir, args.show)
    first, last = q["depths"][0], q["depths"][-1]
    common.key_insights([
        f"Our block equals nn.TransformerEncoderLayer after copying weights (largest difference "
        f"{common.fmt(r1['worst'])}) in both layouts: post-LN normalises after the residual add (the "
        f"paper), pre-LN before each sublayer (modern code); with the same weights they differ by up to "
        f"{fmt3(r1['wiring_diff'])}.",
        f"LayerNorm works per token: afterwards each token has |mean| <= {common.fmt(r2['max_mean'])} and "
        f"|std - 1| <= {common.fmt(r2['max_std_err'])}, whatever its neighbours.",
        f"The feed-forward is position-wise (differences <= {common.fmt(r3['position_wise'])}); attention "
        f"is what mixes tokens (it moved other tokens by {fmt3(r3['attn_others'])}).",
        f"A block keeps the shape (B, T, d_model), so blocks stack; one block has {r4['per_block']:,} "
        f"parameters (formula == numel(): {r4['all_match']}), {fmt3(100 * r4['ffn_share'])}% of them in "
        f"the feed-forward.",
        f"Residuals: from {first} to {last} blocks the first block's gradient went to "
        f"{fmt3(change['no residual'])}x without them, {fmt3(change['post-LN'])}x (post-LN) and "
        f"{fmt3(change['pre-LN'])}x (pre-LN) with them.",
        f"At {last} blocks the first/last gradient ratio is {fmt3(r6['ratio_post'])} for post-LN and "
        f"{fmt3(r6['ratio_pre'])} for pre-LN, whose un-normalised stream reached std {fmt3(r6['pre_std'])}: "
        f"hence its final LayerNorm.",
    ])


if __name__ == "__main__":
    main()
