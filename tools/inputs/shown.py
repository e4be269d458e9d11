"""How an image reference is quoted in a message: one line, short, without credentials."""

from __future__ import annotations

import re
from urllib.parse import unquote

MiB = 1024 * 1024
#: the longest reference a message quotes
SHOW_MAX = 60


def one_line(text: str) -> str:
    # One-line messages: a newline or control character in a ref would split them.
    return "".join(c if c.isprintable() else "?" for c in text)


def quoted(ref: str) -> str:
    """A user reference quoted for a message: one line, at most ~60 characters. A long one keeps
    its start (the scheme, the top folders) and its end (the file name), where people look."""
    text = one_line(ref)
    if len(text) > SHOW_MAX:
        head = SHOW_MAX // 3
        text = text[:head] + "…" + text[len(text) - (SHOW_MAX - head - 1):]
    return f"'{text}'"


def quoted_url(url: str) -> str:
    # Credentials in the URL must not be echoed back.
    return quoted(re.sub(r"^([A-Za-z][A-Za-z0-9+.-]*://)[^/?#@]*@", r"\1", url))


def quoted_data_uri(uri: str) -> str:
    """A data: URI as a message names it: by the file name its sender gave in a ``name=`` parameter
    (``data:video/mp4;name=clip.mp4;base64,...``, as the chat sends its files), else as "the data: URI"."""
    header = uri.partition(",")[0]
    for part in header[5:].split(";")[1:]:
        key, _, value = part.strip().partition("=")
        if key.lower() == "name" and value.strip():
            return quoted(unquote(value.strip()))
    return "the data: URI"


def capital(text: str) -> str:
    return text[:1].upper() + text[1:] if text[:1].isalpha() else text


def size_words(n: int) -> str:
    if n >= MiB:
        return f"{n / MiB:.4g} MiB"
    if n >= 1024:
        return f"{n / 1024:.4g} KiB"
    return f"{n}-byte"
