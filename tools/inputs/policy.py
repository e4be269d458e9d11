"""What a server or command may read (folders, files, URLs), and the caps on one image."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InvalidRequest
from .shown import MiB, quoted


def resolve_path(p: str | Path) -> Path:
    return Path(os.path.expanduser(p)).resolve()


@dataclass(frozen=True)
class Limits:
    """Caps that keep one image, document or clip from exhausting memory, CPU or time."""

    max_bytes: int = 20 * MiB
    max_pixels: int = 40_000_000
    url_timeout_s: float = 10.0
    max_redirects: int = 5
    #: pages of PDFs one call may read
    max_pages: int = 50
    #: frames of a clip one call may send to the model (a clip is sampled down to them)
    max_frames: int = 32
    #: pixels of one rendered page or one decoded frame
    max_render_pixels: int = 16_000_000
    #: seconds a clip may last, read from its header
    max_video_s: float = 300.0


@dataclass(frozen=True)
class AccessPolicy:
    """What a server or command may read: which folders and files, and which URLs."""

    allowed_dirs: tuple[Path, ...] = ()
    allowed_files: tuple[Path, ...] = ()
    allow_urls: bool = True
    allow_private_urls: bool = False
    limits: Limits = field(default_factory=Limits)

    def __post_init__(self) -> None:
        # Comparisons below are only sound between fully resolved paths, so
        # normalise here rather than trust every caller to have done it.
        object.__setattr__(
            self, "allowed_dirs", tuple(resolve_path(p) for p in self.allowed_dirs)
        )
        object.__setattr__(
            self, "allowed_files", tuple(resolve_path(p) for p in self.allowed_files)
        )

    @classmethod
    def for_server(
        cls,
        dirs: Sequence[str | Path] | None = None,
        *,
        allow_private_urls: bool = False,
        allow_urls: bool = True,
        limits: Limits | None = None,
    ) -> AccessPolicy:
        """A long-running server: files under ``dirs`` (default: the current folder)."""
        chosen = [Path.cwd()] if dirs is None else list(dirs)
        resolved = []
        for d in chosen:
            path = resolve_path(d)
            if not path.is_dir():
                # A typo here would otherwise surface much later as "access denied".
                raise InvalidRequest(f"Allowed folder {quoted(str(d))} is not an existing folder.")
            resolved.append(path)
        return cls(
            allowed_dirs=tuple(resolved),
            allow_urls=allow_urls,
            allow_private_urls=allow_private_urls,
            limits=limits or Limits(),
        )

    @classmethod
    def for_files(
        cls,
        paths: Iterable[str | Path],
        *,
        allow_private_urls: bool = False,
        allow_urls: bool = True,
        limits: Limits | None = None,
    ) -> AccessPolicy:
        """A one-shot command: exactly the files the user named, nothing else."""
        return cls(
            allowed_files=tuple(resolve_path(p) for p in paths),
            allow_urls=allow_urls,
            allow_private_urls=allow_private_urls,
            limits=limits or Limits(),
        )

    def root_of(self, resolved: Path) -> Path:
        """The folder an allowed path is opened from: its allowed folder, or an allowed file's own folder."""
        for folder in self.allowed_dirs:
            if resolved.is_relative_to(folder) and resolved != folder:
                return folder
        return resolved.parent

    def allows_path(self, resolved: Path) -> bool:
        """Whether a fully resolved path is one this policy may read."""
        if resolved in self.allowed_files:
            return True
        # is_relative_to compares whole components, so /data/allowed2 is not
        # inside /data/allowed the way a string prefix test would claim.
        return any(resolved.is_relative_to(d) for d in self.allowed_dirs)
