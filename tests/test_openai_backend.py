"""The OpenAI-compatible backend against a scripted engine: what it sends, what it reads back, how it fails.

The real round trip through an independent server is in test_transformers_serve.py; here a
fake engine (httpx.MockTransport) pins down the wire format, the errors and the concurrency.
"""

from __future__ import annotations

import base64
import io
import json
import re
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image

from agent.cli import cli_words, main
from tests.conftest import boxes, run, sample_image, sample_input
from tools.families.gemma4 import encoder_size as gemma4_seen_size
from tools.errors import EngineError, EngineUnavailable, InvalidRequest, ModelNotFound, Unsupported, VlmError
from tools.families.gemma4 import Gemma4
from tools.inputs import AccessPolicy, ImageInput, ImageLoader
from tools.model import Model
from tools.options import GenerationOptions
from tools.errors import Cancelled
from tools.runtimes.api import ApiSettings
from tools.runtimes.engine import EngineRuntime
from tools.runtimes.replies import TRAILING_EVENTS, event_lines, read_stream, read_upto
from tools.tasks import Turn
from tools.vision import Vision

URL = "http://engine.test/v1"
BOX_ANSWER = '```json\n[{"box_2d": [100, 200, 500, 600], "label": "cat"}]\n```'


def sse(*events: object) -> bytes:
    return "".join(f"data: {e if isinstance(e, str) else json.dumps(e)}\n\n" for e in events).encode()


def completion(pieces: list[str], finish: str = "stop", usage: tuple[int, int] | None = (100, 2)) -> bytes:
    events: list[object] = [{"choices": [{"index": 0, "delta": {"role": "assistant"}}]}]
    events += [{"choices": [{"index": 0, "delta": {"content": piece}}]} for piece in pieces]
    events.append({"choices": [{"index": 0, "delta": {}, "finish_reason": finish}]})
    if usage is not None:
        events.append({"choices": [], "usage": {"prompt_tokens": usage[0], "completion_tokens": usage[1]}})
    return sse(*events, "[DONE]")


class FakeEngine:
    """Answers /chat/completions with one scripted stream, records requests, counts concurrency."""

    def __init__(self, pieces: list[str] | None = None, *, status: int = 200, error: object = None,
                 usage: tuple[int, int] | None = (100, 2), finish: str = "stop", delay: float = 0.0,
                 tokens_per_budget: bool = False, models: list[str] | None = None) -> None:
        self.pieces = ["A red ", "square."] if pieces is None else pieces
        self.status, self.error, self.usage, self.finish = status, error, usage, finish
        self.delay, self.tokens_per_budget, self.models = delay, tokens_per_budget, models or []
        self.bodies: list[dict] = []
        self.headers: list[httpx.Headers] = []
        self._lock = threading.Lock()
        self.in_flight = self.max_in_flight = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/models"):
            return httpx.Response(200, json={"object": "list", "data": [{"id": m} for m in self.models]})
        body = json.loads(request.content)
        with self._lock:
            self.bodies.append(body)
            self.headers.append(request.headers)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            time.sleep(self.delay)
            if self.status != 200:
                return httpx.Response(self.status, json=self.error)
            usage = self.usage
            if self.tokens_per_budget and usage is not None:
                usage = (20 + body["mm_processor_kwargs"]["max_soft_tokens"], usage[1])
            content = completion(self.pieces, self.finish, usage)
            return httpx.Response(200, content=content, headers={"content-type": "text/event-stream"})
        finally:
            with self._lock:
                self.in_flight -= 1


def on_engine(runtime: EngineRuntime) -> Model:
    """Gemma 4's dialect over the engine runtime, as ``load_model`` pairs them for --backend openai."""
    return Model(Gemma4.for_engine(budgets=runtime.settings.budgets), runtime)


def backend_for(engine: FakeEngine, **settings) -> Model:
    api = ApiSettings(base_url=URL, model="gemma", **settings)
    return on_engine(EngineRuntime(api, transport=httpx.MockTransport(engine)))


@pytest.fixture
def png(tmp_path: Path) -> Path:
    path = tmp_path / "square.png"
    sample_image(96, 64).save(path)
    return path


def vision_for(backend: Model, *paths: Path) -> Vision:
    return Vision(backend, ImageLoader(AccessPolicy.for_files([str(p) for p in paths])))


