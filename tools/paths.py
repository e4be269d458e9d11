"""Where vlm-agent keeps its files: one data folder, one folder of pictures for every front end."""

from __future__ import annotations

import os
from pathlib import Path

HOME_ENV = "VLM_AGENT_HOME"


def data_home() -> Path:
    """The user data folder (the chat's database, input history, server log, pictures).

    ``$VLM_AGENT_HOME`` overrides it.
    """
    override = os.environ.get(HOME_ENV)
    if override:
        return Path(override)
    import platformdirs

    return platformdirs.user_data_path("vlm-agent")


def outputs_dir() -> Path:
    """Where annotated pictures go when no folder is named: the chat's and the server's alike."""
    return data_home() / "outputs"
