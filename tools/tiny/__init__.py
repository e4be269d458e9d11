"""Tiny random-weight checkpoints for offline smoke runs and tests, one builder module per family.

Real configs, real processor classes and a locally built tokenizer that holds every
special token of the family, saved with ``save_pretrained`` so they load back through
the production path (``from_pretrained`` on a local directory). Weights are random:
outputs are gibberish, but token counts, shapes and timings of the plumbing are real.

Test tooling, not part of the model path: nothing in ``tools`` imports this package; the CLI's
``tiny-model`` and ``demo``, the tests and the benchmark do. A new family adds its builder module
here and one entry in ``BUILDERS``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from ..errors import InvalidRequest
from .blip2 import build_blip2, build_blip2_t5
from .gemma4 import build_gemma4
from .paligemma import build_paligemma
from .qwen3_vl import build_qwen3_vl

#: ``vlm-agent tiny-model --family NAME`` -> builder of a tiny random-weight checkpoint
BUILDERS: dict[str, Callable[..., Path]] = {
    "gemma4": build_gemma4,
    "paligemma": build_paligemma,
    "blip2": build_blip2,
    "blip2-t5": build_blip2_t5,
    "qwen3_vl": build_qwen3_vl,
}

#: the key ``build_tiny`` adds to a checkpoint's config.json: the front ends tell a tiny model by it
TINY_MARKER = "vlm_agent_tiny"

__all__ = ["BUILDERS", "TINY_MARKER", "build_tiny", "is_tiny"]


def build_tiny(out_dir: str | Path, family: str = "gemma4", *, seed: int = 0) -> Path:
    """Build a tiny random-weight checkpoint of ``family`` in ``out_dir``."""
    try:
        builder = BUILDERS[family]
    except KeyError:
        raise InvalidRequest(
            f"Unknown family '{family}'; choose one of: {', '.join(BUILDERS)}.", param="family"
        ) from None
    out = Path(builder(out_dir, seed=seed))
    config = out / "config.json"
    data = json.loads(config.read_text(encoding="utf-8"))
    data[TINY_MARKER] = True
    config.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return out


def is_tiny(model: str) -> bool:
    """Whether ``model`` is a local folder holding a checkpoint ``build_tiny`` wrote (config.json only is read)."""
    try:
        data = json.loads((Path(model).expanduser() / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get(TINY_MARKER) is True
