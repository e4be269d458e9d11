"""``budget: "auto"``: the smallest visual-token budget that does not shrink the image below what the task needs.

Gemma 4 fits an image into ``budget * 9`` patches of 16 px, shrinking a large one. How much
shrinking a task survives depends on the task:

- ocr: the smallest text worth reading (``TEXT_PX`` on the image) must stay at least
  ``LEGIBLE_PX`` when seen; below that, characters blur into their neighbours;
- detect: the smallest object worth finding (``OBJECT_FRACTION`` of the long side) must keep
  at least ``OBJECT_SEEN_PX`` when seen, one 3x3-pooled soft token of 48 px;
- describe (and anything else): no fine detail, so the family's default budget.

An image is never asked to be seen larger than it is: small images meet every need at the
lowest budget. Where even the highest budget shrinks too much, the highest is chosen and the
reason says so and points to tiles.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ..checks import AUTO
from ..errors import InvalidRequest
from ..inputs import LoadedImage
from ..model import Model

#: the smallest text worth reading on the images a budget is chosen for, in image pixels
TEXT_PX = 12
#: the smallest text height the model reads reliably once the image is seen
LEGIBLE_PX = 10
#: the smallest object worth finding, as a fraction of the image's long side
OBJECT_FRACTION = 1 / 16
#: the pixels such an object must keep when seen: one pooled soft token (16 px patches, 3x3)
OBJECT_SEEN_PX = 48

SeenSize = Callable[[tuple[int, int], int], tuple[int, int]]


def resolve(model: Model, budget: int | str | None, task: str, loaded: Sequence[LoadedImage]) -> tuple[int | None, str | None]:
    """The budget to use and, for ``"auto"``, why; other values pass through."""
    if budget != AUTO:
        if isinstance(budget, str):
            raise InvalidRequest(f"Budget {budget[:20]!r} is not a number or 'auto'.", param="budget")
        return budget, None
    caps = model.capabilities
    if not caps.budgets:
        return None, f"{model.display_name} has a fixed resolution, so there is no budget to choose"
    if not loaded:
        return caps.default_budget, "no image, so the default budget"
    # The largest image decides: it is the one a budget shrinks most.
    size = max((image.size for image in loaded), key=lambda s: s[0] * s[1])
    return choose(task, size, caps.budgets, caps.default_budget or max(caps.budgets), model.seen_size)


def needed_scale(task: str, size: tuple[int, int]) -> float | None:
    """How far the task lets the image shrink (seen / original), or None for no fine-detail need."""
    if task == "ocr":
        return LEGIBLE_PX / TEXT_PX
    if task == "detect":
        return min(1.0, OBJECT_SEEN_PX / (max(size) * OBJECT_FRACTION))
    return None


def choose(
    task: str, size: tuple[int, int], budgets: Sequence[int], default: int, seen_size: SeenSize
) -> tuple[int, str]:
    """(budget, reason): the smallest of ``budgets`` at which ``task`` keeps what it needs."""
    need = needed_scale(task, size)
    if need is None:
        return default, f"{task} needs no fine detail, so the default budget {default}"
    width, height = size
    scale = 0.0
    for budget in sorted(budgets):
        seen = seen_size(size, budget)
        scale = min(seen[0] / width, seen[1] / height)
        if scale >= need - 1e-9:
            return budget, f"the smallest budget at which {_what(task, size, scale)} ({width}x{height} seen at {seen[0]}x{seen[1]})"
    top = max(budgets)
    return top, f"even at {top} {_what(task, size, scale)}, below the {_need(task)} needed; read it in tiles"


def in_tiles(task: str, page: tuple[int, int], tiles: int, tile: tuple[int, int], seen: tuple[int, int]) -> str:
    """What a reason adds when the image was read in ``tiles`` tiles, the largest ``tile`` seen at
    ``seen``: the whole page's verdict alone would say text was lost that the tiles kept."""
    scale = min(seen[0] / tile[0], seen[1] / tile[1])
    return f"; read in {tiles} tiles of up to {tile[0]}x{tile[1]} (seen at {seen[0]}x{seen[1]}), where {_what(task, page, scale)}"


def _what(task: str, size: tuple[int, int], scale: float) -> str:
    if task == "ocr":
        return f"{TEXT_PX} px text is seen at {TEXT_PX * min(scale, 1.0):.1f} px"
    obj = max(size) * OBJECT_FRACTION
    return f"an object of 1/{round(1 / OBJECT_FRACTION)} of the long side ({obj:.0f} px) is seen at {obj * min(scale, 1.0):.0f} px"


def _need(task: str) -> str:
    return f"{LEGIBLE_PX} px" if task == "ocr" else f"{OBJECT_SEEN_PX} px"
