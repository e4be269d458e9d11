"""Structured extraction in process: the schema checks, the grammar's processor on tiny models, the job.

The doors (the console script, raw stdio, the chat, scripts) are in test_extract_doors.py.
"""

from __future__ import annotations

import http.server
import json
import threading
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from transformers import LogitsProcessorList

from tests.conftest import model_says, sample_image, sample_input, tiny_checkpoint
from tools.errors import InvalidRequest, Unsupported, VlmError
from tools.extract import fields_schema, prepare, schema_from
from tools.extract.processor import SchemaConstraint, apply_bitmask_
from tools.extract.schema import MAX_SCHEMA_BYTES, bound
from tools.extract.validate import validation_error
from tools.extract.spans import leaves, token_spans
from tools.inputs import AccessPolicy, ImageLoader
from tools.jobs.extract import read_answer, replaced, same, schema_at, value_schema
from tools.model import load_model
from tools.options import GenerationOptions
from tools.runtimes.local import local_messages
from tools.tasks import Ask
from tools.vision import Vision

tiny_qwen3_vl = tiny_checkpoint("qwen3_vl")

RECEIPT = {
    "type": "object",
    "properties": {
        "vendor": {"type": "string", "maxLength": 6},
        "date": {"type": "string", "format": "date"},
        "total": {"type": "number", "minimum": 0, "maximum": 10000},
        "currency": {"enum": ["EUR", "USD", "GBP"]},
        "items": {
            "type": "array", "maxItems": 1,
            "items": {"type": "object", "properties": {"name": {"type": "string", "maxLength": 4},
                                                        "price": {"type": "number", "minimum": 0, "maximum": 100}},
                      "required": ["name", "price"]},
        },
    },
    "required": ["vendor", "date", "total", "currency"],
}


@pytest.fixture(scope="module")
def qwen3_vl(tiny_qwen3_vl):
    return load_model(str(tiny_qwen3_vl))


# ---------------------------------------------------------------- the compact fields form


@pytest.mark.parametrize(
    ("text", "properties", "required"),
    [
        ("total:number, date:date, vendor", {"total": {"type": "number"}, "date": {"type": "string", "format": "date"},
                                             "vendor": {"type": "string"}}, ["total", "date", "vendor"]),
        ("n:int, ok?:bool", {"n": {"type": "integer"}, "ok": {"type": "boolean"}}, ["n"]),
        ("tags:string[]", {"tags": {"type": "array", "items": {"type": "string"}}}, ["tags"]),
        ("cur:EUR|USD|EUR", {"cur": {"type": "string", "enum": ["EUR", "USD"]}}, ["cur"]),
        (" when : datetime , mail?:email ", {"when": {"type": "string", "format": "date-time"},
                                             "mail": {"type": "string", "format": "email"}}, ["when"]),
    ],
    ids=["types", "optional", "list", "choices", "spacing"],
)
def test_compact_fields_become_an_object_schema(text, properties, required):
    schema = fields_schema(text)
    assert schema == {"type": "object", "properties": properties, "required": required, "additionalProperties": False}
    prepare(schema, "fields")  # and it compiles


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("", "Name at least one field in fields"),
        ("a,,b", "Field 2 of fields is empty"),
        ("1a", "Field 1 of fields ('1a') needs a name"),
        ("a:money", "Field 1 of fields (a) has the type 'money'; use string"),
        ("a, a", "Field 2 of fields names 'a' again"),
        ("a:x| |y", "lists an empty or spaced choice"),
        (",".join(f"f{n}" for n in range(65)), "65 fields given in fields; name at most 64"),
    ],
    ids=["empty", "empty field", "bad name", "bad type", "twice", "bad choice", "too many"],
)
def test_compact_fields_refusals_name_the_field(text, said):
    with pytest.raises(InvalidRequest) as caught:
        fields_schema(text)
    assert said in str(caught.value) and "\n" not in str(caught.value)


# ---------------------------------------------------------------- bad schemas


def nested(depth: int) -> str:
    return '{"type":"object","properties":{"a":' * depth + '{"type":"string"}' + "}}" * depth


