"""Grounded structured extraction: read the object under its schema, locate each value, re-read the doubtful.

1. The images and the schema go to the model as one ``extract`` ask, decoded under the schema's
   grammar (the local runtime) or the engine's structured output; the answer is parsed and checked
   against the caller's own schema, formats included.
2. Each value's confidence is the lowest probability among the tokens that wrote it (the local
   runtime keeps them; an engine gives none).
3. Families that ground (Gemma 4, Qwen3-VL, PaliGemma) are asked where each value is, in their
   own detection dialect (``tools.jobs.grounding``); BLIP-2 cannot, and the result says so.
4. Values under the confidence threshold are read again from their crop (the whole image when
   they were not located) at the highest budget, under the value's own schema, with the crop of
   ``tools.jobs.verify``; the report says which agree, which changed and which stay uncertain.
5. An annotated picture shows each located value's box and name.

A PDF's pages (all, or ``pages``) are images of the call, each with its origin in ``sources``;
``image`` in the report is the index there. A clip is refused: extraction reads documents.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..boxes.detections import Detection
from ..boxes.drawing import annotate, grid
from ..core import Core, save_picture
from ..errors import InvalidRequest, VlmError
from ..extract import Schema, check_threshold, prepare
from .grounding import MAX_ASKS, MAX_LOCATED, label_for, locate
from ..extract.schema import escape, resolve
from ..extract.validate import validation_error
from ..extract.spans import confidence, leaves, token_spans
from ..inputs import ImageInput, LoadedImage
from ..inputs.media import Media
from ..options import GenerationOptions
from ..results import ExtractedField, ExtractResult
from ..tasks import Ask, Generation, Progress, plural
from . import auto_budget
from . import parts as parts_job
from .verify import VERIFY_BUDGET, crop

#: values reported one by one; the rest are in data only
MAX_REPORTED = 256
#: values re-read in one call
MAX_REREAD = 16


@dataclass
class Reading:
    """The answer read: the object (None when it is not one) and a report line per value."""

    data: dict[str, Any] | None
    fields: list[ExtractedField] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: why there is no object
    problem: str | None = None


def extract(
    core: Core,
    images: Sequence[str],
    schema: Schema,
    budget: int | str | None,
    options: GenerationOptions,
    annotated_path: str | Path | None,
    threshold: float,
    verify: bool,
    progress: Progress | None = None,
    pages: str | None = None,
) -> ExtractResult:
    started = time.perf_counter()
    threshold = check_threshold(threshold)
    model = core.model
    opened = core.open_images(images)
    parts_job.check_pages_argument(opened, pages)
    clips = [item for item in opened if isinstance(item, Media) and item.kind == "clip"]
    if clips:
        raise InvalidRequest(
            f"extract reads documents and pictures, and {clips[0].what} is a video clip; send the frames you "
            "want read as images.", param="images",
        )
    # Pages render at the resolution the budget sees (auto: the largest, chosen below from the pages).
    looked = None if budget == auto_budget.AUTO else budget
    loaded, origins, page_notes = parts_job.pictures(core, opened, pages, parts_job.look_dpi(model, looked))  # type: ignore[arg-type]
    # Extraction reads text: "auto" keeps the smallest text legible, as for ocr.
    chosen, reason = auto_budget.resolve(model, budget, "ocr", loaded)
    step(progress, 0, 3, "reading")
    ask = Ask(
        "extract", tuple(image.input for image in loaded), core.plain(schema.text()),
        tuple(core.plain(name) for name in schema.names), budget=chosen, schema=schema,
    )
    generation = core.run(ask, options).generation
    notes = generation.notes
    notes[:0] = page_notes
    notes.extend(f"decoding bounded what the schema left open: {bound}" for bound in schema.bounds)
    notes.extend(f"schema: {warning}" for warning in schema.warnings)
    reading = read_answer(generation)
    notes.extend(reading.notes)
    grounded = "detect" in model.capabilities.tasks
    if reading.fields and grounded:
        step(progress, 1, 3, "locating the values")
        notes.extend(ground(core, loaded, reading.fields, generation.budget, options))
    elif reading.fields:
        notes.append(f"{model.display_name} cannot locate what it reads, so the values have no boxes")
    if verify and reading.data is not None:
        step(progress, 2, 3, "re-reading the doubtful values")
        notes.extend(reread(core, loaded, schema, reading, threshold, options))
    problem = reading.problem
    if reading.data is not None:
        invalid = validation_error(schema.original, reading.data)
        if invalid:
            problem = f"the object does not validate against the schema ({invalid})"
            notes.append(problem)
    written = None
    if annotated_path is not None and any(f.box is not None for f in reading.fields):
        written = save_picture(annotated(loaded, reading.fields), annotated_path, notes)
    return core.result(
        ExtractResult, generation, loaded, started, budget_reason=reason, data=reading.data, valid=problem is None,
        problem=problem, schema_hash=schema.hash, fields=reading.fields, grounded=grounded, threshold=threshold,
        image_sizes=[list(image.size) for image in loaded], annotated_path=written, sources=origins or None,
    )


def step(progress: Progress | None, done: int, total: int, message: str) -> None:
    if progress is not None:
        progress(done, total, message)


# ---------------------------------------------------------------- reading the answer


def read_answer(generation: Generation) -> Reading:
    """The object and a report line per value; confidences from the tokens where the runtime kept them."""
    scored = generation.scored if generation.finish_reason == "stop" else None
    pieces = [piece for piece, _ in scored] if scored is not None else []
    text = generation.text
    if scored is not None:
        try:
            text = b"".join(pieces).decode("utf-8")
        except UnicodeDecodeError:
            scored = None
    try:
        found = leaves(text)
        data = json.loads(text)
    except ValueError:
        cut = generation.finish_reason == "length"
        why = "it stopped at the token cap before the object was complete; raise max_new_tokens" if cut else (
            "the answer is not one JSON value"
        )
        return Reading(None, notes=[f"no object: {why}"], problem=f"no object: {why}")
    if not isinstance(data, dict):
        return Reading(None, notes=["no object: the answer is JSON but not an object"],
                       problem="no object: the answer is JSON but not an object")
    spans = token_spans(pieces) if scored is not None else None
    probabilities = [p for _, p in scored] if scored is not None else []
    notes = []
    if len(found) > MAX_REPORTED:
        notes.append(f"{len(found)} values: the first {MAX_REPORTED} are reported one by one, all are in data")
    fields = [
        ExtractedField(
            path=leaf.pointer, value=leaf.value,
            confidence=None if spans is None else confidence(leaf, spans, probabilities),
        )
        for leaf in found[:MAX_REPORTED]
    ]
    if spans is None and generation.scored is None:
        notes.append("no token probabilities from this runtime, so the values have no confidence")
    return Reading(data, fields, notes)


# ---------------------------------------------------------------- grounding


def ground(
    core: Core, loaded: Sequence[LoadedImage], fields: Sequence[ExtractedField], budget: int | None,
    options: GenerationOptions,
) -> list[str]:
    """Each value's box, from the family's grounding; the notes on what was not located."""
    wanted = [(f, label) for f in fields if (label := label_for(f.value, core.plain)) is not None]
    room = max(1, min(MAX_LOCATED, MAX_ASKS // len(loaded)))
    asked, skipped = wanted[:room], wanted[room:]
    with core.turn(options) as model:
        found = locate(model, loaded, [label for _, label in asked], budget, options)
    for (f, _), hit in zip(asked, found):
        if hit is not None:
            f.box, f.image = list(hit.detection.box), hit.image
    notes = []
    located = sum(hit is not None for hit in found)
    if asked:
        notes.append(f"located {located} of {plural(len(asked), 'value', 'values')} asked for")
    if skipped:
        notes.append(f"{plural(len(skipped), 'value was', 'values were')} not looked for: at most {room} a call")
    return notes


# ---------------------------------------------------------------- re-reading


def reread(
    core: Core, loaded: Sequence[LoadedImage], schema: Schema, reading: Reading, threshold: float,
    options: GenerationOptions,
) -> list[str]:
    """Values under ``threshold`` read again from their crop at the highest budget; what came of it."""
    doubtful = [f for f in reading.fields if f.confidence is not None and f.confidence < threshold]
    if not doubtful:
        return []
    chosen, left = doubtful[:MAX_REREAD], doubtful[MAX_REREAD:]
    model = core.model
    budget = VERIFY_BUDGET if VERIFY_BUDGET in model.capabilities.budgets else (
        max(model.capabilities.budgets) if model.capabilities.budgets else None
    )
    asks = [reread_ask(core, loaded, schema, f, budget) for f in chosen]
    with core.turn(options) as running:
        answers = running.run_many(asks, options)
    assert reading.data is not None
    for f, ask, answer in zip(chosen, asks, answers):
        again = read_answer(answer.generation)
        assert ask.schema is not None
        name = ask.schema.names[0]
        if again.data is None or name not in again.data:
            f.verified = "uncertain"
            continue
        f.reread = again.data[name]
        f.reread_confidence = next((g.confidence for g in again.fields if g.path == f"/{escape(name)}"), None)
        if same(f.value, f.reread):
            f.verified = "agree"
        elif f.reread_confidence is not None and f.reread_confidence >= threshold and replaced(
            schema, reading.data, f.path, f.reread
        ):
            f.first_value, f.value, f.verified = f.value, f.reread, "changed"
        else:
            f.verified = "uncertain"
    counts = {state: sum(f.verified == state for f in chosen) for state in ("agree", "changed", "uncertain")}
    at = f" at budget {budget}" if budget is not None else ""
    notes = [
        f"verify: re-read {plural(len(chosen), 'value', 'values')} under confidence {threshold:g} from their crops{at}: "
        f"{counts['agree']} agree, {counts['changed']} changed, {counts['uncertain']} uncertain"
    ]
    if left:
        notes.append(f"verify: {plural(len(left), 'more doubtful value was', 'more doubtful values were')} not re-read "
                     f"(at most {MAX_REREAD} a call)")
    return notes


def reread_ask(core: Core, loaded: Sequence[LoadedImage], schema: Schema, f: ExtractedField, budget: int | None) -> Ask:
    """The ask that reads one value again: its crop (or every image), its own schema, a higher budget."""
    if f.box is not None and f.image is not None:
        pictures: tuple[ImageInput, ...] = (ImageInput.from_pixels(crop(loaded[f.image].image, f.box)),)
    else:
        pictures = tuple(image.input for image in loaded)
    sub = value_schema(schema.original, f.path, f.value)
    return Ask(
        "extract", pictures, core.plain(sub.text()), tuple(core.plain(name) for name in sub.names), budget=budget,
        schema=sub,
    )


def value_schema(root: Mapping[str, Any], pointer: str, value: Any) -> Schema:
    """An object schema of one property, the value at ``pointer``, with the schema the caller gave that
    value (its definitions kept for its ``$ref``s), or the value's JSON type where that cannot be told."""
    parts = [part.replace("~1", "/").replace("~0", "~") for part in pointer.split("/")[1:]]
    name = next((part for part in reversed(parts) if not part.isdigit()), "value")
    own = schema_at(root, parts)
    wrap: dict[str, Any] = {"type": "object", "properties": {name: own}, "required": [name]}
    for key in ("$defs", "definitions"):
        if key in root:
            wrap[key] = root[key]
    try:
        return prepare(wrap) if own is not None else prepare({**wrap, "properties": {name: type_schema(value)}})
    except VlmError:
        return prepare({"type": "object", "properties": {name: type_schema(value)}, "required": [name]})


