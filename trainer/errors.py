"""The one exception type for user mistakes: the CLI prints its message as one line and exits 2."""


class UserError(Exception):
    """Bad input from the user (a flag, a path, a file). The message names the problem and the fix."""
