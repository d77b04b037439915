"""Errors a user can cause. Scripts turn them into one line on stderr and exit code 2."""


class UserError(Exception):
    """Bad flags, missing files, mismatched checkpoints, data that cannot be found."""
