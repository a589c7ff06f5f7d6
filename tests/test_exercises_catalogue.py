"""The catalogue of attempts: every wrong one fails, and its first failing check names its cause.

Each wrong attempt below is a mistake learners make (the ones the exercise checker was found to
let through or to blame on the wrong cause, and more); the test asserts that it fails, and which
hint (Hint.key) the first failing check gives: the hint must point at the cause. Every correct
attempt (another way to write each component) must score full marks. The attempts run in this
process (exercises._checker.check): the sandbox is tested in test_exercises_sandbox.py.
"""
import math
from typing import NamedTuple

import pytest
import torch
import torch.nn.functional as F

from common import load_lesson
from exercises import EXERCISES
from exercises._checker import check

L1, L2, L3, L4, L5 = (load_lesson(n) for n in range(1, 6))
PAD, BOS, EOS = L5.PAD, L5.BOS, L5.EOS
# the key.T attempts: PyTorch warns that .T on more than 2 dimensions is deprecated (the attempt's mistake)
pytestmark = pytest.mark.filterwarnings("ignore:The use of `x.T`:UserWarning")


class Attempt(NamedTuple):
    exercise: str
    code: object  # the function or class handed in
    hint: str     # the key of the hint its first failing check must give
    mistake: str  # what is wrong, in words


def failure_text(result):
    return "\n".join(f"{c.title}: {' | '.join(c.lines)} [{c.hint.key if c.hint else 'no hint'}]"
                     for c in result.checks if not c.passed)


# ----------------------------------------------------------------------------------------------
# attention
def attention(scale="sqrt_d_k", polarity="keep", fill=float("-inf"), zero_empty=True, softmax_dim=-1,
              transpose="last two", mask_after=False, order="output first", values="value", extra=None):
    def scaled_dot_product_attention(query, key, value, mask=None):
        d_k = query.size(-1)
        divisor = {"sqrt_d_k": math.sqrt(d_k), "d_k": d_k, "none": 1.0, "sqrt_d_v": math.sqrt(value.size(-1))}[scale]
        key_t = key.T if transpose == "T" else key.transpose(-2, -1)
        scores = query @ key_t / divisor
        blocked = None if mask is None else (mask if polarity == "flipped" else ~mask)
        if blocked is not None and not mask_after:
            scores = scores.masked_fill(blocked, fill)
        weights = torch.softmax(scores, dim=softmax_dim)
        if blocked is not None and (zero_empty or mask_after):
            weights = weights.masked_fill(blocked, 0.0)
        output = weights @ (key if values == "key" else value)
        if extra:
            output, weights = extra(output, weights)
        return (output, weights) if order == "output first" else (weights, output)

    return scaled_dot_product_attention


def attention_with_key_T(query, key, value, mask=None):
    scores = query @ key.T / math.sqrt(query.size(-1))
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = torch.softmax(scores, dim=-1)
    if mask is not None:
        weights = weights.masked_fill(~mask, 0.0)
    return weights @ value, weights


def attention_scaling_query_in_place(query, key, value, mask=None):
    query /= math.sqrt(query.size(-1))
    scores = query @ key.transpose(-2, -1)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = torch.softmax(scores, dim=-1)
    if mask is not None:
        weights = weights.masked_fill(~mask, 0.0)
    return weights @ value, weights


def attention_calling_exit(query, key, value, mask=None):
    import sys
    sys.exit(1)


def attention_raising_keyboard_interrupt(query, key, value, mask=None):
    raise KeyboardInterrupt


class GiveUp(BaseException):
    pass


def attention_raising_base_exception(query, key, value, mask=None):
    raise GiveUp("not finished")


