"""The one exception the course raises for a user's mistake (a bad flag, knob, file or folder).

`@common.entry_point` turns it into one `error: ...` line on stderr and exit status 2: a mistake by
the user never shows a traceback; tracebacks are for bugs in the course's own code.
"""


class UserError(Exception):
    """A mistake in what the user asked for. `main()` turns it into one line and exit 2."""
