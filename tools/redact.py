"""Secrets in URLs never reach a log: user:password and query strings are replaced.

Libraries log URLs as they fetch them (httpx at INFO, with ``-v``); a presigned link's
query or a URL's user:password are credentials. The filter rewrites every record's
message, whoever logged it.
"""

from __future__ import annotations

import logging
import re

_URL_RE = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)([^\s/?#@'\"<>]*@)?([^\s?#'\"<>]*)(\?[^\s#'\"<>]*)?(#[^\s'\"<>]*)?")


def redact_urls(text: str) -> str:
    """``text`` with each URL's user info and query (and fragment) replaced by ``***``."""

    def one(match: re.Match[str]) -> str:
        scheme, userinfo, rest, query, fragment = match.groups()
        return scheme + ("***@" if userinfo else "") + rest + ("?***" if query else "") + ("#***" if fragment else "")

    return _URL_RE.sub(one, text)


class RedactUrls(logging.Filter):
    """A handler filter: the record's formatted message, redacted, replaces its message and arguments."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken format string is the logging module's to report
            return True
        redacted = redact_urls(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True
