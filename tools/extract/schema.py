"""A caller's JSON Schema, checked before any model loads, and the schema decoding runs under.

``prepare`` takes the schema as JSON text or as a parsed object and refuses, in one sentence
naming the problem, what cannot be decoded safely: text that is not JSON, more than
``MAX_SCHEMA_BYTES`` or ``MAX_DEPTH`` levels deep, a value that is no JSON Schema, a schema that
does not describe one object with properties, a ``$ref`` that leaves the schema (nothing is
ever fetched for one), points at nothing or comes back to itself, and every keyword or format
the grammar compiler does not implement (llguidance names them). What passes becomes a
``Schema``: the caller's schema, kept for validating the answer, and the decoding schema, the
same with bounds where the caller's leaves them open (a random-weight or looping model would
otherwise write a string or a list until the token cap), compiled to a grammar once per
schema hash.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import InvalidRequest, Unsupported

#: a schema is a description, not a document: 32 KB holds hundreds of fields
MAX_SCHEMA_BYTES = 32_000
#: JSON nesting (objects and lists) a schema may have; a schema level takes about two
MAX_DEPTH = 32
#: the bounds decoding adds where the schema gives none
DEFAULT_MAX_LENGTH = 128
DEFAULT_MAX_ITEMS = 50
DEFAULT_RANGE = 10**9
#: decimals a number without multipleOf may have (a looping model writes 0.33333... forever otherwise)
DEFAULT_DECIMALS = 6
#: the JSON Schema drafts whose meta-schemas the check knows
DRAFTS = {
    "https://json-schema.org/draft/2020-12/schema": "2020-12",
    "https://json-schema.org/draft/2019-09/schema": "2019-09",
    "http://json-schema.org/draft-07/schema": "7",
    "http://json-schema.org/draft-06/schema": "6",
    "http://json-schema.org/draft-04/schema": "4",
}
#: keywords that resolve references some other way than a JSON pointer into this schema
OTHER_REFERENCES = ("$dynamicRef", "$recursiveRef", "$dynamicAnchor", "$recursiveAnchor")
#: formats whose length the format itself bounds
BOUNDED_FORMATS = frozenset({"date", "uuid", "ipv4", "ipv6"})
#: llguidance's grammar limits, with its error messages kept short (no parser state, no grammar dump)
_LIMITS: Any = None


@dataclass(frozen=True)
class Schema:
    """A checked schema: the caller's, the bounded one decoding runs under, and its grammar."""

    #: the schema as the caller gave it; the answer is validated against this one
    original: dict[str, Any]
    #: the same with the bounds it left open filled in
    decoding: dict[str, Any]
    #: llguidance's grammar of ``decoding`` (tokenizer-independent; matchers are built per tokenizer)
    grammar: str
    #: a hash of ``decoding``: the key of every compiled grammar
    hash: str
    #: the bounds added, in words, for the result's notes
    bounds: tuple[str, ...] = ()
    #: what the grammar compiler had to say without refusing
    warnings: tuple[str, ...] = ()
    #: the top-level property names, in order (prompts that name the fields use them)
    names: tuple[str, ...] = field(default=())

    def text(self) -> str:
        """The caller's schema as compact JSON, for a prompt."""
        return canonical(self.original, sort=False)


def canonical(value: Any, sort: bool = True) -> str:
    return json.dumps(value, sort_keys=sort, separators=(",", ":"), ensure_ascii=False)


