"""The one error type the CLI turns into a one-line message and a non-zero exit."""


class RmtdeployError(Exception):
    """A user-facing failure: bad input, missing file, impossible target. Never a bug."""
