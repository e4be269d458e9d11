"""The engine runtime: a model served elsewhere, behind an OpenAI-compatible chat-completions API.

vLLM, SGLang, Ollama and ``transformers serve`` all speak this API. The engine owns the
weights, the GPUs and the batching; this runtime only speaks HTTP. It carries any family
whose dialect writes chat messages: it sends them (images as ``image_url`` parts, the budget's
processor arguments as ``mm_processor_kwargs``), streams the answer back as server-sent
events, and hands it to the dialect's parsers, so results keep their shape. What only the
engine knows is reported as unknown rather than guessed: the image-token count, for one,
which no engine returns.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import httpx

from .. import cancel, scope
from ..errors import EngineError, EngineUnavailable, InvalidRequest, ModelNotFound, Unsupported, VlmError
from ..inputs import ImageInput
from ..options import GenerationOptions
from ..tasks import Generation, Prompt, Stopwatch, cut_note
from ..toolcalls import ParsedReply
from .api import CONSTRAINT_FIELDS, DEFAULT_KEY_ENV, ApiSettings, api_messages, png_data_uri, structured_output
from .base import Runtime
from .cache import MiB, BytesLRU
from .replies import (
    MAX_ANSWER_BYTES,
    MAX_ERROR_BYTES,
    MAX_LIST_BYTES,
    Connection,
    Reply,
    error_detail,
    event_lines,
    one_line,
    read_stream,
    read_upto,
    stopped,
    stream_pieces,
    uncompressed,
)

if TYPE_CHECKING:
    from ..extract.schema import Schema

log = logging.getLogger("vlm_agent")

#: bytes of PNG data: URIs kept for the images of recent calls
DATA_URI_CACHE_BYTES = 64 * MiB
#: seconds to open a connection; the read timeout (ApiSettings.timeout_s) is separate,
#: since a busy engine may take long to start answering but should accept at once
CONNECT_TIMEOUT_S = 10.0


class StructuredOutputRefused(EngineError):
    """The engine refused the structured-output field (it has no constrained decoding)."""


class EngineRuntime(Runtime):
    """Prompts as chat completions on an engine's /chat/completions, requests sent concurrently."""

    kind = "engine"
    concurrent = True

    def __init__(self, settings: ApiSettings, transport: httpx.BaseTransport | None = None) -> None:
        super().__init__(settings.model)
        self.settings = settings
        self.url = settings.root
        self.max_concurrency = settings.max_concurrency
        self._key = settings.api_key()
        self._key_name = settings.key_env or DEFAULT_KEY_ENV
        self._slots = threading.BoundedSemaphore(settings.max_concurrency)
        #: structured outputs asked for: on unless turned off, or the user's extra_body constrains the
        #: answer itself; off for good once the engine refuses the field
        self.structured = settings.structured and not CONSTRAINT_FIELDS.intersection(settings.extra_body)
        # Each image's data: URI, by content hash: a conversation sends its images again every turn, and
        # the same bytes each time keep the engine's prefix and multimodal caches hitting.
        self._uris: BytesLRU[tuple[str | None, str], str] = BytesLRU(DATA_URI_CACHE_BYTES)
        self._client = httpx.Client(
            base_url=self.url,
            # Bodies are read as sent and counted against their caps: a compressed one could expand
            # past a cap inside one chunk.
            headers={"Accept-Encoding": "identity", **({"Authorization": f"Bearer {self._key}"} if self._key else {})},
            timeout=httpx.Timeout(settings.timeout_s, connect=CONNECT_TIMEOUT_S),
            # A connection per request (none kept alive): the request knows its own socket, so a
            # cancelled call can hang up on the engine even before the answer's first byte.
            limits=httpx.Limits(max_connections=settings.max_concurrency, max_keepalive_connections=0),
            # The engine's address is given explicitly; a proxy from the environment would
            # reroute loopback and cluster-internal addresses.
            trust_env=False,
            follow_redirects=False,
            transport=transport,
        )

    @classmethod
    def connect(cls, settings: ApiSettings, transport: httpx.BaseTransport | None = None) -> EngineRuntime:
        """A runtime for the engine, refused when the engine lists its models without ours or
        refuses the key. An engine not up yet is only logged: a server started beside it (vLLM
        takes minutes to load) must work once it is, and each call until then says it is down."""
        runtime = cls(settings, transport)
        try:
            runtime.check_model()
        except EngineUnavailable as exc:
            # INFO: the server shows it; a one-shot command fails with the same sentence anyway.
            log.info("not reachable yet: %s", exc)
        except VlmError:
            runtime.close()
            raise
        return runtime

    def close(self) -> None:
        self._client.close()

    @property
    def device(self) -> str:
        return self.url

    def generate(self, prompt: Prompt, options: GenerationOptions) -> Generation:
        """One prompt as a streamed chat completion, timed on this side of the wire."""
        if prompt.messages is None:
            raise Unsupported("This family's prompts are plain text, which a chat-completions engine cannot take.")
        watch = Stopwatch()
        messages = api_messages(prompt.messages, self.settings.send_urls, self.data_uri)
        body = self.body(messages, options, prompt.processor_kwargs, prompt.tools, prompt.answer_schema, prompt.schema)
        preprocess_ms = watch.lap()
        notes = list(prompt.notes)
        try:
            reply = self.complete(body, stream_pieces(), options)
        except StructuredOutputRefused as refused:
            if "response_format" not in body or not self.structured or prompt.schema is not None:
                raise  # extract's schema is the task itself: no free-text fallback
            # Asked once: the engine has no structured outputs, so from now on the answers are free text
            # again, read as before.
            self.structured = False
            log.warning("the engine at %s takes no structured outputs; answers are read as free text: %s", self.url, refused)
            notes.append("the engine refused structured output (response_format), so the answer is free text")
            reply = self.complete(self.body(messages, options, prompt.processor_kwargs, prompt.tools), stream_pieces(), options)
        generation = self.generation(reply, prompt.budget, prompt.history_turns, options, preprocess_ms, watch)
        generation.notes[:0] = notes
        if prompt.tools:
            generation.tool_calls = ParsedReply(text=reply.text.strip(), calls=reply.tool_calls, invalid=reply.invalid)
        return generation

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
        if reply.cut:
            generation.notes.append(
                f"the engine went on past max_new_tokens={options.max_new_tokens}; the rest was not read"
            )
        return generation

    def complete_chat(
        self,
        messages: Sequence[Mapping[str, Any]],
        tools: Sequence[Mapping[str, Any]] | None = None,
        options: GenerationOptions | None = None,
    ) -> Reply:
        """One turn of a conversation already in the API's form, with ``tools`` the model may call.

        The reply holds text or tool calls; send ``reply.message()`` and a ``{"role": "tool",
        "tool_call_id": ..., "content": ...}`` message per call back for the model's next turn.
        """
        options = options or GenerationOptions()
        return self.complete(self.body(list(messages), options, {}, tools), stream_pieces(), options)

    # -- the wire -----------------------------------------------------------------

    def data_uri(self, image: ImageInput) -> str:
        """The image as a PNG data: URI, encoded once per content hash (and scope) while it is kept."""
        key = (scope.key(), image.hash)
        uri = self._uris.get(key)
        if uri is None:
            uri = png_data_uri(image.pixels)
            self._uris.put(key, uri, len(uri))
        return uri

    def body(
        self,
        messages: list[Any],
        options: GenerationOptions,
        processor_kwargs: Mapping[str, Any],
        tools: Sequence[Mapping[str, Any]] | None = None,
        answer_schema: Mapping[str, Any] | None = None,
        schema: Schema | None = None,
    ) -> dict[str, Any]:
        """The request: ``answer_schema`` asks for the task's form where structured outputs are on;
        ``schema`` (extract's) is always sent, in place of any constraint in extra_body."""
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
        if processor_kwargs:
            # vLLM hands these to the model's processor per request, as processor_kwargs locally.
            body["mm_processor_kwargs"] = dict(processor_kwargs)
        if tools:
            body["tools"] = list(tools)
        if answer_schema is not None and self.structured:
            body.update(structured_output(answer_schema))
        body.update(self.settings.extra_body)
        if schema is not None:
            # The engine takes one constraint, and extract's answer must follow the caller's schema.
            for name in CONSTRAINT_FIELDS:
                body.pop(name, None)
            body.update(structured_output(schema.decoding, "extract", strict=True))
        return body

    def complete(
        self,
        body: Mapping[str, Any],
        on_text: Callable[[str], None] | None = None,
        options: GenerationOptions | None = None,
    ) -> Reply:
        """POST one streamed chat completion; every failure becomes a one-line VlmError.

        Read within bounds (``MAX_ANSWER_BYTES``, ``max_new_tokens`` pieces); once the call is
        cancelled (``options.cancel``, else the running request's event), the connection is shut
        down at once, wherever the read is."""
        options = options or GenerationOptions()
        stop = options.cancel or cancel.current()
        with self._slot(stop):
            connection = Connection()
            try:
                with cancel.on_cancel(stop, connection.hang_up):
                    request = self._client.build_request(
                        "POST", "/chat/completions", json=body, extensions={"trace": connection.trace}
                    )
                    response = self._client.send(request, stream=True)
                    try:
                        return self.read_reply(response, on_text, options.max_new_tokens, stop)
                    finally:
                        response.close()
            except httpx.TimeoutException:
                stopped(stop)
                raise EngineUnavailable(
                    f"The engine at {self.url} did not answer within {self.settings.timeout_s:g} s; it may be "
                    "overloaded or still loading its model: retry, or allow longer with {param}.",
                    param="api_timeout",
                ) from None
            except httpx.HTTPError as exc:
                stopped(stop)
                raise self.transport_error(exc) from None
            except EngineError:
                stopped(stop)  # an answer cut by the hang-up reads as a broken one
                raise

    @contextmanager
    def _slot(self, stop: threading.Event | None) -> Iterator[None]:
        """One of the ``max_concurrency`` requests in flight; a call cancelled while it waits gives up."""
        while not self._slots.acquire(timeout=cancel.POLL_S):
            stopped(stop)
        try:
            yield
        finally:
            self._slots.release()

    def read_reply(
        self, response: httpx.Response, on_text: Callable[[str], None] | None, max_tokens: int,
        stop: threading.Event | None,
    ) -> Reply:
        """The engine's answer, or the error it amounts to: a redirect, a page, a body past its cap
        are no answer."""
        status = response.status_code
        if 300 <= status < 400:
            raise EngineError(
                f"The engine at {self.url} answered with a redirect (HTTP {status}), which is not followed; "
                "give the engine's own API address as {param}.",
                param="base_url",
            )
        plain = uncompressed(response)
        if status >= 400:
            raise self.http_error(status, read_upto(response.iter_bytes(), MAX_ERROR_BYTES)[0] if plain else b"")
        ctype = response.headers.get("content-type", "").split(";")[0].strip().lower()
        if not plain or ctype not in ("application/json", "text/event-stream"):
            shown = f"a {one_line(ctype, 40)} page" if ctype else "a body without a content type"
            if not plain:
                shown = "a compressed body"
            raise EngineError(
                f"The engine at {self.url} answered with {shown} (HTTP {status}), not a chat completion; "
                "check that {param} is the engine's API address, which usually ends in /v1.",
                param="base_url",
            )
        if ctype == "application/json":
            # An engine (or a proxy) that ignored stream: true answers in one piece.
            declared = response.headers.get("content-length", "").strip()
            if declared.isdigit() and int(declared) > MAX_ANSWER_BYTES:
                raise self.too_large()
            data, more = read_upto(response.iter_bytes(), MAX_ANSWER_BYTES)
            if more:
                raise self.too_large()
            return read_stream(["data: " + data.decode("utf-8", "replace")], on_text, max_tokens=max_tokens, stop=stop)
        lines = event_lines(response.iter_bytes(), MAX_ANSWER_BYTES, self.too_large)
        return read_stream(lines, on_text, max_tokens=max_tokens, stop=stop)

    def too_large(self) -> EngineError:
        return EngineError(
            f"The engine at {self.url} sent an answer larger than {MAX_ANSWER_BYTES // 2**20} MiB, more than any "
            "chat completion needs; check the engine's log."
        )

    def check_model(self) -> None:
        """Fail early when the engine is down or lists its models without ours."""
        try:
            with self._client.stream("GET", "/models") as response:
                status = response.status_code
                content, more = read_upto(response.iter_bytes(), MAX_LIST_BYTES) if uncompressed(response) else (b"", True)
        except httpx.HTTPError as exc:
            raise self.transport_error(exc) from None
        if status in (401, 403):
            raise self.http_error(status, content)
        served: list[str] = []
        if status == 200 and not more:
            try:
                listed = json.loads(content).get("data", [])
                served = [str(m["id"]) for m in listed if isinstance(m, dict) and "id" in m]
            except (ValueError, AttributeError, TypeError):
                served = []
        # An empty list says nothing: transformers serve lists only its hub cache, not the
        # directory it was started on.
        if served and self.settings.model not in served:
            listed = ", ".join(served[:5]) + (", …" if len(served) > 5 else "")
            raise ModelNotFound(
                f"The engine at {self.url} serves {listed}, not '{self.settings.model}'; "
                "pass one of those with {param}.",
                param="api_model",
            )
        log.info("engine at %s: %s", self.url, "serves " + ", ".join(served) if served else "answers")

    def transport_error(self, error: httpx.HTTPError) -> EngineUnavailable:
        if isinstance(error, httpx.ConnectError):
            return EngineUnavailable(
                f"Cannot reach the engine at {self.url} ({self.redact(one_line(str(error), 80))}); "
                "check that it is running and that {param} is right.",
                param="base_url",
            )
        return EngineUnavailable(
            f"The connection to the engine at {self.url} broke off ({self.redact(one_line(str(error), 80))}); "
            "retry, and check the engine's log if it keeps happening."
        )

    def http_error(self, status: int, content: bytes) -> VlmError:
        """The error that says what to change, from the engine's status and message."""
        detail = self.redact(one_line(error_detail(content)))
        lower = detail.lower()
        # The engine's words in quotes, as its: they may name its own flags, which are not ours.
        said = f'HTTP {status}, the engine says "{detail.replace(chr(34), chr(39))}"' if detail else f"HTTP {status}"
        where = f"The engine at {self.url}"
        if status in (401, 403):
            if self._key is None:
                return EngineError(
                    f"{where} needs an API key (HTTP {status}); put it in ${DEFAULT_KEY_ENV} "
                    "or name its variable with {param}.",
                    param="api_key_env",
                )
            return EngineError(f"{where} refused the API key in ${self._key_name} (HTTP {status}); set a key it accepts.")
        if "mm_processor_kwargs" in detail:
            return Unsupported(
                f"{where} does not take per-request budgets (HTTP {status}); vLLM takes them only when started "
                "with its trust-request-mm-kwargs option: restart the engine with it, or vlm-agent without {param}.",
                param="budgets_supported",
            )
        # An engine without structured outputs names the field it does not take (HTTP 400 or 422); a
        # schema it cannot compile is another refusal, relayed as one.
        if status in (400, 422) and "response_format" in lower:
            return StructuredOutputRefused(f"{where} refused the request ({said}).")
        if "tool choice" in lower and "requires" in lower:
            # vLLM without a tool-call parser: '"auto" tool choice requires --enable-auto-tool-choice ...'
            return Unsupported(
                f"{where} does not let the model choose tools (HTTP {status}); vLLM does only when started with "
                "its enable-auto-tool-choice and tool-call-parser options (the parser of the model's family): "
                "restart the engine with them, or pick a tool yourself (describe, ocr, detect).",
                param="task",
            )
        # vLLM: "The model `x` does not exist."; Ollama: 'model "x" not found'; transformers serve:
        # "Server is pinned to ...; requested 'x'". A bare "Not Found" is a wrong URL instead.
        if status in (400, 404) and (
            self.settings.model in detail or "does not exist" in lower or ("model" in lower and "not found" in lower)
        ):
            return ModelNotFound(
                f"{where} does not serve model '{self.settings.model}' ({said}); "
                "pass the name it serves with {param}.",
                param="api_model",
            )
        if "context length" in lower or "too long" in lower:
            return InvalidRequest(
                f"{where} says the prompt is too long ({said}); use fewer images, a lower "
                "budget, a shorter history or a smaller max_new_tokens."
            )
        if status == 404:
            return EngineError(
                f"{where} has no chat-completions endpoint (HTTP 404); check {{param}}, which usually ends in /v1.",
                param="base_url",
            )
        if status == 429 or status >= 500:
            return EngineUnavailable(
                f"{where} could not take the request ({said}); retry, lower {{param}}, "
                "or check the engine's log.",
                param="max_concurrency",
            )
        return EngineError(f"{where} refused the request ({said}).")

    def redact(self, text: str) -> str:
        # An engine that echoes headers must not get the key into a message.
        return text.replace(self._key, "***") if self._key else text
