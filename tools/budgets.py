"""Gemma 4 visual-token budgets.

A budget caps the soft tokens an image becomes: the encoder sees at most
``budget * 9`` 16-px patches, pooled 3x3, so a square image gives
``floor(sqrt(budget))**2`` tokens (64 / 121 / 256 / 529 / 1089).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from .errors import InvalidRequest

GEMMA4_BUDGETS: tuple[int, ...] = (70, 140, 280, 560, 1120)
DEFAULT_BUDGET = 280
#: Gemma 4's image processor: 16-px patches, pooled 3x3 into one soft token
GEMMA4_PATCH = 16
GEMMA4_POOLING = 3


def square_image_tokens(budget: int) -> int:
    """Image tokens a square image gets at ``budget``."""
    return math.isqrt(budget) ** 2


def check_budget(budget: int, allowed: Sequence[int], family: str) -> int:
    if budget not in allowed:
        choices = " / ".join(str(b) for b in allowed)
        raise InvalidRequest(f"Budget {budget} is not available for {family}; use one of {choices}.")
    return budget


def gemma4_seen_size(
    size: tuple[int, int], budget: int, patch_size: int = GEMMA4_PATCH, pooling: int = GEMMA4_POOLING
) -> tuple[int, int]:
    """(width, height) Gemma 4's vision encoder sees an image of ``size`` at ``budget``."""
    from transformers.models.gemma4.image_processing_gemma4 import get_aspect_ratio_preserving_size

    width, height = size
    h, w = get_aspect_ratio_preserving_size(height, width, patch_size, budget * pooling**2, pooling)
    return w, h
