"""Challenge: change heads, layers or d_model, one at a time, and measure what each does.

What you will learn
  - what one architecture knob changes on its own: the parameter count, the cost of one training
    step, the steps and the seconds needed to reach the target, the final test exact-match;
  - that "fewest steps" and "fewest seconds" can be different answers, because a bigger model
    pays more for every step;
  - why one seed cannot rank close results (--seeds measures the spread).

Every run is lesson 05's model and training loop (reused through common.load_lesson(5)), started
from lesson 05's defaults with exactly one knob changed. All runs share the same validation and
test sets and, for the same seed, the same training batches and the same learning-rate schedule.

Run it (from the repository root)
  python -m challenges.sweep                                 # reverse, all three axes (about 2 min)
  python -m challenges.sweep --axes heads --heads 1,2,4,8 --seeds 3
  python -m challenges.sweep --axes heads,d_model --heads 1,2,4 --d-model 32,64
  python -m challenges.sweep --task copy --axes layers
  python -m challenges.sweep --quick                         # a tiny version in a few seconds

Axes: heads = attention heads in every attention layer (n_heads); layers = encoder blocks and as
many decoder blocks (layers 2 = 2 encoder + 2 decoder blocks); d_model = the width of every token
vector. d_ff, the feed-forward width, keeps lesson 05's value in every run, so only the swept knob
changes. Writes architecture_sweep.png and architecture_sweep.json to --out-dir; while the runs go on,
the finished ones are in architecture_sweep.partial.json, and only a complete sweep replaces
architecture_sweep.json (an interrupted one draws architecture_sweep.partial.png).
"""
import statistics
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

if __package__ in (None, ""):     # run as a file (python challenges/sweep.py): common/ is one folder up
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import common  # noqa: E402
from common import load_lesson  # noqa: E402
from lesson05_plumbing.settings import count_parameters, validate_config  # noqa: E402
from lesson05_plumbing.training import TrainingDiverged  # noqa: E402

# Reused from lesson 05 (one source for each component; edit it there and the sweep uses your
# version): its config, its training loop, its evaluation and its checks of a config.
lesson05 = load_lesson(5)
TrainConfig = lesson05.TrainConfig
train = lesson05.train
heldout_sets = lesson05.heldout_sets
evaluate_teacher_forced = lesson05.evaluate_teacher_forced
Seq2SeqTransformer = lesson05.Seq2SeqTransformer

# %% Knobs (learners: edit these, or use the flags)
AXES = {  # axis -> (TrainConfig field, values swept by default, its flag)
    "heads": ("n_heads", (1, 2, 4, 8), "--heads"),
    "layers": ("n_layers", (1, 2, 4), "--layers"),
    "d_model": ("d_model", (32, 64, 128), "--d-model"),
}
# Each task starts from lesson 05's per-task settings (TASK_DEFAULTS: maximum steps, validation
# interval), with a tighter step limit for reverse: 300, 1.5x the slowest run of the default sweep
# measured here (190 steps: layers 2 and 4). A run that misses the target costs the whole limit.
SWEEP_STEPS = {"reverse": 300}
SEEDS = 2            # two seeds: a first look at the spread; the default sweep still fits in 3 minutes
VAL_SIZE = 500       # validation sequences (lesson 05: 1000); with 500, validating took ~1/4 of each run here
# --quick: tiny sizes for smoke tests (explicit flags still win).
QUICK = dict(seq_len=6, d_model=32, n_heads=2, n_layers=1, d_ff=64, warmup=4, eval_every=4,
             val_size=64, test_size=64, steps=12)
QUICK_VALUES = {"heads": (1, 2), "layers": (1, 2), "d_model": (16, 32)}
JSON_NAME = "architecture_sweep.json"
MAX_TRAININGS = 200  # at a few seconds each, more is hours: refused with one line
MAX_SEQ_LEN = 256    # longer inputs make every one of the many trainings slow
PNG_NAME = "architecture_sweep.png"


