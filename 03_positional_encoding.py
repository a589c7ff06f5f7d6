"""Lesson 03: positional encoding - how a transformer knows the order of its tokens.

What you will learn:
  1. Attention alone is blind to order: shuffle the tokens and its output is shuffled the same way.
  2. The sinusoidal table PE[p, 2i] = sin(p / BASE^(2i/d_model)), PE[p, 2i+1] = cos(...) (BASE =
     10000 in the paper), entry by entry, as a heatmap, and the module that adds it to token
     embeddings; max_len is only a cache of a formula that works for any position.
  3. Wavelengths: pair i repeats every 2*pi*BASE^(2i/d_model) positions, so the first dimensions
     change fastest and the last ones slowest.
  4. Relative position: for each offset k one fixed rotation M_k maps PE(p) to PE(p + k) for every p
     (rotary embeddings, RoPE, build attention on this).
  5. Dot products PE(p) . PE(j) depend only on p - j, and a query rotated by M_k makes attention
     look 'k tokens earlier': how sharp (or shallow) that peak is.
  6. Interleaved sin/cos vs concatenated halves: the same columns in another order.
  7. How loud positions are next to token embeddings (the sqrt(d_model) scale), and learned
     position embeddings, the alternative to the formula.

Run:  python 03_positional_encoding.py                  (a few seconds on a CPU)
      python 03_positional_encoding.py --quick          (tiny sizes)
      python 03_positional_encoding.py --d-model 128 --max-len 256
It writes positional_encoding_heatmap.png, positional_encoding_wavelengths.png,
positional_encoding_dot_products.png and positional_encoding_layouts.png.

Shapes: B batch, T sequence length, d_model embedding size, max_len rows of the table,
p and j positions (p a query's, j a key's where both appear), k an offset between positions,
i a dimension pair (columns 2i and 2i+1).
"""
import math

import common  # first: it checks $OMP_NUM_THREADS before torch reads it
import torch
import torch.nn as nn

from common import claims, fmt

# Reused from earlier lessons (one source for each component).
MultiHeadAttention = common.load_lesson(2).MultiHeadAttention                # lesson 02
scaled_dot_product_attention = common.load_lesson(1).scaled_dot_product_attention  # lesson 01
causal_mask = common.load_lesson(1).causal_mask                              # lesson 01

# %% Knobs (edit these)
D_MODEL = 64       # embedding size: columns of the table (even, and divisible by N_HEADS)
MAX_LEN = 128      # positions in the table (rows of the heatmap)
BASE = 10000.0     # the 10000 of the formula (the paper's choice); must be more than 1
N_HEADS = 4        # heads of the attention layer in section 1
SEQ_LEN = 8        # tokens in the shuffled sequence of section 1
VOCAB_SIZE = 20    # token ids of the random embeddings in sections 1 and 7
OFFSETS = (1, 5, 20)           # offsets k for the relative-position sections (those < max_len/2)
LOOK_BACK_SCALES = (1, 4, 16)  # section 5: sizes c of W_q = c M_-k
QUICK_D_MODEL, QUICK_MAX_LEN = 16, 32  # sizes for --quick


# %% Building blocks
def pair_frequencies(d_model: int) -> torch.Tensor:
    """Angular frequency w_i = 1 / BASE^(2i / d_model) of each pair i (float64): PE angle = p * w_i."""
    two_i = torch.arange(0, d_model, 2, dtype=torch.float64)  # (ceil(d_model/2),)
    return BASE ** (-two_i / d_model)


def pair_wavelengths(d_model: int) -> torch.Tensor:
    """Positions after which pair i repeats: 2*pi / w_i = 2*pi * BASE^(2i / d_model)."""
    return 2 * math.pi / pair_frequencies(d_model)


def sinusoidal_positional_encoding(max_len: int, d_model: int) -> torch.Tensor:
    """The (max_len, d_model) table of sinusoidal positions.

    PE[p, 2i]   = sin(p / BASE^(2i / d_model))
    PE[p, 2i+1] = cos(p / BASE^(2i / d_model))
    BASE is the knob at the top of lesson 03; the paper uses 10000.
    Sines in even columns, cosines in odd columns (interleaved, as in the paper).
    With an odd d_model the last column is a sine without its cosine.
    """
    position = torch.arange(max_len, dtype=torch.float64).unsqueeze(1)  # (max_len, 1)
    # angle = p / BASE^(2i / d_model) = p * w_i, with the knob BASE in place of the paper's 10000
    angles = position * pair_frequencies(d_model)                       # (max_len, ceil(d_model/2))
    # (max_len, pairs, 2) -> (max_len, 2 * pairs): sin, cos, sin, cos, ...
    pe = torch.stack([torch.sin(angles), torch.cos(angles)], dim=-1).flatten(1)
    return pe[:, :d_model].float()  # angles in float64, so each entry is exact to float32 rounding


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
            raise ValueError(f"sequence length {T} exceeds the positional encoding's max_len {self.max_len}; "
                             f"build it with max_len >= {T} (the formula works for any length)")
        return self.dropout(x + self.pe[:T])  # (B, T, d_model) + (T, d_model) broadcasts over B


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


