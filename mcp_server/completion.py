"""Argument completion (``completion/complete``) for the prompts and the pictures resource.

Budgets come from the resident model (Gemma 4's five when it is still loading), labels
from earlier detect calls, image handles from the images the server holds, picture
names from the pictures it wrote.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mcp.server.mcpserver import MCPServer
from mcp_types import Completion, CompletionArgument, CompletionContext, ResourceTemplateReference


from . import pictures

#: most values one answer carries (the protocol's own cap)
MOST = 100
TASKS = ("describe", "ocr", "detect")


class Seen:
    """Labels asked for in earlier calls, most recent first, for completing new ones."""

    def __init__(self, most: int = 200) -> None:
        self.most = most
        self._labels: OrderedDict[str, None] = OrderedDict()

    def remember(self, tool: str, arguments: Mapping[str, Any]) -> None:
        labels: Any = arguments.get("labels")
        if tool == "compare_budgets" and arguments.get("task") == "detect":
            labels = str(arguments.get("prompt") or "").split(",")
        if not isinstance(labels, list):
            return
        for label in labels:
            if isinstance(label, str) and label.strip():
                self._labels.pop(label.strip(), None)
                self._labels[label.strip()] = None
        while len(self._labels) > self.most:
            self._labels.popitem(last=False)

    @property
    def labels(self) -> list[str]:
        return list(reversed(self._labels))


def complete_list(value: str, known: list[str]) -> list[str]:
    """Completions of the last item of a comma-separated list, each with the items before it."""
    head, _, last = value.rpartition(",")
    before = [part.strip() for part in head.split(",") if part.strip()]
    prefix = ", ".join(before) + ", " if before else ""
    return [prefix + label for label in known if label.lower().startswith(last.strip().lower()) and label not in before]


def candidates(argument: str, value: str, engine: Any, seen: Seen, out_dir: Path) -> list[str]:
    if argument == "budget":
        vision = engine.vision
        # The model's own budgets, once it has loaded: until then there is nothing to offer.
        budgets = (vision.model_info().get("budgets") if vision is not None else None) or ()
        return [str(b) for b in budgets if str(b).startswith(value.strip())]
    if argument in ("labels", "label"):
        return complete_list(value, seen.labels)
    if argument == "image":
        return [i for i in engine.loader.store.ids() if i.startswith(value)]
    if argument == "task":
        return [t for t in TASKS if t.startswith(value)]
    if argument == "name":
        return [n for n in pictures.names(out_dir) if n.startswith(value)]
    return []


def register(server: MCPServer, engine: Any, seen: Seen, out_dir: Path) -> None:
    @server.completion()
    async def complete(ref: Any, argument: CompletionArgument, context: CompletionContext | None) -> Completion:
        if isinstance(ref, ResourceTemplateReference) and ref.uri != pictures.TEMPLATE:
            return Completion(values=[])
        found = candidates(argument.name, argument.value, engine, seen, out_dir)
        return Completion(values=found[:MOST], total=len(found), has_more=len(found) > MOST)