# %% Building blocks: reading the flags, planning the runs
def parse_axes(text):
    """'heads,d_model' -> ['heads', 'd_model'] (d-model is accepted too). UserError otherwise."""
    axes = []
    for item in text.split(","):
        name = item.strip().replace("-", "_")
        if name not in AXES:
            raise common.UserError(f"--axes: unknown axis {item.strip()!r}; choose from "
                                   f"{', '.join(AXES)} (comma-separated, e.g. --axes heads,d_model)")
        if name in axes:
            raise common.UserError(f"--axes {text}: {name} is named twice; name each axis once, e.g. --axes "
                                   f"{','.join(dict.fromkeys(a.strip().replace('-', '_') for a in text.split(',')))}")
        axes.append(name)
    return axes


def parse_values(flag, text):
    """'4,1,2' -> [1, 2, 4] (sorted, repeats dropped). UserError naming the flag otherwise."""
    values = []
    for item in text.split(","):
        try:
            value = int(item.strip())
        except ValueError:
            raise common.UserError(f"{flag} expects whole numbers separated by commas, e.g. {flag} 1,2,4; "
                                   f"got {text!r}") from None
        if value <= 0:
            raise common.UserError(f"{flag} values must be positive, got {value} in {text!r}")
        values.append(value)
    return sorted(set(values))


def model_key(config):
    """What tells two models of a sweep apart: (d_model, n_heads, n_layers)."""
    return (config.d_model, config.n_heads, config.n_layers)


def run_id(key, seed):
    return f"d_model{key[0]}-heads{key[1]}-layers{key[2]}-seed{seed}"


def divisors(n, limit=64):
    return [h for h in range(1, min(n, limit) + 1) if n % h == 0]


def plan_sweep(base, axes, values):
    """The trainings a sweep needs, as ({key: TrainConfig}, [(axis, value, key), ...]).

    One knob changes per entry; the others keep base's values. An entry whose model equals the
    base (the default value of its axis) gets the base's key, so that model is trained once (per
    seed) and shared by every axis. UserError for a model that cannot be built.
    """
    configs, entries = {}, []
    for axis in axes:
        name, _, flag = AXES[axis]
        for value in values[axis]:
            config = replace(base, **{name: value})
            if config.d_model % config.n_heads:
                if axis == "heads":
                    raise common.UserError(
                        f"{flag} {value}: d_model {config.d_model} (fixed while heads are swept) is not "
                        f"divisible by {value} heads (each head gets d_model / heads dimensions); heads "
                        f"that divide {config.d_model}: {', '.join(map(str, divisors(config.d_model)))}")
                raise common.UserError(
                    f"{flag} {value}: not divisible by the {config.n_heads} heads fixed while d_model is "
                    f"swept (each head gets d_model / heads dimensions); use multiples of "
                    f"{config.n_heads}, e.g. {config.n_heads * max(1, round(value / config.n_heads))}")
            validate_config(config)                    # lesson 05's checks: sizes, lengths, target
            key = model_key(config)
            configs.setdefault(key, config)
            entries.append((axis, value, key))
    return configs, entries


def describe(config):
    return (f"d_model {config.d_model}, {config.n_heads} head{'s' if config.n_heads > 1 else ''}, "
            f"{config.n_layers} layer{'s' if config.n_layers > 1 else ''}")


# %% Building blocks: training and summarising
def train_one(config, seed, device, data, test_on_device):
    """Train one model with lesson 05's train(); returns a plain dict (the json's run record).

    KeyboardInterrupt if Ctrl-C stopped the training (lesson 05 returns early then): an
    unfinished run is not recorded.
    """
    config = replace(config, seed=seed)
    start = time.perf_counter()
    record = {"id": run_id(model_key(config), seed), "seed": seed, "config": config.model_config()}
    try:
        result = train(config, device, quiet=True, data=data)
    except TrainingDiverged:
        return {**record, "parameters": count_parameters(Seq2SeqTransformer(**config.model_config())),
                "target_step": None, "target_seconds": None, "steps_run": None, "train_seconds": None,
                "wall_seconds": time.perf_counter() - start, "test_exact_match": None,
                "stopped_because": "diverged (loss not finite)", "val_step": [], "val_exact_match": []}
    if result.stopped_because.startswith("interrupted"):
        raise KeyboardInterrupt
    # One teacher-forced pass gives greedy decoding's exact-match (lesson 05 proves it).
    test = evaluate_teacher_forced(result.model, test_on_device)
    h = result.history
    return {**record, "parameters": count_parameters(result.model), "target_step": result.target_step,
            "target_seconds": result.target_seconds, "steps_run": result.steps_run,
            "train_seconds": result.train_seconds, "wall_seconds": time.perf_counter() - start,
            "test_exact_match": test["exact_match"], "stopped_because": result.stopped_because,
            "val_step": list(h["val_step"]), "val_exact_match": list(h["val_exact_match"])}


