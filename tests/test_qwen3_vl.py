"""Qwen3-VL: its bbox_2d parser on published outputs, its budgets as pixel ranges, its prompts."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import pytest
from mcp import Client
from prompt_toolkit import PromptSession
from prompt_toolkit.input import create_pipe_input
from prompt_toolkit.output import DummyOutput
from rich.console import Console

from agent.chat import run_chat
from agent.cli import main
from mcp_server.server import Settings, build_server
from tests.conftest import sample_image, tiny_checkpoint
from tools.errors import InvalidRequest
from tools.families.qwen3_vl import (
    OCR,
    QWEN3_VL_BUDGETS,
    QWEN3_VL_GRID,
    describe_text,
    detect_text,
    from_bbox_2d_json,
    pixel_range,
    token_grid,
)
from tools.inputs import ImageInput
from tools.model import load_model, plan
from tools.options import GenerationOptions
from tools.runtimes.local import local_messages
from tools.tasks import Ask, Turn

FENCE = "```"

# Published Qwen3-VL output: QwenLM/Qwen3-VL, cookbooks/2d_grounding.ipynb, "1. Multi-Target
# Object Detection" (Qwen3-VL-235B-A22B-Instruct on the cookbook's dining_table.png, which the
# notebook prints as (640, 479)), for the prompt: locate every instance that belongs to the
# following categories: "plate/dish, scallop, wine bottle, tv, bowl, spoon, air conditioner,
# coconut drink, cup, chopsticks, person". Report bbox coordinates in JSON format.
DINING_TABLE_SIZE = (640, 479)
DINING_TABLE = f"""{FENCE}json
[
\t{{"bbox_2d": [74, 361, 324, 808], "label": "plate/dish"}},
\t{{"bbox_2d": [320, 660, 564, 956], "label": "plate/dish"}},
\t{{"bbox_2d": [555, 575, 807, 901], "label": "plate/dish"}},
\t{{"bbox_2d": [484, 187, 743, 568], "label": "plate/dish"}},
\t{{"bbox_2d": [739, 440, 999, 901], "label": "plate/dish"}},
\t{{"bbox_2d": [300, 134, 481, 397], "label": "plate/dish"}},
\t{{"bbox_2d": [691, 235, 775, 328], "label": "scallop"}},
\t{{"bbox_2d": [752, 204, 856, 325], "label": "scallop"}},
\t{{"bbox_2d": [835, 200, 919, 312], "label": "scallop"}},
\t{{"bbox_2d": [735, 328, 834, 443], "label": "scallop"}},
\t{{"bbox_2d": [812, 308, 918, 443], "label": "scallop"}},
\t{{"bbox_2d": [885, 300, 980, 429], "label": "scallop"}},
\t{{"bbox_2d": [162, 0, 303, 354], "label": "wine bottle"}},
\t{{"bbox_2d": [462, 0, 589, 210], "label": "wine bottle"}},
\t{{"bbox_2d": [615, 72, 730, 212], "label": "bowl"}},
\t{{"bbox_2d": [255, 82, 333, 220], "label": "bowl"}},
\t{{"bbox_2d": [0, 801, 102, 999], "label": "bowl"}},
\t{{"bbox_2d": [619, 939, 762, 999], "label": "bowl"}},
\t{{"bbox_2d": [981, 444, 999, 557], "label": "bowl"}},
\t{{"bbox_2d": [462, 484, 597, 645], "label": "bowl"}},
\t{{"bbox_2d": [636, 50, 712, 180], "label": "spoon"}},
\t{{"bbox_2d": [728, 0, 864, 193], "label": "coconut drink"}},
\t{{"bbox_2d": [728, 843, 846, 999], "label": "cup"}},
\t{{"bbox_2d": [95, 812, 223, 999], "label": "cup"}},
\t{{"bbox_2d": [796, 800, 839, 999], "label": "chopsticks"}},
\t{{"bbox_2d": [902, 433, 999, 466], "label": "chopsticks"}},
\t{{"bbox_2d": [557, 839, 605, 999], "label": "chopsticks"}}
]
{FENCE}
"""

# Published Qwen3-VL output: QwenLM/Qwen3-VL issue #2020 (Qwen3-VL-235B, prompt "Please output
# bounding boxes for each instance of the following object: ["watch"]"), as the issue shows it:
# the fence's language tag on a line of its own. Four watches side by side on a wide picture
# (the issue shows it at 1380 x 245).
WATCHES_SIZE = (1380, 245)
WATCHES = f"""{FENCE}
json
[
    {{"bbox_2d": [323, 118, 444, 825], "label": "watch"}},
    {{"bbox_2d": [444, 118, 565, 825], "label": "watch"}},
    {{"bbox_2d": [565, 118, 686, 825], "label": "watch"}},
    {{"bbox_2d": [686, 118, 807, 825], "label": "watch"}}
]
{FENCE}"""


def boxes(parsed) -> list[tuple[str, tuple[int, int, int, int]]]:
    return [(d.label, d.box) for d in parsed.detections]


def test_cookbook_output_reads_whole_with_x_first() -> None:
    parsed = from_bbox_2d_json(DINING_TABLE, DINING_TABLE_SIZE)
    assert parsed.dropped == []
    labels = [d.label for d in parsed.detections]
    counts = {label: labels.count(label) for label in labels}
    assert counts == {
        "plate/dish": 6, "scallop": 6, "wine bottle": 2, "bowl": 6, "spoon": 1, "coconut drink": 1, "cup": 2,
        "chopsticks": 3,
    }
    by_raw = {d.raw: d for d in parsed.detections}
    # x first: this bowl is a thin strip at the right edge (x 981..999), y 444..557 of 479 px
    edge_bowl = by_raw['{"bbox_2d": [981, 444, 999, 557], "label": "bowl"}']
    assert edge_bowl.box == (628, 213, 639, 267)
    assert edge_bowl.box_normalized == (0.981, 0.444, 0.999, 0.557)
    # the wine bottle reaches the top edge (y1 = 0), not the left one
    assert by_raw['{"bbox_2d": [162, 0, 303, 354], "label": "wine bottle"}'].box == (104, 0, 194, 170)
    # 999 on a 479 px side is the last row: thousandths of the original size, not of a resized input
    assert by_raw['{"bbox_2d": [0, 801, 102, 999], "label": "bowl"}'].box == (0, 384, 65, 479)


def test_issue_output_without_a_proper_fence() -> None:
    parsed = from_bbox_2d_json(WATCHES, WATCHES_SIZE)
    assert parsed.dropped == []
    assert boxes(parsed) == [
        ("watch", (446, 29, 613, 202)),
        ("watch", (613, 29, 780, 202)),
        ("watch", (780, 29, 947, 202)),
        ("watch", (947, 29, 1114, 202)),
    ]


@pytest.mark.parametrize(
    "text, size, expected, dropped",
    [
        # one item alone, not in a list (the cookbook's single-object answers)
        ('{"bbox_2d": [250, 500, 750, 1000], "label": "cat"}', (200, 100), [("cat", (50, 50, 150, 100))], []),
        # 1000 is the far edge; 999 (the provider's documented maximum) the last pixel or so
        ('[{"bbox_2d": [0, 0, 1000, 1000], "label": "all"}]', (640, 479), [("all", (0, 0, 640, 479))], []),
        # swapped corners are put in order
        ('[{"bbox_2d": [750, 1000, 250, 500], "label": "cat"}]', (200, 100), [("cat", (50, 50, 150, 100))], []),
        # Qwen2.5-VL-style absolute pixels past the grid are clamped, not taken as pixels
        ('[{"bbox_2d": [900, 10, 1904, 20], "label": "car"}]', (1000, 1000), [("car", (900, 10, 1000, 20))], []),
        # numbers written as strings are read
        ('[{"bbox_2d": ["100", "200", "300", "400"], "label": "cup"}]', (1000, 1000), [("cup", (100, 200, 300, 400))], []),
        # no label: the box is kept as "object"
        ('[{"bbox_2d": [100, 200, 300, 400]}]', (1000, 1000), [("object", (100, 200, 300, 400))], []),
        # Gemma 4's key is not Qwen's: left out with a reason, never read in the other order
        ('[{"box_2d": [100, 200, 300, 400], "label": "cup"}]', (1000, 1000), [], ["item 1: no bbox_2d"]),
        # a point is not a box
        ('[{"point_2d": [100, 200], "label": "cup"}]', (1000, 1000), [], ["item 1: no bbox_2d"]),
        ('[{"bbox_2d": [100, 200, 300], "label": "cup"}]', (1000, 1000), [], ["item 1: box has 3 numbers, need 4"]),
        ('[{"bbox_2d": "100,200,300,400", "label": "cup"}]', (1000, 1000), [], ["item 1: bbox_2d is not a list"]),
        ('[{"bbox_2d": [100, 200, 100, 400], "label": "cup"}]', (1000, 1000), [],
         ["item 1: zero-area box (after clamping to 0..1000)"]),
        # cut off mid-item: the complete one kept, the open one reported
        ('[{"bbox_2d": [100, 200, 300, 400], "label": "cup"}, {"bbox_2d": [5', (1000, 1000),
         [("cup", (100, 200, 300, 400))], ["truncated output: 1 incomplete item ignored"]),
        ("I cannot find any cups.", (1000, 1000), [], []),
    ],
)
def test_parser_table(text: str, size: tuple[int, int], expected: list, dropped: list[str]) -> None:
    parsed = from_bbox_2d_json(text, size)
    assert boxes(parsed) == expected
    assert parsed.dropped == dropped
    assert parsed.image_size == size


def test_grid_is_a_thousand() -> None:
    assert QWEN3_VL_GRID == 1000


# ---------------------------------------------------------------- budgets

# Image tokens per image at budgets 70 / 140 / 280 / 560 / 1120, measured through the processor's
# own smart_resize: a big image is scaled down under the budget, a small one keeps its size.
@pytest.mark.parametrize(
    "size, tokens",
    [
        ((4000, 3000), [63, 130, 266, 540, 1064]),
        ((2048, 1536), [63, 130, 266, 540, 1064]),
        ((1024, 768), [63, 130, 266, 540, 768]),
        ((640, 480), [63, 130, 266, 300, 300]),
        ((512, 512), [64, 121, 256, 256, 256]),
        # below the checkpoints' floor of 64 tokens: scaled up to it
        ((64, 48), [70, 70, 70, 70, 70]),
    ],
)
def test_budget_caps_image_tokens(size: tuple[int, int], tokens: list[int]) -> None:
    counts = [math.prod(token_grid(size, *pixel_range([size], budget))) for budget in QWEN3_VL_BUDGETS]
    assert counts == tokens
    assert all(count <= budget for count, budget in zip(counts, QWEN3_VL_BUDGETS))


def test_floor_is_lowered_where_rounding_up_would_pass_the_budget() -> None:
    # 300 x 200 scales up to 10 x 7 tokens under the 64-token floor: 70 fits budget 70...
    assert pixel_range([(300, 200)], 70) == (64 * 32 * 32, 70 * 32 * 32)
    # ...100 x 128 would scale up to 8 x 10 = 80: the floor drops to 62 tokens, giving 7 x 9
    assert math.prod(token_grid((100, 128), 64 * 32 * 32, 70 * 32 * 32)) == 80
    sizes = [(300, 200), (100, 128)]
    least, most = pixel_range(sizes, 70)
    assert (least, most) == (62 * 32 * 32, 70 * 32 * 32)
    assert [math.prod(token_grid(size, least, most)) for size in sizes] == [70, 63]


# ---------------------------------------------------------------- prompts


@pytest.mark.parametrize(
    "prompt, images, expected",
    [
        ("", 1, "Describe this image."),
        ("", 3, "Describe these images."),
        ("What changed?", 2, "What changed?"),
    ],
)
def test_describe_text(prompt: str, images: int, expected: str) -> None:
    assert describe_text(prompt, images) == expected


def test_detect_text_is_the_cookbook_request() -> None:
    assert detect_text(["person", "car"]) == (
        'Locate every instance that belongs to the following categories: "person, car". '
        "Report bbox coordinates in JSON format."
    )


# ---------------------------------------------------------------- a tiny real checkpoint

tiny_qwen3_vl = tiny_checkpoint("qwen3_vl")
SHORT = GenerationOptions(max_new_tokens=4)
#: Qwen3-VL's conversation format, as the template renders a two-turn chat with one image
TWO_TURNS = (
    "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>What is it?<|im_end|>\n"
    "<|im_start|>assistant\nA red square.<|im_end|>\n"
    "<|im_start|>user\nAnd now?<|im_end|>\n"
    "<|im_start|>assistant\n"
)


@pytest.fixture(scope="module")
def model(tiny_qwen3_vl: Path):
    return load_model(str(tiny_qwen3_vl))


def picture(width: int, height: int) -> ImageInput:
    return ImageInput.from_pixels(sample_image(width, height))


def test_checkpoint_plans_as_qwen3_vl_before_loading(tiny_qwen3_vl: Path) -> None:
    caps = plan(str(tiny_qwen3_vl)).capabilities
    assert caps.tasks == frozenset({"describe", "ocr", "detect", "extract"})
    assert (caps.budgets, caps.default_budget) == ((70, 140, 280, 560, 1120), 280)
    assert (caps.box_grid, caps.box_order, caps.context_policy) == (1000, "xy", "chat-template")
    assert caps.context_tokens == 8192


def test_describe_several_images_counts_each_at_the_budget(model) -> None:
    answer = model.run(Ask("describe", (picture(640, 480), picture(512, 512)), budget=140), SHORT)
    generation = answer.generation
    assert generation.image_tokens == 130 + 121
    assert generation.budget == 140 and generation.generated_tokens <= 4


def test_multi_turn_goes_through_the_chat_template(model) -> None:
    first = picture(512, 512)
    history = (Turn("user", "What is it?", (first,)), Turn("assistant", "A red square."))
    ask = model.check(Ask("describe", (), "And now?", history=history, budget=70))
    prompt = model.dialect.prompt(ask)
    processor = model.runtime.processor
    assert processor.apply_chat_template(local_messages(prompt.messages), add_generation_prompt=True, tokenize=False) == TWO_TURNS
    generation = model.run(ask, SHORT).generation
    assert generation.history_turns == 2
    assert generation.image_tokens == 64  # the earlier turn's picture, at budget 70


def test_images_on_assistant_turns_are_left_out_with_a_note(model) -> None:
    # Qwen3-VL's template has no placeholder for them: sent, they would not match the text
    history = (
        Turn("user", "What is it?", (picture(512, 512),)),
        Turn("assistant", "This one.", (picture(640, 480),)),
    )
    generation = model.run(Ask("describe", (), "And now?", history=history, budget=70), SHORT).generation
    assert generation.image_tokens == 64 and generation.history_turns == 2
    assert "1 image of earlier assistant turns not sent: Qwen3-VL takes images in user turns only" in generation.notes


def test_ocr_and_detect_ask_in_qwen_words(model) -> None:
    image = picture(640, 480)
    assert model.dialect.prompt(model.check(Ask("ocr", (image,)))).messages[-1]["content"][-1]["text"] == OCR
    detect = model.dialect.prompt(model.check(Ask("detect", (image,), labels=("person", "car"))))
    assert detect.messages[-1]["content"][-1]["text"] == detect_text(["person", "car"])
    assert model.run(Ask("ocr", (image,), budget=70), SHORT).generation.image_tokens == 63


def test_detect_reads_the_model_text_into_pixel_boxes(model, monkeypatch) -> None:
    # random weights write gibberish: the pipeline runs for real, with the cookbook's answer as the decoded text
    monkeypatch.setattr(model.runtime.processor, "decode", lambda *args, **kwargs: DINING_TABLE)
    answer = model.run(Ask("detect", (picture(*DINING_TABLE_SIZE),), labels=("bowl",)), SHORT)
    assert len(answer.detections.detections) == 27 and answer.detections.dropped == []
    assert answer.detections.detections[18].box == (628, 213, 639, 267)


def test_a_long_thin_image_is_noted_or_refused(model) -> None:
    prompt = model.dialect.prompt(model.check(Ask("describe", (picture(6400, 32),), budget=70)))
    assert prompt.notes == ["image 1 (6400x32) is too long and thin for budget 70: it takes 118 image tokens"]
    with pytest.raises(InvalidRequest, match="at most 200 times"):
        model.dialect.prompt(model.check(Ask("describe", (picture(4020, 20),), budget=70)))


# ---------------------------------------------------------------- where users meet it


@pytest.fixture
def images(tmp_path: Path) -> Path:
    sample_image(640, 480).save(tmp_path / "street.png")
    sample_image(512, 512).save(tmp_path / "square.png")
    sample_image(2048, 1536).save(tmp_path / "big.png")
    # random weights stop within a few dozen tokens on this one, at every budget (64-token floor)
    sample_image(64, 48).save(tmp_path / "small.png")
    return tmp_path


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_describe_detect_and_ocr(tiny_qwen3_vl, images, capsys, monkeypatch) -> None:
    monkeypatch.chdir(images)
    model = str(tiny_qwen3_vl)
    code, out, err = cli(capsys, "describe", "street.png", "square.png", "--model", model, "--budget", "140",
                         "--max-new-tokens", "4", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert (result["family"], result["budget"], result["image_tokens"]) == ("qwen3_vl", 140, 251)
    code, out, err = cli(capsys, "detect", "big.png", "person", "car", "--model", model, "--max-new-tokens", "4",
                         "--json")
    assert code == 0, err
    result = json.loads(out)
    assert (result["image_tokens"], result["image_size"]) == (266, [2048, 1536])
    assert Path(result["annotated_path"]).exists()
    code, out, err = cli(capsys, "ocr", "street.png", "--model", model, "--budget", "1120", "--max-new-tokens", "4",
                         "--json")
    assert code == 0, err
    assert json.loads(out)["image_tokens"] == 300  # 640 x 480 keeps its own resolution under 1120


@pytest.mark.parametrize(
    "argv, message",
    [
        (["segment", "street.png", "car"], "error: Qwen3-VL models cannot segment objects"),
        (["describe", "street.png", "--budget", "100"], "error: Budget 100 is not available for Qwen3-VL"),
    ],
)
def test_cli_refuses_before_loading(tiny_qwen3_vl, images, capsys, monkeypatch, argv, message) -> None:
    monkeypatch.chdir(images)
    code, out, err = cli(capsys, *argv, "--model", str(tiny_qwen3_vl))
    assert code == 1 and out == ""
    assert message in err and "loading" not in err


def test_scripted_conversation_keeps_every_turn(tiny_qwen3_vl, images, capsys) -> None:
    script = images / "talk.yaml"
    script.write_text(
        "turns:\n"
        "  - user: What is in this picture?\n    images: [street.png]\n"
        "  - user: And what colour is it?\n"
        "  - user: find it\n    tool: detect\n    arguments: {labels: [square]}\n"
    )
    out = images / "transcript.json"
    code, _, err = cli(capsys, "run", str(script), "--model", str(tiny_qwen3_vl), "--max-new-tokens", "4",
                       "--out", str(out))
    assert code == 0, err
    turns = json.loads(out.read_text())["turns"]
    assert [turn["result"]["family"] for turn in turns] == ["qwen3_vl"] * 3
    assert turns[1]["result"]["history_turns"] == 2


@pytest.mark.anyio
async def test_mcp_tools_and_compare_budgets(tiny_qwen3_vl, images) -> None:
    server = build_server(Settings(model=str(tiny_qwen3_vl), allow_dirs=[str(images)], out_dir=images / "out"))
    async with Client(server) as client:
        resource = await client.read_resource("vlm-agent://model")
        info = json.loads(resource.contents[0].text)
        assert (info["family"], info["box_order"], info["box_grid"], info["chat"]) == ("qwen3_vl", "xy", 1000, False)
        assert info["context"]["policy"] == "chat-template"

        both = [str(images / "street.png"), str(images / "square.png")]
        first = await client.call_tool("describe", {"images": both, "budget": 140, "max_new_tokens": 4})
        assert not first.is_error, first.content
        assert first.structured_content["image_tokens"] == 130 + 121
        street_id = first.structured_content["image_ids"][0]
        again = await client.call_tool(
            "describe",
            {
                "images": [],
                "prompt": "And now?",
                "history": [
                    {"role": "user", "content": "What is it?", "images": [street_id]},
                    {"role": "assistant", "content": "A red square."},
                ],
                "budget": 70,
                "max_new_tokens": 4,
            },
        )
        assert not again.is_error, again.content
        assert (again.structured_content["history_turns"], again.structured_content["image_tokens"]) == (2, 63)

        boxes = await client.call_tool(
            "detect", {"image": str(images / "big.png"), "labels": ["person"], "max_new_tokens": 4}
        )
        assert not boxes.is_error, boxes.content
        assert boxes.structured_content["family"] == "qwen3_vl"

        compared = await client.call_tool(
            "compare_budgets", {"image": str(images / "big.png"), "task": "ocr", "max_new_tokens": 4}
        )
        assert not compared.is_error, compared.content
        runs = compared.structured_content["runs"]
        assert [run["budget"] for run in runs] == [70, 140, 280, 560, 1120]
        assert [run["image_tokens"] for run in runs] == [63, 130, 266, 540, 1064]
        assert [run["seen_size"] for run in runs] == [[288, 224], [416, 320], [608, 448], [864, 640], [1216, 896]]
        assert [block.type for block in compared.content] == ["text", "image", "resource_link"]

        refused = await client.call_tool("chat", {"message": "hi", "images": [street_id]})
        assert refused.is_error and "Qwen3-VL" in refused.content[0].text


@pytest.mark.anyio
async def test_chat_over_a_real_stdio_server(tiny_qwen3_vl, images, monkeypatch) -> None:
    monkeypatch.setenv("VLM_AGENT_HOME", str(images / "home"))
    console = Console(file=io.StringIO(), width=120, color_system=None)
    # (random weights stop quickly after these two questions: the test stays fast)
    lines = ["What is in this picture?", "And the colour?", "/detect person car", "/budgets", "read the sign", "/quit"]
    with create_pipe_input() as pipe:
        pipe.send_text("".join(line + "\n" for line in lines))
        prompt = PromptSession(input=pipe, output=DummyOutput())
        code = await run_chat(
            [str(images / "small.png")], serve=["--model", str(tiny_qwen3_vl)],
            console=console, prompt=prompt,
        )
    transcript = console.file.getvalue()
    assert code == 0, transcript
    # no function calling: every message is routed by its words, and every tool answers
    assert transcript.count("→ describe(") == 2 and "→ ocr(" in transcript
    assert "→ detect(labels=['person', 'car'])" in transcript and "→ compare_budgets(" in transcript
    assert "error" not in transcript.lower(), transcript
    # the follow-up carries the first turn's picture through the chat template: two 70-token images
    assert "qwen3_vl · budget 280 · 70 image tokens" in transcript
    assert "qwen3_vl · budget 280 · 140 image tokens" in transcript
