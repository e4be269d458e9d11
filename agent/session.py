"""A vision conversation held by the client and carried out through the MCP server's tools.

The session never touches a model: it keeps the turns and the attached images, decides
which tool a message goes to, sends the earlier turns as structured history (the server
folds them the way the model's family keeps context, and says what it left out), uploads
each image once (as a data: URI, so a remote server works too) and then refers to it by
its image_id. What it does is reported to a ``View``, so the terminal
chat and scripted runs share every decision.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import mimetypes
import re
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote

from mcp import Client
from pydantic import BaseModel, ValidationError

from .router import route
from .store import Store
from tools.results import ChatResult, CompareResult, DescribeResult, DetectResult, ExtractResult, OcrResult

TOOLS = ("describe", "ocr", "detect", "compare_budgets", "extract")
#: what a turn may set of each tool's arguments; the session supplies the rest (images, history)
TOOL_ARGUMENTS: dict[str, tuple[str, ...]] = {
    "describe": ("prompt", "budget", "max_new_tokens", "temperature", "top_p", "pages"),
    "ocr": ("budget", "max_new_tokens", "temperature", "top_p", "engine", "tiles", "pages"),
    "detect": ("labels", "budget", "max_new_tokens", "temperature", "top_p", "tiles", "consensus", "verify", "pages"),
    "compare_budgets": ("prompt", "task", "budgets", "max_new_tokens", "pages"),
    "extract": ("schema", "fields", "budget", "max_new_tokens", "temperature", "top_p", "threshold", "verify", "pages"),
}
HANDLE_RE = re.compile(r"(?<![\w@])@(\S+)")
MAX_UPLOAD = 20 * 1024 * 1024


class ChatError(Exception):
    """A problem the person at the keyboard can act on; shown as one line."""


@dataclass
class Attached:
    handle: str
    source: str
    image_id: str | None = None


@dataclass
class TurnRecord:
    """One completed exchange: what was asked, which tool ran with what, and what came back."""

    user: str
    images: list[str]
    tool: str
    arguments: dict[str, Any]
    routed_by: str
    answer: str = ""
    result: dict[str, Any] | None = None
    error: str | None = None
    ms: float = 0.0
    dropped_turns: int = 0

    @property
    def ok(self) -> bool:
        return self.error is None


class View(Protocol):
    """Where a session reports what it does; the terminal renders, a script records."""

    def notice(self, text: str) -> None: ...
    def tool_call(self, name: str, arguments: Mapping[str, Any], routed_by: str) -> None: ...
    def text_delta(self, delta: str) -> None: ...
    def status(self, message: str) -> None: ...
    def result(self, record: TurnRecord, images: list[bytes]) -> None: ...


def image_id_of(data: bytes) -> str:
    # The server's content hash (tools.inputs.image_id): same bytes, same id, no model needed.
    return "img_" + hashlib.sha256(data).hexdigest()[:16]


def data_uri(path: Path) -> str:
    from tools.inputs.files import DATA_TYPES

    kind = mimetypes.guess_type(path.name)[0] or "image/png"
    if kind not in DATA_TYPES:
        kind = "image/png"  # the server judges the bytes, not the name
    # The name travels as a parameter of the URI, so the server's notes and errors can say which file.
    return f"data:{kind};name={quote(path.name, safe='')};base64," + base64.b64encode(path.read_bytes()).decode()


def is_document(source: str) -> bool:
    """Whether an attached file is a PDF or a clip (by its bytes): its pages and frames are not history images."""
    from tools.inputs.media import sniff

    if source.startswith(("http://", "https://")):
        return False
    try:
        with open(source, "rb") as file:
            head = file.read(1 << 16)
    except OSError:
        return False
    return sniff(head) != "image"


def fit_history(
    records: list[TurnRecord], max_turns: int, max_images: int, current_images: int
) -> tuple[list[TurnRecord], int]:
    """The newest records whose turns and images fit; and how many older records were dropped."""
    kept: list[TurnRecord] = []
    turns = images = 0
    for record in reversed(records):
        turns += 2
        images += len(record.images)
        if turns > max_turns or images + current_images > max_images:
            break
        kept.append(record)
    kept.reverse()
    return kept, len(records) - len(kept)


@dataclass
class Conversation:
    images: dict[str, Attached] = field(default_factory=dict)
    records: list[TurnRecord] = field(default_factory=list)
    #: handles attached since the last turn: the next message is about them
    pending: list[str] = field(default_factory=list)
    id: int | None = None


class ChatSession:
    def __init__(
        self,
        client: Client,
        view: View,
        store: Store | None = None,
        budget: int | None = None,
        max_new_tokens: int = 512,
        sampling: Mapping[str, float] | None = None,
    ) -> None:
        self.client = client
        self.view = view
        self.store = store
        self.budget = budget
        self.max_new_tokens = max_new_tokens
        #: temperature and top_p for the tools that sample (describe, ocr, detect), when given
        self.sampling = dict(sampling or {})
        self.info: dict[str, Any] = {}
        self.conversation = Conversation()
        #: image ids the connected server holds (it forgets them when it restarts)
        self.uploaded: set[str] = set()
        self.counter = 0
        self.dropped_total = 0
        #: whether the view was told that PDFs and clips of earlier turns go as text
        self.told_documents = False
        #: how this front end tells its user to add an image (the chat's commands, a script's keys)
        self.attach_hint = "attach one with /image PATH or @path"

    # -- setup ------------------------------------------------------------------

    async def start(self) -> dict[str, Any]:
        """Wait for the server's model and learn what it can do."""
        import json

        try:
            contents = await self.client.read_resource("vlm-agent://model")
        except Exception as exc:  # the server could not load its model, or died
            raise ChatError(str(exc).removeprefix("Error reading resource vlm-agent://model: ")) from None
        self.info = json.loads(contents.contents[0].text)
        return self.info

    @property
    def policy(self) -> str:
        """How the server's model keeps earlier turns (its family's context policy)."""
        return str((self.info.get("context") or {}).get("policy", "chat-template"))

    @property
    def context_limit(self) -> int | None:
        """The tokens the model keeps a conversation within, as the server advertises it."""
        limit = (self.info.get("context") or {}).get("limit_tokens") or self.info.get("context_window")
        return int(limit) if limit else None

    def ensure_conversation(self) -> int | None:
        if self.store is not None and self.conversation.id is None:
            self.conversation.id = self.store.new_conversation(self.info.get("model", "?"))
            for image in self.conversation.images.values():
                self.store.put_image(self.conversation.id, image.handle, image.source, image.image_id)
        return self.conversation.id

    # -- images -----------------------------------------------------------------

    def attach(self, ref: str) -> Attached:
        """Attach a path or URL; the image gets a handle (@1, @2, ...) for later messages."""
        ref = ref.strip()
        if ref.startswith(("http://", "https://")):
            source, image_id = ref, None
        else:
            path = Path(ref).expanduser()
            if not path.is_file():
                raise ChatError(f"No image file at '{ref}'.")
            if path.stat().st_size > MAX_UPLOAD:
                raise ChatError(f"'{ref}' is larger than 20 MiB; use a smaller image.")
            source, image_id = str(path.resolve()), image_id_of(path.read_bytes())
        for existing in self.conversation.images.values():
            if existing.source == source:
                self.pend(existing.handle)
                return existing
        self.counter = max([self.counter, *(int(h[1:]) for h in self.conversation.images if h[1:].isdigit())])
        self.counter += 1
        attached = Attached(handle=f"@{self.counter}", source=source, image_id=image_id)
        self.conversation.images[attached.handle] = attached
        self.pend(attached.handle)
        if self.conversation.id is not None and self.store is not None:
            self.store.put_image(self.conversation.id, attached.handle, source, image_id)
        return attached

    def pend(self, handle: str) -> None:
        if handle not in self.conversation.pending:
            self.conversation.pending.append(handle)

    def forget(self, handle: str | None = None) -> list[str]:
        """Drop one image (or all); turns that used it keep their text."""
        handles = [handle] if handle else list(self.conversation.images)
        for h in handles:
            if h not in self.conversation.images:
                raise ChatError(f"No image {h}; /images lists them.")
            del self.conversation.images[h]
            if h in self.conversation.pending:
                self.conversation.pending.remove(h)
            if self.conversation.id is not None and self.store is not None:
                self.store.forget_image(self.conversation.id, h)
        return handles

    def resolve_handle(self, token: str) -> str | None:
        """A handle for ``@token``: an attached handle, a file name, or a path to attach."""
        if f"@{token}" in self.conversation.images:
            return f"@{token}"
        for image in self.conversation.images.values():
            if Path(image.source).name == token:
                return image.handle
        candidate = Path(token).expanduser()
        if candidate.is_file():
            return self.attach(token).handle
        return None

    def ref(self, handle: str) -> str:
        """What to send for an image: its id once the server holds it, else its bytes or URL."""
        image = self.conversation.images[handle]
        if image.image_id and image.image_id in self.uploaded:
            return image.image_id
        if image.source.startswith(("http://", "https://")):
            return image.source
        path = Path(image.source)
        if not path.is_file():
            raise ChatError(f"The file of {handle} ('{path.name}') is gone; /forget {handle} and attach it again.")
        return data_uri(path)

    def message_images(self, message: str) -> tuple[str, list[str]]:
        """Handles a message refers to (``@1``, ``@name``, ``@path``), and its text.

        A mark that names no attached image and no file stops the message: sending it on the
        previous image instead would answer a question the user did not ask.
        """
        handles = []
        for token in HANDLE_RE.findall(message):
            name = token.rstrip(".,;:!?")
            handle = self.resolve_handle(name)
            if handle is None:
                raise ChatError(
                    f"No image @{name}: no attached handle, file name or file by that name; "
                    "/images lists the attached ones. The message was not sent."
                )
            handles.append(handle)
        if not handles:
            handles = list(self.conversation.pending)
        if not handles and self.conversation.images:
            handles = [list(self.conversation.images)[-1]]
        return message.strip(), list(dict.fromkeys(handles))

    # -- turns ------------------------------------------------------------------

    def exchanges(self) -> list[TurnRecord]:
        """Earlier turns that are part of the conversation: answered questions, not tool runs or failures."""
        return [r for r in self.conversation.records if r.ok and r.tool in ("describe", "chat")]

    def history(self, current_images: int) -> tuple[list[dict[str, Any]], list[TurnRecord], int]:
        kept, dropped = fit_history(
            self.exchanges(), int(self.info.get("max_history_turns", 64)), int(self.info.get("max_images", 16)), current_images
        )
        turns: list[dict[str, Any]] = []
        for record in kept:
            handles = [h for h in record.images if h in self.conversation.images]
            # A PDF or clip an earlier turn was about goes as that turn's text: history holds pictures only.
            documents = [h for h in handles if is_document(self.conversation.images[h].source)]
            if documents and not self.told_documents:
                self.told_documents = True
                self.view.notice(
                    f"earlier turns about {', '.join(documents)} are sent as their text: a PDF or clip is not "
                    "sent again as history"
                )
            images = [self.ref(h) for h in handles if h not in documents]
            turns.append({"role": "user", "content": record.user, "images": images})
            turns.append({"role": "assistant", "content": record.answer})
        return turns, kept, dropped

    async def send(self, message: str, tool: str | None = None, arguments: dict[str, Any] | None = None) -> TurnRecord:
        """One user message: route it (unless ``tool`` forces one), run the tool, record the turn."""
        text, handles = self.message_images(message)
        routed_by = "command" if tool else ""
        if tool is None:
            tool, arguments, routed_by = await self.choose(text, handles)
        arguments = dict(arguments or {})
        if tool in ("ocr", "detect", "compare_budgets", "extract") and not handles:
            raise ChatError(f"{tool} needs an image: {self.attach_hint}.")
        if tool == "describe" and not handles and not self.conversation.records:
            raise ChatError(f"Attach an image first: {self.attach_hint}.")
        record = TurnRecord(user=text, images=handles, tool=tool, arguments=arguments, routed_by=routed_by)
        self.view.tool_call(tool, arguments, routed_by)
        started = time.perf_counter()
        images_out: list[bytes] = []
        try:
            result, images_out = await self.call(record)
            record.result = result
            record.answer = answer_text(tool, result)
        except ChatError as exc:
            record.error = str(exc)
        record.ms = round((time.perf_counter() - started) * 1000, 1)
        self.conversation.pending.clear()
        self.conversation.records.append(record)
        self.save(record)
        self.view.result(record, images_out)
        return record

    async def choose(self, text: str, handles: list[str]) -> tuple[str, dict[str, Any], str]:
        """Gemma 4 picks through function calling; otherwise, or without a valid call, the router."""
        if self.info.get("chat") and handles:
            self.view.status("choosing a tool")
            turns, _, _ = self.history(len(handles))
            try:
                result, _ = await self.call_tool(
                    "chat",
                    {"message": text, "images": [self.ref(h) for h in handles], "history": turns, "max_new_tokens": 128},
                    stream=False,
                )
            except ChatError as exc:
                self.view.notice(f"the model could not choose a tool ({exc}); routing by keywords")
            else:
                self.mark_uploaded(handles, result)
                for call in result.get("tool_calls", []):
                    if call["name"] in TOOLS:
                        return call["name"], call["arguments"], "model"
        chosen = route(text)
        return chosen.tool, chosen.arguments, "router"

    async def call(self, record: TurnRecord) -> tuple[dict[str, Any], list[bytes]]:
        """Run the record's tool; an unknown image id (a restarted server) re-sends the bytes once."""
        for attempt in range(2):
            try:
                return await self.call_once(record)
            except ChatError as exc:
                if getattr(exc, "code", "") == "unknown_image" and attempt == 0:
                    self.uploaded.clear()
                    continue
                raise
        raise AssertionError("unreachable")

    async def call_once(self, record: TurnRecord) -> tuple[dict[str, Any], list[bytes]]:
        tool, handles = record.tool, record.images
        if tool not in TOOL_ARGUMENTS:
            raise ChatError(f"Unknown tool '{tool}'.")
        refs = [self.ref(h) for h in handles]
        args = tool_arguments(tool, record.arguments)
        # compare_budgets takes neither the budget nor sampling: its payload is built without them.
        # The session's budget is not forced on the offline OCR or a consensus, which take none.
        extra: dict[str, Any] = {}
        if (
            self.budget is not None and self.info.get("budgets") and args.get("engine") != "rapidocr"
            and args.get("consensus") is None
        ):
            extra["budget"] = self.budget
        extra.update(self.sampling)
        # What the turn says wins over the session's defaults.
        extra.update({name: value for name, value in args.items() if name not in ("prompt", "labels")})
        if tool == "describe":
            prompt = args.get("prompt") or record.user
            # Always the structured turns: the server folds them its family's way.
            turns, _, record.dropped_turns = self.history(len(refs))
            payload = {"images": refs, "prompt": prompt, "history": turns, "max_new_tokens": self.max_new_tokens, **extra}
            while True:
                try:
                    result, images = await self.call_tool("describe", payload)
                    break
                except ChatError as exc:
                    # Too long for the context: drop the oldest exchange and say so.
                    if getattr(exc, "code", "") != "context_overflow" or not payload["history"]:
                        raise
                    payload["history"] = payload["history"][2:]
                    record.dropped_turns += 1
            # The server says how many earlier turns reached the model; a single-turn family
            # sends none by design, which is its policy rather than a loss.
            if self.policy != "single-turn":
                left_out = len(payload["history"]) - int(result.get("history_turns", len(payload["history"])))
                record.dropped_turns += max(0, left_out) // 2
            if record.dropped_turns:
                self.dropped_total += record.dropped_turns
                self.view.notice(f"dropped {plural(record.dropped_turns, 'older exchange')} to fit the model's context")
        elif tool == "ocr":
            payload = {"image": refs[0], "max_new_tokens": self.max_new_tokens, **extra}
            result, images = await self.call_tool("ocr", payload)
        elif tool == "detect":
            labels = args.get("labels") or []
            if isinstance(labels, str):
                labels = [part.strip() for part in labels.split(",")]
            result, images = await self.call_tool(
                "detect", {"image": refs[0], "labels": labels, "max_new_tokens": self.max_new_tokens, **extra}
            )
        elif tool == "extract":
            # Not the session's token cap: the tool's own default leaves an object room (a turn may set one).
            result, images = await self.call_tool("extract", {"images": refs, **extra}, stream=False)
        else:
            payload = {
                "image": refs[0], "prompt": args.get("prompt") or "", "task": args.get("task", "describe"),
                "max_new_tokens": args.get("max_new_tokens", self.max_new_tokens),
            }
            for name in ("budgets", "pages"):
                if name in args:
                    payload[name] = args[name]
            result, images = await self.call_tool("compare_budgets", payload)
        self.mark_uploaded(handles, result)
        return result, images

    def mark_uploaded(self, handles: list[str], result: Mapping[str, Any]) -> None:
        for handle, image_id in zip(handles, result.get("image_ids", [])):
            image = self.conversation.images.get(handle)
            if image is not None:
                image.image_id = image_id
            self.uploaded.add(image_id)
        # History images went as bytes too: the server holds them now.
        for image in self.conversation.images.values():
            if image.image_id and not image.source.startswith(("http://", "https://")):
                self.uploaded.add(image.image_id)

    async def call_tool(self, name: str, arguments: dict[str, Any], stream: bool = True) -> tuple[dict[str, Any], list[bytes]]:
        async def progress(done: float, total: float | None, message: str | None) -> None:
            # Generation streams text as progress messages with a token total; others are status.
            if message and total and stream and name in ("describe", "ocr", "chat"):
                self.view.text_delta(message)
            elif message:
                self.view.status(message)

        try:
            result = await self.client.call_tool(name, arguments, progress_callback=progress)
        except Exception as exc:  # transport failures: the server process died, the connection dropped
            raise ChatError(f"The server stopped answering ({type(exc).__name__}); restart the chat.") from None
        if result.is_error:
            error = ChatError(" ".join(block.text for block in result.content if block.type == "text"))
            # The server's error_result puts the code in _meta, where no client checks it against a schema.
            error.code = ((result.meta or {}).get("vlm-agent/error") or {}).get("code", "")  # type: ignore[attr-defined]
            raise error
        images = [picture_bytes(block.data) for block in result.content if block.type == "image"]
        return checked_result(name, result.structured_content), images

    def save(self, record: TurnRecord) -> None:
        if self.store is None:
            return
        conversation = self.ensure_conversation()
        assert conversation is not None
        for handle in record.images:
            image = self.conversation.images.get(handle)
            if image is not None:
                self.store.put_image(conversation, image.handle, image.source, image.image_id)
        self.store.add_turn(conversation, len(self.conversation.records), asdict(record))

    # -- conversations ----------------------------------------------------------

    def reset(self) -> None:
        """A new conversation; the old one stays in the store."""
        self.conversation = Conversation()
        self.counter = 0
        self.dropped_total = 0

    def load(self, conversation: int) -> None:
        assert self.store is not None
        loaded = Conversation(id=conversation)
        for handle, source, image_id in self.store.images(conversation):
            loaded.images[handle] = Attached(handle, source, image_id)
        for raw in self.store.turns(conversation):
            loaded.records.append(TurnRecord(**raw))
        self.conversation = loaded
        self.counter = max([0, *(int(h[1:]) for h in loaded.images if h[1:].isdigit())])

    def context_usage(self) -> tuple[int, int]:
        """Text and image tokens of the last model call (what the context holds now)."""
        for record in reversed(self.conversation.records):
            result = record.result or {}
            if "prompt_tokens" in result:
                images = int(result.get("image_tokens") or 0)
                return int(result["prompt_tokens"]) - images + int(result.get("generated_tokens", 0)), images
        return 0, 0


