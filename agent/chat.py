"""`vlm-agent chat`: the terminal conversation (prompt-toolkit input, rich output) over MCP.

The client starts `vlm-agent serve` as a child process over stdio (or connects to a
running HTTP server) and never imports the model. Everything it decides lives in
``agent.session``; this module reads keys, runs commands and draws results.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

from mcp import Client, StdioServerParameters
from prompt_toolkit import PromptSession
from prompt_toolkit.application import run_in_terminal
from prompt_toolkit.completion import Completer, Completion, PathCompleter
from prompt_toolkit.document import Document
from prompt_toolkit.formatted_text import ANSI
from prompt_toolkit.history import FileHistory, History, InMemoryHistory
from prompt_toolkit.key_binding import KeyBindings
from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

from . import render
from .files import FileProblem, read_capped_text
from .session import HANDLE_RE, Attached, ChatError, ChatSession, TurnRecord, plural, without_handles
from .store import Store
from .terminal import TerminalConsole, clean, escape, markdown
from .terminal import text as plain
from tools.errors import ImageError
from tools.inputs import Limits, decode_image
from tools.outputs import OutputLimits, prune, write_atomic
from tools.paths import data_home, outputs_dir

COMMANDS: dict[str, str] = {
    "/help": "this list",
    "/image": "PATH|URL: attach an image (it gets a handle @1, @2, ...)",
    "/images": "the attached images and their handles",
    "/forget": "[@n]: drop one image, or all",
    "/describe": "[prompt]: describe the current image(s) or ask about them",
    "/ocr": "[--tiles auto|N]: read the text of the current image",
    "/detect": "LABEL... [--tiles auto|N] [--consensus 280,560,1120] [--verify]: find objects and draw their boxes",
    "/budgets": "[prompt]: compare visual-token budgets on the current image",
    "/extract": "FIELDS | --schema FILE [--threshold T] [--no-verify]: fill in fields as JSON, each value with its box "
    "(FIELDS like total:number, date:date, vendor)",
    "/history": "the turns so far",
    "/reset": "start a new conversation",
    "/save": "NAME: name this conversation",
    "/load": "NAME: continue a named conversation",
    "/sessions": "recent conversations",
    "/model": "the model and what it can do",
    "/context": "how the model keeps earlier turns (its family's policy) and how full its context is",
    "/budget": "N: visual-token budget for the next calls (Gemma 4)",
    "/quit": "leave (Ctrl-D too)",
}

HELP_FOOTER = (
    "Plain messages go to the model, which picks a tool (Gemma 4) or are routed by keywords. "
    "@1 or @file.png or @path/to/new.png in a message refers to an image. "
    "Esc then Enter adds a line; Ctrl-C stops a running answer."
)


@contextmanager
def on_ctrl_c(cancel: Callable[[], Any]) -> Iterator[None]:
    """Ctrl-C calls ``cancel`` (stopping one answer or one wait) instead of ending the chat."""
    loop = asyncio.get_running_loop()
    try:
        loop.add_signal_handler(signal.SIGINT, cancel)
    except (NotImplementedError, RuntimeError, ValueError):
        pass  # not the main thread, or no signals here: Ctrl-C ends the chat instead
    try:
        yield
    finally:
        try:
            loop.remove_signal_handler(signal.SIGINT)
        except (NotImplementedError, RuntimeError, ValueError):
            pass


def marks(text: str) -> str:
    """The image marks of ``text`` ("@2 @photo.png"), in order."""
    return " ".join(f"@{token}" for token in HANDLE_RE.findall(text))


@contextmanager
def quiet_keys(fd: int | None) -> Iterator[None]:
    """Keys typed while an answer streams are not echoed over it; they wait for the next prompt.

    Between prompts the terminal is in its ordinary line mode, which echoes every key at
    the cursor: on the streaming answer's line. Turning echo off keeps the keys in the
    terminal's buffer, where the next prompt reads them.
    """
    if fd is None or not os.isatty(fd):
        yield
        return
    import termios

    saved = termios.tcgetattr(fd)
    quiet = list(saved)
    quiet[3] &= ~termios.ECHO
    termios.tcsetattr(fd, termios.TCSANOW, quiet)
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSANOW, saved)


class TerminalView:
    """Draws what the session does: tool calls, streamed answers, tables and pictures."""

    def __init__(self, console: Console, out_dir: Path) -> None:
        self.console = console
        self.out_dir = out_dir
        self.live: Live | None = None
        self.streamed = ""
        self.protocol = render.image_protocol(os.environ, console.is_terminal)

    def notice(self, text: str) -> None:
        self.console.print(f"[yellow]![/] {escape(text)}", highlight=False)

    def status(self, message: str) -> None:
        if self.live is not None and not self.streamed:
            self.live.update(plain(f"{message} …", style="dim"))

    def tool_call(self, name: str, arguments: Mapping[str, Any], routed_by: str) -> None:
        args = ", ".join(f"{k}={v!r}" for k, v in arguments.items())
        how = {"model": "chosen by the model", "router": "routed by keywords", "command": "by command"}.get(routed_by, "")
        self.console.print(f"[cyan]→ {escape(name)}[/]({escape(args)}) [dim]{how}[/]", highlight=False)
        self.streamed = ""
        self.live = Live("[dim]working …[/]", console=self.console, refresh_per_second=12, transient=True)
        self.live.start()

    def text_delta(self, delta: str) -> None:
        self.streamed += delta
        if self.live is not None:
            self.live.update(markdown(self.streamed))

    def stop_live(self) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None

    def result(self, record: TurnRecord, images: list[bytes]) -> None:
        self.stop_live()
        if not record.ok:
            self.console.print(f"[red]error:[/] {escape(record.error)}", highlight=False)
            return
        result = record.result or {}
        if record.tool == "detect" and not result.get("detections"):
            self.console.print(plain(f"no detections of {', '.join(map(str, result.get('labels') or []))}"))
        elif record.tool == "detect":
            self.console.print(render.detections_table(result))
        elif record.tool == "compare_budgets":
            self.console.print(render.budgets_table(result))
        elif record.tool == "extract":
            if result.get("data") is not None:
                self.console.print(plain(json.dumps(result["data"], indent=2, ensure_ascii=False)))
            self.console.print(render.extract_table(result))
        else:
            self.console.print(markdown(record.answer or "(no text)"))
        for note in result.get("notes", []):
            self.console.print(plain(f"note: {note}", style="dim"), highlight=False)
        for png in images:
            self.show_picture(record, png)
        if "prompt_tokens" in result:
            self.console.print(clean(render.stats_line(result)), style="dim", markup=False, highlight=False)
        elif "total_ms" in result:
            self.console.print(f"{result['total_ms'] / 1000:.2f} s in all", style="dim", highlight=False)

    def show_picture(self, record: TurnRecord, png: bytes) -> None:
        # The bytes are the server's: checked as a PNG (header, size) before a pixel is decoded.
        try:
            image, kind = decode_image(png, Limits(), what="the picture the server sent")
        except ImageError as exc:
            self.console.print(plain(f"note: {exc} It was not saved.", "dim"))
            return
        if kind != "PNG":
            self.console.print(plain(f"note: the picture the server sent is a {kind}, not a PNG. It was not saved.", "dim"))
            return
        prune(self.out_dir, OutputLimits())
        path = write_atomic(self.out_dir / picture_name(record.tool), lambda partial: partial.write_bytes(png))
        render.preview(self.console, image, self.protocol)
        self.console.print(plain(f"picture: {path}", "dim"), highlight=False)


def picture_name(tool: str) -> str:
    """A new name for a picture the chat saves: made here, never taken from a result.

    The shape of the server's own picture names (``detect-0123456789ab.png``), so the
    outputs folder they share holds one kind of name.
    """
    kind = {"detect": "detect", "compare_budgets": "budgets", "extract": "extract"}.get(tool, "picture")
    return f"{kind}-{uuid.uuid4().hex[:12]}.png"


def attached_line(attached: Attached) -> Text:
    return Text.assemble("attached ", (attached.handle, "bold"), " ", plain(Path(attached.source).name))


class ChatCompleter(Completer):
    """Commands after '/', file paths after '/image ' and after '@'."""

    def __init__(self, session: ChatSession) -> None:
        self.session = session
        self.paths = PathCompleter(expanduser=True)

    def get_completions(self, document: Document, complete_event: Any):  # type: ignore[override]
        text = document.text_before_cursor
        if text.startswith("/") and " " not in text:
            for command, help_text in COMMANDS.items():
                if command.startswith(text):
                    yield Completion(command, -len(text), display_meta=help_text)
            return
        word = text.split(" ")[-1]
        if text.startswith("/image ") and word:
            yield from self.paths.get_completions(Document(word), complete_event)
        elif word.startswith("@"):
            for handle in self.session.conversation.images:
                if handle.startswith(word):
                    yield Completion(handle, -len(word))
            yield from self.paths.get_completions(Document(word[1:]), complete_event)


class Startup:
    """The server's start and model load, which run behind the prompt: where they stand."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.began = time.monotonic()
        self.done = asyncio.Event()
        self.error: ChatError | None = None

    @property
    def ready(self) -> bool:
        return self.done.is_set() and self.error is None

    def finish(self, error: ChatError | None = None) -> None:
        self.error = error
        self.done.set()

    def progress(self) -> str:
        seconds = time.monotonic() - self.began
        return f"loading {self.label} … {seconds:.0f} s · you can type and attach images meanwhile"


