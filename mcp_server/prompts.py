"""MCP prompts: the common jobs as ready-made requests, which IDE assistants offer as slash commands.

Each prompt asks the assistant's model to call one of the tools with the arguments given;
arguments complete through ``completion/complete`` (see ``completion.py``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Annotated, Any

from mcp.server.mcpserver import MCPServer
from mcp.shared.exceptions import MCPError
from mcp_types import INVALID_PARAMS, Prompt
from pydantic import Field

IMAGE = Annotated[
    str, Field(description="the image: a path inside the server's allowed folders, an http(s) URL, or an image_id")
]
BUDGET = Annotated[
    str,
    Field(description="visual-token budget, one of the model's (vlm-agent://model lists them); empty: the default"),
]


def budget_part(budget: str) -> str:
    return f" and budget={budget.strip()}" if budget.strip() else ""


def register(server: MCPServer) -> None:
    @server.prompt(name="describe", title="Describe an image", description="Describe an image, or ask about it.")
    def describe(
        image: IMAGE,
        question: Annotated[str, Field(description="what to ask; empty asks for a description")] = "",
        budget: BUDGET = "",
    ) -> str:
        ask = f" and prompt={question!r}" if question.strip() else ""
        return (
            f"Call the vlm-agent tool `describe` with images=[{image!r}]{ask}{budget_part(budget)}, "
            "then give me its answer."
        )

    @server.prompt(name="read_text", title="Read the text", description="Read all text in an image, in reading order.")
    def read_text(image: IMAGE, budget: BUDGET = "") -> str:
        return (
            f"Call the vlm-agent tool `ocr` with image={image!r}{budget_part(budget)} and show me the text it read, "
            "exactly as read."
        )

    @server.prompt(
        name="find_objects", title="Find objects",
        description="Find labelled objects in an image: boxes in pixels and an annotated picture.",
    )
    def find_objects(
        image: IMAGE,
        labels: Annotated[str, Field(description="what to find, comma-separated, e.g. 'person, car'")],
        budget: BUDGET = "",
    ) -> str:
        wanted = [label.strip() for label in labels.split(",") if label.strip()]
        return (
            f"Call the vlm-agent tool `detect` with image={image!r} and labels={wanted!r}{budget_part(budget)}; "
            "list what it found with the boxes, and show the annotated picture."
        )

    @server.prompt(
        name="compare_budgets", title="Compare visual-token budgets",
        description="Run one image at every visual-token budget and recommend the smallest that agrees (Gemma 4).",
    )
    def compare_budgets(
        image: IMAGE,
        task: Annotated[str, Field(description="describe, ocr or detect")] = "describe",
        prompt: Annotated[str, Field(description="the question (describe) or comma-separated labels (detect)")] = "",
    ) -> str:
        asked = f" and prompt={prompt!r}" if prompt.strip() else ""
        return (
            f"Call the vlm-agent tool `compare_budgets` with image={image!r}, task={task.strip() or 'describe'!r}"
            f"{asked}; show me its table of budgets and the recommended budget."
        )


def check(prompts: Sequence[Prompt], name: str, arguments: Mapping[str, Any] | None) -> None:
    """Refuse an unknown prompt, a missing argument or an unknown one in one sentence (invalid params),
    where the SDK answers "Internal server error" and logs a traceback."""
    known = {prompt.name: prompt for prompt in prompts}
    if name not in known:
        names = sorted(known)
        raise MCPError(INVALID_PARAMS, f"Unknown prompt {name[:40]!r}; use one of {', '.join(names[:-1])} or {names[-1]}.")
    takes = {argument.name: argument.required for argument in known[name].arguments or []}
    given = set(arguments or {})
    missing = [argument for argument, required in takes.items() if required and argument not in given]
    if missing:
        raise MCPError(INVALID_PARAMS, f"The {name} prompt needs {' and '.join(map(repr, missing))}.")
    unknown = sorted(given - set(takes))
    if unknown:
        raise MCPError(
            INVALID_PARAMS, f"The {name} prompt has no argument {unknown[0][:40]!r}; it takes {', '.join(map(repr, takes))}."
        )
