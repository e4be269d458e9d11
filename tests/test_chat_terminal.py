"""The chat's terminal through its real door: the `vlm-agent chat` binary in a pty, its raw bytes read back.

A hostile `--server` (tests/hostile_server.py, on a loopback port) sends picture names that climb
out of folders, pictures that are no images, and text full of escape sequences and rich markup;
a person types markup and attaches files whose names hold escape sequences. The chat must write
nowhere but its own names, never crash, and never pass a sequence the terminal would act on.
"""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import sample_image
from tests.hardening import free_port, record
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
    """A picture name in a result that climbs out of the folder; a shell script, and no base64 at all, as a picture."""
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
    record(class_17=1)


def test_a_result_of_the_wrong_shape_ends_the_turn_in_a_line(hostile, tmp_path, photo):
    """A detection without its label, and no structured result at all: one error line each, and the chat goes on."""
    with PtyChat(["--server", hostile, str(photo)], tmp_path / "home") as chat:
        ready(chat)
        said = b" ".join(chat.line("/detect shapeless", rb"same\s+version\?").split())
        assert b"error: The server's detect result is not one this chat can read (detections/0/label: Field" in said
        said = b" ".join(chat.line("/detect nothing", rb"same\s+version\?").split())
        assert b"it sent no structured result" in said
        chat.line("/detect cat", rb"picture: ")  # and the next turn works
        chat.line("/quit", rb"bye")
        assert chat.wait(30) == 0, chat.tail()
    assert b"Traceback" not in chat.screen and b"KeyError" not in chat.screen
    record(class_17=1)


def test_markup_typed_or_sent_never_crashes_the_chat(hostile, tmp_path, photo):
    """`[/x]` typed in commands and messages, chosen by the model as a label, and in a server's notes and errors."""
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
    record(class_17=1)


def test_nothing_from_a_server_or_a_file_name_drives_the_terminal(hostile, tmp_path, photo):
    """Escape sequences in model text, progress, notes, errors, model info and file names; a link that lies."""
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
    record(class_17=1)


class HeldEngine:
    """An OpenAI-compatible engine that takes connections and answers none until told: a load that never ends.

    The chat's server child asks it for its model list while loading (``--backend openai``), so
    the load is held for as long as the test likes, and the held connection shows whether that
    child is still alive.
    """

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}/v1"
        self.connections: list[socket.socket] = []
        self.answered = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            self.connections.append(connection)

    def wait_for_request(self, limit: float = 120) -> None:
        deadline = time.monotonic() + limit
        while not self.connections:
            assert time.monotonic() < deadline, "the server child never asked the engine for its models"
            time.sleep(0.1)

    def answer(self, status: int = 401) -> None:
        """Answer every held request with an error: the load fails."""
        self.answered = True
        body = b'{"error": {"message": "bad key"}}'
        for connection in self.connections:
            connection.sendall(
                f"HTTP/1.1 {status} Refused\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n".encode() + body
            )

    def hung_up(self, limit: float = 10) -> bool:
        """Whether whoever held the first connection has closed it (a process that ends closes its sockets)."""
        connection = self.connections[0]
        connection.settimeout(limit)
        try:
            while connection.recv(65536):
                pass
        except TimeoutError:
            return False
        except OSError:
            pass
        return True

    def __enter__(self) -> HeldEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.listener.close()
        for connection in self.connections:
            connection.close()


def loading_chat(engine: HeldEngine, tmp_path: Path, *images: Path) -> PtyChat:
    """The chat, its server child loading a model from an engine that does not answer."""
    args = ["--backend", "openai", "--base-url", engine.url, "--api-timeout", "600", "--model", "held-model"]
    chat = PtyChat([*args, *map(str, images)], tmp_path / "home")
    chat.read_until(rb"you>")
    engine.wait_for_request()
    return chat


@pytest.mark.parametrize("keys", ["/quit\r", "\x04"], ids=["/quit", "Ctrl-D"])
def test_leaving_during_the_load_ends_the_chat_and_its_server_at_once(tmp_path, keys):
    """/quit and Ctrl-D during the load leave at once and end the server child; an exit status of 1 always says why."""
    with HeldEngine() as engine, loading_chat(engine, tmp_path) as chat:
        chat.type(keys)
        status = chat.wait(20)
        if status is None:  # still waiting for the load: let it fail, to see how the chat ends then
            engine.answer(401)
            status = chat.wait(60)
        errors = re.findall(rb"error: [^\r\n]+", chat.text())
        assert status == 0 or errors, f"exit {status} and no reason: {chat.tail()!r}"
        assert not engine.answered, "the chat waited for the load before it left"
        assert status == 0 and b"bye" in chat.text(), chat.tail()
        assert engine.hung_up(), "the server child outlived the chat"
    record(class_2=1)


def test_a_missing_image_is_refused_before_the_model_loads(tmp_path, photo):
    """An @mark that names no file needs no model: it is refused while the load goes on."""
    with HeldEngine() as engine, loading_chat(engine, tmp_path, photo) as chat:
        said = chat.line("what is in @missing.png", rb"error: No image @missing\.png|waiting for", limit=30)
        assert b"error: No image @missing.png" in said and b"waiting for" not in said
        said = chat.line("/describe @missing.png", rb"error: No image @missing\.png|waiting for", limit=30)
        assert b"error: No image @missing.png" in said and b"waiting for" not in said
        assert not engine.answered
    record(class_2=1)


def test_keys_typed_while_a_message_waits_for_the_load_stay_off_the_spinner(tmp_path, photo):
    """Keys typed while a message waits for the model are not echoed into the spinner's line."""
    with HeldEngine() as engine, loading_chat(engine, tmp_path, photo) as chat:
        chat.line("/describe what is it", rb"waiting for held-model to load")
        mark = chat.type("xyzzy")
        time.sleep(0.5)  # the terminal echoes keys as it takes them, if echo is on
        engine.answer(401)  # the load fails: the waiting message ends the chat with the reason
        assert chat.wait(60) == 1
        assert re.search(rb"error: \S", chat.text(mark)), chat.tail()
        assert b"xyzzy" not in chat.text(mark), chat.tail()
    record(class_2=1)