def type_schema(value: Any) -> dict[str, Any]:
    if isinstance(value, bool):
        return {"type": "boolean"}
    if isinstance(value, int):
        return {"type": "integer"}
    if isinstance(value, float):
        return {"type": "number"}
    if value is None:
        return {"type": "null"}
    return {"type": "string"}


def schema_at(root: Mapping[str, Any], parts: Sequence[str]) -> dict[str, Any] | None:
    """The subschema the caller gave the value at ``parts``; None past anything but plain properties and items."""
    node: Any = root
    for part in [*parts, None]:
        for _ in range(32):  # references were checked acyclic; a bound all the same
            if not (isinstance(node, dict) and isinstance(node.get("$ref"), str)):
                break
            node = resolve(root, node["$ref"])
        if part is None or not isinstance(node, dict):
            break
        properties = node.get("properties") or {}
        items = node.get("items")
        prefix = node.get("prefixItems")
        if part in properties:
            node = properties[part]
        elif part.isdigit() and isinstance(prefix, list) and int(part) < len(prefix):
            node = prefix[int(part)]
        elif part.isdigit() and isinstance(items, dict):
            node = items
        elif part.isdigit() and isinstance(items, list) and int(part) < len(items):
            node = items[int(part)]
        elif isinstance(node.get("additionalProperties"), dict):
            node = node["additionalProperties"]
        else:
            return None
    return node if isinstance(node, dict) else None


