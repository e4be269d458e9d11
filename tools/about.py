"""What this installation is."""

from __future__ import annotations


def package_version() -> str:
    """The installed distribution's version; "unknown" for a source tree never installed."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("vlm-agent")
    except PackageNotFoundError:
        return "unknown"