#: commands that work before the model is ready: they need only local files and the database
OFFLINE_COMMANDS = {"/help", "/image", "/images", "/forget", "/history", "/reset", "/save", "/load", "/sessions", "/quit"}
#: commands that become a turn: they check their own arguments and images before waiting for the model
TURN_COMMANDS = {"/describe", "/ocr", "/detect", "/budgets", "/extract"}


class ChatApp:
    def __init__(
        self, session: ChatSession, console: Console, store: Store | None, startup: Startup | None = None
    ) -> None:
        self.session = session
        self.console = console
        self.store = store
        self.running = True
        self.startup = startup or Startup("the model")
        if startup is None:
            self.startup.finish()
        #: the terminal whose echo is turned off while an answer streams (None: not a terminal)
        self.keys_fd: int | None = None

    # -- commands ---------------------------------------------------------------

    async def handle(self, line: str) -> None:
        line = line.strip()
        if not line:
            return
        if not line.startswith("/"):
            await self.turn(line)
            return
        command, _, rest = line.partition(" ")
        rest = rest.strip()
        handler = getattr(self, "cmd_" + command[1:].replace("-", "_"), None)
        if command not in COMMANDS or handler is None:
            raise ChatError(f"Unknown command {command}; /help lists them.")
        if command not in OFFLINE_COMMANDS and command not in TURN_COMMANDS:
            await self.wait_until_ready()
        await handler(rest)

    async def wait_until_ready(self) -> None:
        """A message sent before the model is ready waits for it, and says so."""
        if not self.startup.done.is_set():
            waiting = asyncio.ensure_future(self.startup.done.wait())
            spinner = self.console.status(plain(f"loading {self.startup.label}"), spinner="dots")
            # Keys typed meanwhile wait for the next prompt instead of landing on the spinner's line:
            # echo goes off before anything on screen says the message waits.
            with quiet_keys(self.keys_fd), on_ctrl_c(waiting.cancel):
                self.console.print(
                    plain(f"waiting for {self.startup.label} to load; this message goes as soon as it is ready "
                          "(Ctrl-C gives up on it)", "dim")
                )
                with spinner:
                    try:
                        await waiting
                    except asyncio.CancelledError:
                        raise ChatError("Not sent: you gave up waiting for the model, which goes on loading.") from None
        if self.startup.error is not None:
            raise self.startup.error

    async def turn(self, message: str, tool: str | None = None, arguments: dict[str, Any] | None = None) -> None:
        # Image marks need no model: one that names nothing is refused before any wait for it.
        self.session.message_images(message)
        await self.wait_until_ready()
        task = asyncio.ensure_future(self.session.send(message, tool, arguments))
        try:
            with on_ctrl_c(task.cancel), quiet_keys(self.keys_fd):
                await task
        except asyncio.CancelledError:
            self.session.view.stop_live()  # type: ignore[attr-defined]
            self.console.print("[yellow]cancelled[/]")
            return

    async def cmd_help(self, _: str) -> None:
        table = Table.grid(padding=(0, 2))
        for command, text in COMMANDS.items():
            # Text, not markup: "[prompt]" would read as a style tag and vanish.
            arguments, _, meaning = text.rpartition(": ")
            table.add_row(Text(f"{command} {arguments}".rstrip(), style="cyan"), Text(meaning))
        self.console.print(table)
        self.console.print(Text(HELP_FOOTER, style="dim"))

    async def cmd_image(self, rest: str) -> None:
        if not rest:
            raise ChatError("Give a path or URL: /image photo.png")
        self.console.print(attached_line(self.session.attach(rest)), highlight=False)

    async def cmd_images(self, _: str) -> None:
        images = self.session.conversation.images
        if not images:
            self.console.print("no images attached; /image PATH attaches one")
            return
        table = Table("handle", "image", "image_id")
        for image in images.values():
            table.add_row(plain(image.handle), plain(image.source), plain(image.image_id or "(not sent yet)"))
        self.console.print(table)

    async def cmd_forget(self, rest: str) -> None:
        forgotten = self.session.forget(rest or None)
        self.console.print(plain(f"forgot {', '.join(forgotten) or 'nothing'}"))

    async def cmd_describe(self, rest: str) -> None:
        # A line of image marks alone ("/describe @2") chooses images and asks for a description.
        prompt = rest if without_handles(rest) else ""
        await self.turn(f"{prompt or 'Describe this image.'} {marks(rest)}".strip() if not prompt else prompt,
                        "describe", {"prompt": prompt} if prompt else {})

    async def cmd_ocr(self, rest: str) -> None:
        flags, rest = take_flags(rest, ("--tiles",))
        await self.turn(rest or "Read the text.", "ocr", flags)

    async def cmd_detect(self, rest: str) -> None:
        flags, rest = take_flags(rest, ("--tiles", "--consensus"), ("--verify",))
        if "consensus" in flags:
            try:
                flags["consensus"] = [int(b) for b in flags["consensus"].split(",") if b.strip()]
            except ValueError:
                flags["consensus"] = []
            if not flags["consensus"]:
                raise ChatError("--consensus takes budgets separated by commas, e.g. 280,560,1120.")
        labels = [label.strip() for label in rest.replace(",", " ").split() if label.strip()]
        if not labels:
            raise ChatError("Say what to find: /detect person car")
        await self.turn(f"detect {', '.join(labels)}", "detect", {"labels": labels, **flags})

    async def cmd_budgets(self, rest: str) -> None:
        # Image marks choose the image; the prompt, run at every budget, is the rest of the line.
        prompt = without_handles(rest)
        await self.turn(f"{prompt or 'Compare budgets.'} {marks(rest)}".strip(), "compare_budgets", {"prompt": prompt})

    async def cmd_extract(self, rest: str) -> None:
        flags, rest = take_flags(rest, ("--schema", "--threshold"), ("--no-verify",))
        arguments: dict[str, Any] = {}
        if "schema" in flags:
            # Read here and sent as text: the server may be on another machine; it checks the schema.
            arguments["schema"] = read_schema(flags["schema"])
        if "threshold" in flags:
            try:
                arguments["threshold"] = float(flags["threshold"])
            except ValueError:
                raise ChatError("--threshold takes a number between 0 and 1, e.g. 0.5.") from None
        if flags.get("no-verify"):
            arguments["verify"] = False
        fields = without_handles(rest)
        if fields and "schema" in arguments:
            raise ChatError("Give fields or --schema FILE, not both.")
        if fields:
            arguments["fields"] = fields
        if not arguments.get("schema") and not fields:
            raise ChatError("Say what to extract: /extract total:number, date:date, vendor (or --schema FILE).")
        what = fields or f"the fields of {Path(flags['schema']).name}"
        await self.turn(f"extract {what} {marks(rest)}".strip(), "extract", arguments)

    async def cmd_history(self, _: str) -> None:
        records = self.session.conversation.records
        if not records:
            self.console.print("no turns yet")
        for n, record in enumerate(records, start=1):
            outcome = record.error or record.answer
            # Images the message names are already in its text.
            named = {f"@{m}" for m in HANDLE_RE.findall(record.user)}
            others = " ".join(h for h in record.images if h not in named)
            line = Text.assemble((str(n), "bold"), plain(f" {record.user} "), plain(f"{others} → {record.tool}".lstrip(), "dim"))
            self.console.print(line, plain(f"   {outcome[:200]}"), sep="\n", highlight=False)

    async def cmd_reset(self, _: str) -> None:
        self.session.reset()
        self.console.print("new conversation")

    def need_store(self) -> Store:
        if self.store is None:
            raise ChatError("Conversations are not being saved in this chat.")
        return self.store

    async def cmd_save(self, rest: str) -> None:
        store = self.need_store()
        if not rest:
            raise ChatError("Give a name: /save trip-photos")
        conversation = self.session.ensure_conversation()
        assert conversation is not None
        store.name(conversation, rest)
        self.console.print(plain(f"saved as '{rest}'"), highlight=False)

    async def cmd_load(self, rest: str) -> None:
        store = self.need_store()
        conversation = store.find(rest)
        if conversation is None:
            raise ChatError(f"No conversation named '{rest}'; /sessions lists them.")
        self.session.load(conversation)
        self.console.print(plain(f"loaded '{rest}': {len(self.session.conversation.records)} turns"), highlight=False)

    async def cmd_sessions(self, _: str) -> None:
        table = Table("name", "turns", "model", "updated")
        import datetime as dt

        for info in self.need_store().conversations():
            when = dt.datetime.fromtimestamp(info.updated).strftime("%Y-%m-%d %H:%M")
            table.add_row(plain(info.name or f"#{info.id}"), str(info.turns), plain(info.model), when)
        self.console.print(table)

    async def cmd_model(self, _: str) -> None:
        info = self.session.info
        budgets = " / ".join(map(str, info.get("budgets", []))) or "fixed resolution"
        self.console.print(
            f"[bold]{escape(info.get('model'))}[/] ({escape(info.get('display_name'))}); budgets: {escape(budgets)}; "
            f"context window: {escape(info.get('context_window') or 'unknown')}; tool choice by the model: "
            f"{'yes' if info.get('chat') else 'no (keyword routing)'}. Start the chat with --model to change it.",
            highlight=False,
        )

    async def cmd_context(self, _: str) -> None:
        described = (self.session.info.get("context") or {}).get("description")
        if described:
            self.console.print(clean(f"context: {described}"), highlight=False, markup=False)
        self.console.print(self.status_text())

    async def cmd_budget(self, rest: str) -> None:
        allowed = self.session.info.get("budgets") or []
        if not allowed:
            raise ChatError(f"{self.session.info.get('display_name')} has a fixed resolution; there is no budget.")
        if not rest.isdigit() or int(rest) not in allowed:
            raise ChatError(f"Use one of {' / '.join(map(str, allowed))}.")
        self.session.budget = int(rest)
        self.console.print(f"budget {rest}")

    async def cmd_quit(self, _: str) -> None:
        self.running = False

    # -- the loop ---------------------------------------------------------------

    def status_text(self) -> Any:
        text, images = self.session.context_usage()
        info = self.session.info
        return render.status_line(
            info.get("model", "?"), info.get("family", "?"), self.session.policy, text, images,
            self.session.context_limit, self.session.dropped_total,
        )

    def toolbar_text(self) -> Any:
        if self.startup.error is not None:
            return plain(f"the model did not load: {self.startup.error}", "bold red")
        if not self.startup.done.is_set():
            return plain(self.startup.progress(), "yellow")
        return self.status_text()

    def toolbar(self) -> ANSI:
        # prompt-toolkit draws the toolbar; rich renders the same status line to ANSI for it.
        buffer = io.StringIO()
        TerminalConsole(file=buffer, force_terminal=True, color_system="truecolor", width=400).print(
            self.toolbar_text(), end=""
        )
        return ANSI(buffer.getvalue())

    async def announce(self, text: Any) -> None:
        """Print above the prompt while it waits for input, then draw the prompt again."""
        await run_in_terminal(lambda: self.console.print(text, highlight=False))

    def goodbye(self) -> str:
        records = self.session.conversation.records
        if not records:
            return "bye"
        saved = " (saved; vlm-agent chat --resume continues it)" if self.store is not None else ""
        failed = sum(1 for r in records if not r.ok)
        errors = f", {failed} failed" if failed else ""
        return f"bye: {plural(len(records), 'turn')}{errors} in this conversation{saved}"

    async def loop(self, prompt: PromptSession) -> None:
        while self.running:
            try:
                # refresh_interval: the bottom bar shows the load's progress while the prompt waits.
                line = await prompt.prompt_async("you> ", bottom_toolbar=self.toolbar, refresh_interval=0.5)
            except KeyboardInterrupt:
                continue  # Ctrl-C at the prompt clears the line
            except EOFError:
                break
            try:
                await self.handle(line)
            except ChatError as exc:
                if exc is self.startup.error:
                    return  # run_chat says why, once
                self.console.print(f"[red]error:[/] {escape(exc)}", highlight=False, soft_wrap=True)
        if self.startup.error is None:
            self.console.print(Text(self.goodbye(), style="dim"))