CYCLE = {"type": "object", "properties": {"a": {"$ref": "#/$defs/a"}},
         "$defs": {"a": {"type": "object", "properties": {"b": {"$ref": "#/$defs/b"}}}, "b": {"$ref": "#/$defs/a"}}}
TREE = {"type": "object", "properties": {"root": {"$ref": "#/$defs/node"}},
        "$defs": {"node": {"type": "object", "properties": {"kids": {"type": "array", "items": {"$ref": "#/$defs/node"}}}}}}

BAD_SCHEMAS = [
    ("{not json", InvalidRequest, "The schema is not valid JSON (line 1, column 2"),
    ('{"type": "object", "properties": {"a": {}}, "x": NaN}', InvalidRequest, "not valid JSON (NaN is not JSON)"),
    ("x" * (MAX_SCHEMA_BYTES + 1), InvalidRequest, f"bytes; the limit is {MAX_SCHEMA_BYTES:,}"),
    (nested(20), InvalidRequest, "nested more than 32 levels deep"),
    ("[" * 5000 + "]" * 5000, InvalidRequest, "nested more than 32 levels deep"),
    ("[1, 2, 3]", InvalidRequest, "The schema is a JSON list, not a JSON Schema"),
    ('"a string"', InvalidRequest, "The schema is a JSON string, not a JSON Schema"),
    ({"type": "banana"}, InvalidRequest, "not valid JSON Schema: at /type"),
    ({"type": "object", "properties": {"a": {"minLength": -1}}}, InvalidRequest, "not valid JSON Schema: at /properties/a/minLength"),
    ({"type": "string"}, InvalidRequest, "must describe one JSON object"),
    ({"type": "object"}, InvalidRequest, "names no properties"),
    ({"$ref": "#", "type": "object", "properties": {"a": {}}}, Unsupported, 'recursive: $ref "#" leads back'),
    (CYCLE, Unsupported, "is recursive"),
    (TREE, Unsupported, 'recursive: $ref "#/$defs/node"'),
    ({"type": "object", "properties": {"a": {"$ref": "https://example.com/s.json"}}}, InvalidRequest,
     "points outside the schema, and vlm-agent fetches nothing"),
    ({"type": "object", "properties": {"a": {"$ref": "other.json#/a"}}}, InvalidRequest, "points outside the schema"),
    ({"type": "object", "properties": {"a": {"$ref": "#/$defs/nope"}}}, InvalidRequest, "points to nothing"),
    ({"type": "object", "properties": {"a": {"$ref": "#name"}}}, Unsupported, "names an anchor"),
    ({"type": "object", "properties": {"a": {"$id": "https://x/", "type": "string"}}}, Unsupported, "sets $id"),
    ({"type": "object", "properties": {"a": {"$dynamicRef": "#x"}}}, Unsupported, "uses $dynamicRef"),
    ({"$schema": "https://example.com/my-meta", "type": "object", "properties": {"a": {}}}, Unsupported, "$schema is"),
    ({"type": "object", "properties": {"a": {"not": {"type": "string"}}}}, Unsupported, "The schema uses not, which"),
    ({"type": "object", "properties": {"a": {"type": "array", "uniqueItems": True}}}, Unsupported, "uses uniqueItems"),
    ({"type": "object", "properties": {"a": {"type": "integer"}}, "if": {"required": ["a"]}, "then": {}}, Unsupported,
     "uses if, then"),
    ({"type": "object", "properties": {"a": {"type": "array", "contains": {"type": "integer"}}}}, Unsupported,
     "uses contains"),
    ({"type": "object", "properties": {"a": {"type": "string", "format": "credit-card"}}}, Unsupported,
     'format "credit-card"'),
    ({"type": "object", "properties": {"a": {"oneOf": [{"type": "integer"}, {"type": "number"}]}}}, Unsupported,
     "oneOf with branches that can match the same value"),
]


