"""One exception type for every mistake a user can make, so the CLI can answer it in one line."""


class EdgekdError(Exception):
    """Bad input a user can fix: a missing file, an unknown target, an unreachable device.

    The message is one line that names what is wrong and what to do. The CLI prints it and exits 2.
    """
