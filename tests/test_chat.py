"""The chat client driven through its real input (prompt-toolkit pipe) and output (rich), over MCP."""

from __future__ import annotations

import io
import json
import os
import signal
import sqlite3
import sys
from pathlib import Path

import anyio
import pytest
from mcp import Client
from prompt_toolkit import PromptSession
from prompt_toolkit.document import Document
from prompt_toolkit.input import create_pipe_input
from prompt_toolkit.output import DummyOutput
from rich.console import Console

from agent.chat import ChatCompleter, run_chat
from agent.cli import main
from agent.session import ChatSession, TurnRecord, fit_history
from agent.store import Store
from mcp_server.server import Settings, build_server
from tests.conftest import sample_image

pytestmark = pytest.mark.anyio


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("VLM_AGENT_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture
def photo(tmp_path) -> Path:
    path = tmp_path / "photo.png"
    sample_image(512, 512).save(path)
    return path


class Recorder:
    """Forwards to a real MCP client and keeps every tool call's name and arguments."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.calls: list[tuple[str, dict]] = []
        self.streaming = anyio.Event()
        #: send SIGINT to this process once the first generated text arrives (a Ctrl-C mid-answer)
        self.interrupt_on_text = False

    async def call_tool(self, name, arguments, **kwargs):
        self.calls.append((name, json.loads(json.dumps(arguments))))
        shown = kwargs.get("progress_callback")
        if shown is not None:

            async def progress(done, total, message):
                if total and message and not self.streaming.is_set():
                    self.streaming.set()  # generated text has reached the chat
                    if self.interrupt_on_text:
                        # From inside the call: the answer is still running when the signal lands.
                        os.kill(os.getpid(), signal.SIGINT)
                await shown(done, total, message)

            kwargs["progress_callback"] = progress
        return await self.client.call_tool(name, arguments, **kwargs)

    async def read_resource(self, uri):
        return await self.client.read_resource(uri)


async def chat(checkpoint, tmp_path, lines: list[str], images=(), **kwargs) -> tuple[str, Recorder]:
    server = build_server(Settings(model=str(checkpoint), out_dir=tmp_path / "out"))
    console = Console(file=io.StringIO(), width=120, color_system=None)
    async with Client(server) as client:
        recorder = Recorder(client)
        with create_pipe_input() as pipe:
            pipe.send_text("".join(line + "\n" for line in lines))
            prompt = PromptSession(input=pipe, output=DummyOutput())
            code = await run_chat(
                [str(p) for p in images], console=console, prompt=prompt, client=recorder, **kwargs
            )
    assert code == 0
    return console.file.getvalue(), recorder


async def test_three_questions_detect_budgets_then_resume(tiny_gemma4, tmp_path, home, photo):
    lines = [
        "What is in this picture?",
        "What colour is the square?",
        "What does the sign say?",
        "/detect person car",
        "/budgets",
        "/quit",
    ]
    transcript, recorder = await chat(tiny_gemma4, tmp_path, lines, images=[photo])
    assert "attached @1 photo.png" in transcript
    assert transcript.count("→ describe(") == 2 and "→ ocr(" in transcript
    assert "→ detect(labels=['person', 'car']) by command" in transcript
    assert "visual-token budgets" in transcript and "→ compare_budgets(" in transcript
    assert "detection" in transcript  # the detections table title, or the line saying there are none
    # no empty table under "no detections"
    assert ("no detections of person, car" in transcript) != ("│ x1 " in transcript or "┃ x1 " in transcript)

    tools = [name for name, _ in recorder.calls]
    assert tools.count("chat") == 3  # Gemma 4 chooses first; the tiny model never calls a tool
    # the first call sends the bytes; every later call refers to the image by id
    first, *later = recorder.calls
    assert first[0] == "chat" and first[1]["images"][0].startswith("data:image/png;name=photo.png;base64,")
    sent = [ref for _, args in later for ref in args.get("images", []) + [args.get("image", "img_")]]
    assert sent and all(ref.startswith("img_") for ref in sent)
    describes = [args for name, args in recorder.calls if name == "describe"]
    assert [turn["role"] for turn in describes[1]["history"]] == ["user", "assistant"]
    assert describes[1]["history"][0]["content"] == "What is in this picture?"
    assert describes[1]["history"][0]["images"][0].startswith("img_")

    rows = sqlite3.connect(home / "chat.sqlite3").execute("SELECT COUNT(*) FROM turns").fetchone()[0]
    assert rows == 5

    resumed, _ = await chat(tiny_gemma4, tmp_path, ["/history", "/images", "/quit"], resume=True)
    assert "resumed: 5 earlier turns" in resumed
    for line in ("What is in this picture?", "What colour is the square?", "detect person, car"):
        assert line in resumed
    assert "@1" in resumed and "photo.png" in resumed


async def test_commands_and_errors_stay_in_the_chat(tiny_gemma4, tmp_path, home, photo):
    lines = [
        "/help",
        "/ocr",  # no image yet
        f"/image {photo}",
        "/images",
        "/budget 99",
        "/budget 70",
        "/context",
        "/model",
        "/nonsense",
        "/save trip",
        "/sessions",
        "/forget @1",
        "/reset",
        "/quit",
    ]
    transcript, _ = await chat(tiny_gemma4, tmp_path, lines)
    assert "/describe" in transcript and "Esc then Enter" in transcript
    assert "error: ocr needs an image" in transcript
    assert "attached @1 photo.png" in transcript
    assert "error: Use one of 70 / 140 / 280 / 560 / 1120." in transcript
    assert "budget 70" in transcript
    assert "context: the chat template" in transcript and "chat-template" in transcript  # the policy, as served
    assert "Unknown command /nonsense" in transcript
    assert "saved as 'trip'" in transcript and "trip" in transcript.split("saved as 'trip'")[1]
    assert "forgot @1" in transcript and "new conversation" in transcript


async def test_an_image_the_server_forgot_is_sent_again(tiny_gemma4, tmp_path, home, photo):
    """The chat reads the error's code (unknown_image, in the result's _meta) and re-sends the bytes once,
    as after a server restart."""
    from tools.inputs import ImageStore

    server = build_server(Settings(model=str(tiny_gemma4), out_dir=tmp_path / "out"))

    class Forgetting(Recorder):
        async def call_tool(self, name, arguments, **kwargs):
            if name == "describe" and len(self.calls) == 1:
                server.resident.loader.store = ImageStore()  # every image id the server held is gone
            return await super().call_tool(name, arguments, **kwargs)

    console = Console(file=io.StringIO(), width=120, color_system=None)
    async with Client(server) as client:
        recorder = Forgetting(client)
        with create_pipe_input() as pipe:
            pipe.send_text("/describe one\n/describe two\n/quit\n")
            prompt = PromptSession(input=pipe, output=DummyOutput())
            assert await run_chat([str(photo)], console=console, prompt=prompt, client=recorder) == 0
    transcript = console.file.getvalue()
    sent = [args["images"][0] for name, args in recorder.calls if name == "describe"]
    assert len(sent) == 3 and "error" not in transcript, transcript
    assert sent[0].startswith("data:image/png") and sent[1].startswith("img_") and sent[2] == sent[0]


async def test_trimming_is_announced(tiny_gemma4, tmp_path, home, photo, monkeypatch):
    real_start = ChatSession.start

    async def small_window(self):
        info = await real_start(self)
        info["max_history_turns"] = 2  # one earlier exchange fits
        return info

    monkeypatch.setattr(ChatSession, "start", small_window)
    transcript, recorder = await chat(
        tiny_gemma4, tmp_path, ["/describe one", "/describe two", "/describe three", "/quit"], images=[photo]
    )
    assert transcript.count("dropped 1 older exchange to fit the model's context") == 1  # singular, once
    # The status bar says so at the bottom of the screen; it is not printed again into the scrollback.
    assert "older turn" not in transcript and "context:" not in transcript
    last = [args for name, args in recorder.calls if name == "describe"][-1]
    assert [turn["content"] for turn in last["history"]][0] == "two"


async def test_blip2_history_goes_as_turns_and_the_server_folds_it(tiny_blip2, tmp_path, home, photo):
    transcript, recorder = await chat(
        tiny_blip2, tmp_path, ["/describe What is it?", "/describe Which colour?", "/context", "/quit"], images=[photo],
    )
    first, last = [args for name, args in recorder.calls if name == "describe"]
    # the client never folds: the question goes as it is, the earlier exchange as structured turns
    assert last["prompt"] == "Which colour?"
    assert [(turn["role"], turn["content"]) for turn in last["history"]][0] == ("user", "What is it?")
    assert len(last["history"]) == 2 and first["history"] == []
    # the meter shows the family's policy and its limit, as the model resource advertises them
    assert "blip2 · concat · context:" in transcript and "/ 512 (" in transcript
    assert "kept under 512 tokens by dropping the oldest pairs" in transcript


def record(user: str, images: int = 0) -> TurnRecord:
    return TurnRecord(user=user, images=[f"@{n}" for n in range(images)], tool="describe", arguments={},
                      routed_by="router", answer=f"answer to {user}")


@pytest.mark.parametrize(
    ("images", "max_turns", "max_images", "current", "kept", "dropped"),
    [
        ([0, 0, 0], 64, 16, 1, ["q0", "q1", "q2"], 0),
        ([0, 0, 0], 4, 16, 1, ["q1", "q2"], 1),
        ([5, 5, 5], 64, 15, 1, ["q1", "q2"], 1),
        ([5, 5, 5], 64, 16, 1, ["q0", "q1", "q2"], 0),
        ([5, 5, 5], 64, 16, 7, ["q2"], 2),
        ([0], 1, 16, 1, [], 1),
        ([], 64, 16, 1, [], 0),
    ],
)
def test_fit_history_keeps_the_newest(images, max_turns, max_images, current, kept, dropped):
    records = [record(f"q{n}", count) for n, count in enumerate(images)]
    got, dropped_count = fit_history(records, max_turns, max_images, current)
    assert [r.user for r in got] == kept and dropped_count == dropped


def test_completer_offers_commands_handles_and_paths(tmp_path):
    session = ChatSession.__new__(ChatSession)
    session.conversation = type("C", (), {"images": {"@1": None, "@2": None}})()
    completer = ChatCompleter(session)

    def complete(text: str) -> list[str]:
        return [c.text for c in completer.get_completions(Document(text), None)]

    assert complete("/he") == ["/help"]
    assert "/budget" in complete("/bu") and "/budgets" in complete("/bu")
    assert complete("look at @")[:2] == ["@1", "@2"]
    (tmp_path / "holiday.png").write_bytes(b"x")
    assert complete(f"/image {tmp_path}/hol") == ["iday.png"]


def test_store_survives_a_restart(tmp_path):
    path = tmp_path / "chat.sqlite3"
    store = Store(path)
    conversation = store.new_conversation("tiny")
    store.put_image(conversation, "@1", "/x/photo.png", "img_0123456789abcdef")
    store.add_turn(conversation, 1, {"user": "hello"})
    store.name(conversation, "trip")
    store.close()  # as if the process ended here

    again = Store(path)
    assert again.latest() == conversation == again.find("trip")
    assert again.turns(conversation) == [{"user": "hello"}]
    assert again.images(conversation) == [("@1", "/x/photo.png", "img_0123456789abcdef")]
    assert [(c.name, c.turns) for c in again.conversations()] == [("trip", 1)]


def test_scripted_run_writes_a_transcript(tiny_gemma4, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("VLM_AGENT_HOME", str(tmp_path / "home"))
    sample_image(512, 512).save(tmp_path / "photo.png")
    script = tmp_path / "talk.yaml"
    script.write_text(
        "turns:\n"
        "  - user: What is this?\n    images: [photo.png]\n"
        "  - user: And the colour?\n"
        "  - user: read it\n    tool: ocr\n"
        "  - user: find the cars\n"
    )
    out = tmp_path / "transcript.json"
    code = main(["run", str(script), "--model", str(tiny_gemma4), "--max-new-tokens", "4", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    transcript = json.loads(out.read_text())
    assert transcript["failed"] == 0 and transcript["family"] == "gemma4"
    assert [t["tool"] for t in transcript["turns"]] == ["describe", "describe", "ocr", "detect"]
    assert transcript["turns"][1]["result"]["history_turns"] == 2
    assert transcript["turns"][3]["arguments"] == {"labels": ["car"]}
    assert all(t["ms"] > 0 and t["result"]["timings"]["total_ms"] > 0 for t in transcript["turns"])


def test_scripted_run_fails_when_a_turn_fails(tiny_gemma4, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("VLM_AGENT_HOME", str(tmp_path / "home"))
    script = tmp_path / "talk.jsonl"
    script.write_text(json.dumps({"user": "read", "tool": "ocr", "images": ["missing.png"]}) + "\n")
    code = main(["run", str(script), "--model", str(tiny_gemma4)])
    captured = capsys.readouterr()
    assert code == 1
    assert json.loads(captured.out)["turns"][0]["error"].startswith("No image file at")
    assert "0 turns ok, 1 failed" in captured.err


@pytest.mark.parametrize(
    ("text", "message"),
    [("", "holds no turns"), ("- user: 3\n", "Turn 1, user: should be text, got 3."),
     ("- {user: x, tool: paint}\n",
      'Turn 1, tool: should be \'describe\', \'ocr\', \'detect\', \'compare_budgets\' or \'extract\', got "paint".'),
     (": [", "not valid YAML")],
)
def test_bad_scripts_are_refused_in_one_line(tmp_path, capsys, text, message):
    script = tmp_path / "bad.yaml"
    script.write_text(text)
    assert main(["run", str(script), "--model", "unused"]) == 1
    assert message in capsys.readouterr().err


async def test_chat_over_a_real_stdio_server(tiny_gemma4, tmp_path, home, photo):
    console = Console(file=io.StringIO(), width=120, color_system=None)
    with create_pipe_input() as pipe:
        pipe.send_text("What is it?\n/quit\n")
        prompt = PromptSession(input=pipe, output=DummyOutput())
        code = await run_chat([str(photo)], serve=["--model", str(tiny_gemma4)], console=console, prompt=prompt)
    transcript = console.file.getvalue()
    assert code == 0, transcript
    assert "ready" in transcript and "→ describe(" in transcript
    assert "loading" in (home / "server.log").read_text()  # the child's logs stay out of the chat
    assert sys.executable  # the child ran under this interpreter


async def test_images_named_inside_messages(tiny_gemma4, tmp_path, home, photo):
    other = tmp_path / "other.png"
    sample_image(64, 48).save(other)
    transcript, recorder = await chat(
        tiny_gemma4, tmp_path,
        [f"/describe what differs between @photo.png and @{other}?", "/describe and @1 alone?", "/images", "/quit"],
        images=[photo],
    )
    describes = [args for name, args in recorder.calls if name == "describe"]
    assert len(describes[0]["images"]) == 2  # @photo.png by name, the other by path (attached as @2)
    assert len(describes[1]["images"]) == 1
    assert "@2" in transcript and "other.png" in transcript


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["chat"], []),
        (["chat", "--model", "./tiny"], ["--model", "./tiny"]),
        (["run", "s.yaml", "--dtype", "bfloat16"], ["--dtype", "bfloat16"]),
        (
            ["chat", "--backend", "openai", "--base-url", "http://gpu:8000/v1", "--budgets-supported"],
            ["--backend", "openai", "--base-url", "http://gpu:8000/v1", "--budgets-supported"],
        ),
        (
            ["run", "s.yaml", "--backend", "openai", "--base-url", "http://gpu:8000/v1", "--api-extra-body", '{"top_k": 20}'],
            ["--backend", "openai", "--base-url", "http://gpu:8000/v1", "--api-extra-body", '{"top_k": 20}'],
        ),
    ],
)
def test_chat_hands_its_model_flags_to_the_server_it_starts(argv, expected, monkeypatch):
    from agent.cli import build_parser, serve_args

    monkeypatch.delenv("VLM_AGENT_MODEL", raising=False)
    assert serve_args(build_parser().parse_args(argv)) == expected


async def test_ctrl_c_cancels_the_running_answer_and_keeps_the_chat(tiny_gemma4, tmp_path, home, photo):
    """SIGINT during a turn cancels that turn (the server stops generating); the chat goes on."""
    server = build_server(Settings(model=str(tiny_gemma4), out_dir=tmp_path / "out"))
    console = Console(file=io.StringIO(), width=120, color_system=None)
    async with Client(server) as client:
        recorder = Recorder(client)
        recorder.interrupt_on_text = True  # the first answer's first text brings the Ctrl-C
        with create_pipe_input() as pipe:
            pipe.send_text("/describe a long answer\n/describe again\n/history\n/quit\n")
            prompt = PromptSession(input=pipe, output=DummyOutput())
            code = await run_chat([str(photo)], console=console, prompt=prompt, client=recorder)
    transcript = console.file.getvalue()
    assert code == 0
    assert "cancelled" in transcript
    assert [name for name, _ in recorder.calls].count("describe") == 2
    assert "1 again" in transcript and "a long answer" not in transcript.split("cancelled", 1)[1], transcript


async def test_the_model_chooses_the_tool_through_function_calling(tiny_gemma4, tmp_path, home, photo, monkeypatch):
    """When the model's reply holds a valid call, the chat runs that tool with the model's arguments."""
    from tests.conftest import model_says
    from tools.model import load_model

    backend = load_model(str(tiny_gemma4))
    # Random weights never call a tool: the real model runs, and its tokens decode to a call.
    model_says(monkeypatch, backend, '<|tool_call>call:detect{labels:[<|"|>bicycle<|"|>]}<tool_call|>')
    server = build_server(Settings(model=str(tiny_gemma4), out_dir=tmp_path / "out"), load=lambda *a, **k: backend)
    console = Console(file=io.StringIO(), width=120, color_system=None)
    async with Client(server) as client:
        recorder = Recorder(client)
        with create_pipe_input() as pipe:
            pipe.send_text("Is there something to ride?\n/quit\n")
            prompt = PromptSession(input=pipe, output=DummyOutput())
            assert await run_chat([str(photo)], console=console, prompt=prompt, client=recorder) == 0
    transcript = console.file.getvalue()
    assert [name for name, _ in recorder.calls] == ["chat", "detect"]
    assert recorder.calls[1][1]["labels"] == ["bicycle"]
    assert "→ detect(labels=['bicycle']) chosen by the model" in transcript


async def test_the_prompt_comes_before_the_model(tiny_gemma4, tmp_path, home, photo):
    """Typing, attaching and listing work while the model loads; a message sent meanwhile waits and says so."""
    import threading

    import anyio

    from tools.model import load_model

    release = threading.Event()

    def slow_load(*args, **kwargs):
        release.wait(60)  # the load goes on until the chat has shown it can be used meanwhile
        return load_model(*args, **kwargs)

    server = build_server(Settings(model=str(tiny_gemma4), out_dir=tmp_path / "out"), load=slow_load)
    console = Console(file=io.StringIO(), width=120, color_system=None)

    async def release_once_a_message_waits():
        while "waiting for" not in console.file.getvalue():
            await anyio.sleep(0.02)
        release.set()

    async with Client(server) as client:
        recorder = Recorder(client)
        with create_pipe_input() as pipe:
            pipe.send_text(f"/image {photo}\n/images\n/help\nWhat is it?\n/quit\n")
            prompt = PromptSession(input=pipe, output=DummyOutput())
            async with anyio.create_task_group() as group:
                group.start_soon(release_once_a_message_waits)
                code = await run_chat([], console=console, prompt=prompt, client=recorder, label="tiny")
    transcript = console.file.getvalue()
    assert code == 0, transcript
    assert transcript.count(" ready\n") == 1
    before_ready = transcript.split(" ready\n")[0]
    # all of this happened while the model was still loading
    assert "attached @1 photo.png" in before_ready and "img_" in before_ready and "/budgets [prompt]" in before_ready
    assert "waiting for tiny to load" in before_ready
    assert transcript.index("waiting for tiny to load") < transcript.index("→ describe(")
    assert transcript.rstrip().endswith("bye: 1 turn in this conversation (saved; vlm-agent chat --resume continues it)")


async def test_a_model_that_cannot_load_ends_the_chat_with_its_reason(tmp_path, home, photo):
    server = build_server(Settings(model=str(tmp_path / "no-such-model"), out_dir=tmp_path / "out"))
    console = Console(file=io.StringIO(), width=200, color_system=None)
    async with Client(server) as client:
        with create_pipe_input() as pipe:
            pipe.send_text("What is it?\n")
            prompt = PromptSession(input=pipe, output=DummyOutput())
            code = await run_chat([str(photo)], console=console, prompt=prompt, client=Recorder(client))
    transcript = console.file.getvalue()
    assert code == 1
    assert transcript.count("error:") == 1 and "no-such-model" in transcript


async def test_marks_help_budgets_and_goodbye(tiny_gemma4, tmp_path, home, photo):
    other = tmp_path / "other.png"
    sample_image(64, 48).save(other)
    lines = [
        "/help",
        "What is in @missing.jpg?",  # no such image: refused, not run on photo.png
        f"/image {other}",
        "/budgets @1",
        "/history",
        "/quit",
    ]
    transcript, recorder = await chat(tiny_gemma4, tmp_path, lines, images=[photo])
    # /help keeps the optional arguments that Tab completion shows
    assert "/budgets [prompt]" in transcript and "/forget [@n]" in transcript and "/detect LABEL..." in transcript
    assert "error: No image @missing.jpg" in transcript and "not sent" in transcript
    tools = [name for name, _ in recorder.calls]
    assert tools == ["compare_budgets"]  # the refused message reached no tool
    # the mark chose the image; it is not the prompt
    args = recorder.calls[0][1]
    assert args["prompt"] == "" and args["image"].startswith("data:image/png")
    assert "1 Compare budgets. @1 → compare_budgets" in transcript  # the image is named once
    assert "bye: 1 turn in this conversation" in transcript


def test_keys_typed_while_an_answer_streams_are_not_echoed_over_it():
    """In a real terminal (a pty), keys typed during a turn do not appear on the streaming line; they wait."""
    import os
    import pty
    import select

    from agent.chat import quiet_keys

    main_fd, terminal_fd = pty.openpty()
    try:
        def echoed() -> bytes:
            ready, _, _ = select.select([main_fd], [], [], 0.5)
            return os.read(main_fd, 1024) if ready else b""

        with quiet_keys(terminal_fd):
            os.write(main_fd, b"next question\n")
            assert echoed() == b""
        # the keys were kept for the next prompt to read
        assert os.read(terminal_fd, 1024) == b"next question\n"
        os.write(main_fd, b"x")  # and echo is back once the turn is over
        assert echoed() == b"x"
    finally:
        os.close(main_fd)
        os.close(terminal_fd)


def test_the_real_chat_in_a_terminal_shows_its_prompt_before_the_model(tiny_gemma4, tmp_path, photo):
    """`vlm-agent chat` in a pty: the prompt and the loading bar come first, the model after; /quit says goodbye."""
    import os
    import pty
    import re
    import select
    import subprocess
    import time

    from tests.hardening import VLM_AGENT

    import fcntl
    import struct
    import termios

    main_fd, terminal_fd = pty.openpty()
    fcntl.ioctl(terminal_fd, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))  # a 160x40 screen
    env = {**os.environ, "VLM_AGENT_HOME": str(tmp_path / "home"), "TERM": "xterm-256color", "HF_HUB_OFFLINE": "1",
           "VLM_AGENT_IMAGES": "none"}
    proc = subprocess.Popen([VLM_AGENT, "chat", str(photo), "--model", str(tiny_gemma4)], stdin=terminal_fd,
                            stdout=terminal_fd, stderr=terminal_fd, env=env, close_fds=True, start_new_session=True)
    os.close(terminal_fd)
    screen = b""

    def read_until(pattern: bytes, limit: float = 90) -> bytes:
        nonlocal screen
        deadline = time.monotonic() + limit
        while not re.search(pattern, screen):
            assert time.monotonic() < deadline, f"no {pattern!r} on the screen: {screen[-3000:]!r}"
            ready, _, _ = select.select([main_fd], [], [], 0.5)
            if ready:
                try:
                    chunk = os.read(main_fd, 65536)
                except OSError:  # the chat closed the terminal
                    break
                screen += chunk
                # Answer cursor-position queries as a terminal would: the prompt draws its bottom bar
                # only once it knows how many rows are below it.
                for _ in range(chunk.count(b"\x1b[6n")):
                    os.write(main_fd, b"\x1b[1;1R")
        return screen

    try:
        read_until(rb"you>")
        read_until(rb"loading \S*gemma4 \xe2\x80\xa6 \d+ s")  # the bottom bar, while the server starts
        prompt_at = screen.index(b"you>")
        read_until(rb" ready\r\n")
        assert prompt_at < screen.index(b" ready\r\n")  # the prompt was there before the model
        os.write(main_fd, b"/quit\r")
        read_until(rb"bye")
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        os.close(main_fd)


async def test_ctrl_c_gives_up_a_message_waiting_for_the_model(tiny_gemma4, tmp_path, home, photo):
    import os
    import signal
    import threading

    import anyio

    from tools.model import load_model

    release = threading.Event()

    def slow_load(*args, **kwargs):
        release.wait(60)
        return load_model(*args, **kwargs)

    server = build_server(Settings(model=str(tiny_gemma4), out_dir=tmp_path / "out"), load=slow_load)
    console = Console(file=io.StringIO(), width=120, color_system=None)

    async def interrupt_then_release():
        while "waiting for" not in console.file.getvalue():
            await anyio.sleep(0.02)
        os.kill(os.getpid(), signal.SIGINT)
        while console.file.getvalue().count("waiting for") < 2:
            await anyio.sleep(0.02)
        release.set()

    async with Client(server) as client:
        recorder = Recorder(client)
        with create_pipe_input() as pipe:
            pipe.send_text("/describe first\n/describe second\n/quit\n")
            prompt = PromptSession(input=pipe, output=DummyOutput())
            async with anyio.create_task_group() as group:
                group.start_soon(interrupt_then_release)
                code = await run_chat([str(photo)], console=console, prompt=prompt, client=recorder)
    transcript = console.file.getvalue()
    assert code == 0, transcript
    assert "error: Not sent: you gave up waiting for the model" in transcript
    assert [args["prompt"] for name, args in recorder.calls if name == "describe"] == ["second"]


async def test_ocr_and_detect_options_reach_the_server(tiny_gemma4, tmp_path, home, photo):
    lines = [
        "/ocr --tiles 2",
        "/detect --consensus 280,1120 --verify person",
        "/detect --tiles auto --consensus 280,1120 person",
        "/detect --consensus many person",
        "/detect --consensus ,, person",  # an empty list: refused here, not sent as a plain detect
        "/detect --bogus person",
        "/quit",
    ]
    transcript, recorder = await chat(tiny_gemma4, tmp_path, lines, images=[photo])
    calls = [(name, args) for name, args in recorder.calls if name in ("ocr", "detect")]
    assert calls[0][0] == "ocr" and calls[0][1]["tiles"] == "2"
    assert len(calls[0][1]) == 3 + ("budget" in calls[0][1])  # image, max_new_tokens, tiles
    assert calls[1][1]["consensus"] == [280, 1120] and calls[1][1]["verify"] is True
    assert calls[2][1]["tiles"] == "auto" and len(calls) == 3
    assert "error: consensus runs its own budgets on the whole image; leave budget and tiles unset." in transcript
    assert transcript.count("error: --consensus takes budgets separated by commas, e.g. 280,560,1120.") == 2
    assert "error: Unknown option --bogus" in transcript
