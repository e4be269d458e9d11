"""Where one picture of a document or a clip came from: a PDF's page, or a clip's frame.

Every result that reads a page or a frame carries its ``Origin``, so a text, a box or a panel
of a contact sheet can be traced back: page 3 rendered at 150 dpi, or frame 240 at 00:08.0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import Field


@dataclass(frozen=True)
class Origin:
    """One page of a PDF or one frame of a clip."""

    kind: Annotated[Literal["page", "frame"], Field(description="page: a PDF's page; frame: a clip's frame")]
    document: Annotated[str, Field(description="image_id of the PDF or clip, reusable in later calls")]
    page: Annotated[int | None, Field(description="page number, from 1 (PDF)")] = None
    dpi: Annotated[float | None, Field(description="dots per inch the page was rendered at (PDF)")] = None
    frame: Annotated[int | None, Field(description="frame index in the clip, from 0")] = None
    time_s: Annotated[float | None, Field(description="the frame's time in the clip, in seconds")] = None

    @property
    def label(self) -> str:
        """How a person names it: 'page 3' or 'frame 240 (00:08.0)'."""
        if self.kind == "page":
            return f"page {self.page}"
        return f"frame {self.frame} ({clock(self.time_s or 0.0)})"


def clock(seconds: float) -> str:
    """``mm:ss.s`` (``h:mm:ss.s`` past an hour), as a person reads a timestamp."""
    tenths = round(seconds * 10)
    minutes, rest = divmod(tenths, 600)
    hours, minutes = divmod(minutes, 60)
    text = f"{minutes:02d}:{rest // 10:02d}.{rest % 10}"
    return f"{hours}:{text}" if hours else text
