"""Reading and detecting in tiles on a tiny real Gemma 4: tile count, one batch, exact page boxes.

The model is real (loaded through the production path, run on every tile); what it says in
each tile is scripted where the parsers read it, since random weights write gibberish.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import run, sample_image
from tools.reading import tiling
from tools.jobs import tiles as tiled
from tools.inputs import AccessPolicy, ImageLoader
from tools.options import GenerationOptions
from tools.vision import Vision


@pytest.fixture
def scripted(monkeypatch: pytest.MonkeyPatch, gemma4_backend) -> Iterator[tuple[list[str], list[int]]]:
    """(texts, batch sizes): each generation's text is replaced, in order, by the next of ``texts``;
    every call to ``generate_rows`` records how many rows it ran together."""
    texts: list[str] = []
    batches: list[int] = []
    runtime = gemma4_backend.runtime
    generation, generate_rows = runtime.generation, runtime.generate_rows

    def scripted_generation(*args, **kwargs):
        result = generation(*args, **kwargs)
        result.text = texts.pop(0)
        return result

    def counted(rows, *args, **kwargs):
        batches.append(len(rows))
        return generate_rows(rows, *args, **kwargs)

    monkeypatch.setattr(runtime, "generation", scripted_generation)
    monkeypatch.setattr(runtime, "generate_rows", counted)
    yield texts, batches


def vision_on(backend, tmp_path: Path, size: tuple[int, int]) -> tuple[Vision, str]:
    path = tmp_path / "page.png"
    sample_image(*size).save(path)
    return Vision(backend, ImageLoader(AccessPolicy.for_files([str(path)]))), str(path)


def test_detect_in_tiles_maps_boxes_to_the_page_exactly_and_merges_the_seam(gemma4_backend, scripted, tmp_path):
    texts, batches = scripted
    vision, path = vision_on(gemma4_backend, tmp_path, (400, 200))
    # 2 across a 400 x 200 page: tiles 210 x 200 at x 0 and x 190 (20 px overlap), one row.
    texts += [
        # tile 0: a car cut by its right edge (x 105..210 of 210)
        '```json\n[{"box_2d": [100, 500, 500, 1000], "label": "car"}]\n```',
        # tile 1: the rest of the car from its left edge, and a whole cat
        '```json\n[{"box_2d": [100, 0, 500, 200], "label": "car"}, {"box_2d": [600, 600, 800, 800], "label": "cat"}]\n```',
    ]
    result = vision.detect(path, ["car", "cat"], budget=70, options=GenerationOptions(max_new_tokens=2), tiles=2)
    assert batches == [2]  # both tiles in one batch
    assert [t.box for t in result.tiles] == [[0, 0, 210, 200], [190, 0, 400, 200]]
    found = [(d.label, d.box, d.tiles) for d in result.detections]
    assert found == [("car", (105, 20, 232, 100), (0, 1)), ("cat", (316, 120, 358, 160), (1,))]
    assert result.detections[1].box_normalized == (0.79, 0.6, 0.895, 0.8)
    assert result.budget == 70 and result.image_tokens > 0
    assert result.text.startswith("tile 0: ```json")


def test_ocr_in_tiles_reads_every_tile_in_one_batch_and_drops_the_overlap_repeat(gemma4_backend, scripted, tmp_path):
    texts, batches = scripted
    vision, path = vision_on(gemma4_backend, tmp_path, (200, 400))
    texts += ["alpha\nbeta", "beta\ngamma"]  # the two tiles, stacked; "beta" lies in the overlap
    result = vision.ocr(path, budget=70, options=GenerationOptions(max_new_tokens=2), tiles="2")
    assert batches == [2]
    assert [t.text for t in result.tiles] == ["alpha\nbeta", "beta\ngamma"]
    assert [t.box for t in result.tiles] == [[0, 0, 200, 210], [0, 190, 200, 400]]
    assert result.text == "alpha\nbeta\n\ngamma"
    texts.append("one tile alone")
    single = run(gemma4_backend, "ocr", [sample_image(200, 210)], budget=70, options=GenerationOptions(max_new_tokens=2))
    assert result.image_tokens == 2 * single.generation.image_tokens


def test_tiles_off_and_auto_on_a_small_image_read_it_whole(gemma4_backend, scripted, tmp_path):
    texts, batches = scripted
    vision, path = vision_on(gemma4_backend, tmp_path, (64, 48))
    texts += ["whole", "whole"]
    for choice in ("off", "auto"):
        result = vision.ocr(path, budget=70, options=GenerationOptions(max_new_tokens=2), tiles=choice)
        assert result.tiles is None and result.text == "whole"
    assert batches == []


@pytest.mark.parametrize(
    "size, budget, shape",
    [
        ((4000, 3000), 1120, (3, 2)),  # 12 MP: shrunk at 1120, so tiles of at most 1584 px
        ((1500, 1500), 1120, (1, 1)),  # seen whole at 1120 (1584 px square)
        ((1600, 1600), 1120, (2, 2)),  # just too large: four tiles, each seen whole
        ((1600, 1600), 280, (3, 3)),   # at 280 Gemma 4 sees 768 px: tiles of that size
        ((64, 48), 70, (1, 1)),        # small images are enlarged, never tiled
    ],
)
def test_auto_tiles_what_the_budget_would_shrink(gemma4_backend, size, budget, shape):
    plan = tiled.vlm_plan(gemma4_backend, size, "auto", budget)
    assert (1 + max(t.col for t in plan), 1 + max(t.row for t in plan)) == shape
    side = min(gemma4_backend.seen_size((100_000, 100_000), budget))
    assert all(max(t.size) <= side for t in plan) or len(plan) == 1


def test_fixed_resolution_families_are_not_tiled_by_auto(paligemma_backend):
    assert len(tiled.vlm_plan(paligemma_backend, (4000, 3000), "auto", None)) == 1
    assert len(tiled.vlm_plan(paligemma_backend, (4000, 3000), 2, None)) == 4


def test_a_bad_tiles_value_is_refused_before_the_model_runs(gemma4_backend, scripted, tmp_path):
    from tools.errors import InvalidRequest

    vision, path = vision_on(gemma4_backend, tmp_path, (64, 48))
    with pytest.raises(InvalidRequest, match="between 1 and 8"):
        vision.detect(path, ["cat"], tiles=12)
    assert scripted[1] == []


def test_page_text_keeps_side_by_side_tiles_apart():
    plan = tiling.grid((400, 100), 2, 1, 20)
    from tools.tasks import Generation

    runs = tiled.TiledRuns(plan, [(Generation("left", 1, 1, 1, "stop", 70), None),
                                  (Generation("right", 1, 1, 1, "stop", 70), None)], 70)
    assert tiled.page_text(runs) == "left\n\nright"


CONSENSUS_TEXTS = [
    # budgets 280, 560, 1120 on a 100 x 100 image, one batch, in that order
    '[{"box_2d": [100, 100, 500, 500], "label": "cat"}]',
    '[{"box_2d": [100, 120, 500, 520], "label": "cat"}, {"box_2d": [600, 600, 900, 900], "label": "dog"}]',
    '[{"box_2d": [100, 140, 500, 540], "label": "cat"}]',
    # verify: the cat's crop, then the dog's
    "Yes, there is.",
    "no",
]


def check_consensus(data: dict) -> None:
    cat, dog = data["detections"]
    assert (cat["label"], cat["box"], cat["agreement"]["budgets"], cat["agreement"]["score"]) == (
        "cat", [12, 10, 52, 50], [280, 560, 1120], 1.0)
    assert cat["agreement"]["ious"] == [0.9048, 1.0, 0.9048]
    assert (dog["box"], dog["agreement"]["budgets"], dog["agreement"]["score"]) == ([60, 60, 90, 90], [560], 0.3333)
    assert (cat["verified"], dog["verified"]) == (True, False)
    assert data["consensus"] == [280, 560, 1120]
    assert any(note.startswith("verify: asked about 2 crops at budget 1120: 1 yes, 1 no") for note in data["notes"])


def test_consensus_fuses_the_budgets_of_one_batch_and_verify_asks_each_crop(gemma4_backend, scripted, tmp_path):
    texts, batches = scripted
    vision, path = vision_on(gemma4_backend, tmp_path, (100, 100))
    texts += CONSENSUS_TEXTS
    result = vision.detect(
        path, ["cat", "dog"], options=GenerationOptions(max_new_tokens=2), consensus=[1120, 280, 560], verify=True
    )
    assert batches == [3]  # the three budgets together; each verify batch held one crop
    check_consensus(result.model_dump(mode="json"))
    assert not texts


@pytest.mark.anyio
async def test_mcp_detect_consensus_and_verify(gemma4_backend, scripted, tmp_path):
    from mcp import Client

    from mcp_server.server import Settings, build_server

    texts, _ = scripted
    _, path = vision_on(gemma4_backend, tmp_path, (100, 100))
    settings = Settings(model="tiny", allow_dirs=[str(tmp_path)], out_dir=tmp_path / "out")
    async with Client(build_server(settings, load=lambda *args, **kwargs: gemma4_backend)) as client:
        texts += CONSENSUS_TEXTS
        result = await client.call_tool(
            "detect", {"image": path, "labels": ["cat", "dog"], "consensus": [280, 560, 1120], "verify": True,
                       "max_new_tokens": 2},
        )
        assert not result.is_error, result.content
        check_consensus(result.structured_content)
        assert "cat: [12, 10, 52, 50] (found at budgets 280, 560, 1120; verified)" in result.content[0].text
        both = await client.call_tool("detect", {"image": path, "labels": ["cat"], "consensus": [280, 1120], "budget": 280})
        assert both.is_error and both.content[0].text == (
            "consensus runs its own budgets on the whole image; leave budget and tiles unset.")
        one = await client.call_tool("detect", {"image": path, "labels": ["cat"], "consensus": [280]})
        assert one.is_error and one.content[0].text == (
            "Give consensus at least two different budgets to compare, for example [70, 280, 1120].")
        # An empty list ran a plain detect, as if consensus had not been asked for.
        none = await client.call_tool("detect", {"image": path, "labels": ["cat"], "consensus": []})
        assert none.is_error and "at least two different budgets" in none.content[0].text
        assert not texts  # nothing ran for the refusals


def test_compare_budgets_for_detect_shows_the_fused_boxes(gemma4_backend, scripted, tmp_path):
    texts, batches = scripted
    vision, path = vision_on(gemma4_backend, tmp_path, (100, 100))
    texts += CONSENSUS_TEXTS[:3]
    result = vision.compare_budgets(
        path, "detect", labels=["cat", "dog"], budgets=[280, 560, 1120], options=GenerationOptions(max_new_tokens=2),
        picture_path=tmp_path / "budgets.png",
    )
    assert batches == [3]
    fused = [(d.label, d.box, d.agreement.budgets) for d in result.fused]
    assert fused == [("cat", (12, 10, 52, 50), (280, 560, 1120)), ("dog", (60, 60, 90, 90), (560,))]
    assert result.recommendation_reason and (tmp_path / "budgets.png").stat().st_size > 0


def test_cli_detect_consensus_and_verify(gemma4_backend, tiny_gemma4, scripted, tmp_path, monkeypatch, capsys):
    """``vlm-agent detect --consensus --verify``: agreement and verification per box in JSON and in the table."""
    import json

    import tools.model
    from agent.cli import main

    texts, batches = scripted
    _, path = vision_on(gemma4_backend, tmp_path, (100, 100))
    monkeypatch.setattr(tools.model, "load_model", lambda *args, **kwargs: gemma4_backend)
    base = ["detect", path, "cat", "dog", "--model", str(tiny_gemma4), "--consensus", "280,560,1120", "--verify",
            "--max-new-tokens", "2", "--out", str(tmp_path / "boxes.png")]
    texts += CONSENSUS_TEXTS
    assert main([*base, "--json"]) == 0
    check_consensus(json.loads(capsys.readouterr().out))
    texts += CONSENSUS_TEXTS
    assert main(base) == 0
    table = capsys.readouterr().out
    assert "found at budgets" in table and "verified" in table
    assert "280, 560, 1120 (1.00)" in table and "560 (0.33)" in table
    assert [line.split("│")[-2].strip() for line in table.splitlines() if "(1.00)" in line or "(0.33)" in line] == [
        "yes", "no"]
    assert not texts and batches[:1] == [3]


@pytest.mark.parametrize(
    "flags, error, before_load",
    [
        (["--consensus", "280,560", "--tiles", "2"], "consensus runs its own budgets on the whole image", True),
        (["--consensus", "280,560", "--budget", "auto"], "consensus runs its own budgets on the whole image", True),
        (["--consensus", ",,"], "argument --consensus: ',,' is not budgets separated by commas", True),
        # named by this command line's flag, not compare_budgets' --budgets
        (["--consensus", "280"], "error: Give --consensus at least two different budgets to compare", True),
        (["--consensus", "280,280"], "error: Give --consensus at least two different budgets to compare", True),
        (["--consensus", "280,999"], "error: Budget 999 is not available for Gemma 4", False),
    ],
)
def test_cli_detect_consensus_refusals(
    gemma4_backend, tiny_gemma4, scripted, tmp_path, monkeypatch, capsys, flags, error, before_load
):
    import tools.model
    from agent.cli import main

    texts, batches = scripted
    _, path = vision_on(gemma4_backend, tmp_path, (100, 100))
    loads = []
    monkeypatch.setattr(tools.model, "load_model", lambda *args, **kwargs: loads.append(1) or gemma4_backend)
    try:
        code = main(["detect", path, "cat", "--model", str(tiny_gemma4), *flags, "--out", str(tmp_path / "b.png")])
    except SystemExit as exit_:  # argparse's own refusals
        code = exit_.code
    err = capsys.readouterr().err
    assert code in (1, 2) and error in err and "Traceback" not in err
    assert not batches
    assert not loads or not before_load  # what needs no model is refused before one loads


@pytest.mark.anyio
async def test_chat_detect_consensus_and_verify_shows_agreement_and_verification(
    gemma4_backend, scripted, tmp_path, monkeypatch
):
    import io

    from mcp import Client
    from prompt_toolkit import PromptSession
    from prompt_toolkit.input import create_pipe_input
    from prompt_toolkit.output import DummyOutput
    from rich.console import Console

    from agent.chat import run_chat
    from mcp_server.server import Settings, build_server

    monkeypatch.setenv("VLM_AGENT_HOME", str(tmp_path / "home"))  # the chat's history stays in the test
    texts, _ = scripted
    _, path = vision_on(gemma4_backend, tmp_path, (100, 100))
    server = build_server(Settings(model="tiny", allow_dirs=[str(tmp_path)], out_dir=tmp_path / "out"),
                          load=lambda *args, **kwargs: gemma4_backend)
    console = Console(file=io.StringIO(), width=160, color_system=None)
    texts += CONSENSUS_TEXTS
    async with Client(server) as client:
        with create_pipe_input() as pipe:
            pipe.send_text("/detect --consensus 280,560,1120 --verify cat dog\n/quit\n")
            code = await run_chat([path], console=console, prompt=PromptSession(input=pipe, output=DummyOutput()),
                                  client=client)
    transcript = console.file.getvalue()
    assert code == 0, transcript
    assert "found at budgets" in transcript and "verified" in transcript
    rows = [line for line in transcript.splitlines() if "(1.00)" in line or "(0.33)" in line]
    assert ["280, 560, 1120" in rows[0], "560 (0.33)" in rows[1]] == [True, True]
    assert [row.split("│")[-2].strip() for row in rows] == ["yes", "no"]
    assert not texts


def test_more_tiles_than_the_image_holds_are_fewer_and_said(gemma4_backend, scripted, tmp_path):
    texts, batches = scripted
    vision, path = vision_on(gemma4_backend, tmp_path, (200, 100))
    texts += ['[{"box_2d": [100, 100, 500, 500], "label": "cat"}]'] * 6
    result = vision.detect(path, ["cat"], options=GenerationOptions(max_new_tokens=2), tiles=8)
    assert len(result.tiles) == 6 and batches == [6]  # 3 across, 2 down: tiles of at least 64 px
    assert "asked for 8 tiles across, but the 200 px side holds 3 of at least 64 px; read in 3 across" in result.notes
