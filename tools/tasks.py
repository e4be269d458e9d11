"""The values that pass between the vision core, a family's dialect and a runtime.

One task interface: a caller says what it wants as an ``Ask`` (a task, images, a prompt or
labels, the prior turns, a budget); the family's dialect turns it into a ``Prompt`` (what to
send, in chat messages or as plain text, and what it left out); a runtime runs the prompt and
returns a ``Generation``; the dialect reads that into an ``Answer`` (text, boxes or tool calls).
What a family can do is its ``Capabilities``, known before any weights load.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from .boxes.detections import ParsedDetections
from .inputs import ImageInput
from .inputs.media import ClipInput
from .results import CacheReport, Timings
from .text import clean_model_text
from .toolcalls import ParsedReply

if TYPE_CHECKING:
    from .extract.schema import Schema

Role = Literal["user", "assistant"]
#: what a caller may ask of a model; "chat" is one assistant turn that may call the vision tools;
#: "extract" fills in a JSON Schema's object, decoded under its grammar
Task = Literal["describe", "ocr", "detect", "segment", "chat", "extract"]
TASKS: tuple[Task, ...] = ("describe", "ocr", "detect", "segment", "chat", "extract")
#: how a family keeps the earlier turns of a conversation
ContextPolicy = Literal["chat-template", "concat", "single-turn"]
#: the order of a box's four numbers as the model writes them
BoxOrder = Literal["yx", "xy"]
#: ``(done, total, message)``: called before each step of a slow operation
Progress = Callable[[int, int, str], None]


@dataclass(frozen=True)
class Capabilities:
    """What a loaded (or declared) model of one family can do; read before any weights load."""

    #: the tasks it answers
    tasks: frozenset[str]
    context_policy: ContextPolicy
    #: visual-token budgets it takes per call; empty for a fixed resolution
    budgets: tuple[int, ...] = ()
    default_budget: int | None = None
    #: image tokens per image of a fixed-resolution checkpoint; None where budgets apply or nobody knows
    image_tokens: int | None = None
    #: images one prompt may carry; None: the core's general limit
    max_images: int | None = None
    #: tokens the model takes, prompt and answer together; None: unknown (an engine)
    context_tokens: int | None = None
    #: the box grid and order its detections come on, for families that detect
    box_grid: int | None = None
    box_order: BoxOrder | None = None
    #: whether describe takes a clip through the family's own video path (frames with timestamps)
    video: bool = False

    def describe_policy(self) -> str:
        """The context policy in a few words, for the model resource and the chat's meter."""
        if self.context_policy == "single-turn":
            return "single-turn: earlier turns are not sent"
        if self.context_policy == "concat":
            limit = f"kept under {self.context_tokens} tokens" if self.context_tokens else "kept whole"
            return f"concatenated Question/Answer pairs, {limit} by dropping the oldest pairs"
        limit = f" within {self.context_tokens} tokens" if self.context_tokens else ""
        return f"the chat template, every earlier turn with its images{limit}"


@dataclass(frozen=True)
class Turn:
    """One prior turn of a conversation."""

    role: Role
    text: str
    images: tuple[ImageInput, ...] = ()


@dataclass(frozen=True)
class Ask:
    """One task as a caller asks it: validated values, images already loaded."""

    task: Task
    images: tuple[ImageInput, ...] = ()
    #: describe's question or instruction ("" asks for the family's own caption); chat's message;
    #: extract's schema as JSON text, for the prompt
    prompt: str = ""
    #: detect's labels; segment's one label; extract's field names
    labels: tuple[str, ...] = ()
    history: tuple[Turn, ...] = ()
    #: None: the family's default
    budget: int | None = None
    #: extract: the schema the answer is decoded under
    schema: Schema | None = None
    #: describe: a clip's frames, for families with a video path (``Capabilities.video``)
    video: ClipInput | None = None
    #: a JSON schema the answer follows where the runtime can hold the model to one without a
    #: grammar of ours (an engine's structured outputs): verify's yes or no; the local runtime reads
    #: the answer as free text
    answer_schema: dict[str, Any] | None = None


#: one message content part: {"type": "text", "text": ...}, {"type": "image", "image": ImageInput} or
#: {"type": "video", "video": ClipInput}
Part = dict[str, Any]
#: {"role": "system" | "user" | "assistant", "content": list[Part] | str}
Message = dict[str, Any]


