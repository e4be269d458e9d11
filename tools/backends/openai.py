"""A model served elsewhere, behind an OpenAI-compatible chat-completions API.

vLLM, SGLang, Ollama and ``transformers serve`` all speak this API. The engine owns the
weights, the GPUs and the batching; this backend only speaks HTTP. It sends Gemma 4's task
prompts as chat messages (images as ``image_url`` parts), streams the answer back as
server-sent events, and parses it with the same parsers as local output, so results keep
their shape. What only the engine knows is reported as unknown rather than guessed: the
image-token count, for one, which no engine returns.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx
from PIL import Image

from .. import prompts
from ..budgets import DEFAULT_BUDGET, GEMMA4_BUDGETS, check_budget, gemma4_seen_size
from ..detections import GEMMA4_GRID, ParsedDetections, from_box_2d_json
from ..errors import EngineError, EngineUnavailable, InvalidRequest, ModelNotFound, Unsupported, VlmError
from ..images import source_url
from ..options import GenerationOptions
from ..streaming import current_sink
from ..toolcalls import ParsedReply
from ..toolcalls import ToolCall as ParsedCall
from .base import Backend, Generation, Stopwatch, Turn, cut_note
from .gemma4 import build_messages

log = logging.getLogger("vlm_agent")

DEFAULT_KEY_ENV = "VLM_AGENT_API_KEY"
MAX_CONCURRENCY_LIMIT = 64
#: seconds to open a connection; the read timeout (ApiSettings.timeout_s) is separate,
#: since a busy engine may take long to start answering but should accept at once
CONNECT_TIMEOUT_S = 10.0
#: longest engine message quoted in an error
DETAIL_CHARS = 200


@dataclass(frozen=True)
class ApiSettings:
    """How to reach the engine and what it accepts."""

    #: the API root as OpenAI clients take it, e.g. http://gpu-box:8000/v1 (a bare host gets /v1)
    base_url: str
    #: the model name the engine serves it under (vLLM: the hub id, or --served-model-name)
    model: str
    #: environment variable holding the API key; None reads VLM_AGENT_API_KEY if it is set
    key_env: str | None = None
    #: the engine takes Gemma 4 budgets per request (vLLM's mm_processor_kwargs)
    budgets: bool = False
    #: requests in flight to the engine at once, over all callers
    max_concurrency: int = 4
    #: seconds to wait for the engine's next bytes
    timeout_s: float = 300.0
    #: send images that came from an http(s) URL as that URL, for the engine to fetch
    send_urls: bool = False
    #: more JSON fields for every request, for engine-specific options
    #: (``{"chat_template_kwargs": {...}}``, ``{"top_k": 20}``, ``{"logit_bias": {...}}``)
    extra_body: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        parts = urlsplit(self.base_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise InvalidRequest(
                f"--base-url must be an http(s) URL such as http://127.0.0.1:8000/v1, got {self.base_url!r}."
            )
        if not self.model.strip():
            raise InvalidRequest("Name the model the engine serves with --api-model.")
        if not 1 <= self.max_concurrency <= MAX_CONCURRENCY_LIMIT:
            raise InvalidRequest(
                f"--max-concurrency must be between 1 and {MAX_CONCURRENCY_LIMIT}, got {self.max_concurrency}."
            )
        if not self.timeout_s > 0:
            raise InvalidRequest(f"--api-timeout must be above 0 seconds, got {self.timeout_s:g}.")

    @property
    def root(self) -> str:
        """The API root without a trailing slash; a bare host means the usual /v1."""
        url = self.base_url.rstrip("/")
        return url if urlsplit(url).path else url + "/v1"

    def api_key(self) -> str | None:
        """The key from the environment; a variable named explicitly must be set."""
        name = self.key_env or DEFAULT_KEY_ENV
        key = os.environ.get(name) or None
        if self.key_env and key is None:
            raise InvalidRequest(f"--api-key-env names ${name}, which is not set or empty.")
        return key


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    #: JSON text, as the API carries it
    arguments: str


@dataclass
class Reply:
    """One chat completion, assembled from its stream."""

    text: str
    tool_calls: list[ToolCall] = field(default_factory=list)
    #: stop, length, tool_calls, or None when the engine did not say
    finish_reason: str | None = None
    #: None when the engine reported no usage
    prompt_tokens: int | None = None
    generated_tokens: int | None = None

    def message(self) -> dict[str, Any]:
        """This reply as an assistant message, to send back with the next turn."""
        message: dict[str, Any] = {"role": "assistant", "content": self.text}
        if self.tool_calls:
            message["tool_calls"] = [
                {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}}
                for call in self.tool_calls
            ]
        return message


def one_line(text: str, limit: int = DETAIL_CHARS) -> str:
    text = " ".join("".join(c if c.isprintable() else " " for c in text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def error_detail(body: bytes | str) -> str:
    """The engine's own explanation, from the error shapes engines use."""
    try:
        data = json.loads(body)
    except ValueError:
        return body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    candidates: list[Any] = []
    if isinstance(data, dict):
        error = data.get("error")
        candidates += [error.get("message") if isinstance(error, dict) else error, data.get("detail"), data.get("message")]
    for found in candidates:
        if isinstance(found, list) and found and isinstance(found[0], dict):
            found = found[0].get("msg")  # FastAPI validation errors
        if isinstance(found, str) and found.strip():
            return found
    return json.dumps(data)[:DETAIL_CHARS]


