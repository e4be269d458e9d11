"""BLIP-2 (OPT or Flan-T5): captions, prompted continuation, questions, and chat by concatenation."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ..errors import InvalidRequest, Unsupported
from ..tasks import Ask, Capabilities, Prompt, plural
from .base import Dialect, TokenCounter, listed, one_line, prompt_images

# ---------------------------------------------------------------- prompts

#: BLIP-2's language models (OPT, Flan-T5) were trained on at most this many tokens.
CONTEXT_TOKENS = 512
#: BLIP-2 has no reading task: the nearest it has is a question about the text.
OCR = "Question: What text is written in this image? Answer:"

_QUESTION_WORDS = frozenset(
    "what who whom whose where when why how which is are was were do does did can could will would "
    "should shall may might has have had".split()
)


def is_question(prompt: str) -> bool:
    """A question mark at the end, or a question word first."""
    text = one_line(prompt)
    if not text:
        return False
    return text.endswith("?") or text.split()[0].lower().strip(",") in _QUESTION_WORDS


def turn_text(prompt: str) -> str:
    """This turn's text: nothing (a caption), ``Question: Q Answer:``, or the prompt to continue."""
    text = one_line(prompt)
    if text.startswith("Question:") or not is_question(text):
        return text
    return f"Question: {text} Answer:"


def pair_text(question: str, answer: str) -> str:
    """One prior exchange as the BLIP-2 write-up renders it: ``Question: Q Answer: A.``"""
    question, answer = one_line(question), one_line(answer)
    parts = [f"Question: {question} Answer:"] if question else []
    if answer:
        # the write-up's template appends "." even after one ("En el bosque.."); one is enough
        parts.append(answer if answer.endswith(".") else answer + ".")
    return " ".join(parts)


def pairs_of(turns: Sequence[tuple[str, str]]) -> list[tuple[str, int]]:
    """Prior ``(role, text)`` turns as rendered question/answer pairs, each with how many turns it holds.

    A pair is a run of user turns followed by a run of assistant turns; a missing side
    is left out of the rendering (an answer alone, or a question not answered).
    """
    pairs: list[tuple[str, int]] = []
    questions: list[str] = []
    answers: list[str] = []
    for role, text in turns:
        if role == "user" and answers:
            pairs.append((pair_text(" ".join(questions), " ".join(answers)), len(questions) + len(answers)))
            questions, answers = [], []
        (questions if role == "user" else answers).append(text)
    if questions or answers:
        pairs.append((pair_text(" ".join(questions), " ".join(answers)), len(questions) + len(answers)))
    return pairs


def fit_chat(
    pairs: Sequence[str],
    current: str,
    count_tokens: Callable[[str], int],
    limit: int = CONTEXT_TOKENS,
) -> tuple[str, int]:
    """The prompt: prior pairs then this turn, joined by spaces, with the oldest pairs dropped until
    ``count_tokens(prompt) <= limit``. Returns the prompt and how many pairs were dropped.

    The current turn is never dropped: when it alone is too long, the request is refused.
    """
    for dropped in range(len(pairs) + 1):
        prompt = " ".join(part for part in (*pairs[dropped:], current) if part)
        tokens = count_tokens(prompt)
        if tokens <= limit:
            return prompt, dropped
    raise InvalidRequest(
        f"The prompt alone is {tokens} tokens with the image, past the {limit} that BLIP-2's language model "
        "takes; shorten it."
    )


#: what BLIP-2 does when asked to read, said with every reading
READING_IS_A_QUESTION = (
    "BLIP-2 has no reading task: it was asked what text the image shows, so expect a short answer, "
    "not a transcription"
)


class Blip2(Dialect):
    family = "blip2"
    display_name = "BLIP-2"
    model_types = ("blip-2",)
    tasks = frozenset({"describe", "ocr", "extract"})
    prompt_form = "text"

    @classmethod
    def from_config(cls, config: Any) -> Capabilities:
        return Capabilities(
            tasks=cls.tasks,
            context_policy="concat",
            image_tokens=int(getattr(config, "num_query_tokens", 32)),  # 32: the default of every BLIP-2
            max_images=1,
            context_tokens=CONTEXT_TOKENS,
        )

    def prompt(self, ask: Ask, count_tokens: TokenCounter | None = None) -> Prompt:
        if ask.task == "ocr":
            return Prompt(images=list(ask.images), text=OCR, notes=[READING_IS_A_QUESTION])
        if ask.task == "extract":
            # A question to continue; the schema's grammar writes the JSON.
            return Prompt(
                images=list(ask.images), text=f"Question: What are the {listed(ask.labels)}? Answer:", schema=ask.schema
            )
        if count_tokens is None:
            raise Unsupported("BLIP-2 needs its tokenizer to fit a conversation into its context.")
        images, notes = prompt_images(self.display_name, ask.images, ask.history)
        image_tokens = self.capabilities.image_tokens or 0
        limit = self.capabilities.context_tokens or CONTEXT_TOKENS
        pairs = pairs_of([(turn.role, turn.text) for turn in ask.history])
        text, dropped = fit_chat(
            [pair for pair, _ in pairs], turn_text(ask.prompt),
            lambda text: image_tokens + count_tokens(text), limit,
        )
        if dropped:
            pairs_word = plural(dropped, "oldest question/answer pair", "oldest question/answer pairs")
            notes.append(f"dropped the {pairs_word} to stay under {limit} tokens")
        sent = sum(turns for _, turns in pairs[dropped:])
        return Prompt(images=images, text=text, history_turns=sent, notes=notes)
