"""What a request may hold, checked where it enters the core, before any image is read.

Every front end (the CLI, the MCP server, ``run`` scripts) calls these same checks: each
parameter is refused in one sentence naming it, and the layers below trust what passed.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

from .reading import tiling
from .errors import InvalidRequest
from .tasks import Turn

MAX_PROMPT_CHARS = 32_000
#: an earlier answer sent back as history: the longest answer (8192 tokens) the model can write
MAX_ANSWER_CHARS = 8192 * 32
MAX_IMAGES = 16
MAX_LABELS = 20
MAX_LABEL_CHARS = 100
MAX_HISTORY_TURNS = 64

#: the budget that picks itself (``tools.jobs.auto_budget``)
AUTO = "auto"
#: what a budget may be, as every front end's refusal says it
BUDGET_FORMS = "a budget number or 'auto'"

#: bidirectional overrides and isolates: they reorder what a person reads
_BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def check_text(text: str, what: str, param: str | None = None, limit: int = MAX_PROMPT_CHARS) -> str:
    """``text`` if it is usable prompt text; ``param`` names the request parameter it came in."""
    if not isinstance(text, str):
        raise InvalidRequest(f"{what} must be text.", param=param)
    if "\x00" in text:
        raise InvalidRequest(f"{what} contains a NUL byte; remove it and send the text again.", param=param)
    if len(text) > limit:
        raise InvalidRequest(f"{what} is {len(text)} characters; the limit is {limit}.", param=param)
    try:
        # Lone surrogates (undecodable bytes in argv, or an in-process caller) crash tokenizers.
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidRequest(f"{what} is not valid Unicode text; send it as UTF-8.", param=param) from None
    return text


def check_labels(labels: Sequence[str]) -> list[str]:
    if isinstance(labels, str):
        labels = [labels]
    cleaned = [check_text(label, "A label", "labels").strip() for label in labels]
    if not cleaned or not all(cleaned):
        raise InvalidRequest("Give at least one non-empty label to detect, for example 'person'.", param="labels")
    if len(cleaned) > MAX_LABELS:
        raise InvalidRequest(f"{len(cleaned)} labels given; detect at most {MAX_LABELS} at once.", param="labels")
    for label in cleaned:
        if len(label) > MAX_LABEL_CHARS or any(_breaks_line(char) for char in label):
            raise InvalidRequest(
                f"Labels must be one line of at most {MAX_LABEL_CHARS} characters, without control characters.",
                param="labels",
            )
    return list(dict.fromkeys(cleaned))


def _breaks_line(char: str) -> bool:
    """A character a one-line label may not hold: controls (\\r, ESC, ...), line and paragraph separators."""
    return unicodedata.category(char) in ("Cc", "Zl", "Zp") or char in _BIDI_CONTROLS


def check_count(refs: Sequence[str]) -> None:
    """The image cap, counted from the references before any is read."""
    if not isinstance(refs, str) and len(refs) > MAX_IMAGES:
        raise InvalidRequest(f"{len(refs)} images given; send at most {MAX_IMAGES} in one call.", param="images")


def budget_value(value: str | int | None) -> int | Literal["auto"] | None:
    """A budget as a caller writes it: None (the model's own), a whole number, or ``auto`` in
    any case or spacing; text is read as a number the way ``int`` reads it.

    A front end may take fewer forms (a script wants a number, not text) and frames the refusal
    its own way; what a budget may be (``BUDGET_FORMS``) is said here.
    """
    if value is None or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    if isinstance(value, str):
        text = value.strip()
        if text.lower() == AUTO:
            return AUTO
        try:
            return int(text)
        except ValueError:
            pass
    raise InvalidRequest(f"{str(value)[:20]!r} is not {BUDGET_FORMS}", param="budget")


def two_budgets(budgets: Sequence[int], param: str) -> list[int]:
    """``budgets`` sorted, once each; refused unless there are two or more to compare."""
    chosen = sorted(set(budgets))
    if len(chosen) < 2:
        # Named as the caller named them: the CLI's detect takes them as --consensus, not --budgets.
        template = "Give at least two different {param} to compare" if param == "budgets" else (
            "Give {param} at least two different budgets to compare"
        )
        raise InvalidRequest(template + ", for example {list:70,280,1120}.", param=param)
    return chosen


def check_consensus(consensus: Sequence[int], tiles: str | int, budget: int | str | None) -> None:
    """What consensus needs before any model is known (a front end calls this before loading one,
    too): two budgets or more, and no budget or tiles beside them, since it runs its own budgets
    on the whole image."""
    if tiles != tiling.TILES_OFF or budget is not None:
        raise InvalidRequest(
            "{param} runs its own budgets on the whole image; leave {param:budget} and {param:tiles} unset.",
            param="consensus",
        )
    two_budgets(consensus, "consensus")


def parse_history(
    history: Sequence[Mapping[str, Any] | Turn],
    plain: Callable[[str], str],
    load: Callable[[list[str]], list[Any]],
) -> list[Turn]:
    """Prior turns from plain dicts (``{"role", "content", "images"}``), their text made ``plain``.

    Every entry is checked and its images counted before ``load`` reads or decodes one.
    """
    if len(history) > MAX_HISTORY_TURNS:
        raise InvalidRequest(f"History has {len(history)} turns; send at most {MAX_HISTORY_TURNS}.", param="history")
    checked: list[Turn | tuple[str, str, list[str]]] = []
    for n, entry in enumerate(history, start=1):
        if isinstance(entry, Turn):
            checked.append(entry)
            continue
        if not isinstance(entry, Mapping):
            raise InvalidRequest(f"History entry {n} must be an object with 'role' and 'content'.", param="history")
        role = entry.get("role")
        if role not in ("user", "assistant"):
            raise InvalidRequest(f"History entry {n} has role {role!r}; use 'user' or 'assistant'.", param="history")
        # An answer the model wrote may be longer than a prompt; it must never be refused on the way back.
        limit = MAX_ANSWER_CHARS if role == "assistant" else MAX_PROMPT_CHARS
        text = plain(check_text(entry.get("content", ""), f"History entry {n}", "history", limit))
        refs = entry.get("images") or []
        if not isinstance(refs, list) or not all(isinstance(r, str) for r in refs):
            raise InvalidRequest(f"History entry {n} has 'images' that is not a list of image strings.", param="history")
        checked.append((role, text, refs))
    count = sum(len(c.images) if isinstance(c, Turn) else len(c[2]) for c in checked)
    if count > MAX_IMAGES:
        raise InvalidRequest(f"History holds {count} images, more than {MAX_IMAGES}; drop older turns.", param="history")
    turns: list[Turn] = []
    for item in checked:
        if isinstance(item, Turn):
            turns.append(item)
            continue
        role, text, refs = item
        images = tuple(loaded.input for loaded in load(refs))
        turns.append(Turn(role=role, text=text, images=images))  # type: ignore[arg-type]
    return turns
