"""The terminal-safe path (agent/terminal.py): what it removes, what it keeps, and how links are shown."""

from __future__ import annotations

import io

import pytest
from rich.console import Console
from rich.table import Table

from agent.terminal import TerminalConsole, clean, escape, markdown, text


@pytest.mark.parametrize(
    "raw, shown",
    [
        ("plain text, ünïcode 漢字 ✓", "plain text, ünïcode 漢字 ✓"),
        ("tab\tand\nline", "tab\tand\nline"),
        ("a\r\nb\rc", "a\nb\nc"),  # a carriage return would let text overwrite its own line
        ("a\x00b", "ab"),
        ("x\x1b]52;c;cGF5bG9hZA==\x07y", "xy"),  # OSC 52 clipboard write, BEL-terminated
        ("x\x1b]52;c;cGF5bG9hZA==\x1b\\y", "xy"),  # ... ST-terminated
        ("x\x1b[2Jy\x1b[31;1mz\x1b[0m", "xyz"),  # erase screen, colours
        ("\x1b]8;;http://evil\x1b\\click\x1b]8;;\x1b\\", "click"),  # OSC 8 link: the text stays
        ("x\x1bcy", "xy"),  # ESC c resets the terminal
        ("x\x9b2Jy", "xy"),  # 8-bit CSI
        ("x\x9d52;c;AA\x9cy", "xy"),  # 8-bit OSC with 8-bit ST
        ("x\x1bP+q544e\x1b\\y", "xy"),  # DCS (a terminal query)
        ("x\x1b_Ga=T;AAAA\x1b\\y", "xy"),  # APC (kitty graphics)
        ("x\x1b]52;c;unterminated", "x]52;c;unterminated"),  # no terminator: only the ESC goes
        ("abc\u202edcba\u202c", "abcdcba"),  # bidi override and its end
        ("\u2066isolate\u2069", "isolate"),
        ("x\x85y\x07z\x7f", "xyz"),  # NEL, BEL, DEL
        ("lone \ud800 surrogate", "lone \ufffd surrogate"),
    ],
    ids=lambda value: repr(value)[:30],
)
def test_clean_leaves_only_text_a_terminal_shows(raw, shown):
    assert clean(raw) == shown


@pytest.mark.parametrize("raw", ["[/x]", "[link=mailto:a@b.c]x.png", "see [bold]this[/bold]", "trailing \\"])
def test_escaped_markup_prints_as_written(raw):
    console = Console(file=io.StringIO(), width=200, color_system=None)
    console.print(f"[dim]{escape(raw)}[/]")
    console.print(text(raw))
    assert console.file.getvalue() == f"{raw}\n{raw}\n"


def test_a_markdown_link_shows_the_address_it_opens():
    console = Console(file=io.StringIO(), width=200, force_terminal=True, color_system="truecolor")
    console.print(markdown("See [https://bank.example/login](http://127.0.0.1:9/phish)"))
    shown = console.file.getvalue()
    assert "https://bank.example/login" in shown and "http://127.0.0.1:9/phish" in shown
    assert "\x1b]8;" not in shown  # no live link


def test_the_terminal_console_cleans_what_was_built_without_clean():
    """Text, tables and plain strings that skipped ``clean`` are cleaned on their way out."""
    from rich.text import Text

    console = TerminalConsole(file=io.StringIO(), width=200, force_terminal=True, color_system="truecolor")
    table = Table("label")
    table.add_row(Text("cat\x1b]52;c;AA\x07\u202e"))
    console.print(table)
    console.print("plain \x1b[2J string", markup=False)
    console.print(Text("text \x00\x9b31m"), style="bold")
    written = console.file.getvalue()
    for raw in ("\x1b]52", "\x1b[2J", "\x00", "\x9b", "\u202e"):
        assert raw not in written
    assert "cat" in written and "plain  string" in written
