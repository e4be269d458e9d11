"""`vlm-agent run SCRIPT` through the console script: a script is read within bounds and checked
whole against its schema before any turn runs; a turn passes its tool every argument it takes;
a failed turn says why on stderr."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import sample_image
from tests.hardening import record

VLM_AGENT = str(Path(sys.executable).parent / "vlm-agent")
#: address space for a `run` whose script is refused: enough to start, far below what a bomb takes
MEMORY_CAP = 2 << 30


def cap_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP, MEMORY_CAP))


def run_script(
    script: Path, *flags: str, home: Path, timeout: float = 60, capped: bool = True
) -> subprocess.CompletedProcess:
    """``vlm-agent run SCRIPT FLAGS`` in a child process, its memory capped unless it is to load a model."""
    return subprocess.run(
        [VLM_AGENT, "run", str(script), *flags], capture_output=True, text=True, timeout=timeout,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "VLM_AGENT_HOME": str(home)},
        preexec_fn=cap_memory if capped else None,
    )


def one_line_refusal(proc: subprocess.CompletedProcess) -> str:
    """The refusal of a script: exit 1, nothing on stdout, one line `error: ...` on stderr and nothing else."""
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and "Error:" not in proc.stderr and " at 0x" not in proc.stderr
    assert len(lines[0]) < 400
    return lines[0]


#: the model is a folder that does not exist: a script that got past its checks would fail on that instead
NO_MODEL = ("--model", "/nonexistent/model")

BILLION_LAUGHS = (
    'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
    + "".join(
        f"{name}: &{name} [{', '.join(['*' + prev] * 9)}]\n"
        for prev, name in zip("abcdefgh", "bcdefghi")
    )
    + "turns:\n  - user: hi\n    images: [p.png]\n    tool: describe\n    arguments: {prompt: *i}\n"
)


#: what a script author wrote (YAML) and the line it gets; the first ones were seen through the
#: console script, the rest are checked on the reader itself (they share its code)
REFUSED = [
    (BILLION_LAUGHS, "Line 1 of the script holds a YAML anchor or alias"),
    ("- {user: hi, images: [123]}\n", "Turn 1, images[0]: should be text (a path or URL), got 123."),
    ("- {user: hi, images: [null]}\n", "Turn 1, images[0]: should be text (a path or URL), got null."),
    ("- {user: hi, images: [{a: 1}]}\n", 'Turn 1, images[0]: should be text (a path or URL), got {"a": 1}.'),
    ("- {user: hi, tool: ocr, arguments: cat}\n", 'Turn 1, arguments: should be a mapping of names to values, got "cat".'),
    (
        "- {user: hi}\n- {user: hi, tool: ocr, arguments: {engin: rapidocr}}\n",
        "Turn 2: ocr takes no argument 'engin'; it takes budget, max_new_tokens, temperature, top_p, engine, tiles, pages.",
    ),
    (
        '- {user: hi, tool: extract, arguments: {schema: {type: object, properties: {a: {$ref: "http://127.0.0.1:9/s"}}}}}\n',
        'Turn 1, arguments: The schema\'s $ref "http://127.0.0.1:9/s" points outside the schema, and vlm-agent fetches '
        "nothing for a $ref",
    ),
]
THROUGH_THE_DOOR = len(REFUSED)
REFUSED += [
    ("- &t {user: hi}\n- *t\n", "Line 1 of the script holds a YAML anchor or alias"),
    ("- user: hi\n- user: there\n  images: *x\n", "Line 3 of the script holds a YAML anchor or alias"),
    ("- {user: hi, images: p.png}\n", 'Turn 1, images: should be a list, got "p.png".'),
    ("- {user: hi, images: ['']}\n", "Turn 1, images[0]: should be a path or URL of 1 to 4096 characters"),
    ("- {user: hi}\n- {user: 3}\n", "Turn 2, user: should be text, got 3."),
    ("- {user: hi}\n- {images: [p.png]}\n", "Turn 2, user: is missing"),
    ("- hello\n", 'Turn 1: should be a mapping of names to values, got "hello".'),
    ("- {user: hi, 1: x}\n", "Turn 1 has the key 1 in a turn; keys are names, in text."),
    ("- {user: hi, tool: ocr, arguments: {2.5: 1}}\n", "Turn 1 has the key 2.5 in arguments; keys are names, in text."),
    ("- {user: hi, tool: ocr, arguments: {" + "k" * 200 + ": 1}}\n", "Turn 1: ocr takes no argument 'kkkkkkkkkkkkkk"),
    ("- {user: hi, imgaes: [p.png]}\n", "Turn 1 has the key 'imgaes'; a turn takes user, images, tool and arguments."),
    ("- {user: hi, tool: paint}\n", "Turn 1, tool: should be 'describe', 'ocr', 'detect', 'compare_budgets' or 'extract'"),
    ("- {user: hi, arguments: {tiles: 3}}\n", "Turn 1, arguments: name the tool they go to"),
    ("- {user: hi, tool: ocr, arguments: {engine: tesseract}}\n", "Turn 1, arguments.engine: should be 'vlm' or 'rapidocr'"),
    ("- {user: hi, tool: ocr, arguments: {tiles: 99}}\n", "Turn 1, arguments.tiles: tiles must be between 1 and 8"),
    ("- {user: hi, tool: ocr, arguments: {tiles: true}}\n", "Turn 1, arguments.tiles: should be 'auto', 'off' or a number"),
    ("- {user: hi, tool: detect, arguments: {labels: [cat], verify: yes please}}\n", "Turn 1, arguments.verify: should be true or false"),
    ("- {user: hi, tool: detect, arguments: {labels: []}}\n", "Turn 1, arguments.labels: Give at least one non-empty label"),
    ("- {user: hi, tool: detect, arguments: {labels: [1]}}\n", "Turn 1, arguments.labels: should be a list of labels, got [1]."),
    ("- {user: hi, tool: detect, arguments: {verify: true}}\n", "Turn 1, arguments.labels: is missing."),
    (
        "- {user: hi, tool: detect, arguments: {labels: [cat], consensus: [280]}}\n",
        "Turn 1, arguments.consensus: Give consensus at least two different budgets",
    ),
    (
        "- {user: hi, tool: detect, arguments: {labels: [cat], consensus: [280, 560], budget: 70}}\n",
        "Turn 1, arguments: consensus runs its own budgets on the whole image; leave budget and tiles unset.",
    ),
    ("- {user: hi, tool: compare_budgets, arguments: {budgets: [70, huge]}}\n", "Turn 1, arguments.budgets[1]: should be a whole number"),
    ("- {user: hi, tool: compare_budgets, arguments: {task: segment}}\n", "Turn 1, arguments.task: should be 'describe', 'ocr' or 'detect'"),
    ("- {user: hi, tool: describe, arguments: {budget: 2.5}}\n", "Turn 1, arguments.budget: should be a budget number or 'auto'"),
    ("- {user: hi, tool: describe, arguments: {budget: true}}\n", "Turn 1, arguments.budget: should be a budget number or 'auto'"),
    ("- {user: hi, tool: describe, arguments: {max_new_tokens: 0}}\n", "Turn 1, arguments.max_new_tokens: max_new_tokens must be between 1 and 8192"),
    ("- {user: hi, tool: describe, arguments: {max_new_tokens: 9.0}}\n", "Turn 1, arguments.max_new_tokens: should be a whole number"),
    ("- {user: hi, tool: describe, arguments: {temperature: 9}}\n", "Turn 1, arguments.temperature: temperature must be 0 (greedy) or between"),
    ("- {user: hi, tool: describe, arguments: {prompt: [a]}}\n", "Turn 1, arguments.prompt: should be text"),
    ("- {user: hi, images: [" + ", ".join(["p.png"] * 17) + "]}\n", "Turn 1, images: should have at most 16 items, not 17."),
    ("- {user: " + "x" * 32_001 + "}\n", "Turn 1, user: The message is 32001 characters; the limit is 32000."),
    ('- {user: "a\\0b"}\n', "Turn 1, user: The message contains a NUL byte"),
    ("[" * 5000 + "]" * 5000 + "\n", "nesting depth"),
    ("- " * 20 + "user: hi\n", "nested too deeply (more than 16 levels)"),
    ("turns: []\n", "The script holds no turns"),
    ("turns: [{user: hi}]\nmodel: x\n", "The script's top level takes only 'turns', not 'model'."),
    ("- user: 2024-01-01\n", 'Turn 1, user: should be text, got "2024-01-01".'),
    ("- {user: hi, tool: ocr, arguments: {tiles: 1" + "0" * 5000 + "}}\n", "The script holds a value YAML cannot read."),
    ("- {user: hi, tool: describe, arguments: !!python/object:os.system {}}\n", "The script is not valid YAML"),
    (": [", "The script is not valid YAML"),
    ("- {user: hi, tool: extract, arguments: {}}\n", "Turn 1, arguments: Say what to extract: a JSON Schema as schema"),
    ("- {user: hi, tool: extract, arguments: {fields: 'a:money'}}\n", "Turn 1, arguments: Field 1 of fields (a) has the type"),
    ("- {user: hi, tool: extract, arguments: {fields: a, threshold: 2}}\n", "Turn 1, arguments.threshold: threshold must be"),
    ("- {user: hi, tool: extract, arguments: {schema: 5}}\n", "Turn 1, arguments.schema: should be a JSON Schema"),
    ("- {user: hi, tool: extract, arguments: {schema: '[1]'}}\n", "Turn 1, arguments: The schema is a JSON list"),
    (
        "- {user: hi, tool: extract, arguments: {fields: a, schema: {type: object, properties: {a: {}}}}}\n",
        "Turn 1, arguments: Give either schema or fields, not both.",
    ),
]


@pytest.mark.parametrize(("text", "expected"), REFUSED[:THROUGH_THE_DOOR], ids=lambda v: v[:30] if "\n" in v else None)
def test_a_bad_script_is_refused_in_one_line_before_the_server_starts(text, expected, tmp_path):
    script = tmp_path / "s.yaml"
    script.write_text(text, encoding="utf-8")
    line = one_line_refusal(run_script(script, *NO_MODEL, home=tmp_path / "home"))
    assert line == f"error: {expected}" or expected in line, line
    assert "/nonexistent" not in line  # refused before the model's folder was ever looked at
    record(class_18=1)


@pytest.mark.parametrize(("text", "expected"), REFUSED, ids=lambda v: v[:30] if "\n" in v or v == ": [" else None)
def test_every_break_of_the_schema_is_one_line_naming_the_turn_and_field(text, expected, tmp_path):
    from agent.script import ScriptError, load_script

    script = tmp_path / "s.yaml"
    script.write_text(text, encoding="utf-8")
    with pytest.raises(ScriptError) as refused:
        load_script(script)
    message = str(refused.value)
    assert expected in message and "\n" not in message and len(message) < 300, message


@pytest.mark.parametrize(
    ("name", "data", "expected"),
    [
        ("latin1.yaml", b"- user: caf\xe9 au lait\n", "The script is not UTF-8 text: line 1 holds the byte 0xE9"),
        ("big.yaml", b"- user: hi\n" + b"#" * (1 << 20) + b"\n", "The script is larger than 1 MiB"),
    ],
    ids=["latin-1 byte", "over 1 MiB"],
)
def test_script_bytes_are_read_within_bounds_through_the_console_script(name, data, expected, tmp_path):
    script = tmp_path / name
    script.write_bytes(data)
    line = one_line_refusal(run_script(script, *NO_MODEL, home=tmp_path / "home"))
    assert expected in line, line
    record(class_18=1)


@pytest.mark.parametrize(
    ("name", "data", "expected"),
    [
        ("latin1.jsonl", b'{"user": "hi"}\n{"user": "caf\xe9"}\n', "The script is not UTF-8 text: line 2 holds the byte 0xE9"),
        ("big.jsonl", b'{"user": "hi"}\n' * 70_000, "The script is larger than 1 MiB"),
        ("many.jsonl", b'{"user": "hi"}\n' * 1500, "The script holds more than 1000 turns"),
        ("many.yaml", b"- user: hi\n" * 1001, "The script holds more than 1000 turns"),
        ("line.jsonl", b'{"user": "hi"}\n[1, 2]\n', "Turn 2: should be a mapping of names to values, got [1, 2]."),
        ("json.jsonl", b'{"user": "hi"}\n{"user": \n', "Line 2 of the script is not JSON."),
        ("deep.jsonl", b"[" * 100_000 + b"]" * 100_000 + b"\n", "Line 1 of the script is nested too deeply."),
        ("digits.jsonl", b'{"user": "hi", "tool": "ocr", "arguments": {"tiles": ' + b"9" * 5000 + b"}}\n", "Line 1 of the script is not JSON."),
        ("nan.jsonl", b'{"user": "hi", "tool": "ocr", "arguments": {"temperature": NaN}}\n', "Turn 1, arguments.temperature"),
        ("surrogate.jsonl", b'{"user": "a\\ud800b"}\n', "Turn 1, user: The message is not valid Unicode text"),
    ],
    ids=lambda value: value if isinstance(value, str) and value.count(".") == 1 else None,
)
def test_script_bytes_are_read_within_bounds(name, data, expected, tmp_path):
    from agent.script import ScriptError, load_script

    script = tmp_path / name
    script.write_bytes(data)
    with pytest.raises(ScriptError) as refused:
        load_script(script)
    assert expected in str(refused.value), str(refused.value)


def test_a_device_as_script_is_refused_without_reading_it_all(tmp_path):
    line = one_line_refusal(run_script(Path("/dev/zero"), *NO_MODEL, home=tmp_path / "home"))
    assert "larger than 1 MiB" in line
    record(class_18=1)


def test_a_script_passes_every_argument_its_tool_takes_and_a_failed_turn_says_why(tiny_gemma4, tmp_path):
    pytest.importorskip("rapidocr_onnxruntime")
    sample_image(128, 96).save(tmp_path / "p.png")
    turns = [
        {"user": "read it", "images": ["p.png"], "tool": "ocr", "arguments": {"engine": "rapidocr"}},
        {"user": "which budget?", "images": ["p.png"], "tool": "compare_budgets",
         "arguments": {"budgets": [70, 140], "max_new_tokens": 2}},
        {"user": "what is it?", "images": ["p.png"], "tool": "describe", "arguments": {"budget": 70, "max_new_tokens": 3}},
        {"user": "find it", "images": ["p.png"], "tool": "detect",
         "arguments": {"labels": ["square"], "tiles": 2, "budget": 70, "max_new_tokens": 2}},
        {"user": "and this one?", "images": ["missing.png"]},
        {"user": "and this?", "images": ["\x1b]52;c;aGVsbG8=\x07x\x1b[2J.png"]},
    ]
    script = tmp_path / "talk.jsonl"
    script.write_text("".join(json.dumps(turn) + "\n" for turn in turns))
    out = tmp_path / "transcript.json"
    proc = run_script(
        script, "--model", str(tiny_gemma4), "--max-new-tokens", "4", "--out", str(out), home=tmp_path / "home",
        timeout=300, capped=False,
    )
    assert proc.returncode == 1, proc.stderr[-3000:]  # the last turns failed
    done = json.loads(out.read_text())["turns"]
    assert done[0]["result"]["engine"] == "rapidocr"
    assert [run["budget"] for run in done[1]["result"]["runs"]] == [70, 140]
    assert done[2]["result"]["budget"] == 70 and done[2]["result"]["generated_tokens"] <= 3
    assert len(done[3]["result"]["tiles"]) >= 2 and done[3]["arguments"]["tiles"] == 2
    assert [turn.get("error") for turn in done[:4]] == [None] * 4
    # the failed turn's reason is on stderr too, with its number, not only in the transcript
    assert f"turn 5 failed: No image file at '{tmp_path / 'missing.png'}'." in proc.stderr.splitlines()
    assert proc.stderr.splitlines()[-1] == "4 turns ok, 2 failed (turns 5, 6)"
    assert "Traceback" not in proc.stderr
    # a name from the script reaches the terminal as text, never as escape sequences
    assert "\x1b" not in proc.stderr and "\x07" not in proc.stderr
    assert "turn 6 failed: No image file at '" in proc.stderr and "\\x1b]52;c;aGVsbG8=\\x07x\\x1b[2J.png'." in proc.stderr


def test_a_server_that_cannot_start_is_one_line_not_a_traceback(tmp_path):
    script = tmp_path / "s.yaml"
    script.write_text("- user: hi\n")
    line = one_line_refusal(run_script(script, *NO_MODEL, home=tmp_path / "home"))
    assert line.startswith("error: No model directory at '/nonexistent/model'")


@pytest.mark.parametrize("tool", ["describe", "ocr", "detect", "compare_budgets", "extract"])
def test_the_schema_takes_what_the_session_passes_on_and_the_server_takes(tool):
    """One list of each tool's turn arguments: the schema's, the session's and the server's tool (less what
    the session supplies itself: images and history)."""
    import inspect

    from agent.script_schema import ARGUMENTS
    from agent.session import TOOL_ARGUMENTS
    from mcp_server import handlers as tools

    taken = set(inspect.signature(getattr(tools, tool)).parameters) - {"ctx", "image", "images", "history"}
    assert tuple(field.alias or name for name, field in ARGUMENTS[tool].model_fields.items()) == TOOL_ARGUMENTS[tool]
    assert set(TOOL_ARGUMENTS[tool]) == taken
