"""`vlm-agent chat` in a pseudo-terminal: keys go in as a person types them, the raw bytes come out.

The pty is the chat's controlling terminal, so Ctrl-C typed while it is in line mode is a
real SIGINT, and what the chat writes is read byte for byte: a test can look for escape
sequences that a rendered screen would hide.
"""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import struct
import subprocess
import termios
import time
from collections.abc import Sequence
from pathlib import Path

from tests.hardening import VLM_AGENT

#: sequences a terminal acts on that no string from outside may produce
FORBIDDEN = {
    "OSC 52 (clipboard write)": b"\x1b]52",
    "ESC [2J (clear screen)": b"\x1b[2J",
    "OSC 8 (hyperlink)": b"\x1b]8;",
    "NUL": b"\x00",
    "C1 CSI": "\x9b".encode(),
    "bidi override": "\u202e".encode(),
}


#: control sequences (colours, cursor moves, modes): the text a person sees is what is left
CSI_RE = re.compile(rb"\x1b\[[0-?]*[ -/]*[@-~]")


def own_terminal() -> None:
    """In the child: a new session whose controlling terminal is the pty on stdin."""
    os.setsid()
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


class PtyChat:
    def __init__(self, args: Sequence[str], home: Path, env: dict[str, str] | None = None) -> None:
        self.fd, terminal = pty.openpty()
        fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))  # a 160x40 screen
        environment = {
            **os.environ, "VLM_AGENT_HOME": str(home), "TERM": "xterm-256color", "HF_HUB_OFFLINE": "1",
            "VLM_AGENT_IMAGES": "none", **(env or {}),
        }
        self.proc = subprocess.Popen(
            [VLM_AGENT, "chat", *args], stdin=terminal, stdout=terminal, stderr=terminal, env=environment,
            close_fds=True, preexec_fn=own_terminal,
        )
        os.close(terminal)
        self.screen = b""
        self.closed = False

    def _read(self, timeout: float) -> None:
        if self.closed:
            time.sleep(min(timeout, 0.05))
            return
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if not ready:
            return
        try:
            chunk = os.read(self.fd, 65536)
        except OSError:  # every holder of the terminal's other end has closed it
            chunk = b""
        if not chunk:
            self.closed = True
            return
        self.screen += chunk
        # Answer cursor-position queries as a terminal would: the prompt draws its bottom bar
        # only once it knows how many rows are below it.
        for _ in range(chunk.count(b"\x1b[6n")):
            os.write(self.fd, b"\x1b[1;1R")

    def text(self, start: int = 0) -> bytes:
        """What the chat wrote from byte ``start`` on, its colours and cursor moves left out."""
        return CSI_RE.sub(b"", self.screen[start:])

    def read_until(self, pattern: bytes, limit: float = 60, start: int = 0) -> bytes:
        """Read until ``pattern`` is in the text (written after byte ``start``); fail with the screen if it never comes.

        Returns the text up to the end of the match.
        """
        deadline = time.monotonic() + limit
        compiled = re.compile(pattern, re.S)
        while True:
            gone = self.closed or self.proc.poll() is not None
            if gone:
                self._read(0.2)  # what is still in the pty
            written = self.text(start)
            found = compiled.search(written)
            if found:
                return written[: found.end()]
            assert not gone, f"the chat ended (status {self.proc.poll()}) without {pattern!r}: {self.tail()!r}"
            assert time.monotonic() < deadline, f"no {pattern!r} on the screen: {self.tail()!r}"
            self._read(0.2)

    def type(self, keys: str | bytes) -> int:
        """Send keys; returns where the screen stood, for looking at what came after."""
        mark = len(self.screen)
        os.write(self.fd, keys.encode() if isinstance(keys, str) else keys)
        return mark

    def line(self, text: str, expect: bytes, limit: float = 60) -> bytes:
        """Type a line and Enter, wait for ``expect``; returns the text the chat wrote meanwhile."""
        return self.read_until(expect, limit, start=self.type(text + "\r"))

    def tail(self, size: int = 3000) -> bytes:
        return self.text(max(0, len(self.screen) - 4 * size))[-size:]

    def wait(self, limit: float) -> int | None:
        """The exit status, or None if the chat is still running after ``limit`` seconds."""
        deadline = time.monotonic() + limit
        while self.proc.poll() is None and time.monotonic() < deadline:
            self._read(0.1)
        if self.proc.poll() is not None:
            while not self.closed:
                self._read(0.2)
        return self.proc.poll()

    def forbidden(self) -> list[str]:
        """The terminal-driving sequences the chat wrote."""
        return [name for name, raw in FORBIDDEN.items() if raw in self.screen]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        os.close(self.fd)

    def __enter__(self) -> PtyChat:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
