"""The user-error type every command catches, and the one way to print an exception in a line.

A failure the user can fix (a bad config value, a missing file, a model that will not load)
is raised as a UserError subclass whose message is one line; each command's main() prints
it as `error: ...` without a traceback. Anything else is a bug and keeps its traceback.
ConfigError and ModelError live here because several core modules raise them.
"""

from __future__ import annotations


class UserError(Exception):
    """A failure the user can fix; its message is one line meant for them."""


class ConfigError(UserError, ValueError):
    """A bad config value; its message is one line meant for the user."""


class ModelError(UserError, RuntimeError):
    """A model that cannot be loaded; one line for the user."""


def first_line(exc: BaseException) -> str:
    """The first non-blank line of an exception's message, else its type name.

    For one-line `error:` messages: some messages are empty (datasets raises a bare
    StopIteration on an empty file) or start with a newline, and must not crash the report.
    """
    for line in str(exc).splitlines():
        if line.strip():
            return line.strip()
    return type(exc).__name__


def typed_line(exc: BaseException) -> str:
    """`Type: first line`, or just `Type` for an empty message: for errors that are not UserErrors."""
    line, name = first_line(exc), type(exc).__name__
    return name if line == name else f"{name}: {line}"