def prepare(raw: str | Mapping[str, Any], param: str = "schema") -> Schema:
    """``raw`` (JSON text or a parsed object) as a checked ``Schema``; else the one-line refusal."""
    if isinstance(raw, str):
        text = raw
        if len(text.encode("utf-8", "surrogatepass")) > MAX_SCHEMA_BYTES:
            raise InvalidRequest(
                f"The {{param}} is {len(text.encode('utf-8', 'surrogatepass')):,} bytes; the limit is "
                f"{MAX_SCHEMA_BYTES:,}: describe the fields to extract, not the document.", param=param,
            )
        value = parse_json(text, param)
    else:
        check_depth(raw, param)
        try:
            text = canonical(raw, sort=False)
        except (TypeError, ValueError):
            raise InvalidRequest("The {param} holds values JSON cannot carry.", param=param) from None
        if len(text.encode("utf-8", "surrogatepass")) > MAX_SCHEMA_BYTES:
            raise InvalidRequest(
                f"The {{param}} is {len(text.encode('utf-8', 'surrogatepass')):,} bytes as JSON; the limit is "
                f"{MAX_SCHEMA_BYTES:,}: describe the fields to extract, not the document.", param=param,
            )
        value = json.loads(text)
    return _prepared(canonical(value, sort=False), param)


@functools.lru_cache(maxsize=128)
def _prepared(text: str, param: str) -> Schema:
    """The checks and the grammar of one schema, done once per schema (keyed by its canonical text)."""
    schema = json.loads(text)
    check_depth(schema, param)
    if not isinstance(schema, dict):
        raise InvalidRequest(
            f"The {{param}} is a JSON {json_kind(schema)}, not a JSON Schema; give an object such as "
            '{"type": "object", "properties": {"total": {"type": "number"}}}.', param=param,
        )
    check_references(schema, param)
    check_meta(schema, param)
    root = resolve(schema, schema["$ref"]) if isinstance(schema.get("$ref"), str) else schema
    if not (isinstance(root, dict) and (root.get("type") == "object" or "properties" in root)):
        raise InvalidRequest(
            "The {param} must describe one JSON object (type object, with properties): extract fills in fields.",
            param=param,
        )
    if not root.get("properties"):
        raise InvalidRequest("The {param} names no properties, so there is nothing to extract.", param=param)
    decoding = copy.deepcopy(schema)
    added = bound(decoding)
    grammar = compile_grammar(decoding, param)
    warnings = tuple(grammar_warnings(grammar))
    return Schema(
        original=schema,
        decoding=decoding,
        grammar=grammar,
        hash=hashlib.sha256(canonical(decoding, sort=False).encode()).hexdigest()[:16],
        bounds=tuple(added),
        warnings=warnings,
        names=tuple(str(name) for name in root["properties"]),
    )


