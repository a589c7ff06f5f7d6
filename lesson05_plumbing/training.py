"""The bookkeeping around lesson 05's training loop: the history, the clocks, the progress bar and
printed lines, the best model kept in memory and saved, resuming. The loop and its decisions (which
model is best, when to stop, how the data is drawn) are in the lesson."""
import copy
import math
import time
from dataclasses import dataclass, field

import torch
import torch.nn as nn

import common
from common.errors import UserError
from lesson05_plumbing import lesson
from lesson05_plumbing.checkpoints import new_history, write_checkpoint
from lesson05_plumbing.settings import DATA_FIELDS

class TrainingDiverged(UserError):
    """The loss became NaN or infinite."""




@dataclass
class TrainResult:
    model: nn.Module                 # the best model (by validation exact-match, then loss), eval mode
    history: dict                    # lists: step, loss, accuracy, lr (every step); val_* (every validation)
    steps_run: int                   # optimizer steps done (including those before --resume)
    train_seconds: float             # time in training steps (data, forward, backward, update)
    wall_seconds: float              # the same plus validation and saving
    target: float                    # the validation exact-match that counted as reaching the target
    best_step: int                   # step of the best model
    best_val: dict                   # its validation loss, token_accuracy, exact_match
    stopped_because: str             # "target reached", "patience", "max steps", "interrupted (...)"
    heldout_removed: int = 0         # generated training rows dropped for matching a held-out input
    resumed_at: int | None = None    # the step training resumed from (--resume), else None
    data_changed: list = field(default_factory=list)  # settings changed at the resume (new history)
    best_train_seconds: float = 0.0  # train_seconds at the best step (saved for --resume)
    best_wall_seconds: float = 0.0   # wall_seconds at the best step (saved for --resume)
    optimizer_state: dict = field(repr=False, default_factory=dict)  # at the best step (for --resume)
    interruption: BaseException | None = field(repr=False, default=None)  # what stopped training, if anything

    @property
    def interrupted(self) -> bool:
        return self.stopped_because.startswith("interrupted")

    @property
    def target_step(self):
        """The first validation step whose exact-match reached the target (also before a resume)."""
        h = self.history
        return next((s for s, e in zip(h["val_step"], h["val_exact_match"]) if e >= self.target), None)

    @property
    def target_seconds(self):
        h = self.history
        return next((t for s, t in zip(h["val_step"], h["val_train_seconds"]) if s == self.target_step), None)


