"""The two ways a command can end badly, so the CLI answers each with one line and its exit code.

EdgekdError: bad input a user can fix (exit 2). JobFailed: the input was fine, the job ran and did
not succeed, e.g. an export failed parity or the device missed the budget (exit 1).
"""


class EdgekdError(Exception):
    """Bad input a user can fix: a missing file, an unknown target, an unreachable device.

    The message is one line that names what is wrong and what to do. The CLI prints it and exits 2.
    """

    exit_code = 2


class JobFailed(Exception):
    """The job ran and did not succeed (parity failed, the budget was missed). The CLI exits 1."""

    exit_code = 1
