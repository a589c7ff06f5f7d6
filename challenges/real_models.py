"""Challenge: the course's blocks, number for number, inside BERT, LLaMA and Mistral.

What you will learn
  - that the blocks you built are the blocks of the models you use next. Lesson 04's post-LN block is
    BERT's layer. Lesson 04's pre-LN block with RMSNorm, RoPE, SwiGLU, no biases and grouped queries,
    given a causal mask, is LLaMA's decoder layer; with a sliding window it is Mistral's; stacked,
    with an embedding and a final RMSNorm, it is LlamaModel. Each model is built from a Hugging Face
    `transformers` config with random weights, its weights are copied into the course's parts, and
    both run on the same padded batch: the largest difference is printed in float32 and float64;
  - which weight goes where (course name -> Hugging Face name), and the one place where numbers must
    be reordered, not only copied: RoPE's two layouts, pairs (2i, 2i+1) here and (i, i + d_head/2) in
    LLaMA's code;
  - the mask conventions, measured by running each: True = may attend (the course, PyTorch's
    F.scaled_dot_product_attention), True = blocked (nn.MultiheadAttention), 1 = attend (Hugging
    Face's attention_mask) and the additive mask it becomes; and what each does with a query that has
    nothing to attend to;
  - what grouped queries buy: the bytes a cache of keys and values holds per token.

Run it (from the repository root)
  python -m challenges.real_models                    # a few seconds on a CPU
  python -m challenges.real_models --out-dir outputs  # where real_models.json goes
Needs transformers (pinned in requirements.txt: pip install transformers==5.25.0). Nothing is
downloaded: every model is built from a config, with random weights, on the CPU.
Writes real_models.json (while it runs, and if it is interrupted: real_models.partial.json).

Shapes: B batch, T sequence length, d_model model width, n_heads query heads, n_kv_heads key/value
heads, d_head = d_model // n_heads. Masks are boolean with True = may attend, unless a row of the
conventions table says otherwise.
"""
import copy
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

if __package__ in (None, ""):     # run as a file: common/ is one folder up
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import common  # noqa: E402
from challenges import components  # noqa: E402
from common import claims, fmt, load_lesson  # noqa: E402

# %% Knobs (learners: edit these)
D_MODEL = 32          # hidden_size of every model compared
N_HEADS = 4           # query heads (num_attention_heads); d_head = D_MODEL // N_HEADS, even for RoPE
N_KV_HEADS = 2        # Mistral's key/value heads (num_key_value_heads); must divide N_HEADS
D_FF = 64             # feed-forward width (intermediate_size): BERT's GELU layer, LLaMA's SwiGLU
WINDOW = 3            # Mistral's sliding_window: shorter than the sequence, so it blocks keys
VOCAB_SIZE = 50       # LlamaModel's vocabulary (random token ids)
LENGTHS = (8, 4)      # real tokens in each sequence of the batch; the longest is T, the rest is padding
TOLERANCE = 1e-5      # float32: the course's assembly "equals" Hugging Face's below this difference
PINNED = "5.25.0"     # the transformers version in requirements.txt
JSON_NAME, PARTIAL_NAME = "real_models.json", "real_models.partial.json"

# The lessons are looked up when a block is built (load_lesson(4).TransformerEncoderBlock), not copied
# here: an edit to a lesson reaches the comparisons below.


def import_transformers():
    """The transformers module, offline (nothing is fetched); UserError saying how to install it."""
    os.environ["HF_HUB_OFFLINE"] = "1"           # built from configs: never look for a download
    try:
        import transformers
    except ImportError:
        raise common.UserError(f"this challenge needs Hugging Face transformers, which is not installed: "
                               f"pip install transformers=={PINNED} (pinned in requirements.txt)") from None
    transformers.logging.set_verbosity_error()   # no advice about downloads or generation
    return transformers


# %% The course's assemblies: lesson 04's block with other parts
def bert_block(config):
    """BertLayer = lesson 04's post-LN TransformerEncoderBlock with BERT's activation and LayerNorm eps."""
    block = load_lesson(4).TransformerEncoderBlock(config.hidden_size, config.num_attention_heads,
                                                   config.intermediate_size, norm_first=False)
    block.feed_forward.activation = nn.GELU()                    # BERT's hidden_act "gelu" (lesson 04: ReLU)
    block.norm1.eps = block.norm2.eps = config.layer_norm_eps    # 1e-12 (nn.LayerNorm's default: 1e-5)
    return block


def llama_block(config):
    """LlamaDecoderLayer (and MistralDecoderLayer) = lesson 04's pre-LN TransformerEncoderBlock with
    RMSNorm for LayerNorm, grouped-query attention with RoPE and no biases for lesson 02's attention,
    and SwiGLU for the ReLU feed-forward (challenges/components.py). Causal: give it decoder_only_mask."""
    d = config.hidden_size
    block = load_lesson(4).TransformerEncoderBlock(d, config.num_attention_heads, config.intermediate_size,
                                                   norm_first=True)
    block.norm1 = components.RMSNorm(d, config.rms_norm_eps)
    block.norm2 = components.RMSNorm(d, config.rms_norm_eps)
    block.self_attn = components.GroupedQueryAttention(d, config.num_attention_heads, config.num_key_value_heads,
                                                       bias=False, rope="interleaved")   # the course's layout
    block.feed_forward = components.SwiGLU(d, config.intermediate_size)
    return block