#: what each tool's result must be for the chat to read it (the server's own output models)
RESULTS: dict[str, type[BaseModel]] = {
    "describe": DescribeResult, "ocr": OcrResult, "detect": DetectResult, "compare_budgets": CompareResult,
    "extract": ExtractResult, "chat": ChatResult,
}


def checked_result(tool: str, structured: Any) -> dict[str, Any]:
    """The server's structured result, once it has the shape of ``tool``'s result.

    A server the chat was pointed at may be another program: a missing key or a wrong type must
    end the turn with one line, never a traceback halfway through printing it."""
    unreadable = f"The server's {tool} result is not one this chat can read"
    advice = "is it a vlm-agent server of the same version?"
    if not isinstance(structured, dict):
        raise ChatError(f"{unreadable}: it sent no structured result; {advice}")
    try:
        RESULTS[tool].model_validate(structured)
    except ValidationError as exc:
        first = exc.errors()[0]
        # Field names and list indices of our own models, and pydantic's wording: nothing the server wrote.
        where = "/".join(str(part) for part in first["loc"])
        raise ChatError(
            f"{unreadable} ({where}: {first['msg']}; {plural(exc.error_count(), 'problem')} in all); {advice}"
        ) from None
    return dict(structured)


def picture_bytes(data: str) -> bytes:
    """An image block's bytes; ``b""`` when they are not base64 (a view then says the picture is no image)."""
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        return b""


def plural(count: int, noun: str) -> str:
    """'1 older exchange', '2 older exchanges'."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


def without_handles(text: str) -> str:
    """``text`` with its image marks (``@2``, ``@photo.png``) taken out: what is left is the prompt."""
    return " ".join(HANDLE_RE.sub(" ", text).split())


def tool_arguments(tool: str, arguments: Mapping[str, Any]) -> dict[str, Any]:
    """The arguments ``tool`` takes from a turn; a script's others were refused before it ran,
    and a model's choice may only name these."""
    return {name: arguments[name] for name in TOOL_ARGUMENTS[tool] if name in arguments}


def answer_text(tool: str, result: Mapping[str, Any]) -> str:
    """The assistant's side of the turn, as later turns will see it."""
    if tool == "detect":
        found = [f"{d['label']} at {d['box']}" for d in result.get("detections", [])]
        return "Found " + "; ".join(found) + "." if found else "Found nothing."
    if tool == "compare_budgets":
        return f"Recommended budget {result.get('recommended_budget')}."
    if tool == "extract":
        data = result.get("data")
        return json.dumps(data, ensure_ascii=False) if data is not None else f"Nothing extracted: {result.get('problem')}"
    return str(result.get("text", ""))