def read_schema(path: str) -> str:
    """A schema file's text, within what a schema may be; the server judges the rest."""
    from tools.extract.schema import MAX_SCHEMA_BYTES

    try:
        return read_capped_text(Path(path).expanduser(), MAX_SCHEMA_BYTES)
    except FileProblem as problem:
        raise ChatError({
            "unreadable": f"Cannot read the schema file '{path}'.",
            "too large": f"The schema file is larger than {MAX_SCHEMA_BYTES:,} bytes; describe the fields, not the document.",
            "not UTF-8": "The schema file is not UTF-8 text; save it as UTF-8.",
        }[problem.kind]) from None


def take_flags(rest: str, valued: Sequence[str], switches: Sequence[str] = ()) -> tuple[dict[str, Any], str]:
    """``--name VALUE`` options (and bare ``--switch`` ones) out of a command's text, and the rest of it."""
    flags: dict[str, Any] = {}
    words = rest.split()
    kept: list[str] = []
    i = 0
    while i < len(words):
        word = words[i]
        name, _, inline = word.partition("=")
        if name in valued:
            value = inline or (words[i + 1] if i + 1 < len(words) else "")
            if not value or value.startswith("--"):
                raise ChatError(f"{name} needs a value, for example {name} auto.")
            flags[name[2:]] = value
            i += 1 if inline else 2
        elif word in switches:
            flags[word[2:]] = True
            i += 1
        elif word.startswith("--"):
            raise ChatError(f"Unknown option {word[:30]}; this command takes {', '.join([*valued, *switches])}.")
        else:
            kept.append(word)
            i += 1
    return flags, " ".join(kept)