class CourseDecoder(nn.Module):
    """LlamaModel from the course's parts: a token embedding, then lesson 04's TransformerEncoder whose
    blocks are llama_blocks and whose final norm is an RMSNorm, under a causal mask that skips padding.
    forward(tokens (B, T), keep (B, T) True = a real token) -> (B, T, d_model), the last hidden states."""

    def __init__(self, config):
        super().__init__()
        self.embed = nn.Embedding(config.vocab_size, config.hidden_size)
        self.stack = load_lesson(4).TransformerEncoder(config.num_hidden_layers, config.hidden_size,
                                                       config.num_attention_heads, config.intermediate_size,
                                                       norm_first=True)
        self.stack.layers = nn.ModuleList(llama_block(config) for _ in range(config.num_hidden_layers))
        self.stack.norm = components.RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, tokens, keep):
        mask = components.decoder_only_mask(tokens.size(1), keep)           # (B, T, T)
        return self.stack(self.embed(tokens), mask)                           # (B, T, d_model)


# %% Which weight goes where
@dataclass(frozen=True)
class Rename:
    course: str                          # a module of the course's assembly: "self_attn.attention.W_q"
    hf: str                              # the Hugging Face module holding the same weights: "self_attn.q_proj"
    reorder: Callable | None = None      # applied to each weight on the way (RoPE's layouts), else a copy
    note: str = ""


def bert_mapping():
    return [Rename("self_attn.W_q", "attention.self.query"), Rename("self_attn.W_k", "attention.self.key"),
            Rename("self_attn.W_v", "attention.self.value"), Rename("self_attn.W_o", "attention.output.dense"),
            Rename("norm1", "attention.output.LayerNorm", note="eps 1e-12"),
            Rename("feed_forward.linear1", "intermediate.dense", note="then GELU"),
            Rename("feed_forward.linear2", "output.dense"), Rename("norm2", "output.LayerNorm", note="eps 1e-12")]


def llama_mapping(config, course="", hf="", reorder=True):
    """The names of one LLaMA/Mistral layer; course and hf prefix them ("stack.layers.0.", "layers.0.").
    reorder=False copies W_q and W_k as they are (to measure what the reordering is for)."""
    def rows(n_heads):
        return (lambda w: components.halves_to_interleaved(w, n_heads)) if reorder else None

    note = "rows reordered in each head: RoPE halves -> pairs" if reorder else "copied as is (no reordering)"
    pairs = [("norm1", "input_layernorm", None, "RMSNorm"),
             ("self_attn.attention.W_q", "self_attn.q_proj", rows(config.num_attention_heads), note),
             ("self_attn.attention.W_k", "self_attn.k_proj", rows(config.num_key_value_heads), note),
             ("self_attn.attention.W_v", "self_attn.v_proj", None, ""),
             ("self_attn.attention.W_o", "self_attn.o_proj", None, ""),
             ("norm2", "post_attention_layernorm", None, "RMSNorm"),
             ("feed_forward.W_gate", "mlp.gate_proj", None, "then silu"),
             ("feed_forward.W_up", "mlp.up_proj", None, ""), ("feed_forward.W_down", "mlp.down_proj", None, "")]
    return [Rename(course + c, hf + h, r, n) for c, h, r, n in pairs]


def llama_model_mapping(config):
    layers = [r for i in range(config.num_hidden_layers)
              for r in llama_mapping(config, f"stack.layers.{i}.", f"layers.{i}.")]
    return [Rename("embed", "embed_tokens"), *layers, Rename("stack.norm", "norm", note="RMSNorm")]


@torch.no_grad()
def copy_weights(ours, theirs, mapping):
    """Copy every Hugging Face weight into the course's module, by the mapping. Returns `ours`.
    ValueError if two shapes differ, or if a weight on either side is left out (the mapping is complete)."""
    done = set()
    for r in mapping:
        mine, hers = ours.get_submodule(r.course), theirs.get_submodule(r.hf)
        for name, weight in hers.named_parameters(recurse=False):
            value = weight if r.reorder is None or name != "weight" else r.reorder(weight)
            if getattr(mine, name).shape != value.shape:
                raise ValueError(f"{r.course}.{name} {tuple(getattr(mine, name).shape)} cannot hold "
                                 f"{r.hf}.{name} {tuple(value.shape)}")
            getattr(mine, name).copy_(value)
            done |= {("ours", f"{r.course}.{name}"), ("theirs", f"{r.hf}.{name}")}
    left = sorted({("ours", n) for n, _ in ours.named_parameters()} - done
                  | {("theirs", n) for n, _ in theirs.named_parameters()} - done)
    if left:
        raise ValueError(f"the mapping leaves out {left}")
    return ours


