"""Classes 5 and 13 of the transport campaign: output files whole or not at all, in a bounded
folder that holds and prunes only what the server wrote.

Pure rules table-driven; then a real `vlm-agent serve` on raw stdio: a write that fails for
lack of room (mid-way, or as the file is closed) leaves no partial file and the next call
still works, the folder keeps to its size and age limits, and a huge input gives a full-size
picture a person can use. Class 13: a folder of the user's keeps every file the server did not
write, and a link put under a picture's name is never served.
"""

from __future__ import annotations

import json
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
from tools.outputs import MAX_PICTURE_SIDE, OURS, OutputLimits, cap_picture, picture_name, prune, write_atomic

NOW = 1_000_000_000.0
DAY = 86400.0


def make(folder: Path, name: str, size: int, age_s: float) -> Path:
    path = folder / name
    path.write_bytes(b"x" * size)
    os.utime(path, (NOW - age_s, NOW - age_s))
    return path


A, B, C = "detect-00000000000a.png", "detect-00000000000b.png", "budgets-00000000000c.png"
PART = f".{A}.0123abcd.part"


@pytest.mark.parametrize(
    ("files", "limits", "kept"),
    [
        # (name, bytes, age in seconds)
        ([(A, 10, 0), (B, 10, 10)], OutputLimits(100, DAY), {A, B}),
        ([(A, 10, 8 * DAY), (B, 10, 0)], OutputLimits(100, 7 * DAY), {B}),
        # over the size cap: the oldest go first until it fits
        ([(A, 40, 30), (B, 40, 20), (C, 40, 10)], OutputLimits(90, DAY), {B, C}),
        ([(A, 40, 30), (B, 40, 20), (C, 40, 10)], OutputLimits(40, DAY), {C}),
        # the chat's names are ours too
        ([("detect-img_0123456789abcdef-0.png", 10, 8 * DAY)], OutputLimits(100, DAY), set()),
        # a partial left by a crash goes once it is stale; a young one may be a live write
        ([(PART, 10, 120), (A, 10, 0)], OutputLimits(100, DAY), {A}),
        ([(PART, 10, 5)], OutputLimits(100, DAY), {PART}),
        # a user's files: never removed, whatever their age, and not counted towards the cap
        ([("thesis.docx", 10, 30 * DAY), ("data.bin", 500, 0), (A, 40, 10)], OutputLimits(50, DAY),
         {"thesis.docx", "data.bin", A}),
        ([("holiday.png", 10, 30 * DAY), ("detect-0123456789ab.png.bak", 10, 30 * DAY), ("DETECT-00000000000A.PNG", 10, 30 * DAY),
          (".notes.txt.0123abcd.part", 10, 30 * DAY), ("detect-00000000000a.png.part", 10, 30 * DAY)],
         OutputLimits(0, 0), {"holiday.png", "detect-0123456789ab.png.bak", "DETECT-00000000000A.PNG",
                              ".notes.txt.0123abcd.part", "detect-00000000000a.png.part"}),
    ],
)
def test_prune_keeps_the_folder_within_its_limits(tmp_path, files, limits, kept):
    for name, size, age in files:
        make(tmp_path, name, size, age)
    prune(tmp_path, limits, now=NOW)
    assert {p.name for p in tmp_path.iterdir()} == kept


