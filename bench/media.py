"""``python -m bench.media``: a generated PDF read page by page and a generated clip described, ours against
the seed's way, with peak memory beside each, and the page counts at which our memory stays flat.

The seed notebook handles one picture per ``pipeline("image-text-to-text")`` call, so **the seed's way**
is that call once per page (each page rendered by PDFium at the resolution ours chose) and once per frame
(each frame decoded by PyAV), with the checkpoint's generation config forced to the same number of new
tokens. **Ours** is the product's front door (``Vision.ocr`` on the PDF: pages rendered one at a time and
read a few at a time through ``Model.run_many``; ``Vision.describe`` on the clip: every frame, with its
timestamp, in one prompt through Gemma 4's video path). Both run in one process on the same weights.

    python -m bench.media --threads 1 --markdown table.md
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from .measure import PeakMemory  # noqa: E402


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.media", description=__doc__.splitlines()[0])
    parser.add_argument("--pages", type=int, default=20, help="pages of the generated PDF (default 20)")
    parser.add_argument("--frames", type=int, default=60, help="frames of the generated clip (default 60)")
    parser.add_argument("--tokens", type=int, default=8, help="new tokens per answer, forced (default 8)")
    parser.add_argument("--budget", type=int, default=70, help="visual-token budget of pages and frames (default 70)")
    parser.add_argument("--flat", type=int, nargs="*", default=[5, 10, 20, 40],
                        help="page counts ours reads to show its memory stays flat (default 5 10 20 40)")
    parser.add_argument("--repeats", type=int, default=3, help="median over this many runs of each side, alternating "
                        "(default 3)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    parser.add_argument("--flat-child", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--flat-pdf", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", default="bench-media.json", help="JSON results")
    parser.add_argument("--markdown", default=None, help="also write the table as Markdown here")
    return parser.parse_args(argv)


def alternating(
    model: Any, ours: Callable[[], Any], seed: Callable[[], Any], repeats: int, cold: Callable[[], None]
) -> tuple[Any, ...]:
    """Each side ``repeats`` times, alternating (a busy machine slows both alike), ours cold each time (``cold``
    empties its caches: a page or frame read before would come from the vision cache): the median seconds
    and peak memory of each, and our last result."""
    import statistics

    runs: dict[str, list[tuple[float, float]]] = {"ours": [], "seed": []}
    result = None
    for _ in range(repeats):
        cold()
        seconds, peak, result = measured(model, ours)
        runs["ours"].append((seconds, peak))
        seconds, peak, _ = measured(model, seed)
        runs["seed"].append((seconds, peak))
    med = {side: (statistics.median(s for s, _ in r), statistics.median(p for _, p in r)) for side, r in runs.items()}
    return med["ours"][0], med["ours"][1], med["seed"][0], med["seed"][1], result


def measured(model: Any, call: Callable[[], Any]) -> tuple[float, float, Any]:
    """(seconds, peak memory above the start in MiB, result) of one call."""
    with PeakMemory(model.device) as memory:
        started = time.perf_counter()
        result = call()
        seconds = time.perf_counter() - started
    return seconds, memory.peak_bytes / 2**20, result


class Seed:
    """The seed notebook's call: its pipeline over our loaded weights, its generation config, one picture a call."""

    def __init__(self, model: Any, processor: Any, tokens: int, budget: int) -> None:
        from transformers import pipeline

        self.pipe = pipeline("image-text-to-text", model=model, processor=processor)
        self.config = copy.deepcopy(model.generation_config)
        self.config.compile_config = None
        self.config.max_new_tokens = self.config.min_new_tokens = tokens
        self.budget = budget

    def ask(self, picture: Any, text: str) -> str:
        messages = [{"role": "user", "content": [{"type": "image", "image": picture}, {"type": "text", "text": text}]}]
        out = self.pipe(text=messages, generate_kwargs={"generation_config": self.config, "disable_compile": True},
                        processor_kwargs={"max_soft_tokens": self.budget}, return_full_text=False)
        return out[0]["generated_text"]


def pdf_pages(path: Path, dpis: Sequence[float]) -> Callable[[], list[Any]]:
    """The seed's way to a PDF's pages: PDFium renders each at the resolution ours used."""

    def render() -> list[Any]:
        import pypdfium2

        document = pypdfium2.PdfDocument(str(path))
        return [document[n].render(scale=dpi / 72).to_pil().convert("RGB") for n, dpi in enumerate(dpis)]

    return render


