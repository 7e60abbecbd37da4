"""Errors a command reports in one line (no traceback): the user's input is the problem."""


class UserInputError(Exception):
    """Bad params, a failed data validation, ...: the message says what and where."""
