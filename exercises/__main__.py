"""`python -m exercises list | check [NAME ...] [--reference] [--dir FOLDER]` (see _cli.py)."""
import os
import sys

from exercises._cli import main

try:
    status = main()
    sys.stdout.flush()
except BrokenPipeError:  # output piped into e.g. `head`, which stopped reading: not an error
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    status = 1
sys.exit(status)
