"""Clips as frames: headers, frame choice, decoding, refusals, and each family's video path on the
tiny checkpoints against plain transformers' processor and generate with the same frames.

The doors (CLI, raw stdio, HTTP) are tests/test_media_doors.py's.
"""

from __future__ import annotations

import re
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from tools.tiny.media import write_clip, write_cv2_clip
from tools.errors import ImageError, Unsupported
from tools.inputs import AccessPolicy, ImageLoader, Limits
from tools.inputs.media import Media, Selection
from tools.inputs.origin import clock
from tools.inputs.video import ClipInfo, decode, distinct, probe, sample
from tools.model import check_ask, plan
from tools.options import GenerationOptions
from tools.runtimes.streaming import answer_text
from tools.tasks import Ask
from tools.vision import Vision

CLIPS = [
    ("h264.mp4", lambda p: write_clip(p), "h264"),
    ("vp9.webm", lambda p: write_clip(p, codec="libvpx-vp9"), "vp9"),
    ("anim.gif", lambda p: write_clip(p, codec="gif"), "gif"),
    ("mp4v.mp4", lambda p: write_cv2_clip(p, "mp4v"), "mpeg4"),
    ("vp90.webm", lambda p: write_cv2_clip(p, "VP90"), "vp9"),
]


@pytest.mark.parametrize(("name", "write", "codec"), CLIPS, ids=[c[0] for c in CLIPS])
def test_every_writer_s_clip_reads_from_its_header_and_decodes_whole(tmp_path, name, write, codec):
    data = write(tmp_path / name).read_bytes()
    info = probe(data, name, Limits())
    # 16 frames of 64x48 at 8 fps (a GIF stores 12 cs a frame: 8.33 fps)
    assert (info.frames, info.width, info.height, info.codec) == (16, 64, 48, codec)
    assert info.fps == pytest.approx(8, rel=0.05) and info.duration_s == pytest.approx(2, rel=0.05)
    frames = decode(data, info, sample(info, 32), name)
    assert [f.index for f in frames] == list(range(16))
    # the frames' own times: 15 frames of 1/8 s (a GIF rounds each to 12 cs)
    assert frames[-1].time_s == pytest.approx(15 / 8, abs=0.1)


@pytest.mark.parametrize(
    ("frames", "count", "span", "chosen"),
    [
        (16, 32, None, list(range(16))),
        (100, 4, None, [12, 37, 62, 87]),
        (100, 1, None, [50]),
        (300, 3, (2.0, 4.0), [70, 90, 110]),  # 30 fps: seconds 2 to 4 are frames 60..119
        (300, 8, (9.5, 99.0), [285, 287, 289, 291, 293, 295, 297, 299]),
    ],
)
def test_frames_are_spread_evenly_over_the_clip_or_its_span(frames, count, span, chosen):
    info = ClipInfo(frames, 30.0, frames / 30, 64, 48, "h264", "mov")
    assert sample(info, count, span) == chosen


@pytest.mark.parametrize(("seconds", "shown"), [(0, "00:00.0"), (8.04, "00:08.0"), (75.26, "01:15.3"), (3725, "1:02:05.0")])
def test_timestamps_read_as_a_clock(seconds, shown):
    assert clock(seconds) == shown


def test_seeking_finds_the_same_frames_as_decoding_front_to_back(tmp_path):
    data = write_clip(tmp_path / "long.mp4", frames=300, fps=30).read_bytes()
    info = probe(data, "long", Limits())
    assert info.seekable
    wanted = sample(info, 6)
    sought = decode(data, info, wanted, "long")
    whole = [f for f in av.open(str(tmp_path / "long.mp4")).decode(video=0)]
    for frame in sought:
        assert np.array_equal(np.asarray(frame.image), np.asarray(whole[frame.index].to_image().convert("RGB")))


def test_near_duplicate_frames_are_dropped_and_counted(tmp_path):
    still = write_clip(tmp_path / "still.mp4", frames=10, picture=lambda n, w, h: np.full((h, w, 3), 120 if n < 6 else 20, np.uint8))
    data = still.read_bytes()
    info = probe(data, "still", Limits())
    kept, dropped = distinct(decode(data, info, sample(info, 10), "still"))
    assert [f.index for f in kept] == [0, 6] and dropped == 8


