"""Lesson 03: positional encoding - how a transformer knows the order of its tokens.

What you will learn:
  1. Attention alone is blind to order: shuffle the tokens and its output is shuffled the same way.
  2. The sinusoidal table PE[p, 2i] = sin(p / 10000^(2i/d_model)), PE[p, 2i+1] = cos(...), checked
     entry by entry, drawn as a heatmap, and added to token embeddings by a module with no weights.
  3. Wavelengths: dimension pair i repeats every 2*pi*10000^(2i/d_model) positions, so the first
     dimensions change fastest and the last ones slowest.
  4. Relative position: for each offset k one fixed matrix M_k maps PE(p) to PE(p + k) for every p.
  5. Dot products PE(p) . PE(q) depend only on the offset p - q.
  6. Interleaved sin/cos vs concatenated halves: the same columns in another order.

Run:  python 03_positional_encoding.py                  (about 6 s on a 2-core CPU)
      python 03_positional_encoding.py --quick          (tiny sizes)
      python 03_positional_encoding.py --d-model 128 --max-len 256
It writes positional_encoding_heatmap.png, positional_encoding_wavelengths.png,
positional_encoding_dot_products.png and positional_encoding_layouts.png.

Shapes: B batch, T sequence length, d_model embedding size, max_len rows of the table,
p and q positions, k an offset between positions, i a dimension pair (columns 2i and 2i+1).
"""
import math

import torch
import torch.nn as nn

import common

# Reused from lesson 02 (one source for each component): attention with n_heads heads.
MultiHeadAttention = common.load_lesson(2).MultiHeadAttention

# %% Knobs (edit these)
D_MODEL = 64       # embedding size: columns of the table (must be even: sin/cos come in pairs)
MAX_LEN = 128      # positions in the table (rows of the heatmap)
N_HEADS = 4        # heads of the attention layer in section 1 (d_model must divide by it)
SEQ_LEN = 8        # tokens in the shuffled sequence of section 1
VOCAB_SIZE = 20    # token ids of section 1's random embeddings
OFFSETS = (1, 5, 20)       # offsets k for the relative-position checks
QUICK = dict(d_model=16, max_len=32)   # sizes for --quick
BASE = 10000.0     # the 10000 of the formula (the paper's choice)


