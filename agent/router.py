"""The deterministic intent router: which vision tool a plain chat message wants.

Used when the model cannot choose through function calling (PaliGemma, BLIP-2) or its
reply held no valid call: reading words go to ocr, finding / locating / counting words
to detect (with the object names as labels), everything else to describe.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

READ = re.compile(
    r"\b(read|reads|reading|ocr|transcribe|transcription|text|written|writing|say|says|said|sign|label says|"
    r"caption says|words?|letters?|handwriting|menu|receipt)\b",
    re.I,
)
FIND = re.compile(r"\b(find|finds|locate|locates|where|detect|detects|count|counts|how many|spot|box|boxes|point out)\b", re.I)
STOP = frozenset(
    """a an the all any every each of in on at to for from with and or are is be there here this that these those
    image picture photo please can you could would me us show tell find locate where detect count how many spot
    box boxes point out do does it its them they what which objects object""".split()
)


@dataclass(frozen=True)
class Route:
    tool: str
    arguments: dict[str, Any] = field(default_factory=dict)


def singular(word: str) -> str:
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
        return word[:-1]
    return word


def labels_in(message: str) -> list[str]:
    """Object names in a finding request: "find the cat and the red dogs" -> ["cat", "red dog"]."""
    names = []
    for chunk in re.split(r",|;|\band\b|\bor\b", message.lower()):
        words = [w for w in re.findall(r"[a-z][a-z-]*", chunk) if w not in STOP]
        if words:
            names.append(" ".join([*words[:-1], singular(words[-1])]))
    return list(dict.fromkeys(names))


def route(message: str) -> Route:
    if FIND.search(message):
        labels = labels_in(message)
        if labels:
            return Route("detect", {"labels": labels})
    if READ.search(message):
        return Route("ocr")
    return Route("describe", {"prompt": message})