def mean_or_none(values):
    """The mean, or None if any value is None (a seed that missed the target)."""
    return None if not values or any(v is None for v in values) else statistics.fmean(values)


def summarize(entries, runs, seeds, base_key):
    """One summary per (axis, value) that has finished runs, built from the runs it shares."""
    summaries = []
    for axis, value, key in entries:
        done = [runs[(key, s)] for s in seeds if (key, s) in runs]
        if not done:
            continue
        steps = [r["target_step"] for r in done]
        seconds = [r["target_seconds"] for r in done]
        per_step = [1000 * r["train_seconds"] / r["steps_run"] for r in done if r["steps_run"]]
        tests = [r["test_exact_match"] for r in done if r["test_exact_match"] is not None]
        summaries.append({
            "axis": axis, "value": value, "default": key == base_key, "config": done[0]["config"],
            "parameters": done[0]["parameters"], "run_ids": [r["id"] for r in done],
            "steps_to_target": steps, "seconds_to_target": seconds,
            "mean_steps_to_target": mean_or_none(steps), "mean_seconds_to_target": mean_or_none(seconds),
            "reached": sum(s is not None for s in steps), "seeds_run": len(done),
            "ms_per_step": statistics.fmean(per_step) if per_step else None, "ms_per_step_by_seed": per_step,
            "test_exact_match": statistics.fmean(tests) if tests else None,
            "train_seconds": max((r["train_seconds"] or 0.0) for r in done),
        })
    return summaries


# %% 1. The plan
def section_1_plan(base, axes, values, configs, entries, seeds, quick=False):
    common.section(1, f"The plan: one knob at a time, task '{base.task}' (length {base.seq_len})")
    print("  reused through common.load_lesson(5): TrainConfig, train, evaluate_teacher_forced,")
    print("  count_parameters, validate_config (lesson 05's model, training loop and checks)")
    common.explain(f"""
        Starting point: {'a tiny model (--quick: ' if quick else "lesson 05's default model ("}{describe(base)},
        d_ff {base.d_ff}). Each entry
        below changes one knob and keeps the rest. 'layers' counts encoder blocks and as many
        decoder blocks. Every run trains with the same learning-rate schedule and, for the same
        seed, the same batches, and stops when validation exact-match ({base.val_size} held-out
        sequences, checked every {base.eval_every} steps) reaches {base.target:.0%} or after
        {base.steps} steps. Test exact-match is measured on {base.test_size} other held-out
        sequences, none of them ever trained on; for runs that stop at the target, it shows how
        well the validation score carries over, more than which model is better.""")
    for axis in axes:
        print(f"  {axis:>7}: {', '.join(map(str, values[axis]))}")
    # Only the default model can appear in several axes (every other entry differs from it in its
    # own axis's knob), so the entries exceed the models by the default's extra appearances.
    shared = len(entries) - len(configs)
    print(f"  {len(entries)} (axis, value) entries, {len(configs)} different models"
          + (f" (the default model appears in {shared + 1} axes and is trained once per seed: "
             f"{shared * len(seeds)} training{'s' if shared * len(seeds) != 1 else ''} saved)" if shared else "")
          + f"; seeds {', '.join(map(str, seeds))}: {len(configs) * len(seeds)} trainings in all")


