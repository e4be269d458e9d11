"""The one backend interface every model family implements.

A backend owns a loaded model and knows its family's prompt format: how a caption,
a reading or a detection is asked for, how prior turns are rendered, and how its
output becomes text or boxes. It receives decoded images and validated options;
resolving image references and building results is the caller's job (``tools.vision``).
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Literal

from PIL import Image

from ..detections import ParsedDetections
from ..errors import Unsupported
from ..options import GenerationOptions
from ..results import CacheReport, Timings
from ..text import KNOWN_CONTROL_STRINGS, Neutraliser, clean_model_text
from ..toolcalls import ParsedReply

Role = Literal["user", "assistant"]
Task = Literal["describe", "ocr", "detect"]
#: ``(done, total, message)``: called before each step of a slow operation
Progress = Callable[[int, int, str], None]


@dataclass(frozen=True)
class Turn:
    """One prior turn of a conversation."""

    role: Role
    text: str
    images: tuple[Image.Image, ...] = ()


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
    #: what came from the backend's caches; None for backends that keep none
    cache: CacheReport | None = None

    def __post_init__(self) -> None:
        # At the source: the answer goes back as history, to terminals and into JSON.
        self.text = clean_model_text(self.text)


def cut_note(max_new_tokens: int) -> str:
    """The note of a generation stopped by its token cap rather than by the model."""
    return f"stopped at max_new_tokens={max_new_tokens}; the answer may be cut"


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


class Backend(ABC):
    """A loaded vision-language model of one family."""

    family: ClassVar[str]
    #: how people write the family's name, for messages
    display_name: ClassVar[str]
    #: visual-token budgets the family accepts; empty for fixed-resolution families
    budgets: ClassVar[tuple[int, ...]] = ()
    default_budget: ClassVar[int | None] = None
    #: whether several calls may run at once: a local model's generate() is not re-entrant,
    #: a serving engine batches concurrent requests itself
    concurrent: ClassVar[bool] = False

    def __init__(self, model_id: str) -> None:
        self.model_id = model_id
        #: calls worth running at once (compare_budgets' pool size); 1 for a local model
        self.max_concurrency = 1

    @property
    def neutralise(self) -> Neutraliser:
        """Breaks the family's control strings in user text (``<|turn>`` and the like)."""
        found = self.__dict__.get("_neutraliser")
        if found is None:
            found = self.__dict__["_neutraliser"] = Neutraliser(self.control_strings())
        return found

    def control_strings(self) -> set[str]:
        """What user text must not spell out; engines without a tokenizer at hand get the known list."""
        return set(KNOWN_CONTROL_STRINGS)

    def no_budgets_reason(self) -> str:
        """Why there are no budgets to compare, for a backend whose ``budgets`` is empty."""
        return (
            f"{self.display_name} has a fixed resolution, so there are no budgets to compare; "
            "use a Gemma 4 model."
        )

    @property
    def device(self) -> str:
        return "cpu"

    def seen_size(self, size: tuple[int, int], budget: int | None) -> tuple[int, int]:
        """(width, height) the vision encoder sees an image of ``size`` at ``budget`` (families with budgets)."""
        return size

    @abstractmethod
    def describe(
        self,
        images: Sequence[Image.Image],
        prompt: str,
        history: Sequence[Turn],
        budget: int | None,
        options: GenerationOptions,
    ) -> Generation:
        """Answer ``prompt`` about ``images``; an empty prompt asks for the family's own caption."""

    @abstractmethod
    def ocr(self, image: Image.Image, budget: int | None, options: GenerationOptions) -> Generation:
        """Read all text in the image, in reading order."""

    def chat(
        self,
        images: Sequence[Image.Image],
        prompt: str,
        history: Sequence[Turn],
        budget: int | None,
        options: GenerationOptions,
    ) -> tuple[Generation, ParsedReply]:
        """One assistant turn that may answer with calls to the vision tools (native function calling)."""
        raise Unsupported(
            f"{self.display_name} models have no function calling; pick a tool yourself (describe, ocr, detect)."
        )

    def detect(
        self, image: Image.Image, labels: Sequence[str], budget: int | None, options: GenerationOptions
    ) -> tuple[Generation, ParsedDetections]:
        """Find ``labels`` in the image; boxes in pixels of ``image``."""
        raise Unsupported(f"{self.display_name} models cannot detect objects; use a Gemma 4 or PaliGemma model.")

    def segment(
        self, image: Image.Image, label: str, budget: int | None, options: GenerationOptions
    ) -> tuple[Generation, ParsedDetections]:
        """Find ``label`` with its box and the family's mask codes."""
        raise Unsupported(f"{self.display_name} models cannot segment objects; use a PaliGemma model.")

    def at_budgets(
        self,
        task: Task,
        image: Image.Image,
        prompt: str,
        labels: Sequence[str],
        budgets: Sequence[int],
        options: GenerationOptions,
        progress: Progress | None = None,
    ) -> list[tuple[Generation, ParsedDetections | None]]:
        """One task on one image at each budget, in order (``prompt`` for describe, ``labels`` for detect).

        One call after another here; a family may run them together.
        """
        runs: list[tuple[Generation, ParsedDetections | None]] = []
        for n, budget in enumerate(budgets):
            if progress:
                progress(n, len(budgets), f"budget {budget}")
            if task == "detect":
                runs.append(self.detect(image, labels, budget, options))
            elif task == "ocr":
                runs.append((self.ocr(image, budget, options), None))
            else:
                runs.append((self.describe([image], prompt, (), budget, options), None))
        return runs

    def on_images(
        self,
        task: Task,
        images: Sequence[Image.Image],
        prompt: str,
        labels: Sequence[str],
        budget: int | None,
        options: GenerationOptions,
    ) -> list[tuple[Generation, ParsedDetections | None]]:
        """One task on each of several images (tiles, crops) at one budget, in order.

        One call after another here; a family may run them together.
        """
        runs: list[tuple[Generation, ParsedDetections | None]] = []
        for image in images:
            options.check_cancelled()
            if task == "detect":
                runs.append(self.detect(image, labels, budget, options))
            elif task == "ocr":
                runs.append((self.ocr(image, budget, options), None))
            else:
                runs.append((self.describe([image], prompt, (), budget, options), None))
        return runs

    def clear_caches(self) -> None:
        """Forget encoded images and kept prompts (benchmarks start cold with it)."""
