"""Generation options shared by every backend, validated once at the edge."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field, replace

from .errors import Cancelled, InvalidRequest

MAX_NEW_TOKENS_LIMIT = 8192


#: the smallest sampling temperature; below it, use 0 (greedy decoding)
MIN_TEMPERATURE = 0.01


@dataclass(frozen=True)
class GenerationOptions:
    max_new_tokens: int = 512
    #: 0 means greedy decoding (the default); above 0 samples.
    temperature: float = 0.0
    top_p: float = 1.0
    #: forces a length: benchmarks time a fixed number of tokens
    min_new_tokens: int | None = None
    #: set by whoever runs the request (the MCP server, when its caller cancels or hangs up) to
    #: stop it: a request waiting for the model gives up, and a generation stops at its next step
    cancel: threading.Event | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not 1 <= self.max_new_tokens <= MAX_NEW_TOKENS_LIMIT:
            raise InvalidRequest(
                f"{{param}} must be between 1 and {MAX_NEW_TOKENS_LIMIT}, got {self.max_new_tokens}.",
                param="max_new_tokens",
            )
        # Tiny temperatures divide the logits into infinities: sampling then fails inside the model.
        if not (self.temperature == 0.0 or MIN_TEMPERATURE <= self.temperature <= 2.0):
            raise InvalidRequest(
                f"{{param}} must be 0 (greedy) or between {MIN_TEMPERATURE} and 2, got {self.temperature:g}.",
                param="temperature",
            )
        if not 0.0 < self.top_p <= 1.0:
            raise InvalidRequest(f"{{param}} must be above 0 and at most 1, got {self.top_p}.", param="top_p")
        if self.min_new_tokens is not None and not 0 <= self.min_new_tokens <= self.max_new_tokens:
            raise InvalidRequest("min_new_tokens must be between 0 and max_new_tokens.")

    def with_cancel(self, cancel: threading.Event | None) -> GenerationOptions:
        return replace(self, cancel=cancel)

    def check_cancelled(self) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise Cancelled("The request was cancelled before it finished; send it again if it is still wanted.")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def generate_kwargs(self) -> dict[str, object]:
        """Keyword arguments for ``model.generate``."""
        kwargs: dict[str, object] = {"max_new_tokens": self.max_new_tokens, "do_sample": not self.greedy}
        if not self.greedy:
            kwargs.update(temperature=self.temperature, top_p=self.top_p)
        else:
            # Checkpoints ship sampling defaults; greedy must not inherit them.
            kwargs.update(temperature=None, top_p=None, top_k=None)
        if self.min_new_tokens is not None:
            kwargs["min_new_tokens"] = self.min_new_tokens
        return kwargs


#: The decoding choices of PaliGemma's demo, usable with every family.
PRESETS: dict[str, GenerationOptions] = {
    "greedy": GenerationOptions(),
    "nucleus-0.1": GenerationOptions(temperature=1.0, top_p=0.1),
    "nucleus-0.3": GenerationOptions(temperature=1.0, top_p=0.3),
    "temperature-0.5": GenerationOptions(temperature=0.5),
}


def resolve_options(
    preset: str | None = None,
    *,
    max_new_tokens: int = 512,
    temperature: float | None = None,
    top_p: float | None = None,
) -> GenerationOptions:
    """Options from a named preset, with any explicitly given value taking precedence over it."""
    if preset is not None and preset not in PRESETS:
        raise InvalidRequest(f"Unknown preset '{preset}'; use one of {', '.join(PRESETS)}.")
    base = PRESETS[preset or "greedy"]
    return GenerationOptions(
        max_new_tokens=max_new_tokens,
        temperature=base.temperature if temperature is None else temperature,
        top_p=base.top_p if top_p is None else top_p,
    )
