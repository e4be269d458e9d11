"""`vlm-agent run SCRIPT`: a scripted conversation for agents and CI, with a full transcript.

SCRIPT is YAML (a list of turns, or ``{turns: [...]}``) or JSON lines (one turn per
line). A turn is ``{user: TEXT, images: [PATH|URL, ...], tool: describe|ocr|detect|
compare_budgets, arguments: {...}}``; only ``user`` is required. Image paths are relative
to the script's folder.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .session import TOOLS, ChatError, ChatSession, TurnRecord


class ScriptError(ChatError):
    pass


def load_script(path: Path) -> list[dict[str, Any]]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        raise ScriptError(f"Cannot read the script '{path}'.") from None
    if path.suffix in (".jsonl", ".ndjson"):
        try:
            turns = [json.loads(line) for line in text.splitlines() if line.strip()]
        except json.JSONDecodeError as exc:
            raise ScriptError(f"Line {exc.lineno} of the script is not JSON.") from None
    else:
        import yaml

        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError:
            raise ScriptError("The script is not valid YAML.") from None
        turns = loaded.get("turns") if isinstance(loaded, Mapping) else loaded
    if not isinstance(turns, list) or not turns:
        raise ScriptError("The script holds no turns: give a list of {user: ..., images: [...]} items.")
    for n, turn in enumerate(turns, start=1):
        if not isinstance(turn, Mapping) or not isinstance(turn.get("user", ""), str):
            raise ScriptError(f"Turn {n} must be an object with a 'user' text.")
        if turn.get("tool") not in (None, *TOOLS):
            raise ScriptError(f"Turn {n} has tool {turn.get('tool')!r}; use one of {', '.join(TOOLS)}.")
        if not isinstance(turn.get("images", []), list):
            raise ScriptError(f"Turn {n} has 'images' that is not a list.")
    return [dict(turn) for turn in turns]


class RecordingView:
    """Keeps what a session reports, for the transcript; prints a line per turn to stderr."""

    def __init__(self, echo: Any = None) -> None:
        self.echo = echo
        self.events: list[dict[str, Any]] = []

    def notice(self, text: str) -> None:
        self.events.append({"notice": text})
        if self.echo:
            self.echo(f"! {text}")

    def tool_call(self, name: str, arguments: Mapping[str, Any], routed_by: str) -> None:
        if self.echo:
            self.echo(f"→ {name}({json.dumps(dict(arguments))}) {routed_by}")

    def text_delta(self, delta: str) -> None:
        pass

    def status(self, message: str) -> None:
        pass

    def result(self, record: TurnRecord, images: list[bytes]) -> None:
        if self.echo:
            self.echo(f"  {'error: ' + record.error if record.error else 'ok'} ({record.ms:.0f} ms)")


async def run_script(session: ChatSession, turns: list[dict[str, Any]], base: Path) -> dict[str, Any]:
    """Run every turn (a failed turn does not stop the run) and return the transcript."""
    started = time.time()
    session.attach_hint = "add images: [PATH] to the turn"
    records = []
    for turn in turns:
        entry: dict[str, Any] = {"user": turn.get("user", "")}
        try:
            for ref in turn.get("images", []):
                session.attach(ref if "://" in ref else str((base / ref).expanduser()))
            record = await session.send(turn.get("user", ""), turn.get("tool"), turn.get("arguments"))
            entry.update(asdict(record))
        except ChatError as exc:
            entry.update({"error": str(exc)})
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