# %% 2. Training
def section_2_train(configs, seeds, device, data, base_key, save):
    """Train every model once per seed; returns ({(key, seed): run}, interrupted, wall seconds).
    save(runs, interrupted, wall) is called after each finished run: the partial json is always current."""
    common.section(2, "Training every model (Ctrl-C stops and keeps what finished)")
    val, test = data
    test_on_device = test.to(device)
    order = sorted(configs, key=lambda k: k != base_key)         # the shared default model first
    total, runs, interrupted = len(configs) * len(seeds), {}, False
    start = time.perf_counter()
    try:
        for key in order:
            for seed in seeds:
                run = train_one(configs[key], seed, device, data, test_on_device)
                runs[(key, seed)] = run
                if run["target_step"] is not None:
                    got = f"{run['target_step']} steps, {run['target_seconds']:.1f} s to target"
                else:
                    got = f"target not reached ({run['stopped_because']})"
                test_text = "-" if run["test_exact_match"] is None else f"{run['test_exact_match']:.4f}"
                print(f"  [{len(runs)}/{total}] {describe(configs[key])}, seed {seed}: {got}; test "
                      f"exact-match {test_text}; {run['wall_seconds']:.1f} s with validation", flush=True)
                save(runs, False, time.perf_counter() - start)
    except KeyboardInterrupt:
        interrupted = True
        print(f"  interrupted ({common.process.interruption()}): {len(runs)} of {total} trainings finished; the "
              "unfinished one is left out of the table, the plot and the json")
    wall = time.perf_counter() - start
    print(f"  {len(runs)} trainings took {wall:.1f} s of wall time")
    return runs, interrupted, wall


# %% 3. The table
def steps_text(values, digits=0):
    return " ".join("-" if v is None else f"{v:.{digits}f}" for v in values)


def section_3_table(summaries, base, seeds):
    common.section(3, "Results: parameters, steps and seconds to the target, test exact-match")
    if not summaries:
        print("  nothing finished: no results to show")
        return
    rows = []
    for s in summaries:
        rows.append([s["axis"], f"{s['value']}{' *' if s['default'] else ''}", s["parameters"],
                     steps_text(s["steps_to_target"]), steps_text(s["seconds_to_target"], 1),
                     "-" if s["ms_per_step"] is None else f"{s['ms_per_step']:.1f}",
                     "-" if s["test_exact_match"] is None else f"{s['test_exact_match']:.4f}"])
    per_seed = " (one number per seed)" if len(seeds) > 1 else ""
    common.table(rows, ["axis", "value", "parameters", "steps to target" + per_seed, "train s to target",
                        "ms/step", "test exact"])
    print(f"  * the default model ({describe(base)}): one run per seed, shared by every axis")
    print(f"  '-': validation exact-match did not reach {base.target:.0%} within {base.steps} steps; steps "
          f"to target are measured every {base.eval_every} steps; seconds count training steps only")


# %% 4. The picture
def section_4_plot(summaries, runs, axes, base, seeds, args, name=None):
    common.section(4, "The picture: validation curves and time to the target, one column per axis")
    if not summaries:
        print("  nothing finished: no figure written")
        return
    common.explain(f"""
        Top row: validation exact-match against the optimizer step, one colour per value (one line
        per seed); a line ends with a dot where it reached {base.target:.0%}. Bottom row: training
        seconds to the target, with the steps it took written above each bar.""")
    plot_sweep(summaries, {r["id"]: r for r in runs.values()}, axes, base, seeds, args.out_dir, args.show,
               args.quick, name=name or PNG_NAME)


AXIS_LABELS = {"heads": "heads", "layers": "layers (encoder blocks = decoder blocks)", "d_model": "d_model"}


def fixed_text(axis, base):
    parts = {"heads": f"{base.n_heads} head{'s' if base.n_heads > 1 else ''}",
             "layers": f"{base.n_layers} layer{'s' if base.n_layers > 1 else ''}",
             "d_model": f"d_model {base.d_model}"}
    return ", ".join(text for name, text in parts.items() if name != axis)


