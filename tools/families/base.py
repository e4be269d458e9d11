"""A family's dialect: what to ask its models and how to read their answers.

A dialect knows nothing of where the model runs. It declares what the family can do
(``Capabilities``, read from the checkpoint's config before any weights load), turns an
``Ask`` into a ``Prompt`` (the task's wording, and the earlier turns folded by the family's
context policy, with a note for whatever was left out), and reads a ``Generation`` into an
``Answer`` (text, boxes on the family's grid, tool calls). A runtime (``tools.runtimes``)
carries the prompt to the model: in this process through transformers, or to an engine.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, Literal

from ..boxes.detections import ParsedDetections, box_items_schema
from ..errors import InvalidRequest, Unsupported
from ..inputs import ImageInput
from ..inputs.media import ClipInput
from ..tasks import Answer, Ask, Capabilities, Generation, Message, Part, Prompt, Turn, plural

#: tokens a text costs the model's language side (the runtime's tokenizer), images not counted
TokenCounter = Callable[[str], int]
#: how a prompt reaches the model: chat messages through a chat template, or a plain text
PromptForm = Literal["messages", "text"]


class Dialect(ABC):
    """One model family's prompt formats, context policy, output parsers and capabilities."""

    #: the short name results report ("gemma4")
    family: ClassVar[str]
    #: how people write the family's name, for messages ("Gemma 4")
    display_name: ClassVar[str]
    #: the checkpoint config's ``model_type`` values this dialect reads
    model_types: ClassVar[tuple[str, ...]]
    #: every task the family can do (a checkpoint's capabilities list the ones it does)
    tasks: ClassVar[frozenset[str]]
    #: messages: a chat template renders the prompt (it can also go to an engine's chat API);
    #: text: the processor takes a plain text (this process only)
    prompt_form: ClassVar[PromptForm]
    #: whether the family has per-call visual-token budgets (some checkpoints or engines may still not)
    takes_budgets: ClassVar[bool] = False
    #: the transformers class that loads the weights
    model_class: ClassVar[str] = "AutoModelForImageTextToText"
    #: a ``LocalRuntime`` subclass with the family's own fast path (caches, batching); None: the plain one
    local_runtime: ClassVar[Any] = None
    #: whether the family's processor takes clips (``videos=``), frames with timestamps, in this process
    video: ClassVar[bool] = False
    #: the per-frame budget a clip gets when the call names none; None: the processor's own choice
    video_budget: ClassVar[int | None] = None

    def __init__(self, capabilities: Capabilities) -> None:
        self.capabilities = capabilities

    # -- capabilities -------------------------------------------------------------------

    @classmethod
    @abstractmethod
    def from_config(cls, config: Any) -> Capabilities:
        """What a checkpoint can do, from its config (``AutoConfig``) alone."""

    @classmethod
    def declared(cls, *, budgets: bool) -> Capabilities:
        """What a model of this family on an engine can do; ``budgets``: the engine takes them per request."""
        raise Unsupported(
            f"{cls.display_name} has no chat template, so it cannot run on a chat-completions engine; "
            "load it locally.", param="backend"
        )

    @classmethod
    def for_config(cls, config: Any) -> Dialect:
        """The dialect of a local checkpoint; a family that needs more of its config (geometry) overrides it."""
        return cls(cls.from_config(config))

    @classmethod
    def for_engine(cls, *, budgets: bool) -> Dialect:
        return cls(cls.declared(budgets=budgets))

    # -- asking ---------------------------------------------------------------------------

    @abstractmethod
    def prompt(self, ask: Ask, count_tokens: TokenCounter | None = None) -> Prompt:
        """The prompt for ``ask`` (already checked against the capabilities, its budget resolved).

        ``count_tokens`` is the runtime's tokenizer, for families that fit their context by
        counting (None where the runtime has none).
        """

    def processor_kwargs(self, budget: int | None) -> dict[str, Any]:
        """The image processor's per-call arguments that carry ``budget``; {} for a fixed resolution."""
        return {}

    def answer_schema(self, ask: Ask) -> dict[str, Any] | None:
        """The JSON schema ``ask``'s answer follows where an engine's structured outputs can hold the
        model to one: the ask's own (``ask.answer_schema``, verify's yes or no), else None (free text).
        Families that write boxes as JSON add detect's. Extract's schema is ``ask.schema``, held on
        every runtime."""
        return ask.answer_schema

    # -- reading --------------------------------------------------------------------------

    def parse(self, ask: Ask, generation: Generation) -> Answer:
        """The generation read for the task: boxes for detect and segment, tool calls for chat."""
        if ask.task in ("detect", "segment"):
            return Answer(generation, detections=self.parse_boxes(generation.text, ask.images[0].size))
        return Answer(generation)

    def parse_boxes(self, text: str, size: tuple[int, int]) -> ParsedDetections:
        """Boxes in pixels of an image of ``size`` from the model's text (families that detect)."""
        raise Unsupported(f"{self.display_name} models cannot detect objects.")

    # -- geometry -------------------------------------------------------------------------

    def seen_size(self, size: tuple[int, int], budget: int | None) -> tuple[int, int]:
        """(width, height) the vision encoder sees an image of ``size`` at ``budget``."""
        return size

    def no_budgets_reason(self) -> str:
        """Why there are no budgets to compare, for a family whose capabilities list none."""
        return f"{self.display_name} has a fixed resolution, so there are no budgets to compare."


