"""`python -m exercises list | check [NAME ...] | compare NAME` (the options: see _cli.py)."""
import os
import sys


def run() -> int:
    from exercises._cli import main

    try:
        status = main()
        sys.stdout.flush()
    except BrokenPipeError:  # output piped into e.g. `head`, which stopped reading: not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        status = 1
    except KeyboardInterrupt:  # Ctrl-C outside main()'s own handler (while starting or exiting)
        print("\ninterrupted (Ctrl-C)", file=sys.stderr)
        status = 130
    return status


# Guarded: with the spawn start method, each child process imports this module again.
if __name__ == "__main__":
    sys.exit(run())
