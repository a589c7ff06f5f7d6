"""The plumbing of lesson 05: flags, checks, checkpoints, bookkeeping, reports, figures and the
attention explorer, kept out of the lesson so that it reads as a transformer.

You do not need to read these files to follow lesson 05: everything the lesson teaches (the data,
the model, the loop and its decisions, decoding, the measurements) is in 05_mini_transformer.py.

    settings     the knobs and flags checked before any work; sizes of a model and of its memory
    flags        the command line: flags, --quick, --resume, a TrainConfig from them
    checkpoints  writing, reading and checking mini_transformer.pt; keeping earlier ones
    training     the bookkeeping around the training loop: history, clocks, progress bar, saving
    reports      printing what the lesson measured; metrics.json
    figures      training_progress.png and transformer_attention_patterns.png
    explorer     attention_explorer.html: every attention map, one page for a browser
    text         tokens and digits as text

What is generic (atomic files, checkpoints of a dataclass, flags from a dataclass, statistics)
lives in common/. Nothing here imports challenges/.
"""
import sys
from pathlib import Path

import common


def lesson():
    """Lesson 05 as a module: the running script itself under `python 05_mini_transformer.py`, else
    load_lesson(5). The plumbing reads the lesson's token ids and task definitions through it, at
    call time only (the lesson imports the plumbing while it loads)."""
    main = sys.modules.get("__main__")
    if Path(getattr(main, "__file__", "") or "").name.startswith("05_"):
        return main
    return common.load_lesson(5)
