"""The ``vlm-agent`` command: one-shot commands on the vision core, for people and scripts.

Results go to stdout (plain text, or the structured result with --json); progress,
statistics and errors go to stderr, so ``--json`` output can be piped as is.
"""

from __future__ import annotations

import argparse
import asyncio
import difflib
import json
import logging
import math
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from agent.files import FileProblem, read_capped_text
from agent.terminal import TerminalConsole
from tools import checks
from tools.about import package_version
from tools.errors import InvalidRequest, VlmError
from tools.extract import DEFAULT_MAX_NEW_TOKENS as EXTRACT_MAX_NEW_TOKENS
from tools.extract import DEFAULT_THRESHOLD
from tools.families import BY_FAMILY, DIALECTS
from tools.families.base import BudgetedChatDialect
from tools.inputs.policy import Limits
from tools.progress import Reporter, reporting
from tools.model import DEFAULT_ENGINE_FAMILY, DEFAULT_MODEL, NO_MODEL
from tools.reading.offline import ENGINES
from tools.options import PRESETS, resolve_options
from tools.results import BoxesResult, ExtractResult, Result
from tools.runtimes.api import DEFAULT_KEY_ENV, ApiSettings
from tools.runtimes.loading import QUANTIZE
from tools.tiny import BUILDERS

MODEL_ENV = "VLM_AGENT_MODEL"
DEFAULT_MAX_NEW_TOKENS = 512
#: a tiny random-weight checkpoint rarely stops before the cap: 512 tokens take a minute on a small machine
TINY_MAX_NEW_TOKENS = 32


# Plain output goes to a terminal: file names, model text, notes and errors are cleaned of
# escape sequences there (agent/terminal.py). --json output is printed as it is.
err = TerminalConsole(stderr=True, highlight=False, soft_wrap=True)
out = TerminalConsole(highlight=False, soft_wrap=True)


def model_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        default=os.environ.get(MODEL_ENV, DEFAULT_MODEL),
        help=f"hub id or local directory (default: ${MODEL_ENV} or {DEFAULT_MODEL}); "
        f"'{NO_MODEL}' loads none (serve: only ocr with --engine rapidocr works)",
    )
    parser.add_argument(
        "--dtype", default="auto", choices=("auto", "bfloat16", "float16", "float32"), help="weights precision"
    )
    parser.add_argument(
        "--quantize", choices=QUANTIZE, default=None, help="load 4-bit or 8-bit weights (bitsandbytes, CUDA GPU only)"
    )
    engine = parser.add_argument_group(
        "serving engine", "run on an OpenAI-compatible server (vLLM, SGLang, Ollama) instead of loading the model here"
    )
    engine.add_argument(
        "--backend", choices=("local", "openai"), default="local",
        help="local: load the model in this process (default); openai: send requests to --base-url",
    )
    engine.add_argument("--base-url", help="the engine's API root, e.g. http://127.0.0.1:8000/v1")
    engine.add_argument("--api-model", help="the model name the engine serves (default: --model)")
    engine.add_argument(
        "--api-family", choices=tuple(BY_FAMILY), default=DEFAULT_ENGINE_FAMILY,
        help="the family of the model the engine serves, whose prompts and parsers to use (default gemma4)",
    )
    engine.add_argument(
        "--api-key-env", metavar="VAR",
        help=f"environment variable holding the engine's API key (default: ${DEFAULT_KEY_ENV}, if set)",
    )
    engine.add_argument(
        "--budgets-supported", action="store_true",
        help="the engine takes the family's budgets per request (vLLM: mm_processor_kwargs); without it, "
        "--budget and compare_budgets are refused",
    )
    engine.add_argument(
        "--max-concurrency", type=int, default=4, help="requests in flight to the engine at once (default 4)"
    )
    engine.add_argument(
        "--api-timeout", type=float, default=300.0, metavar="SECONDS",
        help="how long to wait for the engine's next bytes (default 300)",
    )
    engine.add_argument(
        "--api-send-urls", action="store_true",
        help="pass http(s) image URLs on for the engine to fetch, instead of the image bytes",
    )
    engine.add_argument(
        "--api-extra-body", type=json_object, default=None, metavar="JSON",
        help="more fields for every request, for the engine's own options, e.g. '{\"top_k\": 20}' "
        "or vLLM's '{\"structured_outputs\": {\"choice\": [\"yes\", \"no\"]}}'",
    )
    engine.add_argument(
        "--no-api-structured", action="store_true",
        help="do not ask the engine for JSON answers under a schema (response_format) for detect's boxes and "
        "verify's yes or no; by default they are asked for, and dropped by themselves if the engine refuses them",
    )
    parser.add_argument(
        "--compile", action="store_true",
        help="decode on a static KV cache with torch.compile and CUDA graphs (Gemma 4, CUDA GPU only): "
        "faster tokens after a slower first load",
    )


