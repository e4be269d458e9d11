"""The model families: one dialect module each, registered here by the config ``model_type`` it reads.

Adding a family is one module under ``tools/families/`` with a ``Dialect`` subclass and one entry in
``DIALECTS``; for tests and offline runs, a tiny-checkpoint builder in ``tools/tiny/`` (registered
there, in ``tools.tiny.BUILDERS``: this registry never imports test tooling).
"""

from __future__ import annotations

from .base import Dialect
from .blip2 import Blip2
from .gemma4 import Gemma4
from .paligemma import PaliGemma
from .qwen3_vl import Qwen3VL

#: every family vlm-agent runs, in the order docs and messages list them
DIALECTS: tuple[type[Dialect], ...] = (Gemma4, PaliGemma, Blip2, Qwen3VL)

#: config ``model_type`` -> dialect
BY_MODEL_TYPE: dict[str, type[Dialect]] = {model_type: d for d in DIALECTS for model_type in d.model_types}
#: the short family name results report -> dialect
BY_FAMILY: dict[str, type[Dialect]] = {d.family: d for d in DIALECTS}

__all__ = ["BY_FAMILY", "BY_MODEL_TYPE", "DIALECTS", "Dialect", "families_that"]


def families_that(task: str) -> list[str]:
    """Display names of the families that can do ``task`` on a local checkpoint, for error messages."""
    return [d.display_name for d in DIALECTS if task in d.tasks]