def test_prune_leaves_folders_and_links_alone(tmp_path):
    """Under our names: a folder, a symlink (to ours or elsewhere) and a hard link are not pictures we wrote."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / A).mkdir()
    target = make(folder, B, 10, 0)
    (folder / C).symlink_to(target)
    (folder / "detect-00000000000d.png").symlink_to(make(elsewhere, "secret", 10, 0))
    os.link(make(elsewhere, "original.png", 10, 0), folder / "detect-00000000000e.png")
    prune(folder, OutputLimits(0, 0), now=NOW + 10 * DAY)
    assert {p.name for p in folder.iterdir()} == {A, C, "detect-00000000000d.png", "detect-00000000000e.png"}
    assert {p.name for p in elsewhere.iterdir()} == {"secret", "original.png"}


@pytest.mark.parametrize("kind", ["detect", "budgets"])
def test_the_names_we_give_are_the_names_we_prune(kind):
    assert OURS.fullmatch(picture_name(kind))


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
        assert "Could not write the picture" in message and str(out) not in message
        assert failed["_meta"]["vlm-agent/error"]["code"] == "output_failed"  # not bad_image: the input was fine
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
        assert "Could not write the picture" in message and str(out) not in message
        assert failed["_meta"]["vlm-agent/error"]["code"] == "output_failed"  # not bad_image: the input was fine
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


# -- a folder the user chose: only what we wrote is ours (class 13) ---------------------------


def aged(path: Path, age_s: float) -> Path:
    os.utime(path, (time.time() - age_s, time.time() - age_s), follow_symlinks=False)
    return path


def test_a_user_folder_keeps_every_file_the_server_did_not_write(tiny_gemma4, tmp_path):
    """--out-dir u --out-max-mb 1 --out-max-days 2 on a folder of the user's: one detect prunes only
    an old picture of ours; documents, a big file, a hard link and a symlink under our names stay."""
    out, elsewhere = tmp_path / "u", tmp_path / "elsewhere"
    out.mkdir()
    elsewhere.mkdir()
    picture = tmp_path / "in.png"
    sample_image(64, 48).save(picture)
    aged(make(out, "thesis.docx", 1000, 0), 9 * DAY)
    (out / "data.bin").write_bytes(os.urandom(2 * 1024 * 1024))
    aged(make(out, "notes.txt", 10, 0), 9 * DAY)
    sample_image(32, 32).save(out / "holiday.png")
    aged(out / "holiday.png", 9 * DAY)
    original = make(elsewhere, "original.png", 10, 0)
    os.link(original, out / "detect-0123456789ab.png")  # a hard link under one of our names
    aged(original, 9 * DAY)
    (out / "budgets-0123456789ab.png").symlink_to(make(elsewhere, "secret.txt", 10, 0))
    aged(out / "budgets-0123456789ab.png", 9 * DAY)
    ours = aged(make(out, "detect-fedcba987654.png", 10, 0), 3 * DAY)  # an old picture we wrote
    users = {p.name for p in out.iterdir()} - {ours.name}
    args = ["--model", str(tiny_gemma4), "--allow-dir", str(tmp_path), "--out-dir", str(out),
            "--out-max-mb", "1", "--out-max-days", "2"]
    with raw_stdio(args) as s:
        result = Calls.run(s, "detect", {"image": str(picture), "labels": ["cat"], "max_new_tokens": 2, "budget": 70})
        assert not result.get("isError"), result
    left = {p.name for p in out.iterdir()}
    assert users <= left, users - left
    assert not ours.exists()
    new = left - users
    assert len(new) == 1 and next(iter(new)).startswith("detect-"), new
    assert original.exists() and (elsewhere / "secret.txt").exists()
    record(class_13=1)


def read_picture(server, name: str) -> dict:
    Calls.n += 1
    server.send(json.dumps({"jsonrpc": "2.0", "id": Calls.n, "method": "resources/read",
                            "params": {"uri": f"vlm-agent://pictures/{name}"}}).encode())
    return server.answer(Calls.n)


def test_a_link_under_a_picture_name_is_never_served(tiny_gemma4, tmp_path):
    """A symlink or a hard link to a secret, put in the output folder under a picture's name (one the
    server wrote, or one it never wrote), is refused like a picture that does not exist."""
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    out.mkdir()
    elsewhere.mkdir()
    secret = elsewhere / "secret"
    secret.write_bytes(b"SECRET-" + b"s" * 64)
    picture = tmp_path / "in.png"
    sample_image(64, 48).save(picture)
    args = ["--model", str(tiny_gemma4), "--allow-dir", str(tmp_path), "--out-dir", str(out)]
    detect = {"image": str(picture), "labels": ["cat"], "max_new_tokens": 2, "budget": 70}
    with raw_stdio(args) as s:
        names = []
        for _ in range(2):
            result = Calls.run(s, "detect", detect)
            names.append(Path(result["structuredContent"]["annotated_path"]).name)
        good = read_picture(s, names[0])
        assert good["result"]["contents"][0]["blob"], good  # a picture the server wrote is served
        (out / names[0]).unlink()
        (out / names[0]).symlink_to(secret)  # swapped for a symlink after it was written
        (out / names[1]).unlink()
        os.link(secret, out / names[1])  # swapped for a hard link
        (out / "detect-0123456789ab.png").symlink_to(secret)  # a name the server never wrote
        unknown = read_picture(s, "detect-aaaaaaaaaaaa.png")
        for name in (names[0], names[1], "detect-0123456789ab.png"):
            answer = read_picture(s, name)
            assert "result" not in answer and b"SECRET" not in json.dumps(answer).encode(), answer
            message = check_tool_error(answer["error"]["message"], [str(out), str(elsewhere)])
            assert message == unknown["error"]["message"].replace("detect-aaaaaaaaaaaa.png", name), message
    record(class_13=1)


@pytest.mark.parametrize(
    ("error", "said"),
    [(28, "no room left"), (27, "no room left"), (13, "cannot be written to"), (30, "cannot be written to"),
     (2, "No such file or directory; check that its folder exists")],
)
def test_a_failed_picture_write_says_what_to_do(tmp_path, error, said):
    def fail(partial: Path) -> None:
        raise OSError(error, os.strerror(error))

    from tools.errors import OutputError
    from tools.outputs import save_png

    with pytest.raises(OutputError) as caught, pytest.MonkeyPatch.context() as patch:
        patch.setattr(Image.Image, "save", lambda self, path, format=None: fail(path))
        save_png(Image.new("RGB", (4, 4)), tmp_path / "boxes.png")
    message = check_tool_error(str(caught.value), [str(tmp_path)])
    assert message.startswith("Could not write the picture boxes.png: ") and said in message
    assert caught.value.code == "output_failed"
