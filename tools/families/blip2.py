"""BLIP-2 (OPT or Flan-T5): captions, prompted continuation, questions, and chat by concatenation."""

from __future__ import annotations

from typing import Any

from .. import prompts
from ..errors import Unsupported
from ..tasks import Ask, Capabilities, Prompt, plural
from .base import Dialect, TokenCounter, prompt_images

#: what BLIP-2 does when asked to read, said with every reading
READING_IS_A_QUESTION = (
    "BLIP-2 has no reading task: it was asked what text the image shows, so expect a short answer, "
    "not a transcription"
)


class Blip2(Dialect):
    family = "blip2"
    display_name = "BLIP-2"
    model_types = ("blip-2",)
    tasks = frozenset({"describe", "ocr"})
    prompt_form = "text"

    @classmethod
    def from_config(cls, config: Any) -> Capabilities:
        return Capabilities(
            tasks=cls.tasks,
            context_policy="concat",
            image_tokens=int(getattr(config, "num_query_tokens", 32)),  # 32: the default of every BLIP-2
            max_images=1,
            context_tokens=prompts.BLIP2_CONTEXT_TOKENS,
        )

    def prompt(self, ask: Ask, count_tokens: TokenCounter | None = None) -> Prompt:
        if ask.task == "ocr":
            return Prompt(images=list(ask.images), text=prompts.BLIP2_OCR, notes=[READING_IS_A_QUESTION])
        if count_tokens is None:
            raise Unsupported("BLIP-2 needs its tokenizer to fit a conversation into its context.")
        images, notes = prompt_images(self.display_name, ask.images, ask.history)
        image_tokens = self.capabilities.image_tokens or 0
        limit = self.capabilities.context_tokens or prompts.BLIP2_CONTEXT_TOKENS
        pairs = prompts.blip2_pairs([(turn.role, turn.text) for turn in ask.history])
        text, dropped = prompts.blip2_chat(
            [pair for pair, _ in pairs], prompts.blip2_turn(ask.prompt),
            lambda text: image_tokens + count_tokens(text), limit,
        )
        if dropped:
            pairs_word = plural(dropped, "oldest question/answer pair", "oldest question/answer pairs")
            notes.append(f"dropped the {pairs_word} to stay under {limit} tokens")
        sent = sum(turns for _, turns in pairs[dropped:])
        return Prompt(images=images, text=text, history_turns=sent, notes=notes)
