"""Lesson 02: multi-head attention - several attention heads side by side, each on a slice.

What you will learn:
  1. Multi-head attention written naively: a Python loop over heads, each head a slice of the rows
     of W_q, W_k, W_v, each using lesson 01's scaled_dot_product_attention. Checked equal to
     PyTorch's nn.MultiheadAttention, whose boolean masks mean the OPPOSITE (True = blocked).
  2. The same thing batched: split_heads / merge_heads reshape (B, T, d_model) to
     (B, n_heads, T, d_head) and back, with every shape printed; merging without the transpose
     back is a silent bug that only a comparison catches.
  3. Why several heads: a small task that needs two relations at once (left AND right neighbour).
     Trained with 2 heads, one head reads the left neighbour and the other the right one; one head
     alone must make its weights depend on the digits, and mostly fails. Measured, not designed.
  4. Parameters: 4*d_model^2 + 4*d_model whatever the number of heads: heads split d_model.

Run:  python 02_multi_head_attention.py                  (a few seconds on a CPU)
      python 02_multi_head_attention.py --heads 4        (4 heads, 2 relations: how do they share?)
      python 02_multi_head_attention.py --quick          (tiny sizes, for a smoke test)

Shapes: B batch, T sequence length (T_q queries, T_k keys when they differ), d_model embedding
size, n_heads heads, d_head = d_model // n_heads the size of each head's slice (lesson 01's d_k: the
size of one head's queries and keys).
Masks are boolean with True = may attend (as in lesson 01 and F.scaled_dot_product_attention).
"""
import math
import textwrap

import common  # first: it checks $OMP_NUM_THREADS before torch reads it
import torch
import torch.nn as nn
import torch.nn.functional as F

from common import claims, fmt  # claims: each sentence below that states a property is checked
from common.report import differ, percent  # a share with its 95% interval; two shares apart beyond it

# Reused from lesson 01 (one source for each component): attention for one head. Every
# MultiHeadAttention below computes with it, so an edit to lesson 01 changes lessons 02-05.
scaled_dot_product_attention = common.load_lesson(1).scaled_dot_product_attention
causal_mask = common.load_lesson(1).causal_mask

# %% Knobs (edit these)
D_MODEL = 32         # embedding size of the lesson's model (--d-model overrides it)
N_HEADS = 2          # heads of the lesson's model (--heads overrides it); the task needs 2 relations
MAX_D_MODEL = 1024   # largest d_model accepted: section 3 trains two models of this width on a CPU
VOCAB_SIZE = 10      # section 3: tokens are the digits 0 .. VOCAB_SIZE - 1 (at least 2)
SEQ_LEN = 6          # section 3: positions on a ring (position 0's left neighbour is the last one)
STEPS = 200          # section 3: training steps, the same for every model compared
BATCH_SIZE = 64      # section 3: fresh random sequences per step
LR = 3e-2            # section 3: Adam's peak learning rate
WARMUP = 20          # section 3: steps of linear warmup to LR, then a cosine decay to 0
N_EVAL = 2000        # section 3: held-out sequences for accuracy and attention averages
QUICK = dict(steps=100, batch_size=64, n_eval=200)  # --quick: replaces STEPS, BATCH_SIZE, N_EVAL
HEAD_COUNTS = (1, 2, 4, 8, 16)                      # section 4's parameter table