def api_settings(args: argparse.Namespace) -> ApiSettings | None:
    """The engine to use, or None for a model loaded here; mixed-up flags fail before anything runs."""
    if args.backend == "local":
        if args.base_url:
            raise InvalidRequest("--base-url needs --backend openai.")
        return None
    if not args.base_url:
        raise InvalidRequest("--backend openai needs --base-url, e.g. http://127.0.0.1:8000/v1.")
    if args.quantize or args.dtype != "auto":
        raise InvalidRequest("--dtype and --quantize apply to a model loaded here; the engine chooses its own weights.")
    return ApiSettings(
        base_url=args.base_url,
        model=args.api_model or args.model,
        family=args.api_family,
        key_env=args.api_key_env,
        budgets=args.budgets_supported,
        max_concurrency=args.max_concurrency,
        timeout_s=args.api_timeout,
        send_urls=args.api_send_urls,
        extra_body=args.api_extra_body or {},
        structured=not args.no_api_structured,
    )


def connect_options(parser: argparse.ArgumentParser) -> None:
    """The chat's and scripts' server: a `vlm-agent serve` child built from the model flags, or --server."""
    model_option(parser)
    parser.add_argument(
        "--server", metavar="URL",
        help="use a running HTTP server (e.g. http://127.0.0.1:8000/mcp) instead of starting one; "
        "the model flags then do not apply",
    )
    parser.add_argument("--token-env", metavar="VAR", help="send 'Authorization: Bearer $VAR' to --server")
    limit_options(parser)


#: flags a chat or script hands on to the `vlm-agent serve` child it starts
SERVE_FLAGS = (
    "model", "dtype", "quantize", "backend", "base_url", "api_model", "api_family", "api_key_env", "budgets_supported",
    "max_concurrency", "api_timeout", "api_send_urls", "api_extra_body", "no_api_structured", "compile",
    "max_pages", "max_frames", "max_megapixels", "max_video_seconds",
)


def serve_args(args: argparse.Namespace) -> list[str]:
    """The model and engine flags given on this command line, as `vlm-agent serve` arguments."""
    defaults = build_parser().parse_args(["serve"])
    out: list[str] = []
    for name in SERVE_FLAGS:
        value = getattr(args, name)
        if value == getattr(defaults, name):
            continue
        flag = "--" + name.replace("_", "-")
        out += [flag] if value is True else [flag, json.dumps(value) if isinstance(value, dict) else str(value)]
    return out


def generation_options(parser: argparse.ArgumentParser) -> None:
    """How much and how freely the model writes: every command that runs the model takes these."""
    parser.add_argument(
        "--max-new-tokens", type=int, default=None,
        help=f"cap on generated tokens (default {DEFAULT_MAX_NEW_TOKENS}; {TINY_MAX_NEW_TOKENS} for a tiny "
        "random-weight checkpoint from tiny-model, which writes gibberish to the cap)",
    )
    parser.add_argument("--temperature", type=float, default=None, help="0 decodes greedily (default)")
    parser.add_argument("--top-p", type=float, default=None, help="nucleus sampling threshold (default 1)")


def choose_max_new_tokens(args: argparse.Namespace) -> str | None:
    """Fill in ``--max-new-tokens`` when it was not given; the note to show when the choice is a tiny
    checkpoint's shorter default."""
    if getattr(args, "max_new_tokens", 0) is not None:
        return None
    if args.command == "extract":
        # The grammar ends a tiny model's answer too: an object needs more room than a caption.
        args.max_new_tokens = EXTRACT_MAX_NEW_TOKENS
        return None
    from tools.tiny import is_tiny

    local = args.backend == "local" and not getattr(args, "server", None)
    if local and is_tiny(args.model):
        args.max_new_tokens = TINY_MAX_NEW_TOKENS
        return (
            f"note: {args.model} is a tiny random-weight checkpoint: it writes gibberish up to the token cap, so "
            f"--max-new-tokens defaults to {TINY_MAX_NEW_TOKENS} for it (not {DEFAULT_MAX_NEW_TOKENS}); "
            "pass --max-new-tokens N to choose."
        )
    args.max_new_tokens = DEFAULT_MAX_NEW_TOKENS
    return None


def sampling_of(args: argparse.Namespace) -> dict[str, float]:
    """The sampling flags given, as tool arguments for the chat's and scripts' calls."""
    chosen = resolve_options(None, max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p)
    given = {"temperature": args.temperature, "top_p": args.top_p}
    return {name: getattr(chosen, name) for name, value in given.items() if value is not None}


def budget_value(text: str) -> int | str | None:
    try:
        return checks.budget_value(text)
    except InvalidRequest as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"{text[:30]!r} is not a JSON object, e.g. '{{\"top_k\": 20}}'")
    return value