def plot_sweep(summaries, runs_by_id, axes, base, seeds, out_dir, show, quick=False, name=PNG_NAME):
    import numpy as np

    plt = common.pyplot(show)
    shown = [axis for axis in axes if any(s["axis"] == axis for s in summaries)]
    n = len(shown)
    fig, grid = common.new_figure(2, n, figsize=(5.4 * n, 8.6), show=show, squeeze=False)
    for col, axis in enumerate(shown):
        items = [s for s in summaries if s["axis"] == axis]
        colors = plt.cm.viridis(np.linspace(0.0, 0.85, len(items)))
        top, bottom = grid[0][col], grid[1][col]
        for item, color in zip(items, colors):
            default = " (default)" if item["default"] else ""
            label = f"{item['value']}: {item['parameters']:,} params{default}"
            for j, rid in enumerate(item["run_ids"]):
                run = runs_by_id[rid]
                top.plot(run["val_step"], run["val_exact_match"], "-", color=color, lw=1.6, alpha=0.9,
                         label=label if j == 0 else None)
                if run["target_step"] is not None:          # the curve ends where the target is reached
                    top.plot(run["val_step"][-1], run["val_exact_match"][-1], "o", color=color, ms=5)
        top.axhline(base.target, color="gray", ls="--", lw=1, label=f"target {base.target:.0%}")
        top.set(xlabel="optimizer step", ylabel="validation exact-match", ylim=(-0.02, 1.45),
                title=f"{axis}: the curve that reaches {base.target:.0%} first\nneeds the fewest steps")
        top.set_yticks([0.0, 0.2, 0.4, 0.6, 0.8, 1.0])          # the room above 1 holds the legend
        top.legend(fontsize=7.5, loc="upper left", ncol=2, title=axis, title_fontsize=7.5)
        for i, (item, color) in enumerate(zip(items, colors)):
            if item["mean_seconds_to_target"] is not None:
                height = item["mean_seconds_to_target"]
                bottom.bar(i, height, color=color)
                mean_steps = item["mean_steps_to_target"]
                text = f"{mean_steps:.0f} steps"
            else:   # a hatched bar as long as the training ran: the target lies beyond it
                height = item["train_seconds"]
                bottom.bar(i, height, color="white", edgecolor="gray", hatch="//")
                missed = item["seeds_run"] - item["reached"]
                text = (f"not reached by {missed}\nof {item['seeds_run']} seeds in {base.steps} steps"
                        if item["seeds_run"] > 1 else f"not reached\nin {base.steps} steps")
            dots = [t for t in item["seconds_to_target"] if t is not None]
            if item["seeds_run"] > 1:                          # each seed's own time as a dot
                bottom.plot([i] * len(dots), dots, "o", color="black", mec="white", ms=5)
            bottom.annotate(text, (i, max([height] + dots)), xytext=(0, 5), textcoords="offset points",
                            ha="center", va="bottom", fontsize=8)
        bottom.set_xticks(range(len(items)), [f"{s['value']}{' (default)' if s['default'] else ''}"
                                              for s in items])
        bottom.margins(y=0.2)
        several = any(item["seeds_run"] > 1 for item in items)
        bottom.set(xlabel=f"{AXIS_LABELS[axis]}\nfixed: {fixed_text(axis, base)}",
                   ylabel=f"training seconds to {base.target:.0%}",
                   title="Fewest training seconds to the target?\n"
                         + ("(bar: mean of the seeds, dot: one seed; steps above)" if several
                            else "(steps to target above each bar)"))
    origin = "the --quick model" if quick else "lesson 05's default"
    fig.suptitle(f"One knob at a time from {origin} ({describe(base)}) on '{base.task}', "
                 f"length {base.seq_len}, {len(seeds)} seed{'s' if len(seeds) > 1 else ''}")
    common.save_figure(fig, out_dir, name, show=show)