# %% One comparison: the course's assembly against the Hugging Face module
@dataclass
class Comparison:
    name: str               # the Hugging Face class: "LlamaDecoderLayer"
    reference: str          # where it lives in transformers
    course: str             # what the course's assembly is, in words
    config: dict            # the config's sizes that matter here
    ours: nn.Module
    theirs: nn.Module
    mapping: list
    run_ours: Callable      # run_ours(module, x, keep) -> (B, T, d_model)
    run_theirs: Callable    # run_theirs(module, x, attention_mask) -> (B, T, d_model)
    tokens: bool = False    # the input is token ids (a model), not vectors (a layer)
    notes: list = field(default_factory=list)


def batch(d_model, vocab_size=None, lengths=LENGTHS, seed=0):
    """The same padded batch for both sides: (x (B, T, d_model) float64 or token ids (B, T), keep (B, T)).
    keep is True at real tokens; padding comes after them (right padding, positions 0, 1, ... as HF's)."""
    g = torch.Generator().manual_seed(seed)
    T = max(lengths)
    keep = torch.arange(T)[None, :] < torch.tensor(lengths)[:, None]          # (B, T)
    if vocab_size is not None:
        return torch.randint(1, vocab_size, (len(lengths), T), generator=g).masked_fill(~keep, 0), keep
    return torch.randn(len(lengths), T, d_model, generator=g, dtype=torch.float64), keep


@torch.no_grad()
def largest_differences(c: Comparison, dtype):
    """(largest |ours - theirs| over the real positions, over the padded positions), both in `dtype`."""
    ours, theirs = copy.deepcopy(c.ours).to(dtype).eval(), copy.deepcopy(c.theirs).to(dtype).eval()
    x, keep = batch(c.config["hidden_size"], c.config.get("vocab_size") if c.tokens else None)
    x = x if c.tokens else x.to(dtype)
    diff = (c.run_ours(ours, x, keep) - c.run_theirs(theirs, x, keep.long())).abs()   # (B, T, d_model)
    padded = diff[~keep].max().item() if (~keep).any() else 0.0
    return diff[keep].max().item(), padded


def compare_bert(tf):
    from transformers.masking_utils import create_bidirectional_mask
    from transformers.models.bert.modeling_bert import BertLayer
    config = tf.BertConfig(hidden_size=D_MODEL, num_attention_heads=N_HEADS, intermediate_size=D_FF,
                           hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, attn_implementation="eager")
    theirs = BertLayer(config).eval()
    ours = copy_weights(bert_block(config).eval(), theirs, bert_mapping())

    def run_theirs(layer, x, attention_mask):
        return layer(x, create_bidirectional_mask(config, x, attention_mask))

    return Comparison("BertLayer", "transformers.models.bert.modeling_bert.BertLayer",
                      "lesson 04's post-LN block, GELU, LayerNorm eps 1e-12; padding mask keep[:, None, :]",
                      sizes(config, "hidden_act", "layer_norm_eps"), ours, theirs, bert_mapping(),
                      lambda block, x, keep: block(x, mask=keep[:, None, :]), run_theirs)


def decoder_layer_runner(config, rotary, make_mask):
    """Hugging Face's way to run one decoder layer: its own mask function and rotary embedding."""
    def run(layer, x, attention_mask):
        positions = torch.arange(x.size(1))[None]                              # (1, T): 0, 1, ... (right padding)
        mask = make_mask(config, x, attention_mask, None, positions)          # (B, 1, T, T) additive, eager
        return layer(x, attention_mask=mask, position_embeddings=rotary.to(x.dtype)(x, positions))
    return run


def compare_llama_layer(tf, mistral=False, reorder=True):
    from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask
    from transformers.models.llama import modeling_llama as llama
    from transformers.models.mistral import modeling_mistral as mistral_code
    common_sizes = dict(hidden_size=D_MODEL, num_attention_heads=N_HEADS, intermediate_size=D_FF,
                        attn_implementation="eager")
    if mistral:
        config = tf.MistralConfig(**common_sizes, num_key_value_heads=N_KV_HEADS, sliding_window=WINDOW)
        theirs, rotary = mistral_code.MistralDecoderLayer(config, 0), mistral_code.MistralRotaryEmbedding(config)
        make_mask, window = create_sliding_window_causal_mask, WINDOW
    else:
        config = tf.LlamaConfig(**common_sizes, num_key_value_heads=N_HEADS)
        theirs, rotary = llama.LlamaDecoderLayer(config, 0), llama.LlamaRotaryEmbedding(config)
        make_mask, window = create_causal_mask, None
    mapping = llama_mapping(config, reorder=reorder)
    ours = copy_weights(llama_block(config).eval(), theirs.eval(), mapping)
    kv = f"{config.num_key_value_heads} key/value heads for {N_HEADS} query heads"
    course = (f"lesson 04's pre-LN block with RMSNorm, grouped-query attention ({kv}), RoPE, SwiGLU, no biases; "
              + (f"mask: sliding window of {WINDOW} and padding" if mistral else "mask: causal and padding"))
    extra = ("sliding_window",) if mistral else ()
    return Comparison(type(theirs).__name__, f"{type(theirs).__module__}.{type(theirs).__name__}", course,
                      sizes(config, "num_key_value_heads", "rms_norm_eps", *extra), ours, theirs, mapping,
                      lambda block, x, keep: block(x, mask=components.decoder_only_mask(x.size(1), keep, window)),
                      decoder_layer_runner(config, rotary, make_mask))