def one_sentence(error: BaseException) -> str:
    message = str(error)
    assert "\n" not in message and "Traceback" not in message
    return message


# -- what goes over the wire ---------------------------------------------------------------


def test_describe_sends_a_streamed_chat_request_with_images_and_history(png):
    engine = FakeEngine()
    backend = backend_for(engine)
    earlier = Turn("user", "What is it?", (sample_input(),))
    generation = run(backend, "describe", [sample_image(40, 30)], "And now?", history=[earlier, Turn("assistant", "A square.")], options=GenerationOptions(max_new_tokens=7)).generation
    body = engine.bodies[0]
    assert body["model"] == "gemma" and body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert (body["max_tokens"], body["temperature"]) == (7, 0.0) and "top_p" not in body
    assert "mm_processor_kwargs" not in body  # not declared: never sent
    roles = [m["role"] for m in body["messages"]]
    assert roles == ["user", "assistant", "user"]
    assert body["messages"][1]["content"] == "A square."  # text-only turns as plain strings
    first, last = body["messages"][0]["content"], body["messages"][2]["content"]
    assert [p["type"] for p in first] == ["image_url", "text"] and last[-1] == {"type": "text", "text": "And now?"}
    uri = last[0]["image_url"]["url"]
    assert uri.startswith("data:image/png;base64,")
    assert Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))).size == (40, 30)
    assert generation.text == "A red square." and generation.image_tokens is None
    assert (generation.prompt_tokens, generation.generated_tokens, generation.history_turns) == (100, 2, 2)
    assert generation.timings.generate_ms > 0 and generation.budget is None


def test_sampling_options_and_budgets_go_in_the_body():
    engine = FakeEngine()
    backend = backend_for(engine, budgets=True, extra_body={"top_k": 20})
    run(backend, "ocr", [sample_image()], budget=560, options=GenerationOptions(temperature=0.7, top_p=0.9)).generation
    run(backend, "ocr", [sample_image()], options=GenerationOptions()).generation
    assert engine.bodies[0]["mm_processor_kwargs"] == {"max_soft_tokens": 560}
    assert (engine.bodies[0]["temperature"], engine.bodies[0]["top_p"], engine.bodies[0]["top_k"]) == (0.7, 0.9, 20)
    assert engine.bodies[1]["mm_processor_kwargs"] == {"max_soft_tokens": 280}  # Gemma 4's default
    assert backend.seen_size((640, 480), 70) == gemma4_seen_size((640, 480), 70) != (640, 480)


def test_images_from_urls_go_as_urls_only_when_allowed():
    engine = FakeEngine()
    image = ImageInput(sample_image(), "img_0123456789abcdef", url="https://example.org/cat.png")
    run(backend_for(engine), "ocr", [image], options=GenerationOptions()).generation
    run(backend_for(engine, send_urls=True), "ocr", [image], options=GenerationOptions()).generation
    run(backend_for(engine, send_urls=True), "ocr", [sample_image()], options=GenerationOptions()).generation
    urls = [body["messages"][0]["content"][0]["image_url"]["url"] for body in engine.bodies]
    assert urls[0].startswith("data:image/png") and urls[1] == "https://example.org/cat.png"
    assert urls[2].startswith("data:image/png")  # a file has no URL to send


def test_api_key_comes_from_the_environment_and_never_reaches_a_message(monkeypatch):
    monkeypatch.setenv("VLM_AGENT_API_KEY", "sk-default")
    monkeypatch.setenv("MY_ENGINE_KEY", "sk-secret-123")
    engine = FakeEngine()
    run(backend_for(engine), "ocr", [sample_image()], options=GenerationOptions()).generation
    assert engine.headers[0]["authorization"] == "Bearer sk-default"
    refusing = FakeEngine(status=401, error={"error": {"message": "bad key sk-secret-123"}})
    with pytest.raises(EngineError) as caught:
        run(backend_for(refusing, key_env="MY_ENGINE_KEY"), "ocr", [sample_image()], options=GenerationOptions()).generation
    assert refusing.headers[0]["authorization"] == "Bearer sk-secret-123"
    assert "MY_ENGINE_KEY" in one_sentence(caught.value) and "sk-secret" not in str(caught.value)
    monkeypatch.delenv("MY_ENGINE_KEY")
    with pytest.raises(InvalidRequest, match=r"\$MY_ENGINE_KEY, which is not set"):
        backend_for(engine, key_env="MY_ENGINE_KEY")


