"""PaliGemma through its task prefixes: single-turn, fixed resolution, boxes as <loc> tokens.

Boxes. PaliGemma writes ``<locY1><locX1><locY2><locX2> label`` groups joined by `` ; ``: four
location tokens ``<loc0000>``..``<loc1023>``, y first, on a 1024 grid, ``segment`` adding 16
``<segNNN>`` mask codes.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from ..boxes.detections import Collector, Drop, ParsedDetections, label_of
from ..errors import InvalidRequest
from ..tasks import Ask, Capabilities, Prompt
from .base import Dialect, TokenCounter, listed, one_line, prompt_images, single_turn_note

#: PaliGemma <locNNNN> tokens are 1024 bins, 0000..1023.
GRID = 1024
#: PaliGemma's mask decoder takes exactly this many <segNNN> codes.
SEG_CODES = 16

# ---------------------------------------------------------------- prompts

OCR = "ocr"
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


def check_lang(lang: str) -> str:
    if not (isinstance(lang, str) and _LANG_CODE.fullmatch(lang)):
        raise InvalidRequest(f"Language '{lang}' is not a language code such as en, es or pt-BR.")
    return lang


def is_paligemma_task(prompt: str) -> bool:
    """Whether the prompt already is a PaliGemma task prefix ("caption es", "detect cat", "ocr")."""
    return _PALIGEMMA_TASK.fullmatch(one_line(prompt)) is not None


def is_caption_request(prompt: str) -> bool:
    """Whether the prompt asks for a caption or a description of the whole image (empty counts)."""
    text = one_line(prompt).lower().rstrip(".!?")
    return not text or _CAPTION_REQUEST.fullmatch(text) is not None


def describe_text(prompt: str, lang: str = DEFAULT_LANG) -> str:
    """``caption LANG`` for a caption request, a task prefix as is, otherwise ``answer LANG QUESTION``."""
    text = one_line(prompt)
    if is_paligemma_task(text):
        return text
    if is_caption_request(text):
        return f"caption {check_lang(lang)}"
    return f"answer {check_lang(lang)} {text}"


def _label(label: str) -> str:
    text = one_line(label)
    if ";" in text:
        raise InvalidRequest(f"PaliGemma separates labels with ';', so the label '{text}' cannot contain one.")
    return text


def detect_text(labels: Sequence[str]) -> str:
    """``detect cat ; dog``: the labels joined the way PaliGemma's detection prefix takes them."""
    return "detect " + " ; ".join(_label(label) for label in labels)


def segment_text(label: str) -> str:
    return f"segment {_label(label)}"


#: why a segmentation comes back as codes and a box, never as a mask
NO_MASK_DECODER = (
    "no mask: PaliGemma's 16 <seg> codes are in seg_codes; turning them into a mask needs its VQ-VAE "
    "decoder weights, which are not available here"
)
#: PaliGemma's processor writes this placeholder once per image and expands it itself
IMAGE_TOKEN = "<image>"


class PaliGemma(Dialect):
    family = "paligemma"
    display_name = "PaliGemma"
    model_types = ("paligemma",)
    tasks = frozenset({"describe", "ocr", "detect", "segment", "extract"})
    prompt_form = "text"

    #: language of captions and answers when the prompt names none ("caption es" names one)
    lang: str = DEFAULT_LANG

    @classmethod
    def from_config(cls, config: Any) -> Capabilities:
        vision = config.vision_config
        tokens = getattr(config.get_text_config(), "num_image_tokens", None) or (
            (vision.image_size // vision.patch_size) ** 2
        )
        return Capabilities(
            tasks=cls.tasks,
            context_policy="single-turn",
            image_tokens=int(tokens),
            context_tokens=getattr(config.get_text_config(), "max_position_embeddings", None),
            box_grid=GRID,
            box_order="yx",
        )

    def prompt(self, ask: Ask, count_tokens: TokenCounter | None = None) -> Prompt:
        notes: list[str] = []
        images = list(ask.images)
        if ask.task == "ocr":
            task = OCR
        elif ask.task == "detect":
            task = detect_text(ask.labels)
        elif ask.task == "segment":
            task = segment_text(ask.labels[0])
            notes.append(NO_MASK_DECODER)
        elif ask.task == "extract":
            # A question in its answer prefix; the schema's grammar writes the JSON.
            task = one_line(f"answer {self.lang} What are the {listed(ask.labels)}?")
        else:
            images, notes = prompt_images(self.display_name, ask.images, ask.history)
            notes[:0] = single_turn_note(self.display_name, ask.history)
            task = describe_text(ask.prompt, self.lang)
        # One <image> placeholder per image; the processor expands each and adds <bos> and the "\n".
        return Prompt(images=images, text=IMAGE_TOKEN * len(images) + task, notes=notes, schema=ask.schema)

    def parse_boxes(self, text: str, size: tuple[int, int]) -> ParsedDetections:
        return from_loc_tokens(text, size)


# ---------------------------------------------------------------- boxes

_LOC_ITEM = re.compile(r"((?:<loc\d{4}>\s*)+)((?:<seg\d{3}>\s*)*)([^;<]*)")
_NUMBER_TOKEN = re.compile(r"\d+")



def from_loc_tokens(text: str, image_size: tuple[int, int], grid: int = GRID) -> ParsedDetections:
    """Detections from PaliGemma's ``<locY1><locX1><locY2><locX2>[16 <segNNN>] label ; ...``.

    An item is a run of <loc> tokens, the <seg> tokens after it, and the text up to
    the next ``;`` or token; text with no <loc> token (an echoed prompt, ``<eos>``)
    is not an item. A run of other than 4 <loc> tokens is dropped. A box with
    other than 16 <seg> codes is kept without them, and the codes reported dropped.
    """
    out = Collector(image_size, grid)
    for number, match in enumerate(_LOC_ITEM.finditer(text), start=1):
        locs, segs, label = match.groups()
        yxyx = [float(v) for v in _NUMBER_TOKEN.findall(locs)]
        codes = tuple(int(v) for v in _NUMBER_TOKEN.findall(segs))
        whole_mask = len(codes) in (0, SEG_CODES)
        try:
            if len(yxyx) != 4:
                raise Drop(f"box has {len(yxyx)} <loc> tokens, need 4")
            out.add(number, label_of(label), yxyx, match.group(0).strip(), codes if whole_mask else ())
        except Drop as reason:
            out.drop(number, str(reason))
            continue
        if not whole_mask:
            out.drop(number, f"{len(codes)} <seg> tokens, need {SEG_CODES}: mask codes ignored, box kept")
    return out.result()
