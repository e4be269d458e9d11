"""`vlm-agent run SCRIPT`: a scripted conversation for agents and CI, with a full transcript.

SCRIPT is YAML (a list of turns, or ``{turns: [...]}``) or JSON lines (one turn per
line). A turn is ``{user: TEXT, images: [PATH|URL, ...], tool: describe|ocr|detect|
compare_budgets|extract, arguments: {...}}``; only ``user`` is required (``extract`` takes a
``schema`` mapping or ``fields`` text in its arguments). Image paths are relative
to the script's folder.

The whole script is read and checked before the server starts: at most ``MAX_SCRIPT_BYTES``
of UTF-8, YAML without anchors or aliases (which let a kilobyte expand into gigabytes), nesting
of at most ``MAX_DEPTH``, at most ``MAX_TURNS`` turns, each turn against ``script_schema``.
"""

from __future__ import annotations

import json
import time
import unicodedata
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .files import FileProblem, read_capped_text
from .script_schema import Turn, TurnError, check_turn
from .session import ChatError, ChatSession, TurnRecord

MAX_SCRIPT_BYTES = 1 << 20
MAX_TURNS = 1000
#: deepest nesting a script needs is five (turns, a turn, its arguments, a list): far more is refused
MAX_DEPTH = 16


class ScriptError(ChatError):
    pass


def read_script(path: Path) -> str:
    """The script's text: at most ``MAX_SCRIPT_BYTES`` read (a device or a pipe never ends), UTF-8."""
    try:
        return read_capped_text(path, MAX_SCRIPT_BYTES)
    except FileProblem as problem:
        raise ScriptError({
            "unreadable": f"Cannot read the script '{path}'.",
            "too large": f"The script is larger than {MAX_SCRIPT_BYTES >> 20} MiB; split it into smaller scripts.",
            "not UTF-8": f"The script is not UTF-8 text: line {problem.line} holds the byte 0x{problem.byte:02X}; "
            "save it as UTF-8.",
        }[problem.kind]) from None


def parse_json_lines(text: str) -> list[Any]:
    turns = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            turns.append(json.loads(line))
        except RecursionError:
            raise ScriptError(f"Line {number} of the script is nested too deeply.") from None
        except ValueError:  # malformed, or an integer of thousands of digits
            raise ScriptError(f"Line {number} of the script is not JSON.") from None
        if len(turns) > MAX_TURNS:
            break
    return turns


def parse_yaml(text: str) -> Any:
    """The YAML document, once its events show no anchor, no alias and no deep nesting.

    The events are read first (libyaml's, where installed: fast), so nothing is built
    from a script that is refused.
    """
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    depth = 0
    try:
        for event in yaml.parse(text, Loader=loader):
            line = event.start_mark.line + 1
            if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
                raise ScriptError(
                    f"Line {line} of the script holds a YAML anchor or alias (&name or *name); write the value out."
                )
            if isinstance(event, (yaml.SequenceStartEvent, yaml.MappingStartEvent)):
                depth += 1
                if depth > MAX_DEPTH:
                    raise ScriptError(f"Line {line} of the script is nested too deeply (more than {MAX_DEPTH} levels).")
            elif isinstance(event, (yaml.SequenceEndEvent, yaml.MappingEndEvent)):
                depth -= 1
        return yaml.load(text, Loader=loader)  # noqa: S506 (a safe loader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" (line {mark.line + 1}: {exc.problem})" if mark is not None and exc.problem else ""
        raise ScriptError(f"The script is not valid YAML{where}.") from None
    except yaml.YAMLError:
        raise ScriptError("The script is not valid YAML.") from None
    except ValueError:  # an integer of thousands of digits
        raise ScriptError("The script holds a value YAML cannot read.") from None


def load_script(path: Path) -> list[Turn]:
    """Every turn of the script at ``path``, checked; else ``ScriptError`` in one line."""
    text = read_script(path)
    if path.suffix in (".jsonl", ".ndjson"):
        turns = parse_json_lines(text)
    else:
        loaded = parse_yaml(text)
        if isinstance(loaded, Mapping):
            extra = [str(key) for key in loaded if key != "turns"]
            if extra:
                raise ScriptError(f"The script's top level takes only 'turns', not {extra[0]!r}.")
            loaded = loaded.get("turns")
        turns = loaded
    if not isinstance(turns, list) or not turns:
        raise ScriptError("The script holds no turns: give a list of {user: ..., images: [...]} items.")
    if len(turns) > MAX_TURNS:
        raise ScriptError(f"The script holds more than {MAX_TURNS} turns; split it into smaller scripts.")
    try:
        return [check_turn(number, turn) for number, turn in enumerate(turns, start=1)]
    except TurnError as exc:
        raise ScriptError(str(exc)) from None


def visible(text: str) -> str:
    """``text`` for one line on a terminal: control characters (ESC, BEL, line breaks) written as escapes."""
    return "".join(
        char.encode("unicode_escape").decode("ascii") if unicodedata.category(char) == "Cc" else char for char in text
    )


class RecordingView:
    """Keeps what a session reports, for the transcript; prints a line per turn to stderr."""

    def __init__(self, echo: Any = None) -> None:
        # Names and reasons may hold what a script or a server wrote: never a raw control character.
        self.echo = (lambda line: echo(visible(line))) if echo else None
        self.events: list[dict[str, Any]] = []
        #: the number of the turn running, for the echo
        self.turn = 0

    def notice(self, text: str) -> None:
        self.events.append({"notice": text})
        if self.echo:
            self.echo(f"! {text}")

    def tool_call(self, name: str, arguments: Mapping[str, Any], routed_by: str) -> None:
        if self.echo:
            self.echo(f"turn {self.turn} → {name}({json.dumps(dict(arguments))}) {routed_by}")

    def text_delta(self, delta: str) -> None:
        pass

    def status(self, message: str) -> None:
        pass

    def result(self, record: TurnRecord, images: list[bytes]) -> None:
        if self.echo and not record.error:
            self.echo(f"  ok ({record.ms:.0f} ms)")

    def failed(self, number: int, reason: str) -> None:
        """A turn that failed, before its tool ran or in it: the reason, on the echo too."""
        if self.echo:
            self.echo(f"turn {number} failed: {reason}")


async def run_script(session: ChatSession, turns: list[Turn], base: Path) -> dict[str, Any]:
    """Run every turn (a failed turn does not stop the run) and return the transcript."""
    started = time.time()
    session.attach_hint = "add images: [PATH] to the turn"
    records = []
    for number, turn in enumerate(turns, start=1):
        if isinstance(session.view, RecordingView):
            session.view.turn = number
        entry: dict[str, Any] = {"user": turn.user}
        try:
            for ref in turn.images:
                session.attach(ref if "://" in ref else str((base / ref).expanduser()))
            record = await session.send(turn.user, turn.tool, turn.arguments)
            entry.update(asdict(record))
        except ChatError as exc:
            entry.update({"error": str(exc)})
        if entry.get("error") and isinstance(session.view, RecordingView):
            session.view.failed(number, entry["error"])
        records.append(entry)
    return {
        "model": session.info.get("model"),
        "family": session.info.get("family"),
        "context": session.policy,
        "started": started,
        "seconds": round(time.time() - started, 3),
        "turns": records,
        "failed": sum(1 for r in records if r.get("error")),
    }