def test_no_key_sends_no_authorization(monkeypatch):
    monkeypatch.delenv("VLM_AGENT_API_KEY", raising=False)
    engine = FakeEngine()
    run(backend_for(engine), "ocr", [sample_image()], options=GenerationOptions()).generation
    assert "authorization" not in engine.headers[0]


# -- reading the stream ---------------------------------------------------------------------


def test_stream_pieces_reach_the_stream_sink_and_assemble():
    from tools.runtimes.streaming import streaming

    seen: list[tuple[str, int]] = []
    engine = FakeEngine(["Hel", "lo ", "wörld"], finish="length")
    with streaming(lambda piece, count: seen.append((piece, count))):
        generation = run(backend_for(engine), "describe", [sample_image()], "", options=GenerationOptions(max_new_tokens=3)).generation
    assert seen == [("Hel", 1), ("lo ", 2), ("wörld", 3)] and generation.text == "Hello wörld"
    assert generation.finish_reason == "length" and any("max_new_tokens=3" in n for n in generation.notes)


def test_tool_call_fragments_assemble_and_reply_round_trips():
    lines = sse(
        {"choices": [{"index": 0, "delta": {"role": "assistant"}}]},
        {"choices": [{"index": 0, "delta": {"tool_calls": [
            {"index": 0, "id": "call_1", "type": "function", "function": {"name": "get_time", "arguments": ""}}]}}]},
        {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": '{"city": '}}]}}]},
        {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]}}]},
        {"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]},
        {"choices": [], "usage": {"prompt_tokens": 10, "completion_tokens": 5}},
    ).decode().splitlines()  # no [DONE]: some engines just close the stream
    reply = read_stream(lines)
    assert [(c.id, c.name, c.arguments) for c in reply.tool_calls] == [("call_1", "get_time", {"city": "Paris"})]
    assert (reply.text, reply.finish_reason, reply.prompt_tokens, reply.generated_tokens) == ("", "tool_calls", 10, 5)
    assert reply.message()["tool_calls"][0]["function"] == {"name": "get_time", "arguments": '{"city": "Paris"}'}


