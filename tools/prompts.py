"""Task prompts, one function per family and task, pure and tested against exact strings."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

from .errors import InvalidRequest

# ---------------------------------------------------------------- Gemma 4

GEMMA4_OCR = (
    "Read all the text in this image, in reading order, in its original language and script. "
    "Keep the line breaks. Output only the text."
)


def gemma4_describe(prompt: str, images: int) -> str:
    """The prompt as given, or a request for a description when it is empty."""
    if prompt:
        return prompt
    return "Describe this image." if images == 1 else "Describe these images."


def gemma4_detect(labels: Sequence[str]) -> str:
    """The detection request the Gemma 4 guide uses ("detect person and car, output only ```json")."""
    names = list(labels)
    listed = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
    return f"detect {listed}, output only ```json"


# ---------------------------------------------------------------- PaliGemma

PALIGEMMA_OCR = "ocr"
DEFAULT_LANG = "en"

# Language codes as PaliGemma's prefixes take them: "en", "es", "zh", "pt-BR", "fil".
_LANG = r"[a-z]{2,3}(?:[-_][A-Za-z0-9]{2,8})?"
_LANG_CODE = re.compile(rf"{_LANG}")
# The mix checkpoints' task prefixes, in the form the model was trained on; lower case on purpose,
# so that "Describe this image." is a request to interpret, not a prefix.
_PALIGEMMA_TASK = re.compile(
    rf"(?:caption|describe) {_LANG}|ocr|(?:answer|question) {_LANG} \S.*|(?:detect|segment) \S.*"
)
_OBJECT = r"(?: (?:image|images|picture|pictures|photo|photos|photograph|scene))"
_CAPTION_REQUEST = re.compile(
    r"(?:please )?(?:"
    rf"(?:describe|caption)(?: (?:this|the|these))?{_OBJECT}?(?: (?:briefly|in detail|in one sentence))?"
    r"|(?:write|give|generate|provide|create)(?: me)? an? (?:(?:short|brief|detailed) )?(?:caption|description)"
    rf"(?: (?:of|for) (?:this|the|these){_OBJECT})?"
    rf"|what(?:'s| is) (?:in|shown in|depicted in) (?:this|the){_OBJECT}"
    r")"
)


def _one_line(text: str) -> str:
    # PaliGemma ends the prefix at "\n": a line break inside it would cut the request short.
    return " ".join(text.split())


def check_lang(lang: str) -> str:
    if not (isinstance(lang, str) and _LANG_CODE.fullmatch(lang)):
        raise InvalidRequest(f"Language '{lang}' is not a language code such as en, es or pt-BR.")
    return lang


def is_paligemma_task(prompt: str) -> bool:
    """Whether the prompt already is a PaliGemma task prefix ("caption es", "detect cat", "ocr")."""
    return _PALIGEMMA_TASK.fullmatch(_one_line(prompt)) is not None


def is_caption_request(prompt: str) -> bool:
    """Whether the prompt asks for a caption or a description of the whole image (empty counts)."""
    text = _one_line(prompt).lower().rstrip(".!?")
    return not text or _CAPTION_REQUEST.fullmatch(text) is not None


def paligemma_describe(prompt: str, lang: str = DEFAULT_LANG) -> str:
    """``caption LANG`` for a caption request, a task prefix as is, otherwise ``answer LANG QUESTION``."""
    text = _one_line(prompt)
    if is_paligemma_task(text):
        return text
    if is_caption_request(text):
        return f"caption {check_lang(lang)}"
    return f"answer {check_lang(lang)} {text}"


def _paligemma_label(label: str) -> str:
    text = _one_line(label)
    if ";" in text:
        raise InvalidRequest(f"PaliGemma separates labels with ';', so the label '{text}' cannot contain one.")
    return text


def paligemma_detect(labels: Sequence[str]) -> str:
    """``detect cat ; dog``: the labels joined the way PaliGemma's detection prefix takes them."""
    return "detect " + " ; ".join(_paligemma_label(label) for label in labels)