def key_bindings() -> KeyBindings:
    bindings = KeyBindings()

    @bindings.add("escape", "enter")
    def _(event: Any) -> None:
        event.current_buffer.insert_text("\n")

    return bindings


@asynccontextmanager
async def connect(serve: list[str], server: str | None, token_env: str | None, log_path: Path) -> AsyncIterator[Client]:
    """A client of the given HTTP server, or of a `vlm-agent serve SERVE...` child over stdio."""
    if server:
        import httpx2
        from mcp.client.streamable_http import streamable_http_client

        headers = {}
        if token_env:
            token = os.environ.get(token_env)
            if not token:
                raise ChatError(f"--token-env names ${token_env}, which is not set.")
            headers["Authorization"] = f"Bearer {token}"
        # The SDK turns an HTTP refusal into a bare "error response": remember the status to say why.
        statuses: list[int] = []

        async def remember(response: Any) -> None:
            # Only messages: a refused GET (the optional event stream) is no failure.
            if response.status_code >= 400 and response.request.method == "POST":
                statuses.append(response.status_code)

        from .failures import http_refusal, leaves

        try:
            async with httpx2.AsyncClient(
                headers=headers, timeout=httpx2.Timeout(30, read=None), event_hooks={"response": [remember]}
            ) as http:
                async with Client(streamable_http_client(server, http_client=http)) as client:
                    yield client
        except Exception as exc:
            if statuses and not any(isinstance(leaf, ChatError) for leaf in leaves(exc)):
                raise ChatError(http_refusal(server, statuses[-1])) from None
            raise
        return
    from mcp.client.stdio import stdio_client

    args = ["-m", "agent.cli", "serve", *serve]
    params = StdioServerParameters(command=sys.executable, args=args, env=dict(os.environ))
    log_path.parent.mkdir(parents=True, exist_ok=True)
    # The server's own logs go to a file: the chat owns this terminal.
    with open(log_path, "a", encoding="utf-8") as log:
        async with Client(stdio_client(params, errlog=log)) as client:
            yield client


