"""What the checker remembers between runs: per exercise, the best score, the number of tries, the dates.

Kept in .progress.json inside the attempts' folder (exercises/.progress.json, ignored by git),
written atomically after each graded exercise (common.files.write_json), so an interrupted run
never leaves half a file. A damaged file is set aside as .progress.json.damaged with one line of
explanation, and the record starts afresh; grading goes on either way.

    {"exercises": {"attention": {"tries": 3, "best": 8, "total": 8, "best_date": "2025-12-08",
                                 "last_date": "2025-12-08", "exam_tries": 1, "exam_best": 6, "exam_total": 8}}}
"""
import datetime
import json
import os
import sys
from pathlib import Path

FILE_NAME = ".progress.json"
DAMAGED_SUFFIX = ".damaged"


def progress_path(folder) -> Path:
    return Path(folder) / FILE_NAME


def _valid(data) -> bool:
    if not isinstance(data, dict) or not isinstance(data.get("exercises"), dict):
        return False
    whole = ("tries", "best", "total", "exam_tries", "exam_best", "exam_total")
    def whole_number(value):
        return isinstance(value, int) and not isinstance(value, bool)

    return all(isinstance(entry, dict) and all(whole_number(entry.get(k, 0)) for k in whole)
               for entry in data["exercises"].values())


def load(folder) -> dict:
    """The record in `folder` ({"exercises": {}} when there is none). A damaged file is set aside, in one line."""
    path = progress_path(folder)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {"exercises": {}}
    except OSError as exc:
        print(f"note: cannot read {path} ({exc.strerror or type(exc).__name__}); progress is not shown",
              file=sys.stderr)
        return {"exercises": {}}
    try:
        data = json.loads(text)
        problem = "" if _valid(data) else "not a record of exercises"
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        problem = f"not JSON: {type(exc).__name__}"
    if not problem:
        return data
    aside = path.with_name(path.name + DAMAGED_SUFFIX)
    try:
        os.replace(path, aside)
        kept = f"kept as {aside.name}"
    except OSError:
        kept = "left as it is"
    print(f"note: {path} is damaged ({problem}); {kept}, progress starts afresh", file=sys.stderr)
    return {"exercises": {}}


def record(folder, result, exam=False):
    """Add one graded try of `result` (an ExerciseResult) to the record; a failure to save is one line."""
    from common import UserError, write_json

    if result.state == "not attempted":
        return
    data = load(folder)
    entry = data["exercises"].setdefault(result.name, {})
    today = datetime.date.today().isoformat()
    prefix = "exam_" if exam else ""
    entry[prefix + "tries"] = entry.get(prefix + "tries", 0) + 1
    entry["last_date"] = today
    if result.passed > entry.get(prefix + "best", -1) or entry.get(prefix + "total") != result.total:
        entry[prefix + "best"], entry[prefix + "total"] = result.passed, result.total
        entry[prefix + "best_date"] = today
    try:
        write_json(progress_path(folder), data)
    except UserError as problem:
        print(f"note: progress not saved: {problem}", file=sys.stderr)


def summary(entry, exam=False) -> str:
    """One line for `list`: 'best 8/8 on 2025-12-08, 3 tries (last 2025-12-09)', or 'not tried yet'."""
    prefix = "exam_" if exam else ""
    if not entry or not entry.get(prefix + "tries"):
        return "not tried yet" + (" in exam mode" if exam else "")
    tries = entry[prefix + "tries"]
    return (f"{'exam ' if exam else ''}best {entry[prefix + 'best']}/{entry[prefix + 'total']} on "
            f"{entry.get(prefix + 'best_date', '?')}, {tries} {'try' if tries == 1 else 'tries'} "
            f"(last {entry.get('last_date', '?')})")
