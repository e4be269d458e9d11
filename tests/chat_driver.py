"""Runs `vlm-agent chat` with scripted keystrokes, as a separate process a test can kill.

Usage: python -m tests.chat_driver MODEL IMAGE LINE [LINE ...]; VLM_AGENT_HOME picks the
database. The lines are typed one after another into the chat's real prompt.
"""

from __future__ import annotations

import asyncio
import io
import sys

from prompt_toolkit import PromptSession
from prompt_toolkit.input import create_pipe_input
from prompt_toolkit.output import DummyOutput
from rich.console import Console

from agent.chat import run_chat


async def main(model: str, image: str, lines: list[str]) -> int:
    with create_pipe_input() as pipe:
        pipe.send_text("".join(line + "\n" for line in lines))
        prompt = PromptSession(input=pipe, output=DummyOutput())
        console = Console(file=io.StringIO())
        return await run_chat([image], serve=["--model", model], console=console, prompt=prompt)


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3:])))
