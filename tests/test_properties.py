"""Property-based tests (hypothesis) of the code that reads what callers and models send:
the detection parsers, BLIP-2's context trimming, the checks on prompts and labels, and the
image-reference resolver.

For any input they raise nothing but the project's own errors; boxes always lie inside the
image; trimming never drops the current question.
"""

from __future__ import annotations

import base64
import io
import ipaddress
import json
import time
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from tools.inputs import fetch
from tools.boxes.detections import ParsedDetections, from_json_boxes
from tools.families.gemma4 import from_box_2d_json
from tools.families.paligemma import from_loc_tokens
from tools.errors import InvalidRequest, VlmError
from tools.inputs import AccessPolicy, ImageLoader
from tools.families.blip2 import fit_chat as blip2_chat
from tools.families.blip2 import pairs_of as blip2_pairs
from tools.checks import check_labels, check_text

FAST = settings(max_examples=200, deadline=None)
# Image decoding has no stable per-example time on a shared machine.
DECODING = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])

sizes = st.tuples(st.integers(1, 6000), st.integers(1, 6000))
#: any text, lone surrogates included: undecodable bytes in argv arrive as those
any_text = st.text(st.one_of(st.characters(), st.characters(categories=["Cs"])), max_size=80)


def boxes_inside(parsed: ParsedDetections, size: tuple[int, int]) -> None:
    width, height = size
    assert parsed.image_size == size
    for d in parsed.detections:
        x1, y1, x2, y2 = d.box
        assert 0 <= x1 <= x2 <= width and 0 <= y1 <= y2 <= height, d
        assert all(0.0 <= v <= 1.0 for v in d.box_normalized), d
        assert d.label.strip() == d.label and d.label


# ---------------------------------------------------------------- Gemma 4 box_2d JSON

values = st.one_of(
    st.integers(-2000, 3000),
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(10**300, 10**320),  # past what a float holds
    st.text(max_size=6),
    st.none(),
    st.booleans(),
    st.lists(st.integers(), max_size=2),
)
items = st.fixed_dictionaries(
    {"box_2d": st.one_of(st.lists(values, min_size=4, max_size=4), st.lists(values, max_size=6), values)},
    optional={"label": st.one_of(st.text(max_size=12), st.integers(), st.none(), st.lists(st.text(), max_size=2))},
)


@st.composite
def model_json(draw: st.DrawFn) -> str:
    """What Gemma 4 might write: items in a list or alone, in fences and prose, maybe cut short."""
    body = json.dumps(draw(st.lists(items, max_size=6)))
    text = draw(st.sampled_from(["{}", "```json\n{}\n```", "Here: {} done", "{}{}", '{{"result": {}}}']))
    text = text.replace("{}", body, 1).replace("{}", body)
    if draw(st.booleans()):
        text = text[: draw(st.integers(0, len(text)))]
    return text


json_noise = st.text(alphabet='{}[]",:0123456789.-eE \nabox_2dlN\\', max_size=300)


@FAST
@given(text=st.one_of(model_json(), json_noise, st.text(max_size=200)), size=sizes)
def test_box_2d_parser_never_raises_and_keeps_boxes_inside(text: str, size: tuple[int, int]) -> None:
    boxes_inside(from_box_2d_json(text, size), size)


# ---------------------------------------------------------------- PaliGemma <loc> tokens

loc_tokens = st.lists(
    st.one_of(
        st.integers(0, 9999).map(lambda n: f"<loc{n:04d}>"),
        st.integers(0, 999).map(lambda n: f"<seg{n:03d}>"),
        st.sampled_from([" ; ", " ", "cat", "a dog", "<eos>", "<", ">", "\n", ";", "<loc", "12>"]),
        st.text(max_size=4),
    ),
    max_size=40,
).map("".join)


@FAST
@given(text=st.one_of(loc_tokens, st.text(max_size=200)), size=sizes)
def test_loc_token_parser_never_raises_and_keeps_boxes_inside(text: str, size: tuple[int, int]) -> None:
    boxes_inside(from_loc_tokens(text, size), size)


@FAST
@given(
    text=st.one_of(model_json(), loc_tokens),
    size=st.tuples(st.one_of(st.integers(-3, 50), st.floats(), st.text(max_size=2)), st.integers(-3, 50)),
    grid=st.one_of(st.integers(-3, 2000), st.floats(), st.none()),
)
def test_parsers_refuse_nonsense_sizes_and_grids_only_with_our_error(text: str, size, grid) -> None:
    def box_2d(text: str, size, grid) -> ParsedDetections:
        return from_json_boxes(text, size, key="box_2d", order="yx", grid=grid)

    for parse in (box_2d, from_loc_tokens):
        try:
            parse(text, size, grid)
        except InvalidRequest:
            pass


# ---------------------------------------------------------------- BLIP-2 context trimming


def words(text: str) -> int:
    return len(text.split())