def compare_llama_model(tf):
    from transformers.models.llama.modeling_llama import LlamaModel
    config = tf.LlamaConfig(hidden_size=D_MODEL, num_attention_heads=N_HEADS, num_key_value_heads=1,
                            intermediate_size=D_FF, num_hidden_layers=2, vocab_size=VOCAB_SIZE,
                            attn_implementation="eager")
    theirs = LlamaModel(config).eval()
    ours = copy_weights(CourseDecoder(config).eval(), theirs, llama_model_mapping(config))
    return Comparison("LlamaModel", "transformers.models.llama.modeling_llama.LlamaModel",
                      "token embedding, 2 llama blocks (1 key/value head: multi-query) in lesson 04's "
                      "TransformerEncoder, a final RMSNorm; causal and padding mask",
                      sizes(config, "num_key_value_heads", "num_hidden_layers", "vocab_size"), ours, theirs,
                      llama_model_mapping(config), lambda model, ids, keep: model(ids, keep),
                      lambda model, ids, attention_mask: model(input_ids=ids,
                                                               attention_mask=attention_mask).last_hidden_state,
                      tokens=True)


def sizes(config, *names):
    return {k: getattr(config, k) for k in ("hidden_size", "num_attention_heads", "intermediate_size", *names)}


COMPARISONS = (compare_bert, compare_llama_layer, lambda tf: compare_llama_layer(tf, mistral=True),
               compare_llama_model)