# %% Building blocks
def sinusoidal_positional_encoding(max_len: int, d_model: int) -> torch.Tensor:
    """The (max_len, d_model) table of sinusoidal positions.

    PE[p, 2i]   = sin(p / 10000^(2i / d_model))
    PE[p, 2i+1] = cos(p / 10000^(2i / d_model))
    Sines in even columns, cosines in odd columns (interleaved, as in the paper).
    With an odd d_model the last column is a sine without its cosine.
    """
    position = torch.arange(max_len, dtype=torch.float32).unsqueeze(1)  # (max_len, 1)
    two_i = torch.arange(0, d_model, 2, dtype=torch.float32)            # (ceil(d_model/2),)
    # wavelength factor 10000^(2i / d_model), one per dimension pair
    denominator = torch.pow(10000.0, two_i / d_model)
    angles = position / denominator                                     # (max_len, ceil(d_model/2))
    pe = torch.zeros(max_len, d_model)
    pe[:, 0::2] = torch.sin(angles)
    pe[:, 1::2] = torch.cos(angles[:, : d_model // 2])
    return pe


class PositionalEncoding(nn.Module):
    """Adds the sinusoidal table to token embeddings: (B, T, d_model) -> (B, T, d_model)."""

    def __init__(self, d_model: int, max_len: int = 512, dropout: float = 0.0):
        super().__init__()
        self.max_len = max_len
        self.dropout = nn.Dropout(dropout)
        # A buffer, not a parameter: it moves with .to(device) but is never trained. It is
        # non-persistent, so it is left out of state_dict (checkpoints): the formula rebuilds it.
        self.register_buffer("pe", sinusoidal_positional_encoding(max_len, d_model), persistent=False)

    def forward(self, x):
        T = x.size(1)
        if T > self.max_len:
            raise ValueError(f"sequence length {T} exceeds the positional encoding's max_len {self.max_len}")
        return self.dropout(x + self.pe[:T])  # (B, T, d_model) + (T, d_model) broadcasts over B


def pair_frequencies(d_model: int) -> torch.Tensor:
    """Angular frequency w_i = 1 / 10000^(2i / d_model) of each pair i (float64): PE angle = p * w_i."""
    two_i = torch.arange(0, d_model, 2, dtype=torch.float64)  # (ceil(d_model/2),)
    return BASE ** (-two_i / d_model)


def pair_wavelengths(d_model: int) -> torch.Tensor:
    """Positions after which pair i repeats: 2*pi / w_i = 2*pi * 10000^(2i / d_model)."""
    return 2 * math.pi / pair_frequencies(d_model)


def relative_position_matrix(k: int, d_model: int, dtype=torch.float32) -> torch.Tensor:
    """The (d_model, d_model) matrix M_k with PE(p + k) = M_k @ PE(p) for every position p.

    Built from k and d_model only (no p): block diagonal, one 2x2 rotation per pair, because
      sin((p+k) w) =  cos(k w) sin(p w) + sin(k w) cos(p w)
      cos((p+k) w) = -sin(k w) sin(p w) + cos(k w) cos(p w)
    """
    if d_model % 2:
        raise ValueError(f"d_model must be even (sin/cos pairs), got {d_model}")
    angle = k * pair_frequencies(d_model)  # (d_model/2,)  k * w_i
    c, s = torch.cos(angle), torch.sin(angle)
    M = torch.zeros(d_model, d_model, dtype=torch.float64)
    idx = torch.arange(0, d_model, 2)      # the sine column of each pair
    M[idx, idx], M[idx, idx + 1] = c, s            # new sin =  cos(kw) sin + sin(kw) cos
    M[idx + 1, idx], M[idx + 1, idx + 1] = -s, c   # new cos = -sin(kw) sin + cos(kw) cos
    return M.to(dtype)


def concatenated_column_order(d_model: int) -> torch.Tensor:
    """Column order that turns the interleaved table into 'all sines, then all cosines'."""
    return torch.cat([torch.arange(0, d_model, 2), torch.arange(1, d_model, 2)])


def concatenated_positional_encoding(max_len: int, d_model: int) -> torch.Tensor:
    """The other common layout: sines in the first half of the columns, cosines in the second.

    Same float32 arithmetic as sinusoidal_positional_encoding; only the column order differs.
    """
    position = torch.arange(max_len, dtype=torch.float32).unsqueeze(1)  # (max_len, 1)
    denominator = torch.pow(10000.0, torch.arange(0, d_model, 2, dtype=torch.float32) / d_model)
    angles = position / denominator                                     # (max_len, ceil(d_model/2))
    return torch.cat([torch.sin(angles), torch.cos(angles[:, : d_model // 2])], dim=1)  # (max_len, d_model)


def _tick_step(n: int, target: int = 9) -> int:
    """A round tick spacing giving at most `target` ticks over n cells."""
    for step in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024):
        if n / step <= target:
            return step
    return 2048


def _plain_log_axis(ax):
    """Log y axis labelled 1, 10, 100 (plain text is much faster to draw than 10^n), no minor ticks."""
    from matplotlib.ticker import FuncFormatter, LogLocator

    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    ax.yaxis.set_minor_locator(LogLocator(subs=()))


def _heatmap(ax, table, title, show_colorbar=True):
    """PE table as an image: row = position, column = dimension, ticks on cell centres."""
    image = ax.imshow(table.numpy(), aspect="auto", cmap="RdBu_r", vmin=-1, vmax=1,
                      interpolation="nearest")
    n_rows, n_cols = table.shape
    ax.set_xticks(range(0, n_cols, _tick_step(n_cols)))
    ax.set_yticks(range(0, n_rows, _tick_step(n_rows)))
    ax.set_xlabel("embedding dimension (column)")
    ax.set_ylabel("position p")
    ax.set_title(title, fontsize=10)
    if show_colorbar:
        ax.figure.colorbar(image, ax=ax, label="PE[p, dimension]")
    return image


# %% 1. Attention without positions is blind to order
def section_1_order_blindness(d_model, device):
    common.section(1, "Attention without positions is blind to order")
    common.explain(f"""
        Self-attention compares every token with every other token, but nothing in it says where a
        token sits. We shuffle the tokens of a sequence, run lesson 02's MultiHeadAttention (loaded
        with common.load_lesson(2); {N_HEADS} heads, d_model={d_model}, eval mode) on both orders, and
        check whether the output is simply shuffled the same way.""")
    embed = nn.Embedding(VOCAB_SIZE, d_model).to(device)
    attn = MultiHeadAttention(d_model, N_HEADS).to(device).eval()
    add_positions = PositionalEncoding(d_model, max_len=SEQ_LEN).to(device)

    def self_attention(x):
        return attn(x, x, x)[0]  # (B, T, d_model)

    tokens = torch.randint(0, VOCAB_SIZE, (1, SEQ_LEN), device=device)  # (B=1, T)
    perm = torch.randperm(SEQ_LEN, device=device)
    x, x_shuffled = embed(tokens), embed(tokens[:, perm])               # (1, T, d_model)
    with torch.no_grad():
        plain = (self_attention(x_shuffled) - self_attention(x)[:, perm]).abs().max().item()
        with_pe = (self_attention(add_positions(x_shuffled))
                   - self_attention(add_positions(x))[:, perm]).abs().max().item()
        scale = self_attention(x).abs().mean().item()
    print(f"  tokens            {tokens[0].tolist()}")
    print(f"  shuffled tokens   {tokens[0, perm].tolist()}   (permutation {perm.tolist()})")
    print(f"  largest |attn(shuffled) - shuffle(attn(x))|, no positions:   {common.fmt(plain)}")
    print(f"  the same with positions added (x + PE) before attention:   {common.fmt(with_pe)}")
    print(f"  (typical output size: mean |output| = {common.fmt(scale)})")
    if plain < 1e-5:
        common.explain(f"""
            Without positions the shuffled output equals the shuffled original up to float rounding
            ({common.fmt(plain)}): "dog bites man" and "man bites dog" give each word the same
            vector. Attention is permutation-equivariant.""")
    else:
        common.explain(f"Without positions the outputs differ by {common.fmt(plain)}: unexpected.")
    if with_pe > 1e-3:
        common.explain(f"""
            With positions added the difference is {common.fmt(with_pe)}, {common.fmt(with_pe / scale, 3)}
            times the typical output size: the same token at another place now gives another output.
            Order is information only once we put it into the input.""")
    else:
        common.explain(f"With positions the difference is only {common.fmt(with_pe)}: unexpected.")
    return plain, with_pe


# %% 2. The sinusoidal table
def section_2_table(pe, d_model, max_len, args):
    common.section(2, "The formula, entry by entry, and the module that adds it")
    common.explain("""
        PE[p, 2i] = sin(p / 10000^(2i/d_model)) and PE[p, 2i+1] = cos(p / 10000^(2i/d_model)).
        Column pair i (columns 2i, 2i+1) turns at its own speed. Two entries by hand (math.sin /
        math.cos) against the table:""")
    j = max(1, d_model // 8)  # a pair whose denominator is 10000^(2j/d_model), 10 when d_model % 8 == 0
    p1, p2 = min(3, max_len - 1), min(10, max_len - 1)
    for p, col, fn in ((p1, 0, math.sin), (p2, 2 * j + 1, math.cos)):
        two_i = col - col % 2
        denom = BASE ** (two_i / d_model)
        by_hand = fn(p / denom)
        print(f"  PE[{p}, {col}] = {fn.__name__}({p} / 10000^({two_i}/{d_model})) = "
              f"{fn.__name__}({p} / {common.fmt(denom)}) = {by_hand:.6f}   table: {pe[p, col].item():.6f}"
              f"   difference {common.fmt(abs(by_hand - pe[p, col].item()), 2)}")
    print()
    common.show_tensor("PE[:4, :8]  (first 4 positions, first 8 dimensions)", pe[:4, :8], decimals=4)
    print(f"  PE[0] is sin(0), cos(0), ... = 0, 1, 0, 1, ...: max |PE[0] - [0,1,0,1,...]| = "
          f"{common.fmt((pe[0] - torch.arange(d_model).remainder(2).float()).abs().max())}")
    print(f"  all values lie in [-1, 1]: min {pe.min().item():.4f}, max {pe.max().item():.4f}")

    # The module: token embeddings + PE[:T]. No weights, so nothing to learn or save.
    module = PositionalEncoding(d_model, max_len=max_len)
    x = torch.randn(2, min(SEQ_LEN, max_len), d_model)  # (B, T, d_model)
    added = (module(x) - (x + pe[: x.size(1)])).abs().max().item()
    n_params = sum(p.numel() for p in module.parameters())
    print(f"\n  PositionalEncoding(x) - (x + PE[:T]): largest difference {common.fmt(added)}; "
          f"parameters: {n_params}; buffers: {[n for n, _ in module.named_buffers()]}; "
          f"state_dict keys: {list(module.state_dict())}")
    try:
        module(torch.zeros(1, max_len + 1, d_model))
    except ValueError as exc:
        print(f"  a sequence longer than max_len is refused: ValueError: {exc}")

    fig, ax = common.new_figure(figsize=(7.5, 5.5), show=args.show)
    _heatmap(ax, pe, f"Sinusoidal positional encoding (d_model={d_model}):\n"
                     "left columns change fast down the positions, right columns barely change")
    common.save_figure(fig, args.out_dir, "positional_encoding_heatmap.png", show=args.show)
    common.explain("""
        In the heatmap each row is one position's vector. Read across a row: the left columns
        (fast pairs) look random, the right ones sit near sin = 0, cos = 1. Read down a column:
        a stripe pattern whose period grows from left to right.""")
    return added, n_params, len(module.state_dict())


# %% 3. Wavelengths
def section_3_wavelengths(pe, d_model, max_len, args):
    common.section(3, "Wavelengths: pair i repeats every 2*pi*10000^(2i/d_model) positions")
    wavelengths = pair_wavelengths(d_model)  # (d_model/2,)
    # Measured from the table: the angle of pair i at position p is atan2(sin, cos); its mean step
    # per position (wrapped to (-pi, pi]) is w_i, and the wavelength is 2*pi / w_i.
    table = pe.double()
    angle = torch.atan2(table[:, 0::2], table[:, 1::2])  # (max_len, d_model/2)
    step = torch.remainder(angle[1:] - angle[:-1] + math.pi, 2 * math.pi) - math.pi
    measured = 2 * math.pi / step.mean(0)
    change = (table[1:] - table[:-1]).abs().mean(0)     # (d_model,) mean |PE[p+1] - PE[p]|
    n_pairs = d_model // 2
    pairs = sorted({min(i, n_pairs - 1) for i in (0, 1, 2, n_pairs // 4, n_pairs // 2, n_pairs - 1)})
    rows = [[i, f"{2 * i},{2 * i + 1}", BASE ** (2 * i / d_model), wavelengths[i].item(),
             measured[i].item(), change[2 * i].item()] for i in pairs]
    common.table(rows, ["pair i", "columns", "10000^(2i/d)", "wavelength 2*pi*10000^(2i/d)",
                        f"measured on {max_len} rows", "mean |PE[p+1]-PE[p]| (sin col)"])
    worst = ((measured - wavelengths).abs() / wavelengths).max().item()
    print(f"  largest relative gap, formula vs table, over all {n_pairs} pairs: {common.fmt(worst, 2)}")
    pair_change = change.view(n_pairs, 2).mean(1)
    ordered = int((pair_change[1:] <= pair_change[:-1]).sum()) + 1
    print(f"  mean change per step, averaged over each pair's two columns: {ordered} of {n_pairs} pairs "
          f"are no faster than the pair before; pair 0 {common.fmt(pair_change[0])}, "
          f"last pair {common.fmt(pair_change[-1])}")
    print(f"  last pair: 2*pi*10000^({d_model - 2}/{d_model}) = {common.fmt(wavelengths[-1])}; "
          f"it approaches 10000*2*pi = {common.fmt(BASE * 2 * math.pi)} as d_model grows "
          f"(d_model=512: {common.fmt(pair_wavelengths(512)[-1])})")
    common.explain(f"""
        Pair 0 turns once every 2*pi = {common.fmt(wavelengths[0])} positions; the last pair needs
        {common.fmt(wavelengths[-1])}, so over {max_len} positions it hardly moves. Low dimensions tell
        neighbours apart, high dimensions say roughly where in a long text we are, like the hands of
        a clock: seconds, minutes, hours. Wavelengths grow geometrically (a straight line on the log
        axis of the figure), one factor 10000^(2/d_model) = {common.fmt(BASE ** (2 / d_model))} per pair.

        In the last panel the slow pairs zigzag: near angle 0 a sine moves by about w per step but a
        cosine by only about w^2 * p (it is flat at its top), e.g. the last pair's columns
        {d_model - 2} and {d_model - 1}: {common.fmt(change[-2])} vs {common.fmt(change[-1])}.""")

    fig, axes = common.new_figure(1, 3, figsize=(15, 4.4), show=args.show)
    positions = torch.arange(max_len)
    for i in sorted({0, n_pairs // 8, n_pairs // 4, n_pairs // 2}):
        axes[0].plot(positions, pe[:, 2 * i], ".-" if i == 0 else "-", lw=1 if i == 0 else 1.8, ms=3,
                     label=f"column {2 * i}: wavelength {common.fmt(wavelengths[i].item(), 3)}")
    axes[0].set(xlabel="position p", ylabel="PE[p, column]  (sine columns)",
                title="Sine columns: higher pairs turn more slowly")
    axes[0].set_ylim(-1.75, 1.1)  # room for the legend below the curves
    axes[0].set_yticks([-1, -0.5, 0, 0.5, 1])
    axes[0].legend(fontsize=7, loc="lower center", ncol=2)
    axes[1].plot(range(n_pairs), wavelengths, "-", label="formula 2*pi*10000^(2i/d_model)")
    axes[1].plot(range(n_pairs), measured, "o", ms=3, label=f"measured on the table ({max_len} rows)")
    for y, text, x, align in ((2 * math.pi, "2*pi", n_pairs - 1, "right"),
                              (BASE * 2 * math.pi, "10000*2*pi", 0, "left")):
        axes[1].axhline(y, color="gray", ls=":", lw=1)
        axes[1].text(x, y * 1.15, text, fontsize=8, color="gray", ha=align)
    _plain_log_axis(axes[1])
    axes[1].set_ylim(top=BASE * 2 * math.pi * 4)
    axes[1].set(xlabel="dimension pair i (columns 2i, 2i+1)", ylabel="wavelength (positions, log)",
                title="Wavelength grows geometrically with the pair")
    axes[1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(0, 0.86))
    axes[2].plot(range(d_model), change, ".-")
    _plain_log_axis(axes[2])
    axes[2].set(xlabel="embedding dimension (column)", ylabel="mean |PE[p+1] - PE[p]|  (log)",
                title="Low dimensions change fastest")
    common.save_figure(fig, args.out_dir, "positional_encoding_wavelengths.png", show=args.show)
    return wavelengths, worst


# %% 4. Relative position: one matrix per offset
def section_4_relative(pe, d_model, offsets, args):
    common.section(4, "Relative position: PE(p + k) = M_k PE(p), one matrix M_k for every p")
    common.explain("""
        sin and cos of (p + k) w are fixed mixtures of sin and cos of p w. So for each offset k a
        matrix built from k alone (a 2x2 rotation by angle k*w_i for each pair) moves every position
        k steps on. Attention computes with linear maps, so 'k tokens earlier' is something it can
        express. Top-left corner of M_1 (two pairs):""")
    common.show_tensor("M_1[:4, :4]", relative_position_matrix(1, d_model)[:4, :4], decimals=4)
    table, rows = pe.double(), []
    for k in offsets:
        M = relative_position_matrix(k, d_model, dtype=torch.float64)
        moved = table[:-k] @ M.T  # every position at once: (max_len - k, d_model) @ (d_model, d_model)
        error = (moved - table[k:]).abs().max().item()
        no_move = (table[:-k] - table[k:]).abs().max().item()
        orthogonal = (M.T @ M - torch.eye(d_model, dtype=torch.float64)).abs().max().item()
        rows.append([k, table.size(0) - k, error, no_move, orthogonal])
    common.table(rows, ["offset k", "positions p", "max |M_k PE(p) - PE(p+k)|",
                        "max |PE(p) - PE(p+k)| (no M)", "max |M^T M - I|"])
    k = offsets[-1]
    power = (torch.linalg.matrix_power(relative_position_matrix(1, d_model, torch.float64), k)
             - relative_position_matrix(k, d_model, torch.float64)).abs().max().item()
    worst = max(r[2] for r in rows)
    # The same check on a table computed in float64: what is left is the rounding of float64.
    angles64 = torch.arange(pe.size(0), dtype=torch.float64).unsqueeze(1) * pair_frequencies(d_model)
    table64 = torch.stack([angles64.sin(), angles64.cos()], dim=-1).flatten(1)  # sin, cos, sin, cos, ...
    worst64 = max((table64[:-k] @ relative_position_matrix(k, d_model, torch.float64).T - table64[k:])
                  .abs().max().item() for k in offsets)
    print(f"  M_1 applied {k} times vs M_{k}: largest difference {common.fmt(power, 2)}")
    print(f"  the same check on a table computed in float64: largest error {common.fmt(worst64, 2)}")
    cause = ("the float32 rounding of the table" if worst < 1e-4
             else "far more than float32 rounding: look for a bug in relative_position_matrix")
    squared_length = pe.double().pow(2).sum(1)  # |PE(p)|^2 for every p
    common.explain(f"""
        Largest error over all positions and offsets: {common.fmt(worst, 2)}, {cause} (in float64
        it is {common.fmt(worst64, 2)}), against differences up to {common.fmt(max(r[3] for r in rows), 3)}
        between the vectors themselves. M_k is a rotation (M^T M = I), so every PE(p) has the length
        of PE(0): |PE(p)|^2 = d_model/2 = {d_model // 2} (largest gap from {d_model // 2} over all
        {pe.size(0)} positions: {common.fmt((squared_length - d_model / 2).abs().max(), 2)}).""")
    return worst


# %% 5. Dot products depend only on the offset
def section_5_dot_products(pe, d_model, offsets, args):
    common.section(5, "PE(p) . PE(q) depends only on the offset p - q")
    common.explain("""
        sin(pw) sin(qw) + cos(pw) cos(qw) = cos((p - q) w), so PE(p) . PE(q) = sum_i cos((p - q) w_i):
        the same number for every pair of positions the same distance apart.""")
    gram = pe.double() @ pe.double().T  # (max_len, max_len) all dot products
    w = pair_frequencies(d_model)
    rows = []
    for k in (0, *offsets):
        diagonal = torch.diagonal(gram, k)  # PE(p) . PE(p + k) for every p
        rows.append([k, diagonal.numel(), diagonal.mean().item(), torch.cos(k * w).sum().item(),
                     (diagonal.max() - diagonal.min()).item()])
    common.table(rows, ["offset", "pairs (p, p+k)", "mean PE(p).PE(p+k)", "sum_i cos(k w_i)",
                        "spread over p (max - min)"])
    n = gram.size(0)
    # the spread over p along all 2n - 1 diagonals, not only the offsets in the table
    spread = max((torch.diagonal(gram, k).max() - torch.diagonal(gram, k).min()).item()
                 for k in range(-(n - 1), n))
    across = (gram[0].max() - gram[0].min()).item()
    rises = int((gram[0, 1:] > gram[0, :-1]).sum())  # offsets k where PE(0).PE(k) grows again
    print(f"  for comparison, PE(0) . PE(q) ranges over {common.fmt(across)} as q varies")
    k = offsets[-1]
    turn_gap = (relative_position_matrix(k, d_model) - relative_position_matrix(-k, d_model)).abs().max()
    print(f"  offset -{k} vs +{k}: mean dot product {common.fmt(torch.diagonal(gram, -k).mean())} vs "
          f"{common.fmt(torch.diagonal(gram, k).mean())}, while M_-{k} and M_{k} differ by up to "
          f"{common.fmt(turn_gap)}:\n  the dot product cannot tell before from after; the rotation can")
    common.explain(f"""
        Along all {2 * n - 1} diagonals the spread over p is at most {common.fmt(spread, 2)} (float32
        rounding of the table, as in section 4), while the value changes by up to {common.fmt(across)}
        from one offset to another: similarity between two positions is a function of their distance.
        It is largest at distance 0 ({common.fmt(gram[0, 0])}; at any other offset at most
        {common.fmt(gram[0, 1:].max())}) and falls off as they move apart, though not monotonically:
        PE(0).PE(k) grows again at {rises} of the {n - 1} steps from k to k + 1.""")

    fig, axes = common.new_figure(1, 2, figsize=(12, 4.8), show=args.show)
    image = axes[0].imshow(gram.numpy(), cmap="viridis", interpolation="nearest")
    axes[0].set_xticks(range(0, n, _tick_step(n)))
    axes[0].set_yticks(range(0, n, _tick_step(n)))
    axes[0].set(xlabel="position q", ylabel="position p",
                title="PE(p) . PE(q): constant along every diagonal")
    fig.colorbar(image, ax=axes[0], label="dot product")
    for p in sorted({0, n // 4, n // 2}):
        ks = torch.arange(-p, n - p)
        axes[1].plot(ks, gram[p, p + ks], lw=1.5, ls="-" if p == 0 else "--", label=f"p = {p}")
    axes[1].set(xlabel="offset q - p", ylabel="PE(p) . PE(q)",
                title="The same curve from every starting position p")
    axes[1].legend(fontsize=8)
    common.save_figure(fig, args.out_dir, "positional_encoding_dot_products.png", show=args.show)
    return spread


# %% 6. Interleaved vs concatenated halves
def section_6_layouts(pe, d_model, max_len, args):
    common.section(6, "Interleaved sin/cos vs concatenated halves (two layouts, one encoding)")
    common.explain("""
        The paper interleaves (sin, cos, sin, cos, ...). Much code puts all sines first, then all
        cosines. The plots look different; are they different encodings?""")
    concat = concatenated_positional_encoding(max_len, d_model)
    order = concatenated_column_order(d_model)
    # Match every column of one table to its nearest column of the other.
    distance = torch.cdist(concat.T.double(), pe.T.double())  # (d_model, d_model)
    match = distance.argmin(1)  # for each concatenated column, the nearest interleaved column
    one_to_one = sorted(match.tolist()) == list(range(d_model))
    # cdist takes a fast matmul route that leaves ~1e-7 even between equal columns, so the
    # matched pairs are compared entry by entry.
    match_gap = (concat - pe[:, match]).abs().max().item()
    print(f"  each concatenated column matched to its nearest interleaved column: largest entry "
          f"difference {common.fmt(match_gap, 2)}; the matching is one-to-one: {one_to_one}")
    print(f"  concatenated == interleaved[:, {order[:4].tolist()}...{order[-2:].tolist()}]: largest "
          f"difference {common.fmt((pe[:, order] - concat).abs().max(), 2)}")
    gram_gap = (pe.double() @ pe.double().T - concat.double() @ concat.double().T).abs().max().item()
    # The first layer that reads PE is linear: permuting its input columns = permuting its weights.
    layer = nn.Linear(d_model, d_model)
    permuted = nn.Linear(d_model, d_model)
    with torch.no_grad():
        permuted.weight.copy_(layer.weight[:, order])
        permuted.bias.copy_(layer.bias)
        layer_gap = (layer(pe) - permuted(concat)).abs().max().item()
    print(f"  dot products PE(p).PE(q) in the two layouts: largest difference {common.fmt(gram_gap, 2)}")
    print(f"  nn.Linear on interleaved vs the same layer, weight columns reordered, on concatenated: "
          f"largest difference {common.fmt(layer_gap, 2)}")
    common.explain("""
        Same columns, another order. A model learns its weights, and a reordering of input columns is
        just another set of weights, so for the model the two layouts are equivalent. For your eyes they
        are not: the two heatmaps of positional_encoding_layouts.png look nothing alike. Check which
        layout a plot uses before you compare it with another.""")
    fig, axes = common.new_figure(1, 2, figsize=(12, 4.8), show=args.show)
    _heatmap(axes[0], pe, "Interleaved (paper): sin in even, cos in odd columns")
    _heatmap(axes[1], concat, f"Concatenated: sin in columns 0-{d_model // 2 - 1}, "
                              f"cos in {d_model // 2}-{d_model - 1}")
    common.save_figure(fig, args.out_dir, "positional_encoding_layouts.png", show=args.show)
    return one_to_one, layer_gap


# %% main: the lesson's table of contents
def parse_sizes(args):
    """--d-model and --max-len (or the knobs, or --quick sizes); a bad value exits with one line."""
    d_model = args.d_model if args.d_model is not None else (QUICK["d_model"] if args.quick else D_MODEL)
    max_len = args.max_len if args.max_len is not None else (QUICK["max_len"] if args.quick else MAX_LEN)
    step = math.lcm(2, N_HEADS)
    if d_model <= 0 or d_model % step or d_model > 4096:
        common.fail(f"--d-model must be a positive multiple of {step} (sin/cos pairs, {N_HEADS} heads) "
                    f"up to 4096, got {d_model}; try --d-model {D_MODEL}")
    if max_len < 16 or max_len > 4096:
        common.fail(f"--max-len must be between 16 and 4096 positions, got {max_len}; "
                    f"try --max-len {MAX_LEN}")
    return d_model, max_len


def main(argv=None):
    parser = common.lesson_parser(__doc__)
    parser.add_argument("--d-model", type=int, default=None,
                        help=f"embedding size (default {D_MODEL}, --quick {QUICK['d_model']})")
    parser.add_argument("--max-len", type=int, default=None,
                        help=f"positions in the table (default {MAX_LEN}, --quick {QUICK['max_len']})")
    args = common.parse_args(parser, argv)
    d_model, max_len = parse_sizes(args)
    device = common.setup(args, "Lesson 03: positional encoding")
    print(f"d_model={d_model}, max_len={max_len}; attention layer reused from lesson 02 "
          "(common.load_lesson(2).MultiHeadAttention)")
    offsets = tuple(k for k in OFFSETS if k < max_len // 2) or (1,)
    pe = sinusoidal_positional_encoding(max_len, d_model)  # (max_len, d_model), on the CPU

    plain, with_pe = section_1_order_blindness(d_model, device)
    _, n_params, n_saved = section_2_table(pe, d_model, max_len, args)
    wavelengths, _ = section_3_wavelengths(pe, d_model, max_len, args)
    relative_error = section_4_relative(pe, d_model, offsets, args)
    spread = section_5_dot_products(pe, d_model, offsets, args)
    one_to_one, layer_gap = section_6_layouts(pe, d_model, max_len, args)

    common.key_insights([
        f"Attention alone is permutation-equivariant: shuffled input, shuffled output (largest "
        f"difference {common.fmt(plain, 2)}). Adding PE breaks that (difference {common.fmt(with_pe, 3)}).",
        f"PositionalEncoding adds a fixed table: {n_params} parameters, a buffer that moves with .to(), "
        f"{n_saved} entries in state_dict (the formula rebuilds it).",
        f"Pair i has wavelength 2*pi*10000^(2i/d_model), from {common.fmt(wavelengths[0])} positions "
        f"(pair 0) to {common.fmt(wavelengths[-1])} (last pair), so low dimensions change fastest.",
        f"For each offset k a fixed rotation M_k maps PE(p) to PE(p+k) for every p (largest error "
        f"{common.fmt(relative_error, 2)}), so relative positions are a linear map away.",
        f"PE(p).PE(q) depends only on p - q (largest spread along an offset {common.fmt(spread, 2)}), "
        "and not on its sign.",
        f"Interleaved and concatenated layouts hold the same columns (one-to-one: {one_to_one}); a "
        f"linear layer with reordered weights gives the same output (difference {common.fmt(layer_gap, 2)}).",
    ])


if __name__ == "__main__":
    main()