def budget_list(text: str) -> list[int]:
    try:
        budgets = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        budgets = []
    if not budgets:  # ",," was an empty list, which ran a plain detect as if --consensus were not given
        raise argparse.ArgumentTypeError(f"{text[:30]!r} is not budgets separated by commas, e.g. 280,560,1120")
    return budgets


def tiles_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--tiles", default=None, metavar="auto|off|N",
        help="read in overlapping tiles: auto tiles only an image the engine would shrink (rapidocr past "
        "2000 px, Gemma 4 past what budget 1120 sees); N tiles across the long side, 1-8 (default off; "
        "auto for a PDF's pages)",
    )


def limit_options(parser: argparse.ArgumentParser) -> None:
    """What one PDF or clip may cost, checked from its header before anything is rendered or decoded."""
    limits = parser.add_argument_group("documents and clips", "limits checked before a page renders or a frame decodes")
    defaults = Limits()
    limits.add_argument("--max-pages", type=int, default=defaults.max_pages, metavar="N",
                        help=f"PDF pages one call may read (default {defaults.max_pages})")
    limits.add_argument("--max-frames", type=int, default=defaults.max_frames, metavar="N",
                        help=f"frames of a clip one call sends to the model; a clip is sampled evenly down to them "
                        f"(default {defaults.max_frames})")
    limits.add_argument("--max-megapixels", type=float, default=defaults.max_render_pixels / 1e6, metavar="MP",
                        help="pixels of one rendered page or decoded frame, in millions (default "
                        f"{defaults.max_render_pixels / 1e6:g})")
    limits.add_argument("--max-video-seconds", type=float, default=defaults.max_video_s, metavar="SECONDS",
                        help=f"how long a clip may last (default {defaults.max_video_s:g})")


#: the limit flags: (lowest, highest, unit, whether the lowest itself is refused)
LIMIT_NUMBERS: dict[str, tuple[float, float, str, bool]] = {
    "max_pages": (1, 100_000, "pages", False),
    "max_frames": (1, 1024, "frames", False),
    "max_megapixels": (0, 1000, "megapixels", True),
    "max_video_seconds": (0, 86_400, "seconds", True),
}


def limits_of(args: argparse.Namespace) -> Limits:
    """The per-image, per-document and per-clip caps the flags ask for."""
    check_numbers(args, LIMIT_NUMBERS)
    return Limits(
        max_pages=args.max_pages, max_frames=args.max_frames,
        max_render_pixels=int(args.max_megapixels * 1_000_000), max_video_s=args.max_video_seconds,
    )


def budgets_help() -> str:
    """What each family with budgets takes, from the registry: "Gemma 4, Qwen3-VL: 70 / ... / 1120, default 280"."""
    by_values: dict[tuple[tuple[int, ...], int], list[str]] = {}
    for dialect in DIALECTS:
        if issubclass(dialect, BudgetedChatDialect):
            by_values.setdefault((dialect.budget_values, dialect.default_budget), []).append(dialect.display_name)
    return "; ".join(
        f"{', '.join(names)}: {' / '.join(map(str, values))}, default {default}"
        for (values, default), names in by_values.items()
    )


def pages_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--pages", default=None, metavar="PAGES",
        help="pages of a PDF IMAGE to use: 3, 2-5 or 1,3,7-9 (default all; IMAGE#pages=2-5 works too)",
    )
    parser.add_argument(
        "--progress", action="store_true",
        help="a line on stderr for each page or frame as it is rendered, decoded and finished",
    )


def call_options(parser: argparse.ArgumentParser) -> None:
    model_option(parser)
    parser.add_argument(
        "--budget",
        type=budget_value,
        default=None,
        help=f"visual-token budget for families that take one ({budgets_help()}), or auto: the smallest that "
        "keeps what the task needs; PaliGemma and BLIP-2 have a fixed resolution and take none",
    )
    generation_options(parser)
    parser.add_argument(
        "--preset", choices=tuple(PRESETS), default=None,
        help="decoding preset (PaliGemma demo's choices); --temperature and --top-p override it",
    )
    parser.add_argument("--json", action="store_true", help="print the structured result as JSON")
    parser.add_argument(
        "--allow-private-urls", action="store_true", help="allow image URLs on loopback or private networks"
    )
    limit_options(parser)


