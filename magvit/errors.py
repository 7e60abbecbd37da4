"""Errors a command reports in one line (no traceback): the input, or the place the output
goes, is the problem, not the code."""


class UserInputError(Exception):
    """Bad params, a failed data validation, ...: the message says what and where.
    `magvit.cli` ends the command with `exit_code`."""

    exit_code = 1


class UsageError(UserInputError):
    """A bad command-line argument (a value out of range, a missing or unusable file).

    Like argparse's own errors it ends the command with exit status 2, which tells a
    caller that the command line, not the data or the run, was wrong.
    """

    exit_code = 2


class OutputError(UserInputError):
    """An output could not be written (disk full, file too large, read-only folder): the
    message names the file. Atomic writes leave nothing partial behind, so the same command
    run again once there is room completes."""