def paligemma_segment(label: str) -> str:
    return f"segment {_paligemma_label(label)}"


# ---------------------------------------------------------------- BLIP-2

#: BLIP-2's language models (OPT, Flan-T5) were trained on at most this many tokens.
BLIP2_CONTEXT_TOKENS = 512
#: BLIP-2 has no reading task: the nearest it has is a question about the text.
BLIP2_OCR = "Question: What text is written in this image? Answer:"

_QUESTION_WORDS = frozenset(
    "what who whom whose where when why how which is are was were do does did can could will would "
    "should shall may might has have had".split()
)


def is_question(prompt: str) -> bool:
    """A question mark at the end, or a question word first."""
    text = _one_line(prompt)
    if not text:
        return False
    return text.endswith("?") or text.split()[0].lower().strip(",") in _QUESTION_WORDS


def blip2_turn(prompt: str) -> str:
    """This turn's text: nothing (a caption), ``Question: Q Answer:``, or the prompt to continue."""
    text = _one_line(prompt)
    if text.startswith("Question:") or not is_question(text):
        return text
    return f"Question: {text} Answer:"


def blip2_pair(question: str, answer: str) -> str:
    """One prior exchange as the BLIP-2 write-up renders it: ``Question: Q Answer: A.``"""
    question, answer = _one_line(question), _one_line(answer)
    parts = [f"Question: {question} Answer:"] if question else []
    if answer:
        # the write-up's template appends "." even after one ("En el bosque.."); one is enough
        parts.append(answer if answer.endswith(".") else answer + ".")
    return " ".join(parts)


def blip2_pairs(turns: Sequence[tuple[str, str]]) -> list[tuple[str, int]]:
    """Prior ``(role, text)`` turns as rendered question/answer pairs, each with how many turns it holds.

    A pair is a run of user turns followed by a run of assistant turns; a missing side
    is left out of the rendering (an answer alone, or a question not answered).
    """
    pairs: list[tuple[str, int]] = []
    questions: list[str] = []
    answers: list[str] = []
    for role, text in turns:
        if role == "user" and answers:
            pairs.append((blip2_pair(" ".join(questions), " ".join(answers)), len(questions) + len(answers)))
            questions, answers = [], []
        (questions if role == "user" else answers).append(text)
    if questions or answers:
        pairs.append((blip2_pair(" ".join(questions), " ".join(answers)), len(questions) + len(answers)))
    return pairs


def blip2_chat(
    pairs: Sequence[str],
    current: str,
    count_tokens: Callable[[str], int],
    limit: int = BLIP2_CONTEXT_TOKENS,
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


def _function(name: str, description: str, properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {
        "type": "function",
        "function": {
            "name": name,
            "description": description,
            "parameters": {"type": "object", "properties": properties, "required": required},
        },
    }


#: What the chat agent offers Gemma 4 through its native function calling. The images
#: are the conversation's; the model only picks the tool and its words.
CHAT_TOOLS: list[dict[str, Any]] = [
    _function(
        "describe", "Describe the attached images or answer a question about them.",
        {"prompt": {"type": "string", "description": "the question or instruction"}}, ["prompt"],
    ),
    _function("ocr", "Read all text in the attached image, in reading order.", {}, []),
    _function(
        "detect", "Find, locate or count objects in the attached image; returns labelled boxes.",
        {"labels": {"type": "array", "items": {"type": "string"}, "description": "object names, e.g. ['car']"}},
        ["labels"],
    ),
    _function(
        "compare_budgets", "Compare the answer at several visual-token budgets (image detail levels).",
        {"prompt": {"type": "string", "description": "the question to compare"}}, [],
    ),
]

CHAT_SYSTEM = (
    "You are a vision assistant with tools over the user's images. Call exactly one tool that best answers "
    "the user's message."
)