def test_chat_sends_tools_and_messages_as_given():
    engine = FakeEngine(["It is noon."])
    tools = [{"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}]
    messages = [{"role": "user", "content": "Time?"}, {"role": "tool", "tool_call_id": "c1", "content": "12:00"}]
    reply = backend_for(engine).runtime.complete_chat(messages, tools)
    assert engine.bodies[0]["tools"] == tools and engine.bodies[0]["messages"] == messages
    assert reply.text == "It is noon." and reply.tool_calls == []


def test_missing_usage_is_said_not_hidden():
    generation = run(backend_for(FakeEngine(usage=None)), "ocr", [sample_image()], options=GenerationOptions()).generation
    assert generation.prompt_tokens == 0 and any("no token usage" in note for note in generation.notes)


def test_an_error_event_mid_stream_is_one_sentence():
    with pytest.raises(EngineError, match="failed while answering: boom"):
        read_stream(sse({"choices": [{"index": 0, "delta": {"content": "x"}}]}, {"error": "boom"}).decode().splitlines())
    # transformers serve's own error events are not always valid JSON
    with pytest.raises(EngineError, match=r"failed while answering: .*Invalid prefix"):
        read_stream(['data: {"error": "Invalid prefix encountered while decoding "x""}'])
    with pytest.raises(EngineError, match="malformed stream event"):
        read_stream(["data: {nonsense"])


def piece(text: str) -> dict:
    return {"choices": [{"index": 0, "delta": {"content": text}}]}


FINISH = {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}


def usage(prompt: object = 10, completion: object = 2) -> dict:
    return {"choices": [], "usage": {"prompt_tokens": prompt, "completion_tokens": completion}}


@pytest.mark.parametrize(
    ("events", "expected"),
    [
        (['"hello"'], "malformed stream event"),
        (["[1, 2]"], "malformed stream event"),
        ([{"choices": "abc"}], "malformed stream event"),
        ([{"choices": [7]}], "malformed stream event"),
        ([{"choices": [{"index": 0, "delta": "text"}]}], "malformed stream event"),
        ([{"choices": [{"index": 0, "delta": {"content": 5}}]}], "malformed stream event"),
        ([{"choices": [{"index": 0, "delta": {}, "finish_reason": 3}]}], "malformed stream event"),
        ([{"choices": [{"index": 0, "delta": {"tool_calls": ["x"]}}]}], "malformed stream event"),
        ([{"choices": [{"index": 0, "delta": {"tool_calls": [{"index": [1]}]}}]}], "malformed stream event"),
        ([{"choices": [{"index": 0, "delta": {"tool_calls": [{"function": "f"}]}}]}], "malformed stream event"),
        ([{"choices": [], "usage": "lots"}], "malformed stream event"),
        ([], "without a completion"),
        ([{"choices": []}, usage()], "without a completion"),
        ([piece("a"), FINISH, usage(completion=1e308)], r"token usage that cannot be right \(completion_tokens 1e\+308\)"),
        ([piece("a"), FINISH, usage(completion=-3)], "completion_tokens -3"),
        ([piece("a"), FINISH, usage(completion=2.5)], "completion_tokens 2.5"),
        ([piece("a"), FINISH, usage(completion=True)], "completion_tokens true"),
        ([piece("a"), FINISH, usage(completion="7")], "completion_tokens"),
        ([piece("a"), FINISH, usage(completion=9)], "completion_tokens 9"),  # more than the 8 asked for
        ([piece("a"), FINISH, usage(prompt=-1)], "prompt_tokens -1"),
        ([piece("a"), FINISH, usage(prompt=10**12)], "prompt_tokens"),
    ],
)
def test_events_that_are_no_answer_are_refused_in_one_sentence(events, expected):
    with pytest.raises(EngineError, match=expected) as caught:
        read_stream(sse(*events).decode().splitlines(), max_tokens=8)
    one_sentence(caught.value)
    assert caught.value.param is None  # about the engine, never about an argument of the call


def counted(events: list[object], endless: object | None = None) -> tuple[list[str], list[int]]:
    """The lines of ``events``, then ``endless`` forever; and a list whose length is how many were read."""
    pulled: list[int] = []

    def lines():
        for line in sse(*events).decode().splitlines():
            pulled.append(1)
            yield line
        while endless is not None:
            for line in sse(endless).decode().splitlines():
                pulled.append(1)
                yield line

    return lines(), pulled


def test_pieces_past_max_new_tokens_are_not_read():
    lines, pulled = counted([], endless=piece("a "))
    reply = read_stream(lines, max_tokens=8)
    assert reply.text == "a " * 8 and reply.cut and reply.finish_reason == "length"
    assert len(pulled) == 2 * 9 - 1  # each event and its blank line, up to the ninth piece, which is not taken
    # An engine that keeps sending nothing once the pieces are in is cut off too.
    lines, pulled = counted([piece("a")] * 8, endless={"choices": []})
    reply = read_stream(lines, max_tokens=8)
    assert reply.cut and len(pulled) == 2 * (8 + TRAILING_EVENTS + 1) - 1


def test_an_answer_of_exactly_max_new_tokens_keeps_its_usage():
    lines, _ = counted([piece("a")] * 8 + [{"choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]},
                                           usage(completion=8), "[DONE]"])
    reply = read_stream(lines, max_tokens=8)
    assert not reply.cut and reply.finish_reason == "length" and reply.generated_tokens == 8


def test_a_cancelled_read_stops_at_the_next_event():
    stop = threading.Event()
    seen: list[str] = []

    def on_text(text: str) -> None:
        seen.append(text)
        if len(seen) == 3:
            stop.set()

    lines, _ = counted([], endless=piece("a"))
    with pytest.raises(Cancelled):
        read_stream(lines, on_text, stop=stop)
    assert len(seen) == 3


def test_a_cancelled_call_hangs_up_on_an_engine_that_has_not_answered_yet():
    """The engine holds the request without a byte of answer (a long prefill, a full queue): the cancel
    shuts the connection down, and the engine sees it. Before, the call waited for the read timeout."""
    got, closed = threading.Event(), threading.Event()
    with socket.create_server(("127.0.0.1", 0)) as listener:

        def hold() -> None:
            conn, _ = listener.accept()
            with conn:
                conn.settimeout(60)
                data = b""
                while b"\r\n\r\n" not in data:
                    data += conn.recv(65536)
                got.set()
                try:
                    while conn.recv(65536):
                        pass
                except OSError:
                    pass
                closed.set()

        threading.Thread(target=hold, daemon=True).start()
        settings = ApiSettings(base_url=f"http://127.0.0.1:{listener.getsockname()[1]}/v1", model="gemma", timeout_s=30)
        runtime = EngineRuntime(settings)
        stop = threading.Event()
        threading.Thread(target=lambda: got.wait(30) and stop.set(), daemon=True).start()
        with pytest.raises(Cancelled):
            runtime.complete({"model": "gemma", "messages": []}, options=GenerationOptions().with_cancel(stop))
        assert closed.wait(10)
        runtime.close()


@pytest.mark.parametrize(
    ("chunks", "lines"),
    [
        ([b"data: 1\n\ndata: 2\n"], ["data: 1", "", "data: 2"]),
        ([b"data: 1\r\n\r\ndata", b": 2\r", b"\n"], ["data: 1", "", "data: 2", ""]),
        ([b"da", b"ta", b": 3"], ["data: 3"]),
        ([b"data: \xc3", b"\xa9\n"], ["data: \u00e9"]),
    ],
)
def test_event_lines_are_split_across_chunks(chunks, lines):
    assert list(event_lines(chunks, 1000, lambda: EngineError("too large"))) == lines


def test_event_lines_stop_at_the_cap_without_holding_the_rest():
    pulled: list[int] = []

    def endless_line():
        while True:
            pulled.append(1)
            yield b"a" * 1000

    with pytest.raises(EngineError, match="too large"):
        list(event_lines(endless_line(), 10_000, lambda: EngineError("too large")))
    assert len(pulled) == 11


@pytest.mark.parametrize(
    ("chunks", "cap", "expected"),
    [([b"abc", b"def"], 10, (b"abcdef", False)), ([b"abc", b"def"], 6, (b"abcdef", False)),
     ([b"abc", b"def", b"never"], 4, (b"abcd", True)), ([], 4, (b"", False))],
)
def test_read_upto(chunks, cap, expected):
    assert read_upto(iter(chunks), cap) == expected


# -- errors -------------------------------------------------------------------------------

#: what vLLM 0.32 answers when started without --trust-request-mm-kwargs, and without a tool-call parser
VLLM_NO_BUDGETS = (
    "Per-request mm_processor_kwargs are disabled by default because they can change multimodal preprocessing "
    "resource usage. Start the server with --trust-request-mm-kwargs only when clients are trusted."
)
VLLM_NO_TOOLS = '"auto" tool choice requires --enable-auto-tool-choice and --tool-call-parser to be set'

HTTP_ERRORS = [
    (401, {"error": {"message": "Unauthorized"}}, EngineError, "needs an API key"),
    (404, {"error": {"message": "The model `gemma` does not exist.", "code": 404}}, ModelNotFound, "--api-model"),
    (400, {"detail": "Server is pinned to '/models/x'; requested 'gemma'."}, ModelNotFound, "--api-model"),
    (404, {"detail": "Not Found"}, EngineError, "ends in /v1"),
    (422, {"detail": "Unexpected fields in the request: {'mm_processor_kwargs'}"}, Unsupported, "--budgets-supported"),
    (400, {"error": {"message": "This model's maximum context length is 8192 tokens."}}, InvalidRequest, "too long"),
    (429, {"error": {"message": "queue full"}}, EngineUnavailable, "lower --max-concurrency"),
    (500, {"error": {"message": "CUDA error"}}, EngineUnavailable, "engine's log"),
    (400, {"error": {"message": "temperature too hot"}}, EngineError, "temperature too hot"),
    # vLLM's own words name its flags; the sentence names them as the engine's options, not as flags of ours
    (400, {"error": {"message": VLLM_NO_BUDGETS}}, Unsupported, "its trust-request-mm-kwargs option"),
    (400, {"error": {"message": VLLM_NO_TOOLS}}, Unsupported, "its enable-auto-tool-choice and tool-call-parser"),
]


@pytest.mark.parametrize(("status", "error", "kind", "expected"), HTTP_ERRORS, ids=[f"{e[0]}-{e[3]}" for e in HTTP_ERRORS])
def test_http_errors_become_one_actionable_sentence(monkeypatch, status, error, kind, expected):
    monkeypatch.delenv("VLM_AGENT_API_KEY", raising=False)
    with pytest.raises(kind) as caught:
        run(backend_for(FakeEngine(status=status, error=error)), "ocr", [sample_image()], options=GenerationOptions()).generation
    message = one_sentence(caught.value)
    # flags only in the command line's wording of the error; the core names the parameter
    assert expected in cli_words(caught.value) and URL in message
    assert "--" not in message


def test_an_engine_message_is_quoted_as_the_engines():
    # Its words may name its own flags: in quotes after "the engine says", never as advice of ours.
    error = {"error": {"message": 'Sampling "min_p" is off; start it with --enable-min-p.'}}
    with pytest.raises(EngineError) as caught:
        run(backend_for(FakeEngine(status=400, error=error)), "ocr", [sample_image()], options=GenerationOptions()).generation
    message = one_sentence(caught.value)
    assert message.endswith("""(HTTP 400, the engine says "Sampling 'min_p' is off; start it with --enable-min-p.").""")


def test_timeout_is_an_engine_unavailable_sentence():
    def slow(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    backend = on_engine(EngineRuntime(ApiSettings(base_url=URL, model="gemma", timeout_s=2), transport=httpx.MockTransport(slow)))
    with pytest.raises(EngineUnavailable, match=r"within 2 s") as caught:
        run(backend, "ocr", [sample_image()], options=GenerationOptions()).generation
    assert caught.value.param == "api_timeout" and "--api-timeout" in cli_words(caught.value)


def test_unreachable_engine_is_named_on_each_call():
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    backend = on_engine(EngineRuntime.connect(ApiSettings(base_url=f"http://127.0.0.1:{port}/v1", model="gemma")))
    with pytest.raises(EngineUnavailable) as caught:
        run(backend, "ocr", [sample_image()], options=GenerationOptions()).generation
    assert "Cannot reach the engine" in one_sentence(caught.value) and "--base-url" in cli_words(caught.value)


def test_an_engine_that_comes_up_later_is_used_then():
    engine = FakeEngine()
    up = threading.Event()

    def starting(request: httpx.Request) -> httpx.Response:
        if not up.is_set():
            raise httpx.ConnectError("[Errno 111] Connection refused", request=request)
        return engine(request)

    backend = on_engine(EngineRuntime.connect(ApiSettings(base_url=URL, model="gemma"), transport=httpx.MockTransport(starting)))
    with pytest.raises(EngineUnavailable, match="Cannot reach"):
        run(backend, "ocr", [sample_image()], options=GenerationOptions()).generation
    up.set()
    assert run(backend, "ocr", [sample_image()], options=GenerationOptions()).generation.text == "A red square."


def test_connect_checks_the_model_against_the_engines_list():
    settings = ApiSettings(base_url=URL, model="gemma")
    with pytest.raises(ModelNotFound, match="serves google/gemma-4-E4B-it, not 'gemma'"):
        EngineRuntime.connect(settings, transport=httpx.MockTransport(FakeEngine(models=["google/gemma-4-E4B-it"])))
    EngineRuntime.connect(settings, transport=httpx.MockTransport(FakeEngine(models=["gemma"])))
    EngineRuntime.connect(settings, transport=httpx.MockTransport(FakeEngine(models=[])))  # says nothing


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({"base_url": "engine:8000"}, r"http\(s\) URL"),
        ({"model": " "}, "--api-model"),
        ({"max_concurrency": 0}, "--max-concurrency"),
        ({"timeout_s": 0}, "--api-timeout"),
    ],
)
def test_bad_settings_are_refused(settings, expected):
    with pytest.raises(InvalidRequest) as caught:
        ApiSettings(**{"base_url": URL, "model": "gemma", **settings})
    assert re.search(expected, cli_words(caught.value))


def test_a_bare_host_gets_v1():
    assert ApiSettings(base_url="http://gpu:8000", model="m").root == "http://gpu:8000/v1"
    assert ApiSettings(base_url="http://gpu:11434/v1/", model="m").root == "http://gpu:11434/v1"


# -- through Vision -------------------------------------------------------------------------


def test_detect_parses_the_engines_boxes_with_the_gemma4_parser(png):
    vision = vision_for(backend_for(FakeEngine([BOX_ANSWER])), png)
    result = vision.detect(str(png), ["cat"])
    assert [(d.label, d.box) for d in result.detections] == [("cat", (19, 6, 58, 32))]
    assert (result.family, result.runtime) == ("gemma4", "engine")
    assert result.image_tokens is None and result.model == "gemma"


def test_budget_without_declared_support_is_refused(png):
    vision = vision_for(backend_for(FakeEngine()), png)
    with pytest.raises(InvalidRequest) as refused:
        vision.ocr(str(png), budget=280)
    assert "--budgets-supported" in cli_words(refused.value)
    with pytest.raises(Unsupported) as caught:
        vision.compare_budgets(str(png), "ocr", budgets=[70, 280])
    assert "--budgets-supported" in cli_words(caught.value)
    one_sentence(caught.value)


def test_compare_refuses_an_engine_that_ignored_the_budgets(png):
    vision = vision_for(backend_for(FakeEngine(), budgets=True), png)
    with pytest.raises(Unsupported, match="ignored the budget") as caught:
        vision.compare_budgets(str(png), "describe", budgets=[70, 280, 1120])
    one_sentence(caught.value)


def test_compare_sends_its_budgets_concurrently_up_to_the_limit(png):
    engine = FakeEngine(delay=0.3, tokens_per_budget=True)
    vision = vision_for(backend_for(engine, budgets=True, max_concurrency=3), png)
    progress: list[tuple[int, int, str]] = []
    started = time.perf_counter()
    result = vision.compare_budgets(str(png), "ocr", progress=lambda *p: progress.append(p))
    elapsed = time.perf_counter() - started
    assert engine.max_in_flight == 3 and elapsed < 5 * 0.3  # serial would take 1.5 s
    assert [run.budget for run in result.runs] == [70, 140, 280, 560, 1120]
    assert [run.prompt_tokens for run in result.runs] == [90, 160, 300, 580, 1140]
    assert all(run.image_tokens is None for run in result.runs)
    assert result.runs[0].seen_size == list(gemma4_seen_size((96, 64), 70))
    assert [d for d, _, _ in progress] == [0, 1, 2, 3, 4, 5] and progress[-1][2] == "done"


def test_the_concurrency_limit_holds_across_callers(png):
    engine = FakeEngine(delay=0.2)
    vision = vision_for(backend_for(engine, max_concurrency=2), png)
    threads = [threading.Thread(target=vision.ocr, args=(str(png),)) for _ in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert engine.max_in_flight == 2 and len(engine.bodies) == 5


def test_segment_says_to_use_the_local_backend():
    with pytest.raises(Unsupported, match="local backend"):
        boxes(run(backend_for(FakeEngine()), "segment", [sample_image()], labels=["cat"], options=GenerationOptions()))


# -- command line ---------------------------------------------------------------------------


def test_cli_describe_through_an_engine(monkeypatch, png, capsys):
    engine = FakeEngine(["Two ", "squares."])
    monkeypatch.setattr(
        EngineRuntime, "connect", classmethod(lambda cls, settings: cls(settings, transport=httpx.MockTransport(engine)))
    )
    code = main(["describe", str(png), "--backend", "openai", "--base-url", URL, "--api-model", "gemma", "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    result = json.loads(out)
    assert (result["text"], result["family"], result["runtime"], result["image_tokens"], result["model"]) == (
        "Two squares.", "gemma4", "engine", None, "gemma"
    )
    assert f"connecting to gemma at {URL}" in err
    code = main(["ocr", str(png), "--backend", "openai", "--base-url", URL, "--api-model", "gemma"])
    out, err = capsys.readouterr()
    assert code == 0 and "image tokens unknown" in err.splitlines()[-1]  # the engine does not say


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--backend", "openai"], "needs --base-url"),
        (["--base-url", URL], "needs --backend openai"),
        (["--backend", "openai", "--base-url", URL, "--quantize", "4bit"], "engine chooses its own weights"),
        (["--backend", "openai", "--base-url", URL, "--max-concurrency", "0"], "--max-concurrency"),
    ],
)
def test_cli_engine_flags_are_checked_before_anything_runs(png, capsys, argv, expected):
    code = main(["describe", str(png), *argv])
    err = capsys.readouterr().err
    assert code == 1 and expected in err and len(err.strip().splitlines()) == 1


def test_errors_are_vlm_errors():
    assert issubclass(EngineError, VlmError) and issubclass(EngineUnavailable, VlmError)


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_the_mcp_server_sends_concurrent_calls_to_the_engine_together(anyio_backend, png):
    import anyio
    from mcp import Client

    from mcp_server.server import Settings, build_server

    engine = FakeEngine(delay=0.3)
    backend = backend_for(engine, max_concurrency=3)
    settings = Settings(model="gemma", allow_dirs=[str(png.parent)], out_dir=png.parent / "out")
    server = build_server(settings, load=lambda *args, **kwargs: backend)
    results = []
    async with Client(server) as client:

        async def one() -> None:
            results.append(await client.call_tool("describe", {"images": [str(png)]}))

        async with anyio.create_task_group() as group:
            for _ in range(3):
                group.start_soon(one)
    assert [r.is_error for r in results] == [False] * 3
    assert engine.max_in_flight == 3
    assert "image tokens" not in results[0].content[0].text  # unknown, so not claimed


def test_serve_passes_the_engine_settings_to_the_server(monkeypatch):
    import mcp_server.server as server_module

    seen = {}

    class Quiet:
        def run(self) -> None:
            pass

    def build(settings):
        seen["settings"] = settings
        return Quiet()

    monkeypatch.setattr(server_module, "build_server", build)
    argv = ["serve", "--backend", "openai", "--base-url", "http://gpu:8000", "--model", "google/gemma-4-E4B-it",
            "--budgets-supported", "--max-concurrency", "8", "--api-key-env", "PATH"]
    assert main(argv) == 0
    api = seen["settings"].api
    assert (api.root, api.model, api.budgets, api.max_concurrency, api.key_env) == (
        "http://gpu:8000/v1", "google/gemma-4-E4B-it", True, 8, "PATH"
    )


# -- the engine runtime carries any dialect that writes chat messages ---------------------------


def test_the_engine_runtime_knows_no_family():
    import tools.runtimes.engine as engine_module
    import tools.runtimes.replies as replies_module

    for module in (engine_module, replies_module):
        source = Path(module.__file__).read_text().lower()
        assert "gemma" not in source.replace("google/gemma-4", "") and "box_2d" not in source, module


def test_another_familys_dialect_runs_on_the_engine_unchanged():
    from tools.families.base import Dialect, chat_messages
    from tools.tasks import Ask, Capabilities, Prompt

    class Terse(Dialect):
        """A made-up family: its own wording, no budgets, one image per prompt."""

        family, display_name, model_types, prompt_form = "terse", "Terse", ("terse",), "messages"
        tasks = frozenset({"describe", "ocr"})

        @classmethod
        def from_config(cls, config) -> Capabilities:
            return cls.declared(budgets=False)

        @classmethod
        def declared(cls, *, budgets: bool) -> Capabilities:
            return Capabilities(tasks=cls.tasks, context_policy="chat-template", max_images=1)

        def prompt(self, ask: Ask, count_tokens=None) -> Prompt:
            text = "Transcribe." if ask.task == "ocr" else ask.prompt or "Caption."
            return Prompt(images=list(ask.images), messages=chat_messages(ask.images, text, ask.history),
                          history_turns=len(ask.history), notes=["terse"])

    engine = FakeEngine(["short"])
    runtime = EngineRuntime(ApiSettings(base_url=URL, model="terse-1", family="terse"), transport=httpx.MockTransport(engine))
    model = Model(Terse.for_engine(budgets=False), runtime)
    answer = run(model, "ocr", [sample_image()], options=GenerationOptions(max_new_tokens=3))
    body = engine.bodies[0]
    assert body["messages"][0]["content"][-1] == {"type": "text", "text": "Transcribe."}
    assert "mm_processor_kwargs" not in body and answer.generation.text == "short"
    assert answer.generation.notes[0] == "terse" and model.family == "terse"
    with pytest.raises(Unsupported, match="Terse models cannot detect objects"):
        run(model, "detect", [sample_image()], labels=["cat"])
    with pytest.raises(Unsupported, match="Terse takes 1 image per prompt"):
        run(model, "describe", [sample_image(), sample_image()])


def test_a_family_without_a_chat_template_is_refused_for_an_engine_before_connecting():
    from tools.model import plan

    for family in ("paligemma", "blip2"):
        with pytest.raises(Unsupported, match="no chat template"):
            plan(api=ApiSettings(base_url=URL, model="m", family=family))
