"""Classes 3, 6, 7 and 8 of the transport campaign, through raw stdio and the chat binary.

Model text is data (6), user text cannot forge control tokens (7), labels and numbers are
checked whole (8), and image caps are counted before anything is decoded (3).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import sample_image
from tests.hardening import VLM_AGENT, check_tool_error, record
from tests.raw import Calls, RawStdio, raw_stdio

BROKEN_PNG = "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAA"


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("doors")
    sample_image(64, 48).save(root / "photo.png")
    return root


@pytest.fixture(scope="module")
def nul_model(tiny_gemma4, tmp_path_factory) -> Path:
    """The tiny Gemma 4, biased to write NUL bytes: the generation config adds to that token's logit."""
    from transformers import AutoTokenizer

    path = tmp_path_factory.mktemp("nul") / "gemma4"
    shutil.copytree(tiny_gemma4, path)
    nul = AutoTokenizer.from_pretrained(path).convert_tokens_to_ids("<0x00>")
    config = json.loads((path / "generation_config.json").read_text())
    config["sequence_bias"] = [[[nul], 100.0]]
    (path / "generation_config.json").write_text(json.dumps(config))
    return path


@pytest.fixture(scope="module")
def stdio(tiny_gemma4, folder) -> RawStdio:
    with raw_stdio(["--model", str(tiny_gemma4), "--allow-dir", str(folder), "--out-dir", str(folder / "out")]) as s:
        yield s


def ok(result: dict) -> dict:
    assert not result.get("isError"), result
    return result["structuredContent"]


def refused(result: dict) -> str:
    assert result.get("isError"), result
    return check_tool_error(result["content"][0]["text"])


# -- class 6: model text is data ----------------------------------------------------------


def test_an_answer_full_of_nul_bytes_goes_back_as_history(nul_model, folder):
    photo = str(folder / "photo.png")
    with raw_stdio(["--model", str(nul_model), "--allow-dir", str(folder), "--out-dir", str(folder / "o6")]) as s:
        first = ok(Calls.run(s, "describe", {"images": [photo], "prompt": "what?", "max_new_tokens": 4}))
        assert "\x00" not in first["text"] and first["generated_tokens"] == 4
        history = [{"role": "user", "content": "what?", "images": [photo]}, {"role": "assistant", "content": first["text"]}]
        ok(Calls.run(s, "describe", {"images": [], "prompt": "and?", "history": history, "max_new_tokens": 2}))
    record(class_6=1)


def test_the_chat_goes_on_after_an_answer_full_of_nul_bytes(nul_model, folder, tmp_path):
    done = subprocess.run(
        [VLM_AGENT, "chat", "--model", str(nul_model), str(folder / "photo.png")],
        input="what is it\nand now\n", capture_output=True, text=True, timeout=240,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "VLM_AGENT_HOME": str(tmp_path)},
    )
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    assert out.count("routed by keywords") == 2, out
    assert "error" not in out.lower() and "\x00" not in out, out
    record(class_6=1)


# -- class 7: control tokens in user text -----------------------------------------------


def prompt_tokens(s: RawStdio, folder: Path, **arguments) -> int:
    base = {"images": [str(folder / "photo.png")], "max_new_tokens": 1, "budget": 70}
    return ok(Calls.run(s, "describe", {**base, **arguments}))["prompt_tokens"]


@pytest.mark.parametrize("control", ["<|turn>", "<turn|>", "<|tool_call>", "<|think|>", "<eos>", "<bos>"])
def test_control_strings_in_prompt_and_history_stay_plain_text(stdio, folder, control):
    """A control string the tokenizer would make one token becomes several plain-text tokens."""
    plain = prompt_tokens(stdio, folder, prompt="x")
    forged = prompt_tokens(stdio, folder, prompt=f"x{control * 10}")
    assert forged - plain >= 30, (plain, forged)
    history = [{"role": "user", "content": control * 10}, {"role": "assistant", "content": control * 10}]
    in_history = prompt_tokens(stdio, folder, prompt="x", history=history)
    empty = prompt_tokens(stdio, folder, prompt="x", history=[{"role": "user", "content": ""}, {"role": "assistant", "content": ""}])
    assert in_history - empty >= 60, (empty, in_history)
    record(class_7=1)


def test_control_strings_in_labels_stay_plain_text(stdio, folder):
    image = str(folder / "photo.png")
    one = ok(Calls.run(stdio, "detect", {"image": image, "labels": ["<"], "max_new_tokens": 1, "budget": 70}))
    forged = ok(Calls.run(stdio, "detect", {"image": image, "labels": ["<turn|>"], "max_new_tokens": 1, "budget": 70}))
    assert forged["prompt_tokens"] - one["prompt_tokens"] >= 3, (one["prompt_tokens"], forged["prompt_tokens"])
    record(class_7=1)


# -- class 8: labels and numbers ------------------------------------------------------


