"""Class 5 of the transport campaign: output files whole or not at all, in a bounded folder.

Pure rules table-driven; then a real `vlm-agent serve` on raw stdio: a write that fails for
lack of room (mid-way, or as the file is closed) leaves no partial file and the next call
still works, the folder keeps to its size and age limits, and a huge input gives a full-size
picture a person can use.
"""

from __future__ import annotations

import os
import resource
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import sample_image
from tests.hardening import check_tool_error, record
from tests.injected import inject
from tests.raw import Calls, raw_stdio
from tools.outputs import MAX_PICTURE_SIDE, OutputLimits, cap_picture, prune, write_atomic

NOW = 1_000_000_000.0
DAY = 86400.0


def make(folder: Path, name: str, size: int, age_s: float) -> Path:
    path = folder / name
    path.write_bytes(b"x" * size)
    os.utime(path, (NOW - age_s, NOW - age_s))
    return path


@pytest.mark.parametrize(
    ("files", "limits", "kept"),
    [
        # (name, bytes, age in seconds)
        ([("a.png", 10, 0), ("b.png", 10, 10)], OutputLimits(100, DAY), {"a.png", "b.png"}),
        ([("old.png", 10, 8 * DAY), ("new.png", 10, 0)], OutputLimits(100, 7 * DAY), {"new.png"}),
        # over the size cap: the oldest go first until it fits
        ([("a.png", 40, 30), ("b.png", 40, 20), ("c.png", 40, 10)], OutputLimits(90, DAY), {"b.png", "c.png"}),
        ([("a.png", 40, 30), ("b.png", 40, 20), ("c.png", 40, 10)], OutputLimits(40, DAY), {"c.png"}),
        # a partial left by a crash goes once it is stale; a young one may be a live write
        ([(".a.png.1234.part", 10, 120), ("a.png", 10, 0)], OutputLimits(100, DAY), {"a.png"}),
        ([(".a.png.1234.part", 10, 5)], OutputLimits(100, DAY), {".a.png.1234.part"}),
    ],
)
def test_prune_keeps_the_folder_within_its_limits(tmp_path, files, limits, kept):
    for name, size, age in files:
        make(tmp_path, name, size, age)
    prune(tmp_path, limits, now=NOW)
    assert {p.name for p in tmp_path.iterdir()} == kept


def test_prune_leaves_folders_and_links_alone(tmp_path):
    (tmp_path / "sub").mkdir()
    target = make(tmp_path, "a.png", 10, 0)
    (tmp_path / "link.png").symlink_to(target)
    prune(tmp_path, OutputLimits(0, 0), now=NOW + 10 * DAY)
    assert {p.name for p in tmp_path.iterdir()} == {"sub", "link.png"}


def test_a_failed_write_leaves_neither_partial_nor_target(tmp_path):
    def fail(partial: Path) -> None:
        partial.write_bytes(b"half a picture")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        write_atomic(tmp_path / "out.png", fail)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("size", "capped"),
    [((800, 600), (800, 600)), ((MAX_PICTURE_SIDE, 10), (MAX_PICTURE_SIDE, 10)), ((8000, 5000), (4096, 2560))],
)
def test_full_size_pictures_are_capped_with_a_note(size, capped):
    picture, note = cap_picture(Image.new("RGB", size))
    assert picture.size == capped
    assert (note is None) == (size == capped)


# -- through a real server on raw stdio ------------------------------------------------------


def noise(path: Path, side: int) -> Path:
    """A picture that does not compress: its annotated PNG is about 3 bytes a pixel."""
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8)).save(path)
    return path


def limit_file_size() -> None:
    # Python ignores SIGXFSZ, so a write past the limit fails with EFBIG like a full disk.
    resource.setrlimit(resource.RLIMIT_FSIZE, (400_000, 400_000))