def read_stream(lines: Iterable[str], on_text: Callable[[str], None] | None = None) -> Reply:
    """A reply from server-sent ``data:`` events; text is handed to ``on_text`` as it arrives.

    Tool calls come in pieces keyed by index (name first, arguments in fragments), and the
    usage in a last chunk with no choices. Some engines end with ``data: [DONE]``, some just close.
    """
    text: list[str] = []
    calls: dict[int, dict[str, str]] = {}
    reply = Reply(text="")
    for line in lines:
        if not line.startswith("data:"):
            continue  # blank separators, ": keep-alive" comments, event names
        data = line[5:].strip()
        if data == "[DONE]":
            break
        try:
            chunk = json.loads(data)
        except ValueError:
            # transformers serve writes its error events unescaped, so they may not parse.
            if '"error"' in data:
                raise EngineError(f"The engine failed while answering: {one_line(data)}") from None
            raise EngineError(f"The engine sent a malformed stream event ({one_line(data, 60)}).") from None
        if not isinstance(chunk, dict):
            continue
        if "error" in chunk:
            raise EngineError(f"The engine failed while answering: {one_line(error_detail(data))}")
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            reply.prompt_tokens = usage.get("prompt_tokens")
            reply.generated_tokens = usage.get("completion_tokens")
        for choice in chunk.get("choices") or []:
            if choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or choice.get("message") or {}
            piece = delta.get("content")
            if piece:
                text.append(piece)
                if on_text is not None:
                    on_text(piece)
            for part in delta.get("tool_calls") or []:
                slot = calls.setdefault(part.get("index", len(calls)), {"id": "", "name": "", "arguments": ""})
                function = part.get("function") or {}
                slot["id"] = part.get("id") or slot["id"]
                slot["name"] = slot["name"] or function.get("name") or ""
                slot["arguments"] += function.get("arguments") or ""
            reply.finish_reason = choice.get("finish_reason") or reply.finish_reason
    reply.text = "".join(text)
    reply.tool_calls = [ToolCall(**calls[index]) for index in sorted(calls)]
    return reply


def stream_pieces() -> Callable[[str], None] | None:
    """The caller's stream sink (tools.streaming), fed piece by piece; the engine sends no token ids."""
    sink = current_sink()
    if sink is None:
        return None
    count = 0

    def on_text(piece: str) -> None:
        nonlocal count
        count += 1  # one streamed chunk is about one token on vLLM and transformers serve
        sink(piece, count)

    return on_text