# %% 1. The pieces LLaMA and Mistral add
def kv_cache_bytes():
    """Bytes per token a cache of keys and values holds, {n_kv_heads: bytes}: here (one layer, float32;
    n_kv_heads = n_heads, n_heads/2, 1) and at Mistral 7B's sizes (d_model 4096, 32 query heads of 128,
    32 layers, bfloat16; n_kv_heads = 32, 16, Mistral's 8, and 1)."""
    here, big = {}, {}
    for n_kv in sorted({N_HEADS, max(1, N_HEADS // 2), 1}, reverse=True):
        attention = components.GroupedQueryAttention(D_MODEL, N_HEADS, n_kv, bias=False)
        here[n_kv] = components.cache_bytes_per_token(attention)
    for n_kv in (32, 16, 8, 1):
        with torch.device("meta"):                            # shapes only: no memory is used
            attention = components.GroupedQueryAttention(4096, 32, n_kv, bias=False).to(torch.bfloat16)
        big[n_kv] = 32 * components.cache_bytes_per_token(attention)
    return {"here_float32_one_layer": here, "mistral_7b_sizes_bfloat16_32_layers": big}


def kv_cache_table(cache):
    here, big = cache["here_float32_one_layer"], cache["mistral_7b_sizes_bfloat16_32_layers"]
    kinds = [("multi-head: n_heads", N_HEADS, 32), ("grouped: n_heads / 2", N_HEADS // 2, 16),
             ("grouped: Mistral 7B", None, 8), ("multi-query: 1", 1, 1)]
    rows = [[kind, "-" if n is None else f"{n} of {N_HEADS}", "-" if n is None else f"{here[n]} B",
             f"{n7} of 32", f"{big[n7] / 1024:g} KiB"] for kind, n, n7 in kinds if n is None or n in here]
    common.table(rows, ["key/value heads", "here", "per token, 1 layer", "7B sizes", "per token, 32 layers"])


def rope_layout_gaps():
    """(reordered, as is): the largest difference between attention with RoPE on pairs (2i, 2i+1) and
    the same weights with RoPE on halves (i, i + d_head/2), with and without reordering W_q and W_k."""
    halves = components.GroupedQueryAttention(D_MODEL, N_HEADS, N_KV_HEADS, bias=False, rope="halves").eval()
    pairs = components.GroupedQueryAttention(D_MODEL, N_HEADS, N_KV_HEADS, bias=False, rope="interleaved").eval()
    pairs.load_state_dict(halves.state_dict())                                # copied as is
    x = torch.randn(2, max(LENGTHS), D_MODEL)
    causal = load_lesson(1).causal_mask(x.size(1))
    with torch.no_grad():
        as_is = (pairs(x, x, x, causal)[0] - halves(x, x, x, causal)[0]).abs().max().item()
        for W, n in ((pairs.attention.W_q, N_HEADS), (pairs.attention.W_k, N_KV_HEADS)):
            W.weight.copy_(components.halves_to_interleaved(W.weight, n))
        reordered = (pairs(x, x, x, causal)[0] - halves(x, x, x, causal)[0]).abs().max().item()
    return reordered, as_is


def section_1_pieces():
    common.section(1, "The pieces LLaMA and Mistral add: grouped queries, RoPE's layouts, a sliding window")
    common.explain("""Grouped-query attention (components.GroupedQueryAttention) keeps lesson 02's
        n_heads query heads but computes fewer key/value heads, each shared by a group of query heads:
        n_kv_heads = n_heads is lesson 02's attention, 1 is multi-query attention. It buys memory: while
        generating, every layer keeps the keys and values of every earlier token (a cache). Measured
        on the tensors the module hands to a cache (at 7B sizes on PyTorch's meta device: shapes, no
        memory).""", indent=2)
    cache = kv_cache_bytes()
    kv_cache_table(cache)
    here = cache["here_float32_one_layer"]
    full = here[N_HEADS]
    shrinks = claims.check("cache-shrinks", all(b * N_HEADS == full * n for n, b in here.items()),
                           f"The cache holds 2 x n_kv_heads x d_head numbers per token and layer: n_kv_heads = 1 "
                           f"keeps {here[1]} bytes where n_heads = {N_HEADS} keeps {full}",
                           measured=", ".join(f"{n} heads: {b} bytes" for n, b in here.items()),
                           expected="bytes proportional to n_kv_heads")
    shrinks.say()
    reordered, as_is = rope_layout_gaps()
    d_head = D_MODEL // N_HEADS
    common.explain(f"""RoPE rotates pairs of coordinates. The course (and the paper) pairs (2i, 2i+1);
        LLaMA's code pairs (i, i + d_head/2). The same model either way, once the rows of W_q and W_k
        are reordered in each head by {components.halves_order(d_head).tolist()} (d_head {d_head};
        components.halves_to_interleaved): measured on the same weights, reordered
        {fmt(reordered, 2)}, copied as is {fmt(as_is, 2)}.""", indent=2)
    layouts = claims.below("rope-layouts", "RoPE on pairs (2i, 2i+1) with W_q and W_k's rows reordered equals "
                           f"RoPE on halves (i, i + d_head/2): largest difference {fmt(reordered, 2)}", reordered, 1e-6,
                           hint="look at halves_to_interleaved and halves_order in challenges/components.py")
    layouts.say()
    T = max(LENGTHS)
    window = components.sliding_window_mask(T, WINDOW)
    common.show_tensor(f"sliding_window_mask(T={T}, window={WINDOW}) as 0/1 (1 = may attend)", window.int())
    i = torch.arange(WINDOW, T)
    sees = claims.check("window", bool(window.diagonal().all()) and not window[i, i - WINDOW].any()
                        and bool(window[i, i - WINDOW + 1].all()),
                        f"Mistral's window: query i sees keys i-{WINDOW - 1} .. i, key i-{WINDOW} is blocked, the "
                        "diagonal never is", hint="look at sliding_window_mask in challenges/components.py")
    sees.say()
    return [shrinks, layouts, sees], {"kv_cache_bytes_per_token": cache,
                                      "rope_layouts": {"reordered": reordered, "copied_as_is": as_is}}


# %% 2. Mask conventions, measured
def identity_mha(d):
    """nn.MultiheadAttention whose queries are 0 and whose keys and values are its inputs."""
    mha = nn.MultiheadAttention(d, 1, batch_first=True).eval()
    with torch.no_grad():
        mha.in_proj_weight.copy_(torch.cat([torch.zeros(d, d), torch.eye(d), torch.eye(d)]))
        mha.in_proj_bias.zero_()
        mha.out_proj.weight.copy_(torch.eye(d))
        mha.out_proj.bias.zero_()
    return mha


def hf_attention(tf, implementation, d):
    """Hugging Face's BertSelfAttention (queries 0, keys and values its input) run as a user runs it:
    a 2D attention_mask turned into its internal mask by transformers' own create_bidirectional_mask.
    Returns run(values (T_k, d), marks (T_k,)) -> (output (d,), the internal mask)."""
    from transformers.masking_utils import create_bidirectional_mask
    from transformers.models.bert.modeling_bert import BertSelfAttention
    config = tf.BertConfig(hidden_size=d, num_attention_heads=1, attention_probs_dropout_prob=0.0,
                           attn_implementation=implementation)
    attention = BertSelfAttention(config).eval()
    with torch.no_grad():
        for linear, weight in ((attention.query, torch.zeros(d, d)), (attention.key, torch.eye(d)),
                               (attention.value, torch.eye(d))):
            linear.weight.copy_(weight)
            linear.bias.zero_()

    def run(v, marks):
        inner = create_bidirectional_mask(config, v[None], marks.long()[None])   # attention_mask: (1, T_k)
        with torch.no_grad():
            return attention(v[None], attention_mask=inner)[0][0, 0], inner
    return run


def conventions(tf, d=4):
    """[(name, run(values (T_k, d), marks (T_k,) bool) -> output (d,)), ...]: one query whose scores are
    all 0, so its output is the mean of the values it may attend to. `marks`: the entries set to True (or 1).
    Also returns Hugging Face's two runs, which return its internal mask too."""
    zero = torch.zeros(1, d)
    mha = identity_mha(d)

    def with_mha(kind, need_weights):
        def run(v, marks):
            masks = {"key_padding_mask": marks[None]} if kind == "key_padding_mask" else {"attn_mask": marks[None]}
            with torch.no_grad():
                return mha(zero[None], v[None], v[None], need_weights=need_weights, **masks)[0][0, 0]
        return run

    eager, sdpa = hf_attention(tf, "eager", d), hf_attention(tf, "sdpa", d)
    course = lambda v, m: load_lesson(1).scaled_dot_product_attention(zero, v, v, m[None])[0][0]     # noqa: E731
    return [("course: lesson 01's mask (bool)", course),
            ("F.scaled_dot_product_attention attn_mask (bool)",
             lambda v, m: F.scaled_dot_product_attention(zero[None], v[None], v[None], attn_mask=m[None, None])[0, 0]),
            ("nn.MultiheadAttention attn_mask (bool)", with_mha("attn_mask", True)),
            ("nn.MultiheadAttention attn_mask, need_weights=False", with_mha("attn_mask", False)),
            ("nn.MultiheadAttention key_padding_mask (bool)", with_mha("key_padding_mask", True)),
            ("nn.MultiheadAttention key_padding_mask, need_weights=False", with_mha("key_padding_mask", False)),
            ("HF attention_mask (0/1), eager attention", lambda v, m: eager(v, m)[0]),
            ("HF attention_mask (0/1), sdpa attention", lambda v, m: sdpa(v, m)[0])], (eager, sdpa)


def measure_convention(run, v):
    """(what a marked entry means, what a query with nothing to attend to gets), both measured."""
    close = lambda a, b: bool(torch.allclose(a, b, atol=1e-6))               # noqa: E731
    out = run(v, torch.tensor([True, False, False]))                          # mark key 0 only
    means = "may attend" if close(out, v[0]) else "blocked" if close(out, v[1:].mean(0)) else "?"
    empty = run(v, torch.full((3,), means == "blocked"))                      # every key blocked
    gets = ("NaN" if empty.isnan().any() else "output 0" if empty.abs().max() == 0
            else "uniform weights (the mean of all values)" if close(empty, v.mean(0)) else "something else")
    return means, gets


def internal_mask_text(run, v):
    """What Hugging Face's internal mask holds at an attended key and at a blocked one (measured)."""
    _, inner = run(v, torch.tensor([True, False, False]))                     # attention_mask [1, 0, 0]
    attend, blocked = inner[0, 0, 0, 0].item(), inner[0, 0, 0, 1].item()
    how = "added to the scores" if inner.dtype.is_floating_point else "a boolean mask"
    return f"{inner.dtype} {tuple(inner.shape)}: {fmt(attend)} = attend, {fmt(blocked)} = blocked ({how})"


def section_2_masks(tf):
    common.section(2, "Mask conventions, measured by running each")
    common.explain("""One query whose scores are all equal looks at 3 keys, once with key 0 marked (True,
        or 1) and once with every key blocked. If the output is value 0, a marked entry means 'may
        attend'; if it is the mean of values 1 and 2, it means 'blocked'. Then: what does a query with
        nothing to attend to get?""", indent=2)
    v = torch.randn(3, 4, generator=torch.Generator().manual_seed(1))       # (T_k, d) the values
    runs, (eager, sdpa) = conventions(tf)
    rows, found = [], {}
    for name, run in runs:
        means, gets = measure_convention(run, v)
        marked = "1" if "(0/1)" in name else "True"
        found[name] = {"marked_entry_means": means, "query_with_nothing_to_attend_to": gets}
        rows.append([name, f"{marked} = {means}", gets])
    common.table(rows, ["mask", "a marked entry means", "a query with nothing to attend to gets"])
    for name, run in (("eager", eager), ("sdpa", sdpa)):
        text = internal_mask_text(run, v)
        found[f"HF internal mask, {name}"] = text
        print(f"  HF's internal mask ({name}): {text}")
    ours = found["course: lesson 01's mask (bool)"]
    course, empty = ours["marked_entry_means"], ours["query_with_nothing_to_attend_to"]
    mha = found["nn.MultiheadAttention attn_mask (bool)"]["marked_entry_means"]
    hf = found["HF attention_mask (0/1), eager attention"]["marked_entry_means"]
    said = [claims.check("hf-polarity", hf == course, "Hugging Face's attention_mask has the course's polarity "
                         "(1 = may attend): pass keep.long(), no ~", measured=f"HF: 1 = {hf}, course: True = {course}"),
            claims.check("mha-polarity", course == "may attend" and mha == "blocked", "nn.MultiheadAttention's "
                         "masks mean the opposite (True = blocked): pass ~mask", measured=f"True = {mha}"),
            claims.check("empty-row", empty == "output 0", "The course gives a query with nothing to attend to "
                         "weights 0 and output 0, never NaN", measured=empty,
                         hint="look at the masked_fill after the softmax in lesson 01")]
    for claim in said:
        claim.say()
    return said, found


# %% 3. The models, side by side
def float32_steps(tf):
    """How far Hugging Face's LLaMA parts stay from float64 on float64 inputs: (RMSNorm, RoPE's cos/sin)."""
    from transformers.models.llama.modeling_llama import LlamaRMSNorm, LlamaRotaryEmbedding
    config = tf.LlamaConfig(hidden_size=D_MODEL, num_attention_heads=N_HEADS)
    x = torch.randn(2, max(LENGTHS), D_MODEL, dtype=torch.float64)
    positions = torch.arange(x.size(1))
    with torch.no_grad():
        norm = (LlamaRMSNorm(D_MODEL, config.rms_norm_eps).double()(x)
                - components.RMSNorm(D_MODEL, config.rms_norm_eps).double()(x)).abs().max().item()
        cos, _ = LlamaRotaryEmbedding(config).double()(x, positions[None])     # (1, T, d_head): halves layout
        ours, _ = components.rope_cos_sin(x[..., :D_MODEL // N_HEADS], positions)   # (T, d_head/2) in float64
    return norm, (cos[0, :, :ours.size(1)] - ours).abs().max().item()


def show_mapping(c: Comparison):
    """The course's names -> Hugging Face's, layer 0 standing for every layer of a stack."""
    seen = set()
    for r in c.mapping:
        course, hf = (re.sub(r"\.\d+\.", ".{i}.", name) for name in (r.course, r.hf))
        if (course, hf) in seen:
            continue
        seen.add((course, hf))
        names = ", ".join(name for name, _ in c.theirs.get_submodule(r.hf).named_parameters(recurse=False))
        print(f"    {course:<40} -> {hf:<36} {names}" + (f"  ({r.note})" if r.note else ""))


def compare(c: Comparison, tol=TOLERANCE):
    """Print one comparison; returns (its json entry, its claim)."""
    print(f"\n  {c.name} ({c.reference})")
    print(f"  the course's assembly: {c.course}")
    print("  " + ", ".join(f"{k} {v}" for k, v in c.config.items()))
    show_mapping(c)
    (d32, pad32), (d64, _) = largest_differences(c, torch.float32), largest_differences(c, torch.float64)
    keep = batch(D_MODEL)[1]
    print(f"  largest difference over the {int(keep.sum())} real positions of {keep.numel()}: float32 {fmt(d32, 2)}, "
          f"float64 {fmt(d64, 2)}")
    print(f"  (padded positions feed nothing and are left out; float32 there: {fmt(pad32, 2)})")
    for note in c.notes:
        common.explain(note, indent=4)
    same = claims.below(f"{c.name}-float32", f"{c.name} equals the course's assembly within {tol:g} in float32 "
                        f"(largest difference {fmt(d32, 2)})", d32, tol,
                        hint="the mapping above names each weight: an edit to lesson 01, 02 or 04, or to "
                             "challenges/components.py, shows here")
    same.say(indent=4)
    entry = {"name": c.name, "reference": c.reference, "course": c.course, "config": c.config,
             "max_abs_diff_float32": d32, "max_abs_diff_float64": d64, "equal_within_tolerance_float32": bool(same),
             "compared_positions": int(keep.sum()), "all_positions": keep.numel(),
             "max_abs_diff_padded_positions_float32": pad32,
             "mapping": [{"course": r.course, "transformers": r.hf, "note": r.note} for r in c.mapping]}
    return entry, same


def empty_rows_note():
    keep = batch(D_MODEL)[1]
    empty = int((~components.decoder_only_mask(keep.size(1), keep, WINDOW).any(-1)).sum())
    return (f"{empty} padded query rows have no real key inside the window of {WINDOW}: nothing to attend to. "
            "The course gives them output 0, Hugging Face's eager path uniform weights (section 2); they "
            "feed nothing, which is why only real positions are compared.")


def section_3_models(tf, record, save):
    common.section(3, "BERT, LLaMA and Mistral from configs, their weights copied into the course's parts")
    common.explain(f"""Each model is built from a transformers config with random weights (eager
        attention: the softmax written out, as in lesson 01). Every weight is copied into the course's
        assembly by the mapping printed (course name -> Hugging Face name); both run on the same batch
        of {len(LENGTHS)} sequences with {', '.join(map(str, LENGTHS))} real tokens, padded on the right,
        given to Hugging Face as attention_mask (1 = attend) and to the course as keep (True = a real
        token).""", indent=2)
    said = []
    try:
        for build in COMPARISONS:
            c = build(tf)
            if c.name == "MistralDecoderLayer":
                c.notes.append(empty_rows_note())
            entry, claim = compare(c)
            record["models"].append(entry)
            said.append(claim)
            save(complete=False)
    except KeyboardInterrupt:
        record["interrupted"] = True
        save(complete=False)
        raise
    as_is = largest_differences(compare_llama_layer(tf, reorder=False), torch.float32)[0]
    record["llama_layer_without_reordering_float32"] = as_is
    needed = claims.above("reordering-needed", "LlamaDecoderLayer's W_q and W_k must be reordered for the course's "
                          f"RoPE: copied as is, the largest difference is {fmt(as_is, 2)}", as_is, 1e-3)
    needed.say()
    return said + [needed]


def float64_claims(tf, record):
    """What the float64 differences show, with the float32 steps inside Hugging Face's LLaMA measured."""
    norm, rope = float32_steps(tf)
    record["hf_llama_float32_steps_on_float64"] = {"rms_norm": norm, "rope_cos": rope}
    by_name = {m["name"]: m["max_abs_diff_float64"] for m in record["models"]}
    bert = by_name.get("BertLayer", float("nan"))
    llama = max((v for k, v in by_name.items() if k != "BertLayer"), default=float("nan"))
    return [claims.below("bert-float64", f"In float64 BertLayer agrees to {fmt(bert, 2)}: both compute in float64 "
                         "throughout", bert, 1e-12),
            claims.below("llama-float64", f"In float64 the LLaMA family agrees only to {fmt(llama, 2)}: Hugging Face "
                         "computes RMSNorm, RoPE's cos/sin and the softmax in float32 even for float64 inputs (its "
                         f"RMSNorm alone differs from a float64 one by {fmt(norm, 2)}, its cos by {fmt(rope, 2)})",
                         llama, 1e-5)]


# %% Flags, files, main
def build_parser():
    parser = common.plain_parser(__doc__)
    parser.add_argument("--out-dir", default=".", help="folder for real_models.json")
    parser.add_argument("--seed", type=common.flags.whole_number, default=0, help="random seed (the random weights)")
    parser.add_argument("--threads", type=common.flags.whole_number, default=None,
                        help="CPU threads for torch (default: $OMP_NUM_THREADS if set, else 1)")
    return parser


def check_knobs():
    common.whole(N_HEADS, "N_HEADS", low=1)
    common.require(D_MODEL % (2 * N_HEADS) == 0, f"D_MODEL = {D_MODEL} must be a multiple of 2 * N_HEADS = "
                   f"{2 * N_HEADS}: RoPE rotates pairs, so d_head must be even")
    common.require(common.whole(N_KV_HEADS, "N_KV_HEADS", low=1) and N_HEADS % N_KV_HEADS == 0,
                   f"N_KV_HEADS = {N_KV_HEADS} must divide N_HEADS = {N_HEADS}")
    lengths = common.whole_numbers(list(LENGTHS), "LENGTHS", low=1)
    common.require(len(lengths) >= 2 and min(lengths) < max(lengths), f"LENGTHS = {LENGTHS} needs 2 or more "
                   "sequences, one shorter than the longest, so that the batch has padding")
    common.whole(WINDOW, "WINDOW", low=1, high=max(lengths) - 1, hint="shorter than the longest sequence, so it blocks")
    common.whole(D_FF, "D_FF", low=1)
    common.whole(VOCAB_SIZE, "VOCAB_SIZE", low=2)


def write_results(out_dir, record, complete):
    """real_models.json once every model is done; until then (and after Ctrl-C) real_models.partial.json,
    so a partial run never replaces an earlier complete one."""
    record["complete"] = complete
    if complete:
        common.write_json(out_dir / JSON_NAME, record)
        (out_dir / PARTIAL_NAME).unlink(missing_ok=True)
    else:
        common.write_json(out_dir / PARTIAL_NAME, record)


@common.entry_point
def main(argv=None):
    args = common.parse_args(build_parser(), argv)
    check_knobs()
    tf = import_transformers()
    threads = common.set_threads(args.threads)
    common.seed_everything(args.seed)
    common.header("Challenge: the course's blocks inside BERT, LLaMA and Mistral", device="cpu",
                  reason="the comparisons run on the CPU", seed=args.seed, threads=threads)
    pinned = "" if tf.__version__ == PINNED else f" (requirements.txt pins {PINNED}: the numbers may differ)"
    print(f"transformers {tf.__version__}{pinned} | built from configs, random weights, nothing downloaded")
    record = {"transformers": tf.__version__, "torch": torch.__version__, "seed": args.seed,
              "tolerance_float32": TOLERANCE, "complete": False, "interrupted": False, "models": []}
    said, found = section_1_pieces()
    record.update(found)
    mask_claims, record["mask_conventions"] = section_2_masks(tf)
    model_claims = section_3_models(tf, record, lambda complete: write_results(args.out_dir, record, complete))
    precision = float64_claims(tf, record)
    write_results(args.out_dir, record, complete=True)
    print(f"\n  saved the measurements: {args.out_dir / JSON_NAME}")
    common.key_insights([*model_claims, *precision, *said, *mask_claims])


if __name__ == "__main__":
    main()