class DefaultsFormatter(argparse.HelpFormatter):
    """Help that shows every flag's default: the flag's own words where they give it, else appended."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help
        default = action.default
        if (
            text and action.option_strings and "default" not in text
            and default not in (None, False, [], argparse.SUPPRESS)
        ):
            shown = f"{default:g}" if isinstance(default, float) else str(default)
            text += f" (default {shown.replace('%', '%%')})"
        return text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vlm-agent",
        description="Put a vision-language model to work: describe, read and detect in images.",
        formatter_class=DefaultsFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log details to stderr")
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = commands.add_parser(
        "demo",
        help="first run: a tiny model describes a picture and the offline OCR reads it, nothing to download",
        description="Build (or reuse) a tiny random-weight Gemma 4 in DIR/tiny, describe a generated picture "
        "with it (gibberish on purpose), read the picture's text with the offline OCR engine, and say what "
        "to run next.",
    )
    p.add_argument("dir", nargs="?", default="vlm-agent-demo", metavar="DIR", help="where to put the checkpoint "
                   "and picture (default: ./vlm-agent-demo)")

    p = commands.add_parser("describe", help="caption images or answer a question about them")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="path, http(s) URL or data: URI")
    p.add_argument("--prompt", "-p", default="", help="question or instruction (default: describe)")
    pages_option(p)
    call_options(p)

    p = commands.add_parser("ocr", help="read all text in an image")
    p.add_argument("images", nargs=1, metavar="IMAGE")
    p.add_argument(
        "--engine", choices=ENGINES, default="vlm",
        help="vlm: the model (default); rapidocr: offline PP-OCR with line boxes, no model loaded "
        "(needs pip install 'vlm-agent[ocr]')",
    )
    tiles_option(p)
    pages_option(p)
    call_options(p)

    p = commands.add_parser("detect", help="find labelled objects and draw their boxes")
    p.add_argument("images", nargs=1, metavar="IMAGE")
    p.add_argument("labels", nargs="+", metavar="LABEL")
    p.add_argument("--out", default=None, help="annotated PNG to write (default: IMAGE-detections.png here)")
    tiles_option(p)
    p.add_argument(
        "--consensus", type=budget_list, default=None, metavar="B1,B2,...",
        help="run these budgets together and fuse their boxes (weighted box fusion), e.g. 280,560,1120; "
        "each box says which budgets found it",
    )
    p.add_argument("--verify", action="store_true", help="ask the model about each box's crop at budget 1120")
    pages_option(p)
    call_options(p)

    p = commands.add_parser(
        "extract", help="fill in a JSON Schema's fields from images: valid JSON, each value with its box and confidence",
        description="Read the object a JSON Schema describes from one or more images, decoded under the schema's "
        "grammar, so the answer validates. Each value gets the box it was read from (families that ground: Gemma 4, "
        "Qwen3-VL, PaliGemma) and a confidence; values under --threshold are read again from their crop at a "
        "higher budget. Prints the object on stdout (--json: the whole result) and the per-value report on stderr.",
    )
    p.add_argument("images", nargs="+", metavar="IMAGE", help="path, http(s) URL or data: URI")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--schema", metavar="FILE", help="a JSON Schema file describing one object")
    what.add_argument(
        "--fields", metavar="TEXT",
        help="the fields in short: 'total:number, date:date, vendor' (types: string, number, integer, boolean, "
        "date, time, datetime, email; TYPE[] for a list; a|b|c for choices; NAME? for optional)",
    )
    p.add_argument("--out", default=None, help="annotated PNG of the located values (default: IMAGE-extract.png here)")
    p.add_argument(
        "--threshold", type=float, default=DEFAULT_THRESHOLD,
        help="values whose confidence is below this are read again from their crop at a higher budget",
    )
    p.add_argument("--no-verify", action="store_true", help="do not read doubtful values again")
    pages_option(p)
    call_options(p)

    p = commands.add_parser("segment", help="find one labelled object: its box and mask codes (PaliGemma)")
    p.add_argument("images", nargs=1, metavar="IMAGE")
    p.add_argument("label", metavar="LABEL")
    p.add_argument("--out", default=None, help="annotated PNG to write (default: IMAGE-segment.png here)")
    call_options(p)

    p = commands.add_parser(
        "chat",
        help="a multi-turn vision chat in the terminal, over the MCP server",
        description="Chat about images. Starts `vlm-agent serve` as a child process (or connects to --server) "
        "and talks to it over MCP; conversations are kept in SQLite and can be resumed.",
    )
    p.add_argument("images", nargs="*", metavar="IMAGE", help="images to attach at the start")
    connect_options(p)
    p.add_argument("--budget", type=int, default=None, help="visual-token budget (Gemma 4)")
    generation_options(p)
    p.add_argument("--resume", action="store_true", help="continue the last conversation")

    p = commands.add_parser(
        "run",
        help="run a scripted conversation (YAML or JSON lines) and write its transcript",
        description="Run the turns of SCRIPT through the MCP server like a chat would. Exit status 1 when any "
        "turn failed.",
    )
    p.add_argument("script", metavar="SCRIPT")
    p.add_argument("--out", default=None, help="write the transcript JSON here (default: stdout)")
    connect_options(p)
    p.add_argument("--budget", type=int, default=None, help="visual-token budget (Gemma 4)")
    generation_options(p)

    p = commands.add_parser(
        "serve",
        help="run the MCP server (describe, ocr, detect, compare_budgets, chat) for IDE assistants and agents",
        description="Run the MCP server with one resident model. On stdio, stdout carries only the "
        "protocol; logs and load progress go to stderr.",
    )
    model_option(p)
    p.add_argument(
        "--transport", choices=("stdio", "http"), default="stdio",
        help="stdio for an IDE assistant that starts the server; http for clients that connect to it",
    )
    p.add_argument("--host", default="127.0.0.1", help="HTTP bind address (default 127.0.0.1: loopback only)")
    p.add_argument("--port", type=int, default=8000, help="HTTP port")
    p.add_argument(
        "--allow-dir", action="append", default=None, metavar="DIR",
        help="folder the tools may read images from; repeatable (default: the current folder)",
    )
    p.add_argument("--allow-private-urls", action="store_true", help="fetch image URLs on loopback or private networks")
    p.add_argument(
        "--allow-host", action="append", default=[], metavar="NAME",
        help="extra Host/Origin name accepted over HTTP (e.g. the machine's name when binding 0.0.0.0)",
    )
    p.add_argument("--token-env", metavar="VAR", help="require 'Authorization: Bearer $VAR' on every HTTP request")
    p.add_argument("--out-dir", default=None, help="where annotated PNGs are written (default: the user data folder)")
    p.add_argument(
        "--out-max-mb", type=float, default=512, metavar="MB",
        help="the output folder's size cap: the oldest pictures go first past it (default 512)",
    )
    p.add_argument(
        "--out-max-days", type=float, default=7, metavar="DAYS",
        help="pictures older than this are removed from the output folder (default 7)",
    )
    p.add_argument(
        "--max-queue", type=int, default=16, metavar="N",
        help="requests that may wait for the model before 'busy' (default 16)",
    )
    limit_options(p)
    p.add_argument(
        "--max-sessions", type=int, default=256, metavar="N",
        help="HTTP: sessions open at once; past it a new client is told to retry (default 256)",
    )
    p.add_argument(
        "--session-idle-s", type=float, default=300, metavar="SECONDS",
        help="HTTP: a session with no request for this long is ended (default 300)",
    )

    p = commands.add_parser(
        "tiny-model",
        help="build a tiny random-weight checkpoint for offline tests",
        description="Build a tiny random-weight checkpoint (real config, processor and tokenizer classes). "
        "It loads and runs like a real model, fast, but its outputs are gibberish: use it to test "
        "plumbing, never answers.",
    )
    p.add_argument("dir", metavar="DIR")
    p.add_argument("--family", default="gemma4", choices=tuple(BUILDERS), help="blip2 has OPT inside, blip2-t5 Flan-T5")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    for sub in subcommands(parser).values():
        sub.formatter_class = DefaultsFormatter
    return parser


def default_out(ref: str, what: str = "detections") -> Path:
    name = Path(urlparse(ref).path).stem if "://" in ref else Path(ref).stem
    if ref.startswith("data:") or not name:
        name = "image"
    return Path.cwd() / f"{name}-{what}.png"


def print_result(result: Result, as_json: bool) -> None:
    from agent import render

    if as_json:
        print(result.model_dump_json(indent=2))
        return
    data = result.model_dump(mode="json")
    if isinstance(result, ExtractResult):
        if result.data is not None:
            print(visible_json(result.data))
        err.print(render.extract_table(data))
        if result.annotated_path:
            err.print(f"annotated image: {result.annotated_path}", markup=False)
    elif isinstance(result, BoxesResult):
        if result.detections:
            out.print(render.detections_table(data))
        else:
            out.print(f"no detections of {', '.join(result.labels)}", markup=False)
        if result.annotated_path:
            err.print(f"annotated image: {result.annotated_path}", markup=False)
    elif result.text.strip():
        out.print(result.text, markup=False)
    else:
        # stdout stays empty, as the answer is; the person reading is told why
        err.print("no text found" if getattr(result, "engine", None) else "(the model answered with no text)", markup=False)
    if result.budget_reason:
        err.print(f"budget {result.budget}: {result.budget_reason}", markup=False)
    for note in result.notes:
        err.print(f"note: {note}", markup=False)
    err.print(render.stats_line(data), style="dim", markup=False)


def visible_json(value: Any) -> str:
    """``value`` as indented JSON whose characters all show: anything unprintable (controls, C1 codes,
    bidirectional overrides) written as a \\u escape, which is still the same JSON."""
    text = json.dumps(value, indent=2, ensure_ascii=False)
    return "".join(char if char.isprintable() or char in "\n" else f"\\u{ord(char):04x}" for char in text)


def read_schema_file(path: str) -> str:
    """The schema file's text: at most what a schema may be, UTF-8."""
    from tools.extract.schema import MAX_SCHEMA_BYTES

    try:
        return read_capped_text(path, MAX_SCHEMA_BYTES)
    except FileProblem as problem:
        said = {
            "unreadable": f"Cannot read the schema file '{path}'.",
            "too large": f"The {{param}} is larger than {MAX_SCHEMA_BYTES:,} bytes: describe the fields to extract, "
            "not the document.",
            "not UTF-8": "The {param} is not UTF-8 text; save it as UTF-8.",
        }[problem.kind]
        raise InvalidRequest(said, param="schema") from None


