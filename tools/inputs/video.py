"""Clips as frames, through FFmpeg (PyAV): the header first, then only the frames a call uses.

PyAV reads a clip's frame count, frame rate, duration and frame size from its header before
anything is decoded, so a multi-hour clip, an 8K frame or a clip with no video stream is
refused in one line at once. Decoding errors are exceptions (a truncated or garbled file never
passes for a shorter clip), and a clip that yields fewer frames than its header promised is
refused too. Frames are chosen evenly across the clip (``sample``), reached by seeking where
the container allows it, and near-duplicates of the frame before are dropped (``distinct``).
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from .. import cancel
from ..errors import ImageError
from .policy import Limits
from .shown import capital

#: frames a second a clip may hold on average over its length (a 300 s limit allows 18,000 frames)
MAX_FPS = 60
#: containers decoded front to back: GIF has no index to seek by
SEQUENTIAL = {"gif"}
#: at or below this many frames, decoding front to back costs less than seeking to each one
SHORT_CLIP = 240
#: mean difference (0..255) of two 32x32 grey thumbnails below which the later frame adds nothing
DUPLICATE_DIFF = 2.0


@dataclass(frozen=True)
class ClipInfo:
    """What a clip's header says, before any frame is decoded."""

    frames: int
    fps: float
    duration_s: float
    width: int
    height: int
    codec: str
    container: str

    @property
    def seekable(self) -> bool:
        return self.container not in SEQUENTIAL and self.frames > SHORT_CLIP


@dataclass(frozen=True)
class Frame:
    index: int
    time_s: float
    image: Image.Image


def _open(data: bytes) -> object:
    import av

    return av.open(io.BytesIO(data), mode="r")


def probe(data: bytes, what: str, limits: Limits) -> ClipInfo:
    """The clip's header, checked against ``limits``; nothing is decoded."""
    import av

    try:
        container = _open(data)
    except (av.FFmpegError, ValueError, OSError):
        raise ImageError(f"{capital(what)} is a damaged or truncated video and could not be opened; re-export or re-send it.") from None
    try:
        if not container.streams.video:  # type: ignore[attr-defined]
            raise ImageError(f"{capital(what)} holds no video frames.")
        stream = container.streams.video[0]  # type: ignore[attr-defined]
        try:
            codec = stream.codec_context.name
            width, height = int(stream.codec_context.width), int(stream.codec_context.height)
        except (AttributeError, av.FFmpegError):
            raise ImageError(f"{capital(what)} uses a video codec that cannot be decoded here; convert it to H.264 or VP9.") from None
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        fps = float(rate) if rate else 0.0
        duration = 0.0
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        elif container.duration:  # type: ignore[attr-defined]
            duration = container.duration / av.time_base  # type: ignore[attr-defined]
        frames = int(stream.frames or 0)
        if frames == 0 and duration > 0 and fps > 0:
            # WebM and some streams carry no frame count: the header's length and rate say it.
            frames = max(1, round(duration * fps))
        if duration == 0 and frames and fps:
            duration = frames / fps
        container_name = container.format.name.split(",")[0]  # type: ignore[attr-defined]
    finally:
        container.close()  # type: ignore[attr-defined]
    info = ClipInfo(frames, fps, duration, width, height, codec, container_name)
    check_clip(info, what, limits)
    return info


def check_clip(info: ClipInfo, what: str, limits: Limits) -> None:
    if info.frames <= 0 or info.width <= 0 or info.height <= 0:
        raise ImageError(f"{capital(what)} holds no video frames.")
    if info.duration_s > limits.max_video_s:
        raise ImageError(
            f"{capital(what)} lasts {duration_words(info.duration_s)}, longer than the {limits.max_video_s:g}-second "
            "limit; trim it or send a shorter clip."
        )
    most = int(MAX_FPS * limits.max_video_s)
    if info.frames > most:
        raise ImageError(
            f"{capital(what)} holds {info.frames:,} frames, more than the {most:,} a clip may hold "
            f"({MAX_FPS} a second over {limits.max_video_s:g} seconds); trim it or lower its frame rate."
        )
    if info.width * info.height > limits.max_render_pixels:
        raise ImageError(
            f"{capital(what)} has {info.width} x {info.height} frames ({info.width * info.height / 1e6:.1f} megapixels), "
            f"over the {limits.max_render_pixels / 1e6:g}-megapixel limit; scale it down first."
        )


def duration_words(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} hours"
    if seconds >= 120:
        return f"{seconds / 60:.1f} minutes"
    return f"{seconds:.1f} seconds"


