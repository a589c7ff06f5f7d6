"""The course's promise: an edit to lesson 01's attention shows up in lesson 05's model.

A copy of the course is made in a temporary folder, lesson 01's scaled_dot_product_attention is
edited there as a learner would (here: the scores are no longer divided by sqrt(d_k)), and lesson
05's model, built with the same seed, must compute something else on the same input.
"""
import shutil
import subprocess
import sys

from conftest import REPO_ROOT

PROBE = """
import sys, torch
sys.path.insert(0, sys.argv[1])
from common import load_lesson
L5 = load_lesson(5)
torch.manual_seed(0)
model = L5.Seq2SeqTransformer(d_model=32, n_heads=2, d_ff=64).eval()
src = torch.randint(L5.FIRST_DIGIT, 13, (4, 8))
tgt_in = torch.randint(L5.FIRST_DIGIT, 13, (4, 9))
model.train()                      # the training path too (no weights requested there)
with torch.no_grad():
    print(repr(model(src, tgt_in).sum().item()))
"""

EDIT = '''

# A learner's edit: scores no longer divided by sqrt(d_k).
def scaled_dot_product_attention(query, key, value, mask=None, _original=scaled_dot_product_attention):
    return _original(query * math.sqrt(query.size(-1)), key, value, mask)
'''


def copy_course(dest):
    dest.mkdir()
    for item in REPO_ROOT.iterdir():
        if item.name.endswith(".py") or item.name in ("common", "challenges"):
            (shutil.copytree if item.is_dir() else shutil.copy)(item, dest / item.name)
    return dest


def forward_sum(root) -> float:
    result = subprocess.run([sys.executable, "-c", PROBE, str(root)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return float(result.stdout.strip())


def test_an_edit_to_lesson_01_changes_lesson_05s_forward_pass(tmp_path):
    original = copy_course(tmp_path / "original")
    edited = copy_course(tmp_path / "edited")
    lesson_01 = next(edited.glob("01_*.py"))
    text = lesson_01.read_text()
    assert "import math" in text and "def scaled_dot_product_attention" in text
    lesson_01.write_text(text + EDIT)
    assert forward_sum(original) == forward_sum(REPO_ROOT)     # the copy itself changes nothing
    assert forward_sum(edited) != forward_sum(original)