@pytest.mark.parametrize(("raw", "kind", "said"), BAD_SCHEMAS, ids=[
    "not JSON", "NaN", "huge", "deep schema", "deep JSON", "a list", "a string", "bad type", "bad keyword value",
    "not an object", "no properties", "ref to root", "ref cycle", "recursive tree", "remote ref", "relative ref",
    "missing target", "anchor", "nested id", "dynamic ref", "unknown draft", "not", "uniqueItems", "if/then",
    "contains", "unknown format", "overlapping oneOf",
])
def test_bad_schemas_are_refused_in_one_line_naming_the_problem(raw, kind, said):
    with pytest.raises(VlmError) as caught:
        prepare(raw)
    error = caught.value
    assert type(error) is kind and error.param == "schema"
    assert said in str(error), str(error)
    assert "\n" not in str(error) and "Traceback" not in str(error) and len(str(error)) < 300


class Recording(http.server.BaseHTTPRequestHandler):
    seen: list[str] = []

    def do_GET(self) -> None:  # noqa: N802
        Recording.seen.append(self.path)
        body = b'{"type": "integer"}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_nothing_is_fetched_for_a_ref():
    """A loopback server that answers with a schema and records every request: none arrives."""
    server = http.server.HTTPServer(("127.0.0.1", 0), Recording)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        for schema in (
            {"type": "object", "properties": {"a": {"$ref": f"{url}/a.json"}}},
            {"$id": f"{url}/root.json", "type": "object", "properties": {"a": {"$ref": "a.json"}}},
            {"$schema": f"{url}/meta", "type": "object", "properties": {"a": {}}},
        ):
            with pytest.raises(VlmError):
                prepare(schema)
        assert Recording.seen == []
    finally:
        server.shutdown()


def test_either_a_schema_or_fields():
    with pytest.raises(InvalidRequest, match="Give either schema or fields, not both"):
        schema_from({"type": "object", "properties": {"a": {}}}, "a")
    with pytest.raises(InvalidRequest, match="Say what to extract"):
        schema_from(None, None)
    assert schema_from('{"type":"object","properties":{"a":{}}}').names == ("a",)


# ---------------------------------------------------------------- bounds


@pytest.mark.parametrize(
    ("node", "added"),
    [
        ({"type": "string"}, {"maxLength": 128}),
        ({"type": "string", "minLength": 200}, {"maxLength": 200}),
        ({"type": "string", "maxLength": 5}, {}),
        ({"type": "string", "format": "date"}, {}),
        ({"type": "string", "format": "date-time"}, {"maxLength": 128}),
        ({"type": "string", "enum": ["a"]}, {}),
        ({"type": "number"}, {"minimum": -10**9, "maximum": 10**9, "multipleOf": 1e-6}),
        ({"type": "number", "minimum": 0, "maximum": 5}, {"multipleOf": 1e-6}),
        ({"type": "number", "minimum": 5 * 10**9}, {"maximum": 6 * 10**9, "multipleOf": 1e-6}),
        ({"type": "integer", "exclusiveMinimum": 0}, {"maximum": 10**9}),
        ({"type": "number", "multipleOf": 0.5, "minimum": 0, "maximum": 1}, {}),
        ({"type": "array", "items": {"type": "boolean"}}, {"maxItems": 50}),
        ({"type": "object", "properties": {"b": {"type": "boolean"}}}, {"additionalProperties": False}),
        ({"type": "object", "properties": {"b": {"type": "boolean"}}, "additionalProperties": True}, {}),
    ],
)
def test_bounds_fill_in_only_what_the_schema_leaves_open(node, added):
    schema = {"type": "object", "properties": {"a": node}, "additionalProperties": False}
    bounded = json.loads(json.dumps(schema))
    bound(bounded)
    assert bounded["properties"]["a"] == {**node, **added}


def test_a_property_named_like_a_keyword_is_a_property():
    schema = prepare({"type": "object", "properties": {"$ref": {"type": "string"}, "properties": {"type": "boolean"}}})
    assert schema.names == ("$ref", "properties")
    assert schema.decoding["properties"]["properties"] == {"type": "boolean"}


# ---------------------------------------------------------------- reading an answer