def run_call(args: argparse.Namespace, tiny_note: str | None = None) -> Result:
    from tools.inputs import AccessPolicy, ImageLoader
    from tools.model import check_ask, check_video, load_model, plan
    from tools.tasks import Ask
    from tools.reading.tiling import parse_tiles
    from tools.checks import check_consensus, check_labels, check_text
    from tools.vision import Vision

    # Everything that can be checked before the slow model load is checked first.
    options = resolve_options(
        args.preset, max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p
    )
    prompt = check_text(getattr(args, "prompt", ""), "The prompt").strip()
    labels: list[str] = []
    if args.command == "detect":
        labels = check_labels(args.labels)
    tiles = parse_tiles(getattr(args, "tiles", None))
    # Unset stays unset: the core tiles a PDF's pages where they need it and leaves an image whole.
    tiles_asked = None if getattr(args, "tiles", None) is None else tiles
    if getattr(args, "consensus", None) is not None:
        check_consensus(args.consensus, tiles, args.budget)
    if args.command == "segment":
        labels = check_labels([args.label])
    schema = None
    if args.command == "extract":
        from tools.extract import check_threshold, schema_from

        # The schema is checked first of all: a bad one costs no image read and no model load.
        text = read_schema_file(args.schema) if args.schema is not None else None
        schema = schema_from(text, args.fields)
        check_threshold(args.threshold)
    api = api_settings(args)
    from tools.inputs.media import Media, split_fragment

    local = [split_fragment(ref)[0] for ref in args.images if "://" not in ref and not ref.startswith("data:")]
    policy = AccessPolicy.for_files(local, allow_private_urls=args.allow_private_urls, limits=limits_of(args))
    loader = ImageLoader(policy)
    pages = getattr(args, "pages", None)
    # Bad images, PDFs and clips fail before the slow model load; later steps refer to them by id.
    opened = [loader.open(ref) for ref in args.images]
    ids = [item.id if isinstance(item, Media) else item.image_id for item in opened]
    # A fragment (doc.pdf#pages=2-5) is part of the reference: the core reads it again by id with it.
    refs = [ident + (ref[len(split_fragment(ref)[0]):] if isinstance(item, Media) else "")
            for ident, ref, item in zip(ids, args.images, opened)]
    reporter = cli_progress() if getattr(args, "progress", False) else None
    if getattr(args, "engine", "vlm") == "rapidocr":
        with reporting(reporter), err.status("reading with rapidocr", spinner="dots"):
            return Vision(None, loader).ocr(refs[0], budget=args.budget, engine="rapidocr", tiles=tiles_asked, pages=pages)
    # What the family can do comes from the checkpoint's config (or the engine's declared family):
    # a task or budget it cannot take is refused here, before any weights load ("auto" is chosen later).
    planned = plan(args.model, api)
    budget = None if args.budget == "auto" else args.budget
    images = tuple(item.input for item in opened if not isinstance(item, Media))
    if args.command == "describe" and any(isinstance(item, Media) and item.kind == "clip" for item in opened):
        check_video(planned.dialect, engine=api is not None)
    ask = Ask(args.command, images, prompt, tuple(labels), budget=budget, schema=schema)
    check_ask(planned.dialect, ask, engine=api is not None)
    started = time.perf_counter()
    what = args.model if api is None else f"{api.model} at {api.root}"
    err.print(f"{'loading' if api is None else 'connecting to'} {what} …", style="dim", markup=False)
    if tiny_note:
        err.print(tiny_note, markup=False)
    with err.status("loading model", spinner="dots"):
        model = load_model(
            args.model, dtype=args.dtype, quantize=args.quantize, api=api, compile=args.compile, planned=planned
        )
    if api is None:
        err.print(f"loaded on {model.device} in {time.perf_counter() - started:.1f} s", style="dim", markup=False)
    vision = Vision(model, loader)
    with reporting(reporter), err.status(f"running {args.command}", spinner="dots"):
        if args.command == "describe":
            return vision.describe(refs, args.prompt, budget=args.budget, options=options, pages=pages)
        if args.command == "ocr":
            return vision.ocr(refs[0], budget=args.budget, options=options, tiles=tiles_asked, pages=pages)
        if args.command == "extract":
            out_path = Path(args.out) if args.out else default_out(args.images[0], "extract")
            return vision.extract(
                refs, schema=schema, budget=args.budget, options=options, annotated_path=out_path,
                threshold=args.threshold, verify=not args.no_verify, pages=pages,
            )
        if args.command == "segment":
            out_path = Path(args.out) if args.out else default_out(args.images[0], "segment")
            return vision.segment(refs[0], args.label, budget=args.budget, options=options, annotated_path=out_path)
        out_path = Path(args.out) if args.out else default_out(args.images[0])
        return vision.detect(
            refs[0], args.labels, budget=args.budget, options=options, annotated_path=out_path, tiles=tiles,
            consensus=args.consensus, verify=args.verify, pages=pages,
        )


