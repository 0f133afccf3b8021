"""User-facing errors: one clear line, no traceback.

Every stage and command catches `OdkError` at its entry point and prints its message, so a
bad setting or a bad input file reads as a sentence, not as a stack trace.
"""

from __future__ import annotations


class OdkError(Exception):
    """A problem the user can fix: a bad setting, a missing or corrupt file."""


class ConfigError(OdkError, ValueError):
    """A setting has a wrong type, an unknown name or a value outside what is allowed."""


class DataError(OdkError):
    """A dataset archive or split is missing, truncated, corrupt or of the wrong format."""