# %% 5. What the numbers say
def observations(summaries, base, seeds, n_trainings, n_entries):
    """Statements built from this run's numbers; each says what was measured, not what must be."""
    items = []
    # how far the same model's seeds spread (steps to target): what a difference must beat
    spreads = [(max(s["steps_to_target"]) - min(s["steps_to_target"]), s) for s in summaries
               if s["reached"] == s["seeds_run"] and s["seeds_run"] > 1]
    spread = max(spreads, key=lambda p: p[0]) if spreads else None
    for axis in AXES:
        items_axis = [s for s in summaries if s["axis"] == axis]
        if len(items_axis) < 2:
            continue
        reached = [s for s in items_axis if s["mean_steps_to_target"] is not None]
        missed = [str(s["value"]) for s in items_axis if s["mean_steps_to_target"] is None]
        parts = []
        if reached:
            fewest = min(s["mean_steps_to_target"] for s in reached)
            fastest = min(s["mean_seconds_to_target"] for s in reached)
            by_steps = [s for s in reached if s["mean_steps_to_target"] == fewest]
            by_seconds = min(reached, key=lambda s: s["mean_seconds_to_target"])
            names = " and ".join(str(s["value"]) for s in by_steps)
            parts.append(f"fewest steps to {base.target:.0%}: {axis} {names} ({fewest:.0f})")
            if by_seconds in by_steps:
                parts.append(f"fewest training seconds: {axis} {by_seconds['value']} ({fastest:.3g} s)")
            else:
                other = by_steps[0]
                parts.append(f"fewest training seconds: {axis} {by_seconds['value']} ({fastest:.3g} s, "
                             f"{by_seconds['ms_per_step']:.0f} ms per step, against "
                             f"{other['mean_seconds_to_target']:.3g} s and {other['ms_per_step']:.0f} ms per "
                             f"step for {axis} {other['value']})")
        else:
            parts.append(f"no value reached {base.target:.0%} within {base.steps} steps")
        if missed and reached:
            parts.append(f"not reached by every seed within {base.steps} steps: {axis} {', '.join(missed)}")
        counts = sorted({s["parameters"] for s in items_axis})
        if len(counts) == 1:
            parts.append(f"every value has the same {counts[0]:,} parameters (heads split d_model into "
                         f"d_model/heads-wide pieces; they add no weights)" if axis == "heads" else
                         f"every value has the same {counts[0]:,} parameters")
        else:
            small = min(items_axis, key=lambda s: s["parameters"])
            large = max(items_axis, key=lambda s: s["parameters"])
            parts.append(f"parameters from {small['parameters']:,} ({axis} {small['value']}) to "
                         f"{large['parameters']:,} ({axis} {large['value']}), "
                         f"{large['parameters'] / small['parameters']:.1f}x")
            s_steps, l_steps = small["mean_steps_to_target"], large["mean_steps_to_target"]
            if s_steps is not None and l_steps is not None:
                verdict = "fewer" if l_steps < s_steps else "more" if l_steps > s_steps else "as many"
                noise = (", within the seed-to-seed spread" if spread is not None and
                         abs(l_steps - s_steps) <= spread[0] else "")
                parts.append(f"the largest needed {verdict} steps than the smallest ({l_steps:.0f} against "
                             f"{s_steps:.0f}{noise})")
        items.append(f"{axis}: " + "; ".join(parts) + ".")
    tested = [s for s in summaries if s["test_exact_match"] is not None]
    if tested:
        low = min(tested, key=lambda s: s["test_exact_match"])
        high = max(tested, key=lambda s: s["test_exact_match"])
        all_stopped = all(s["reached"] == s["seeds_run"] for s in tested)
        spread_text = (f"was {low['test_exact_match']:.2%} for every value"
                       if low["test_exact_match"] == high["test_exact_match"] else
                       f"ranged from {low['test_exact_match']:.2%} ({low['axis']} {low['value']}) to "
                       f"{high['test_exact_match']:.2%} ({high['axis']} {high['value']})")
        items.append(f"Test exact-match ({base.test_size} held-out sequences, never trained on) {spread_text}"
                     + (f": every run stopped on reaching {base.target:.0%} on validation, so this shows how "
                        "well that score carries over to unseen sequences, not which model is better."
                        if all_stopped else "."))
    shared = [s for s in summaries if s["default"]]
    if len(shared) > 1:
        items.append(f"The default model ({describe(base)}) was trained once per seed and appears in "
                     f"{len(shared)} axes: {n_trainings} trainings for {n_entries} (axis, value) entries "
                     f"x {len(seeds)} seed{'s' if len(seeds) > 1 else ''}.")
    if len(seeds) == 1:
        items.append("One seed per value: this run cannot tell a real difference from seed luck; "
                     "--seeds 3 measures how far the same model's runs spread.")
    elif spread is not None:
        items.append(f"The same model with different seeds differed by up to {spread[0]} steps "
                     f"({spread[1]['axis']} {spread[1]['value']}): differences between values smaller than "
                     "that may be luck.")
    # The same model does the same work per step with any seed: its ms per step differ only by noise.
    noise = [(max(s["ms_per_step_by_seed"]) / min(s["ms_per_step_by_seed"]) - 1, s) for s in summaries
             if len(s["ms_per_step_by_seed"]) > 1]
    if noise:
        worst, s = max(noise, key=lambda p: p[0])
        items.append(f"Timing noise: the same model's milliseconds per step (the same work) differed by up "
                     f"to {worst:.0%} between its seeds ({s['axis']} {s['value']}); smaller differences in "
                     "seconds may come from the machine (other programs, clock speed), not from the model.")
    return items


