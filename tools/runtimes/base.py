"""Where a model runs: the one interface a runtime implements.

A runtime takes a family's ``Prompt`` and returns a ``Generation``; it knows nothing of tasks,
prompt wording or output formats (those are the dialect's, ``tools.families``). Two exist:
``LocalRuntime`` (transformers in this process) and ``EngineRuntime`` (an OpenAI-compatible
serving engine over HTTP).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import ClassVar, Literal

from ..options import GenerationOptions
from ..tasks import Generation, Progress, Prompt
from ..text import KNOWN_CONTROL_STRINGS

RuntimeKind = Literal["local", "engine"]


class Runtime(ABC):
    """A model's weights somewhere, and a way to run prompts on them."""

    kind: ClassVar[RuntimeKind]
    #: whether several calls may run at once: a local model's generate() is not re-entrant,
    #: a serving engine batches concurrent requests itself
    concurrent: ClassVar[bool] = False

    def __init__(self, model_id: str) -> None:
        self.model_id = model_id
        #: calls worth running at once (compare_budgets' pool size); 1 for a local model
        self.max_concurrency = 1

    @property
    def device(self) -> str:
        return "cpu"

    @property
    def dtype(self) -> str | None:
        return None

    @abstractmethod
    def generate(self, prompt: Prompt, options: GenerationOptions) -> Generation:
        """Run one prompt; text, counts and timings back."""

    def generate_many(
        self, prompts: Sequence[Prompt], options: GenerationOptions, progress: Progress | None = None
    ) -> list[Generation]:
        """Several prompts of one task (compare_budgets' rows), in order; one after another here."""
        generations = []
        for n, prompt in enumerate(prompts):
            options.check_cancelled()
            if progress:
                progress(n, len(prompts), f"budget {prompt.budget}")
            generations.append(self.generate(prompt, options))
        return generations

    def token_counter(self) -> Callable[[str], int] | None:
        """The tokenizer's count of a text, for dialects that fit their context by counting; None if unknown."""
        return None

    def control_strings(self) -> set[str]:
        """What user text must not spell out (it would become a control token); without a tokenizer at
        hand, the known markup of the families' chat formats."""
        return set(KNOWN_CONTROL_STRINGS)

    def context_tokens(self) -> int | None:
        """The model's context window in tokens, where the runtime knows it."""
        return None

    def clear_caches(self) -> None:
        """Forget encoded images and kept prompts (benchmarks start cold with it)."""

    def close(self) -> None:
        """Let go of connections; a local model stays until the process ends."""
