"""The OpenAI-compatible API as vlm-agent speaks it: where the engine is (``ApiSettings``) and
what a request carries (messages with images as ``image_url`` parts, structured outputs).

Pure request-side code: ``engine`` sends what is built here and reads the answers (``replies``).
"""

from __future__ import annotations

import base64
import io
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from PIL import Image

from ..errors import InvalidRequest
from ..inputs import ImageInput
from ..tasks import Message

DEFAULT_KEY_ENV = "VLM_AGENT_API_KEY"
MAX_CONCURRENCY_LIMIT = 64
#: request fields the runtime writes itself: extra_body may not replace them, or the stream breaks
OWNED_FIELDS = frozenset({"model", "messages", "stream", "stream_options"})
#: request fields that constrain the answer's form (OpenAI's, vLLM's current and former ones, Ollama's):
#: one of them in extra_body is the user's own constraint, and the engine takes only one
CONSTRAINT_FIELDS = frozenset({
    "response_format", "structured_outputs", "guided_json", "guided_regex", "guided_choice", "guided_grammar", "format",
})


@dataclass(frozen=True)
class ApiSettings:
    """How to reach the engine and what it accepts."""

    #: the API root as OpenAI clients take it, e.g. http://gpu-box:8000/v1 (a bare host gets /v1)
    base_url: str
    #: the model name the engine serves it under (vLLM: the hub id, or --served-model-name)
    model: str
    #: environment variable holding the API key; None reads VLM_AGENT_API_KEY if it is set
    key_env: str | None = None
    #: the family of the model it serves (a registered dialect); None: the default family (tools.model)
    family: str | None = None
    #: the engine takes the family's budgets per request (vLLM's mm_processor_kwargs)
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
    #: ask for JSON answers under the task's schema (detect's boxes, verify's yes or no) with the
    #: engine's structured outputs; off where extra_body brings a constraint of its own
    structured: bool = True

    def __post_init__(self) -> None:
        parts = urlsplit(self.base_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise InvalidRequest(
                f"{{param}} must be an http(s) URL such as http://127.0.0.1:8000/v1, got {self.base_url!r}.",
                param="base_url",
            )
        if not self.model.strip():
            raise InvalidRequest("Name the model the engine serves with {param}.", param="api_model")
        if not 1 <= self.max_concurrency <= MAX_CONCURRENCY_LIMIT:
            raise InvalidRequest(
                f"{{param}} must be between 1 and {MAX_CONCURRENCY_LIMIT}, got {self.max_concurrency}.",
                param="max_concurrency",
            )
        if not self.timeout_s > 0:
            raise InvalidRequest(f"{{param}} must be above 0 seconds, got {self.timeout_s:g}.", param="api_timeout")
        owned = sorted(OWNED_FIELDS.intersection(self.extra_body))
        if owned:
            raise InvalidRequest(
                f"{{param}} cannot set {', '.join(owned)}: vlm-agent writes those fields itself.",
                param="api_extra_body",
            )

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
            raise InvalidRequest(f"{{param}} names ${name}, which is not set or empty.", param="api_key_env")
        return key


def structured_output(schema: Mapping[str, Any], name: str = "answer", strict: bool = False) -> dict[str, Any]:
    """The request fields that ask an OpenAI-compatible engine for an answer in JSON that follows
    ``schema``: OpenAI's ``response_format`` of type ``json_schema``, which vLLM, SGLang and Ollama
    enforce with their grammar engines (constrained decoding), so the answer always parses."""
    form: dict[str, Any] = {"name": name, "schema": dict(schema)}
    if strict:
        form["strict"] = True
    return {"response_format": {"type": "json_schema", "json_schema": form}}


def png_data_uri(image: Image.Image) -> str:
    buffer = io.BytesIO()
    # Lossless, so small print reads the same as it would locally; level 3 trades a little
    # size for much less CPU than the default on photos.
    image.save(buffer, format="PNG", compress_level=3)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def api_messages(
    messages: Sequence[Message], send_urls: bool = False, data_uri: Callable[[ImageInput], str] | None = None
) -> list[dict[str, Any]]:
    """Messages in the API's form: images as ``image_url`` parts (their URL with ``send_urls``, else a
    PNG data: URI from ``data_uri``); text-only turns as plain strings, which every engine takes."""
    encode = data_uri or (lambda image: png_data_uri(image.pixels))
    out = []
    for message in messages:
        content = message["content"]
        if not isinstance(content, str):
            if all(part["type"] == "text" for part in content):
                content = "".join(part["text"] for part in content)
            else:
                content = [image_url(part["image"], send_urls, encode) if part["type"] == "image" else part for part in content]
        out.append({**message, "content": content})
    return out


def image_url(image: ImageInput, send_url: bool, encode: Callable[[ImageInput], str]) -> dict[str, Any]:
    url = image.url if send_url else None
    return {"type": "image_url", "image_url": {"url": url or encode(image)}}