def measurements(base, axes, values, seeds, summaries, runs, interrupted, wall, complete=False):
    """The sweep so far (the json). interrupted: Ctrl-C or SIGTERM cut the sweep short (the unfinished
    run is left out); complete: every planned run finished."""
    return {"task": base.task, "base_config": asdict(base), "axes": axes, "values": values,
               "seeds": seeds, "max_steps": base.steps, "target": base.target, "interrupted": interrupted,
               "complete": complete, "wall_seconds": wall, "entries": summaries, "runs": list(runs.values())}


# %% Flags
def build_parser():
    import argparse

    parser = common.lesson_parser(__doc__, quick_help="tiny sizes (length 6, 2 values per axis, 12 steps): "
                                                      "a few seconds, for smoke tests")
    group = parser.add_argument_group("the sweep")
    group.add_argument("--task", choices=lesson05.TASKS, default="reverse",
                       help="what to learn (lesson 05's tasks)")
    group.add_argument("--axes", default=argparse.SUPPRESS,
                       help=f"axes to sweep, comma-separated, from {', '.join(AXES)} (default: the axes "
                            "whose values you give, else all three)")
    for axis, (_, default, flag) in AXES.items():
        group.add_argument(flag, dest=axis, default=argparse.SUPPRESS,
                           help=f"{axis} values, comma-separated (default: {','.join(map(str, default))})")
    group.add_argument("--seeds", type=int, default=argparse.SUPPRESS,
                       help=f"training seeds per model: --seed, --seed+1, ... "
                            f"(default: {SEEDS}; 1 with --quick)")
    group.add_argument("--steps", type=int, default=argparse.SUPPRESS,
                       help="maximum optimizer steps per run (default: "
                            + ", ".join(f"{t} {task_settings(t).get('steps', TrainConfig().steps)}"
                                        for t in lesson05.TASKS) + ")")
    group.add_argument("--seq-len", type=int, default=argparse.SUPPRESS,
                       help=f"input length (default: lesson 05's, {TrainConfig().seq_len})")
    group.add_argument("--target", type=float, default=argparse.SUPPRESS,
                       help=f"validation exact-match that counts as learned (default: lesson 05's, "
                            f"{TrainConfig().target})")
    return parser


def task_settings(task):
    """Lesson 05's settings for `task` (steps, eval_every), then the sweep's own step limit."""
    return {**lesson05.TASK_DEFAULTS.get(task, {}), "task": task,
            **({"steps": SWEEP_STEPS[task]} if task in SWEEP_STEPS else {})}