# -- helpers the dialects share ---------------------------------------------------------------


def one_line(text: str) -> str:
    """The text with every run of whitespace, line breaks included, as one space.

    PaliGemma ends its prefix at the first line break, and BLIP-2's question/answer pairs are
    one line each: a line break inside would cut the request short.
    """
    return " ".join(text.split())


def describe_text(prompt: str, images: int) -> str:
    """The prompt as given, or a request for a description when it is empty (chat-template families)."""
    if prompt:
        return prompt
    return "Describe this image." if images == 1 else "Describe these images."


def extract_text(schema_text: str, images: int) -> str:
    """The extraction request of chat-template families: the schema itself, which real models read well."""
    where = "this image" if images == 1 else "these images"
    return (
        f"Extract the information in {where} as one JSON object that follows this JSON Schema. "
        f"Output only the JSON.\nSchema: {schema_text}"
    )


def listed(names: Sequence[str]) -> str:
    """``a``, ``a and b``, ``a, b and c``."""
    names = [one_line(name.replace("_", " ")) for name in names] or ["fields"]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def video_messages(clip: ClipInput, text: str, history: Sequence[Turn]) -> list[Message]:
    """Prior turns, then the clip (a video part) and the question: the chat-template families' video prompt."""
    messages: list[Message] = [
        {"role": turn.role, "content": user_content(turn.images, turn.text)} for turn in history
    ]
    messages.append({"role": "user", "content": [{"type": "video", "video": clip}, {"type": "text", "text": text or "Describe this video."}]})
    return messages


def image_part(image: ImageInput) -> Part:
    return {"type": "image", "image": image}


def user_content(images: Sequence[ImageInput], text: str) -> list[Part]:
    """Images first, then the text (the order the families' guides use)."""
    parts: list[Part] = [image_part(image) for image in images]
    if text:
        parts.append({"type": "text", "text": text})
    return parts


def chat_messages(images: Sequence[ImageInput], text: str, history: Sequence[Turn]) -> list[Message]:
    """Prior turns in order (with their images), then this one: the chat-template context policy."""
    messages: list[Message] = [
        {"role": turn.role, "content": user_content(turn.images, turn.text)} for turn in history
    ]
    messages.append({"role": "user", "content": user_content(images, text)})
    return messages


def prompt_images(
    display_name: str, images: Sequence[ImageInput], history: Sequence[Turn]
) -> tuple[list[ImageInput], list[str]]:
    """This call's images; without any, the latest image of the history. With the note that explains."""
    if images:
        return list(images), []
    latest = next((image for turn in reversed(history) for image in reversed(turn.images)), None)
    if latest is None:
        raise InvalidRequest(f"{display_name} needs an image with the prompt; give one.")
    return [latest], ["no image came with this prompt: used the latest image of the history"]


def single_turn_note(display_name: str, history: Sequence[Turn]) -> list[str]:
    """The note of a single-turn family that was given earlier turns."""
    if not history:
        return []
    return [f"{display_name} is single-turn: {plural(len(history), 'prior turn was', 'prior turns were')} not sent"]


class BudgetedChatDialect(Dialect):
    """A chat-template family with per-call visual-token budgets and a box grid: its
    capabilities follow from these class attributes, locally and on an engine alike."""

    prompt_form = "messages"
    takes_budgets = True
    #: the budgets a call may ask for, and the one a call without a budget gets
    budget_values: ClassVar[tuple[int, ...]]
    default_budget: ClassVar[int]
    #: the grid the model writes boxes on, and which coordinate comes first
    box_grid: ClassVar[int]
    box_order: ClassVar[Literal["xy", "yx"]]
    #: the key each JSON box item holds its four numbers under
    box_key: ClassVar[str]

    def answer_schema(self, ask: Ask) -> dict[str, Any] | None:
        if ask.task == "detect":
            return box_items_schema(self.box_key, self.box_grid, ask.labels)
        return super().answer_schema(ask)

    @classmethod
    def from_config(cls, config: Any) -> Capabilities:
        text = config.get_text_config()
        return cls.capabilities_with(
            budgets=True, context_tokens=getattr(text, "max_position_embeddings", None), video=cls.video
        )

    @classmethod
    def declared(cls, *, budgets: bool) -> Capabilities:
        # An engine renders the family's own chat template; without per-request budgets the
        # engine's own image setting applies. Clips go through the processor here, so not to an engine.
        return cls.capabilities_with(budgets=budgets, context_tokens=None, video=False)

    @classmethod
    def capabilities_with(cls, *, budgets: bool, context_tokens: int | None, video: bool = False) -> Capabilities:
        return Capabilities(
            tasks=cls.tasks,
            context_policy="chat-template",
            budgets=cls.budget_values if budgets else (),
            default_budget=cls.default_budget if budgets else None,
            context_tokens=context_tokens,
            box_grid=cls.box_grid,
            box_order=cls.box_order,
            video=video,
        )