# %% Building blocks
class MultiHeadAttention(nn.Module):
    """n_heads attention heads side by side, each on its own d_head = d_model // n_heads slice.

    forward(query (B, T_q, d_model), key (B, T_k, d_model), value (B, T_k, d_model), mask=None,
    need_weights=True) -> (output (B, T_q, d_model), weights (B, n_heads, T_q, T_k) or None).
    mask: boolean, True = may attend, of shape (T_q, T_k), (B, T_q, T_k), (B, 1, T_k) or
    (B, n_heads, T_q, T_k). Attention is lesson 01's scaled_dot_product_attention in every call.
    fused=True is an explicit opt-in: calls with need_weights=False then use PyTorch's fused
    F.scaled_dot_product_attention (same result, faster on a GPU; an edit to lesson 01 does not
    reach it).
    """

    def __init__(self, d_model: int, n_heads: int, dropout: float = 0.0, bias: bool = True,
                 fused: bool = False):
        super().__init__()
        if n_heads <= 0 or d_model <= 0 or d_model % n_heads != 0:
            raise ValueError(f"d_model ({d_model}) must be a positive multiple of n_heads ({n_heads})")
        self.d_model = d_model
        self.n_heads = n_heads
        self.d_head = d_model // n_heads
        self.fused = fused
        # Rows h*d_head .. (h+1)*d_head - 1 of W_q, W_k, W_v belong to head h (see section 1).
        self.W_q = nn.Linear(d_model, d_model, bias=bias)  # all heads' query projections at once
        self.W_k = nn.Linear(d_model, d_model, bias=bias)
        self.W_v = nn.Linear(d_model, d_model, bias=bias)
        self.W_o = nn.Linear(d_model, d_model, bias=bias)  # mixes the heads' outputs back together
        self.dropout = nn.Dropout(dropout)

    def split_heads(self, x):
        """(B, T, d_model) -> (B, n_heads, T, d_head)."""
        B, T, _ = x.shape
        return x.view(B, T, self.n_heads, self.d_head).transpose(1, 2)

    def merge_heads(self, x):
        """(B, n_heads, T, d_head) -> (B, T, d_model). The transpose back is essential."""
        B, _, T, _ = x.shape
        return x.transpose(1, 2).reshape(B, T, self.d_model)

    def forward(self, query, key, value, mask=None, need_weights: bool = True):
        q = self.split_heads(self.W_q(query))  # (B, n_heads, T_q, d_head)
        k = self.split_heads(self.W_k(key))    # (B, n_heads, T_k, d_head)
        v = self.split_heads(self.W_v(value))  # (B, n_heads, T_k, d_head)
        if mask is not None and mask.dim() == 3:
            mask = mask.unsqueeze(1)  # (B, T_q or 1, T_k) -> (B, 1, T_q or 1, T_k): same for every head
        if self.fused and not need_weights:  # the opt-in: PyTorch's kernel, no weights to return
            p = self.dropout.p if self.training else 0.0
            heads = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
            return self.W_o(self.merge_heads(heads)), None
        # weights = softmax(Q K^T / sqrt(d_head)): lesson 01's function, scaled by each head's size
        heads, weights = scaled_dot_product_attention(q, k, v, mask)  # (B, n_heads, T_q, d_head)
        if self.training and self.dropout.p > 0:
            # Dropout on the weights, as nn.MultiheadAttention does; the weights returned are the
            # ones that multiplied V, so in training mode their rows no longer sum to 1.
            weights = self.dropout(weights)
            heads = weights @ v  # (B, n_heads, T_q, T_k) @ (B, n_heads, T_k, d_head)
        output = self.W_o(self.merge_heads(heads))  # (B, T_q, d_model)
        return output, (weights if need_weights else None)


def multi_head_attention_loop(mha: MultiHeadAttention, query, key, value, mask=None):
    """The naive version: one head at a time, with mha's weights. Same result as mha(...).

    Head h uses rows h*d_head .. (h+1)*d_head - 1 of W_q, W_k, W_v: a d_head-sized projection.
    Returns (output (B, T_q, d_model), weights (B, n_heads, T_q, T_k)).
    """
    outputs, all_weights = [], []
    for h in range(mha.n_heads):
        rows = slice(h * mha.d_head, (h + 1) * mha.d_head)
        q_h, k_h, v_h = (F.linear(x, W.weight[rows], None if W.bias is None else W.bias[rows])
                         for x, W in ((query, mha.W_q), (key, mha.W_k), (value, mha.W_v)))  # (B, T, d_head)
        mask_h = mask[:, h] if mask is not None and mask.dim() == 4 else mask
        out_h, weights_h = scaled_dot_product_attention(q_h, k_h, v_h, mask_h)  # (B, T_q, d_head)
        outputs.append(out_h)
        all_weights.append(weights_h)
    # concatenate the heads side by side, then mix them with W_o
    concat = torch.cat(outputs, dim=-1)                          # (B, T_q, n_heads * d_head = d_model)
    return mha.W_o(concat), torch.stack(all_weights, dim=1)     # (B, n_heads, T_q, T_k)


def merge_heads_without_transpose(x):
    """A BUG kept for teaching: reshape (B, n_heads, T, d_head) straight to (B, T, d_model).

    The shapes fit, so nothing complains, but output row t now holds the n_heads * d_head numbers
    that follow each other in memory: row 0 is head 0 at positions 0 .. n_heads-1 (when n_heads <= T).
    With one head there is nothing to transpose and the "bug" is harmless.
    """
    B, n_heads, T, d_head = x.shape
    return x.reshape(B, T, n_heads * d_head)


def torch_reference(mha: MultiHeadAttention) -> nn.MultiheadAttention:
    """nn.MultiheadAttention(batch_first=True) holding mha's weights (W_q, W_k, W_v stacked in in_proj)."""
    bias = mha.W_q.bias is not None
    ref = nn.MultiheadAttention(mha.d_model, mha.n_heads, dropout=mha.dropout.p, bias=bias, batch_first=True)
    ref = ref.to(mha.W_q.weight.device)
    with torch.no_grad():
        # in_proj_weight (3*d_model, d_model) is W_q, W_k, W_v stacked; out_proj is W_o
        ref.in_proj_weight.copy_(torch.cat([mha.W_q.weight, mha.W_k.weight, mha.W_v.weight]))
        ref.out_proj.weight.copy_(mha.W_o.weight)
        if bias:
            ref.in_proj_bias.copy_(torch.cat([mha.W_q.bias, mha.W_k.bias, mha.W_v.bias]))
            ref.out_proj.bias.copy_(mha.W_o.bias)
    return ref.eval()