def cli_progress() -> Reporter:
    """``--progress``: one line on stderr per page or frame rendered, decoded or finished."""

    def report(done: int, total: int, message: str, finished: bool) -> None:
        if finished:
            # A finished page's message may hold its whole text: the line names the page only.
            first = message.strip().splitlines()[0].strip("- ") if message.strip() else ""
            err.print(f"progress: {done}/{total} done: {first}", markup=False)
        else:
            err.print(f"progress: {message}", style="dim", markup=False)

    return report


#: how this command line names the core's parameters where it does not simply say --NAME
CLI_NAMES = {
    "images": "IMAGE", "labels": "LABEL", "backend": "--backend local", "compile": "--compile",
    "schema": "--schema file",
}


def cli_words(error: VlmError) -> str:
    """The error's sentence in this command line's syntax: parameters named by their flags (or
    arguments), example lists separated by commas as the flags take them."""
    names = {param: CLI_NAMES.get(param, "--" + param.replace("_", "-")) for param in error.params}
    return error.worded(names, lists=",".join)


async def run_script_command(args: argparse.Namespace, tiny_note: str | None = None) -> int:
    import json

    from agent.chat import connect, data_home
    from agent.failures import reason
    from agent.script import RecordingView, load_script, run_script, visible
    from agent.session import ChatError, ChatSession

    script = Path(args.script)
    log_path = data_home() / "server.log"
    try:
        turns = load_script(script)
        if tiny_note:
            err.print(tiny_note, markup=False)
        async with connect(serve_args(args), args.server, args.token_env, log_path) as client:
            session = ChatSession(
                client, RecordingView(lambda line: err.print(line, markup=False, highlight=False)),
                budget=args.budget, max_new_tokens=args.max_new_tokens,
                sampling=sampling_of(args),
            )
            await session.start()
            transcript = await run_script(session, turns, script.parent)
    except ChatError as exc:
        err.print(f"error: {visible(str(exc))}", markup=False)
        return 1
    except Exception as exc:  # the transport wraps our errors (and its own) in exception groups
        err.print(f"error: {visible(reason(exc, server=args.server, log_path=str(log_path)))}", markup=False)
        return 1
    text = json.dumps(transcript, indent=2, ensure_ascii=False)
    if args.out:
        Path(args.out).write_text(text + "\n", encoding="utf-8")
        err.print(f"transcript: {args.out}", markup=False)
    else:
        print(text)
    failed = [str(number) for number, turn in enumerate(transcript["turns"], start=1) if turn.get("error")]
    which = f" (turn{'s' if len(failed) > 1 else ''} {', '.join(failed)})" if failed else ""
    err.print(f"{len(transcript['turns']) - len(failed)} turns ok, {len(failed)} failed{which}", markup=False)
    return 1 if transcript["failed"] else 0


