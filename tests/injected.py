"""Faults and gates injected into a real `vlm-agent serve` child, for tests through its doors.

``inject(folder, *modes)`` copies this file into ``folder`` as ``sitecustomize.py`` and gives
the environment that puts it first on the child's path: Python imports it at start-up, before
the server's own code, and it installs the modes named in ``VLM_TEST_INJECT``. Imported under
its own name (by the tests) it does nothing.

Modes, each talking to the test through files in ``VLM_TEST_DIR``:

- ``pil-gate``: every image operation (Pillow decode, resize, convert, encode, draw) writes
  ``hit-N.json`` (what it is, whether it runs on the thread of the event loop) and waits for
  the test to create ``open-N``. Nested operations wait once, at the outermost.
- ``pil-record``: every image operation, and every base64 or hash call of the project's own
  code, appends one JSON line to ``calls.jsonl`` saying whether it ran on the event loop.
- ``hold-generate``: the first local generation writes ``generating`` and waits for ``release``.
- ``fail-close``: the first picture file opened for writing in ``VLM_TEST_OUT`` loses its last
  half and fails when it is closed, as a full disk does when the last buffer is flushed.
- ``hold-unit``: every unit of a call's work (a tile or prompt encoded, a generation, a tile
  searched for text, a batch of text pieces recognised, a PDF page rendered) appends one JSON
  line to ``units.jsonl`` (the unit, how many pieces it holds, whether its call was already
  cancelled). The first unit
  named ``VLM_TEST_HOLD`` writes ``holding`` and waits until its call is cancelled: what runs
  after that is work a cancelled call did.
"""

from __future__ import annotations

import asyncio
import functools
import importlib.abc
import importlib.util
import json
import os
import shutil
import sys
import threading
import time
from pathlib import Path
from typing import Any

#: the longest a gate waits for the test, so a failed test never leaves a server hanging
GATE_CAP_S = 120.0


def inject(folder: Path, *modes: str, **files: str) -> dict[str, str]:
    """The environment for a child that runs with ``modes``; ``folder`` is where it talks to the test."""
    folder.mkdir(parents=True, exist_ok=True)
    code = folder / "code"
    code.mkdir(exist_ok=True)
    shutil.copy(__file__, code / "sitecustomize.py")
    path = os.pathsep.join(p for p in (str(code), os.environ.get("PYTHONPATH", "")) if p)
    extra = {f"VLM_TEST_{key.upper()}": value for key, value in files.items()}
    return {"PYTHONPATH": path, "VLM_TEST_INJECT": ",".join(modes), "VLM_TEST_DIR": str(folder), **extra}


def on_loop() -> bool:
    """Whether this thread is running an event loop (a worker thread runs none)."""
    return asyncio._get_running_loop() is not None  # noqa: SLF001


def wait_for(path: Path) -> None:
    deadline = time.monotonic() + GATE_CAP_S
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.005)