def attention_parameter_count(d_model: int) -> int:
    """4 d_model x d_model matrices (W_q, W_k, W_v, W_o) + 4 bias vectors of d_model. No n_heads in it."""
    return 4 * d_model**2 + 4 * d_model


# The task of section 3: every position must output (left neighbour) - (right neighbour).
def neighbour_difference_batch(batch_size: int, generator, seq_len: int = SEQ_LEN,
                               vocab_size: int = VOCAB_SIZE):
    """Random digit sequences on a ring and their targets.

    x (B, T) digits; y (B, T) = x[t-1] - x[t+1] (positions wrap around), shifted by vocab_size - 1
    into a class index 0 .. 2*vocab_size - 2. Order matters: 3 - 5 = -2 but 5 - 3 = +2.
    """
    x = torch.randint(0, vocab_size, (batch_size, seq_len), generator=generator)  # (B, T)
    left, right = torch.roll(x, 1, dims=1), torch.roll(x, -1, dims=1)               # x[t-1], x[t+1]
    return x, left - right + vocab_size - 1


class NeighbourModel(nn.Module):
    """Token + learned position embedding -> one MultiHeadAttention layer -> a linear output layer.

    No residual and no feed-forward: the output can only come from what the heads bring in.
    forward(x (B, T)) -> (logits (B, T, 2*vocab_size - 1), weights (B, n_heads, T, T) or None).
    """

    def __init__(self, d_model: int, n_heads: int, vocab_size: int = VOCAB_SIZE, seq_len: int = SEQ_LEN):
        super().__init__()
        self.tok_emb = nn.Embedding(vocab_size, d_model)
        self.pos_emb = nn.Embedding(seq_len, d_model)  # one learned vector per position (lesson 03)
        self.attn = MultiHeadAttention(d_model, n_heads)
        self.out = nn.Linear(d_model, 2 * vocab_size - 1)

    def forward(self, x, need_weights: bool = False):
        h = self.tok_emb(x) + self.pos_emb.weight                             # (B, T, d_model)
        attended, weights = self.attn(h, h, h, need_weights=need_weights)    # (B, T, d_model)
        return self.out(attended), weights                                   # (B, T, 2*vocab_size - 1)