def same(first: Any, second: Any) -> bool:
    """Whether two reads say the same: text compared without case and spacing differences."""
    if isinstance(first, str) and isinstance(second, str):
        return " ".join(first.split()).casefold() == " ".join(second.split()).casefold()
    if isinstance(first, bool) or isinstance(second, bool):
        return first is second
    return bool(first == second)


def replaced(schema: Schema, data: dict[str, Any], pointer: str, value: Any) -> bool:
    """Put ``value`` at ``pointer`` in ``data`` if the object still validates; whether it did."""
    candidate = copy.deepcopy(data)
    parts = [part.replace("~1", "/").replace("~0", "~") for part in pointer.split("/")[1:]]
    target: Any = candidate
    for part in parts[:-1]:
        target = target[int(part)] if isinstance(target, list) else target[part]
    if isinstance(target, list):
        target[int(parts[-1])] = value
    else:
        target[parts[-1]] = value
    if validation_error(schema.original, candidate) is not None:
        return False
    data.clear()
    data.update(candidate)
    return True


# ---------------------------------------------------------------- the picture


def annotated(loaded: Sequence[LoadedImage], fields: Sequence[ExtractedField]) -> Any:
    """Each image with its located values' boxes, named by their path; several images side by side."""
    panels = []
    for index, image in enumerate(loaded):
        width, height = image.size
        boxes = [
            Detection(
                label=f.path.lstrip("/") or "value", box=tuple(f.box),  # type: ignore[arg-type]
                box_normalized=(f.box[0] / width, f.box[1] / height, f.box[2] / width, f.box[3] / height),
                raw=str(f.value),
            )
            for f in fields
            if f.box is not None and f.image == index
        ]
        panels.append((f"image {index + 1}", annotate(image.image, boxes)))
    return panels[0][1] if len(panels) == 1 else grid(panels)
