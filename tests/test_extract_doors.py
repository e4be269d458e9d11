"""extract through the doors people and programs use: the console script, raw stdio, the chat, a `run` script."""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import sample_image
from tests.raw import Calls, raw_stdio, rpc
from tests.test_cli_doors import console, error_line
from tools.extract.validate import validation_error

SCHEMA = {
    "type": "object",
    "properties": {
        "vendor": {"type": "string", "maxLength": 10},
        "date": {"type": "string", "format": "date"},
        "total": {"type": "number", "minimum": 0, "maximum": 1000},
    },
    "required": ["vendor", "date", "total"],
}
FIELDS = "vendor, total:number"
FIELDS_SCHEMA = {
    "type": "object", "properties": {"vendor": {"type": "string"}, "total": {"type": "number"}},
    "required": ["vendor", "total"], "additionalProperties": False,
}


@pytest.fixture
def receipt(tmp_path: Path) -> Path:
    path = tmp_path / "receipt.png"
    sample_image(160, 120).save(path)
    return path


class Recording(http.server.BaseHTTPRequestHandler):
    """Answers every GET with a schema, and keeps the path: a fetched $ref would show up here."""

    seen: list[str] = []

    def do_GET(self) -> None:  # noqa: N802
        Recording.seen.append(self.path)
        body = b'{"type": "string"}'
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def schema_host() -> Iterator[str]:
    server = http.server.HTTPServer(("127.0.0.1", 0), Recording)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    Recording.seen = []
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


def bad_schemas(host: str) -> list[tuple[str, object, str]]:
    """(case, the schema as a file holds it, what its one line says)."""
    deep = '{"type":"object","properties":{"a":' * 20 + "{}" + "}}" * 20
    cycle = {"type": "object", "properties": {"a": {"$ref": "#/$defs/a"}},
             "$defs": {"a": {"type": "object", "properties": {"b": {"$ref": "#/$defs/a"}}}}}
    return [
        ("invalid JSON", '{"type": "object",', "is not valid JSON (line 1, column 19"),
        ("huge", json.dumps({"type": "object", "properties": {f"f{n}": {"type": "string"} for n in range(2000)}}),
         "32,000"),
        ("deep", deep, "nested more than 32 levels deep"),
        ("ref cycle", json.dumps(cycle), 'is recursive: $ref "#/$defs/a" leads back'),
        ("remote ref", json.dumps({"type": "object", "properties": {"a": {"$ref": f"{host}/a.json"}}}),
         "points outside the schema, and vlm-agent fetches nothing for a $ref"),
        ("not JSON Schema", "[1, 2, 3]", "is a JSON list, not a JSON Schema"),
        ("bad JSON Schema", json.dumps({"type": "object", "properties": {"a": {"type": "banana"}}}),
         "is not valid JSON Schema: at /properties/a/type"),
        ("unsupported keyword", json.dumps({"type": "object", "properties": {"a": {"not": {"type": "string"}}}}),
         "uses not, which decoding under a schema does not implement"),
    ]


CASES = [case for case, _, _ in bad_schemas("http://h")]


@pytest.mark.parametrize("case", CASES)
def test_a_bad_schema_file_is_one_line_before_anything_loads(case, receipt, tmp_path, schema_host):
    """The model is a folder that does not exist: a schema that got past its checks would fail on that instead."""
    _, text, said = next(c for c in bad_schemas(schema_host) if c[0] == case)
    path = tmp_path / "s.json"
    path.write_text(text if isinstance(text, str) else json.dumps(text))
    line = error_line(console("extract", str(receipt), "--schema", str(path), "--model", "/nonexistent/model"))
    assert said in line and "The --schema file" in line and "/nonexistent" not in line, line
    assert Recording.seen == []


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["--fields", "total:money"], "error: Field 1 of --fields (total) has the type 'money'"),
        (["--fields", "a", "--threshold", "2"], "error: --threshold must be between 0 and 1, got 2.0."),
        (["--schema", "/nonexistent/s.json"], "error: Cannot read the schema file '/nonexistent/s.json'."),
        (["--schema", "{latin1}"], "error: The --schema file is not UTF-8 text"),
        (["--schema", "{image}"], "error: The --schema file is not UTF-8 text"),
    ],
    ids=["bad field type", "threshold", "missing file", "latin-1 file", "an image as schema"],
)
def test_other_bad_extract_arguments_are_one_line_before_anything_loads(argv, said, receipt, tmp_path):
    latin1 = tmp_path / "latin1.json"
    latin1.write_bytes('{"title": "caf\xe9"}'.encode("latin-1"))
    argv = [arg.replace("{latin1}", str(latin1)).replace("{image}", str(receipt)) for arg in argv]
    line = error_line(console("extract", str(receipt), *argv, "--model", "/nonexistent/model"))
    assert line.startswith(said), line