#: serve's number flags: (lowest, highest, unit, whether the lowest itself is refused). Infinite,
#: not-a-number and absurd values are refused before anything starts: they would overflow later.
SERVE_NUMBERS: dict[str, tuple[float, float, str, bool]] = {
    "port": (1, 65535, "", False),
    "max_queue": (1, 100_000, "requests", False),
    "max_sessions": (1, 100_000, "sessions", False),
    "session_idle_s": (0, 31_536_000, "seconds", True),
    "out_max_mb": (0, 1_000_000_000, "MB", True),
    "out_max_days": (0, 36_500, "days", True),
    "api_timeout": (0, 1_000_000, "seconds", True),
}


def check_serve_numbers(args: argparse.Namespace) -> None:
    check_numbers(args, SERVE_NUMBERS)


def check_numbers(args: argparse.Namespace, numbers: dict[str, tuple[float, float, str, bool]]) -> None:
    for name, (low, high, unit, above) in numbers.items():
        value = getattr(args, name)
        if math.isfinite(value) and (value > low if above else value >= low) and value <= high:
            continue
        flag = "--" + name.replace("_", "-")
        bounds = f"above {low:,} and at most {high:,}" if above else f"from {low:,} to {high:,}"
        raise InvalidRequest(f"{flag} must be {bounds}{f' {unit}' if unit else ''}, got {value:g}.")


