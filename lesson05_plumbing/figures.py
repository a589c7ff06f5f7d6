"""Lesson 05's figures: training_progress.png and transformer_attention_patterns.png."""
import textwrap

import common
from lesson05_plumbing import lesson
from lesson05_plumbing.text import digits_text, show_tokens

def plot_training(config, result, learning_rate, out_dir, show):
    """Loss, validation accuracy and learning rate against the optimizer step."""
    import numpy as np

    h = result.history
    fig, axes = common.new_figure(1, 3, figsize=(15, 4.6), show=show, layout="constrained")
    ax = axes[0]
    ax.plot(h["step"], h["loss"], color="tab:blue", alpha=0.5, lw=1, label="training batch")
    ax.plot(h["val_step"], h["val_loss"], "o-", color="tab:orange", ms=3, label="validation set")
    ax.set_yscale("log")
    ax.set(xlabel="optimizer step", ylabel="cross-entropy loss (log scale)", title="Loss")
    ax.legend(fontsize=8)
    ax = axes[1]
    ax.plot(h["val_step"], h["val_token_accuracy"], "o-", ms=3, label="token accuracy")
    ax.plot(h["val_step"], h["val_exact_match"], "s-", ms=3, label="exact-match (whole answer right)")
    ax.axhline(config.target, color="gray", ls="--", lw=1, label=f"target {config.target:.0%}")
    if result.target_step is not None:
        ax.axvline(result.target_step, color="tab:green", ls=":", lw=1.5, label=f"target reached, step {result.target_step}")
    ax.set(xlabel="optimizer step", ylabel="validation accuracy", ylim=(-0.02, 1.02),
           title="Validation: exact-match lags token accuracy")
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2)   # below: never on a curve
    ax = axes[2]
    horizon = min(config.steps, max(20 * result.steps_run, 100))        # never a point per planned step
    planned = sorted({int(x) for x in np.linspace(1, horizon, 400)})
    ax.plot(planned, [learning_rate(t, config) for t in planned], color="gray", ls="--", lw=1,
            label=f"planned ({config.steps} steps{'' if horizon == config.steps else f', first {horizon} shown'})")
    ax.plot(h["step"], h["lr"], color="tab:purple", lw=2, label=f"used (stopped at step {result.steps_run})")
    if result.resumed_at is not None:
        ax.axvline(result.resumed_at, color="tab:red", ls=":", lw=1.5,
                   label=f"resumed at step {result.resumed_at}: this run's schedule from here")
    ax.set(xlabel="optimizer step", ylabel="learning rate",
           title=f"Warmup ({config.warmup} steps), then {config.schedule}" if config.warmup else
           f"No warmup: {config.schedule} from the start")
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=1)
    fig.suptitle(f"Training the mini transformer on '{config.task}' (length {config.seq_len})")
    common.save_figure(fig, out_dir, "training_progress.png", show=show)


def plot_attention(config, weights, test, found, out_dir, show, example=0):
    """One example: per layer, rows of encoder self-, decoder self- and cross-attention, a column per head."""
    L = lesson()
    src, tgt_out = test.src[example], test.tgt_out[example]
    T_src, T_tgt = int((src != L.PAD).sum()), int((tgt_out != L.PAD).sum())
    in_labels = [f"{i}:{show_tokens(t[None])}" for i, t in enumerate(src[:T_src])]
    out_labels = [f"{i}:{show_tokens(t[None])}" for i, t in enumerate(tgt_out[:T_tgt])]
    read_labels = [f"{i}:{show_tokens(t[None])}" for i, t in enumerate(test.tgt_in[example][:T_tgt])]
    n_layers, n_heads = len(weights["cross"]), weights["cross"][0].size(1)
    width = max(5.5, 3.6 * n_heads + 1.4)                             # inches
    fig, axes = common.new_figure(3 * n_layers, n_heads, figsize=(width, 3.3 * 3 * n_layers + 0.9),
                                  show=show, squeeze=False, layout="constrained")
    for layer in range(n_layers):
        panels = (("encoder self-attention", weights["encoder_self"][layer][example, :, :T_src, :T_src],
                   in_labels, in_labels, "query: input position", "key: input position"),
                  ("decoder self-attention (masked)", weights["decoder_self"][layer][example, :, :T_tgt, :T_tgt],
                   out_labels, read_labels, "query: answer position (writes)", "key: answer position (reads)"),
                  ("cross-attention", weights["cross"][layer][example, :, :T_tgt, :T_src],
                   out_labels, in_labels, "query: answer position (writes)", "key: input position"))
        for row, (title, w, ylabels, xlabels, ylabel, xlabel) in enumerate(panels):
            for head in range(n_heads):
                ax = axes[3 * layer + row][head]
                image = ax.imshow(w[head].numpy(), cmap="viridis", vmin=0, vmax=1,
                                  aspect="auto" if max(w.shape[-2:]) > 3 * min(w.shape[-2:]) else "equal")
                ax.set_xticks(range(len(xlabels)), xlabels, fontsize=6, rotation=90)
                ax.set_yticks(range(len(ylabels)), ylabels, fontsize=6)
                ax.set_xlabel(xlabel, fontsize=8)
                ax.set_ylabel(ylabel, fontsize=8)
                ax.set_title(f"{title}\nlayer {layer + 1}, head {head + 1}", fontsize=8)
    fig.colorbar(image, ax=axes, shrink=0.5, label="attention weight")
    aligned = found.get("aligned")          # a claim about the best cross-attention head (None for sums)
    what = aligned.title() if aligned is not None else "sum: each answer digit depends on every input"
    title = f"Attention on one test example ({config.task}: {digits_text(L.tokens_to_digits(src))}); {what}"
    fig.suptitle(textwrap.fill(title, int(width * 12)), fontsize=8)
    common.save_figure(fig, out_dir, "transformer_attention_patterns.png", show=show)