class Hooks:
    def __init__(self, folder: Path, modes: set[str]) -> None:
        self.folder = folder
        self.modes = modes
        self.lock = threading.Lock()
        self.count = 0
        self.depth = threading.local()

    def image_work(self, what: str) -> None:
        """Called before each image operation; records it or holds it at its gate."""
        if "pil-record" in self.modes:
            self.record(what)
        if "pil-gate" in self.modes:
            with self.lock:
                self.count += 1
                n = self.count
            hit = {"n": n, "what": what, "on_loop": on_loop(), "thread": threading.current_thread().name}
            partial = self.folder / f".hit-{n}.json"
            partial.write_text(json.dumps(hit))
            partial.rename(self.folder / f"hit-{n}.json")
            wait_for(self.folder / f"open-{n}")

    def record(self, what: str) -> None:
        line = json.dumps({"what": what, "on_loop": on_loop(), "thread": threading.current_thread().name})
        with self.lock, open(self.folder / "calls.jsonl", "a") as log:
            log.write(line + "\n")

    def wrap(self, owner: Any, name: str, what: str) -> None:
        original = owner.__dict__[name] if isinstance(owner, type) else getattr(owner, name)
        hooks = self

        @functools.wraps(original)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            depth = getattr(hooks.depth, "n", 0)
            if depth == 0:
                hooks.image_work(what)
            hooks.depth.n = depth + 1
            try:
                return original(*args, **kwargs)
            finally:
                hooks.depth.n = depth

        setattr(owner, name, wrapper)

    def install_pil(self) -> None:
        from PIL import Image, ImageDraw, ImageFile

        Image.init()  # every format plugin, so their own decoders are wrapped too
        for name in ("load", "resize", "convert", "save", "transpose", "tobytes", "reduce"):
            self.wrap(Image.Image, name, f"Image.{name}")
        classes = [ImageFile.ImageFile]
        while classes:
            cls = classes.pop()
            classes.extend(cls.__subclasses__())
            if "load" in cls.__dict__:
                self.wrap(cls, "load", f"{cls.__name__}.load")
        for name in ("open", "new", "fromarray", "frombytes"):
            self.wrap(Image, name, f"Image.{name}")
        self.wrap(ImageDraw, "Draw", "ImageDraw.Draw")

    def install_record_others(self) -> None:
        """base64 and hashing called from the project's own modules (a library's own calls are its business)."""
        import base64
        import hashlib

        hooks = self

        def ours(name: str, original: Any) -> Any:
            @functools.wraps(original)
            def wrapper(*args: Any, **kwargs: Any) -> Any:
                caller = sys._getframe(1).f_globals.get("__name__", "")  # noqa: SLF001
                if caller.split(".")[0] in ("tools", "mcp_server", "agent"):
                    hooks.record(f"{name} from {caller}")
                return original(*args, **kwargs)

            return wrapper

        for name in ("b64decode", "b64encode"):
            setattr(base64, name, ours(f"base64.{name}", getattr(base64, name)))
        for name in ("sha256", "blake2b"):
            setattr(hashlib, name, ours(f"hashlib.{name}", getattr(hashlib, name)))

    def hold_generate(self, module: Any) -> None:
        runtime = module.LocalRuntime
        original = runtime.call_generate
        hooks = self
        held = threading.Event()

        @functools.wraps(original)
        def call_generate(*args: Any, **kwargs: Any) -> Any:
            if not held.is_set():
                held.set()
                (hooks.folder / "generating").write_text("")
                wait_for(hooks.folder / "release")
            return original(*args, **kwargs)

        runtime.call_generate = call_generate

    def fail_close(self, out: Path) -> None:
        import builtins

        original_open = builtins.open
        failed = threading.Event()

        class FailingClose:
            """A file whose close loses its last half and fails, once."""

            def __init__(self, raw: Any, path: Path) -> None:
                self._raw, self._path = raw, path

            def __getattr__(self, name: str) -> Any:
                return getattr(self._raw, name)

            def __enter__(self) -> FailingClose:
                return self

            def __exit__(self, *exc: object) -> None:
                self.close()

            def close(self) -> None:
                self._raw.flush()
                size = os.fstat(self._raw.fileno()).st_size
                os.truncate(self._raw.fileno(), size // 2)
                self._raw.close()
                raise OSError(28, "No space left on device")

        def fake_open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
            handle = original_open(file, mode, *args, **kwargs)
            if (
                not failed.is_set() and isinstance(file, (str, os.PathLike)) and ("w" in mode or "+" in mode)
                and Path(os.fspath(file)).resolve().parent == out.resolve()
            ):
                failed.set()
                return FailingClose(handle, Path(os.fspath(file)))
            return handle

        builtins.open = fake_open


class Units:
    """``hold-unit``: records each unit of work, and holds the first of one kind until its call is cancelled."""

    def __init__(self, folder: Path, hold: str) -> None:
        self.folder, self.hold = folder, hold
        self.lock = threading.Lock()
        self.held = threading.Event()

    def wrap(self, owner: Any, name: str, unit: str, size: Any = None) -> None:
        original = owner.__dict__[name]
        units = self

        @functools.wraps(original)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            from tools import cancel

            holding = unit == units.hold and not units.held.is_set()
            if holding:
                units.held.set()
                (units.folder / "holding").write_text(unit)
                deadline = time.monotonic() + GATE_CAP_S
                while not cancel.cancelled() and time.monotonic() < deadline:
                    time.sleep(0.005)
            line = {"unit": unit, "size": size(*args) if size else 1, "held": holding, "cancelled": cancel.cancelled()}
            with units.lock, open(units.folder / "units.jsonl", "a") as log:
                log.write(json.dumps(line) + "\n")
            return original(*args, **kwargs)

        setattr(owner, name, wrapper)

    def install(self) -> None:
        def gemma4(module: Any) -> None:
            self.wrap(module.Gemma4Runtime, "encode", "encode", lambda runtime, images, budget: len(images))

        def local(module: Any) -> None:
            self.wrap(module.LocalRuntime, "call_generate", "generate")

        def ocr(module: Any) -> None:
            self.wrap(module.RapidOcr, "detect", "detect")

        def recogniser(module: Any) -> None:
            self.wrap(module.TextRecognizer, "__call__", "recognise", lambda engine, crops, *rest: len(crops))

        def pdf(module: Any) -> None:
            self.wrap(module.Pdf, "render", "render")

        for name, then in (
            ("tools.families.gemma4", gemma4), ("tools.runtimes.local", local), ("tools.reading.offline", ocr),
            ("tools.inputs.pdf", pdf),
            ("rapidocr_onnxruntime.ch_ppocr_rec.text_recognize", recogniser),
        ):
            sys.meta_path.insert(0, AfterImport(name, then))


def units_of(folder: Path) -> list[dict[str, Any]]:
    """What ``hold-unit`` recorded, in order."""
    path = folder / "units.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


class AfterImport(importlib.abc.MetaPathFinder):
    """Runs ``then(module)`` once ``name`` has been imported, wherever the import comes from."""

    def __init__(self, name: str, then: Any) -> None:
        self.name, self.then = name, then

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname != self.name:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        loader, then = spec.loader, self.then

        class Then(importlib.abc.Loader):
            def create_module(self, spec: Any) -> Any:
                return loader.create_module(spec)

            def exec_module(self, module: Any) -> None:
                loader.exec_module(module)  # type: ignore[attr-defined]
                then(module)

        spec.loader = Then()
        return spec


def install() -> None:
    modes = {m for m in os.environ.get("VLM_TEST_INJECT", "").split(",") if m}
    if not modes:
        return
    hooks = Hooks(Path(os.environ["VLM_TEST_DIR"]), modes)
    if modes & {"pil-gate", "pil-record"}:
        hooks.install_pil()
    if "pil-record" in modes:
        hooks.install_record_others()
    if "hold-generate" in modes:
        sys.meta_path.insert(0, AfterImport("tools.runtimes.local", hooks.hold_generate))
    if "fail-close" in modes:
        hooks.fail_close(Path(os.environ["VLM_TEST_OUT"]))
    if "hold-unit" in modes:
        Units(Path(os.environ["VLM_TEST_DIR"]), os.environ.get("VLM_TEST_HOLD", "")).install()


if __name__ == "sitecustomize":
    install()