WRONG = [
    Attempt("attention", attention(scale="none"), "scale missing", "scores not divided at all"),
    Attempt("attention", attention(scale="d_k"), "divided by d_k", "divided by d_k, not its square root"),
    Attempt("attention", attention(scale="sqrt_d_v"), "divided by sqrt(d_v)", "value's size in the scale"),
    Attempt("attention", attention(polarity="flipped"), "mask polarity", "True read as blocked"),
    Attempt("attention", attention(polarity="flipped", zero_empty=False), "mask polarity",
            "True read as blocked; the emptied rows come out NaN"),
    Attempt("attention", attention(polarity="flipped", fill=-1e9, zero_empty=False), "mask polarity",
            "True read as blocked, with a finite fill"),
    Attempt("attention", attention(fill=0.0), "masked_fill with 0", "blocked scores set to 0, not -inf"),
    Attempt("attention", attention(fill=0.0, zero_empty=False), "masked_fill with 0",
            "blocked scores set to 0, weights not zeroed"),
    Attempt("attention", attention_with_key_T, "key.T", "key.T reverses every dimension of a batched key"),
    Attempt("attention", attention(transpose="T"), "key.T", "key.T on a line of its own"),
    Attempt("attention", attention(softmax_dim=-2), "softmax axis", "softmax over the queries"),
    Attempt("attention", attention(mask_after=True), "mask after softmax", "weights * mask after the softmax"),
    Attempt("attention", attention(zero_empty=False), "empty row NaN", "a row with nothing to attend to is NaN"),
    Attempt("attention", attention(fill=-1e9, zero_empty=False), "finite fill",
            "-1e9 gives a fully blocked row equal weights"),
    Attempt("attention", attention(order="weights first"), "return order", "returns (weights, output)"),
    Attempt("attention", attention(values="key"), "d_v from query", "weights @ key instead of weights @ value"),
    Attempt("attention", attention(extra=lambda o, w: (o.numpy(), w)), "numpy result", "returns a numpy array"),
    Attempt("attention", attention(extra=lambda o, w: (o.double(), w)), "float64 result", "float64 output"),
    Attempt("attention", attention_scaling_query_in_place, "in place", "query /= sqrt(d_k) changes the caller's query"),
    Attempt("attention", attention_calling_exit, "sys.exit", "calls sys.exit"),
    Attempt("attention", attention_raising_keyboard_interrupt, "BaseException", "raises KeyboardInterrupt"),
    Attempt("attention", attention_raising_base_exception, "BaseException", "raises a BaseException of its own"),
]


# ----------------------------------------------------------------------------------------------
# causal_mask
WRONG += [
    Attempt("causal_mask", lambda T, device=None: torch.triu(torch.ones(T, T, dtype=torch.bool, device=device)),
            "upper triangle", "the upper triangle (the future)"),
    Attempt("causal_mask", lambda T, device=None: torch.tril(torch.ones(T, T, dtype=torch.bool, device=device),
                                                             diagonal=-1), "diagonal missing",
            "the strict triangle: a query may not see itself"),
    Attempt("causal_mask", lambda T, device=None: ~torch.tril(torch.ones(T, T, dtype=torch.bool, device=device)),
            "mask polarity", "True = blocked"),
    Attempt("causal_mask", lambda T, device=None: torch.triu(torch.ones(T, T, dtype=torch.bool, device=device), 1),
            "mask polarity", "the future marked True (nn.MultiheadAttention's convention)"),
    Attempt("causal_mask", lambda T, device=None: torch.tril(torch.ones(T, T, device=device)), "mask dtype",
            "a float 0/1 mask"),
    Attempt("causal_mask", lambda T, device=None: torch.tril(torch.ones(T, T, dtype=torch.long, device=device)),
            "mask dtype", "an integer mask"),
    Attempt("causal_mask", lambda T, device=None: torch.tril(torch.ones(T, T, dtype=torch.bool)), "device ignored",
            "the device argument ignored"),
]


