"""A model: one family's dialect over one runtime, behind the one task interface.

``plan`` reads what a model can do before any weights load (the checkpoint's config, or what
the engine settings declare), so that a task the family cannot do, or a budget it does not
take, is refused in one line at once. ``load_model`` then loads the runtime. ``Model.run``
checks an ``Ask`` against the capabilities, has the dialect write the prompt, the runtime run
it, and the dialect read the answer.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from .runtimes import accel
from .errors import InvalidRequest, ModelNotFound, Unsupported
from .families import BY_FAMILY, BY_MODEL_TYPE, DIALECTS, Dialect
from .runtimes.hub import check_reachable
from .inputs import ImageInput
from .options import GenerationOptions
from .runtimes.base import Runtime
from .runtimes.api import ApiSettings
from .runtimes.engine import EngineRuntime
from .runtimes.loading import model_not_found
from .runtimes.local import LocalRuntime
from .tasks import Answer, Ask, Capabilities, Progress, plural
from .text import Neutraliser

log = logging.getLogger("vlm_agent")

DEFAULT_MODEL = "google/gemma-4-E2B-it"
#: the family an engine's model is taken for unless the settings name one
DEFAULT_ENGINE_FAMILY = "gemma4"
#: ``--model none``: no vision-language model, for a server that only reads text offline
NO_MODEL = "none"

#: what each task does, in words for "X models cannot ..."
TASK_WORDS = {
    "describe": "describe images",
    "ocr": "read text",
    "detect": "detect objects",
    "segment": "segment objects",
    "chat": "choose tools by function calling",
    "extract": "extract fields under a schema",
}


def _looks_like_path(model_id: str) -> bool:
    return model_id.startswith((".", "/", "~")) or Path(model_id).expanduser().exists()


class ConfigView:
    """A local checkpoint's ``config.json`` as it is written, read without transformers.

    Attribute access like a transformers config (nested configs included), so dialects read
    their capabilities from either; importing transformers (and torch with it) would cost
    seconds before a refusal that needs none of it.
    """

    def __init__(self, data: dict[str, Any]) -> None:
        self._data = data

    def __getattr__(self, name: str) -> Any:
        try:
            value = self._data[name]
        except KeyError:
            raise AttributeError(name) from None
        return ConfigView(value) if isinstance(value, dict) else value

    def get_text_config(self) -> Any:
        return self.text_config if isinstance(self._data.get("text_config"), dict) else self


def read_config(model_id: str) -> Any:
    """The checkpoint's config: a small file, read before any weights (``config.json`` of a local
    directory as it is; a hub id's through ``AutoConfig``)."""
    if _looks_like_path(model_id):
        return read_local_config(model_id)
    check_reachable(model_id)
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(model_id)
    except (OSError, ValueError) as exc:
        log.debug("reading the config of %s failed: %s", model_id, exc)
        raise model_not_found(model_id) from None