@FAST
@given(
    pairs=st.lists(st.text(max_size=30), max_size=10),
    current=st.text(max_size=40),
    limit=st.integers(0, 60),
)
def test_trimming_drops_the_oldest_pairs_and_never_the_current_question(pairs: list[str], current: str,
                                                                        limit: int) -> None:
    try:
        prompt, dropped = blip2_chat(pairs, current, words, limit)
    except InvalidRequest:
        # Refused only when the question alone does not fit.
        assert words(current) > limit
        return
    assert words(prompt) <= limit
    assert prompt == " ".join(part for part in (*pairs[dropped:], current) if part)
    if current:
        assert prompt.endswith(current)
    if dropped:  # no more dropped than needed
        assert words(" ".join(part for part in (*pairs[dropped - 1:], current) if part)) > limit


@FAST
@given(turns=st.lists(st.tuples(st.sampled_from(["user", "assistant"]), st.text(max_size=20)), max_size=12))
def test_every_prior_turn_lands_in_exactly_one_pair(turns: list[tuple[str, str]]) -> None:
    assert sum(count for _, count in blip2_pairs(turns)) == len(turns)


# ---------------------------------------------------------------- caller text


@FAST
@given(text=any_text, labels=st.lists(any_text, max_size=4))
def test_prompts_and_labels_pass_clean_or_are_refused_with_our_error(text: str, labels: list[str]) -> None:
    try:
        assert check_text(text, "The prompt") == text
        text.encode("utf-8")  # what passes, a tokenizer can take
    except InvalidRequest:
        pass
    try:
        assert all(label and "\n" not in label for label in check_labels(labels))
    except InvalidRequest:
        pass


# ---------------------------------------------------------------- image references


@pytest.fixture(scope="module")
def allowed(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("refs")
    Image.new("RGB", (4, 3), (1, 2, 3)).save(root / "ok.png")
    return root


def resolve_only(ref: str, allowed: Path) -> None:
    """Load ``ref`` under a server policy; any host resolves to loopback, so no URL ever leaves."""
    loopback = [ipaddress.ip_address("127.0.0.1")]
    with mock.patch.object(fetch, "_resolve", lambda host, port: loopback):
        try:
            loaded = ImageLoader(AccessPolicy.for_server([allowed])).load(ref)
        except VlmError:
            return
    assert loaded.image.mode == "RGB" and loaded.width >= 1 and loaded.height >= 1


PREFIXES = ["", "data:", "data:image/png;base64,", "DATA:image/gif;base64", "http://", "https://", "HTTP://[",
            "file://", "ftp://", "img_", "~", "~/", "../", "/", "/dev/", "\\\\server\\share\\", "C:\\"]


@DECODING
@given(prefix=st.sampled_from(PREFIXES), rest=any_text, in_allowed=st.booleans())
def test_any_reference_resolves_or_fails_with_our_error(allowed: Path, prefix: str, rest: str,
                                                        in_allowed: bool) -> None:
    ref = prefix + rest
    resolve_only(ref, allowed)
    if in_allowed:
        resolve_only(f"{allowed}/{rest}", allowed)


def seed_images() -> list[bytes]:
    pixels = np.random.default_rng(0).integers(0, 256, (12, 10, 3), dtype=np.uint8)
    out = []
    for fmt, mode in [("PNG", "RGB"), ("PNG", "P"), ("JPEG", "RGB"), ("GIF", "P"), ("BMP", "RGB"), ("TIFF", "RGB"),
                      ("WEBP", "RGB"), ("PNG", "I;16")]:
        buffer = io.BytesIO()
        image = Image.fromarray(pixels)
        image = image.convert("L").convert(mode) if mode == "I;16" else image.convert(mode)
        image.save(buffer, fmt)
        out.append(buffer.getvalue())
    return out


SEEDS = seed_images()


@st.composite
def mutated_images(draw: st.DrawFn) -> bytes:
    """A real small image with a few bytes overwritten, inserted or cut: headers included."""
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 6))):
        at = draw(st.integers(0, len(data) - 1))
        action = draw(st.sampled_from(["set", "insert", "cut"]))
        if action == "set":
            data[at] = draw(st.integers(0, 255))
        elif action == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        else:
            del data[at:at + draw(st.integers(1, 32))]
    return bytes(data)


@pytest.mark.filterwarnings("ignore::UserWarning:PIL")  # Pillow, about the broken files it was fed
@DECODING
@given(data=st.one_of(mutated_images(), st.binary(max_size=300)), media=st.sampled_from(["image/png", "image/gif"]))
def test_any_image_bytes_decode_or_fail_with_our_error(allowed: Path, data: bytes, media: str) -> None:
    resolve_only(f"data:{media};base64,{base64.b64encode(data).decode()}", allowed)


def test_hostile_model_output_is_parsed_in_bounded_time() -> None:
    """Output that once cost a rescan per brace (minutes for 60k characters) or blew the
    JSON decoder's stack."""
    texts = ["{" * 60_000, "{" * 30_000 + "}" * 30_000, '{"a":' * 12_000 + "1" + "}" * 12_000,
             '{"box_2d": ' + "[" * 10_000 + "]" * 10_000 + "}", '{"box_2d": [1' + "0" * 400 + ", 2, 3, 4]}"]
    for text in texts:
        started = time.monotonic()
        parsed = from_box_2d_json(text, (100, 100))
        assert time.monotonic() - started < 5 and not parsed.detections