@pytest.mark.parametrize(
    ("text", "found"),
    [
        ('{"a":"xy","b":12.5}', [("/a", "xy", 6, 8), ("/b", 12.5, 14, 18)]),
        ('{"a":""}', [("/a", "", 5, 7)]),
        ('{"l":[1,true,null],"o":{"k/~":"é"}}', [("/l/0", 1, 6, 7), ("/l/1", True, 8, 12), ("/l/2", None, 13, 17),
                                                 ("/o/k~1~0", "é", 31, 32)]),
        ('{"s":"a\\"b"}', [("/s", 'a"b', 6, 10)]),
        ('{ "a" : [ ] , "b" : -1e3 }', [("/b", -1000.0, 20, 24)]),
    ],
    ids=["flat", "empty string", "nested", "escape", "spaces"],
)
def test_every_scalar_is_found_with_its_pointer_and_span(text, found):
    assert [(leaf.pointer, leaf.value, leaf.start, leaf.end) for leaf in leaves(text)] == found


@pytest.mark.parametrize("text", ['{"a":1', '{"a":1}x', "", '{"a" 1}'])
def test_what_is_no_json_value_is_refused(text):
    with pytest.raises(ValueError):
        leaves(text)


def test_token_spans_give_a_split_character_to_every_token_holding_a_byte_of_it():
    pieces = [b'{"a":"', "é".encode()[:1], "é".encode()[1:] + b'x"', b"}"]
    assert token_spans(pieces) == [(0, 6), (6, 7), (6, 9), (9, 10)]
    assert token_spans([b"\xff"]) is None


@pytest.mark.parametrize(
    ("schema", "value", "ok"),
    [
        ({"type": "string", "format": "date"}, "2026-02-28", True),
        ({"type": "string", "format": "date"}, "2026-02-31", False),
        # RFC 3339 years run 0000 to 9999 (the grammar writes 0000 too); February 29 only in leap years
        ({"type": "string", "format": "date"}, "0000-01-10", True),
        ({"type": "string", "format": "date"}, "0000-02-29", True),
        ({"type": "string", "format": "date"}, "2024-02-29", True),
        ({"type": "string", "format": "date"}, "2001-02-29", False),
        ({"type": "string", "format": "date"}, "1900-02-29", False),
        ({"type": "string", "format": "date"}, "2026-13-01", False),
        ({"type": "string", "format": "date-time"}, "0000-01-01T00:00:00Z", True),
        ({"type": "string", "format": "date-time"}, "2016-12-31T23:59:60Z", True),  # a leap second, as RFC 3339 allows
        ({"type": "string", "format": "date-time"}, "2016-12-31T24:00:00Z", False),
        ({"type": "string", "format": "time"}, "10:00:00.5+01:00", True),
        ({"type": "string", "format": "time"}, "10:00", False),
        ({"type": "string", "format": "email"}, "nobody", False),
    ],
)
def test_formats_are_checked_after_decoding(schema, value, ok):
    assert (validation_error({"type": "object", "properties": {"v": schema}}, {"v": value}) is None) is ok


def test_the_bitmask_keeps_exactly_the_allowed_tokens():
    scores = torch.zeros(2, 40)
    bitmask = torch.tensor([[0b101, 0], [0, 1 << 3]], dtype=torch.int32)  # row 0: tokens 0 and 2; row 1: token 35
    apply_bitmask_(scores, bitmask)
    assert torch.isfinite(scores[0]).nonzero().flatten().tolist() == [0, 2]
    assert torch.isfinite(scores[1]).nonzero().flatten().tolist() == [35]


@pytest.mark.parametrize(
    ("pointer", "value", "expected"),
    [
        ("/total", 3.5, {"type": "number", "minimum": 0, "maximum": 10000}),
        ("/items/0/name", "ab", {"type": "string", "maxLength": 4}),
        ("/currency", "EUR", {"enum": ["EUR", "USD", "GBP"]}),
    ],
)
def test_a_value_is_read_again_under_its_own_schema(pointer, value, expected):
    parts = pointer.split("/")[1:]
    assert schema_at(RECEIPT, parts) == expected
    again = value_schema(RECEIPT, pointer, value)
    name = parts[-1] if not parts[-1].isdigit() else parts[-2]
    assert again.original["properties"] == {name: expected} and again.original["required"] == [name]