def read_local_config(model_id: str) -> ConfigView:
    """A local checkpoint folder's config.json, or what keeps the folder from being a checkpoint.

    A folder is never a hub id: what is wrong with it is said at once, without a download hint.
    """
    folder = Path(model_id).expanduser()
    if not folder.is_dir():
        raise ModelNotFound(
            f"No model directory at '{model_id}'; pass a directory holding config.json and the weights, "
            "or a hub id such as google/gemma-4-E2B-it.", param="model",
        )
    local = folder / "config.json"
    if not local.is_file():
        raise ModelNotFound(
            f"The folder '{model_id}' holds no config.json, so it is not a checkpoint; pass as {{param}} a folder "
            "holding a checkpoint's config.json and weights.", param="model",
        )
    try:
        data = json.loads(local.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise ModelNotFound(f"The config.json in '{model_id}' is not readable JSON.", param="model") from None
    if not (isinstance(data, dict) and isinstance(data.get("model_type"), str)):
        raise ModelNotFound(
            f"The config.json in '{model_id}' names no model_type, so its family is unknown; pass as {{param}} a "
            "checkpoint whose config.json names one, as every transformers checkpoint's does.", param="model",
        )
    return ConfigView(data)


def detect_family(model_id: str) -> str:
    """The checkpoint's ``model_type``, read from its config (never guessed from its name)."""
    return str(read_config(model_id).model_type)


@dataclass(frozen=True)
class Plan:
    """What is about to be loaded and what it can do, known before any weights load."""

    dialect: Dialect
    #: the hub id or the expanded local directory
    model_id: str
    #: the engine to run on; None: this process
    api: ApiSettings | None = None

    @property
    def capabilities(self) -> Capabilities:
        return self.dialect.capabilities


def plan(model_id: str = DEFAULT_MODEL, api: ApiSettings | None = None) -> Plan:
    """The dialect and capabilities of ``model_id`` (or of the engine's declared family), weights untouched."""
    if api is not None:
        family = api.family or DEFAULT_ENGINE_FAMILY
        try:
            dialect_cls = BY_FAMILY[family]
        except KeyError:
            known = ", ".join(BY_FAMILY)
            raise InvalidRequest(f"Family '{family}' is not one vlm-agent knows; use {known}.", param="api_family") from None
        return Plan(dialect_cls.for_engine(budgets=api.budgets), api.model, api)
    if model_id == NO_MODEL:
        raise Unsupported(
            "No vision-language model is loaded ({param} none); only ocr with engine 'rapidocr' works here: start "
            "with a model to describe, detect or read with one.", param="model",
        )
    config = read_config(model_id)
    try:
        dialect_cls = BY_MODEL_TYPE[str(config.model_type)]
    except KeyError:
        known = ", ".join(sorted(BY_MODEL_TYPE))
        raise Unsupported(f"Model type '{config.model_type}' is not supported; vlm-agent runs: {known}.") from None
    if _looks_like_path(model_id):
        model_id = str(Path(model_id).expanduser())
    return Plan(dialect_cls.for_config(config), model_id)


def load_model(
    model_id: str = DEFAULT_MODEL,
    *,
    dtype: str = "auto",
    device_map: str | None = "auto",
    quantize: str | None = None,
    api: ApiSettings | None = None,
    compile: bool = False,
    planned: Plan | None = None,
) -> Model:
    """Load ``model_id`` (hub id or local directory) once, with its family's dialect and runtime.

    ``quantize`` ("4bit" or "8bit") loads the weights through bitsandbytes, on a CUDA GPU only;
    ``compile`` decodes on a static KV cache with a compiled step (Gemma 4, CUDA GPU only).
    With ``api``, nothing is loaded here: the model runs on that OpenAI-compatible engine, and
    ``model_id``, ``dtype``, ``quantize`` and ``compile`` are the engine's business.
    """
    chosen = planned or plan(model_id, api)
    if chosen.api is not None:
        return Model(chosen.dialect, EngineRuntime.connect(chosen.api))
    runtime_cls: type[LocalRuntime] = chosen.dialect.local_runtime or LocalRuntime
    log.info("loading %s (%s)", chosen.model_id, chosen.dialect.family)
    started = time.perf_counter()
    runtime = runtime_cls.load(
        chosen.model_id, model_class=chosen.dialect.model_class, dtype=dtype, device_map=device_map,
        quantize=quantize, compile=compile,
    )
    model = Model(chosen.dialect, runtime)
    if accel.cuda_available():
        model.warm_up()
    log.info("loaded %s on %s (%s) in %.1f s", chosen.model_id, runtime.device, runtime.dtype,
             time.perf_counter() - started)
    return model


def check_ask(dialect: Dialect, ask: Ask, engine: bool = False) -> Ask:
    """``ask`` with its budget resolved, or the one-line refusal of what the family cannot do.

    Pure: it needs the capabilities only, so adapters call it before loading anything.
    """
    caps = dialect.capabilities
    name = dialect.display_name
    if ask.task not in caps.tasks:
        able = [d for d in DIALECTS if ask.task in d.tasks and d.display_name != name]
        hint = f"; use a {' or '.join(d.display_name for d in able)} model" if able else ""
        if engine and able and all(d.prompt_form == "text" for d in able):
            hint += " on the local backend"  # no chat template: no chat-completions engine can carry them
        if ask.task == "chat":
            hint = "; pick a tool yourself (describe, ocr, detect)"
        raise Unsupported(f"{name} models cannot {TASK_WORDS[ask.task]}{hint}.", param="task")
    if ask.video is not None:
        check_video(dialect, engine)
        if ask.images:
            raise InvalidRequest("A clip goes to describe alone; send the other images in a call of their own.", param="images")
        # Per frame, a clip's budget defaults to the family's own for video (Gemma 4: 70), not its image default.
        budget = ask.budget if ask.budget is not None else dialect.video_budget
        return replace(ask, budget=None if budget is None else check_budget(dialect, budget, engine))
    if caps.max_images is not None and len(ask.images) > caps.max_images:
        raise Unsupported(
            f"{name} takes {plural(caps.max_images, 'image', 'images')} per prompt and {len(ask.images)} were "
            "given; send them in separate calls.", param="images",
        )
    return replace(ask, budget=check_budget(dialect, ask.budget, engine))


def check_video(dialect: Dialect, engine: bool = False) -> None:
    """Refuse a clip for describe where the family has no video path, before any frame is decoded."""
    if dialect.capabilities.video:
        return
    able = [d.display_name for d in DIALECTS if d.video]
    where = " loaded locally" if engine and dialect.video else ""
    hint = f"use a {' or '.join(able)} model{where}, or detect, which looks at the frames one by one"
    raise Unsupported(f"{dialect.display_name} models cannot describe a video clip here; {hint}.", param="images")


def check_budget(dialect: Dialect, budget: int | None, engine: bool = False, param: str = "budget") -> int | None:
    """The budget a call runs at: the family's default when None, refused when the family takes none.

    ``param`` names the argument the budget came in (``budgets``, ``consensus`` for a list of them).
    """
    caps = dialect.capabilities
    if caps.budgets:
        if budget is None:
            return caps.default_budget
        if budget not in caps.budgets:
            choices = " / ".join(str(b) for b in caps.budgets)
            raise InvalidRequest(
                f"Budget {budget} is not available for {dialect.display_name}; use one of {choices}.", param=param
            )
        return budget
    if budget is None:
        return None
    if engine:
        raise InvalidRequest(
            "The engine was not declared to take visual-token budgets ({param}); leave {param:budget} unset, or restart "
            "vlm-agent with it if the engine takes them (vLLM's mm_processor_kwargs).", param="budgets_supported",
        )
    if budget != caps.image_tokens:
        raise InvalidRequest(
            f"{dialect.display_name} has a fixed resolution ({caps.image_tokens} image tokens per image for this "
            "checkpoint); leave {param} unset.", param="budget",
        )
    # The checkpoint's own image-token count is what it does anyway: accepted, reported as none.
    return None


class Model:
    """One family's dialect over one runtime: the resident model every task goes through."""

    def __init__(self, dialect: Dialect, runtime: Runtime) -> None:
        self.dialect = dialect
        self.runtime = runtime
        self._neutraliser: Neutraliser | None = None

    @property
    def neutralise(self) -> Neutraliser:
        """Breaks the model's control strings in user text (``<|turn>`` and the like)."""
        if self._neutraliser is None:
            self._neutraliser = Neutraliser(self.runtime.control_strings())
        return self._neutraliser

    # -- what it is -------------------------------------------------------------------------

    @property
    def model_id(self) -> str:
        return self.runtime.model_id

    @property
    def family(self) -> str:
        return self.dialect.family

    @property
    def display_name(self) -> str:
        return self.dialect.display_name

    @property
    def capabilities(self) -> Capabilities:
        return self.dialect.capabilities

    @property
    def concurrent(self) -> bool:
        return self.runtime.concurrent

    @property
    def max_concurrency(self) -> int:
        return self.runtime.max_concurrency

    @property
    def on_engine(self) -> bool:
        return self.runtime.kind == "engine"

    @property
    def device(self) -> str:
        return self.runtime.device

    @property
    def context_tokens(self) -> int | None:
        """The context the family keeps within: its own limit, else the runtime's window."""
        return self.capabilities.context_tokens or self.runtime.context_tokens()

    def seen_size(self, size: tuple[int, int], budget: int | None) -> tuple[int, int]:
        return self.dialect.seen_size(size, budget)

    def no_budgets_error(self) -> Unsupported:
        """Why there are no budgets to compare, for a model whose capabilities list none."""
        if self.on_engine and self.dialect.takes_budgets:
            return Unsupported(
                f"The engine at {self.runtime.device} was not declared to take visual-token budgets ({{param}}), so "
                "every budget would give the same run; if it takes them (vLLM's mm_processor_kwargs), restart "
                "vlm-agent with it.", param="budgets_supported",
            )
        able = [d.display_name for d in DIALECTS if d.family != self.family and d.takes_budgets]
        hint = f"; use a {' or '.join(able)} model" if able else ""
        return Unsupported(self.dialect.no_budgets_reason().rstrip(".") + hint + ".", param="budgets")

    def info(self) -> dict[str, Any]:
        """What a client needs to know to plan its requests: capabilities, context policy and limits."""
        caps = self.capabilities
        return {
            "model": self.model_id,
            "family": self.family,
            "display_name": self.display_name,
            "runtime": self.runtime.kind,
            "tasks": sorted(caps.tasks),
            "budgets": list(caps.budgets),
            "default_budget": caps.default_budget,
            "image_tokens": caps.image_tokens,
            "max_images_per_prompt": caps.max_images,
            "context_window": self.runtime.context_tokens() or caps.context_tokens,
            "context": {
                "policy": caps.context_policy,
                "limit_tokens": self.context_tokens,
                "description": caps.describe_policy(),
            },
            "box_grid": caps.box_grid,
            "box_order": caps.box_order,
            "chat": "chat" in caps.tasks,
            "detect": "detect" in caps.tasks,
        }

    # -- running ----------------------------------------------------------------------------

    def check(self, ask: Ask) -> Ask:
        return check_ask(self.dialect, ask, self.on_engine)

    def check_budget(self, budget: int | None, param: str = "budget") -> int | None:
        return check_budget(self.dialect, budget, self.on_engine, param)

    def run(self, ask: Ask, options: GenerationOptions) -> Answer:
        """One task: checked, prompted, generated and read."""
        ask = self.check(ask)
        prompt = self.dialect.prompt(ask, self.runtime.token_counter())
        generation = self.runtime.generate(prompt, options)
        return self.dialect.parse(ask, generation)

    def run_many(self, asks: Sequence[Ask], options: GenerationOptions, progress: Progress | None = None) -> list[Answer]:
        """Several asks of one task (budgets, tiles), in order; the runtime may run them together (one batch)."""
        checked = [self.check(ask) for ask in asks]
        counter = self.runtime.token_counter()
        prompts = [self.dialect.prompt(ask, counter) for ask in checked]
        generations = self.runtime.generate_many(prompts, options, progress)
        return [self.dialect.parse(ask, generation) for ask, generation in zip(checked, generations)]

    def run_budgets(
        self, ask: Ask, budgets: Sequence[int], options: GenerationOptions, progress: Progress | None = None
    ) -> list[Answer]:
        """One task at each budget, in order (compare_budgets)."""
        return self.run_many([replace(ask, budget=budget) for budget in budgets], options, progress)

    def warm_up(self) -> None:
        """Run a short request so that the first real one finds kernels chosen, graphs compiled and memory pooled."""
        from PIL import Image

        runtime = self.runtime
        if not isinstance(runtime, LocalRuntime):
            return
        runtime.probe_kernels()
        picture = ImageInput.from_pixels(Image.new("RGB", (256, 256), (127, 127, 127)))
        options = GenerationOptions(max_new_tokens=8, min_new_tokens=8)
        started = time.perf_counter()
        for _ in range(runtime.warm_up_runs):
            self.run(Ask("describe", (picture,)), options)
        runtime.clear_caches()
        log.info("warmed up in %.1f s (attention kernels by head dim: %s)", time.perf_counter() - started,
                 runtime.attention_kernels or "n/a")

    def clear_caches(self) -> None:
        self.runtime.clear_caches()

    def close(self) -> None:
        self.runtime.close()
