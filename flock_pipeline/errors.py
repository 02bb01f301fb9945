"""The errors a person acts on: each says what went wrong and what to do next, in one line, and carries the exit
code the command line ends with (2: a usage, input or configuration error, nothing was done; 1: a check failed or
a service did not answer). Pure: importing it imports nothing else of the package.
"""

from __future__ import annotations


class FlockError(Exception):
    """Base of the errors the command line prints as one line (`flock: <message> (<hint>)`), never a traceback."""

    exit_code: int = 1
    hint: str = ""  # the next step, when the message itself does not say it

    def __init__(self, message: str = "", hint: str | None = None):
        super().__init__(message)
        if hint is not None:
            self.hint = hint

    def line(self) -> str:
        """The one line the command line prints."""
        text = str(self) or type(self).__name__
        return f"{text} ({self.hint})" if self.hint and self.hint not in text else text


class UsageError(FlockError):
    """The command was given something it cannot use (a file, an argument); nothing was done."""

    exit_code = 2
