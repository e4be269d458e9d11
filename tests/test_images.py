"""Tests for tools.inputs: every input is generated in tmp_path or in memory."""

from __future__ import annotations

import base64
import io
import ipaddress
import os
import re
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from tools.inputs import fetch, files
from tools.errors import AccessDenied, ImageError, InvalidRequest, UnknownImage, VlmError
from tools.inputs import (
    IMAGE_ID_RE,
    AccessPolicy,
    ImageLoader,
    ImageStore,
    Limits,
    LoadedImage,
    decode_image,
    image_id,
)

# --- helpers ----------------------------------------------------------------

CLASS_NAME_RE = re.compile(r"\b[A-Z]\w*(Error|Exception|Warning)\b")


def check_message(err: VlmError, *hidden: str) -> str:
    """The rules every user-facing message keeps; ``hidden`` must not appear."""
    msg = str(err)
    assert msg == err.message
    assert msg.strip()
    assert "\n" not in msg and "\r" not in msg
    assert "Traceback" not in msg
    assert "0x" not in msg
    assert not CLASS_NAME_RE.search(msg), msg
    for text in hidden:
        assert text not in msg, msg
    return msg


def png(size: tuple[int, int] = (8, 8), color: tuple[int, int, int] = (10, 20, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return buf.getvalue()


def noise(fmt: str, size: int = 64) -> bytes:
    # Noise does not compress, so half the file really is half the picture.
    pixels = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, fmt)
    return buf.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A tiny, valid-looking PNG whose IHDR claims width x height pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1024)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def data_uri(data: bytes, media: str = "image/png") -> str:
    return f"data:{media};base64,{base64.b64encode(data).decode()}"


def close(actual: tuple[int, ...], expected: tuple[int, ...], tol: int) -> bool:
    return all(abs(a - e) <= tol for a, e in zip(actual, expected, strict=True))