# ----------------------------------------------------------------------------------------------
# multi_head_attention: lesson 02's class with one method rewritten
def mha_forward(self, query, key, value, mask=None, need_weights=True, scale="d_head", polarity="keep",
                use_mask=True, project=True, unsqueeze=True, dropout="module", average=False):
    q, k, v = self.split_heads(self.W_q(query)), self.split_heads(self.W_k(key)), self.split_heads(self.W_v(value))
    if mask is not None and mask.dim() == 3 and unsqueeze:
        mask = mask.unsqueeze(1)
    scores = q @ k.transpose(-2, -1) / math.sqrt({"d_head": self.d_head, "d_model": self.d_model}[scale])
    if mask is not None and use_mask:
        scores = scores.masked_fill(mask if polarity == "flipped" else ~mask, float("-inf"))
    weights = torch.softmax(scores, dim=-1)
    if mask is not None and use_mask:
        weights = weights.masked_fill(mask if polarity == "flipped" else ~mask, 0.0)
    returned = weights
    p = self.dropout.p
    if dropout == "module":
        weights = returned = self.dropout(weights)
    elif dropout == "F.dropout":
        weights = returned = F.dropout(weights, p)          # training=True: active in eval mode too
    elif dropout == "keep probability":
        weights = returned = F.dropout(weights, 1 - p, self.training)
    elif dropout == "mask without rescale" and self.training:
        weights = returned = weights * (torch.rand_like(weights) >= p)
    elif dropout == "returns undropped":
        weights = self.dropout(weights)
    heads = self.merge_heads(weights @ v)
    output = self.W_o(heads) if project else heads
    if dropout == "on output":
        output = self.dropout(output)
    return output, (returned.mean(1) if average else returned)


def mha(**changes):
    def forward(self, query, key, value, mask=None, need_weights=True):
        return mha_forward(self, query, key, value, mask, need_weights, **changes)

    return type("MultiHeadAttention", (L2.MultiHeadAttention,), {"forward": forward})


class MergeWithoutTranspose(L2.MultiHeadAttention):
    def merge_heads(self, x):
        B, _, T, _ = x.shape
        return x.reshape(B, T, self.d_model)


class SplitWithoutTranspose(L2.MultiHeadAttention):
    def split_heads(self, x):
        B, T, _ = x.shape
        return x.reshape(B, self.n_heads, T, self.d_head)


WRONG += [
    Attempt("multi_head_attention", MergeWithoutTranspose, "merge without transpose", "heads merged by a reshape"),
    Attempt("multi_head_attention", SplitWithoutTranspose, "split without transpose", "heads split by a reshape"),
    Attempt("multi_head_attention", mha(scale="d_model"), "divided by sqrt(d_model)", "sqrt(d_model) for sqrt(d_head)"),
    Attempt("multi_head_attention", mha(polarity="flipped"), "mask polarity", "True read as blocked"),
    Attempt("multi_head_attention", mha(use_mask=False), "mask ignored", "the mask never used"),
    Attempt("multi_head_attention", mha(project=False), "W_o missing", "no output projection"),
    Attempt("multi_head_attention", mha(unsqueeze=False), "3-D mask", "a (B, 1, T_k) mask not given a heads dimension"),
    Attempt("multi_head_attention", mha(average=True), "weights averaged", "weights averaged over the heads"),
    Attempt("multi_head_attention", mha(dropout="F.dropout"), "dropout in eval mode",
            "F.dropout(weights, p): active in eval mode too"),
    Attempt("multi_head_attention", mha(dropout="none"), "dropout missing", "no dropout at all"),
    Attempt("multi_head_attention", mha(dropout="on output"), "dropout placement", "dropout on the output"),
    Attempt("multi_head_attention", mha(dropout="keep probability"), "dropout rate", "1 - p passed as p"),
    Attempt("multi_head_attention", mha(dropout="mask without rescale"), "dropout scale",
            "a 0/1 mask, kept weights not scaled by 1 / (1 - p)"),
    Attempt("multi_head_attention", mha(dropout="returns undropped"), "dropout placement",
            "returns the weights from before dropout"),
]


# ----------------------------------------------------------------------------------------------
# positional_encoding
def pe_from(table):
    return lambda max_len, d_model: table(max_len, d_model)


