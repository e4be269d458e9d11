"""A PDF's pages and a clip's frames as ``Part``s, every limit checked before the first pixel.

``Document`` opens a PDF, checks the selected pages (count, size at the chosen resolution,
embedded images) and then renders one page at a time, so a long document costs the memory of
one page, not of all of them. ``clip_frames`` reads a clip's header, chooses the frames and
decodes only those, scaled down to what a model can use.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from PIL import Image

from .. import cancel
from ..errors import ImageError
from .image import ImageInput, LoadedImage
from .media import ClipInput, Media, Part, Step, part_id
from .origin import Origin
from .pdf import Pdf, check_embedded, check_page_count, fit_dpi, parse_pages
from .policy import Limits
from .video import ClipInfo, decode, distinct, probe, sample

#: the long side frames are scaled to at most: past it no family's video path sees more
MAX_FRAME_SIDE = 1920
#: chooses a page's render dpi from its size in points
DpiChoice = Callable[[tuple[float, float]], float]


@dataclass(frozen=True)
class PagePlan:
    number: int
    dpi: float


class Document:
    """A PDF's selected pages, checked, rendered on demand; close it when done (a context manager)."""

    def __init__(self, media: Media, pages: str | None, dpi_for: DpiChoice, limits: Limits) -> None:
        self.media = media
        self.notes: list[str] = []
        self.pdf = Pdf(media.data, media.what)
        try:
            chosen = media.selection.pages if media.selection.pages is not None else pages
            numbers = parse_pages(chosen or "all", self.pdf.pages)
            check_page_count(numbers, self.pdf.pages, limits, media.what)
            self.plan: list[PagePlan] = []
            for number in numbers:
                label = f"page {number} of {media.what}"
                size = self.pdf.size_pt(number - 1)
                dpi = round(fit_dpi(size, dpi_for(size), limits, label, self.notes), 1)
                check_embedded(self.pdf, number - 1, limits, label)
                self.plan.append(PagePlan(number, dpi))
        except BaseException:
            self.pdf.close()
            raise

    def __enter__(self) -> Document:
        return self

    def __exit__(self, *exc: object) -> None:
        self.pdf.close()

    def __len__(self) -> int:
        return len(self.plan)

    def part(self, k: int) -> Part:
        """The ``k``-th selected page, rendered now."""
        page = self.plan[k]
        image = self.pdf.render(page.number - 1, page.dpi)
        key = part_id(self.media.id, f"page{page.number}@{page.dpi:g}")
        loaded = LoadedImage(image, key, self.media.source, "PDF", self.media.url)
        return Part(loaded, Origin("page", self.media.id, page=page.number, dpi=page.dpi))

    def parts(self, step: Step | None = None) -> Iterator[Part]:
        """Each selected page in turn, rendered as it is reached; a cancelled call renders no further page."""
        for k, page in enumerate(self.plan):
            cancel.check()
            if step:
                step(k, len(self.plan), f"rendering page {page.number}")
            yield self.part(k)


@dataclass
class Clip:
    """A clip's chosen frames, decoded, and what the header said."""

    media: Media
    info: ClipInfo
    parts: list[Part]
    notes: list[str]

    def as_input(self) -> ClipInput:
        """The frames as a family's video path takes them."""
        origins = [part.origin for part in self.parts]
        return ClipInput(
            frames=tuple(ImageInput(p.loaded.image, p.loaded.image_id) for p in self.parts),
            indices=tuple(o.frame or 0 for o in origins if o is not None),
            times=tuple(o.time_s or 0.0 for o in origins if o is not None),
            fps=self.info.fps,
            total_frames=self.info.frames,
            hash=self.media.id,
        )


def clip_frames(media: Media, limits: Limits, count: int | None = None, step: Step | None = None) -> Clip:
    """Up to ``count`` (default: the frames limit) frames spread over the clip or its span, near-duplicates dropped."""
    info = probe(media.data, media.what, limits)
    wanted = min(count or limits.max_frames, limits.max_frames)
    indices = sample(info, wanted, media.selection.span)
    if media.selection.span is not None and media.selection.span[0] >= info.duration_s:
        raise ImageError(f"{media.what} lasts {info.duration_s:.1f} seconds; its span starts after the end.", param="images")
    notes: list[str] = []
    if info.frames > len(indices):
        notes.append(f"{media.what}: {len(indices)} of its {info.frames:,} frames, evenly spaced")
    frames = decode(
        media.data, info, indices, media.what,
        (lambda done, total: step(done, total, f"decoded frame {done} of {total}")) if step else None,
    )
    kept, dropped = distinct(frames)
    if dropped:
        notes.append(f"{media.what}: dropped {dropped} near-duplicate frame{'s' if dropped != 1 else ''} of {len(frames)}")
    scaled = False
    parts = []
    for frame in kept:
        image = frame.image
        if max(image.size) > MAX_FRAME_SIDE:
            image.thumbnail((MAX_FRAME_SIDE, MAX_FRAME_SIDE), Image.Resampling.LANCZOS)
            scaled = True
        key = part_id(media.id, f"frame{frame.index}")
        origin = Origin("frame", media.id, frame=frame.index, time_s=frame.time_s)
        parts.append(Part(LoadedImage(image, key, media.source, info.codec, media.url), origin))
    if scaled:
        notes.append(f"{media.what}: frames scaled from {info.width}x{info.height} to {parts[0].loaded.width}x{parts[0].loaded.height}")
    return Clip(media, info, parts, notes)