def sample(info: ClipInfo, count: int, span: tuple[float, float] | None = None) -> list[int]:
    """``count`` frame indices spread evenly over the clip (or over ``span`` seconds of it), each
    the middle of its share; every frame where the clip has no more than ``count``."""
    first, last = 0, info.frames - 1
    if span is not None and info.fps > 0:
        first = min(last, max(0, math.floor(span[0] * info.fps)))
        last = min(last, max(first, math.ceil(span[1] * info.fps) - 1))
    available = last - first + 1
    if available <= count:
        return list(range(first, last + 1))
    return [first + math.floor((k + 0.5) * available / count) for k in range(count)]


def decode(
    data: bytes, info: ClipInfo, indices: Sequence[int], what: str, step: Callable[[int, int], None] | None = None
) -> list[Frame]:
    """The frames at ``indices`` (ascending), as RGB pictures with their times; refused when the
    clip breaks off or yields fewer frames than its header promised."""
    import av

    wanted = sorted(set(indices))
    try:
        container = _open(data)
    except (av.FFmpegError, ValueError, OSError):
        raise ImageError(f"{capital(what)} is a damaged or truncated video and could not be opened; re-export or re-send it.") from None
    try:
        stream = container.streams.video[0]  # type: ignore[attr-defined]
        stream.thread_type = "AUTO"
        found = _seeking(container, stream, info, wanted, step) if info.seekable else _sequential(container, wanted, step)
    except av.FFmpegError:
        raise ImageError(f"{capital(what)} is damaged: its video could not be decoded; re-export or re-send it.") from None
    finally:
        container.close()  # type: ignore[attr-defined]
    if len(found) < len(wanted):
        missing = wanted[len(found)]
        raise ImageError(
            f"{capital(what)} is damaged or truncated: its header promises {info.frames:,} frames and frame "
            f"{missing:,} could not be decoded; re-export or re-send it."
        )
    return found


def _picture(frame: object) -> Image.Image:
    return frame.to_image().convert("RGB")  # type: ignore[attr-defined]


def _time(frame: object, index: int, info: ClipInfo) -> float:
    seconds = getattr(frame, "time", None)
    return round(float(seconds), 3) if seconds is not None else round(index / info.fps, 3) if info.fps else 0.0


def _sequential(container: object, wanted: list[int], step: Callable[[int, int], None] | None) -> list[Frame]:
    found: list[Frame] = []
    targets = iter(wanted)
    target = next(targets, None)
    for index, frame in enumerate(container.decode(video=0)):  # type: ignore[attr-defined]
        if index % 64 == 0:
            cancel.check()
        if target is None:
            break
        if index == target:
            cancel.check()
            seconds = getattr(frame, "time", None)
            found.append(Frame(index, round(float(seconds), 3) if seconds is not None else 0.0, _picture(frame)))
            if step:
                step(len(found), len(wanted))
            target = next(targets, None)
    return found


def _seeking(
    container: object, stream: object, info: ClipInfo, wanted: list[int], step: Callable[[int, int], None] | None
) -> list[Frame]:
    found: list[Frame] = []
    base = stream.time_base  # type: ignore[attr-defined]
    start = float(stream.start_time * base) if stream.start_time is not None else 0.0  # type: ignore[attr-defined]
    for index in wanted:
        cancel.check()  # between frames: a cancelled call decodes no further frame
        at = start + index / info.fps
        container.seek(int(at / base), stream=stream, backward=True, any_frame=False)  # type: ignore[attr-defined]
        picked = None
        for frame in container.decode(stream):  # type: ignore[attr-defined]
            seconds = frame.time if frame.time is not None else at
            if seconds >= at - 0.5 / info.fps:
                picked = frame
                break
        if picked is None:
            break
        found.append(Frame(index, _time(picked, index, info), _picture(picked)))
        if step:
            step(len(found), len(wanted))
    return found


def distinct(frames: Sequence[Frame], threshold: float = DUPLICATE_DIFF) -> tuple[list[Frame], int]:
    """The frames without those that look the same as the frame kept before them; and how many went."""
    kept: list[Frame] = []
    previous: np.ndarray | None = None
    for frame in frames:
        thumb = np.asarray(frame.image.convert("L").resize((32, 32), Image.Resampling.BILINEAR), dtype=np.float32)
        if previous is not None and float(np.abs(thumb - previous).mean()) < threshold:
            continue
        kept.append(frame)
        previous = thumb
    return kept, len(frames) - len(kept)