def settings_from_args(args):
    """(base TrainConfig, axes, {axis: values}, seeds) from the flags; UserError for bad ones."""
    values = {**asdict(TrainConfig()), **task_settings(args.task),
              "patience": 0, "val_size": VAL_SIZE}             # patience 0: run to the target or the limit
    if args.quick:
        values.update(QUICK)
    for name in ("steps", "seq_len", "target"):            # flags not given are absent from args
        if hasattr(args, name):
            values[name] = getattr(args, name)
    if not 2 <= values["seq_len"] <= MAX_SEQ_LEN:
        raise common.UserError(f"--seq-len must be from 2 to {MAX_SEQ_LEN} for a sweep of many trainings, "
                               f"got {values['seq_len']}")
    values["max_len"] = max(values["max_len"], values["seq_len"] + 1)   # the sweep sizes the table to --seq-len
    base = TrainConfig(**values)
    validate_config(base)
    n_seeds = getattr(args, "seeds", 1 if args.quick else SEEDS)
    common.check_positive("--seeds", n_seeds)
    given = {axis: getattr(args, axis) for axis in AXES if hasattr(args, axis)}
    axes = parse_axes(args.axes) if hasattr(args, "axes") else [a for a in AXES if a in given] or list(AXES)
    for axis in given:
        if axis not in axes:
            raise common.UserError(f"{AXES[axis][2]} was given but {axis} is not in --axes {args.axes}; "
                                   f"add it (--axes {args.axes},{axis}) or drop {AXES[axis][2]}")
    defaults = QUICK_VALUES if args.quick else {axis: spec[1] for axis, spec in AXES.items()}
    swept = {axis: parse_values(AXES[axis][2], given[axis]) if axis in given else list(defaults[axis])
             for axis in axes}
    seeds = [args.seed + i for i in range(n_seeds)]
    return base, axes, swept, seeds


@common.entry_point
def main(argv=None):
    parser = build_parser()
    args = common.parse_args(parser, argv)
    base, axes, values, seeds = settings_from_args(args)
    configs, entries = plan_sweep(base, axes, values)
    if len(configs) * len(seeds) > MAX_TRAININGS:
        raise common.UserError(f"--seeds {len(seeds)} makes {len(configs) * len(seeds)} trainings of "
                               f"{len(configs)} models, hours on a laptop; use --seeds "
                               f"{max(1, MAX_TRAININGS // len(configs))} or less")
    device = common.setup(args, "Challenge: heads, layers and d_model, one at a time")
    data = heldout_sets(base)                     # the same validation and test sets for every run
    base_key = model_key(base)
    result = common.files.Result(args.out_dir, JSON_NAME)

    def save(runs, interrupted, wall, complete=False):
        found = measurements(base, axes, values, seeds, summarize(entries, runs, seeds, base_key), runs,
                             interrupted, wall, complete)
        return result.complete(found) if complete else result.save(found)

    section_1_plan(base, axes, values, configs, entries, seeds, args.quick)
    runs, interrupted, wall = section_2_train(configs, seeds, device, data, base_key, save)
    if runs or not interrupted:                   # an interruption before any run ends leaves the files as they were
        path = save(runs, interrupted, wall, complete=not interrupted)
        print(f"  saved the measurements: {path}" + (f" (marked interrupted; {JSON_NAME} is not replaced)"
                                                     if interrupted else ""))
    summaries = summarize(entries, runs, seeds, base_key)
    section_3_table(summaries, base, seeds)
    section_4_plot(summaries, runs, axes, base, seeds, args, result.name(PNG_NAME) if interrupted else PNG_NAME)
    insights = observations(summaries, base, seeds, len(runs), len(entries))
    if interrupted:
        insights.insert(0, f"INTERRUPTED: only {len(runs)} of {len(configs) * len(seeds)} trainings finished; the "
                           "observations below cover those only.")
    common.key_insights(insights)
    if interrupted:
        raise KeyboardInterrupt      # common.entry_point: one line, exit 130 (143 after SIGTERM)


if __name__ == "__main__":
    main()
