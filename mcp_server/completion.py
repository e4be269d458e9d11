"""Argument completion (``completion/complete``) for the prompts and the pictures resource.

Budgets come from the resident model (Gemma 4's five when it is still loading); labels, image
handles and picture names are the caller's own (``owners``): the labels of its earlier calls,
the images it loaded, the pictures its calls wrote. A reply is bounded before anything is
computed: a value to complete longer than ``MAX_VALUE_CHARS`` is refused, and values stop at
``MOST`` (the protocol's own cap) or ``MAX_REPLY_CHARS``, whichever comes first. A prompt,
template or argument that does not exist is an error (invalid params), not an empty list.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from mcp.server.mcpserver import MCPServer
from mcp.shared.exceptions import MCPError
from mcp_types import INVALID_PARAMS, CompleteRequestParams, CompleteResult, Completion, PromptReference


from . import pictures
from .owners import Owner
from .resident import Resident

#: most values one answer carries (the protocol's own cap)
MOST = 100
#: the longest value completed: 20 labels of 100 characters fit; megabytes would come back once per value
MAX_VALUE_CHARS = 4096
#: characters of values in one answer, past which it stops (and says it has more)
MAX_REPLY_CHARS = 64 * 1024
TASKS = ("describe", "ocr", "detect")


def refuse(sentence: str) -> MCPError:
    return MCPError(INVALID_PARAMS, sentence)


def complete_list(value: str, known: Iterable[str]) -> Iterator[str]:
    """Completions of the last item of a comma-separated list, each with the items before it."""
    head, _, last = value.rpartition(",")
    before = [part.strip() for part in head.split(",") if part.strip()]
    taken = set(before)
    prefix = ", ".join(before) + ", " if before else ""
    wanted = last.strip().lower()
    return (prefix + label for label in known if label.lower().startswith(wanted) and label not in taken)


def candidates(argument: str, value: str, resident: Resident, owner: Owner, out_dir: Path) -> Iterator[str]:
    """The values for ``argument``, lazily: the caller takes only as many as an answer holds."""
    if argument == "budget":
        vision = resident.vision
        # The model's own budgets, once it has loaded: until then there is nothing to offer.
        budgets = (vision.model_info().get("budgets") if vision is not None else None) or ()
        return (str(b) for b in budgets if str(b).startswith(value.strip()))
    if argument == "labels":
        return complete_list(value, owner.labels.newest_first())
    if argument == "image":
        store = resident.loader.store
        return (i for i in owner.scope.image_ids() if i.startswith(value) and i in store)
    if argument == "task":
        return (t for t in TASKS if t.startswith(value))
    if argument == "name":
        return iter(pictures.names(out_dir, owner, value, MOST + 1))
    return iter(())


def bounded(found: Iterator[str]) -> Completion:
    """At most ``MOST`` values and ``MAX_REPLY_CHARS`` characters of them; ``has_more`` says when more were left."""
    values: list[str] = []
    chars = 0
    for item in found:
        if len(values) == MOST or chars + len(item) > MAX_REPLY_CHARS:
            return Completion(values=values, has_more=True)
        values.append(item)
        chars += len(item)
    return Completion(values=values, total=len(values), has_more=False)


async def arguments_of(server: MCPServer, ref: Any) -> list[str]:
    """The arguments ``ref`` takes; a prompt or template that does not exist is refused."""
    if isinstance(ref, PromptReference):
        prompts = {p.name: p for p in await server.list_prompts()}
        prompt = prompts.get(ref.name)
        if prompt is None:
            raise refuse(f"No prompt named {ref.name[:40]!r}; arguments complete for {', '.join(sorted(prompts))}.")
        return [a.name for a in prompt.arguments or []]
    if ref.uri != pictures.TEMPLATE:
        raise refuse(f"No resource template {ref.uri[:60]!r} takes completion; {pictures.TEMPLATE} does.")
    return ["name"]


def register(server: MCPServer, resident: Resident, out_dir: Path) -> None:
    # Registered on the low-level server, not with MCPServer.completion: the handler needs the
    # request's session to know whose labels, images and pictures to offer.
    async def complete(ctx: Any, params: CompleteRequestParams) -> CompleteResult:
        argument = params.argument
        known = await arguments_of(server, params.ref)
        if argument.name not in known:
            what = f"prompt {params.ref.name!r}" if isinstance(params.ref, PromptReference) else "picture template"
            raise refuse(f"The {what} has no argument {argument.name[:40]!r}; it takes {', '.join(known)}.")
        if len(argument.value) > MAX_VALUE_CHARS:
            raise refuse(
                f"The value to complete is {len(argument.value):,} characters long; completion takes at most "
                f"{MAX_VALUE_CHARS:,}."
            )
        owner = resident.owners.of(ctx.session)
        return CompleteResult(completion=bounded(candidates(argument.name, argument.value, resident, owner, out_dir)))

    server._lowlevel_server.add_request_handler("completion/complete", CompleteRequestParams, complete)  # noqa: SLF001
