"""What reaches a terminal is data: it is shown, it never drives the terminal.

Model text, file names, URLs, notes, progress messages and errors come from people,
servers, engines and models. Printed raw, an escape sequence in one of them can write the
clipboard (OSC 52), clear the screen, make a link that opens somewhere else (OSC 8) or
turn the text around (bidirectional overrides); put into rich markup, ``[/x]`` raises
``MarkupError`` and ``[link=...]`` makes a live link. Here such text is made inert:
escape sequences and control characters are removed, markup is escaped, and a Markdown
link shows the address it opens beside its text.

``TerminalConsole`` is the front ends' console: every string it prints is cleaned, and
every piece of text it renders (tables, Markdown, live displays) is cleaned again on its
way out, so a string that missed ``clean`` still cannot reach the terminal raw.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from rich.console import Console, ConsoleOptions, RenderableType
from rich.markup import escape as escape_markup
from rich.segment import Segment
from rich.text import Text

from tools.text import clean_model_text

if TYPE_CHECKING:
    from rich.markdown import Markdown

#: whole escape sequences, so their arguments go too: CSI (cursor, erase, colours); OSC, DCS,
#: SOS, PM and APC strings up to their terminator (an unterminated one loses only its ESC);
#: two-character escapes (ESC c resets the terminal), not the introducers above; and the 8-bit forms
#: of CSI and the strings
_SEQUENCE_RE = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]"
    r"|\x1b[\]PX^_][^\x1b\x07\x9c]*(?:\x07|\x1b\\|\x9c)"
    r"|\x1b[ -/]*[0-OQ-WYZ\\`a-~]"
    r"|\x9b[0-?]*[ -/]*[@-~]"
    r"|[\x90\x98\x9d\x9e\x9f][^\x1b\x07\x9c]*(?:\x07|\x1b\\|\x9c)"
)
#: bidirectional embeddings, overrides and isolates: they reorder what follows them on screen
_BIDI_RE = re.compile("[\u202a-\u202e\u2066-\u2069]")
#: anything ``clean`` would change: controls (but tab and line feed), DEL, C1, bidi controls, surrogates
_UNSAFE_RE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\ud800-\udfff\ufffe\uffff]")


def clean(value: object) -> str:
    """``value`` as text that cannot drive a terminal: no escape sequences, controls or bidi overrides.

    Tabs and line feeds stay; a carriage return becomes a line feed (it would let text
    overwrite the start of its own line).
    """
    text = str(value)
    if not _UNSAFE_RE.search(text):
        return text
    text = _SEQUENCE_RE.sub("", text)
    return _BIDI_RE.sub("", clean_model_text(text))


def escape(value: object) -> str:
    """``value`` cleaned and escaped, to put inside a rich markup string."""
    return escape_markup(clean(value))


def text(value: object, style: str = "") -> Text:
    """``value`` cleaned, as rich text that no markup in it can change."""
    return Text(clean(value), style=style)


def markdown(value: object) -> Markdown:
    """Markdown of ``value`` cleaned, its links shown as "text (address)" and never live.

    A live link shows its text and opens its address: ``[https://bank.example](http://elsewhere)``
    would read as one site and open another.
    """
    from rich.markdown import Markdown  # a Markdown parser: only front ends that show answers need it

    return Markdown(clean(value), hyperlinks=False)


class TerminalConsole(Console):
    """A console for a terminal that strings from outside reach: none of them can drive it."""

    def print(self, *objects: Any, **kwargs: Any) -> None:
        super().print(*(clean(o) if isinstance(o, str) else o for o in objects), **kwargs)

    def render(self, renderable: RenderableType, options: ConsoleOptions | None = None) -> Iterable[Segment]:
        # The last line of defence: every segment's text, whatever built it. Control segments
        # are rich's own cursor moves, drawn from codes, not from text.
        for segment in super().render(renderable, options):
            if segment.control or not _UNSAFE_RE.search(segment.text):
                yield segment
            else:
                yield Segment(clean(segment.text), segment.style, segment.control)