class LearnedPositionalEmbedding(nn.Module):
    """Learned absolute positions (as in BERT and GPT-2): one trained vector per position.

    forward(x (B, T, d_model)) -> x + table[:T]. There is no row for a position >= max_len.
    """

    def __init__(self, d_model: int, max_len: int):
        super().__init__()
        self.table = nn.Embedding(max_len, d_model)  # (max_len, d_model) parameters, N(0, 1) at first

    def forward(self, x):
        positions = torch.arange(x.size(1), device=x.device)  # (T,)
        return x + self.table(positions)                       # (B, T, d_model) + (T, d_model)


def _tick_step(n: int, target: int = 9) -> int:
    """A round tick spacing (a power of 2) giving at most `target` ticks over n cells."""
    return 2 ** max(0, math.ceil(math.log2(n / target)))


def _heatmap(ax, table, title):
    """PE table as an image: row = position, column = dimension, ticks on cell centres."""
    image = ax.imshow(table.numpy(), aspect="auto", cmap="RdBu_r", vmin=-1, vmax=1, interpolation="nearest")
    n_rows, n_cols = table.shape
    ax.set_xticks(range(0, n_cols, _tick_step(n_cols)))
    ax.set_yticks(range(0, n_rows, _tick_step(n_rows)))
    ax.set(xlabel="embedding dimension (column)", ylabel="position p")
    ax.set_title(title, fontsize=10)
    ax.figure.colorbar(image, ax=ax, label="PE[p, dimension]")


# %% 1. Attention without positions is blind to order
def section_1_order_blindness(d_model, device):
    common.section(1, "Attention without positions is blind to order")
    common.explain(f"""
        Self-attention compares every token with every other token, but nothing in it says where a
        token sits. We move every token one place on (the last becomes the first), run lesson 02's
        MultiHeadAttention ({N_HEADS} heads, d_model={d_model}, eval mode) on both orders, and
        compare the outputs, moved the same way.""")
    embed = nn.Embedding(VOCAB_SIZE, d_model).to(device)
    attn = MultiHeadAttention(d_model, N_HEADS).to(device).eval()
    add_positions = PositionalEncoding(d_model, max_len=SEQ_LEN).to(device)

    def self_attention(x):
        return attn(x, x, x)[0]  # (B, T, d_model)

    tokens = torch.randint(0, VOCAB_SIZE, (1, SEQ_LEN), device=device)  # (B=1, T)
    perm = torch.roll(torch.arange(SEQ_LEN, device=device), 1)         # every token moves
    with torch.no_grad():
        x, x_moved = embed(tokens), embed(tokens[:, perm])              # (1, T, d_model)
        plain = (self_attention(x_moved) - self_attention(x)[:, perm]).abs().max().item()
        with_pe = (self_attention(add_positions(x_moved))
                   - self_attention(add_positions(x))[:, perm]).abs().max().item()
        scale = self_attention(x).abs().mean().item()
    print(f"  tokens          {tokens[0].tolist()}\n  moved tokens    {tokens[0, perm].tolist()}")
    common.table([["attention(x)", plain], ["attention(x + PE)", with_pe]],
                 ["input", "largest |attn(moved) - moved(attn)|"])
    blind = claims.below("order-blind", "Without positions the two outputs differ only by float rounding: \"dog "
                         "bites man\" and \"man bites dog\" give each word the same vector (attention is permutation-"
                         "equivariant)", plain, 1e-5 * max(1.0, scale), hint="something in the attention depends on "
                         "position").say()
    ordered = claims.above("positions-give-order", f"With PE added the difference is {fmt(with_pe / scale, 3)} times "
                           f"the mean |output| ({fmt(scale)}): order is information once it is in the input",
                           with_pe / scale, 1e-3, hint="adding PE must give each position its own vector").say()
    return claims.all_of("insight-order", f"Attention alone is permutation-equivariant: moved input, moved output "
                         f"(largest difference {fmt(plain, 2)}). Adding PE breaks that (difference {fmt(with_pe, 3)}).",
                         blind, ordered)