@pytest.fixture
def room(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """tmp_path/allowed as the current folder, with neighbours to escape into."""
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    (tmp_path / "beyond").mkdir()
    (tmp_path / "beyond" / "secret.png").write_bytes(png())
    (tmp_path / "allowed2").mkdir()
    (tmp_path / "allowed2" / "pic.png").write_bytes(png())
    monkeypatch.chdir(allowed)
    return allowed


@pytest.fixture
def loader(room: Path) -> ImageLoader:
    return ImageLoader(AccessPolicy.for_server([room]))


# --- good images --------------------------------------------------------------

Build = Callable[[Path], None]
Probe = list[tuple[tuple[int, int], tuple[int, int, int], int]]


def save(make: Callable[[], Image.Image], fmt: str, **kw: object) -> Build:
    return lambda path: make().save(path, fmt, **kw)


def gif_frames(path: Path) -> None:
    frames = [Image.new("RGB", (64, 64), (255, 0, 0))]
    frames += [Image.new("RGB", (64, 64), (0, 0, 255)) for _ in range(49)]
    frames[0].save(path, "GIF", save_all=True, append_images=frames[1:], duration=40)


def palette_alpha(path: Path) -> None:
    im = Image.new("P", (2, 1))
    im.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    im.putpixel((0, 0), 0)
    im.putpixel((1, 0), 1)
    im.save(path, "PNG", transparency=0)


def rgba(path: Path) -> None:
    im = Image.new("RGBA", (2, 1))
    im.putpixel((0, 0), (255, 0, 0, 0))
    im.putpixel((1, 0), (0, 0, 0, 128))
    im.save(path, "PNG")


def exif_rotated(path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    Image.new("RGB", (40, 20), (200, 0, 0)).save(path, "JPEG", exif=exif.tobytes())


def big_text(path: Path) -> None:
    info = PngImagePlugin.PngInfo()
    info.add_text("notes", "x" * 3_000_000)
    Image.new("RGB", (8, 8), (1, 2, 3)).save(path, "PNG", pnginfo=info)


def array(values: list[list[float]], dtype: type) -> Callable[[], Image.Image]:
    return lambda: Image.fromarray(np.array(values, dtype=dtype))


def bilevel() -> Image.Image:
    im = Image.new("1", (2, 1), 0)
    im.putpixel((1, 0), 1)
    return im


GOOD: list[tuple[str, Build, str, tuple[int, int], Probe]] = [
    ("rgb.png", save(lambda: Image.new("RGB", (32, 16), (10, 20, 30)), "PNG"), "PNG", (32, 16),
     [((0, 0), (10, 20, 30), 0)]),
    ("rgb.jpg", save(lambda: Image.new("RGB", (32, 16), (200, 100, 50)), "JPEG"), "JPEG", (32, 16),
     [((5, 5), (200, 100, 50), 6)]),
    ("rgba.webp", save(lambda: Image.new("RGBA", (16, 16), (0, 128, 0, 255)), "WEBP", lossless=True),
     "WEBP", (16, 16), [((3, 3), (0, 128, 0), 0)]),
    ("gray.gif", save(lambda: Image.new("L", (16, 16), 90), "GIF"), "GIF", (16, 16),
     [((0, 0), (90, 90, 90), 0)]),
    ("rgb.bmp", save(lambda: Image.new("RGB", (16, 16), (7, 8, 9)), "BMP"), "BMP", (16, 16),
     [((0, 0), (7, 8, 9), 0)]),
    ("rgb.tiff", save(lambda: Image.new("RGB", (16, 16), (70, 80, 90)), "TIFF"), "TIFF", (16, 16),
     [((0, 0), (70, 80, 90), 0)]),
    ("one.png", save(lambda: Image.new("RGB", (1, 1), (1, 1, 1)), "PNG"), "PNG", (1, 1), []),
    ("tall.png", save(lambda: Image.new("L", (1, 20000), 5), "PNG"), "PNG", (1, 20000), []),
    ("wide.png", save(lambda: Image.new("L", (20000, 1), 5), "PNG"), "PNG", (20000, 1), []),
    ("frames.gif", gif_frames, "GIF", (64, 64), [((10, 10), (255, 0, 0), 0)]),
    ("cmyk.jpg", save(lambda: Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "JPEG", quality=95),
     "JPEG", (16, 16), [((8, 8), (255, 0, 0), 10)]),
    ("gray16.png", save(array([[0, 32768, 65535]], np.uint16), "PNG"), "PNG", (3, 1),
     [((0, 0), (0, 0, 0), 0), ((1, 0), (128, 128, 128), 1), ((2, 0), (255, 255, 255), 0)]),
    ("int32.tiff", save(array([[0, 1000, 65535]], np.int32), "TIFF"), "TIFF", (3, 1),
     [((0, 0), (0, 0, 0), 0), ((1, 0), (4, 4, 4), 1), ((2, 0), (255, 255, 255), 0)]),
    ("float.tiff", save(array([[0.0, 0.5, 1.0]], np.float32), "TIFF"), "TIFF", (3, 1),
     [((0, 0), (0, 0, 0), 0), ((1, 0), (128, 128, 128), 1), ((2, 0), (255, 255, 255), 0)]),
    ("palette_alpha.png", palette_alpha, "PNG", (2, 1),
     [((0, 0), (255, 255, 255), 0), ((1, 0), (0, 0, 255), 0)]),
    ("rgba.png", rgba, "PNG", (2, 1), [((0, 0), (255, 255, 255), 0), ((1, 0), (127, 127, 127), 1)]),
    ("la.png", save(lambda: Image.new("LA", (2, 2), (0, 0)), "PNG"), "PNG", (2, 2),
     [((0, 0), (255, 255, 255), 0)]),
    ("bilevel.png", save(bilevel, "PNG"), "PNG", (2, 1),
     [((0, 0), (0, 0, 0), 0), ((1, 0), (255, 255, 255), 0)]),
    ("exif6.jpg", exif_rotated, "JPEG", (20, 40), []),
    ("big_text.png", big_text, "PNG", (8, 8), [((0, 0), (1, 2, 3), 0)]),
]


@pytest.mark.parametrize(("name", "build", "fmt", "size", "probe"), GOOD, ids=[g[0] for g in GOOD])
def test_good_images_load_as_rgb(
    loader: ImageLoader, room: Path, name: str, build: Build, fmt: str, size: tuple[int, int], probe: Probe
) -> None:
    build(room / name)
    loaded = loader.load(name)
    assert isinstance(loaded, LoadedImage)
    assert loaded.image.mode == "RGB"
    assert loaded.format == fmt
    assert loaded.size == size
    assert (loaded.width, loaded.height) == size
    assert loaded.source == "path"
    assert IMAGE_ID_RE.match(loaded.image_id)
    assert loaded.image_id == image_id((room / name).read_bytes())
    for xy, rgb, tol in probe:
        assert close(loaded.image.getpixel(xy), rgb, tol), (xy, loaded.image.getpixel(xy))


# --- bad images -------------------------------------------------------------

BAD: list[tuple[str, Callable[[], bytes], str]] = [
    ("empty.png", lambda: b"", "is empty"),
    ("notes.png", lambda: b"just some notes, not an image\n" * 10, "is not a PNG, JPEG"),
    ("eps.png", lambda: b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n" * 3, "is not a PNG, JPEG"),
    ("half.png", lambda: noise("PNG")[: len(noise("PNG")) // 2], "damaged or truncated"),
    ("half.jpg", lambda: noise("JPEG")[: len(noise("JPEG")) // 2], "damaged or truncated"),
    ("head.png", lambda: noise("PNG")[:40], "damaged or truncated"),
    # 1e10 pixels: Pillow's own error fires inside Image.open
    ("bomb.png", lambda: png_header_only(100_000, 100_000), "pixel limit"),
    # 1e8 pixels: only Pillow's warning fires; it must become our error
    ("bomb_warn.png", lambda: png_header_only(10_000, 10_000), "pixel limit"),
    # 6.4e7 pixels: under Pillow's limits, over ours
    ("bomb_ours.png", lambda: png_header_only(8_000, 8_000), "8000 by 8000 pixels"),
]


@pytest.mark.parametrize(("name", "make", "expected"), BAD, ids=[b[0] for b in BAD])
def test_bad_images_are_refused(
    loader: ImageLoader, room: Path, tmp_path: Path, name: str, make: Callable[[], bytes], expected: str
) -> None:
    (room / name).write_bytes(make())
    start = time.monotonic()
    with pytest.raises(ImageError) as caught:
        loader.load(name)
    assert time.monotonic() - start < 2
    msg = check_message(caught.value, str(tmp_path))
    assert expected in msg
    assert name in msg


def test_decode_image_judges_bytes_not_names() -> None:
    rgb, fmt = decode_image(png((3, 2)), Limits())
    assert (rgb.mode, rgb.size, fmt) == ("RGB", (3, 2), "PNG")
    with pytest.raises(ImageError) as caught:
        decode_image(b"%!PS-Adobe-3.0 EPSF-3.0\n", Limits())
    assert check_message(caught.value).startswith("The image is not a PNG")


def test_pillow_warning_is_an_error_even_under_a_higher_cap() -> None:
    with pytest.raises(ImageError) as caught:
        decode_image(png_header_only(10_000, 10_000), Limits(max_pixels=10**9))
    assert "pixel limit" in check_message(caught.value)


def test_decode_refuses_over_byte_cap() -> None:
    with pytest.raises(ImageError) as caught:
        decode_image(png(), Limits(max_bytes=10))
    assert "10-byte limit" in check_message(caught.value)


# --- paths ----------------------------------------------------------------------


def test_missing_file(loader: ImageLoader, tmp_path: Path) -> None:
    with pytest.raises(ImageError) as caught:
        loader.load("missing.png")
    assert check_message(caught.value, str(tmp_path)) == "No image at 'missing.png'."


@pytest.mark.parametrize(
    ("ref", "shown"),
    [
        ("missing.png", "'missing.png'"),
        ("a" * 56 + ".png", "'" + "a" * 56 + ".png'"),  # 60 characters: whole
        ("a" * 60 + ".png", "'" + "a" * 20 + "…" + "a" * 35 + ".png'"),
        ("deep/" * 20 + "missing.png", "'deep/deep/deep/deep/…ep/deep/deep/deep/deep/deep/missing.png'"),
    ],
)
def test_a_long_reference_is_shortened_in_the_middle(loader: ImageLoader, tmp_path: Path, ref: str, shown: str) -> None:
    # the file name, at the end, is what tells a person which file it was
    with pytest.raises(ImageError) as caught:
        loader.load(ref)
    assert check_message(caught.value, str(tmp_path)) == f"No image at {shown}."


@pytest.mark.parametrize(
    ("ref", "setup", "kind", "expected"),
    [
        ("sub", "dir", ImageError, "is a folder"),
        ("../beyond/secret.png", None, AccessDenied, "outside the allowed folders"),
        ("sub/../../beyond/secret.png", "dir", AccessDenied, "outside the allowed folders"),
        ("../beyond/nothing.png", None, AccessDenied, "outside the allowed folders"),  # no existence probe
        ("../allowed2/pic.png", None, AccessDenied, "outside the allowed folders"),
        ("link.png", "file_link", AccessDenied, "outside the allowed folders"),
        ("linkdir/secret.png", "dir_link", AccessDenied, "outside the allowed folders"),
        ("pipe.png", "fifo", ImageError, "not a regular file"),
        ("loop.png", "loop", ImageError, "not a usable file path"),
        ("bad\x00name.png", None, ImageError, "not a usable file path"),
    ],
)
def test_path_refusals(
    loader: ImageLoader, room: Path, tmp_path: Path, ref: str, setup: str | None,
    kind: type[VlmError], expected: str,
) -> None:
    if setup == "dir":
        (room / "sub").mkdir()
    elif setup == "file_link":
        (room / "link.png").symlink_to(tmp_path / "beyond" / "secret.png")
    elif setup == "dir_link":
        (room / "linkdir").symlink_to(tmp_path / "beyond")
    elif setup == "fifo":
        os.mkfifo(room / "pipe.png")
    elif setup == "loop":
        (room / "loop.png").symlink_to(room / "loop.png")
    start = time.monotonic()
    with pytest.raises(kind) as caught:
        loader.load(ref)
    assert time.monotonic() - start < 2  # a FIFO must not block
    # a symlink's target ("beyond", "secret") must never leak
    hidden = [str(tmp_path)] + [word for word in ("beyond", "secret") if word not in ref]
    assert expected in check_message(caught.value, *hidden)


def test_absolute_path_outside_is_refused(loader: ImageLoader, tmp_path: Path) -> None:
    with pytest.raises(AccessDenied) as caught:
        loader.load(str(tmp_path / "beyond" / "secret.png"))
    assert "outside the allowed folders" in check_message(caught.value)


@pytest.mark.parametrize("policy_kind", ["dir", "file"])
def test_dev_zero_is_not_read(policy_kind: str) -> None:
    if not os.path.exists("/dev/zero"):
        pytest.skip("no /dev/zero here")
    policy = AccessPolicy.for_server(["/dev"]) if policy_kind == "dir" else AccessPolicy.for_files(["/dev/zero"])
    with pytest.raises(ImageError) as caught:
        ImageLoader(policy).load("/dev/zero")
    assert "not a regular file" in check_message(caught.value)


def test_file_over_byte_cap(room: Path, tmp_path: Path) -> None:
    (room / "noise.png").write_bytes(noise("PNG"))
    small = ImageLoader(AccessPolicy.for_server([room], limits=Limits(max_bytes=1000)))
    with pytest.raises(ImageError) as caught:
        small.load("noise.png")
    assert "larger than the 1000-byte limit" in check_message(caught.value, str(tmp_path))


def test_for_files_allows_exactly_the_named_files(room: Path, tmp_path: Path) -> None:
    (room / "a.png").write_bytes(png(color=(1, 1, 1)))
    (room / "b.png").write_bytes(png(color=(2, 2, 2)))
    one_shot = ImageLoader(AccessPolicy.for_files(["a.png"]))
    assert one_shot.load("a.png").size == (8, 8)
    assert one_shot.load(str(room / "a.png")).size == (8, 8)
    with pytest.raises(AccessDenied) as caught:
        one_shot.load("b.png")
    check_message(caught.value, str(tmp_path))


def test_named_symlink_is_allowed_in_one_shot_mode(room: Path, tmp_path: Path) -> None:
    (room / "link.png").symlink_to(tmp_path / "beyond" / "secret.png")
    assert ImageLoader(AccessPolicy.for_files(["link.png"])).load("link.png").size == (8, 8)


def test_home_is_expanded(room: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(room))
    (room / "pic.png").write_bytes(png())
    assert ImageLoader(AccessPolicy.for_server()).load("~/pic.png").source == "path"


def test_server_policy_defaults_to_cwd_and_checks_dirs(room: Path) -> None:
    assert AccessPolicy.for_server().allowed_dirs == (room.resolve(),)
    with pytest.raises(InvalidRequest) as caught:
        AccessPolicy.for_server(["no-such-dir"])
    check_message(caught.value)


def test_policy_without_files_refuses_paths(room: Path) -> None:
    (room / "pic.png").write_bytes(png())
    with pytest.raises(AccessDenied) as caught:
        ImageLoader(AccessPolicy()).load("pic.png")
    assert "turned off" in check_message(caught.value)


def test_policy_resolves_what_it_is_given(room: Path) -> None:
    policy = AccessPolicy(allowed_dirs=(Path("."),), allowed_files=("x/../y.png",))  # type: ignore[arg-type]
    assert policy.allowed_dirs == (room.resolve(),)
    assert policy.allowed_files == (room.resolve() / "y.png",)


# --- loader dispatch --------------------------------------------------------


@pytest.mark.parametrize(
    ("ref", "kind"),
    [
        ("", InvalidRequest),
        ("   ", InvalidRequest),
        ("file:///etc/passwd", InvalidRequest),
        ("ftp://example.com/a.png", InvalidRequest),
        ("gopher://example.com/a.png", InvalidRequest),
        ("img_0123456789abcdef", UnknownImage),
    ],
)
def test_refused_refs(loader: ImageLoader, ref: str, kind: type[VlmError]) -> None:
    with pytest.raises(kind) as caught:
        loader.load(ref)
    check_message(caught.value, "/etc/passwd")


def test_unknown_id_message(loader: ImageLoader) -> None:
    with pytest.raises(UnknownImage) as caught:
        loader.load("img_0123456789abcdef")
    assert str(caught.value) == (
        "Unknown image_id 'img_0123456789abcdef'; send the image itself (path, URL or data: URI) again."
    )


@pytest.mark.parametrize(("loaded_in", "named_in", "found"), [("a", "a", True), ("a", "b", False), ("a", None, True)])
def test_an_image_id_is_found_only_in_the_scope_that_loaded_it(loader: ImageLoader, loaded_in, named_in, found) -> None:
    """Outside any scope (the CLI) every id is found; in a scope, only the ids it loaded itself."""
    from tools.scope import Scope, owned_by

    scopes = {"a": Scope(), "b": Scope(), None: None}
    uri = data_uri(png((16, 16)))
    with owned_by(scopes[loaded_in]):
        image_id = loader.load(uri).image_id
    with owned_by(scopes[named_in]):
        if found:
            assert loader.load(image_id).image_id == image_id
        else:
            with pytest.raises(UnknownImage) as caught:
                loader.load(image_id)
            assert str(caught.value) == f"Unknown image_id '{image_id}'; send the image itself (path, URL or data: URI) again."
    with owned_by(scopes[named_in]):
        assert loader.load(uri).image_id == image_id  # its own bytes make it its own


def test_long_and_odd_refs_are_shortened_to_one_line(loader: ImageLoader) -> None:
    ref = "dir\nname/" + "x" * 500 + ".png"
    with pytest.raises(ImageError) as caught:
        loader.load(ref)
    msg = check_message(caught.value)
    assert len(msg) < 120


def test_load_many(loader: ImageLoader, room: Path) -> None:
    (room / "a.png").write_bytes(png(color=(1, 1, 1)))
    uri = data_uri(png(color=(2, 2, 2)))
    got = loader.load_many(["a.png", uri])
    assert [g.source for g in got] == ["path", "data"]


# --- data: URIs -------------------------------------------------------------

PAYLOAD = base64.b64encode(png()).decode()


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        (f"data:image/png;base64,{PAYLOAD}", None),
        (f"DATA:IMAGE/PNG;BASE64,{PAYLOAD}", None),
        (f"data:image/jpeg;base64,{PAYLOAD}", None),  # the bytes decide the format
        ("data:image/png;base64," + "\n".join(PAYLOAD[i : i + 76] for i in range(0, len(PAYLOAD), 76)), None),
        (f"data:image/png;base64,{PAYLOAD[:-4]}!!!!", "invalid base64"),
        (f"data:image/png;base64,{PAYLOAD[:-1]}", "invalid base64"),
        (f"data:text/plain;base64,{PAYLOAD}", "image media type"),
        (f"data:image/svg+xml;base64,{PAYLOAD}", "image media type"),
        (f"data:image/png,{PAYLOAD}", "base64-encoded"),
        (f"data:image/png;base64{PAYLOAD}", "no ','"),
        ("data:image/png;base64,", "no image data"),
        ("data:image/png;base64," + base64.b64encode(b"%!PS-Adobe-3.0 EPSF-3.0\n").decode(), "not a PNG"),
    ],
)
def test_data_uris(loader: ImageLoader, uri: str, expected: str | None) -> None:
    if expected is None:
        loaded = loader.load(uri)
        assert (loaded.source, loaded.format, loaded.size) == ("data", "PNG", (8, 8))
        return
    with pytest.raises(ImageError) as caught:
        loader.load(uri)
    msg = check_message(caught.value, PAYLOAD[:20])
    assert expected in msg


@pytest.mark.parametrize(
    ("header", "shown"),
    [
        ("data:image/png;base64", "the data: URI"),
        ("data:image/png;name=scan.png;base64", "'scan.png'"),
        ("data:video/mp4;NAME=my%20clip.mp4;base64", "'my clip.mp4'"),
        ("data:image/png;name=;base64", "the data: URI"),
        # a name is the sender's text: one printable line, shortened, in the message
        ("data:image/png;name=a%0Ab%1B%5B2J.png;base64", "'a?b?[2J.png'"),
        ("data:image/png;name=" + "x" * 200 + ".png;base64", "'" + "x" * 20 + "…" + "x" * 35 + ".png'"),
    ],
)
def test_a_data_uri_is_named_by_its_name_parameter(header: str, shown: str) -> None:
    from tools.inputs.shown import quoted_data_uri

    assert quoted_data_uri(f"{header},{PAYLOAD}") == shown


def test_a_named_data_uri_loads_and_its_errors_say_the_name(loader: ImageLoader) -> None:
    assert loader.load(f"data:image/png;name=scan.png;base64,{PAYLOAD}").size == (8, 8)
    eps = base64.b64encode(b"%!PS-Adobe-3.0 EPSF-3.0\n").decode()
    with pytest.raises(ImageError) as caught:
        loader.load(f"data:image/png;name=scan.png;base64,{eps}")
    assert "'scan.png'" in check_message(caught.value, eps[:20])


def test_oversize_data_uri_is_refused_before_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args: object, **kwargs: object) -> bytes:
        raise AssertionError("decoded an oversize payload")

    monkeypatch.setattr(files.base64, "b64decode", boom)
    payload = base64.b64encode(noise("PNG")).decode()
    small = ImageLoader(AccessPolicy(limits=Limits(max_bytes=1000)))
    with pytest.raises(ImageError) as caught:
        small.load(f"data:image/png;base64,{payload}")
    assert "1000-byte limit" in check_message(caught.value, payload[:20])


# --- URLs ---------------------------------------------------------------------

IMAGE = png((5, 4), (9, 99, 199))
SAFETY_S = 8.0  # handlers that stream forever give up after this


class Handler(BaseHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass

    def send_image(self, ctype: str | None = "image/png", length: int | None = None) -> None:
        self.send_response(200)
        if ctype:
            self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(IMAGE) if length is None else length))
        self.end_headers()

    def redirect(self, location: str) -> None:
        self.send_response(302)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def stream(self, chunk: bytes, pause: float) -> None:
        until = time.monotonic() + SAFETY_S
        try:
            while time.monotonic() < until:
                self.wfile.write(chunk)
                self.wfile.flush()
                if pause:
                    time.sleep(pause)
        except OSError:
            pass  # the client hung up: what the test wanted

    def do_GET(self) -> None:
        port = self.server.server_address[1]
        path = self.path
        if path == "/img.png":
            self.send_image()
            self.wfile.write(IMAGE)
        elif path == "/no-type":
            self.send_image(ctype=None)
            self.wfile.write(IMAGE)
        elif path == "/octet":
            self.send_image(ctype="application/octet-stream")
            self.wfile.write(IMAGE)
        elif path.startswith("/hops/"):  # /hops/N answers after exactly N redirects
            left = int(path.rsplit("/", 1)[1])
            if left:
                self.redirect(f"/hops/{left - 1}")
            else:
                self.send_image()
                self.wfile.write(IMAGE)
        elif path == "/to-private":
            self.redirect(f"http://127.0.0.2:{port}/img.png")
        elif path == "/to-file":
            self.redirect("file:///etc/passwd")
        elif path == "/endless":
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.end_headers()
            self.stream(b"\x00" * 65536, 0)
        elif path == "/drip":
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.end_headers()
            self.stream(b"\x00", 0.05)
        elif path == "/drip-headers":
            self.wfile.write(b"HTTP/1.0 200 OK\r\nX-Slow: ")
            self.stream(b"a", 0.05)
        elif path == "/short-body":  # claims more than it sends
            self.send_image(length=len(IMAGE) + 500)
            self.wfile.write(IMAGE)
        elif path == "/long-body":  # claims less than it sends, and never stops
            self.send_image(length=len(IMAGE) // 2)
            self.stream(IMAGE, 0)
        elif path == "/huge-length":
            self.send_image(length=10**12)
            self.stream(b"\x00" * 65536, 0)
        elif path == "/page.html":
            body = b"<html><body>not an image</body></html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        else:
            self.send_error(404)


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    httpd.block_on_close = False
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def url_loader(**limits: float) -> ImageLoader:
    return ImageLoader(AccessPolicy(allow_private_urls=True, limits=Limits(**limits)))  # type: ignore[arg-type]


def port_of(base: str) -> str:
    return base.rsplit(":", 1)[1]


@pytest.mark.parametrize("path", ["/img.png", "/no-type", "/octet", "/hops/1", "/hops/5"])
def test_urls_that_load(server: str, path: str) -> None:
    loaded = url_loader().load(server + path)
    assert (loaded.source, loaded.format, loaded.size) == ("url", "PNG", (5, 4))
    assert loaded.image_id == image_id(IMAGE)


@pytest.mark.parametrize(
    ("template", "kind", "expected"),
    [
        ("{base}/img.png", AccessDenied, "private or local network address"),
        ("http://localhost:{port}/img.png", AccessDenied, "private or local network address"),
        ("http://2130706433:{port}/img.png", AccessDenied, "private or local network address"),
        ("http://0177.0.0.1:{port}/img.png", InvalidRequest, "not a valid URL"),
        ("http://[::1]:{port}/img.png", AccessDenied, "private or local network address"),
        ("http://[::ffff:127.0.0.1]:{port}/img.png", AccessDenied, "private or local network address"),
        ("http://0.0.0.0:{port}/img.png", AccessDenied, "private or local network address"),
        ("http://user:hunter2@127.0.0.1:{port}/img.png", AccessDenied, "private or local network address"),
        ("http://169.254.169.254/latest/meta-data/", AccessDenied, "private or local network address"),
    ],
)
def test_private_urls_refused_by_default(server: str, template: str, kind: type[VlmError], expected: str) -> None:
    url = template.format(base=server, port=port_of(server))
    start = time.monotonic()
    with pytest.raises(kind) as caught:
        ImageLoader(AccessPolicy()).load(url)
    assert time.monotonic() - start < 2
    assert expected in check_message(caught.value, "hunter2")


@pytest.mark.parametrize(
    ("path", "limits", "kind", "expected"),
    [
        ("/hops/6", {}, ImageError, "redirects more than 5 times"),
        ("/hops/3", {"max_redirects": 2}, ImageError, "redirects more than 2 times"),
        ("/to-file", {}, AccessDenied, "non-http(s) URL"),
        ("/endless", {"max_bytes": 256 * 1024}, ImageError, "larger than the 256 KiB limit"),
        ("/drip", {"url_timeout_s": 1.0}, ImageError, "took longer than 1 s"),
        ("/drip-headers", {"url_timeout_s": 1.0}, ImageError, "took longer than 1 s"),
        ("/short-body", {}, ImageError, "broke off"),
        ("/long-body", {}, ImageError, "damaged or truncated"),
        ("/huge-length", {}, ImageError, "larger than the 20 MiB limit"),
        ("/page.html", {}, ImageError, "text/html document, not an image"),
        ("/missing", {}, ImageError, "404 Not Found"),
    ],
)
def test_url_failures(server: str, path: str, limits: dict[str, float], kind: type[VlmError], expected: str) -> None:
    start = time.monotonic()
    with pytest.raises(kind) as caught:
        url_loader(**limits).load(server + path)
    assert time.monotonic() - start < 2.5
    assert expected in check_message(caught.value, "/etc/passwd")


def test_url_scheme_checked_before_anything(server: str) -> None:
    with pytest.raises(AccessDenied) as caught:
        ImageLoader(AccessPolicy(allow_urls=False)).load(server + "/img.png")
    check_message(caught.value)


def test_redirect_to_private_address_refused_per_hop(server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # No public address exists here: let 127.0.0.1 pass as public so the first
    # hop is fetched, and see the redirect to 127.0.0.2 refused.
    first = ipaddress.ip_address("127.0.0.1")
    monkeypatch.setattr(fetch, "_is_public_ip", lambda ip: ip == first)
    assert ImageLoader(AccessPolicy()).load(server + "/img.png").format == "PNG"
    with pytest.raises(AccessDenied) as caught:
        ImageLoader(AccessPolicy()).load(server + "/to-private")
    assert "redirects to a private or local network address" in check_message(caught.value)


def test_connected_peer_is_checked_too(server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # DNS rebinding: the lookup says public, the connection lands on loopback.
    monkeypatch.setattr(fetch, "_resolve", lambda host, port: [ipaddress.ip_address("93.184.216.34")])
    with pytest.raises(AccessDenied) as caught:
        ImageLoader(AccessPolicy()).load(server + "/img.png")
    assert "private or local network address" in check_message(caught.value)


def test_unresolvable_host(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(host: str, port: int) -> list[ipaddress.IPv4Address]:
        raise OSError("no DNS")

    monkeypatch.setattr(fetch, "_resolve", fail)
    with pytest.raises(ImageError) as caught:
        ImageLoader(AccessPolicy()).load("http://nowhere.invalid/a.png")
    assert "could not be resolved" in check_message(caught.value)


def test_connection_refused(server: str) -> None:
    with pytest.raises(ImageError) as caught:
        url_loader().load(f"http://127.0.0.2:{port_of(server)}/img.png")
    assert "Could not connect" in check_message(caught.value)


# --- ids and the store --------------------------------------------------------


def test_same_bytes_same_id_and_lookup(loader: ImageLoader, room: Path) -> None:
    (room / "a.png").write_bytes(png(color=(5, 5, 5)))
    (room / "b.png").write_bytes(png(color=(5, 5, 5)))
    (room / "c.png").write_bytes(png(color=(6, 6, 6)))
    a, b, c = loader.load_many(["a.png", "b.png", "c.png"])
    assert a.image_id == b.image_id != c.image_id
    again = loader.load(a.image_id)
    assert again.source == "id"
    assert again.image is a.image
    assert a.image_id in loader.store and len(loader.store) == 2


def test_image_id_shape() -> None:
    assert re.fullmatch(r"img_[0-9a-f]{16}", image_id(b"abc"))
    assert image_id(b"abc") == image_id(b"abc") != image_id(b"abd")


def loaded(n: int, side: int = 10) -> LoadedImage:
    return LoadedImage(Image.new("RGB", (side, side)), f"img_{n:016x}", "data", "PNG")


def test_store_evicts_least_recently_used() -> None:
    store = ImageStore(max_bytes=3 * 10 * 10 * 3)
    for n in range(3):
        store.put(loaded(n))
    assert store.get(loaded(0).image_id) is not None  # 0 is now the most recent
    store.put(loaded(3))
    assert len(store) == 3
    assert loaded(1).image_id not in store
    assert all(loaded(n).image_id in store for n in (0, 2, 3))
    assert store.get(loaded(1).image_id) is None
    assert store.total_bytes == 900


def test_store_keeps_newest_even_when_alone_over_cap() -> None:
    store = ImageStore(max_bytes=10)
    store.put(loaded(1))
    store.put(loaded(2))
    assert len(store) == 1 and loaded(2).image_id in store


def test_store_is_thread_safe() -> None:
    store = ImageStore(max_bytes=20 * 300)

    def work(base: int) -> None:
        for n in range(200):
            store.put(loaded(base + n % 30))
            store.get(loaded(base + (n * 7) % 30).image_id)

    threads = [threading.Thread(target=work, args=(k * 1000,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(store) == 20
    assert store.total_bytes == 20 * 300
