"""The model hub, asked once and briefly: a machine without network learns so in seconds.

transformers retries an unreachable hub with backoff for about half a minute before it
gives up; a user who typed the default model on an offline machine should not wait for that.
"""

from __future__ import annotations

import logging
import os

import httpx

from ..errors import ModelNotFound

log = logging.getLogger("vlm_agent.hub")

#: seconds to wait for the hub to answer at all
PROBE_TIMEOUT_S = 3.0


def is_cached(model_id: str) -> bool:
    """Whether the checkpoint's config is already in the local hub cache."""
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(model_id, "config.json")
    except ValueError:  # not a valid repository id: the download reports that
        return False
    return isinstance(found, str)


def check_reachable(model_id: str) -> None:
    """Raise ``ModelNotFound`` at once when ``model_id`` is neither cached nor fetchable.

    Any answer from the hub, even an error status, counts as reachable: the download then
    reports what is wrong with the id itself.
    """
    from huggingface_hub import constants

    if is_cached(model_id):
        return
    name = model_id.rstrip("/").rsplit("/", 1)[-1] or "model"
    fix = (
        f"download it once on a machine with network (for example `hf download {model_id} --local-dir ./{name}`) "
        "and pass that directory as {param} (or VLM_AGENT_MODEL)"
    )
    if constants.HF_HUB_OFFLINE or os.environ.get("TRANSFORMERS_OFFLINE") == "1":
        raise ModelNotFound(
            f"Model '{model_id}' is not on this machine and hub downloads are switched off; {fix}.", param="model"
        )
    try:
        httpx.head(constants.ENDPOINT, timeout=PROBE_TIMEOUT_S)
    except httpx.HTTPError as exc:
        log.debug("hub probe failed: %r", exc)
        raise ModelNotFound(
            f"Model '{model_id}' is not on this machine and the model hub could not be reached to fetch it; {fix}.",
            param="model",
        ) from None