def test_schema_and_fields_together_is_a_usage_error(receipt):
    proc = console("extract", str(receipt), "--schema", "s.json", "--fields", "a")
    assert proc.returncode == 2 and "argument --fields: not allowed with argument --schema" in proc.stderr


def test_extract_prints_json_that_validates_and_a_report_per_value(tiny_gemma4, receipt, tmp_path):
    """The issue's own command: `vlm-agent extract receipt.png --schema s.json --model <tiny gemma4> --json`."""
    path = tmp_path / "s.json"
    path.write_text(json.dumps(SCHEMA))
    out = tmp_path / "located.png"
    proc = console("extract", str(receipt), "--schema", str(path), "--model", str(tiny_gemma4), "--json",
                   "--budget", "70", "--threshold", "0.05", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    assert result["task"] == "extract" and result["valid"] and result["problem"] is None
    assert validation_error(SCHEMA, result["data"]) is None
    assert [f["path"] for f in result["fields"]] == ["/vendor", "/date", "/total"]
    for f in result["fields"]:
        assert f["value"] == result["data"][f["path"][1:]]
        assert {"box", "image", "confidence", "verified"} <= set(f) and 0 <= f["confidence"] <= 1
        assert (f["verified"] is None) == (f["confidence"] >= 0.05)
    assert result["grounded"] is True and result["schema_hash"]
    assert "Traceback" not in proc.stderr


def test_plain_output_is_the_object_alone_and_the_report_goes_to_stderr(tiny_gemma4, receipt, capsys):
    from agent.cli import main

    code = main(["extract", str(receipt), "--fields", FIELDS, "--model", str(tiny_gemma4), "--budget", "70",
                 "--no-verify"])
    captured = capsys.readouterr()
    assert code == 0, captured.err[-3000:]
    assert validation_error(FIELDS_SCHEMA, json.loads(captured.out)) is None
    assert "2 values (valid for the schema)" in captured.err and "confidence" in captured.err


def test_raw_stdio_refuses_each_bad_schema_in_one_line_and_keeps_serving(receipt, tmp_path, schema_host):
    """No model behind it (a folder that does not exist): each bad schema is refused for itself, not for the model."""
    args = ["--model", "/nonexistent/model", "--allow-dir", str(tmp_path), "--out-dir", str(tmp_path / "out")]
    image = str(receipt)
    calls = [({"schema": text if isinstance(text, str) else json.loads(text)}, said)
             for _, text, said in bad_schemas(schema_host)]
    calls[2] = ({"schema": json.loads(bad_schemas(schema_host)[2][1])}, "nested more than 32 levels deep")
    # JSON text that parses to a list reaches the tool as a list (the SDK parses it): refused as what it is
    calls[5] = ({"schema": [1, 2, 3]}, "Argument 'schema': Input should be a JSON Schema: an object, or its JSON text; "
                "got a list.")
    calls += [
        ({"schema": SCHEMA, "fields": "a"}, "Give either schema or fields, not both."),
        ({}, "Say what to extract"),
        ({"fields": "a:money"}, "Field 1 of fields (a) has the type 'money'"),
        ({"fields": "a", "threshold": 2}, "threshold must be between 0 and 1"),
        ({"schema": 5}, "Argument 'schema': Input should be a JSON Schema: an object, or its JSON text; got a number."),
    ]
    with raw_stdio(args) as server:
        server.send(rpc(1, "tools/list", {}))
        listed = {tool["name"]: tool for tool in server.answer(1)["result"]["tools"]}
        assert {"schema", "fields", "threshold", "verify"} <= set(listed["extract"]["inputSchema"]["properties"])
        for arguments, said in calls:
            result = Calls.run(server, "extract", {"images": [image], **arguments})
            text = result["content"][0]["text"]
            assert result["isError"] and "structuredContent" not in result, result
            assert said in text and "\n" not in text and "No model directory" not in text, text
            assert result["_meta"]["vlm-agent/error"]["code"] in ("invalid_request", "unsupported")
        # still serving: the next call gets its own answer (the model's absence, now)
        result = Calls.run(server, "describe", {"images": [image]})
        assert "No model directory" in result["content"][0]["text"]
    assert Recording.seen == []


def test_raw_stdio_extract_returns_the_object_and_the_report_as_structured_content(tiny_gemma4, receipt, tmp_path):
    args = ["--model", str(tiny_gemma4), "--allow-dir", str(tmp_path), "--out-dir", str(tmp_path / "out")]
    with raw_stdio(args) as server:
        result = Calls.run(server, "extract", {"images": [str(receipt)], "schema": json.dumps(SCHEMA), "budget": 70,
                                               "verify": False, "max_new_tokens": 300})
    assert not result.get("isError"), result
    structured = result["structuredContent"]
    assert structured["valid"] and validation_error(SCHEMA, structured["data"]) is None
    assert [f["path"] for f in structured["fields"]] == ["/vendor", "/date", "/total"]
    text = result["content"][0]["text"]
    assert text.startswith("extracted 3 values, valid for the schema") and json.dumps(structured["data"],
                                                                                     ensure_ascii=False) in text


def test_raw_stdio_extracts_from_a_pdfs_chosen_pages_and_refuses_a_clip(tiny_gemma4, tmp_path):
    """Pages are the images of the call, each named in sources; a clip is refused in one line."""
    from tools.tiny.media import write_clip, write_pdf

    pdf = write_pdf(tmp_path / "invoice.pdf", 3)
    clip = write_clip(tmp_path / "clip.mp4", 4)
    args = ["--model", str(tiny_gemma4), "--allow-dir", str(tmp_path), "--out-dir", str(tmp_path / "out")]
    with raw_stdio(args) as server:
        result = Calls.run(server, "extract", {"images": [str(pdf)], "pages": "2-3", "fields": FIELDS, "budget": 70,
                                               "verify": False, "max_new_tokens": 300})
        refused = Calls.run(server, "extract", {"images": [str(clip)], "fields": FIELDS})
    assert not result.get("isError"), result
    structured = result["structuredContent"]
    assert structured["valid"] and validation_error(FIELDS_SCHEMA, structured["data"]) is None
    assert [(s["kind"], s["page"]) for s in structured["sources"]] == [("page", 2), ("page", 3)]
    assert len(structured["image_sizes"]) == 2
    text = refused["content"][0]["text"]
    assert refused["isError"] and "is a video clip" in text and "\n" not in text, text


def test_a_run_script_extracts(tiny_gemma4, tmp_path, monkeypatch, capsys):
    from agent.cli import main

    monkeypatch.setenv("VLM_AGENT_HOME", str(tmp_path / "home"))
    sample_image(160, 120).save(tmp_path / "r.png")
    turn = {"user": "by schema", "images": ["r.png"], "tool": "extract",
            "arguments": {"schema": SCHEMA, "budget": 70, "threshold": 0.0, "max_new_tokens": 300}}
    script = tmp_path / "s.jsonl"
    script.write_text(json.dumps(turn) + "\n")
    code = main(["run", str(script), "--model", str(tiny_gemma4)])
    captured = capsys.readouterr()
    assert code == 0, captured.err[-3000:]
    done = json.loads(captured.out)["turns"][0]
    assert validation_error(SCHEMA, done["result"]["data"]) is None
    assert json.loads(done["answer"]) == done["result"]["data"]  # what later turns would see
    assert all(f["verified"] is None for f in done["result"]["fields"])  # threshold 0: nothing is doubtful


@pytest.mark.anyio
async def test_the_chat_extracts_by_fields_or_schema_file(tiny_gemma4, tmp_path, monkeypatch):
    from tests.test_chat import chat

    monkeypatch.setenv("VLM_AGENT_HOME", str(tmp_path / "home"))
    photo = tmp_path / "photo.png"
    sample_image(160, 120).save(photo)
    path = tmp_path / "s.json"
    path.write_text(json.dumps(SCHEMA))
    lines = [
        "/budget 70",
        f"/extract {FIELDS} --no-verify",
        f"/extract --schema {path} --threshold 0",
        "/extract a:money",
        "/extract",
        "/quit",
    ]
    transcript, recorder = await chat(tiny_gemma4, tmp_path, lines, images=[photo])
    extracts = [args for name, args in recorder.calls if name == "extract"]
    # the bad fields went to the server, which refused them; the bare command never left the chat
    assert [("fields" in args, "schema" in args) for args in extracts] == [(True, False), (False, True), (True, False)]
    assert extracts[2]["fields"] == "a:money"
    assert extracts[0]["verify"] is False and extracts[1]["threshold"] == 0.0 and extracts[0]["budget"] == 70
    assert json.loads(extracts[1]["schema"]) == SCHEMA  # the file's text, sent for the server to check
    # a table's title wraps when its values make the table narrower than the title
    assert " ".join(transcript.split()).count("values (valid for the schema)") == 2, transcript
    assert "error: Field 1 of fields (a) has the type 'money'" in transcript
    assert "Say what to extract: /extract total:number, date:date, vendor (or --schema FILE)." in transcript