def test_a_value_past_anything_but_properties_and_items_is_read_again_by_its_type():
    schema = {"type": "object", "properties": {"a": {"anyOf": [{"type": "integer"}, {"type": "string"}]}}}
    assert value_schema(schema, "/a/0", 7).original["properties"] == {"a": {"type": "integer"}}


@pytest.mark.parametrize(
    ("first", "second", "agree"),
    [(" ACME  Ltd", "acme ltd", True), ("12", 12, False), (1, 1.0, True), (True, 1, False), ("a", "b", False)],
)
def test_reads_agree_without_case_and_spacing(first, second, agree):
    assert same(first, second) is agree


def test_a_changed_value_goes_in_only_if_the_object_still_validates():
    schema = prepare(RECEIPT)
    data = {"vendor": "A", "date": "2026-01-01", "total": 3, "currency": "EUR", "items": [{"name": "x", "price": 1}]}
    assert replaced(schema, data, "/items/0/price", 2) and data["items"][0]["price"] == 2
    assert not replaced(schema, data, "/total", -5) and data["total"] == 3


# ---------------------------------------------------------------- on tiny models


def extract_ask(schema_json, budget=70):
    schema = prepare(schema_json)
    return Ask("extract", (sample_input(64, 48),), schema.text(), schema.names, budget=budget, schema=schema), schema


@pytest.mark.parametrize("family", ["gemma4", "qwen3_vl"])
def test_tokens_equal_plain_transformers_with_the_same_processor(family, gemma4_backend, request):
    """Greedy: our runtime (Gemma 4's vision and prefix caches included) and one plain ``generate`` over
    the processor's own inputs, with the same logits processor, write the same tokens."""
    model = gemma4_backend if family == "gemma4" else request.getfixturevalue("qwen3_vl")
    ask, schema = extract_ask(RECEIPT)
    options = GenerationOptions(max_new_tokens=300)
    ours = model.run(ask, options).generation
    assert ours.finish_reason == "stop"
    runtime = model.runtime
    prompt = model.dialect.prompt(model.check(ask))
    inputs = runtime.processor.apply_chat_template(
        local_messages(prompt.messages), add_generation_prompt=True, tokenize=True, return_dict=True,
        return_tensors="pt", processor_kwargs=prompt.processor_kwargs,
    )
    constraint = SchemaConstraint(runtime.grammars().template(schema), runtime.grammars().vocab_size)
    with torch.inference_mode():
        output = runtime.model.generate(
            **inputs, logits_processor=LogitsProcessorList([constraint]), **options.generate_kwargs()
        )
    assert output[0, inputs["input_ids"].shape[1]:].tolist() == ours.token_ids
    # what the processor kept is what the runtime reports: every token but the stop token, with its probability
    assert [p for _, p in ours.scored] == pytest.approx([p for _, p in constraint.probabilities()], rel=1e-3)
    assert len(ours.scored) == len(ours.token_ids) - 1
    data = json.loads(b"".join(piece for piece, _ in ours.scored))
    assert validation_error(RECEIPT, data) is None