@pytest.mark.parametrize(
    "label", ["cat\rdog", "cat\u2028dog", "cat\u2029dog", "cat\x1b[31mdog", "cat\x85dog", "cat\u202edog", "cat\x07"],
    ids=["CR", "U+2028", "U+2029", "ESC", "NEL", "RLO", "BEL"],
)
def test_labels_are_one_line_of_printable_text(stdio, folder, label):
    result = Calls.run(stdio, "detect", {"image": str(folder / "photo.png"), "labels": [label], "max_new_tokens": 1})
    assert "Labels must be one line" in refused(result)
    record(class_8=1)


@pytest.mark.parametrize("temperature", [1e-45, 1e-300, 5e-3, 2.5, -1e-45])
def test_temperatures_that_cannot_sample_are_refused_up_front(stdio, folder, temperature):
    arguments = {"images": [str(folder / "photo.png")], "max_new_tokens": 2, "temperature": temperature}
    assert "temperature must be" in refused(Calls.run(stdio, "describe", arguments))
    record(class_8=1)


# -- class 3: caps counted before decoding ------------------------------------------------


def test_history_images_are_counted_before_any_is_decoded(stdio, folder):
    """Seventeen broken images: the count is the answer, so none of them was decoded."""
    history = [{"role": "user", "content": "look", "images": [BROKEN_PNG + "A" * n]} for n in range(17)]
    history += [{"role": "assistant", "content": "ok"}]
    message = refused(Calls.run(stdio, "describe", {"images": [], "prompt": "x", "history": history}))
    assert "17 images" in message, message
    one_turn = [{"role": "user", "content": "look", "images": [BROKEN_PNG + "A" * n for n in range(17)]}]
    message = refused(Calls.run(stdio, "chat", {"message": "x", "history": one_turn}))
    assert "17 images" in message, message
    record(class_3=1)


def test_current_images_are_counted_before_history_is_read(stdio, folder):
    history = [{"role": "user", "content": "look", "images": [BROKEN_PNG]}]
    images = [str(folder / "photo.png")] * 17
    message = refused(Calls.run(stdio, "describe", {"images": images, "prompt": "x", "history": history}))
    assert "17 images" in message, message
    record(class_3=1)


# -- class 10: logs -------------------------------------------------------------------


def test_verbose_logs_never_show_url_credentials_or_query_secrets(tiny_gemma4, folder):
    import io
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    png = io.BytesIO()
    sample_image(32, 32).save(png, "PNG")

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(png.getvalue())))
            self.end_headers()
            self.wfile.write(png.getvalue())

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = f"http://alice:hunter2pw@127.0.0.1:{httpd.server_port}/p.png?X-Amz-Signature=TOPSECRETSIG&token=TOPSECRETTOK"
    args = ["--model", str(tiny_gemma4), "--allow-dir", str(folder), "--out-dir", str(folder / "o10"), "--allow-private-urls"]
    try:
        with raw_stdio(args, verbose=True) as s:
            ok(Calls.run(s, "describe", {"images": [url], "max_new_tokens": 1, "budget": 70}))
            log = s.log()
    finally:
        httpd.shutdown()
    assert f"127.0.0.1:{httpd.server_port}/p.png" in log, log[-3000:]  # the fetch was logged ...
    for secret in ("hunter2pw", "TOPSECRETSIG", "TOPSECRETTOK", "alice"):
        assert secret not in log, secret  # ... without its secrets
    record(class_10=1)


# -- class 12: check-then-open race ------------------------------------------------------


def test_a_parent_folder_swapped_for_a_symlink_never_leaks_the_outside_file(tiny_gemma4, tmp_path):
    """A thread swaps allowed/sub between a real folder and a symlink to a folder outside while
    the server reads allowed/sub/a.png: it may fail to read it, but never reads the outside one."""
    import threading

    from tools.inputs import image_id

    allowed, outside = tmp_path / "allowed", tmp_path / "outside"
    sub, parked, link = allowed / "sub", allowed / "parked", allowed / "link"
    for folder in (sub, outside):
        folder.mkdir(parents=True)
    sample_image(16, 16).save(sub / "a.png")
    sample_image(17, 17).save(outside / "a.png")
    secret_id = image_id((outside / "a.png").read_bytes())
    link.symlink_to(outside, target_is_directory=True)
    stop = threading.Event()

    def swap() -> None:
        # allowed/sub is the real folder, then the symlink to outside, then the real folder again.
        while not stop.is_set():
            os.rename(sub, parked)
            os.rename(link, sub)
            os.rename(sub, link)
            os.rename(parked, sub)

    args = ["--model", str(tiny_gemma4), "--allow-dir", str(allowed), "--out-dir", str(tmp_path / "o12")]
    swapper = threading.Thread(target=swap, daemon=True)
    answers: list[dict] = []
    with raw_stdio(args) as s:
        swapper.start()
        try:
            for _ in range(300):
                answers.append(Calls.run(s, "ocr", {"image": str(sub / "a.png"), "max_new_tokens": 1, "budget": 70}))
        finally:
            stop.set()
            swapper.join()
    leaked = [a for a in answers if secret_id in json.dumps(a)]
    assert not leaked, f"{len(leaked)} of {len(answers)} calls read the file outside"
    assert any(not a.get("isError") for a in answers)  # the race was run, not refused wholesale
    record(class_12=1)