def warmup_then_cosine(step: int, steps: int, warmup: int = WARMUP) -> float:
    """The learning rate's factor at `step`: linear from 1/warmup up to 1 over the first `warmup`
    steps, then a cosine from 1 down to 0 over the steps that remain."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


def train_neighbour_model(d_model: int, n_heads: int, steps: int = STEPS, batch_size: int = BATCH_SIZE,
                          lr: float = LR, seed: int = 0, device="cpu"):
    """Train a NeighbourModel on fresh batches with Adam. The same seed gives the same init and data.

    Returns (model in eval mode, list of losses).
    """
    torch.manual_seed(seed)
    model = NeighbourModel(d_model, n_heads).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: warmup_then_cosine(step, steps))
    generator = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(steps):
        x, y = (t.to(device) for t in neighbour_difference_batch(batch_size, generator))
        logits, _ = model(x)
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()  # learning rate for the next step: LR * warmup_then_cosine(step)
        losses.append(loss.item())
    return model.eval(), losses


@torch.no_grad()
def evaluate(model: NeighbourModel, x, y, within: float = 0.1):
    """(accuracy over all positions, attention weights averaged over the batch (n_heads, T, T), per head
    the share of rows within `within` of that average (half the summed |difference|): 1 for fixed reads)."""
    logits, weights = model(x, need_weights=True)                                   # (B, n_heads, T, T)
    avg = weights.mean(0)
    at_avg = ((weights - avg).abs().sum(-1) / 2 < within).float().mean((0, 2))      # (n_heads,)
    return (logits.argmax(-1) == y).float().mean().item(), avg, at_avg


@torch.no_grad()
def accuracy_with_frozen_weights(model: NeighbourModel, x, y, avg_weights):
    """Accuracy when every input gets the same attention weights avg_weights (n_heads, T, T):
    the values still carry the digits, but weights that depend on the digits are switched off."""
    attn = model.attn
    h = model.tok_emb(x) + model.pos_emb.weight              # (B, T, d_model)
    v = attn.split_heads(attn.W_v(h))                        # (B, n_heads, T, d_head)
    heads = avg_weights @ v  # (n_heads, T, T) @ (B, n_heads, T, d_head) -> (B, n_heads, T, d_head)
    logits = model.out(attn.W_o(attn.merge_heads(heads)))   # (B, T, 2*vocab_size - 1)
    return (logits.argmax(-1) == y).float().mean().item()


def offset_weights(avg_weights, offset: int):
    """Per head, the average weight a query puts on the key `offset` positions away (on the ring)."""
    t = torch.arange(avg_weights.size(-1))
    return avg_weights[:, t, (t + offset) % len(t)].mean(-1)  # (n_heads,)


# %% 1. A loop over heads, checked against nn.MultiheadAttention
def section_1_loop(d_model, n_heads, device):
    common.section(1, "One head at a time: a loop over heads")
    mha = MultiHeadAttention(d_model, n_heads).to(device).eval()
    fused = MultiHeadAttention(d_model, n_heads, fused=True).to(device).eval()
    fused.load_state_dict(mha.state_dict())  # the same weights, PyTorch's fused kernel opted in
    common.explain(f"""
        Each of the {n_heads} heads is lesson 01's attention on its own d_head = {d_model} //
        {n_heads} = {mha.d_head} numbers per token (lesson 01's d_k, now per head). Head h takes
        rows h*d_head .. (h+1)*d_head - 1 of W_q, W_k and W_v (a {mha.d_head} x {d_model} slice of
        each), attends, and returns (B, T_q, d_head). The heads' outputs are concatenated side by
        side back to d_model and mixed by W_o. Below, the loop (multi_head_attention_loop) against
        our batched class and against PyTorch's nn.MultiheadAttention holding the same weights.""")
    B, T, T_k = 2, 5, 7
    x = torch.randn(B, T, d_model, device=device)
    memory = torch.randn(B, T_k, d_model, device=device)  # another sequence, for cross-attention
    keep = torch.ones(B, T, dtype=torch.bool, device=device)
    keep[1, 3:] = False                                   # sequence 1 has 2 padding tokens at the end
    ref = torch_reference(mha)
    causal = causal_mask(T, device=device)                # (T, T), True = may attend (on/below diagonal)
    cases = [  # name, query, key/value, our mask (True = may attend), PyTorch's masks (True = BLOCKED)
        ("no mask", x, x, None, {}),
        ("causal mask", x, x, causal, dict(attn_mask=~causal)),
        ("padding mask", x, x, keep[:, None, :], dict(key_padding_mask=~keep)),  # ours (B, 1, T_k)
        (f"cross, T_q={T}, T_k={T_k}", x, memory, None, {}),
    ]
    rows = []
    with torch.no_grad():
        for name, q, kv, mask, torch_masks in cases:
            out_loop, w_loop = multi_head_attention_loop(mha, q, kv, kv, mask)
            out_cls, w_cls = mha(q, kv, kv, mask=mask)
            out_fused, _ = fused(q, kv, kv, mask=mask, need_weights=False)
            out_ref, w_ref = ref(q, kv, kv, need_weights=True, average_attn_weights=False, **torch_masks)
            rows.append([name, torch.maximum((out_loop - out_cls).abs().max(), (w_loop - w_cls).abs().max()),
                         (out_cls - out_ref).abs().max(), (w_cls - w_ref).abs().max(),
                         (out_fused - out_cls).abs().max()])
        print(f"  largest |difference| (weights: (B, n_heads, T_q, T_k) = {tuple(w_cls.shape)} in the cross case)")
        common.table(rows, ["case", "loop vs class", "class vs PyTorch", "weights vs PyTorch", "fused=True vs class"])
        worst = torch.stack([d for row in rows for d in row[1:]]).max().item()  # keeps a NaN; max() would not
        wrong, _ = ref(x, x, x, attn_mask=causal, need_weights=True)  # our mask passed unchanged
        nan_at = torch.isnan(wrong).any(-1)                             # (B, T): query rows that came out NaN
        wrong_diff = torch.nan_to_num(wrong - mha(x, x, x, mask=causal)[0]).abs().max().item()
    agree = claims.below("loop-class-pytorch", "Multi-head attention = n_heads copies of lesson 01's attention on "
                         "d_head-sized slices of W_q, W_k, W_v, concatenated and mixed by W_o: the loop, the batched "
                         "class, its fused opt-in and nn.MultiheadAttention agree (largest difference "
                         f"{fmt(worst, 2)}; float32 rounding is ~1e-7).", worst, 1e-5,
                         hint="the column with a large number says where").say()
    common.explain("""
        Our class always computes with lesson 01's function; "fused=True" is the opt-in that hands
        calls without weights to PyTorch's F.scaled_dot_product_attention instead (a speed-up on a
        GPU; an edit to lesson 01 would not reach it).""")
    polarity = claims.check(
        "polarity-matters", nan_at[:, -1].all() and not nan_at[:, :-1].any() and wrong_diff > 1e-3, "Mask polarity: "
        "ours (like F.scaled_dot_product_attention's) say True = may attend, nn.MultiheadAttention's attn_mask and "
        "key_padding_mask True = BLOCKED, so we pass ~mask. Passing our causal mask unchanged blocks each query's own "
        f"position and the past, so it sees only the future: outputs differ by up to {fmt(wrong_diff, 3)}, and "
        f"{int(nan_at.sum())} of {B * T} query rows (the last position, with nothing left to see) come out as NaN.",
        f"NaN rows at positions {nan_at.any(0).nonzero().flatten().tolist()}, outputs {fmt(wrong_diff, 3)} apart",
        "NaN at the last position only, outputs more than 0.001 apart", "see causal_mask in lesson 01").say()
    return agree, polarity


# %% 2. All heads at once: split_heads and merge_heads
def section_2_batched(d_model, n_heads, device):
    common.section(2, "All heads at once: split_heads / merge_heads")
    mha = MultiHeadAttention(d_model, n_heads).to(device).eval()
    B, T, H, d_head = 2, 5, n_heads, mha.d_head
    x = torch.randn(B, T, d_model, device=device)
    common.explain("""
        The loop runs n_heads small projections. Instead we project once with the full W_q (all
        heads' rows) and reshape so that heads become a batch dimension; every matmul then handles
        all heads at once. The shapes, step by step:""")
    with torch.no_grad():
        projected = mha.W_q(x)
        q, k, v = mha.split_heads(projected), mha.split_heads(mha.W_k(x)), mha.split_heads(mha.W_v(x))
        heads, weights = scaled_dot_product_attention(q, k, v)
        merged = mha.merge_heads(heads)
        steps = [
            ("x", "(B, T, d_model)", x),
            ("W_q(x)", "(B, T, d_model)", projected),
            (".view(B, T, n_heads, d_head)", "(B, T, n_heads, d_head)", projected.view(B, T, H, d_head)),
            (".transpose(1, 2) = split_heads", "(B, n_heads, T, d_head)", q),
            ("weights = softmax(Q K^T / sqrt(d_head))", "(B, n_heads, T, T)", weights),
            ("weights @ V", "(B, n_heads, T, d_head)", heads),
            (".transpose(1, 2).reshape = merge_heads", "(B, T, d_model)", merged),
        ]
        common.table([[name, names, str(tuple(t.shape))] for name, names, t in steps],
                     ["step", "shape", f"here (B={B}, T={T}, n_heads={H}, d_head={d_head})"])
        # head h of the batched q is exactly the loop's q_h: rows h*d_head.. of W_q
        rows = slice((H - 1) * d_head, H * d_head)
        loop_q = F.linear(x, mha.W_q.weight[rows], mha.W_q.bias[rows])  # the loop's query of the last head
        good, (ref_out, _) = mha.W_o(merged), torch_reference(mha)(x, x, x)
        bad_diff = (mha.W_o(merge_heads_without_transpose(heads)) - ref_out).abs().max().item()
    claims.same("last-head-is-slice", f"q[:, {H - 1}] (the last head) equals the loop's head {H - 1} built from "
                f"rows {rows.start}..{rows.stop - 1} of W_q", q[:, H - 1], loop_q).say()
    batched = claims.same("batched-matches-pytorch", "The batched output, W_o(merge_heads(...)), equals "
                          "nn.MultiheadAttention's", good, ref_out).say()
    positions = ", ".join(str(t) for t in range(min(H, T))) + ("" if H <= T else ", then head 1")
    common.explain(f"""
        The classic bug: merging with .reshape(B, T, d_model) but no transpose back. Nothing
        complains, since the shapes fit, but row t then holds the {H} * d_head numbers that follow
        each other in memory (row 0: head 0 at positions {positions}, instead of every head at
        position 0). Only a comparison like this one (and the tests) catches it.""")
    if H == 1:  # one head: nothing to transpose, the "bug" is harmless
        print(f"  With one head it changes nothing (difference {fmt(bad_diff, 2)}): run with --heads 2 to see it.")
        return [batched]
    return [batched, claims.above("merge-bug-shows", f"Without the transpose the output differs from PyTorch's "
                                  f"by {fmt(bad_diff, 3)}.", bad_diff, 1e-3).say()]


# %% 3. Why several heads: a task that needs two relations at once
def train_and_measure(d_model, n_heads, sizes, seed, device):
    """Train the n_heads-head model and a 1-head model alike; measure both on held-out sequences.

    Returns ({n_heads: measurements, 1: measurements}, correct answers of always answering 0, answers).
    """
    x_eval, y_eval = (t.to(device) for t in neighbour_difference_batch(
        sizes["n_eval"], torch.Generator().manual_seed(seed + 1)))
    n = y_eval.numel()  # one answer per position of every held-out sequence
    baseline = int((y_eval == VOCAB_SIZE - 1).sum())  # always answer "difference 0"
    results = {}
    for h in dict.fromkeys([n_heads, 1]):  # the lesson's model, then one head (once with --heads 1)
        model, losses = train_neighbour_model(d_model, h, sizes["steps"], sizes["batch_size"],
                                              seed=seed, device=device)
        accuracy, avg, at_avg = evaluate(model, x_eval, y_eval)
        spots = torch.stack([offset_weights(avg, k) for k in (-1, 0, +1)], dim=1)  # (h, 3)
        spots = torch.cat([spots, 1 - spots.sum(1, keepdim=True)], dim=1).cpu()    # + elsewhere
        frozen = accuracy_with_frozen_weights(model, x_eval, y_eval, avg)
        results[h] = dict(loss=losses[-1], correct=round(accuracy * n), avg=avg.cpu(), spots=spots,
                          frozen=round(frozen * n), at_avg=at_avg.cpu())
    return results, baseline, n


SPOTS = ("left neighbour", "itself", "right neighbour", "elsewhere")  # offsets -1, 0, +1, the rest
TIE = 0.05    # two shares of a head's weight closer than this are a blend, not a winner
READS = 0.75  # a head reads a neighbour when at least this share of its average weight is on it


def largest(spots_of_head) -> str:
    """Where a head puts the largest share of its average weight: 'left neighbour (0.83)', or
    'left/right blend (0.49/0.50)' when the two largest shares are within TIE of each other."""
    (first, second), (a, b) = spots_of_head.topk(2)
    if first - second < TIE:
        return f"{SPOTS[a].split()[0]}/{SPOTS[b].split()[0]} blend ({first:.2f}/{second:.2f})"
    return f"{SPOTS[a]} ({first:.2f})"


def split_claim(spots):
    """The claim, read off the table, that training split the two neighbours between the heads: a head
    with at least READS of its average weight on the left neighbour, and another on the right one."""
    found, text = [], {}
    for side, col in (("left", 0), ("right", 2)):  # columns of the table: -1 (left), +1 (right)
        heads = [i for i in range(len(spots)) if spots[i, col] >= READS]
        found.append(bool(heads))
        shares = ", ".join(f"{spots[i, col]:.2f}" for i in heads)
        text[side] = f"head{'s' * (len(heads) > 1)} {', '.join(map(str, heads))} ({shares})" if heads else "no head"
    return claims.check("heads-split", all(found), f"A split nobody wrote: {text['left']} on the left neighbour, "
                        f"{text['right']} on the right one (shares of the average weight).", f"largest shares "
                        f"{spots[:, 0].max():.2f} left, {spots[:, 2].max():.2f} right", f"{READS} or more on each side")


def section_3_why_heads(d_model, n_heads, sizes, args, device):
    common.section(3, "Why several heads: left AND right neighbour at once")
    common.explain(f"""
        Task: random digits 0..{VOCAB_SIZE - 1} on a ring of {SEQ_LEN} positions; every position
        must output (its left neighbour) - (its right neighbour), a class from
        -{VOCAB_SIZE - 1} to +{VOCAB_SIZE - 1}. Order matters (0 - 1 = -1, 1 - 0 = +1), so a
        position needs both neighbours AND which is which. The model: token embedding + a
        learned position embedding (positions are lesson 03's subject), one MultiHeadAttention
        layer, a linear output layer. No residual: the answer can only come through attention.

        One head returns one weighted average of value vectors. With the same weights for every input, a
        position gets a fixed blend w*v(left) + (1-w)*v(right) (+ the same share of the others): for
        (left, right) = (0,1) or (1,0) it lies on the segment between the blends of (0,0) and (1,1). The
        output layer scores answers linearly, so where answer 0 scores highest is a convex set (an
        intersection of half-spaces score_0 > score_k): (0,0) and (1,1) answer 0, so every blend between
        them does too, never -1 or +1. One head must make its weights depend on the digits. Two heads can
        each read one neighbour into their own slice of the output, and the output layer can give the
        slices opposite signs. We train a {n_heads}-head and a 1-head model with the same
        d_model={d_model}, {sizes['steps']} steps, seed and data, then measure in eval mode on
        {sizes['n_eval']} held-out sequences. "frozen" replaces each head's weights by their average
        over those sequences: the same blend for every input.""")
    results, baseline, n = train_and_measure(d_model, n_heads, sizes, args.seed, device)
    print("  each head's average weight on each offset (key - query position); at avg: the share of the\n"
          "  head's rows within 0.1 of that average")
    common.table([[f"{h}-head model", f"head {i}", *(f"{w:.3f}" for w in r["spots"][i].tolist()),
                   largest(r["spots"][i]), f"{r['at_avg'][i]:.0%}"] for h, r in results.items() for i in range(h)],
                 ["model", "head", "-1 left", "0 self", "+1 right", "other", "largest", "at avg"])
    print(f"\n  share of the {n:,} held-out answers that are right (95% interval):")
    common.table([[f"{h}-head model", r["loss"], percent(r["correct"], n), percent(r["frozen"], n)]
                  for h, r in results.items()] + [[f"always answer 0 (chance 1/{VOCAB_SIZE})", "",
                                                   percent(baseline, n), ""]],
                 ["model", "train loss", "held-out accuracy", "frozen weights"])
    said = section_3_findings(results, baseline, n, n_heads)
    plot_heads(results, sizes, n, said, args)
    return results, baseline, n, said


def section_3_findings(results, baseline, n, n_heads):
    """What the tables show: the claims, and each difference stated with its noise."""
    one, multi, said = results[1], results[n_heads], []
    if n_heads > 1:
        said = [claims.share_above("heads-beat-one", f"{n_heads} heads answer {percent(multi['correct'], n)} right, "
                                   f"one head {percent(one['correct'], n)}: several heads do what one cannot.",
                                   multi["correct"], n, one["correct"], n).say(), split_claim(multi["spots"]).say()]
        so = ("some of its weights follow the digits too (at avg, first table)" if differ(multi["frozen"], n,
              multi["correct"], n) else "it needs no weights that follow the digits")
        common.explain(f"""
            Frozen, the {n_heads}-head model scores {percent(multi['frozen'], n)}, free
            {percent(multi['correct'], n)}: {claims.noise(multi['frozen'], n, multi['correct'], n)}, so {so}.""")
    common.explain(f"""
        One head answers {percent(one['correct'], n)} right, against {percent(baseline, n)} for always
        answering 0: {claims.noise(one['correct'], n, baseline, n)}. Frozen at its average blend
        ({one['spots'][0][0]:.2f} on the left neighbour) it scores {percent(one['frozen'], n)}; against
        free, {claims.noise(one['frozen'], n, one['correct'], n)}. (On the ring, query 0's left neighbour is
        key {SEQ_LEN - 1}: the corner cells of the figure.)""")
    if one["frozen"] < baseline and differ(one["frozen"], n, baseline, n):  # below chance: say why
        claims.below("frozen-blend-unseen", f"Frozen, one head scores below always answering 0 because its weights "
                     f"move with the digits: only {one['at_avg'][0]:.0%} of its rows lie within 0.1 of the average "
                     "blend, so frozen, the output layer mostly gets a blend it did not learn to read.",
                     one["at_avg"][0], 0.5).say()
    if n_heads == 1:
        print("  With one head there is no split to see: run with --heads 2.")
    return said


def plot_heads(results, sizes, n, said, args):
    panels = [(h, i) for h in results for i in range(h)]  # the lesson's model's heads, then 1 head
    ncols, nrows = min(len(panels), 4), -(-len(panels) // min(len(panels), 4))
    fig, axes = common.new_figure(nrows, ncols, figsize=(3.5 * ncols, 3.3 * nrows + 0.7),
                                  show=args.show, squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    ticks = list(range(SEQ_LEN))
    for ax, (h, i) in zip(axes.flat, panels):
        avg = results[h]["avg"][i]  # (T, T), eval mode, averaged over the held-out sequences
        image = ax.imshow(avg.numpy(), cmap="viridis", vmin=0, vmax=1)
        for q in ticks:
            for k in ticks:
                if avg[q, k] >= 0.05:  # write the weight in every cell that holds some
                    ax.text(k, q, f"{avg[q, k]:.2f}", ha="center", va="center", fontsize=7,
                            color="k" if avg[q, k] > 0.6 else "w")
        ax.set(xticks=ticks, yticks=ticks, xlabel="key position", ylabel="query position")
        ax.set_title(f"{h}-head model, head {i}\nlargest: {largest(results[h]['spots'][i])}", fontsize=9)
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="attention weight")
    accuracies = ", ".join(f"{h} head{'s' if h > 1 else ''} {100 * r['correct'] / n:.0f}% accurate"
                           for h, r in results.items())
    split = [textwrap.fill(c.title(), 110) for c in said if c.name == "heads-split"]  # the claim, or DOES NOT HOLD
    fig.suptitle("\n".join([f"Output left - right neighbour: {accuracies}.", *split, "Each head's attention "
                            f"weights, averaged over {sizes['n_eval']} held-out sequences (eval mode)"]), fontsize=9)
    common.save_figure(fig, args.out_dir, "multi_head_attention.png", show=args.show)


# %% 4. Parameters: heads split d_model, they don't add parameters
def section_4_parameters(d_model):
    common.section(4, "Parameter count: 4*d_model^2 + 4*d_model, whatever n_heads")
    rows, formula = [], attention_parameter_count(d_model)
    for h in sorted(set(HEAD_COUNTS)):
        if h <= 0 or d_model % h:
            rows.append([h, "-", "-", "-", f"not possible: {h} does not divide {d_model}"])
            continue
        torch_numel = sum(p.numel() for p in nn.MultiheadAttention(d_model, h, batch_first=True).parameters())
        rows.append([h, d_model // h, sum(p.numel() for p in MultiHeadAttention(d_model, h).parameters()),
                     torch_numel, formula])
    common.table(rows, ["n_heads", "d_head", "numel()", "nn.MultiheadAttention", "4*d^2 + 4*d"])
    counted = sorted({count for row in rows if row[1] != "-" for count in row[2:]})  # every count, once
    said = claims.equal("parameter-formula", f"Parameters: 4*d_model^2 + 4*d_model = {formula} for d_model="
                        f"{d_model} with any number of heads: numel() and nn.MultiheadAttention count as many.",
                        counted, [formula]).say()
    common.explain(f"""
        W_q, W_k, W_v, W_o are d_model x d_model whatever n_heads is: more heads mean thinner
        slices (d_head = d_model / n_heads), not more weights. Of the {formula}, {4 * d_model} are
        biases.""")
    return said


def settings(args):
    """d_model, n_heads (flags first, else the knobs) and section 3's sizes, each checked (common.knobs)."""
    d_model, d_label = common.flag_or_knob(args, "d_model", "D_MODEL", D_MODEL)
    n_heads, h_label = common.flag_or_knob(args, "heads", "N_HEADS", N_HEADS)
    common.whole(MAX_D_MODEL, "MAX_D_MODEL", low=1)
    common.whole(d_model, d_label, low=1, high=MAX_D_MODEL, hint="e.g. 32: section 3 trains two such models")
    common.whole(n_heads, h_label)
    divisors = [h for h in range(1, min(d_model, 64) + 1) if d_model % h == 0]
    common.require(n_heads > 0 and d_model % n_heads == 0, f"{h_label} must divide {d_label} (each head gets "
                   f"d_model / n_heads numbers); choose from its divisors: {', '.join(map(str, divisors))}"
                   + (", ..." if d_model > 64 else ""))
    if args.quick:  # --quick: the sizes in QUICK
        sizes = dict(common.whole_fields(QUICK, "QUICK", steps=1, batch_size=1, n_eval=1))
        common.quick_note(args, STEPS=(STEPS, sizes["steps"]), BATCH_SIZE=(BATCH_SIZE, sizes["batch_size"]),
                          N_EVAL=(N_EVAL, sizes["n_eval"]))
    else:
        sizes = dict(steps=common.whole(STEPS, "STEPS", low=1), n_eval=common.whole(N_EVAL, "N_EVAL", low=1),
                     batch_size=common.whole(BATCH_SIZE, "BATCH_SIZE", low=1))
    common.whole(VOCAB_SIZE, "VOCAB_SIZE", low=2, hint="the task needs at least 2 different digits")
    common.whole(SEQ_LEN, "SEQ_LEN", low=3, hint="a position's left and right neighbours must differ")
    common.number(LR, "LR", low=0, low_open=True, hint="e.g. 3e-2")
    common.whole(WARMUP, "WARMUP", low=0)
    common.whole_numbers(HEAD_COUNTS, "HEAD_COUNTS", low=1)
    return d_model, n_heads, sizes


@common.entry_point
def main(argv=None):
    parser = common.lesson_parser(__doc__, quick_help=f"tiny sizes, for a smoke test: {QUICK}")
    parser.add_argument("--d-model", type=int, help=f"embedding size (default: D_MODEL = {D_MODEL})")
    parser.add_argument("--heads", type=int, help=f"attention heads, must divide d_model (default: "
                                                  f"N_HEADS = {N_HEADS})")
    args = common.parse_args(parser, argv)
    d_model, n_heads, sizes = settings(args)
    device = common.setup(args, "Lesson 02: multi-head attention")
    print(f"d_model={d_model}, n_heads={n_heads}, d_head={d_model // n_heads}; each head uses lesson 01's "
          "scaled_dot_product_attention (common.load_lesson(1))")

    agree, polarity = section_1_loop(d_model, n_heads, device)
    merge = section_2_batched(d_model, n_heads, device)
    results, baseline, n, heads = section_3_why_heads(d_model, n_heads, sizes, args, device)
    counts = section_4_parameters(d_model)

    accuracy = "; ".join([f"{h} head{'s' * (h > 1)} {percent(r['correct'], n)}, frozen {percent(r['frozen'], n)}"
                          for h, r in results.items()] + [f"always answering 0 {percent(baseline, n)} (chance 1/"
                                                          f"{VOCAB_SIZE})."])
    common.key_insights([
        agree,
        claims.every("insight-polarity", "nn.MultiheadAttention's masks mean True = blocked, ours True = may "
                     "attend: pass ~mask. Passed unchanged, our causal mask shows each query only the future.",
                     [polarity]),
        claims.every("insight-merge", "split_heads: view + transpose to (B, n_heads, T, d_head); merge_heads must "
                     "transpose back: " + (f"with it the output equals PyTorch's ({merge[0].measured}), without it "
                     f"it is off by {merge[-1].measured}, and no shape error warns you." if n_heads > 1 else
                     f"with one head there is nothing to transpose (vs PyTorch: {merge[0].measured})."), merge),
        claims.every("insight-heads", f"Left - right neighbour, right answers (95% interval): {accuracy} Training "
                     "split the neighbours between the heads.", heads) if n_heads > 1 else
        f"Left - right neighbour, right answers (95% interval): {accuracy}",
        counts,
    ])


if __name__ == "__main__":
    main()