@dataclass
class Prompt:
    """What a dialect asks a runtime to run: chat ``messages`` or a plain ``text``, never both."""

    #: the images in the order their placeholders come in the prompt
    images: list[ImageInput]
    #: for families with a chat template: the conversation, images as parts
    messages: list[Message] | None = None
    #: for families without one: the text as their processor takes it (placeholders included)
    text: str | None = None
    #: the budget this prompt runs at (None: a fixed resolution)
    budget: int | None = None
    #: the image processor's per-call arguments that carry the budget (local: processor_kwargs;
    #: engine: mm_processor_kwargs), e.g. Gemma 4's {"max_soft_tokens": 280}
    processor_kwargs: dict[str, Any] = field(default_factory=dict)
    #: function declarations the model may call (chat)
    tools: list[dict[str, Any]] | None = None
    #: prior turns actually in the prompt
    history_turns: int = 0
    #: a JSON schema the answer follows where the runtime can enforce one (an engine's structured
    #: outputs); None: free text. Detect's is the family's box items; the local runtime ignores it.
    answer_schema: dict[str, Any] | None = None
    #: what the dialect did to the request (turns not sent, pairs dropped), for the result's notes
    notes: list[str] = field(default_factory=list)
    #: the schema the answer must follow: a grammar on the local runtime, the engine's structured output
    schema: Schema | None = None
    #: clips, in the order their placeholders come in the prompt (a video part each)
    videos: list[ClipInput] = field(default_factory=list)


@dataclass
class Generation:
    """What one model call produced, with the counts that explain it."""

    text: str
    #: None where the model runs elsewhere and its server does not say
    image_tokens: int | None
    prompt_tokens: int
    generated_tokens: int
    finish_reason: Literal["stop", "length"]
    budget: int | None
    timings: Timings = field(default_factory=Timings)
    #: the generated tokens with their special tokens, for parsers that need them (tool calls)
    raw_text: str = ""
    #: prior turns actually sent to the model (a family may send fewer than given)
    history_turns: int = 0
    notes: list[str] = field(default_factory=list)
    #: the generated token ids, special tokens included
    token_ids: list[int] = field(default_factory=list, repr=False)
    #: what came from the runtime's caches; None for runtimes that keep none
    cache: CacheReport | None = None
    #: tool calls an engine returned in its own structured form (chat); None where they are in the text
    tool_calls: ParsedReply | None = None
    #: under a schema on the local runtime: each generated token's bytes and the probability the model
    #: gave it among the tokens the schema allowed, all but the last token (whose step never came)
    scored: list[tuple[bytes, float]] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        # At the source: the answer goes back as history, to terminals and into JSON.
        self.text = clean_model_text(self.text)


@dataclass
class Answer:
    """A generation read by its dialect: boxes for detect and segment, tool calls for chat."""

    generation: Generation
    detections: ParsedDetections | None = None
    reply: ParsedReply | None = None


def combine(generations: Sequence[Generation], text: str, budget: int | None, names: Sequence[str]) -> Generation:
    """One Generation standing for several runs (tiles, or budgets): counts summed, notes named by run."""
    # Rows of one batch each report the batch's timings; calls one after another add up.
    batched = len({g.timings.total_ms for g in generations}) == 1
    first = generations[0].timings
    timings = first.model_copy() if batched else Timings(
        preprocess_ms=round(sum(g.timings.preprocess_ms for g in generations), 2),
        generate_ms=round(sum(g.timings.generate_ms for g in generations), 2),
        total_ms=round(sum(g.timings.total_ms for g in generations), 2),
    )
    visions = {g.cache.vision for g in generations if g.cache is not None}
    cache = None
    if visions:
        cache = CacheReport(vision=visions.pop() if len(visions) == 1 else "partial")
    counts = [g.image_tokens for g in generations]
    return Generation(
        text=text,
        image_tokens=None if None in counts else sum(c for c in counts if c is not None),
        prompt_tokens=sum(g.prompt_tokens for g in generations),
        generated_tokens=sum(g.generated_tokens for g in generations),
        finish_reason="length" if any(g.finish_reason == "length" for g in generations) else "stop",
        budget=budget,
        timings=timings,
        notes=[f"{name}: {note}" for name, g in zip(names, generations) for note in g.notes],
        cache=cache,
    )


def cut_note(max_new_tokens: int) -> str:
    """The note of a generation stopped by its token cap rather than by the model."""
    return f"stopped at max_new_tokens={max_new_tokens}; the answer may be cut"


def plural(count: int, one: str, many: str) -> str:
    return f"{count} {one if count == 1 else many}"


class Stopwatch:
    """Milliseconds since creation, by named lap."""

    def __init__(self) -> None:
        self._start = self._last = time.perf_counter()

    def lap(self) -> float:
        now = time.perf_counter()
        ms, self._last = (now - self._last) * 1000.0, now
        return round(ms, 2)

    def total(self) -> float:
        return round((time.perf_counter() - self._start) * 1000.0, 2)