def pe_formula(max_len, d_model, position_start=0, exponent="2i", angle="divide", layout="interleaved",
               dtype=torch.float32):
    position = torch.arange(max_len, dtype=torch.float64)[:, None] + position_start
    pairs = torch.arange(0, d_model, 2, dtype=torch.float64)
    power = {"2i": pairs, "i": pairs / 2}[exponent] / d_model
    angles = position * 10000.0 ** power if angle == "multiply" else position / 10000.0 ** power
    pe = torch.zeros(max_len, d_model, dtype=torch.float64)
    if layout == "interleaved":
        pe[:, 0::2] = torch.sin(angles)
        pe[:, 1::2] = torch.cos(angles)[:, : d_model // 2]
    elif layout == "swapped":
        pe[:, 0::2] = torch.cos(angles)
        pe[:, 1::2] = torch.sin(angles)[:, : d_model // 2]
    elif layout == "odd crash":
        pe[:, 0::2] = torch.sin(angles)
        pe[:, 1::2] = torch.cos(angles)  # with an odd d_model: one cosine column too many
    elif layout == "halves":
        pe = torch.cat([torch.sin(angles), torch.cos(angles)[:, : d_model // 2]], dim=1)
    elif layout == "own index":
        columns = torch.arange(d_model, dtype=torch.float64)
        angles = position / 10000.0 ** (columns / d_model)
        pe = torch.where(columns % 2 == 0, torch.sin(angles), torch.cos(angles))
    return pe.to(dtype)


def pe(**changes):
    return lambda max_len, d_model: pe_formula(max_len, d_model, **changes)


WRONG += [
    Attempt("positional_encoding", pe(layout="swapped"), "sin and cos swapped", "cosines in the even columns"),
    Attempt("positional_encoding", pe(layout="halves"), "concatenated halves", "all sines, then all cosines"),
    Attempt("positional_encoding", pe(layout="odd crash"), "odd d_model",
            "pe[:, 1::2] = cos(...) fails for an odd d_model"),
    Attempt("positional_encoding", pe(position_start=1), "positions from 1", "positions counted from 1"),
    Attempt("positional_encoding", pe(exponent="i"), "i instead of 2i", "the pair number i in the exponent"),
    Attempt("positional_encoding", pe(layout="own index"), "odd column's own frequency",
            "each column its own exponent"),
    Attempt("positional_encoding", pe(angle="multiply"), "multiplied by the scale", "p * 10000^(2i/d)"),
    Attempt("positional_encoding", pe(dtype=torch.float64), "float64 result", "a float64 table"),
    Attempt("positional_encoding", lambda max_len, d_model: pe_formula(max_len, d_model).T.contiguous(),
            "rows and columns", "(d_model, max_len)"),
]


# ----------------------------------------------------------------------------------------------
# encoder_block: lesson 04's class with forward rewritten
def block_forward(self, x, mask=None, placement="as asked", residuals="both", norms=("norm1", "norm2"),
                  pass_mask=True, dropout="modules", ff_input="x1", take_first=True):
    norm_a, norm_b = getattr(self, norms[0]), getattr(self, norms[1])
    pre = {"always pre": True, "always post": False}.get(placement, self.norm_first)

    def attend(h):
        result = self.self_attn(h, h, h, mask=mask if pass_mask else None)
        return result[0] if take_first else result

    def drop(module, h):
        if dropout == "modules":
            return module(h)
        if dropout == "F.dropout":
            return F.dropout(h, module.p)
        return h

    if placement == "norm on sublayer":
        x = x + norm_a(attend(x))
        return x + norm_b(self.feed_forward(x))
    if placement == "overwrite x" and self.norm_first:
        x = norm_a(x)
        x = x + drop(self.dropout1, attend(x))
        x = norm_b(x)
        return x + drop(self.dropout2, self.feed_forward(x))
    if pre:
        if dropout == "on the sum":
            x = self.dropout1(x + attend(norm_a(x)))
            return self.dropout2(x + self.feed_forward(norm_b(x)))
        a = drop(self.dropout1, attend(norm_a(x)))
        x1 = a if residuals in ("ff only", "none") else x + a
        f = drop(self.dropout2, self.feed_forward(norm_b(x1 if ff_input == "x1" else x)))
        return f if residuals in ("attention only", "none") else x1 + f
    a = drop(self.dropout1, attend(x))
    x1 = norm_a(a if residuals in ("ff only", "none") else x + a)
    f = drop(self.dropout2, self.feed_forward(x1 if ff_input == "x1" else x))
    return norm_b(f if residuals in ("attention only", "none") else x1 + f)


def block(**changes):
    def forward(self, x, mask=None, return_weights=False):
        return block_forward(self, x, mask, **changes)

    return type("TransformerEncoderBlock", (L4.TransformerEncoderBlock,), {"forward": forward})


WRONG += [
    Attempt("encoder_block", block(residuals="ff only"), "attention residual", "no residual around the attention"),
    Attempt("encoder_block", block(residuals="attention only"), "feed-forward residual",
            "no residual around the feed-forward"),
    Attempt("encoder_block", block(placement="always pre"), "pre-LN for post-LN", "norm_first ignored: always pre-LN"),
    Attempt("encoder_block", block(placement="always post"), "post-LN for pre-LN",
            "norm_first ignored: always post-LN"),
    Attempt("encoder_block", block(placement="norm on sublayer"), "norm on the sublayer", "x + norm(sublayer(x))"),
    Attempt("encoder_block", block(placement="overwrite x"), "residual from norm(x)",
            "pre-LN that overwrites x with norm(x), so the residual adds to the normalised x"),
    Attempt("encoder_block", block(pass_mask=False), "mask not passed", "the mask not passed on to self_attn"),
    Attempt("encoder_block", block(norms=("norm1", "norm1")), "norm1 twice", "norm1 used for both sublayers"),
    Attempt("encoder_block", block(norms=("norm2", "norm1")), "norms swapped", "norm1 and norm2 swapped"),
    Attempt("encoder_block", block(ff_input="x"), "feed-forward on the input", "the feed-forward reads the input"),
    Attempt("encoder_block", block(take_first=False), "attention returns a pair",
            "self_attn's (output, weights) used as a tensor"),
    Attempt("encoder_block", block(dropout="F.dropout"), "dropout in eval mode",
            "F.dropout(sublayer, p): active in eval mode too"),
    Attempt("encoder_block", block(dropout="none"), "attention dropout missing",
            "dropout1 and dropout2 left out"),
    Attempt("encoder_block", block(dropout="on the sum"), "dropout placement", "dropout on x + sublayer(x)"),
]


# ----------------------------------------------------------------------------------------------
# beam_search: a plain one-example-at-a-time search (correct with the defaults), with knobs to break it
def restricted_log_probs(logits, renormalize=False):
    logits = logits.clone()
    if renormalize:
        logits[..., [PAD, BOS]] = float("-inf")
        return F.log_softmax(logits, dim=-1)
    log_probs = F.log_softmax(logits, dim=-1)
    log_probs[..., [PAD, BOS]] = float("-inf")
    return log_probs


def simple_beam_search(model, src, beam_size, max_len, length_penalty=0.0, *, width=None, stop_at_eos=True,
                       renormalize=False, repeat_memory=True, length=len, returned="sum", score_eos=True,
                       keep_bos=False, rank="as asked"):
    rows, best_scores = [], []
    for b in range(src.size(0)):
        memory, src_mask = model.encode(src[b:b + 1])
        beams = [([], 0.0, False)]  # (tokens, summed log-probability, finished)
        for _ in range(max_len):
            candidates = []
            for tokens, score, done in beams:
                if done and stop_at_eos:
                    candidates.append((tokens, score, True))
                    continue
                ys = torch.tensor([[BOS] + tokens])
                rows_memory = memory if repeat_memory else memory.repeat(2, *([1] * (memory.dim() - 1)))
                logits = model.decode(ys, rows_memory, src_mask)[0, -1]
                log_probs = restricted_log_probs(logits, renormalize)
                for token in range(model.vocab_size):
                    if log_probs[token] > float("-inf"):
                        gain = float(log_probs[token]) if (score_eos is not False or token != EOS) else 0.0
                        candidates.append((tokens + [token], score + gain, done or token == EOS))
            beams = sorted(candidates, key=lambda c: -c[1])[: width or beam_size]
            if all(done for _, _, done in beams):
                break
        penalty = length_penalty if rank == "as asked" else 1.0 if rank == "always mean" else 0.0
        tokens, score, _ = max(beams, key=lambda c: c[1] / max(length(c[0]), 1) ** penalty)
        rows.append(([BOS] if keep_bos else []) + tokens)
        returned_score = score / max(len(tokens), 1) if returned == "normalised" and length_penalty else score
        if score_eos == "rank only" and tokens and tokens[-1] == EOS:  # the returned score leaves EOS out
            memory, src_mask = model.encode(src[b:b + 1])
            logits = model.decode(torch.tensor([[BOS] + tokens[:-1]]), memory, src_mask)[0, -1]
            returned_score -= float(restricted_log_probs(logits)[EOS])
        best_scores.append(score / max(len(tokens), 1) if returned == "mean" else returned_score)
    out = torch.full((len(rows), max(len(r) for r in rows)), PAD)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.tensor(row)
    return out, torch.tensor(best_scores)


def beam(**changes):
    def beam_search(model, src, beam_size, max_len, length_penalty=0.0):
        return simple_beam_search(model, src, beam_size, max_len, length_penalty, **changes)

    return beam_search


def _without_eos(tokens):
    return len(tokens) - (1 if tokens and tokens[-1] == EOS else 0)


WRONG += [
    Attempt("beam_search", beam(width=1), "only one hypothesis", "keeps one hypothesis: greedy"),
    Attempt("beam_search", beam(stop_at_eos=False), "extended after EOS", "finished hypotheses extended"),
    Attempt("beam_search", beam(renormalize=True), "renormalised", "PAD and BOS ruled out before log_softmax"),
    Attempt("beam_search", beam(repeat_memory=False), "memory rows", "memory not repeated for the hypotheses"),
    Attempt("beam_search", beam(returned="normalised"), "returned score normalised",
            "returns score / length under a length penalty"),
    Attempt("beam_search", beam(rank="plain"), "length_penalty ignored", "no length normalisation"),
    Attempt("beam_search", beam(length=lambda t: len(t) + 1), "length counts BOS", "BOS counted in the length"),
    Attempt("beam_search", beam(length=_without_eos), "length leaves out EOS", "EOS left out of the length"),
    Attempt("beam_search", beam(returned="mean"), "mean, not sum", "returns the mean log-probability"),
    Attempt("beam_search", beam(score_eos=False), "EOS free", "EOS adds nothing to a score: answers end at once"),
    Attempt("beam_search", beam(score_eos="rank only"), "EOS not scored",
            "EOS's log-probability left out of the returned score"),
    Attempt("beam_search", beam(keep_bos=True), "max_len", "BOS kept in the result"),
    Attempt("beam_search", beam(rank="always mean"), "ranked by the mean", "always ranks by the mean"),
    Attempt("beam_search", lambda *args, **kwargs: (lambda t, s: (t.float(), s))(*beam()(*args, **kwargs)),
            "token ids", "float tokens"),
]


@pytest.mark.parametrize("attempt", WRONG, ids=[f"{a.exercise}-{a.mistake}" for a in WRONG])
def test_a_wrong_attempt_fails_and_its_first_failure_names_the_cause(attempt):
    result = check(attempt.exercise, attempt.code)
    assert result.state == "checked", result.note
    assert not result.ok, f"{attempt.mistake}: passed every check"
    first = next(c for c in result.checks if not c.passed)
    assert first.hint is not None and first.hint.key == attempt.hint, failure_text(result)
    assert all(first.hint.levels(3)) and len(first.hint.levels(3)) == 3  # three levels, none empty
    assert "Traceback" not in failure_text(result)


def test_the_catalogue_holds_at_least_40_wrong_attempts_and_every_exercise():
    assert len(WRONG) >= 40
    assert {a.exercise for a in WRONG} == set(EXERCISES)


# ----------------------------------------------------------------------------------------------
# Correct attempts, written another way than the lesson's: full marks
def attention_with_einsum(query, key, value, mask=None):
    scores = torch.einsum("...qd,...kd->...qk", query, key) * query.size(-1) ** -0.5
    if mask is not None:
        scores = torch.where(mask, scores, torch.tensor(float("-inf")))
    weights = torch.nan_to_num(torch.softmax(scores, dim=-1), nan=0.0)  # an empty row: NaN -> 0
    return torch.einsum("...qk,...kd->...qd", weights, value), weights


def causal_mask_by_comparison(T, device=None):
    position = torch.arange(T, device=device)
    return position[:, None] >= position[None, :]  # query t sees key s when s <= t


class MultiHeadAttentionHeadByHead(L2.MultiHeadAttention):
    """One head at a time on its slice of the projections, then concatenated."""

    def forward(self, query, key, value, mask=None, need_weights=True):
        q, k, v = self.W_q(query), self.W_k(key), self.W_v(value)
        if mask is not None and mask.dim() == 3:
            mask = mask.unsqueeze(1)
        outputs, all_weights = [], []
        for h in range(self.n_heads):
            cols = slice(h * self.d_head, (h + 1) * self.d_head)
            scores = q[..., cols] @ k[..., cols].transpose(-2, -1) / math.sqrt(self.d_head)
            head_mask = None if mask is None else mask[:, min(h, mask.size(1) - 1)] if mask.dim() == 4 else mask
            if head_mask is not None:
                scores = scores.masked_fill(~head_mask, float("-inf"))
            weights = torch.softmax(scores, dim=-1)
            if head_mask is not None:
                weights = weights.masked_fill(~head_mask, 0.0)
            weights = self.dropout(weights)
            outputs.append(weights @ v[..., cols])
            all_weights.append(weights)
        return self.W_o(torch.cat(outputs, dim=-1)), torch.stack(all_weights, dim=1)


def pe_in_log_space(max_len, d_model):
    """The common recipe: frequencies as exp(-2i * ln(10000) / d_model), computed in float32."""
    position = torch.arange(max_len, dtype=torch.float32).unsqueeze(1)
    frequency = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(10000.0) / d_model))
    pe = torch.zeros(max_len, d_model)
    pe[:, 0::2] = torch.sin(position * frequency)
    pe[:, 1::2] = torch.cos(position * frequency)[:, : d_model // 2]
    return pe


class EncoderBlockWithASublayerHelper(L4.TransformerEncoderBlock):
    """Each sublayer through one helper: (x, sublayer, norm, dropout)."""

    def sublayer(self, x, fn, norm, dropout):
        if self.norm_first:
            return x + dropout(fn(norm(x)))
        return norm(x + dropout(fn(x)))

    def forward(self, x, mask=None, return_weights=False):
        x = self.sublayer(x, lambda h: self.self_attn(h, h, h, mask=mask)[0], self.norm1, self.dropout1)
        return self.sublayer(x, self.feed_forward, self.norm2, self.dropout2)


CORRECT = [("attention", attention_with_einsum), ("attention", attention()),
           ("causal_mask", causal_mask_by_comparison),
           ("multi_head_attention", MultiHeadAttentionHeadByHead), ("multi_head_attention", mha()),
           ("positional_encoding", pe_in_log_space), ("positional_encoding", pe()),
           ("encoder_block", EncoderBlockWithASublayerHelper), ("encoder_block", block()),
           ("beam_search", simple_beam_search), ("beam_search", beam())]


@pytest.mark.parametrize("name, code", CORRECT, ids=[f"{n}-{getattr(c, '__name__', '')}" for n, c in CORRECT])
def test_a_correct_attempt_written_another_way_scores_full_marks(name, code):
    result = check(name, code)
    assert result.passed == result.total, failure_text(result)


def test_every_exercise_has_a_correct_attempt_of_its_own():
    assert {name for name, _ in CORRECT} == {a.exercise for a in WRONG}
