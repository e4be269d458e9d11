"""Drawing detections, laying out comparison grids, and encoding PNGs for clients."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from tools.boxes.detections import Detection
from tools.families.gemma4 import from_box_2d_json
from tools.boxes.drawing import BLACK, PALETTE, WHITE, annotate, colors_for, fit_for_client, grid, text_color
from tools.outputs import save_png

GREY = (128, 128, 128)


def det(label: str, box: tuple[int, int, int, int], size: tuple[int, int]) -> Detection:
    w, h = size
    normalized = (box[0] / w, box[1] / h, box[2] / w, box[3] / h)
    return Detection(label, box, normalized, raw="")


def scaled(size: tuple[int, int], x1: float, y1: float, x2: float, y2: float) -> tuple[int, int, int, int]:
    """A box given as fractions of ``size``."""
    w, h = size
    return round(x1 * w), round(y1 * h), round(x2 * w), round(y2 * h)


@pytest.mark.parametrize("size", [(200, 150), (640, 480), (4000, 3000)])
def test_box_edges_have_their_labels_colour(size):
    image = Image.new("RGB", size, GREY)
    cat = det("cat", scaled(size, 0.1, 0.3, 0.4, 0.9), size)
    dog = det("dog", scaled(size, 0.5, 0.3, 0.9, 0.9), size)
    out = annotate(image, [cat, dog])
    colors = colors_for(["cat", "dog"])
    assert out.size == size and out.mode == "RGB"
    assert image.getpixel((0, 0)) == GREY, "the input is left alone"
    for d in (cat, dog):
        x1, y1, x2, y2 = d.box
        middle = (y1 + y2) // 2
        assert out.getpixel((x1, middle)) == colors[d.label]
        assert out.getpixel((x2, middle)) == colors[d.label]
    assert colors["cat"] != colors["dog"]


def share_of(image: Image.Image, color: tuple[int, int, int], box: tuple[int, int, int, int]) -> float:
    """The fraction of pixels of ``color`` in ``box`` of ``image``."""
    patch = np.asarray(image.crop(box))
    return float(np.all(patch == color, axis=-1).mean())


def test_label_sits_above_the_box_or_inside_at_the_top_edge():
    size = (640, 480)
    above = det("cat", (100, 200, 300, 400), size)
    top = det("dog", (400, 0, 600, 300), size)
    out = annotate(Image.new("RGB", size, GREY), [above, top])
    colors = colors_for(["cat", "dog"])
    # the label background fills a band behind the text: most of the patch, not all of it
    assert 0.4 < share_of(out, colors["cat"], (100, 190, 120, 200)) < 1.0, "label band just above the box"
    assert share_of(out, GREY, (110, 210, 290, 390)) == 1.0, "nothing drawn inside the box"
    assert 0.4 < share_of(out, colors["dog"], (405, 3, 425, 13)) < 1.0, "label band inside, under the top edge"


def test_box_at_the_right_and_bottom_edges_is_drawn():
    size = (300, 200)
    out = annotate(Image.new("RGB", size, GREY), [det("car", (150, 50, 300, 200), size)])
    color = colors_for(["car"])["car"]
    assert out.getpixel((299, 120)) == color
    assert out.getpixel((220, 199)) == color


def test_annotate_real_output_and_transparent_input():
    size = (640, 480)
    parsed = from_box_2d_json('[{"box_2d": [601, 707, 742, 1000], "label": "car"}]', size)
    out = annotate(Image.new("RGBA", size, (0, 0, 0, 0)), parsed.detections)
    assert out.mode == "RGB"
    assert out.getpixel((5, 5)) == WHITE
    assert out.getpixel((639, 320)) == colors_for(["car"])["car"]


def test_annotate_without_detections_is_a_copy():
    image = Image.new("RGB", (50, 40), GREY)
    out = annotate(image, [])
    assert out is not image and out.tobytes() == image.tobytes()


def test_colours_are_stable_and_distinct():
    labels = [f"label {i}" for i in range(len(PALETTE))]
    colors = colors_for(labels)
    assert colors == colors_for(reversed(labels)) == colors_for(labels + labels)
    assert len(set(colors.values())) == len(PALETTE), "no repeats until the palette runs out"
    assert colors_for(["car"])["car"] == colors_for(["car", "person", "dog"])["car"]


@pytest.mark.parametrize(
    "background, expected",
    [((255, 225, 25), BLACK), ((0, 0, 128), WHITE), (WHITE, BLACK), (BLACK, WHITE), ((230, 25, 75), BLACK)],
)
def test_text_colour_contrasts(background, expected):
    assert text_color(background) == expected


def test_save_png_creates_folders(tmp_path):
    path = save_png(Image.new("RGB", (8, 6), GREY), tmp_path / "a" / "b" / "out.png")
    assert path == tmp_path / "a" / "b" / "out.png"
    with Image.open(path) as saved:
        assert saved.format == "PNG" and saved.size == (8, 6)


def decode(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG"
    return image


@pytest.mark.parametrize(
    "size, max_side, max_bytes",
    [((2400, 1800), 1568, 1_000_000), ((2400, 1800), 800, 200_000), ((1000, 3000), 4000, 300_000)],
)
def test_fit_for_client_respects_both_limits(size, max_side, max_bytes):
    noise = np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    data = fit_for_client(Image.fromarray(noise), max_side=max_side, max_bytes=max_bytes)
    image = decode(data)
    assert len(data) <= max_bytes
    assert max(image.size) <= max_side
    assert image.width / image.height == pytest.approx(size[0] / size[1], rel=0.02)
    assert max(image.size) > max_side / 4 or len(data) > max_bytes / 4, "not shrunk far more than needed"


def test_fit_for_client_never_upscales():
    assert decode(fit_for_client(Image.new("RGB", (100, 50), GREY))).size == (100, 50)


@pytest.mark.parametrize("columns, layout", [(None, (3, 1)), (1, (1, 3)), (2, (2, 2)), (3, (3, 1)), (7, (3, 1))])
def test_grid_size(columns, layout):
    panel = Image.new("RGB", (120, 80), GREY)
    panels = [(f"max_soft_tokens = {n}", panel) for n in (70, 140, 280)]
    # one panel shows the gap (left and right of it) and the title band (above it)
    single = grid(panels[:1])
    gap = (single.width - 120) // 2
    title_h = single.height - 80 - 2 * gap
    assert gap > 0 and title_h > 0
    cols, rows = layout
    assert grid(panels, columns).size == (cols * 120 + (cols + 1) * gap, rows * (title_h + 80) + (rows + 1) * gap)


def test_grid_centres_smaller_panels_in_cells_of_the_largest():
    wide = Image.new("RGB", (200, 50), (255, 0, 0))
    tall = Image.new("RGB", (60, 100), (0, 0, 255))
    sheet = grid([("wide", wide), ("a rather long title that must shrink to fit", tall)])
    reference = grid([("wide", Image.new("RGB", (200, 100)))])
    assert sheet.height == reference.height
    assert sheet.width == 2 * 200 + 3 * (reference.width - 200) // 2
    assert sheet.getpixel((sheet.width - 1 - (reference.width - 200) // 2 - 100, sheet.height - 1 - 50)) == (0, 0, 255)
