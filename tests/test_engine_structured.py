"""What the engine runtime asks of the engine beyond the prompt: JSON answers under a schema
(structured outputs) for detect's boxes and verify's yes or no, and requests whose prefix stays
byte-for-byte the same from turn to turn, so that the engine's prefix cache keeps hitting.

A scripted engine (httpx.MockTransport, as in test_openai_backend.py) records the wire; the
same behaviour against a real vLLM (constrained boxes that always parse, prefix-cache hits on
a follow-up turn in the engine's own metrics) is in test_vllm.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import jsonschema
import pytest

from tests.conftest import boxes, run, sample_image
from tests.test_openai_backend import URL, FakeEngine, backend_for, vision_for
from tools.boxes.detections import box_items_schema
from tools.errors import EngineError
from tools.families.gemma4 import Gemma4, from_box_2d_json
from tools.families.qwen3_vl import Qwen3VL, from_bbox_2d_json
from tools.jobs.verify import YES_NO, answer
from tools.model import Model
from tools.options import GenerationOptions
from tools.runtimes.api import ApiSettings, structured_output
from tools.runtimes.engine import EngineRuntime

GEMMA_BOXES = '[{"box_2d":[100,200,500,600],"label":"cat"}]'


def qwen_backend(engine: FakeEngine, **settings) -> Model:
    api = ApiSettings(base_url=URL, model="qwen", family="qwen3_vl", **settings)
    return Model(Qwen3VL.for_engine(budgets=False), EngineRuntime(api, transport=httpx.MockTransport(engine)))


def schema_of(body: dict) -> dict | None:
    form = body.get("response_format")
    if form is None:
        return None
    assert form["type"] == "json_schema" and form["json_schema"]["name"] == "answer"
    return form["json_schema"]["schema"]


# -- the schema and the readers agree -------------------------------------------------------


@pytest.mark.parametrize(
    ("reader", "key", "instance", "count"),
    [
        (from_box_2d_json, "box_2d", [{"box_2d": [100, 200, 500, 600], "label": "cat"}], 1),
        (from_box_2d_json, "box_2d", [{"box_2d": [0, 0, 1000, 1000], "label": "dog"}, {"box_2d": [1, 2, 3, 4], "label": "cat"}], 2),
        (from_bbox_2d_json, "bbox_2d", [{"bbox_2d": [10, 20, 300, 400], "label": "cat"}], 1),
        (from_bbox_2d_json, "bbox_2d", [], 0),
    ],
)
def test_every_answer_the_box_schema_admits_is_read_whole(reader, key, instance, count):
    schema = box_items_schema(key, 1000, ["cat", "dog"])
    jsonschema.validate(instance, schema)
    for text in (json.dumps(instance), json.dumps(instance, separators=(",", ":")), json.dumps(instance, indent=2)):
        parsed = reader(text, (640, 480))
        assert (len(parsed.detections), parsed.dropped) == (count, [])


@pytest.mark.parametrize(
    "instance",
    [
        [{"box_2d": [1, 2, 3], "label": "cat"}],  # three numbers
        [{"box_2d": [1, 2, 3, 1001], "label": "cat"}],  # past the grid
        [{"box_2d": [1, 2, 3, 4.5], "label": "cat"}],  # not whole
        [{"box_2d": [1, 2, 3, 4], "label": "bird"}],  # not asked for
        [{"box_2d": [1, 2, 3, 4]}],  # no label
        [{"box_2d": [1, 2, 3, 4], "label": "cat", "score": 0.9}],  # more than the item holds
        {"box_2d": [1, 2, 3, 4], "label": "cat"},  # not a list
    ],
)
def test_the_box_schema_refuses_what_the_reader_would_have_to_drop_or_guess(instance):
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(instance, box_items_schema("box_2d", 1000, ["cat", "dog"]))


@pytest.mark.parametrize(("text", "verdict"), [('"yes"', True), ('"no"', False), ("yes", True), ("No.", False)])
def test_verify_reads_the_json_yes_or_no_as_it_reads_the_word(text, verdict):
    if text.startswith('"'):
        jsonschema.validate(json.loads(text), YES_NO)
    assert answer(text) is verdict


def test_the_structured_field_is_openais_response_format():
    schema = {"type": "object", "properties": {"total": {"type": "number"}}}
    assert structured_output(schema) == {
        "response_format": {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}}
    }


# -- what each task asks for ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "key", "order"),
    [(backend_for, "box_2d", Gemma4.box_order), (qwen_backend, "bbox_2d", Qwen3VL.box_order)],
)
def test_detect_asks_for_the_familys_box_items_and_describe_for_free_text(make, key, order):
    engine = FakeEngine([GEMMA_BOXES.replace("box_2d", key)])
    model = make(engine)
    generation, parsed = boxes(run(model, "detect", [sample_image(640, 480)], labels=["cat", "dog"]))
    assert schema_of(engine.bodies[0]) == box_items_schema(key, 1000, ["cat", "dog"])
    assert [d.label for d in parsed.detections] == ["cat"] and parsed.dropped == []
    # y first for Gemma 4, x first for Qwen3-VL: the same four numbers, different boxes
    assert parsed.detections[0].box == ((128, 48, 384, 240) if order == "yx" else (64, 96, 320, 288))
    run(model, "describe", [sample_image()], "What is it?")
    run(model, "ocr", [sample_image()])
    assert [schema_of(body) for body in engine.bodies[1:]] == [None, None]


def test_verify_asks_each_crop_for_yes_or_no(tmp_path: Path):
    png = tmp_path / "street.png"
    sample_image(640, 480).save(png)
    engine = FakeEngine([GEMMA_BOXES])
    vision = vision_for(backend_for(engine), png)
    options = GenerationOptions(max_new_tokens=64)
    result = vision.detect(str(png), ["cat"], options=options, verify=True)
    assert [schema_of(body) for body in engine.bodies] == [box_items_schema("box_2d", 1000, ["cat"]), YES_NO]
    assert [d.verified for d in result.detections] == [None]  # the scripted answer is boxes, not yes or no


@pytest.mark.parametrize(
    ("settings", "why"),
    [
        ({"structured": False}, "turned off (--no-api-structured)"),
        ({"extra_body": {"structured_outputs": {"choice": [GEMMA_BOXES]}}}, "the user's own constraint"),
        ({"extra_body": {"response_format": {"type": "json_object"}}}, "the user's own response_format"),
    ],
)
def test_no_schema_is_sent_when_turned_off_or_the_user_constrains_the_answer(settings, why):
    engine = FakeEngine([GEMMA_BOXES])
    generation, parsed = boxes(run(backend_for(engine, **settings), "detect", [sample_image(640, 480)], labels=["cat"]))
    body = engine.bodies[0]
    assert body.get("response_format") == settings.get("extra_body", {}).get("response_format"), why
    assert len(parsed.detections) == 1


class RefusesResponseFormat(FakeEngine):
    """An engine without structured outputs, which says so (as an engine validating its fields does)."""

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if b"response_format" in request.content:
            self.bodies.append(json.loads(request.content))
            return httpx.Response(422, json={"detail": "Unexpected fields in the request: {'response_format'}"})
        return super().__call__(request)


def test_an_engine_that_refuses_structured_outputs_is_asked_once_then_answers_in_free_text():
    engine = RefusesResponseFormat([GEMMA_BOXES])
    model = backend_for(engine)
    first, parsed = boxes(run(model, "detect", [sample_image(640, 480)], labels=["cat"]))
    second, _ = boxes(run(model, "detect", [sample_image(640, 480)], labels=["cat"]))
    assert ["response_format" in body for body in engine.bodies] == [True, False, False]
    assert "the engine refused structured output (response_format), so the answer is free text" in first.notes
    assert not any("structured" in note for note in second.notes) and len(parsed.detections) == 1


def test_the_users_own_constraint_refused_is_the_engines_error_not_a_retry():
    engine = RefusesResponseFormat([GEMMA_BOXES])
    model = backend_for(engine, extra_body={"response_format": {"type": "json_object"}})
    with pytest.raises(EngineError, match="refused the request \\(HTTP 422, the engine says"):
        run(model, "detect", [sample_image(640, 480)], labels=["cat"])
    assert len(engine.bodies) == 1


# -- a conversation's prefix, byte for byte --------------------------------------------------


def test_each_turn_resends_the_earlier_turns_byte_for_byte(tmp_path: Path):
    """Turn 2 carries turn 1's request as its prefix, the image as the same bytes though it came back
    as an image id, so the engine's prefix and multimodal caches hit; turn 3 carries turn 2's."""
    picture = tmp_path / "street.png"
    sample_image(640, 480).save(picture)
    engine = FakeEngine(["A red ", "square."])
    vision = vision_for(backend_for(engine, budgets=True), picture)
    options = GenerationOptions(max_new_tokens=8)
    said: list[dict] = []
    refs = [str(picture)]
    for question in ("What is it?", "And the colours?", "Anything else?"):
        result = vision.describe(refs, question, said, budget=1120, options=options)
        said += [{"role": "user", "content": question, "images": refs}, {"role": "assistant", "content": result.text}]
        refs = result.image_ids  # a client sends the id back, as the chat does
    sent = [json.dumps(body["messages"]) for body in engine.bodies]
    for before, after in zip(engine.bodies, engine.bodies[1:]):
        earlier = json.dumps(before["messages"])[:-1]  # without the closing bracket
        assert json.dumps(after["messages"]).startswith(earlier + ", "), "a later turn changed an earlier one"
        assert after["mm_processor_kwargs"] == before["mm_processor_kwargs"]
    assert len(sent[2]) > len(sent[1]) > len(sent[0])