def parse_json(text: str, param: str) -> Any:
    def constant(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")

    try:
        return json.loads(text, parse_constant=constant)
    except RecursionError:
        raise InvalidRequest(f"The {{param}} is nested more than {MAX_DEPTH} levels deep.", param=param) from None
    except json.JSONDecodeError as exc:
        raise InvalidRequest(
            f"The {{param}} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}).", param=param
        ) from None
    except ValueError as exc:  # NaN, Infinity, an integer of thousands of digits
        raise InvalidRequest(f"The {{param}} is not valid JSON ({one_line(str(exc), 80)}).", param=param) from None


def json_kind(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    return {str: "string", list: "list", type(None): "null"}.get(type(value), "value")


def check_depth(value: Any, param: str) -> None:
    """Refused past ``MAX_DEPTH`` levels of objects and lists, counted without recursing."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, Mapping):
            children = item.values()
        elif isinstance(item, (list, tuple)):
            children = item
        else:
            continue
        if depth > MAX_DEPTH:
            raise InvalidRequest(f"The {{param}} is nested more than {MAX_DEPTH} levels deep.", param=param)
        stack.extend((child, depth + 1) for child in children)


# ---------------------------------------------------------------- references


#: keywords whose value is one schema, a map of names to schemas, or a list of schemas
SCHEMA_KEYWORDS = frozenset({
    "items", "additionalItems", "additionalProperties", "contains", "not", "if", "then", "else",
    "propertyNames", "unevaluatedItems", "unevaluatedProperties", "contentSchema",
})
SCHEMA_MAPS = frozenset({"properties", "patternProperties", "$defs", "definitions", "dependentSchemas", "dependencies"})
SCHEMA_LISTS = frozenset({"allOf", "anyOf", "oneOf", "prefixItems", "items"})


def schema_nodes(value: Any, pointer: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every subschema that is an object, with its JSON pointer, found through the keywords that hold
    schemas; values of other keywords (enum, const, default, a property's name) are never taken for one."""
    stack: list[tuple[Any, str]] = [(value, pointer)]
    while stack:
        node, where = stack.pop()
        if not isinstance(node, dict):
            continue
        yield where, node
        for key, child in node.items():
            at = f"{where}/{escape(str(key))}"
            if key in SCHEMA_KEYWORDS and isinstance(child, dict):
                stack.append((child, at))
            elif key in SCHEMA_MAPS and isinstance(child, dict):
                stack.extend((sub, f"{at}/{escape(str(name))}") for name, sub in child.items())
            elif key in SCHEMA_LISTS and isinstance(child, list):
                stack.extend((sub, f"{at}/{n}") for n, sub in enumerate(child))


def escape(key: str) -> str:
    return key.replace("~", "~0").replace("/", "~1")


def resolve(schema: Any, ref: str) -> Any:
    """The value a local ``$ref`` (``#`` or ``#/a/b``) points at; KeyError when there is none."""
    from urllib.parse import unquote

    if ref == "#":
        return schema
    target = schema
    for part in unquote(ref[2:]).split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        if isinstance(target, dict) and part in target:
            target = target[part]
        elif isinstance(target, list) and part.isdigit() and int(part) < len(target):
            target = target[int(part)]
        else:
            raise KeyError(ref)
    return target


def check_references(schema: dict[str, Any], param: str) -> None:
    """Every ``$ref`` a JSON pointer into this schema that exists, and none that comes back to itself.

    Nothing is fetched: a reference to anything outside is refused before any library sees it.
    """
    refs: dict[str, list[str]] = {}  # pointer of a node holding a $ref -> its targets
    for where, node in schema_nodes(schema):
        for keyword in OTHER_REFERENCES:
            if keyword in node:
                raise Unsupported(
                    f"The {{param}} uses {keyword}; refer to definitions with $ref and a JSON pointer such as "
                    "#/$defs/NAME.", param=param,
                )
        if "$id" in node and where:
            raise Unsupported(
                "The {param} sets $id inside itself; vlm-agent resolves $ref only within the schema, so leave $id "
                "out below the top.", param=param,
            )
        ref = node.get("$ref")
        if ref is None:
            continue
        if not isinstance(ref, str):
            raise InvalidRequest(f"The {{param}} has a $ref at {where or '/'} that is not text.", param=param)
        if not (ref == "#" or ref.startswith("#/")):
            if ref.startswith("#"):
                raise Unsupported(
                    f"The {{param}}'s $ref {shown(ref)} names an anchor; refer by a JSON pointer such as "
                    "#/$defs/NAME.", param=param,
                )
            raise InvalidRequest(
                f"The {{param}}'s $ref {shown(ref)} points outside the schema, and vlm-agent fetches nothing for a "
                "$ref; put the definition under $defs and refer to it as #/$defs/NAME.", param=param,
            )
        try:
            resolve(schema, ref)
        except KeyError:
            raise InvalidRequest(f"The {{param}}'s $ref {shown(ref)} points to nothing in the schema.", param=param) from None
        refs.setdefault(where, []).append(ref[1:])
    cycle = find_cycle(schema, refs)
    if cycle is not None:
        raise Unsupported(
            f"The {{param}} is recursive: $ref {shown('#' + cycle)} leads back to where it stands; extract needs a schema of "
            "finite depth, so write the nesting out to the depth you need.", param=param,
        )


def find_cycle(schema: dict[str, Any], refs: dict[str, list[str]]) -> str | None:
    """A reference target that reaches itself through the references below it, if any.

    A target's subtree holds the ``$ref`` nodes whose pointers start with the target's;
    three-colour depth-first search over targets, so shared definitions are walked once.
    """
    def below(target: str) -> list[str]:
        prefix = target + "/"
        return [t for where, targets in refs.items() if where == target or where.startswith(prefix) or target == ""
                for t in targets]

    state: dict[str, int] = {}  # 1: on the path, 2: done
    for start in ["", *(t for targets in refs.values() for t in targets)]:
        if state.get(start):
            continue
        path = [(start, iter(below(start)))]
        state[start] = 1
        while path:
            node, children = path[-1]
            child = next(children, None)
            if child is None:
                state[node] = 2
                path.pop()
                continue
            seen = state.get(child)
            if seen == 1:
                return child
            if seen is None:
                state[child] = 1
                path.append((child, iter(below(child))))
    return None


def check_meta(schema: dict[str, Any], param: str) -> None:
    """The schema against its draft's meta-schema (2020-12 unless ``$schema`` names another)."""
    import jsonschema

    draft = schema.get("$schema")
    if draft is not None:
        if not isinstance(draft, str) or draft.rstrip("#") not in DRAFTS:
            raise Unsupported(
                f"The {{param}}'s $schema is {shown(draft)}; vlm-agent reads JSON Schema drafts "
                f"{', '.join(DRAFTS.values())}: name one of those, or leave $schema out.", param=param,
            )
    validator = validator_class(schema)
    error = jsonschema.exceptions.best_match(validator(validator.META_SCHEMA).iter_errors(schema))
    if error is not None:
        where = "/" + "/".join(escape(str(part)) for part in error.absolute_path)
        raise InvalidRequest(
            f"The {{param}} is not valid JSON Schema: at {where}, {one_line(error.message, 120)}.", param=param
        )


def validator_class(schema: Mapping[str, Any]) -> Any:
    import jsonschema

    draft = str(schema.get("$schema", "")).rstrip("#")
    return {
        "2019-09": jsonschema.Draft201909Validator, "7": jsonschema.Draft7Validator,
        "6": jsonschema.Draft6Validator, "4": jsonschema.Draft4Validator,
    }.get(DRAFTS.get(draft, ""), jsonschema.Draft202012Validator)


# ---------------------------------------------------------------- bounds


def types_of(node: Mapping[str, Any]) -> set[str]:
    kind = node.get("type")
    if isinstance(kind, str):
        return {kind}
    return {k for k in kind if isinstance(k, str)} if isinstance(kind, list) else set()


def bound(schema: dict[str, Any]) -> list[str]:
    """Fill in, in place, the bounds that keep a decoding finite, where the schema gives none; say which.

    Strings get ``maxLength``, numbers a range and at most ``DEFAULT_DECIMALS`` decimals (``multipleOf``),
    arrays ``maxItems``, and objects with properties
    ``additionalProperties: false`` (keys the schema does not name are not generated). Every
    answer under these bounds is also valid under the caller's schema.
    """
    counts = {"strings": 0, "numbers": 0, "decimals": 0, "arrays": 0, "objects": 0}
    for _, node in schema_nodes(schema):
        if "enum" in node or "const" in node or "$ref" in node:
            continue
        kinds = types_of(node)
        if "string" in kinds and "maxLength" not in node and node.get("format") not in BOUNDED_FORMATS:
            node["maxLength"] = max(DEFAULT_MAX_LENGTH, int(node.get("minLength", 0) or 0))
            counts["strings"] += 1
        if kinds & {"number", "integer"}:
            low = number_bound(node, "minimum", "exclusiveMinimum")
            high = number_bound(node, "maximum", "exclusiveMaximum")
            if low is None:
                node["minimum"] = -DEFAULT_RANGE if high is None or high > -DEFAULT_RANGE else high - DEFAULT_RANGE
            if high is None:
                node["maximum"] = DEFAULT_RANGE if low is None or low < DEFAULT_RANGE else low + DEFAULT_RANGE
            counts["numbers"] += low is None or high is None
            if "number" in kinds and "multipleOf" not in node:
                node["multipleOf"] = 10.0**-DEFAULT_DECIMALS
                counts["decimals"] += 1
        if "array" in kinds and "maxItems" not in node:
            node["maxItems"] = max(DEFAULT_MAX_ITEMS, int(node.get("minItems", 0) or 0))
            counts["arrays"] += 1
        if "properties" in node and "additionalProperties" not in node and "patternProperties" not in node:
            node["additionalProperties"] = False
            counts["objects"] += 1
    words = {
        "strings": f"strings at most {DEFAULT_MAX_LENGTH} characters",
        "numbers": f"numbers within ±{DEFAULT_RANGE:,}",
        "decimals": f"at most {DEFAULT_DECIMALS} decimals",
        "arrays": f"lists at most {DEFAULT_MAX_ITEMS} items",
        "objects": "no keys beyond the named properties",
    }
    return [f"{words[kind]} ({count} place{'s' if count > 1 else ''})" for kind, count in counts.items() if count]


def number_bound(node: Mapping[str, Any], inclusive: str, exclusive: str) -> float | None:
    """The schema's bound on one side of a number (draft 4 writes exclusiveMinimum as a flag), if any."""
    for key in (inclusive, exclusive):
        value = node.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return value
    return None


# ---------------------------------------------------------------- the grammar


def limits() -> Any:
    global _LIMITS
    if _LIMITS is None:
        import llguidance

        _LIMITS = llguidance.LLParserLimits(verbose_errors=False)
    return _LIMITS


def compile_grammar(decoding: dict[str, Any], param: str) -> str:
    """llguidance's grammar for ``decoding``; what it cannot implement is refused, named."""
    import llguidance

    options = {"whitespace_flexible": False}  # compact JSON: no tokens spent on spaces
    try:
        grammar = llguidance.LLMatcher.grammar_from_json_schema(canonical(decoding, sort=False), overrides=options)
    except ValueError as exc:
        raise InvalidRequest(f"The {{param}} cannot be read: {one_line(str(exc), 120)}.", param=param) from None
    is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar, None, limits=limits())
    if is_error:
        raise refusal(messages[0] if messages else "unknown error", param)
    return grammar


def grammar_warnings(grammar: str) -> list[str]:
    import llguidance

    _, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar, None, limits=limits())
    return [one_line(message, 160) for message in messages]