def serve(args: argparse.Namespace) -> int:
    check_serve_numbers(args)
    from mcp_server.resident import Settings, default_out_dir
    from mcp_server.server import build_server
    from tools.outputs import OutputLimits
    from mcp_server.transport import SessionLimits, serve_http

    token = None
    if args.token_env:
        token = os.environ.get(args.token_env)
        if not token:
            raise InvalidRequest(f"--token-env names ${args.token_env}, which is not set or empty.")
    settings = Settings(
        model=args.model,
        dtype=args.dtype,
        quantize=args.quantize,
        api=api_settings(args),
        compile=args.compile,
        allow_dirs=args.allow_dir,
        allow_private_urls=args.allow_private_urls,
        out_dir=Path(args.out_dir) if args.out_dir else default_out_dir(),
        out_limits=OutputLimits(max_bytes=int(args.out_max_mb * 1024 * 1024), max_age_s=args.out_max_days * 86400),
        max_queue=args.max_queue,
        limits=limits_of(args),
    )
    server = build_server(settings)
    # Serving logs belong on stderr at INFO: load progress and the endpoint address.
    logging.getLogger("vlm_agent").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    if args.transport == "stdio":
        server.run()
    else:
        sessions = SessionLimits(max_sessions=args.max_sessions, idle_s=args.session_idle_s)
        serve_http(server, args.host, args.port, token, args.allow_host, sessions)
    return 0


def configure_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING, stream=sys.stderr, format="%(message)s")
    # Pillow logs every PNG chunk it reads at DEBUG ("STREAM b'IHDR' 16 13"): noise, never a detail of ours.
    logging.getLogger("PIL").setLevel(logging.INFO)
    from tools.redact import RedactUrls

    # On the handlers: their filters see every record, whichever library's logger made it.
    for handler in logging.getLogger().handlers:
        handler.addFilter(RedactUrls())
    if not verbose:
        # Without importing transformers (seconds, with torch) for commands that never need it:
        # it reads the variable when it is first imported.
        if "transformers" in sys.modules:
            sys.modules["transformers"].logging.set_verbosity_error()
        else:
            os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line; a flag a command does not take is shown with that command's usage."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        given = list(sys.argv[1:] if argv is None else argv)
        after = given[given.index(args.command) + 1:] if args.command in given else []
        owner = subcommands(parser)[args.command] if extra[0] in after else parser
        flags = [flag for action in owner._actions for flag in action.option_strings]
        close = difflib.get_close_matches(extra[0].split("=")[0], flags, n=1) if extra[0].startswith("--") else []
        hint = f" (did you mean {close[0]}?)" if close else ""
        owner.error(f"unrecognized arguments: {' '.join(extra)}{hint}")
    return args


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    configure_logging(args.verbose)
    try:
        tiny_note = choose_max_new_tokens(args)
        if args.command == "tiny-model":
            from tools.tiny import build_tiny

            path = build_tiny(args.dir, args.family, seed=args.seed)
            err.print(
                f"Built a tiny random-weight {args.family} checkpoint in {path}: it loads like a real one "
                "and answers gibberish on purpose.", style="dim", markup=False,
            )
            print(path)
            return 0
        if args.command == "demo":
            from agent.demo import run_demo, summary

            with err.status("building a tiny model, describing, reading", spinner="dots"):
                lines = summary(*run_demo(Path(args.dir)))
            print("\n".join(lines))
            return 0
        if args.command == "serve":
            return serve(args)
        if args.command == "chat":
            from agent.chat import run_chat

            if tiny_note:
                err.print(tiny_note, markup=False)
            return asyncio.run(
                run_chat(
                    args.images, serve=serve_args(args), server=args.server, token_env=args.token_env,
                    budget=args.budget, resume=args.resume,
                    max_new_tokens=args.max_new_tokens, sampling=sampling_of(args), label=args.server or args.model,
                )
            )
        if args.command == "run":
            return asyncio.run(run_script_command(args, tiny_note))
        result = run_call(args, tiny_note)
        print_result(result, args.json)
        if isinstance(result, ExtractResult) and not result.valid:
            # The object is the answer: a run that has none (or an invalid one) fails, for scripts.
            err.print(f"error: {result.problem}", markup=False)
            return 1
        return 0
    except VlmError as exc:
        err.print(f"error: {cli_words(exc)}", markup=False)
        return 1
    except KeyboardInterrupt:
        err.print("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
