"""mini_transformer.pt: written atomically whenever training finds a better model, read back with
torch.load(..., weights_only=True) and every field checked, and never overwritten by a run that did
not resume from it (the earlier one is kept as mini_transformer.previous-N.pt)."""
import math
import os
from dataclasses import asdict
from pathlib import Path

import torch

from common import checkpoints
from common.errors import UserError
from lesson05_plumbing import lesson, settings
from lesson05_plumbing.text import say

CHECKPOINT_NAME = "mini_transformer.pt"


METRICS_NAME = "metrics.json"


# The first is written. v3 holds torch.optim.AdamW's state; v2 and v1 held the same moments as flat
# vectors {"t", "m", "v"}, converted when such a checkpoint is resumed.
CHECKPOINT_FORMATS = ("mini-transformer-v3", "mini-transformer-v2", "mini-transformer-v1")


def new_history():
    return {"step": [], "loss": [], "accuracy": [], "lr": [], "val_step": [], "val_loss": [],
            "val_token_accuracy": [], "val_exact_match": [], "val_train_seconds": []}


class CheckpointError(UserError):
    """A checkpoint that is missing, unreadable, or does not fit what was asked for."""


def save_checkpoint(path, result, config):
    """Save the best model of a TrainResult with its config, the optimizer state and the history up
    to the best step: plain types, so torch.load(..., weights_only=True) reads it."""
    return write_checkpoint(path, config, result.model.state_dict(), result.best_step, result.best_val,
                            result.optimizer_state, result.history, result.best_train_seconds,
                            result.best_wall_seconds)


def write_checkpoint(path, config, state_dict, step, val, optimizer_state, history, train_seconds, wall_seconds):
    """The checkpoint of the model at `step` (history cut there), written atomically."""
    keep = [i for i, s in enumerate(history["step"]) if s <= step]
    keep_val = [i for i, s in enumerate(history["val_step"]) if s <= step]
    history = {k: [v[i] for i in (keep_val if k.startswith("val_") else keep)] for k, v in history.items()}
    return checkpoints.save(path, CHECKPOINT_FORMATS[0], config, state_dict, step=step, val=dict(val),
                            optimizer=optimizer_state, history=history, train_seconds=train_seconds,
                            wall_seconds=wall_seconds)


def read_checkpoint(path, config_class=None) -> dict:
    """torch.load(weights_only=True), every field checked; CheckpointError with the reason if not usable."""
    config_class = config_class or lesson().TrainConfig
    ckpt = checkpoints.load(path, CHECKPOINT_FORMATS, ("state_dict", "config", "step"), CheckpointError)
    name = repr(os.fspath(path))
    config = checkpoints.config_from_dict(ckpt["config"], config_class, required=settings.ARCHITECTURE_FIELDS,
                                          where=name, error=CheckpointError)
    try:
        settings.validate_config(config)
    except UserError as exc:
        raise CheckpointError(f"{name} holds settings this lesson cannot run ({exc}); retrain to write a new one") \
            from None
    checks = [(ckpt["step"], int, "a whole number of steps")]
    if "val" in ckpt:
        checks.append((ckpt["val"], dict, "a dict of validation numbers"))
    for value, kind, what in checks:
        if isinstance(value, bool) or not isinstance(value, kind) or (kind is int and value < 0):
            raise CheckpointError(f"{name} has {value!r} where {what} belongs; retrain to write a new one")
    checkpoints.check_finite_tensors(ckpt["state_dict"], name, "weights", CheckpointError)
    ckpt["config"] = asdict(config)
    return ckpt


def check_resumable(checkpoint: dict, path, model) -> None:
    """What --resume needs beyond the weights: the optimizer state for this model and a history."""
    name, n = repr(os.fspath(path)), settings.count_parameters(model)
    why = "cannot resume from it (load_checkpoint still reads the model); train a new model without --resume"
    state = optimizer_state(checkpoint.get("optimizer"), model)
    if state is None:
        raise CheckpointError(f"{name} has no usable optimizer state for its {n} weights, so training {why}")
    checkpoints.check_finite_tensors({f"{i}.{k}": v for i, s in state["state"].items() for k, v in s.items()},
                                     name, "optimizer state", CheckpointError)
    checkpoint["optimizer"] = state
    history = checkpoint.get("history")
    lists = new_history()
    if not isinstance(history, dict) or any(not isinstance(history.get(k), list) for k in lists if k != "val_train_seconds"):
        raise CheckpointError(f"{name} has no usable training history, so training {why}")
    for group in ([k for k in lists if not k.startswith("val_")], [k for k in lists if k.startswith("val_")]):
        present = [history[k] for k in group if k in history]
        numbers = [x for v in present for x in v if x is not None]       # None: seconds an old format lacked
        if len({len(v) for v in present}) > 1 or any(isinstance(x, bool) or not isinstance(x, (int, float))
                                                     or not math.isfinite(x) for x in numbers):
            raise CheckpointError(f"{name} has a damaged training history (lists of unequal length or entries "
                                  f"that are not numbers), so training {why}")
    for key in ("train_seconds", "wall_seconds"):
        value = checkpoint.get(key, 0.0)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < float("inf"):
            raise CheckpointError(f"{name} has {key} = {value!r}, not a number of seconds, so training {why}")