_UNIMPLEMENTED = re.compile(r'Unimplemented keys: \[(.*)\]')
_UNKNOWN_FORMAT = re.compile(r"Unknown format: (.*)")


def refusal(message: str, param: str) -> Unsupported | InvalidRequest:
    """llguidance's refusal as ours: the keyword or format named, and what to do."""
    found = _UNIMPLEMENTED.search(message)
    if found:
        keys = [key.strip().strip('"') for key in found.group(1).split(",") if key.strip()]
        listed = ", ".join(keys)
        return Unsupported(
            f"The {{param}} uses {listed}, which decoding under a schema does not implement; remove "
            f"{'it' if len(keys) == 1 else 'them'} (the answer is still checked against the whole schema).",
            param=param,
        )
    found = _UNKNOWN_FORMAT.search(message)
    if found:
        return Unsupported(
            f"The {{param}} uses format {shown(found.group(1).strip())}, which decoding under a schema does not "
            "know; use date, time, date-time, duration, email, hostname, ipv4, ipv6, uri or uuid, or a pattern.",
            param=param,
        )
    if "oneOf" in message:
        return Unsupported(
            "The {param} uses oneOf with branches that can match the same value, which decoding under a schema "
            "cannot enforce; use anyOf, or make the branches exclusive.", param=param,
        )
    if "recursion limit" in message.lower() or "too deep" in message.lower():
        return InvalidRequest(f"The {{param}} is nested too deeply to compile ({one_line(message, 80)}).", param=param)
    return InvalidRequest(f"The {{param}} cannot be compiled to a grammar: {one_line(message, 160)}.", param=param)


# ---------------------------------------------------------------- words


def one_line(text: str, limit: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def shown(value: Any, limit: int = 60) -> str:
    text = json.dumps(value, ensure_ascii=False) if not isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return text if len(text) <= limit else text[: limit - 1] + "…"
