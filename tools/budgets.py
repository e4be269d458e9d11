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


def square_image_tokens(budget: int) -> int:
    """Image tokens a square image gets at ``budget``."""
    return math.isqrt(budget) ** 2


def check_budget(budget: int, allowed: Sequence[int], family: str) -> int:
    if budget not in allowed:
        choices = " / ".join(str(b) for b in allowed)
        raise InvalidRequest(f"Budget {budget} is not available for {family}; use one of {choices}.")
    return budget