class TrainingRun:
    """Everything around lesson 05's training loop that is not a decision of the loop: the history,
    the clocks, the progress bar and printed lines, keeping the best model (in memory, and saved to
    `checkpoint_path` atomically the moment it is found), resuming. The loop and its decisions (which
    model is best, when to stop, how each batch is drawn, what Ctrl-C does) are in the lesson."""

    def __init__(self, config, model, optimizer, resume, quiet, checkpoint_path, print_every):
        self.config, self.model, self.optimizer = config, model, optimizer
        self.quiet, self.checkpoint_path, self.print_every = quiet, checkpoint_path, print_every
        self.history, self.step, self.train_seconds, self.wall_before = new_history(), 0, 0.0, 0.0
        self.resumed_at = None
        self.data_changed = []
        if resume is not None:
            model.load_state_dict(resume["state_dict"])
            optimizer.load_state_dict(resume["optimizer"])
            for group in optimizer.param_groups:     # this run's weight decay, not the saved one
                group["weight_decay"] = config.weight_decay
            saved = resume["config"]
            self.data_changed = [f"{k} {saved[k]} -> {getattr(config, k)}" for k in DATA_FIELDS
                                 if saved.get(k) != getattr(config, k)]
            if not self.data_changed:            # the same validation set: the history carries on
                self.history.update({k: list(v) for k, v in resume["history"].items() if k in self.history})
            if len(self.history["val_train_seconds"]) != len(self.history["val_step"]):   # older checkpoints
                self.history["val_train_seconds"] = [None] * len(self.history["val_step"])
            self.step = self.resumed_at = int(resume["step"])
            self.train_seconds = float(resume.get("train_seconds", 0.0))
            self.wall_before = float(resume.get("wall_seconds", 0.0))
        self.best, self.saved_step, self.stopped_because, self.interruption = None, None, None, None
        self.wall_start = time.perf_counter()
        self.bar = common.progress(total=config.steps, initial=self.step, desc="training", quiet=quiet)

    @property
    def stopped(self):
        return self.stopped_because is not None

    def stop(self, reason):
        self.stopped_because = reason

    def interrupted(self, exc):
        """Ctrl-C (or SIGTERM) during training: training stops; result() returns the best model."""
        self.interruption = exc
        self.stop(f"interrupted ({common.interruption_name(exc)})")

    def close(self):
        self.bar.close()

    def start_step(self) -> int:
        self.step += 1
        self.t0 = time.perf_counter()
        return self.step

    def check_finite(self, loss):
        self.loss_value = loss.item()
        if not math.isfinite(self.loss_value):
            lr = self.optimizer.param_groups[0]["lr"]
            raise TrainingDiverged(f"the training loss became {self.loss_value} at step {self.step} (learning "
                                   f"rate then {lr:.3g}): the updates grew too large; lower --lr (it is "
                                   f"{self.config.lr:g}; the default is {type(self.config).lr:g}) and keep "
                                   "--grad-clip on")

    def end_step(self, loss, logits, tgt_out):
        self.train_seconds += time.perf_counter() - self.t0
        with torch.no_grad():
            target = tgt_out != lesson().PAD
            accuracy = float(((logits.argmax(-1) == tgt_out) & target).sum() / target.sum())
        for key, value in (("step", self.step), ("loss", self.loss_value), ("accuracy", accuracy),
                           ("lr", self.optimizer.param_groups[0]["lr"])):
            self.history[key].append(value)
        self.bar.update(1)
        if self.step % 5 == 0:
            self.bar.set_postfix(loss=f"{self.loss_value:.3f}", acc=f"{accuracy:.3f}", refresh=False)

    def wall_seconds(self):
        return self.wall_before + time.perf_counter() - self.wall_start

    def record_validation(self, metrics):
        """The validation's numbers go into the history; every print_every steps, a printed line."""
        h = self.history
        if not h["val_step"] or h["val_step"][-1] != self.step:       # (a resumed run has its start)
            for key, value in (("val_step", self.step), ("val_loss", metrics["loss"]),
                               ("val_token_accuracy", metrics["token_accuracy"]),
                               ("val_exact_match", metrics["exact_match"]), ("val_train_seconds", self.train_seconds)):
                h[key].append(value)
        if self.print_every and not self.quiet and self.step % self.print_every == 0:
            loss = f"{h['loss'][-1]:.4f}" if h["loss"] else "-"
            lr = f"{h['lr'][-1]:.2e}" if h["lr"] else "-"             # the rate of the last update
            self.bar.write(f"  step {self.step:>5} | loss {loss} | "
                           f"val loss {metrics['loss']:.4f} | val token acc {metrics['token_accuracy']:.4f} | "
                           f"val exact {metrics['exact_match']:.4f} | lr {lr}")

    def keep_best(self, metrics, key):
        """This step's model is the best so far: copy its weights (and the optimizer's state) and save it."""
        self.best = dict(key=key, step=self.step, val=metrics, state=copy.deepcopy(self.model.state_dict()),
                         opt=copy.deepcopy(self.optimizer.state_dict()), seconds=self.train_seconds,
                         wall=self.wall_seconds())
        self.save()

    def validations_since_best(self) -> int:
        return sum(s > self.best["step"] for s in self.history["val_step"])

    def save(self):
        """Write the best model so far to checkpoint_path (atomically), unless it is there already."""
        if self.checkpoint_path is not None and self.best is not None and self.saved_step != self.best["step"]:
            b = self.best
            write_checkpoint(self.checkpoint_path, self.config, b["state"], b["step"], b["val"], b["opt"],
                             self.history, b["seconds"], b["wall"])
            self.saved_step = b["step"]

    def result(self, heldout_removed=0) -> TrainResult:
        """The TrainResult with the best model loaded (eval mode); the checkpoint is current.
        Interrupted before the first validation ended: there is no model worth keeping, so the
        interruption goes on (the lesson ends with one line)."""
        if self.best is None and self.interruption is not None:
            raise self.interruption
        best = self.best or dict(step=self.step, val={}, state=None, opt={}, seconds=0.0, wall=0.0)
        if best["state"] is not None:
            self.model.load_state_dict(best["state"])
        self.save()                      # in case an interruption cut the last save short
        return TrainResult(model=self.model.eval(), history=self.history, steps_run=self.step,
                           train_seconds=self.train_seconds, wall_seconds=self.wall_seconds(),
                           target=self.config.target, best_step=best["step"], best_val=best["val"],
                           stopped_because=self.stopped_because or "max steps", heldout_removed=heldout_removed,
                           resumed_at=self.resumed_at, data_changed=self.data_changed,
                           best_train_seconds=best["seconds"], best_wall_seconds=best["wall"],
                           optimizer_state=best["opt"], interruption=self.interruption)