HOSTILE = [
    ("no-frames.mp4", "holds no video frames"),
    ("100000-frames.mp4", "lasts 55.6 minutes, longer than the 300-second limit"),
    ("8k.mp4", "7680 x 4320 frames (33.2 megapixels), over the 16-megapixel limit"),
    ("unknown-codec.mp4", "codec that cannot be decoded"),
    ("garbled.mp4", "is damaged"),
    ("hours.mp4", "lasts 5.0 hours"),
    ("10000-frames.gif", "lasts 6.7 minutes"),
]


@pytest.mark.parametrize(("name", "fragment"), HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_clips_are_refused_in_one_line(media, name, fragment):
    data = (media / name).read_bytes()
    with pytest.raises(ImageError, match=re.escape(fragment)):
        info = probe(data, f"'{name}'", Limits())
        decode(data, info, sample(info, 32), f"'{name}'")


def test_a_clip_that_breaks_off_is_refused_not_shortened(tmp_path):
    """Its index first (faststart), its frames cut off: the header promises 60 frames and fewer come. Never a
    shorter clip under the header's timestamps."""
    data = write_clip(tmp_path / "c.mp4", frames=60, fps=30, size=(160, 120), faststart=True).read_bytes()
    cut = data[: len(data) // 2]
    info = probe(cut, "c", Limits())
    assert info.frames == 60
    with pytest.raises(ImageError, match="damaged"):
        decode(cut, info, sample(info, 60), "c")


# ---------------------------------------------------------------- the families' video paths


def clip_media(path: Path) -> Media:
    data = path.read_bytes()
    return Media("clip", data, "img_00000000000000aa", f"'{path.name}'", "path", Selection())


def plain_video_tokens(backend, path: Path, prompt: str, options: GenerationOptions, **kwargs) -> tuple[list[int], str]:
    """Plain transformers: every frame decoded with PyAV, the template's text, the processor, one generate."""
    from transformers.video_utils import VideoMetadata

    container = av.open(str(path))
    stream = container.streams.video[0]
    frames = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    meta = VideoMetadata(total_num_frames=len(frames), fps=float(stream.average_rate), frames_indices=list(range(len(frames))))
    processor = backend.runtime.processor
    text = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": prompt}]}],
        add_generation_prompt=True, tokenize=False,
    )
    inputs = processor(text=[text], videos=[frames], video_metadata=[meta], do_sample_frames=False, return_tensors="pt",
                       **kwargs)
    inputs.pop("video_metadata", None)
    shown = processor.tokenizer.decode(inputs["input_ids"][0])
    with torch.inference_mode():
        output = backend.runtime.model.generate(**inputs, **options.generate_kwargs())
    return output[0, inputs["input_ids"].shape[1]:].tolist(), shown


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clips")
    write_clip(folder / "clip.mp4")
    return folder


@pytest.mark.parametrize(
    ("family", "kwargs", "timestamp"),
    [
        ("gemma4", {"videos_kwargs": {"max_soft_tokens": 70}}, r"00:01 <\|image>"),
        ("qwen3_vl", {}, r"<1\.8 seconds><\|vision_start\|>"),
    ],
)
def test_describe_of_a_clip_gives_plain_transformers_tokens_with_the_frames_timestamps(
    request, clip_folder, family, kwargs, timestamp
):
    backend = request.getfixturevalue(f"{family}_backend")
    core = Vision(backend, ImageLoader(AccessPolicy.for_server([clip_folder])))
    options = GenerationOptions(max_new_tokens=6, min_new_tokens=6)
    result = core.describe([str(clip_folder / "clip.mp4")], "What happens?", options=options)
    expected, prompt = plain_video_tokens(backend, clip_folder / "clip.mp4", "What happens?", options, **kwargs)
    assert re.search(timestamp, prompt), prompt[:300]
    assert result.generated_tokens == len(expected)
    assert result.text == answer_text(backend.runtime.processor.decode(expected, skip_special_tokens=True))
    assert [s.frame for s in result.sources] == list(range(16))
    assert result.sources[8].time_s == pytest.approx(1.0)
    assert result.image_tokens and result.budget == (70 if family == "gemma4" else None)


def test_the_real_qwen3_vl_template_s_wrapped_placeholder_is_unwrapped(qwen3_vl_backend, clip_folder, monkeypatch):
    """The real template writes <|vision_start|><|video_pad|><|vision_end|>; transformers 5.24 would nest its
    own per-frame wrappers inside it. The local runtime unwraps it: the same ids as the bare placeholder."""
    from tools.inputs.documents import clip_frames

    runtime = qwen3_vl_backend.runtime
    clip = clip_frames(clip_media(clip_folder / "clip.mp4"), Limits()).as_input()
    prompt = qwen3_vl_backend.dialect.prompt(qwen3_vl_backend.check(Ask("describe", (), "Hi", video=clip)))
    bare = runtime.video_inputs(prompt)["input_ids"]
    render = runtime.processor.apply_chat_template
    monkeypatch.setattr(
        runtime.processor, "apply_chat_template",
        lambda *a, **k: render(*a, **k).replace("<|video_pad|>", "<|vision_start|><|video_pad|><|vision_end|>"),
    )
    assert torch.equal(runtime.video_inputs(prompt)["input_ids"], bare)


def test_qwen3_vl_takes_a_one_frame_clip_twice_and_says_so(qwen3_vl_backend, clip_folder):
    core = Vision(qwen3_vl_backend, ImageLoader(AccessPolicy.for_server([clip_folder])))
    result = core.describe([f"{clip_folder / 'clip.mp4'}#t=1,1.1"], options=GenerationOptions(max_new_tokens=1))
    assert [s.frame for s in result.sources] == [8]
    assert any("sent twice" in note for note in result.notes)


def test_families_without_a_video_path_refuse_a_clip_before_loading(tiny_paligemma, tiny_blip2):
    clip = clip_frames_for_check()
    for checkpoint in (tiny_paligemma, tiny_blip2):
        with pytest.raises(Unsupported, match="cannot describe a video clip here; use a Gemma 4 or Qwen3-VL model"):
            check_ask(plan(str(checkpoint)).dialect, Ask("describe", (), "hi", video=clip))


def clip_frames_for_check():
    from tools.inputs import ImageInput
    from tools.inputs.media import ClipInput
    from PIL import Image

    frame = ImageInput.from_pixels(Image.new("RGB", (8, 8)))
    return ClipInput((frame, frame), (0, 1), (0.0, 0.5), 2.0, 2, "img_00000000000000bb")


def test_paligemma_detects_frame_by_frame_as_stills(paligemma_backend, clip_folder):
    core = Vision(paligemma_backend, ImageLoader(AccessPolicy.for_server([clip_folder])))
    result = core.detect(f"{clip_folder / 'clip.mp4'}#t=0,0.5", ["square"], options=GenerationOptions(max_new_tokens=2),
                         annotated_path=clip_folder / "sheet.png")
    assert [(p.origin.frame, p.origin.time_s) for p in result.parts] == [(0, 0.0), (1, 0.125), (2, 0.25), (3, 0.375)]
    assert all(d.origin is not None for d in result.detections)
    assert Path(result.annotated_path).is_file() and result.image_ids == [core.loader.open(str(clip_folder / "clip.mp4")).id]


def test_a_second_question_about_a_clip_runs_no_frame_through_the_vision_tower(gemma4_backend, clip_folder):
    """Gemma 4 keeps each frame's encoding by the clip's content hash and the frame's index: the follow-up
    hits the vision cache, and its tokens are those of a cold run."""
    core = Vision(gemma4_backend, ImageLoader(AccessPolicy.for_server([clip_folder])))
    options = GenerationOptions(max_new_tokens=4, min_new_tokens=4)
    gemma4_backend.clear_caches()
    cold = core.describe([str(clip_folder / "clip.mp4")], "What moves?", options=options)
    warm = core.describe([str(clip_folder / "clip.mp4")], "What moves?", options=options)
    part = core.describe([f"{clip_folder / 'clip.mp4'}#t=0,0.5"], "What moves?", options=options)
    assert (cold.cache.vision, warm.cache.vision, part.cache.vision) == ("miss", "hit", "hit")
    assert warm.text == cold.text and warm.generated_tokens == cold.generated_tokens