def png_data_uri(image: Image.Image) -> str:
    buffer = io.BytesIO()
    # Lossless, so small print reads the same as it would locally; level 3 trades a little
    # size for much less CPU than the default on photos.
    image.save(buffer, format="PNG", compress_level=3)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def api_content(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Text-only turns as plain strings: every engine takes those, not all take part lists there."""
    for message in messages:
        parts = message["content"]
        if all(part["type"] == "text" for part in parts):
            message["content"] = "".join(part["text"] for part in parts)
    return messages


class OpenAIBackend(Backend):
    """Gemma 4's tasks over an engine's /chat/completions, requests sent concurrently."""

    family = "openai"
    #: read mid-sentence ("not available for the OpenAI-compatible engine")
    display_name = "the OpenAI-compatible engine"
    concurrent = True

    def __init__(self, settings: ApiSettings, transport: httpx.BaseTransport | None = None) -> None:
        super().__init__(settings.model)
        self.settings = settings
        self.url = settings.root
        self.max_concurrency = settings.max_concurrency
        # Instance values over the class's empty defaults: whether budgets exist depends on the engine.
        self.budgets = GEMMA4_BUDGETS if settings.budgets else ()  # type: ignore[misc]
        self.default_budget = DEFAULT_BUDGET if settings.budgets else None  # type: ignore[misc]
        self._key = settings.api_key()
        self._key_name = settings.key_env or DEFAULT_KEY_ENV
        self._slots = threading.BoundedSemaphore(settings.max_concurrency)
        self._client = httpx.Client(
            base_url=self.url,
            headers={"Authorization": f"Bearer {self._key}"} if self._key else {},
            timeout=httpx.Timeout(settings.timeout_s, connect=CONNECT_TIMEOUT_S),
            limits=httpx.Limits(max_connections=settings.max_concurrency),
            # The engine's address is given explicitly; a proxy from the environment would
            # reroute loopback and cluster-internal addresses.
            trust_env=False,
            transport=transport,
        )

    @classmethod
    def connect(cls, settings: ApiSettings, transport: httpx.BaseTransport | None = None) -> OpenAIBackend:
        """A backend for the engine, refused when the engine lists its models without ours or
        refuses the key. An engine not up yet is only logged: a server started beside it (vLLM
        takes minutes to load) must work once it is, and each call until then says it is down."""
        backend = cls(settings, transport)
        try:
            backend.check_model()
        except EngineUnavailable as exc:
            # INFO: the server shows it; a one-shot command fails with the same sentence anyway.
            log.info("not reachable yet: %s", exc)
        except VlmError:
            backend.close()
            raise
        return backend

    def close(self) -> None:
        self._client.close()

    @property
    def device(self) -> str:
        return self.url

    def seen_size(self, size: tuple[int, int], budget: int | None) -> tuple[int, int]:
        if not self.budgets:
            return size
        return gemma4_seen_size(size, self.default_budget if budget is None else budget)

    def no_budgets_reason(self) -> str:
        return (
            f"The engine at {self.url} was not declared to take visual-token budgets, so every budget "
            "would give the same run; if it serves Gemma 4 on vLLM (which takes mm_processor_kwargs), "
            "restart vlm-agent with --budgets-supported."
        )

    # -- the four tasks -----------------------------------------------------------

    def describe(
        self,
        images: Sequence[Image.Image],
        prompt: str,
        history: Sequence[Turn],
        budget: int | None,
        options: GenerationOptions,
    ) -> Generation:
        return self.run(images, prompts.gemma4_describe(prompt, len(images)), history, budget, options)

    def ocr(self, image: Image.Image, budget: int | None, options: GenerationOptions) -> Generation:
        return self.run([image], prompts.GEMMA4_OCR, (), budget, options)

    def detect(
        self, image: Image.Image, labels: Sequence[str], budget: int | None, options: GenerationOptions
    ) -> tuple[Generation, ParsedDetections]:
        generation = self.run([image], prompts.gemma4_detect(labels), (), budget, options)
        return generation, from_box_2d_json(generation.text, image.size, grid=GEMMA4_GRID)

    def segment(
        self, image: Image.Image, label: str, budget: int | None, options: GenerationOptions
    ) -> tuple[Generation, ParsedDetections]:
        raise Unsupported(
            "Segmenting needs PaliGemma's mask codes, which a chat-completions engine cannot serve; "
            "use the local backend with a PaliGemma model."
        )

    def run(
        self,
        images: Sequence[Image.Image],
        text: str,
        history: Sequence[Turn],
        budget: int | None,
        options: GenerationOptions,
    ) -> Generation:
        """One task prompt with its images and prior turns, timed on this side of the wire."""
        budget = self.check_budget(budget)
        watch = Stopwatch()
        messages = api_content(build_messages(images, text, history, self.image_part))
        body = self.body(messages, options, budget)
        preprocess_ms = watch.lap()
        reply = self.complete(body, stream_pieces())
        return self.generation(reply, budget, len(history), options, preprocess_ms, watch)

    @staticmethod
    def generation(
        reply: Reply, budget: int | None, history_turns: int, options: GenerationOptions, preprocess_ms: float,
        watch: Stopwatch,
    ) -> Generation:
        """A completed reply as the core's Generation; counts from the engine's usage report."""
        generate_ms = watch.lap()
        generation = Generation(
            text=reply.text.strip(),
            image_tokens=None,
            prompt_tokens=reply.prompt_tokens or 0,
            generated_tokens=reply.generated_tokens or 0,
            finish_reason="length" if reply.finish_reason == "length" else "stop",
            budget=budget,
            history_turns=history_turns,
        )
        generation.timings.preprocess_ms = preprocess_ms
        generation.timings.generate_ms = generate_ms
        generation.timings.total_ms = watch.total()
        if reply.prompt_tokens is None or reply.generated_tokens is None:
            generation.notes.append("the engine reported no token usage, so the token counts read 0")
        if generation.finish_reason == "length":
            generation.notes.append(cut_note(options.max_new_tokens))
        return generation

    def complete_chat(
        self,
        messages: Sequence[Mapping[str, Any]],
        tools: Sequence[Mapping[str, Any]] | None = None,
        options: GenerationOptions | None = None,
        budget: int | None = None,
    ) -> Reply:
        """One turn of a conversation already in the API's form, with ``tools`` the model may call.

        The reply holds text or tool calls; send ``reply.message()`` and a ``{"role": "tool",
        "tool_call_id": ..., "content": ...}`` message per call back for the model's next turn.
        """
        options = options or GenerationOptions()
        body = self.body(list(messages), options, self.check_budget(budget), tools)
        return self.complete(body, stream_pieces())

    def chat(
        self,
        images: Sequence[Image.Image],
        prompt: str,
        history: Sequence[Turn],
        budget: int | None,
        options: GenerationOptions,
    ) -> tuple[Generation, ParsedReply]:
        """The chat agent's turn: the engine's own function calling over the vision tools."""
        watch = Stopwatch()
        budget = self.check_budget(budget)
        messages = [
            {"role": "system", "content": prompts.CHAT_SYSTEM},
            *api_content(build_messages(images, prompt, history, self.image_part)),
        ]
        preprocess_ms = watch.lap()
        reply = self.complete(self.body(messages, options, budget, prompts.CHAT_TOOLS), stream_pieces())
        generation = self.generation(reply, budget, len(history), options, preprocess_ms, watch)
        calls, invalid = [], []
        for call in reply.tool_calls:
            try:
                arguments = json.loads(call.arguments or "{}")
            except json.JSONDecodeError:
                invalid.append(f"unreadable arguments for {call.name}")
                continue
            if isinstance(arguments, dict):
                calls.append(ParsedCall(call.name, arguments))
            else:
                invalid.append(f"arguments for {call.name} are not an object")
        return generation, ParsedReply(text=reply.text.strip(), calls=calls, invalid=invalid)

    # -- the wire -----------------------------------------------------------------

    def check_budget(self, budget: int | None) -> int | None:
        if budget is None:
            return self.default_budget
        if not self.budgets:
            raise InvalidRequest(
                f"The engine at {self.url} was not declared to take visual-token budgets; give no budget (no --budget flag, no budget argument), "
                "or restart vlm-agent with --budgets-supported if it serves Gemma 4 on vLLM."
            )
        return check_budget(budget, self.budgets, self.display_name)

    def image_part(self, image: Image.Image) -> dict[str, Any]:
        url = source_url(image) if self.settings.send_urls else None
        return {"type": "image_url", "image_url": {"url": url or png_data_uri(image)}}

    def body(
        self,
        messages: list[Any],
        options: GenerationOptions,
        budget: int | None,
        tools: Sequence[Mapping[str, Any]] | None = None,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.settings.model,
            "messages": messages,
            "stream": True,
            "stream_options": {"include_usage": True},
            "max_tokens": options.max_new_tokens,
            "temperature": options.temperature,
        }
        if not options.greedy:
            body["top_p"] = options.top_p
        if options.min_new_tokens is not None:
            body["min_tokens"] = options.min_new_tokens  # vLLM's name; benchmarks only
        if budget is not None:
            # vLLM hands these to the model's processor per request, as max_soft_tokens locally.
            body["mm_processor_kwargs"] = {"max_soft_tokens": budget}
        if tools:
            body["tools"] = list(tools)
        body.update(self.settings.extra_body)
        return body

    def complete(self, body: Mapping[str, Any], on_text: Callable[[str], None] | None = None) -> Reply:
        """POST one streamed chat completion; every failure becomes a one-line VlmError."""
        with self._slots:
            try:
                with self._client.stream("POST", "/chat/completions", json=body) as response:
                    if response.status_code >= 400:
                        raise self.http_error(response.status_code, response.read())
                    if response.headers.get("content-type", "").startswith("application/json"):
                        # An engine (or a proxy) that ignored stream: true answers in one piece.
                        return read_stream(["data: " + response.read().decode("utf-8", "replace")], on_text)
                    return read_stream(response.iter_lines(), on_text)
            except httpx.TimeoutException:
                raise EngineUnavailable(
                    f"The engine at {self.url} did not answer within {self.settings.timeout_s:g} s; it may be "
                    "overloaded or still loading its model: retry, or allow longer with --api-timeout."
                ) from None
            except httpx.HTTPError as exc:
                raise self.transport_error(exc) from None

    def check_model(self) -> None:
        """Fail early when the engine is down or lists its models without ours."""
        try:
            response = self._client.get("/models")
        except httpx.HTTPError as exc:
            raise self.transport_error(exc) from None
        if response.status_code in (401, 403):
            raise self.http_error(response.status_code, response.content)
        served: list[str] = []
        if response.status_code == 200:
            try:
                served = [str(m["id"]) for m in response.json().get("data", []) if isinstance(m, dict) and "id" in m]
            except (ValueError, AttributeError):
                served = []
        # An empty list says nothing: transformers serve lists only its hub cache, not the
        # directory it was started on.
        if served and self.settings.model not in served:
            listed = ", ".join(served[:5]) + (", …" if len(served) > 5 else "")
            raise ModelNotFound(
                f"The engine at {self.url} serves {listed}, not '{self.settings.model}'; "
                "pass one of those with --api-model."
            )
        log.info("engine at %s: %s", self.url, "serves " + ", ".join(served) if served else "answers")

    def transport_error(self, error: httpx.HTTPError) -> EngineUnavailable:
        if isinstance(error, httpx.ConnectError):
            return EngineUnavailable(
                f"Cannot reach the engine at {self.url} ({self.redact(one_line(str(error), 80))}); "
                "check that it is running and that --base-url is right."
            )
        return EngineUnavailable(
            f"The connection to the engine at {self.url} broke off ({self.redact(one_line(str(error), 80))}); "
            "retry, and check the engine's log if it keeps happening."
        )

    def http_error(self, status: int, content: bytes) -> VlmError:
        """The error that says what to change, from the engine's status and message."""
        detail = self.redact(one_line(error_detail(content)))
        lower = detail.lower()
        where = f"The engine at {self.url}"
        if status in (401, 403):
            if self._key is None:
                return EngineError(
                    f"{where} needs an API key (HTTP {status}); put it in ${DEFAULT_KEY_ENV} "
                    "or name its variable with --api-key-env."
                )
            return EngineError(f"{where} refused the API key in ${self._key_name} (HTTP {status}); set a key it accepts.")
        if "mm_processor_kwargs" in detail:
            return Unsupported(
                f"{where} does not take per-request budgets (HTTP {status}: {detail}); "
                "restart vlm-agent without --budgets-supported."
            )
        # vLLM: "The model `x` does not exist."; Ollama: 'model "x" not found'; transformers serve:
        # "Server is pinned to ...; requested 'x'". A bare "Not Found" is a wrong URL instead.
        if status in (400, 404) and (
            self.settings.model in detail or "does not exist" in lower or ("model" in lower and "not found" in lower)
        ):
            return ModelNotFound(
                f"{where} does not serve model '{self.settings.model}' (HTTP {status}: {detail}); "
                "pass the name it serves with --api-model."
            )
        if "context length" in lower or "too long" in lower:
            return InvalidRequest(
                f"{where} says the prompt is too long (HTTP {status}: {detail}); use fewer images, a lower "
                "budget, a shorter history or a smaller max_new_tokens."
            )
        if status == 404:
            return EngineError(
                f"{where} has no chat-completions endpoint (HTTP 404); check --base-url, which usually ends in /v1."
            )
        if status == 429 or status >= 500:
            return EngineUnavailable(
                f"{where} could not take the request (HTTP {status}: {detail}); retry, lower --max-concurrency, "
                "or check the engine's log."
            )
        return EngineError(f"{where} refused the request (HTTP {status}: {detail}).")

    def redact(self, text: str) -> str:
        # An engine that echoes headers must not get the key into a message.
        return text.replace(self._key, "***") if self._key else text
