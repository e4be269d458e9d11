"""The chat's terminal through its real door: the `vlm-agent chat` binary in a pty, its raw bytes read back.

A hostile `--server` (tests/hostile_server.py, on a loopback port) sends picture names that climb
out of folders, pictures that are no images, and text full of escape sequences and rich markup;
a person types markup and attaches files whose names hold escape sequences. The chat must write
nowhere but its own names, never crash, and never pass a sequence the terminal would act on.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import sample_image
from tests.hardening import free_port
from tests.hostile_server import NASTY
from tests.pty_chat import PtyChat

ROOT = Path(__file__).resolve().parents[1]
#: the names the chat gives its pictures (and the server its own)
PICTURE_NAME = re.compile(r"[a-z_]+-[0-9a-f]{12}\.png")


@pytest.fixture(scope="module")
def hostile() -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "tests.hostile_server", str(port)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/mcp"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(url, timeout=1)
                break
            except httpx.TransportError:
                assert proc.poll() is None and time.monotonic() < deadline, "the hostile server did not start"
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture
def photo(tmp_path) -> Path:
    path = tmp_path / "photo.png"
    sample_image(64, 48).save(path)
    return path


def ready(chat: PtyChat) -> None:
    chat.read_until(rb"you>")
    chat.read_until(rb" ready\r\n")


def test_a_hostile_server_writes_no_file_the_chat_did_not_name(hostile, tmp_path, photo):
    """Issue 20 item 3: a picture name from a result climbing out of the folder, a shell script as a picture."""
    home = tmp_path / "home"
    with PtyChat(["--server", hostile, str(photo)], home) as chat:
        ready(chat)
        chat.line("/detect cat", rb"picture: ")
        assert not (tmp_path / "outside").exists()
        said = chat.line("/detect notpng", rb"It was not saved\.")
        assert b"is not a PNG, JPEG" in said  # the bytes were judged before any decoding
        said = chat.line("/detect badb64", rb"It was not saved\.")
        assert b"is empty" in said
        chat.line("/quit", rb"bye")
        assert chat.wait(30) == 0, chat.tail()
    assert not (tmp_path / "outside").exists()
    saved = sorted(p.name for p in (home / "outputs").iterdir())
    assert len(saved) == 1 and PICTURE_NAME.fullmatch(saved[0]), saved  # one picture, a name of the chat's own
    assert b"Traceback" not in chat.screen


def test_markup_typed_or_sent_never_crashes_the_chat(hostile, tmp_path, photo):
    """Issue 20 item 10: `[/x]` typed in commands and messages, chosen by the model, and in a server's notes."""
    with PtyChat(["--server", hostile, str(photo)], tmp_path / "home") as chat:
        ready(chat)
        assert b"[/x]" in chat.line("/detect [/x]", rb"picture: ")
        chat.line("/save [/x]", rb"saved as '\[/x\]'")
        chat.line("what is @[/x]", rb"error: No image @\[/x\]")
        chat.line("find it", rb"chosen by the model.*picture: ")  # the model's detect, label [/x]
        chat.line("/describe tell me", rb"note: see \[/x\]")
        chat.line("/ocr", rb"error: Refused \[/x\]")
        chat.line("/load [/x]", rb"loaded '\[/x\]'")
        for command in ("/model", "/context", "/history", "/images", "/sessions"):
            chat.line(command, rb"you>")
        chat.line("/quit", rb"bye")
        assert chat.wait(30) == 0, chat.tail()
    assert b"MarkupError" not in chat.screen and b"Traceback" not in chat.screen


def test_nothing_from_a_server_or_a_file_name_drives_the_terminal(hostile, tmp_path, photo):
    """Issue 20 item 11: escape sequences in model text, progress, notes, errors, model info and file names."""
    clipboard = tmp_path / "a\x1b]52;c;cGF5bG9hZA==\x07b\x1b[2J.png"
    link = tmp_path / "[link=mailto:a@b.c]x.png"
    sample_image(64, 48).save(clipboard)
    sample_image(48, 64).save(link)
    with PtyChat(["--server", hostile, str(clipboard)], tmp_path / "home") as chat:
        ready(chat)
        chat.line(f"/image {link}", rb"attached @2 \[link=mailto:a@b\.c\]x\.png")
        said = chat.line("/describe tell me", rb"note: see")
        # the link's text and the address it really opens are both shown
        assert b"https://bank.example/login" in said and b"http://127.0.0.1:9/phish" in said
        chat.line("find it", rb"picture: ")
        chat.line("/ocr", rb"error: Refused")
        for command in ("/model", "/context", "/history", "/images", "/sessions"):
            chat.line(command, rb"you>")
        chat.line("/quit", rb"bye")
        assert chat.wait(30) == 0, chat.tail()
    assert chat.forbidden() == [], chat.forbidden()
    assert NASTY.encode() not in chat.screen