# %% 2. The sinusoidal table
def section_2_table(pe, d_model, max_len, args):
    common.section(2, "The formula, entry by entry, and the module that adds it")
    common.explain(f"""
        PE[p, 2i] = sin(p / BASE^(2i/d_model)) and PE[p, 2i+1] = cos(p / BASE^(2i/d_model)), with
        BASE = {BASE:g}. Column pair i (columns 2i, 2i+1) turns at its own speed. Two entries by
        hand (math.sin / math.cos) next to the table:""")
    j = max(1, d_model // 8)  # a pair in the first quarter of the columns
    rows, gaps = [], []
    for p, col, fn in ((min(3, max_len - 1), 0, math.sin), (min(10, max_len - 1), 2 * j + 1, math.cos)):
        two_i = col - col % 2
        denominator = BASE ** (two_i / d_model)
        rows.append([f"PE[{p}, {col}]", f"{fn.__name__}({p} / {BASE:g}^({two_i}/{d_model})) = "
                     f"{fn.__name__}({p} / {fmt(denominator)})", f"{fn(p / denominator):.6f}", f"{pe[p, col]:.6f}"])
        gaps.append(abs(fn(p / denominator) - pe[p, col].item()))
    common.table(rows, ["entry", "formula", "by hand", "table"])
    claims.below("entries-by-hand", "Both entries equal their values by hand (float32 rounding)", max(gaps), 1e-6,
                 measured=f"largest |by hand - table| {fmt(max(gaps))}").say()
    corner = pe[:4, :8]  # fewer columns when d_model < 8
    common.show_tensor(f"\nPE[:4, :{corner.size(1)}]  (first 4 positions, first {corner.size(1)} dimensions)",
                       corner, decimals=4)
    claims.check("row-0-is-0-1", torch.equal(pe[0], (torch.arange(d_model) % 2).float()), "Row 0 is sin 0, cos 0, "
                 "sin 0, ... = 0, 1, 0, 1 and so on", f"row 0 begins {', '.join(fmt(v, 3) for v in pe[0, :4])}",
                 "0, 1, 0, 1").say()
    # Each pair (PE[p, 2i], PE[p, 2i+1]) is (sin, cos) of one angle: atan2 reads it back, for every entry
    read = torch.atan2(pe[:, 0::2].double(), pe[:, 1::2].double())  # (max_len, d_model/2)
    off = (torch.remainder(read - torch.arange(max_len)[:, None] * pair_frequencies(d_model) + math.pi,
                           2 * math.pi) - math.pi).abs().max()      # angle read back - p * w_i, wrapped
    on_circle = (pe[:, 0::2].double() ** 2 + pe[:, 1::2].double() ** 2 - 1).abs().max()  # sin^2 + cos^2 = 1
    angles = claims.below("table-angles", "Every pair of every row is (sin, cos) of its angle p / BASE^(2i/d_model):"
                          f" read back with atan2, largest error {fmt(off, 2)}", max(off, on_circle), 1e-6,
                          measured=f"angles off by up to {fmt(off, 2)}, |sin^2 + cos^2 - 1| up to {fmt(on_circle, 2)}",
                          hint="sines belong in the even columns, cosines in the odd ones").say()
    wavelengths = pair_wavelengths(d_model)
    fig, ax = common.new_figure(figsize=(7.5, 5.5), show=args.show)
    _heatmap(ax, pe, f"Sinusoidal positional encoding (d_model={d_model}, BASE={BASE:g}):\n" + claims.figure_title(
        "heatmap-title", f"column 0 repeats every {fmt(wavelengths[0], 3)} positions, column "
        f"{2 * (len(wavelengths) - 1)} every {fmt(wavelengths[-1], 3)}", angles, width=75))
    common.save_figure(fig, args.out_dir, "positional_encoding_heatmap.png", show=args.show)
    print("  (In the heatmap each row is one position's vector; the stripes widen from left to right.)\n")
    return angles, section_2_module(pe, d_model, max_len)


def section_2_module(pe, d_model, max_len):
    """PositionalEncoding: what it adds, what it keeps, what it refuses; max_len is only a cache."""
    module = PositionalEncoding(d_model, max_len=max_len)
    x = torch.randn(1, min(10, max_len), d_model)  # (B=1, T, d_model)
    gap = (module(x) - x - pe[:x.size(1)]).abs().max()
    added = claims.below("module-adds-table", f"PositionalEncoding(d_model={d_model}, max_len={max_len}) adds pe[:T] "
                         "to its input and nothing else", gap, 1e-6, measured=f"largest |module(x) - x - pe[:T]| "
                         f"{fmt(gap)}", hint="look at PositionalEncoding.forward").say()
    kept = [[n for n, _ in module.named_parameters()], [n for n, _ in module.named_buffers()],
            list(module.state_dict())]
    stored = claims.equal("buffer-not-saved", f"It has parameters {kept[0]}, buffers {kept[1]} "
                          f"{tuple(module.pe.shape)} and state_dict keys {kept[2]}: a buffer moves with .to(device), "
                          "is not trained and not saved", kept, [[], ["pe"], []]).say()
    claims.raises("refuses-too-long", f"{max_len + 1} tokens are refused: {{error}}",
                  lambda: module(torch.zeros(1, max_len + 1, d_model)), ValueError).say()
    gap = (sinusoidal_positional_encoding(2 * max_len, d_model)[:max_len] - pe).abs().max()
    cache = claims.below("max-len-is-a-cache", f"max_len is a cache, not a limit of the method: the formula built for "
                         f"{2 * max_len} positions gives the same first {max_len} rows (largest difference "
                         f"{fmt(gap)}) and new rows after them", gap, 1e-7).say()
    return claims.all_of("insight-module", "PositionalEncoding adds a fixed table kept in a buffer: no parameters, "
                         "nothing in state_dict; max_len only says how many rows of the formula are cached.",
                         added, stored, cache)


# %% 3. Wavelengths
def section_3_wavelengths(pe, d_model, max_len, args):
    common.section(3, "Wavelengths: pair i repeats every 2*pi*BASE^(2i/d_model) positions")
    wavelengths = pair_wavelengths(d_model)              # (d_model/2,)
    change = (pe[1:] - pe[:-1]).abs().mean(0)            # (d_model,) mean |PE[p+1] - PE[p]| per column
    n_pairs = d_model // 2
    pairs = sorted({min(i, n_pairs - 1) for i in (0, 1, 2, n_pairs // 4, n_pairs // 2, n_pairs - 1)})
    common.table([[i, f"{2 * i},{2 * i + 1}", BASE ** (2 * i / d_model), wavelengths[i].item(),
                   max_len / wavelengths[i].item(), change[2 * i].item()] for i in pairs],
                 ["pair i", "columns", "BASE^(2i/d)", "wavelength", f"turns in {max_len} positions",
                  "mean |PE[p+1]-PE[p]| (sin col)"])
    common.explain(f"""
        Pair 0 turns once every 2*pi = {fmt(wavelengths[0])} positions; the last pair needs
        {fmt(wavelengths[-1])}, so over the {max_len} positions of the table it makes
        {fmt(max_len / wavelengths[-1].item(), 3)} turns, and {int((wavelengths > max_len).sum())} of the
        {n_pairs} pairs do not complete one.""")
    by_hand = torch.tensor([2 * math.pi * BASE ** (2 * i / d_model) for i in range(n_pairs)], dtype=torch.float64)
    formula = claims.below("wavelengths-formula", f"Each wavelength is BASE^(2/d_model) = {fmt(BASE ** (2 / d_model))} "
                           "times the one before (2*pi*BASE^(2i/d_model), by hand): a straight line on a log axis",
                           ((wavelengths - by_hand) / by_hand).abs().max(), 1e-9, hint="look at pair_frequencies").say()
    step = change.view(-1, 2).mean(1)  # (d_model/2,) mean step of each pair, sine and cosine together
    fast = claims.above("low-dims-fastest", f"Low dimensions change fastest: one position moves pair 0 by "
                        f"{fmt(step[0])} on average, the last pair by {fmt(step[-1])}. Low dimensions tell neighbours "
                        "apart; high ones change slowly, like the hour hand of a clock", step[0] - step[-1], 0,
                        measured=f"pair 0 {fmt(step[0])}, last pair {fmt(step[-1])}").say()
    if change[-1] < 0.1 * change[-2]:  # the last cosine barely moves next to its sine
        common.explain(f"""
            In the last panel the slow pairs zigzag: near angle 0 a sine moves by about w per step
            but a cosine by only about w^2 * p (it is flat at its top), e.g. the last pair's columns
            {d_model - 2} and {d_model - 1}: {fmt(change[-2])} vs {fmt(change[-1])}.""")
    plot_wavelengths(pe, wavelengths, change, formula, fast, args)
    return claims.all_of("insight-wavelengths", f"Pair i has wavelength 2*pi*BASE^(2i/d_model), from "
                         f"{fmt(wavelengths[0])} positions (pair 0) to {fmt(wavelengths[-1])} (last pair): low "
                         "dimensions change fastest.", formula, fast)


def plot_wavelengths(pe, wavelengths, change, formula, fast, args):
    from matplotlib.ticker import FuncFormatter, LogLocator

    max_len, d_model = pe.shape
    n_pairs = len(wavelengths)
    fig, axes = common.new_figure(1, 3, figsize=(15, 4.4), show=args.show)
    for i in sorted({0, n_pairs // 8, n_pairs // 4, n_pairs // 2}):
        axes[0].plot(range(max_len), pe[:, 2 * i], ".-" if i == 0 else "-", lw=1 if i == 0 else 1.8, ms=3,
                     label=f"column {2 * i}: wavelength {fmt(wavelengths[i].item(), 3)}")
    axes[0].set(xlabel="position p", ylabel="PE[p, column]  (sine columns)", ylim=(-1.75, 1.1),
                yticks=[-1, -0.5, 0, 0.5, 1], title=claims.figure_title(
                    "sines-title", "Sine columns: higher pairs turn more slowly", formula, fast, width=44))
    axes[0].legend(fontsize=7, loc="lower center", ncol=2)  # in the room left below the curves
    axes[1].plot(range(n_pairs), wavelengths, "o-", ms=3, label="2*pi*BASE^(2i/d_model)")
    for y, text, style in ((2 * math.pi, "2*pi", ":"), (BASE * 2 * math.pi, "2*pi*BASE", ":"),
                           (max_len, f"max_len = {max_len}", "--")):
        axes[1].axhline(y, color="gray", ls=style, lw=1, label=text if style == "--" else None)
        if style == ":":  # at the right end, above the line: the curve starts at 2*pi, ends below 2*pi*BASE
            axes[1].text(n_pairs - 1, y * 1.15, text, fontsize=8, color="gray", ha="right")
    axes[1].set(xlabel="dimension pair i (columns 2i, 2i+1)", ylabel="wavelength (positions, log)",
                title=claims.figure_title("wavelengths-title", "Wavelength grows geometrically with the pair;\npairs "
                                          "above the dashed line do not turn once in the table", formula, width=58))
    axes[2].plot(range(d_model), change, ".-")
    axes[2].set(xlabel="embedding dimension (column)", ylabel="mean |PE[p+1] - PE[p]|  (log)",
                title=claims.figure_title("change-title", "Low dimensions change fastest", fast, width=44))
    for ax in axes[1:]:  # log axes labelled 1, 10, 100 (plain numbers), no minor ticks
        ax.xaxis.get_major_locator().set_params(integer=True)  # pairs and columns are whole numbers
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        ax.yaxis.set_minor_locator(LogLocator(subs=()))
    axes[1].set_ylim(top=BASE * 2 * math.pi * 4)
    axes[1].legend(fontsize=8, loc="upper left")
    common.save_figure(fig, args.out_dir, "positional_encoding_wavelengths.png", show=args.show)


# %% 4. Relative position: one matrix per offset
def section_4_relative(pe, d_model, offsets):
    common.section(4, "Relative position: PE(p + k) = M_k PE(p), one matrix M_k for every p")
    common.explain("""
        sin and cos of (p + k) w are fixed mixtures of sin and cos of p w. So for each offset k a
        matrix built from k alone (a 2x2 rotation by angle k*w_i for each pair) moves every position
        k steps on. Top-left corner of M_1 (two pairs):""")
    common.show_tensor("M_1[:4, :4]", relative_position_matrix(1, d_model)[:4, :4], decimals=4)
    table, rows = pe.double(), []
    for k in offsets:
        M = relative_position_matrix(k, d_model, torch.float64)
        moved = table[:-k] @ M.T  # M_k PE(p), every p
        rows.append([k, table.size(0) - k, (moved - table[k:]).abs().max().item(),
                     (table[:-k] - table[k:]).abs().max().item(), (M.T @ M - torch.eye(d_model)).abs().max().item()])
    common.table(rows, ["offset k", "positions p", "max |M_k PE(p) - PE(p+k)|", "max |PE(p) - PE(p+k)|",
                        "max |M_k^T M_k - I|"])
    error, moved_by, unrotated = torch.tensor(rows)[:, 2:].max(0).values.tolist()  # torch's max keeps a NaN
    moves = claims.below("M_k-moves-every-p", "M_k PE(p) lands on PE(p + k) for every p, to within float32 rounding "
                         f"of the table (largest error {fmt(error, 2)}), while the vectors themselves differ by up to "
                         f"{fmt(moved_by, 3)}", error, 1e-5, hint="M_k and the table disagree").say()
    rotation = claims.below("M_k-is-a-rotation", "Each M_k is a rotation (M_k^T M_k = I): it keeps every PE(p) at "
                            "the same length", unrotated, 1e-9).say()
    common.explain("""
        Rotary position embeddings (RoPE, used by most recent language models) build on exactly
        this: instead of adding PE to the input, they rotate the query at position p by M_p and the
        key at position j by M_j, so their dot product depends only on the offset j - p, in every
        layer.""")
    return claims.all_of("insight-relative", f"For each offset k a fixed rotation M_k maps PE(p) to PE(p+k) for every "
                         f"p (largest error {fmt(error, 2)}); RoPE rotates queries and keys by their positions "
                         "instead of adding PE.", moves, rotation)


# %% 5. Dot products depend only on the offset; attention can look k tokens back
def look_back_weights(pe, k, c):
    """Attention weights (causal) of every query when W_q = c M_-k and W_k = W_v = I on inputs PE.

    Query p becomes c M_-k PE(p) = c PE(p - k), so its score with the key at position j is
    c PE(p - k) . PE(j), largest at j = p - k. Returns (scores (T, T), weights (T, T)), using lesson
    01's attention.
    """
    T, d_model = pe.shape
    Q = pe @ (c * relative_position_matrix(-k, d_model)).T   # (T, d_model): row p is c PE(p - k)
    _, weights = scaled_dot_product_attention(Q, pe, pe, causal_mask(T))  # scores / sqrt(d_model)
    return Q @ pe.T, weights                                 # (T, d_model) @ (d_model, T) -> (T, T)


def section_5_dot_products(pe, d_model, offsets, args):
    common.section(5, "PE(p) . PE(j) depends only on p - j; a rotated query looks k tokens back")
    common.explain("""
        sin(pw) sin(jw) + cos(pw) cos(jw) = cos((p - j) w), so PE(p) . PE(j) = sum_i cos((p - j) w_i):
        the same number for every pair of positions the same distance apart.""")
    gram = pe.double() @ pe.double().T  # (max_len, max_len) all dot products
    w = pair_frequencies(d_model)
    rows = [[k, torch.diagonal(gram, k).mean().item(), torch.cos(k * w).sum().item(),
             (torch.diagonal(gram, k).max() - torch.diagonal(gram, k).min()).item()] for k in (0, *offsets)]
    common.table(rows, ["offset k", "mean PE(p).PE(p+k)", "sum_i cos(k w_i)", "spread over p (max - min)"])
    worst, rest = max(max(abs(r[1] - r[2]), r[3]) for r in rows), gram[0, 1:].max()
    offset_only = claims.check("dot-depends-on-offset", worst < 1e-4 * d_model and gram[0, 0] > rest, "PE(p) . PE(p+k) "
                               f"is sum_i cos(k w_i) for every p, largest at offset 0 ({fmt(gram[0, 0])}; elsewhere at "
                               f"most {fmt(rest)})", f"spread over p or gap to the sum up to {fmt(worst)}, offset 0 "
                               f"{fmt(gram[0, 0])}, others up to {fmt(rest)}", "one per offset, largest at 0").say()
    k, n = offsets[0], gram.size(0)
    common.explain(f"""
        It falls off as positions move apart, not monotonically. Offsets -k and +k give the same
        number (cos is even): the dot product alone cannot tell before from after.

        Attention compares W_q x with W_k x. Take W_k = I and W_q = c M_-{k} (so W_q^T W_k = c M_{k}):
        the query of position p becomes c PE(p - {k}), and its score with the key at position j is
        c sum_i cos((p - {k} - j) w_i), largest at j = p - {k}. Weights of query p = {n - 1} (causal,
        scores / sqrt(d_model), lesson 01's function; a uniform row gives each key {fmt(1 / n, 3)}):""")
    table, curves, hits = [], {}, []
    for c in LOOK_BACK_SCALES:
        scores, weights = look_back_weights(pe, k, c)
        target = torch.arange(k, n)                             # queries p >= k and their key p - k
        hits.append((weights[target].argmax(-1) == target - k).float().mean().item())
        table.append([c, scores[-1, n - 1 - k].item(), torch.cat([scores[-1, :n - 1 - k], scores[-1, n - k:]]).max(),
                      weights[-1, n - 1 - k].item(), torch.cat([weights[-1, :n - 1 - k], weights[-1, n - k:]]).max(),
                      f"{hits[-1]:.0%}"])
        curves[c] = weights[-1]
    common.table(table, ["c", f"score of key p-{k}", "best other score", f"weight on p-{k}",
                         "largest other weight", f"rows peaking at p-{k}"])
    margin = (table[0][1] - table[0][2]) / table[0][1]  # the same for every c: scores scale with c
    peaks = claims.check("look-back-peaks", min(hits) == 1, f"Every query p >= {k} peaks at key p - {k}, with every c,"
                         f" though that key's score stands only {fmt(100 * margin, 2)}% above the best other key: a "
                         "shallow peak", f"{min(hits):.0%} of the rows", "all of them", "look at the causal mask").say()
    weights = [row[3] for row in table]
    grows = claims.check("bigger-c-more-weight", all(a < b for a, b in zip(weights, weights[1:])), "Only the size c "
                         f"of W_q^T W_k decides how much weight that peak gets: {fmt(weights[0], 3)} with c = "
                         f"{table[0][0]}, {fmt(weights[-1], 3)} with c = {table[-1][0]} (the last panel of the figure)",
                         f"weights {[fmt(w, 3) for w in weights]}", "growing with c").say()
    plot_dot_products(gram, curves, k, offset_only, peaks, args)
    return claims.all_of("insight-look-back", f"PE(p).PE(j) depends only on p - j, not on its sign. W_q = c M_-k makes "
                         f"a query peak at p - k; with c = {table[0][0]} that peak holds weight {fmt(weights[0], 3)}, "
                         f"with c = {table[-1][0]} {fmt(weights[-1], 3)}.", offset_only, peaks, grows)


def plot_dot_products(gram, curves, k, offset_only, peaks, args):
    n = gram.size(0)
    fig, axes = common.new_figure(1, 3, figsize=(17, 4.8), show=args.show)
    stride = -(-n // 512)  # at most 512 x 512 cells drawn: more only costs drawing time
    image = axes[0].imshow(gram[::stride, ::stride].numpy(), cmap="viridis", interpolation="nearest",
                           extent=(-0.5, n - 0.5, n - 0.5, -0.5))  # axes in positions, cell centres on ticks
    axes[0].set_xticks(range(0, n, _tick_step(n)))
    axes[0].set_yticks(range(0, n, _tick_step(n)))
    axes[0].set(xlabel="position j", ylabel="position p", title=claims.figure_title(
        "diagonals-title", "PE(p) . PE(j): constant along every diagonal", offset_only, width=50))
    fig.colorbar(image, ax=axes[0], label="dot product")
    for p in sorted({0, n // 4, n // 2}):
        ks = torch.arange(-p, n - p)
        axes[1].plot(ks, gram[p, p + ks], lw=1.5, ls="-" if p == 0 else "--", label=f"p = {p}")
    axes[1].set(xlabel="offset j - p", ylabel="PE(p) . PE(j)", title=claims.figure_title(
        "curves-title", "The same curve from every starting position p", offset_only, width=50))
    axes[1].legend(fontsize=8)
    first = max(0, n - 1 - k - 16)  # the last keys only: the peak and its neighbours
    for c, weights in curves.items():
        axes[2].plot(range(first, n), weights[first:], ".-", ms=4, lw=1, label=f"c = {c}")
    axes[2].axvline(n - 1 - k, color="gray", ls=":", lw=1)
    axes[2].axhline(1 / n, color="black", ls=":", lw=1, label="uniform 1/(p+1)")
    axes[2].set(xlabel=f"key position j (keys {first}..{n - 1})", ylabel="attention weight of query p",
                title=f"Query p = {n - 1} with W_q = c M_-{k}, W_k = I:\n" + claims.figure_title(
                    "look-back-title", f"weights peak at key {n - 1 - k} = p - {k}", peaks, width=50))
    axes[2].xaxis.get_major_locator().set_params(integer=True)  # key positions are whole numbers
    axes[2].legend(fontsize=8)
    common.save_figure(fig, args.out_dir, "positional_encoding_dot_products.png", show=args.show)


# %% 6. Interleaved vs concatenated halves
def section_6_layouts(pe, d_model, interleaved, args):
    common.section(6, "Interleaved sin/cos vs concatenated halves (two layouts, one encoding)")
    order = concatenated_column_order(d_model)
    concat = pe[:, order]  # (max_len, d_model): sin(p w_0), sin(p w_1), ..., cos(p w_0), cos(p w_1), ...
    o, h = order.tolist(), d_model // 2  # the whole order when it is short, else its outline
    shown = o if d_model <= 8 else f"[{o[0]}, {o[1]}, ..., {o[h - 1]}, {o[h]}, {o[h + 1]}, ..., {o[-1]}]"
    common.explain(f"""
        The paper interleaves (sin, cos, sin, cos, ...). Much code puts all sines first, then all
        cosines: the same columns in the order {shown}. The first
        layer that reads the input is linear, and a linear layer on reordered columns equals the
        same layer with its weight columns reordered the same way:""")
    layer, permuted = nn.Linear(d_model, d_model), nn.Linear(d_model, d_model)
    with torch.no_grad():
        permuted.weight.copy_(layer.weight[:, order])
        permuted.bias.copy_(layer.bias)
        layer_gap = (layer(pe) - permuted(concat)).abs().max().item()
    same = claims.below("layouts-equivalent", "The layer on the concatenated table, its weight columns reordered, "
                        f"gives the interleaved layer's output (largest difference {fmt(layer_gap, 2)})", layer_gap,
                        1e-5, hint="both the columns and the weights must be reordered with the same order").say()
    angles = torch.arange(pe.size(0))[:, None] * pair_frequencies(d_model)  # (max_len, h): p * w_i
    gap = (concat.double() - torch.cat([angles.sin(), angles.cos()], 1)).abs().max()
    halves = claims.below("sines-then-cosines", f"Reordered, columns 0-{h - 1} hold sin(p w_i) and columns {h}-"
                          f"{d_model - 1} cos(p w_i), by hand to within {fmt(gap, 2)}", gap, 1e-6,
                          hint="look at concatenated_column_order and at the table's layout").say()
    print()
    common.explain("""
        A model learns its weights, so for the model the two layouts are equivalent. For your eyes
        they are not: the two heatmaps of positional_encoding_layouts.png look nothing alike. Check
        which layout a plot uses before you compare it with another.""")
    fig, axes = common.new_figure(1, 2, figsize=(12, 4.8), show=args.show)
    _heatmap(axes[0], pe, claims.figure_title("interleaved-title", "Interleaved (paper): sin in even, cos in odd "
                                              "columns", interleaved, width=55))
    _heatmap(axes[1], concat, claims.figure_title("concatenated-title", f"Concatenated: sin in columns 0-{h - 1}, "
                                                  f"cos in {h}-{d_model - 1}", halves, width=55))
    common.save_figure(fig, args.out_dir, "positional_encoding_layouts.png", show=args.show)
    return claims.all_of("insight-layouts", "Interleaved and concatenated layouts are the same columns reordered: a "
                         f"linear layer with reordered weights gives the same output (difference {fmt(layer_gap, 2)}).",
                         same, halves)


# %% 7. Positions next to token embeddings; learned positions
def section_7_embeddings(pe, d_model, max_len, offsets):
    common.section(7, "How loud are positions next to tokens? And learned positions")
    lengths = pe.double().norm(dim=1)  # (max_len,) |PE(p)|
    unit_pairs = claims.below("pe-length", f"The input of the first block is token embedding * scale + PE. Every PE(p) "
                          f"has length sqrt(d_model/2) = {fmt(math.sqrt(d_model / 2))} (each pair adds sin^2 + cos^2 "
                          "= 1)", (lengths - math.sqrt(d_model / 2)).abs().max(), 1e-5,
                          measured=f"|PE(p)| from {fmt(lengths.min())} to {fmt(lengths.max())}").say()
    common.explain(f"""
        The paper multiplies the embeddings by sqrt(d_model) = {fmt(math.sqrt(d_model))}. How long
        are token vectors then? Averages over {VOCAB_SIZE} token ids:""")
    pe_length = lengths.mean().item()
    rows = []
    for init, std in (("nn.Embedding default, N(0, 1)", None), ("N(0, 1/d_model)", d_model ** -0.5)):
        embed = nn.Embedding(VOCAB_SIZE, d_model)
        if std is not None:
            nn.init.normal_(embed.weight, std=std)
        length = embed.weight.norm(dim=1).mean().item()
        for name, scale in (("1", 1.0), ("sqrt(d_model)", math.sqrt(d_model))):
            rows.append([init, name, length * scale, pe_length, pe_length / (length * scale)])
    common.table(rows, ["initialisation", "scale", "|token|", "|PE(p)|", "|PE| / |token|"])
    common.explain(f"""
        The sqrt(d_model) scale goes with embeddings of length about 1 (N(0, 1/d_model), a common
        choice when the embedding matrix is shared with the output layer): tokens and positions then
        have similar sizes. With nn.Embedding's default N(0, 1), the same scale makes tokens
        {fmt(1 / rows[1][4], 3)} times longer than the positions. Check which initialisation goes with
        the scale before copying either.""")

    learned = LearnedPositionalEmbedding(d_model, max_len)
    k, spread = offsets[0], {}
    for name, t in (("sinusoidal", pe.double()), ("learned", learned.table.weight.detach().double())):
        same_offset = (t[:-k] * t[k:]).sum(1)  # PE(p) . PE(p + k) for every p
        spread[name] = (same_offset.max() - same_offset.min()).item()
    common.explain(f"""
        Learned absolute positions (BERT, GPT-2, LearnedPositionalEmbedding above) replace the
        formula by a trained table: max_len x d_model = {sum(p.numel() for p in learned.parameters()):,}
        parameters here, and no row for a position beyond max_len = {max_len}. Untrained, the table
        is noise: its dot products at offset {k} vary by {fmt(spread['learned'], 3)} over p, the
        sinusoidal table's by {fmt(spread['sinusoidal'], 2)}. Whatever order structure it ends with
        comes from the training data.""")
    return claims.all_of("insight-loudness", f"Every PE(p) has length {fmt(math.sqrt(d_model / 2))}: with N(0, 1) "
                         f"embeddings times sqrt(d_model) that is {fmt(rows[1][4], 2)} of a token's length; learned "
                         "position tables cost max_len x d_model parameters and stop at max_len.", unit_pairs)


# %% main: the lesson's table of contents
def check_settings(args):
    """d_model and max_len from the flags, else the knobs; an impossible setting gives one error line."""
    quick = "QUICK_" if args.quick else ""  # --quick reads QUICK_D_MODEL and QUICK_MAX_LEN
    knob_d_model, knob_max_len = (QUICK_D_MODEL, QUICK_MAX_LEN) if args.quick else (D_MODEL, MAX_LEN)
    d_model, d_label = common.flag_or_knob(args, "d_model", quick + "D_MODEL", knob_d_model)
    max_len, m_label = common.flag_or_knob(args, "max_len", quick + "MAX_LEN", knob_max_len)
    common.quick_note(args, D_MODEL=None if args.d_model else (D_MODEL, QUICK_D_MODEL),  # a typed flag wins
                      MAX_LEN=None if args.max_len else (MAX_LEN, QUICK_MAX_LEN))
    common.whole(N_HEADS, "N_HEADS", low=1)
    common.whole(d_model, d_label)
    step = math.lcm(2, N_HEADS)  # even for sin/cos pairs, and a multiple of N_HEADS
    near = max(step, min(round(d_model / step), 4096 // step) * step)
    common.require(0 < d_model <= 4096 and d_model % step == 0,
                   f"{d_label} must be a multiple of {step} up to 4096 (even for the sin/cos pairs, and "
                   f"divisible by N_HEADS = {N_HEADS}); try {near}")
    common.whole(max_len, m_label, low=16, high=4096, hint=f"positions in the table; try {MAX_LEN}")
    common.number(BASE, "BASE", low=1, low_open=True, high=1e9, hint="wavelengths grow from 2*pi to 2*pi*BASE")
    common.whole(SEQ_LEN, "SEQ_LEN", low=2, hint="tokens to move around")
    common.whole(VOCAB_SIZE, "VOCAB_SIZE", low=1)
    common.whole_numbers(OFFSETS, "OFFSETS", low=1)
    common.whole_numbers(LOOK_BACK_SCALES, "LOOK_BACK_SCALES", low=1, hint="sizes c of W_q = c M_-k, e.g. (1, 4, 16)")
    return d_model, max_len


@common.entry_point
def main(argv=None):
    parser = common.lesson_parser(__doc__)
    parser.add_argument("--d-model", type=int, default=None,
                        help=f"embedding size (default D_MODEL = {D_MODEL}, --quick {QUICK_D_MODEL})")
    parser.add_argument("--max-len", type=int, default=None,
                        help=f"positions in the table (default MAX_LEN = {MAX_LEN}, --quick {QUICK_MAX_LEN})")
    args = common.parse_args(parser, argv)
    d_model, max_len = check_settings(args)
    device = common.setup(args, "Lesson 03: positional encoding")
    print(f"d_model={d_model}, max_len={max_len}, BASE={BASE:g}; attention from lessons 01 and 02 "
          "(common.load_lesson)")
    offsets = tuple(k for k in OFFSETS if k < max_len // 2) or (1,)
    pe = sinusoidal_positional_encoding(max_len, d_model)  # (max_len, d_model), on the CPU

    order = section_1_order_blindness(d_model, device)
    angles, module = section_2_table(pe, d_model, max_len, args)
    wavelengths = section_3_wavelengths(pe, d_model, max_len, args)
    relative = section_4_relative(pe, d_model, offsets)
    look_back = section_5_dot_products(pe, d_model, offsets, args)
    layouts = section_6_layouts(pe, d_model, angles, args)
    loudness = section_7_embeddings(pe, d_model, max_len, offsets)
    common.key_insights([order, module, wavelengths, relative, look_back, layouts, loudness])


if __name__ == "__main__":
    main()
