"""The errors a person acts on: each says what went wrong and what to do next, in one line, and carries the exit
code the command line ends with (2: a usage, input or configuration error, nothing was done; 1: a check failed or
a service did not answer). Pure: importing it imports nothing else of the package.
"""

from __future__ import annotations


class FlockError(Exception):
    """Base of the errors the command line prints as one line (`flock: <label><message> (<hint>)`), never a
    traceback. Subclasses set the attributes; the command line reads them, never a class name."""

    exit_code: int = 1
    hint: str = ""  # the next step, when the message itself does not say it
    label: str = ""  # what kind of error, said before the message ("configuration error: ")

    def __init__(self, message: str = "", hint: str | None = None):
        super().__init__(message)
        if hint is not None:
            self.hint = hint

    def line(self) -> str:
        """The one line the command line prints (after `flock: `)."""
        text = str(self) or type(self).__name__
        return self.label + (f"{text} ({self.hint})" if self.hint and self.hint not in text else text)


class UsageError(FlockError):
    """The command was given something it cannot use (a file, an argument); nothing was done."""

    exit_code = 2


class ConfigError(UsageError, ValueError):
    """The configuration (environment, settings, the competitions document) is invalid; the message names the
    field and what to change (exit 2, before any work)."""

    label = "configuration error: "


class NotWritable(UsageError):
    """A file or folder the command must write (the home, its store, its chain) is read-only or not this user's;
    nothing was done."""

    hint = "make it writable by this user, or point FLOCK_HOME at a folder that is"


class DataError(UsageError, ValueError):
    """Untrusted input (a row, a commitment, a file) breaks a rule; the message is the recorded reason (exit 2 when
    it reaches the command line: the input cannot be used)."""


class ValidatorFault(FlockError, RuntimeError):
    """The validator's own environment failed (the device, the base model, the eval set, a library): the stage stops
    with an operator error and nothing is recorded against any miner. The message says what to fix."""


class ResultsKept(FlockError, RuntimeError):
    """A run would replace an epoch's recorded results (scores, a corpus release) with less; the recorded ones are
    kept. The message says how to replace them anyway."""