def test_a_schema_compiles_once_per_hash(gemma4_backend):
    grammars = gemma4_backend.runtime.grammars()
    ask, schema = extract_ask({"type": "object", "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 9}}})
    before = grammars.compiled
    for _ in range(2):
        gemma4_backend.run(ask, GenerationOptions(max_new_tokens=20))
    assert grammars.compiled == before + 1
    again = prepare({"type": "object", "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 9}}})
    assert again is schema  # the checks and the grammar too, by the schema's text
    other, _ = extract_ask({"type": "object", "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 8}}})
    gemma4_backend.run(other, GenerationOptions(max_new_tokens=20))
    assert grammars.compiled == before + 2


# ---------------------------------------------------------------- the property: always valid

KEYS = st.sampled_from(["a", "b", "total", "when", "name", "n_2"])
PATTERNS = [("^[A-Z]{2,4}$", 4), ("^[0-9]{3}-[0-9]{2}$", 6), ("^[a-z]+$", 5)]


def strings():
    plain = st.builds(lambda n, m: {"type": "string", "maxLength": n, "minLength": min(m, n)},
                      st.integers(0, 8), st.integers(0, 2))
    formats = st.sampled_from([
        {"type": "string", "format": "date"}, {"type": "string", "format": "uuid"},
        {"type": "string", "format": "ipv4"}, {"type": "string", "format": "date-time", "maxLength": 32},
        {"type": "string", "format": "time", "maxLength": 16}, {"type": "string", "format": "email", "maxLength": 16},
    ])
    patterned = st.sampled_from([{"type": "string", "pattern": p, "maxLength": n} for p, n in PATTERNS])
    nullable = st.builds(lambda n: {"type": ["string", "null"], "maxLength": n}, st.integers(0, 6))
    return st.one_of(plain, formats, patterned, nullable)


def numbers():
    bounds = st.one_of(st.none(), st.integers(-1000, 1000))
    return st.one_of(
        st.builds(lambda low, span: {"type": "number", **({} if low is None else {"minimum": low, "maximum": low + span})},
                  bounds, st.integers(0, 500)),
        st.builds(lambda low: {"type": "integer", **({} if low is None else {"exclusiveMinimum": low})}, bounds),
    )


LEAVES = st.one_of(
    strings(), numbers(),
    st.lists(st.one_of(st.text("abcxyz", min_size=1, max_size=4), st.integers(-99, 99)), min_size=1, max_size=4,
             unique=True).map(lambda values: {"enum": values}),
    st.just({"type": "boolean"}), st.just({"type": "null"}), st.just({"const": "fixed"}),
    st.just({"anyOf": [{"type": "string", "maxLength": 3}, {"type": "integer", "minimum": 0, "maximum": 99}]}),
)


def objects(children):
    return st.dictionaries(KEYS, children, min_size=1, max_size=3).flatmap(
        lambda properties: st.lists(st.sampled_from(sorted(properties)), unique=True).map(
            lambda required: {"type": "object", "properties": properties, "required": required}
        )
    )


def arrays(children):
    return st.builds(lambda item, most, least: {"type": "array", "items": item, "maxItems": most,
                                                "minItems": min(least, most)},
                     children, st.integers(0, 3), st.integers(0, 1))


SCHEMAS = objects(st.recursive(LEAVES, lambda children: st.one_of(objects(children), arrays(children)), max_leaves=5))


def worst_bytes(node) -> int:
    """The most bytes an answer under ``node`` (as decoding bounds it) can take: every character of a
    string may be a six-byte escape, every token holds at least a byte."""
    if "const" in node:
        return len(json.dumps(node["const"]).encode())
    if "enum" in node:
        return max(len(json.dumps(value, ensure_ascii=False).encode()) for value in node["enum"])
    if "anyOf" in node:
        return max(worst_bytes(branch) for branch in node["anyOf"])
    kinds = node["type"] if isinstance(node["type"], list) else [node["type"]]
    sizes = []
    for kind in kinds:
        if kind == "string":
            fixed = {"date": 10, "uuid": 36, "ipv4": 15}.get(node.get("format"))
            sizes.append(2 + (fixed if fixed is not None else 6 * node["maxLength"]))
        elif kind in ("number", "integer"):
            sizes.append(1 + 10 + 1 + 6)  # sign, digits within ±1e9, point, decimals
        elif kind == "boolean":
            sizes.append(5)
        elif kind == "null":
            sizes.append(4)
        elif kind == "array":
            sizes.append(2 + node["maxItems"] * (worst_bytes(node["items"]) + 1))
        elif kind == "object":
            sizes.append(2 + sum(6 * len(key) + 4 + worst_bytes(child) for key, child in node["properties"].items()))
    return max(sizes)


PROPERTY = settings(max_examples=10, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.function_scoped_fixture])


@pytest.mark.parametrize("family", ["gemma4", "qwen3_vl"])
@given(schema=SCHEMAS)
@PROPERTY
def test_a_random_model_under_the_schema_writes_json_that_validates(family, schema, gemma4_backend, request):
    """Whatever a random-weight model prefers, the grammar lets it write only what validates, and the
    answer ends within the most tokens the bounded schema allows (so a cut would be a grammar escape)."""
    model = gemma4_backend if family == "gemma4" else request.getfixturevalue("qwen3_vl")
    ask, prepared = extract_ask(schema)
    most = worst_bytes(prepared.decoding) + 1
    generation = model.run(ask, GenerationOptions(max_new_tokens=most)).generation
    assert generation.finish_reason == "stop", (schema, generation.text)
    reading = read_answer(generation)
    assert reading.data is not None, (schema, generation.text)
    assert validation_error(schema, reading.data) is None, (schema, reading.data)
    # each value reported sits at its pointer in the object
    for field in reading.fields:
        target = reading.data
        for part in field.path.split("/")[1:]:
            part = part.replace("~1", "/").replace("~0", "~")
            target = target[int(part)] if isinstance(target, list) else target[part]
        assert target == field.value and 0.0 <= field.confidence <= 1.0


# ---------------------------------------------------------------- the job


@pytest.fixture
def receipt(tmp_path: Path) -> Path:
    path = tmp_path / "receipt.png"
    sample_image(320, 240).save(path)
    return path


def vision_for(model, *paths: Path) -> Vision:
    return Vision(model, ImageLoader(AccessPolicy.for_files([str(p) for p in paths])))


SMALL = {"type": "object", "properties": {"vendor": {"type": "string", "maxLength": 6},
                                          "total": {"type": "number", "minimum": 0, "maximum": 99},
                                          "paid": {"type": "boolean"}}, "required": ["vendor", "total", "paid"]}
ONE = {"type": "object", "properties": {"total": {"type": "number", "minimum": 0, "maximum": 99}}, "required": ["total"]}


def test_each_value_gets_the_box_the_family_gives_and_the_picture_shows_it(gemma4_backend, receipt, tmp_path,
                                                                              monkeypatch):
    """Gemma 4's box_2d answer (y first, 0..1000) becomes each value's box in pixels of the original image;
    the extraction itself is read from its tokens, so the canned text changes only the grounding."""
    model_says(monkeypatch, gemma4_backend, '```json\n[{"box_2d": [100, 200, 500, 600], "label": "x"}]\n```')
    out = tmp_path / "fields.png"
    result = vision_for(gemma4_backend, receipt).extract(
        [str(receipt)], SMALL, budget=70, annotated_path=out, verify=False,
        options=GenerationOptions(max_new_tokens=200),
    )
    assert result.valid and result.grounded and result.problem is None
    assert validation_error(SMALL, result.data) is None
    located = [f for f in result.fields if f.path in ("/vendor", "/total")]
    assert [f.box for f in located] == [[64, 24, 192, 120]] * 2 and {f.image for f in located} == {0}
    assert next(f for f in result.fields if f.path == "/paid").box is None  # a boolean is not looked for
    assert result.annotated_path == str(out) and "located 2 of 2 values asked for" in result.notes
    with Image.open(out) as picture:
        assert picture.size == (320, 240)
        assert picture.getpixel((64, 60)) != sample_image(320, 240).getpixel((64, 60))  # the box's left edge


def test_doubtful_values_are_read_again_from_their_crop_and_the_report_says_how_it_went(gemma4_backend, receipt):
    result = vision_for(gemma4_backend, receipt).extract(
        [str(receipt)], ONE, budget=70, threshold=1.0, options=GenerationOptions(max_new_tokens=100),
    )
    assert result.valid and result.threshold == 1.0
    doubtful = [f for f in result.fields if f.confidence is not None and f.confidence < 1.0]
    assert doubtful and all(f.verified in ("agree", "changed", "uncertain") for f in doubtful)
    counts = {state: sum(f.verified == state for f in doubtful) for state in ("agree", "changed", "uncertain")}
    assert (f"verify: re-read {len(doubtful)} value{'s' if len(doubtful) > 1 else ''} under confidence 1 from their "
            f"crops at budget 1120: {counts['agree']} agree, {counts['changed']} changed, "
            f"{counts['uncertain']} uncertain") in result.notes
    for f in doubtful:
        if f.verified == "changed":
            assert f.value == f.reread and f.first_value is not None
        elif f.reread is not None:
            assert validation_error({"type": "object", "properties": {"v": ONE["properties"][f.path[1:]]}},
                                    {"v": f.reread}) is None


def test_several_images_make_one_object(gemma4_backend, receipt, tmp_path):
    second = tmp_path / "page2.png"
    sample_image(200, 300).save(second)
    result = vision_for(gemma4_backend, receipt, second).extract(
        [str(receipt), str(second)], fields="total:number, ok:bool", budget=70, verify=False,
        options=GenerationOptions(max_new_tokens=100),
    )
    assert len(result.image_ids) == 2 and result.image_sizes == [[320, 240], [200, 300]]
    assert result.valid and list(result.data) == ["total", "ok"], result.notes
    assert "located 0 of 1 value asked for" in result.notes or result.fields[0].image in (0, 1)


def test_blip2_extracts_without_boxes_and_says_so(blip2_backend, receipt):
    result = vision_for(blip2_backend, receipt).extract(
        [str(receipt)], SMALL, verify=False, options=GenerationOptions(max_new_tokens=200),
    )
    assert result.valid and not result.grounded and all(f.box is None for f in result.fields)
    assert "BLIP-2 cannot locate what it reads, so the values have no boxes" in result.notes


def test_paligemma_locates_values_with_its_detect(paligemma_backend, receipt, monkeypatch):
    model_says(monkeypatch, paligemma_backend, "<loc0256><loc0512><loc0768><loc1023> x")
    result = vision_for(paligemma_backend, receipt).extract(
        [str(receipt)], SMALL, verify=False, options=GenerationOptions(max_new_tokens=200),
    )
    assert result.valid and result.grounded and result.budget is None
    assert next(f for f in result.fields if f.path == "/total").box == [160, 60, 320, 180]


def test_an_object_cut_by_the_token_cap_is_null_and_says_so(gemma4_backend, receipt):
    result = vision_for(gemma4_backend, receipt).extract(
        [str(receipt)], SMALL, budget=70, verify=False, options=GenerationOptions(max_new_tokens=3),
    )
    assert result.data is None and not result.valid and result.fields == []
    assert result.problem == "no object: it stopped at the token cap before the object was complete; raise max_new_tokens"
    assert result.finish_reason == "length"


def test_an_engine_gets_the_schema_as_its_structured_output_request(receipt):
    from tests.test_openai_backend import FakeEngine, backend_for

    engine = FakeEngine(['{"vendor":"AC', 'ME","total":12.5,"paid":true}'])
    result = vision_for(backend_for(engine), receipt).extract([str(receipt)], SMALL)
    body = engine.bodies[0]
    assert body["response_format"] == {
        "type": "json_schema", "json_schema": {"name": "extract", "schema": prepare(SMALL).decoding, "strict": True}
    }
    assert result.data == {"vendor": "ACME", "total": 12.5, "paid": True} and result.valid
    assert [f.confidence for f in result.fields] == [None] * 3
    assert "no token probabilities from this runtime, so the values have no confidence" in result.notes
    # the grounding asks are detect requests, under the family's box items as any detect is on an engine;
    # nothing was re-read without confidences
    assert len(engine.bodies) == 1 + 2
    assert all(b["response_format"]["json_schema"]["name"] == "answer" for b in engine.bodies[1:])
    assert all(b["response_format"]["json_schema"]["schema"]["type"] == "array" for b in engine.bodies[1:])


def test_a_bad_threshold_is_refused_before_any_model_runs(gemma4_backend, receipt):
    with pytest.raises(InvalidRequest, match="threshold must be between 0 and 1, got 1.5"):
        vision_for(gemma4_backend, receipt).extract([str(receipt)], SMALL, threshold=1.5)