def clip_frames(path: Path) -> list[Any]:
    import av

    with av.open(str(path)) as container:
        return [frame.to_image().convert("RGB") for frame in container.decode(video=0)]


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    import torch

    from bench.models import build
    from tools.tiny.media import pdfium_pdf, write_clip, write_pdf
    from tools.families.gemma4 import OCR
    from tools.inputs import AccessPolicy, ImageLoader, Limits
    from tools.options import GenerationOptions
    from tools.vision import Vision

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.flat_child is not None:
        return flat_child(args)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        resident = build("tiny", "cpu", work)
        model, processor = resident.runtime.model, resident.runtime.processor
        largest = max(args.flat + [args.pages])
        limits = Limits(max_pages=largest, max_frames=args.frames)
        vision = Vision(resident, ImageLoader(AccessPolicy.for_server([work], limits=limits)))
        forced = GenerationOptions(max_new_tokens=args.tokens, min_new_tokens=args.tokens)
        seed = Seed(model, processor, args.tokens, args.budget)

        # ---- warm-up: each side once on one page, so neither pays first-call costs in the figures
        first = write_pdf(work / "one.pdf", pages=1)
        warm = vision.ocr(str(first), budget=args.budget, options=forced, tiles="off")
        seed.ask(pdf_pages(first, [warm.pages[0].origin.dpi])()[0], OCR)

        # ---- OCR of the PDF
        pdf = write_pdf(work / "doc.pdf", pages=args.pages)
        read = vision.ocr(str(pdf), budget=args.budget, options=forced, tiles="off")
        dpis = [page.origin.dpi for page in read.pages]
        render = pdf_pages(pdf, dpis)
        ours_s, ours_mb, seed_s, seed_mb, _ = alternating(
            model, lambda: vision.ocr(str(pdf), budget=args.budget, options=forced, tiles="off"),
            lambda: [seed.ask(page, OCR) for page in render()], args.repeats, resident.clear_caches,
        )
        rows.append({"scenario": f"ocr, {args.pages}-page PDF", "ours_s": ours_s, "seed_s": seed_s,
                     "ours_mb": ours_mb, "seed_mb": seed_mb, "calls": f"1 call, {args.pages} pages in batches "
                     f"of 4 vs {args.pages} pipeline calls", "dpi": dpis[0]})

        # ---- describe of the clip
        clip = write_clip(work / "clip.mp4", frames=args.frames, fps=30, size=(320, 240))
        ours_s, ours_mb, seed_s, seed_mb, described = alternating(
            model, lambda: vision.describe([str(clip)], "What happens in this clip?", budget=args.budget, options=forced),
            lambda: [seed.ask(frame, "Describe this frame.") for frame in clip_frames(clip)], args.repeats,
            resident.clear_caches,
        )
        assert len(described.sources) == args.frames, described.notes
        rows.append({"scenario": f"describe, {args.frames}-frame clip", "ours_s": ours_s, "seed_s": seed_s,
                     "ours_mb": ours_mb, "seed_mb": seed_mb, "calls": f"1 answer over {args.frames} frames (video path) "
                     f"vs {args.frames} pipeline calls, one answer each"})

        # ---- memory as the page count grows: each count in a fresh process, after a one-page warm-up
        flat = []
        for count in args.flat:
            # scanned: Pillow's pages, one JPEG each (the file grows with the pages); blank: PDFium's, a few bytes each
            for kind, write in (("scanned", lambda p, n: write_pdf(p, pages=n)),
                                ("blank", lambda p, n: p.write_bytes(pdfium_pdf(n)))):
                path = work / f"flat-{kind}-{count}.pdf"
                write(path, count)
                child = subprocess.run(
                    [sys.executable, "-m", "bench.media", "--flat-child", str(count), "--flat-pdf", str(path),
                     "--budget", str(args.budget), "--tokens", str(args.tokens),
                     *(["--threads", str(args.threads)] if args.threads else [])],
                    capture_output=True, text=True, check=True,
                )
                flat.append({"kind": kind, "file_mb": path.stat().st_size / 2**20,
                             **json.loads(child.stdout.strip().splitlines()[-1])})
    result = {"rows": rows, "flat": flat, "tokens": args.tokens, "budget": args.budget, "threads": args.threads,
              "torch": torch.__version__}
    Path(args.out).write_text(json.dumps(result, indent=2))
    text = markdown(result)
    print(text)
    if args.markdown:
        Path(args.markdown).write_text(text)
    return 0


def flat_child(args: argparse.Namespace) -> int:
    """One page count in a process of its own: peak memory of reading it, above the warmed-up start."""
    from bench.measure import rss
    from bench.models import build
    from tools.tiny.media import write_pdf
    from tools.inputs import AccessPolicy, ImageLoader, Limits
    from tools.options import GenerationOptions
    from tools.vision import Vision

    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        resident = build("tiny", "cpu", work)
        # Written by the parent: making the pages here would leave their memory in this process's start.
        document = Path(args.flat_pdf)
        policy = AccessPolicy.for_server([work, document.parent], limits=Limits(max_pages=args.flat_child))
        vision = Vision(resident, ImageLoader(policy))
        forced = GenerationOptions(max_new_tokens=args.tokens, min_new_tokens=args.tokens)
        vision.ocr(str(write_pdf(work / "one.pdf", pages=1)), budget=args.budget, options=forced, tiles="off")
        start = rss()
        seconds, peak, _ = measured(resident.runtime.model, lambda: vision.ocr(
            str(document), budget=args.budget, options=forced, tiles="off"))
    print(json.dumps({"pages": args.flat_child, "seconds": seconds, "peak_mb": peak, "start_mb": start / 2**20}))
    return 0


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "| scenario | ours (s) | seed's way (s) | ours / seed | ours peak (MiB) | seed's way peak (MiB) | work |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        lines.append(
            f"| {row['scenario']} | {row['ours_s']:.2f} | {row['seed_s']:.2f} | {row['ours_s'] / row['seed_s']:.2f} | "
            f"{row['ours_mb']:.1f} | {row['seed_mb']:.1f} | {row['calls']} |"
        )
    lines += ["", "| pages read (ours, a fresh process each) | pages | file (MiB) | seconds | memory at the start (MiB) | "
              "peak above it (MiB) |", "|---|---|---|---|---|---|"]
    lines += [f"| {f['kind']} | {f['pages']} | {f['file_mb']:.2f} | {f['seconds']:.2f} | {f['start_mb']:.0f} | {f['peak_mb']:.1f} |"
              for f in result["flat"]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
