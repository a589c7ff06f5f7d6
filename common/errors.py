"""The one exception a user's mistake raises: `common.entry_point` turns it into one line and exit 2."""


class UserError(Exception):
    """A mistake in what the user asked for. `main()` turns it into one line and exit 2."""
