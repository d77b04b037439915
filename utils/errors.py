"""Errors a user can cause. Scripts turn them into one line on stderr and exit code 2."""


class UserError(Exception):
    """Bad flags, missing files, mismatched checkpoints, data that cannot be found."""


class UnsupportedOperation(UserError):
    """A model uses an operation the channel-dependency graph does not know, or cannot be traced:
    refused by name rather than guessed (importable as pruners.UnsupportedOperation)."""