async def run_chat(
    images: list[str],
    *,
    serve: list[str] | None = None,
    server: str | None = None,
    token_env: str | None = None,
    budget: int | None = None,
    max_new_tokens: int = 512,
    sampling: Mapping[str, float] | None = None,
    resume: bool = False,
    label: str = "the model",
    console: Console | None = None,
    prompt: PromptSession | None = None,
    client: Client | None = None,
) -> int:
    """The interactive chat; ``prompt``, ``console`` and ``client`` are injectable for tests.

    The prompt comes up at once: the server starts and loads its model behind it, the
    bottom bar shows how far it got, and a message sent before then waits for it.
    """
    console = console or TerminalConsole(highlight=False)
    home = data_home()
    store = Store(home / "chat.sqlite3")
    history: History = FileHistory(str(home / "input_history")) if prompt is None else InMemoryHistory()
    view = TerminalView(console, outputs_dir())
    startup = Startup(label)
    try:
        session = ChatSession(
            None, view, store, budget=budget, max_new_tokens=max_new_tokens,  # type: ignore[arg-type]
            sampling=sampling,
        )
        app = ChatApp(session, console, store, startup)
        real_terminal = prompt is None
        prompt = prompt or PromptSession(history=history, completer=ChatCompleter(session), key_bindings=key_bindings())
        if real_terminal and sys.stdin.isatty():
            app.keys_fd = sys.stdin.fileno()
        console.print(plain(f"vlm-agent chat · loading {label} in the background · /help for commands", "dim"))
        if resume:
            latest = store.latest()
            if latest is None:
                console.print("nothing to resume; starting a new conversation")
            else:
                session.load(latest)
                console.print(f"resumed: {len(session.conversation.records)} earlier turns")
        for ref in images:
            attached = session.attach(ref)
            console.print(attached_line(attached), highlight=False)

        stop = asyncio.Event()

        async def serve_in_background() -> None:
            try:
                opened = (
                    contextless(client) if client is not None
                    else connect(serve or [], server, token_env, home / "server.log")
                )
                async with opened as live_client:
                    session.client = live_client
                    info = await session.start()
                    startup.finish()
                    await app.announce(Text.assemble(plain(info.get("model"), "bold"), " ready"))
                    await stop.wait()
            except ChatError as exc:
                if not startup.done.is_set():
                    startup.finish(exc)
            except Exception as exc:  # the child could not start, or the connection broke at the end
                if not startup.done.is_set():
                    # The MCP client wraps what went wrong (ours included) in exception groups.
                    from .failures import reason

                    startup.finish(ChatError(reason(exc, server=server, log_path=str(home / "server.log"))))
            if startup.error is not None and not stop.is_set():
                # The chat cannot go on without a server: leave the prompt; the loop says why.
                app.running = False
                if prompt.app.is_running:
                    prompt.app.exit(exception=EOFError())

        background = asyncio.create_task(serve_in_background())
        try:
            await app.loop(prompt)
        finally:
            stop.set()
            if not startup.done.is_set():
                # Leaving during the load: the load is abandoned and the server child ended now,
                # not when its model is ready.
                background.cancel()
            await asyncio.gather(background, return_exceptions=True)
        if startup.error is not None:
            # Whenever the chat ends for a failed start, it says why (also when the failure
            # came in after the user chose to leave).
            console.print(f"[red]error:[/] {escape(startup.error)}", highlight=False, soft_wrap=True)
            return 1
    except ChatError as exc:
        console.print(f"[red]error:[/] {escape(exc)}", highlight=False, soft_wrap=True)
        return 1
    finally:
        store.close()
    return 0


@asynccontextmanager
async def contextless(client: Client) -> AsyncIterator[Client]:
    yield client