def optimizer_state(saved, model):
    """torch.optim.AdamW's state_dict for `model` from a checkpoint's "optimizer" entry (v3: that
    state_dict; v2 and v1: flat moments {"t", "m", "v"}, split per parameter), or None if unusable."""
    params = [p for p in model.parameters() if p.requires_grad]
    fresh = torch.optim.AdamW(params).state_dict()
    if isinstance(saved, dict) and set(saved) == {"t", "m", "v"}:           # the older flat layout
        t, m, v = saved["t"], saved["m"], saved["v"]
        n = sum(p.numel() for p in params)
        if isinstance(t, bool) or not isinstance(t, int) or t < 0 or any(
                not isinstance(x, torch.Tensor) or x.shape != (n,) for x in (m, v)):
            return None
        sizes = [p.numel() for p in params]
        saved = {"param_groups": fresh["param_groups"], "state": {
            i: {"step": torch.tensor(float(t)), "exp_avg": a.view_as(p).clone(), "exp_avg_sq": b.view_as(p).clone()}
            for i, (p, a, b) in enumerate(zip(params, m.split(sizes), v.split(sizes)))} if t else {}}
    try:
        torch.optim.AdamW(params).load_state_dict(saved)                      # the structure fits
        ok = all(isinstance(saved["state"].get(i, {}).get(key, p), torch.Tensor)
                 and saved["state"].get(i, {}).get(key, p).shape == p.shape
                 for i, p in enumerate(params) for key in ("exp_avg", "exp_avg_sq"))
    except (ValueError, KeyError, TypeError, AttributeError, RuntimeError):
        return None
    return saved if ok else None


def model_from_checkpoint(checkpoint: dict, path, config_class=None, model_class=None):
    """Build the model the checkpoint describes and load its weights (on the CPU, eval mode)."""
    config_class = config_class or lesson().TrainConfig
    model_class = model_class or lesson().Seq2SeqTransformer
    config = config_class(**checkpoint["config"])
    model = model_class(**config.model_config())
    try:
        model.load_state_dict(checkpoint["state_dict"])
    except (RuntimeError, KeyError, TypeError) as exc:
        lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
        raise CheckpointError(f"{os.fspath(path)!r}: the weights do not fit the model its config describes "
                              f"(d_model {config.d_model}, {config.n_heads} heads, {config.n_layers} layers, "
                              f"d_ff {config.d_ff}): {checkpoints.shorten(' '.join(lines[1:3] or lines))}") from None
    return model.eval()


def load_checkpoint(path):
    """The trained model saved at `path`, on the CPU, in eval mode. Raises CheckpointError (a
    common.UserError) with a clear message if the file is missing, corrupt or mismatched."""
    return model_from_checkpoint(read_checkpoint(path), path)


def keep_previous_outputs(out_dir, resumed_from=None):
    """A checkpoint in out_dir that this run did not resume from is kept, never overwritten: it is
    renamed mini_transformer.previous-N.pt (with its metrics.json as metrics.previous-N.json)
    before training starts, and one line says so. Folders in the way of an output fail now."""
    out_dir = Path(out_dir)
    for name in (CHECKPOINT_NAME, METRICS_NAME, "training_progress.png", "transformer_attention_patterns.png"):
        if (out_dir / name).is_dir():
            raise UserError(f"a folder named {name!r} in {str(out_dir)!r} is in the way of an output of this "
                            "lesson; move it, or pass another --out-dir")
    path = out_dir / CHECKPOINT_NAME
    if not path.exists() or (resumed_from and Path(resumed_from).resolve() == path.resolve()):
        return None
    n = 1
    while (out_dir / f"mini_transformer.previous-{n}.pt").exists():
        n += 1
    kept = out_dir / f"mini_transformer.previous-{n}.pt"
    about = checkpoints.describe(path)
    os.replace(path, kept)
    if (out_dir / METRICS_NAME).is_file():
        os.replace(out_dir / METRICS_NAME, out_dir / f"metrics.previous-{n}.json")
    say(f"an earlier {CHECKPOINT_NAME} ({about}) is kept as {kept.name}; this run writes a new one")
    return kept
