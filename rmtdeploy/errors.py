"""The one error type the CLI turns into a one-line message and a non-zero exit."""

from __future__ import annotations


class RmtdeployError(Exception):
    """A user-facing failure: bad input, missing file, impossible target. Never a bug.

    A message about one argument writes ``{param}`` where the argument's name goes and passes
    ``param="keep_macs"``: Python callers read ``keep_macs``, the CLI prints its flag (``--keep-macs``), so
    the library never names a CLI flag and the CLI never rewords the library.
    """

    def __init__(self, message: str, *, param: str | None = None):
        self.template = message
        self.param = param
        super().__init__(self.render())

    def render(self, name_of=None) -> str:
        """The message with ``{param}`` spelled by ``name_of(param)`` (default: the Python name)."""
        if self.param is None:
            return self.template
        name = name_of(self.param) if name_of else self.param
        return self.template.replace("{param}", name)
