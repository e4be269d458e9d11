"""BLIP-2 (OPT or Flan-T5): captions, prompted continuation, questions, and chat by concatenation."""

from __future__ import annotations

from collections.abc import Sequence

from PIL import Image

from .. import prompts
from ..options import GenerationOptions
from .base import Generation, Turn
from .hf import HFBackend, plural

#: what BLIP-2 does when asked to read, said with every reading
READING_IS_A_QUESTION = (
    "BLIP-2 has no reading task: it was asked what text the image shows, so expect a short answer, "
    "not a transcription"
)


class Blip2Backend(HFBackend):
    family = "blip2"
    display_name = "BLIP-2"
    context_tokens = prompts.BLIP2_CONTEXT_TOKENS

    @property
    def fixed_image_tokens(self) -> int:
        return int(self.model.config.num_query_tokens)

    def count_tokens(self, text: str) -> int:
        """Tokens the language model sees for ``text``: the query tokens, then the text as the processor encodes it."""
        return self.fixed_image_tokens + len(self.processor.tokenizer(text)["input_ids"])

    def describe(
        self,
        images: Sequence[Image.Image],
        prompt: str,
        history: Sequence[Turn],
        budget: int | None,
        options: GenerationOptions,
    ) -> Generation:
        self.check_fixed_budget(budget)
        pictures, notes = self.prompt_images(images, history, most=1)
        pairs = prompts.blip2_pairs([(turn.role, turn.text) for turn in history])
        text, dropped = prompts.blip2_chat(
            [pair for pair, _ in pairs], prompts.blip2_turn(prompt), self.count_tokens, self.context_tokens
        )
        if dropped:
            pairs_word = plural(dropped, "oldest question/answer pair", "oldest question/answer pairs")
            notes.append(f"dropped the {pairs_word} to stay under {self.context_tokens} tokens")
        sent = sum(turns for _, turns in pairs[dropped:])
        return self.run_prompt(pictures, text, options, history_turns=sent, notes=notes)

    def ocr(self, image: Image.Image, budget: int | None, options: GenerationOptions) -> Generation:
        self.check_fixed_budget(budget)
        return self.run_prompt([image], prompts.BLIP2_OCR, options, notes=[READING_IS_A_QUESTION])
