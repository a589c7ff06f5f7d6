"""Lesson 05's command line: its flags, --quick, --resume, and the TrainConfig they make."""
import argparse
import math
from dataclasses import asdict

import common
from common.errors import UserError
from lesson05_plumbing import checkpoints, settings
from lesson05_plumbing.checkpoints import CheckpointError
from lesson05_plumbing.settings import ARCHITECTURE_FIELDS, CHOICES, FLAGS, QUICK

def build_parser(doc, config_class, tasks, task_defaults):
    """The lesson's parser; every knob is checked first (the flags take their types from TrainConfig)."""
    settings.check_knobs()
    parser = common.lesson_parser(doc, quick_help="tiny sizes (length 6, at most 100 steps, 200 held-out): "
                                                  "a few seconds, for smoke tests")
    group = parser.add_argument_group("lesson 05 (task, model, training)")
    per_task = {name: ", ".join(f"{d[name]} for {t}" for t, d in task_defaults.items() if name in d)
                for name in ("steps", "eval_every")}
    common.flags.add_dataclass_flags(group, config_class(), FLAGS, {**CHOICES, "task": tasks}, per_task)
    group.add_argument("--norm", choices=("pre", "post"), default=argparse.SUPPRESS,
                       help="LayerNorm before each sublayer (pre) or after it (post, the paper) (default: pre)")
    group.add_argument("--embed-scale", action="store_true", default=argparse.SUPPRESS,
                       help="multiply embeddings by sqrt(d_model), as the paper does (default: off)")
    group.add_argument("--beam-size", type=common.flags.whole_number, default=4,
                       help="beam width for beam search on the test set (1 = off)")
    group.add_argument("--length-penalty", type=float, default=0.0,
                       help="beam search ranks by log-probability / length**this (0 = plain log-probability)")
    parser.set_defaults(seed=None)       # no --seed typed: TrainConfig.seed is the seed
    group.add_argument("--resume", metavar="PATH", default=None,
                       help="continue training from a checkpoint (its task and model shape are kept)")
    group.add_argument("--eval-lengths", metavar="L1,L2,...", default=None,
                       help="after training, test the model on inputs of these lengths (e.g. 8,16,24), as "
                            "python -m challenges.length_generalization does; writes length_generalization.png")
    group.add_argument("--no-explorer", action="store_true",
                       help="do not write attention_explorer.html (every attention map, one page for a browser)")
    return parser


def typed_values(args) -> dict:
    """The TrainConfig values the user typed (flags not typed are absent from args)."""
    given = common.flags.typed_values(args, FLAGS)
    if hasattr(args, "norm"):
        given["norm_first"] = args.norm == "pre"
    if hasattr(args, "embed_scale"):
        given["embed_scale"] = True
    if args.seed is not None:    # the common --seed flag: model initialisation and training batches
        given["seed"] = args.seed
    return given


def config_from_args(args, config_class, task_defaults, model_class):
    """(TrainConfig, checkpoint or None) from defaults < --quick < checkpoint (--resume) < flags typed.
    Every check runs before anything is trained: UserError (one line) for what cannot run."""
    given = typed_values(args)
    values = asdict(config_class())
    values.update(QUICK if args.quick else {})
    checkpoint = None
    if args.resume is not None and not args.resume.strip():
        raise UserError("--resume '': give the path of a checkpoint to continue, e.g. --resume mini_transformer.pt")
    if args.resume:
        checkpoint = checkpoints.read_checkpoint(args.resume, config_class)
        saved = checkpoint["config"]
        for name in ARCHITECTURE_FIELDS:
            if name in given and given[name] != saved[name]:
                raise CheckpointError(f"{name} = {given[name]!r} (from a flag) contradicts the checkpoint "
                                      f"{args.resume!r} ({name} = {saved[name]!r}); drop that flag to resume it, "
                                      "or train a new model without --resume")
        values.update(saved)
    elif not args.quick:
        values.update(task_defaults.get(given.get("task", values["task"]), {}))
    values.update(given)
    config = config_class(**values)
    defaults = config_class()          # the knobs; a flag typed wins over --quick
    common.quick_note(args, " (a flag you type wins)", **{f"TrainConfig.{k}": (getattr(defaults, k), v)
                                                         for k, v in QUICK.items() if k not in given})
    if checkpoint is not None:
        settings.check_positions(config, set(given), fixed_by=repr(args.resume))
    settings.validate_config(config, typed=set(given) | (set(QUICK) if args.quick else set()))
    if checkpoint is not None:
        model = checkpoints.model_from_checkpoint(checkpoint, args.resume, config_class, model_class)
        checkpoints.check_resumable(checkpoint, args.resume, model)
        if config.steps <= checkpoint["step"]:
            raise CheckpointError(f"the checkpoint {args.resume!r} is already at step {checkpoint['step']} "
                                  f"and --steps is {config.steps}; pass a larger --steps to train further")
    check_decoding_flags(args, config)
    args.seed = config.seed                 # what common.setup seeds and prints
    return config, checkpoint



def check_decoding_flags(args, config):
    """--beam-size, --length-penalty and --eval-lengths, checked before anything is trained."""
    common.check_positive("--beam-size", args.beam_size)
    rows = min(1000, config.test_size) * args.beam_size                 # decoded 1000 inputs at a time
    need = settings.decode_memory(config, rows)
    if need > settings.MAX_MEMORY:
        fits = max(1, int(args.beam_size * settings.MAX_MEMORY / need))
        raise UserError(f"--beam-size {args.beam_size} keeps {rows:,} hypotheses per chunk of the test set, "
                        f"about {need / 1024 ** 3:,.0f} GB with this model; "
                        f"use --beam-size {fits} or less")
    if not math.isfinite(args.length_penalty):
        raise UserError(f"--length-penalty must be a finite number, got {args.length_penalty}")
    if args.eval_lengths is not None:
        args.eval_lengths = parse_lengths(args.eval_lengths, config, "--eval-lengths")


def longest_length(config) -> int:
    """The longest input whose answer (plus EOS) still fits the positional-encoding table."""
    return max(L for L in range(1, config.max_len + 1)
               if settings.positions_needed(config.task, L, config.n_digits) <= config.max_len)


def parse_lengths(text, config, flag="--lengths") -> list:
    """'8,16,24' -> [8, 16, 24]; UserError naming the flag, and the longest length that fits, otherwise."""
    return common.flags.int_list(flag, text, 1, longest_length(config), why=" (longer inputs need more positions "
                                 f"than the model's --max-len {config.max_len})")
