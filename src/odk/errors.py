"""User-facing errors: one clear line, no traceback.

Every stage and command catches `OdkError` at its entry point and prints its message, so a
bad setting or a bad input file reads as a sentence, not as a stack trace. `redact` keeps the
credentials a URL may carry out of every line shown.
"""

from __future__ import annotations

import re
import urllib.parse


class OdkError(Exception):
    """A problem the user can fix: a bad setting, a missing or corrupt file."""


class ConfigError(OdkError, ValueError):
    """A setting has a wrong type, an unknown name or a value outside what is allowed."""


class DataError(OdkError):
    """A dataset archive or split is missing, truncated, corrupt or of the wrong format."""


# `scheme://userinfo@`: the user name may itself be a token (https://<token>@host), so all of it
# goes; and query values whose names look like credentials (presigned URLs, API keys).
_USERINFO = re.compile(r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.-]*://)[^/\s@]+@")
_SECRET_NAME = r"[^=&#\s]*(?:token|sig|secret|key|pass|pwd|auth|credential|session)[^=&#\s]*"
_SECRET_QUERY = re.compile(rf"(?P<name>[?&;]{_SECRET_NAME}=)[^&#\s]+", re.IGNORECASE)
HIDDEN = "***"


def redact(text: str, url: str | None = None) -> str:
    """`text` with the credentials of every URL in it replaced by `***`.

    Args:
        text: A message that may quote URLs.
        url: A URL whose secrets (user name, password, credential-like query values) are
            also removed where they appear on their own, e.g. in a library's error message
            that quotes only part of the URL.
    """
    text = _USERINFO.sub(rf"\g<scheme>{HIDDEN}@", text)
    text = _SECRET_QUERY.sub(rf"\g<name>{HIDDEN}", text)
    if url is not None:
        parts = urllib.parse.urlsplit(url)
        secrets = [parts.username or "", parts.password or ""]
        query = urllib.parse.parse_qsl(parts.query)
        secrets += [v for k, v in query if re.fullmatch(_SECRET_NAME, k, re.IGNORECASE)]
        for secret in sorted((s for s in secrets if len(s) >= 3), key=len, reverse=True):
            text = text.replace(secret, HIDDEN)  # shorter ones would garble the message
    return text