def test_a_write_that_runs_out_of_room_leaves_no_partial_and_the_next_call_works(tiny_gemma4, tmp_path):
    big, small = noise(tmp_path / "big.png", 512), tmp_path / "small.png"
    sample_image(64, 48).save(small)
    out = tmp_path / "out"
    args = ["--model", str(tiny_gemma4), "--allow-dir", str(tmp_path), "--out-dir", str(out)]
    with raw_stdio(args, preexec_fn=limit_file_size) as s:
        failed = Calls.run(s, "detect", {"image": str(big), "labels": ["cat"], "max_new_tokens": 2, "budget": 70})
        assert failed.get("isError"), failed
        message = check_tool_error(failed["content"][0]["text"])
        assert "Could not write the PNG" in message and str(out) not in message
        assert [p.name for p in out.iterdir()] == []  # no partial under any name
        done = Calls.run(s, "detect", {"image": str(small), "labels": ["cat"], "max_new_tokens": 2, "budget": 70})
        assert not done.get("isError"), done
        assert [p.suffix for p in out.iterdir()] == [".png"]
    record(class_5=1)


def test_a_write_that_fails_as_it_is_closed_leaves_no_partial_and_the_next_call_works(tiny_gemma4, tmp_path):
    """A full disk shows when the last buffer is flushed: the file loses its end and close fails.
    Pillow leaves that file in place; before the fix it lay under the picture's real name."""
    picture, out = tmp_path / "in.png", tmp_path / "out"
    sample_image(64, 48).save(picture)
    out.mkdir()
    args = ["--model", str(tiny_gemma4), "--allow-dir", str(tmp_path), "--out-dir", str(out)]
    detect = {"image": str(picture), "labels": ["cat"], "max_new_tokens": 2, "budget": 70}
    with raw_stdio(args, env=inject(tmp_path / "inject", "fail-close", out=str(out))) as s:
        failed = Calls.run(s, "detect", detect)
        assert failed.get("isError"), failed
        message = check_tool_error(failed["content"][0]["text"])
        assert "Could not write the PNG" in message and str(out) not in message
        assert [p.name for p in out.iterdir()] == []  # no partial under any name
        done = Calls.run(s, "detect", detect)
        assert not done.get("isError"), done
    written = list(out.iterdir())
    assert [p.suffix for p in written] == [".png"]
    with Image.open(written[0]) as whole:
        whole.load()  # every byte of it there
    record(class_5=1)


def test_the_output_folder_keeps_to_its_size_and_age(tiny_gemma4, tmp_path):
    picture = noise(tmp_path / "noise.png", 300)  # about 270 kB annotated
    out = tmp_path / "out"
    out.mkdir()
    stale = out / "detect-0123456789ab.png"
    stale.write_bytes(b"x")
    os.utime(stale, (time.time() - 3 * DAY, time.time() - 3 * DAY))
    args = ["--model", str(tiny_gemma4), "--allow-dir", str(tmp_path), "--out-dir", str(out),
            "--out-max-mb", "1", "--out-max-days", "2"]
    with raw_stdio(args) as s:
        for _ in range(8):
            result = Calls.run(s, "detect", {"image": str(picture), "labels": ["dot"], "max_new_tokens": 2, "budget": 70})
            assert not result.get("isError"), result
            sizes = [p.stat().st_size for p in out.iterdir()]
            # within the cap, but for the picture just written
            assert sum(sizes) - max(sizes) <= 1024 * 1024
    assert not stale.exists()
    assert len(list(out.iterdir())) < 8
    record(class_5=1)


def test_a_huge_input_gives_a_full_size_picture_a_person_can_use(tiny_gemma4, tmp_path):
    huge = tmp_path / "huge.png"
    Image.new("RGB", (6000, 1000), "white").save(huge)
    out = tmp_path / "out"
    with raw_stdio(["--model", str(tiny_gemma4), "--allow-dir", str(tmp_path), "--out-dir", str(out)]) as s:
        result = Calls.run(s, "detect", {"image": str(huge), "labels": ["cat"], "max_new_tokens": 2, "budget": 70})
    data = result["structuredContent"]
    written = Image.open(next(out.iterdir()))
    assert max(written.size) == MAX_PICTURE_SIDE and data["image_size"] == [6000, 1000]
    assert any("scaled from 6000x1000" in note for note in data["notes"])
    record(class_5=1)
