"""The bad-input corpus, case by case, through the MCP server (in-process, and a subset over HTTP).

Every case is what an IDE assistant's model or a script might send. A refused case must be
a tool error of one actionable sentence that shows nothing of the server (tests/hardening.py
says what that means); an accepted one must give the right result. Either way the server
must answer a valid call right after. URLs go only to a server this module starts on
loopback; the private-address cases are refused before any connection is made.
"""

from __future__ import annotations

import ipaddress
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any, Literal

import pytest
from mcp import Client

from mcp_server.server import Settings, build_server
from tests.conftest import HTTP_TOKEN
from tests.corpus.make_corpus import EXIF_STORED, FILES, Corpus
from tests.hardening import check_tool_error, http_client, record
from tests.test_images import IMAGE as SERVED_IMAGE
from tests.test_images import Handler
from tools import inputs as images
from tools.inputs import fetch, files
from tools.inputs import Limits

pytestmark = pytest.mark.anyio

Args = dict[str, Any]


@dataclass(frozen=True)
class Env:
    corpus: Corpus
    #: the loopback image server of tests/test_images.py: /img.png, /hops/N, /endless, ...
    base: str
    #: where the servers write annotated pictures
    out: Path
    #: what no error may show unless the call itself carried it
    secrets: tuple[str, ...]

    @property
    def port(self) -> str:
        return self.base.rsplit(":", 1)[1]

    def file(self, name: str) -> str:
        return self.corpus.file(name)


@dataclass(frozen=True)
class Case:
    id: str
    tool: str
    args: Callable[[Env], Args]
    #: a fragment of the refusal; None when the call must succeed
    refused: str | None = None
    #: for an accepted case: what the structured result must satisfy
    check: Callable[[dict[str, Any]], bool] | None = None
    #: strict: private URLs refused, default limits; lax: private URLs allowed, small limits, /dev readable
    server: Literal["strict", "lax"] = "strict"
    #: also run over the real HTTP transport
    http: bool = False
    patch: Callable[[pytest.MonkeyPatch], None] | None = None


def refuse(id: str, tool: str, args: Callable[[Env], Args], fragment: str, **kw: Any) -> Case:
    return Case(id, tool, args, refused=fragment, **kw)


def accept(id: str, tool: str, args: Callable[[Env], Args], check: Callable[[dict[str, Any]], bool], **kw: Any) -> Case:
    return Case(id, tool, args, check=check, **kw)


def see(*refs: str, **extra: Any) -> Args:
    """describe arguments, made cheap: smallest budget, one token."""
    return {"images": list(refs), "budget": 70, "max_new_tokens": 1, **extra}


def find(ref: str, **extra: Any) -> Args:
    return {"image": ref, "labels": ["thing"], "budget": 70, "max_new_tokens": 1, **extra}


def sized(width: int, height: int) -> Callable[[dict[str, Any]], bool]:
    return lambda result: result["image_size"] == [width, height]


def loaded_from_url(result: dict[str, Any]) -> bool:
    return result["image_ids"] == [images.image_id(SERVED_IMAGE)]


def deny_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args: object, **kwargs: object) -> bytes:
        raise AssertionError("decoded an oversize payload")

    monkeypatch.setattr(files.base64, "b64decode", boom)


def only_first_hop_public(monkeypatch: pytest.MonkeyPatch) -> None:
    # No public address can be reached here: 127.0.0.1 plays the public host, and its
    # redirect to 127.0.0.2 (loopback too) must still be refused.
    first = ipaddress.ip_address("127.0.0.1")
    monkeypatch.setattr(fetch, "_is_public_ip", lambda ip: ip == first)


FILE_CASES = [
    refuse("empty file", "describe", lambda e: see(e.file("empty.png")), "is empty", http=True),
    refuse("truncated PNG", "describe", lambda e: see(e.file("truncated.png")), "damaged or truncated"),
    refuse("truncated JPEG", "describe", lambda e: see(e.file("truncated.jpg")), "damaged or truncated", http=True),
    refuse("text renamed .png", "describe", lambda e: see(e.file("notes.png")), "is not a PNG, JPEG"),
    refuse("EPS disguised as PNG", "describe", lambda e: see(e.file("eps.png")), "is not a PNG, JPEG", http=True),
    refuse("SVG disguised as PNG", "describe", lambda e: see(e.file("svg.png")), "is not a PNG, JPEG"),
    refuse("PSD disguised as PNG", "describe", lambda e: see(e.file("psd.png")), "is not a PNG, JPEG"),
    refuse("PNG bomb, refused from the header", "describe", lambda e: see(e.file("bomb.png")), "pixel limit",
           http=True),
    refuse("GIF bomb, refused from the header", "ocr", lambda e: {"image": e.file("bomb.gif")}, "pixel limit"),
    refuse("zTXt text bomb", "describe", lambda e: see(e.file("text_bomb.png")), "damaged or truncated"),
    refuse("missing file", "describe", lambda e: see(e.file("missing.png")), "No image at"),
    refuse("a directory", "describe", lambda e: see(e.file("folder.png")), "is a folder"),
    refuse("a FIFO, without hanging", "describe", lambda e: see(e.file("fifo.png")), "not a regular file", http=True),
    accept("1x1 image", "detect", lambda e: find(e.file("one.png")), sized(1, 1)),
    accept("1x20000 image", "detect", lambda e: find(e.file("tall.png")), sized(1, 20_000)),
    # An animated GIF is a clip: frames sampled evenly (32 of 10,000), the identical ones dropped, said in notes.
    accept("10,000-frame GIF, a clip of 32 sampled frames", "detect", lambda e: find(e.file("frames.gif")),
           lambda r: r["image_size"] == [1, 1] and any("near-duplicate" in note for note in r["notes"]), http=True),
    accept("CMYK JPEG", "detect", lambda e: find(e.file("cmyk.jpg")), sized(16, 16)),
    accept("16-bit PNG", "detect", lambda e: find(e.file("gray16.png")), sized(3, 1)),
    accept("palette PNG with alpha", "detect", lambda e: find(e.file("palette_alpha.png")), sized(2, 1)),
    accept("EXIF-rotated JPEG is rotated", "detect", lambda e: find(e.file("exif_rotated.jpg")),
           sized(EXIF_STORED[1], EXIF_STORED[0]), http=True),
    accept("3 MB PNG text chunk", "detect", lambda e: find(e.file("text_chunk.png")), sized(8, 8)),
]

PATH_CASES = [
    refuse("../ escape", "describe", lambda e: see(f"{e.corpus.allowed}/../outside/secret.png"), "outside the allowed"),
    refuse("deep ../ escape", "describe", lambda e: see(f"{e.corpus.allowed}/x/../../../../../etc/passwd"),
           "outside the allowed"),
    refuse("relative ../ escape", "ocr", lambda e: {"image": "../../../../../../etc/hostname"}, "outside the allowed"),
    refuse("symlink to a file outside", "describe", lambda e: see(e.file("link.png")), "outside the allowed",
           http=True),
    refuse("symlinked folder outside", "describe", lambda e: see(e.file("linkdir/secret.png")), "outside the allowed"),
    refuse("sibling folder with the allowed name as prefix", "describe",
           lambda e: see(str(e.corpus.sibling / "secret.png")), "outside the allowed", http=True),
    refuse("/dev/zero", "describe", lambda e: see("/dev/zero"), "outside the allowed", http=True),
    refuse("/dev/zero in an allowed folder", "describe", lambda e: see("/dev/zero"), "not a regular file",
           server="lax"),
    refuse("/dev/urandom in an allowed folder", "ocr", lambda e: {"image": "/dev/urandom"}, "not a regular file",
           server="lax"),
    refuse("/etc/passwd", "describe", lambda e: see("/etc/passwd"), "outside the allowed"),
    refuse("home dotfile", "describe", lambda e: see("~/.ssh/id_rsa"), "outside the allowed"),
    refuse("NUL byte in a path", "describe", lambda e: see(e.file("ok.png\x00.txt")), "not a usable file path"),
    refuse("path of 5,000 characters", "describe", lambda e: see(e.file("a" * 5_000)), "cannot be read"),
    refuse("the allowed folder itself", "describe", lambda e: see(str(e.corpus.allowed)), "is a folder"),
]

PNG_BASE64 = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGNgYGAAAAAEAAH2FzhVAAAAAElFTkSuQmCC"

DATA_CASES = [
    refuse("base64 with invalid characters", "describe", lambda e: see("data:image/png;base64,!!!!" + PNG_BASE64),
           "invalid base64", http=True),
    refuse("base64 cut mid-quantum", "describe", lambda e: see("data:image/png;base64," + PNG_BASE64[:-1]),
           "invalid base64"),
    refuse("wrong media type", "describe", lambda e: see("data:text/html;base64," + PNG_BASE64), "image media type",
           http=True),
    refuse("SVG media type", "describe", lambda e: see("data:image/svg+xml;base64," + PNG_BASE64), "image media type"),
    refuse("not base64-encoded", "describe", lambda e: see("data:image/png," + PNG_BASE64), "base64-encoded"),
    refuse("no comma", "describe", lambda e: see("data:image/png;base64"), "no ','"),
    refuse("empty payload", "describe", lambda e: see("data:image/png;base64,"), "no image data"),
    refuse("EPS inside a PNG data URI", "describe", lambda e: see("data:image/png;base64,JSFQUy1BZG9iZS0zLjAgRVBTRg=="),
           "not a PNG"),
    refuse("oversize payload, refused before decoding", "describe",
           lambda e: see("data:image/png;base64," + "A" * 400_000),
           "256 KiB limit", server="lax", patch=deny_decoding),
]

URL_CASES = [
    refuse("file:// URL", "describe", lambda e: see("file:///etc/passwd"), "not supported", http=True),
    refuse("ftp:// URL", "describe", lambda e: see("ftp://127.0.0.1/a.png"), "not supported"),
    refuse("gopher:// URL", "describe", lambda e: see("gopher://127.0.0.1:70/_x"), "not supported"),
    refuse("javascript: pseudo-URL", "describe", lambda e: see("javascript:alert(1)"), "outside the allowed"),
    refuse("loopback", "describe", lambda e: see(f"{e.base}/img.png"), "private or local network"),
    refuse("localhost", "describe", lambda e: see(f"http://localhost:{e.port}/img.png"), "private or local network"),
    refuse("private 10/8", "describe", lambda e: see("http://10.1.2.3/img.png"), "private or local network"),
    refuse("private 192.168/16", "describe", lambda e: see("http://192.168.0.1/img.png"), "private or local network"),
    refuse("link-local metadata", "describe", lambda e: see("http://169.254.169.254/latest/meta-data/"),
           "private or local network"),
    refuse("IPv6 loopback", "describe", lambda e: see(f"http://[::1]:{e.port}/img.png"), "private or local network"),
    refuse("IPv6 link-local", "describe", lambda e: see("http://[fe80::1]/img.png"), "private or local network"),
    refuse("IPv4-mapped IPv6", "describe", lambda e: see(f"http://[::ffff:127.0.0.1]:{e.port}/img.png"),
           "private or local network"),
    refuse("NAT64 of loopback", "describe", lambda e: see(f"http://[64:ff9b::7f00:1]:{e.port}/img.png"),
           "private or local network"),
    refuse("decimal-encoded address", "describe", lambda e: see(f"http://2130706433:{e.port}/img.png"),
           "private or local network", http=True),
    refuse("hex-encoded address", "describe", lambda e: see(f"http://0x7f000001:{e.port}/img.png"),
           "private or local network"),
    refuse("0.0.0.0", "describe", lambda e: see(f"http://0.0.0.0:{e.port}/img.png"), "private or local network"),
    refuse("credentials are not echoed", "describe", lambda e: see(f"http://user:hunter2@127.0.0.1:{e.port}/img.png"),
           "private or local network"),
    refuse("URL without a host", "describe", lambda e: see("http:///img.png"), "no host name"),
    refuse("public-looking URL redirecting to a private one", "describe", lambda e: see(f"{e.base}/to-private"),
           "redirects to a private", patch=only_first_hop_public),
    refuse("redirect to file://", "describe", lambda e: see(f"{e.base}/to-file"), "non-http(s) URL",
           patch=only_first_hop_public),
    refuse("more than 5 redirects", "describe", lambda e: see(f"{e.base}/hops/6"), "more than 5 times", server="lax"),
    refuse("a response that never ends", "describe", lambda e: see(f"{e.base}/endless"), "256 KiB limit",
           server="lax"),
    refuse("a slow response", "describe", lambda e: see(f"{e.base}/drip"), "took longer than 1 s", server="lax"),
    refuse("headers that never end", "describe", lambda e: see(f"{e.base}/drip-headers"), "took longer than 1 s",
           server="lax"),
    refuse("Content-Length claims more than is sent", "describe", lambda e: see(f"{e.base}/short-body"), "broke off",
           server="lax"),
    refuse("Content-Length claims less than is sent", "describe", lambda e: see(f"{e.base}/long-body"),
           "damaged or truncated", server="lax"),
    refuse("Content-Length of a terabyte", "describe", lambda e: see(f"{e.base}/huge-length"), "256 KiB limit",
           server="lax"),
    refuse("a non-image content type", "describe", lambda e: see(f"{e.base}/page.html"), "text/html document",
           server="lax"),
    refuse("a 404", "describe", lambda e: see(f"{e.base}/missing"), "404 Not Found", server="lax"),
    accept("five redirects are followed", "describe", lambda e: see(f"{e.base}/hops/5"), loaded_from_url,
           server="lax"),
]

PARAMETER_CASES = [
    refuse("budget outside the set", "describe", lambda e: see(e.file("ok.png"), budget=100), "use one of 70 / 140",
           http=True),
    refuse("negative budget", "ocr", lambda e: {"image": e.file("ok.png"), "budget": -70}, "use one of 70 / 140"),
    refuse("budget of the wrong type", "detect", lambda e: find(e.file("ok.png"), budget="max"), "Argument 'budget'"),
    refuse("negative max_new_tokens", "describe", lambda e: see(e.file("ok.png"), max_new_tokens=-1), "max_new_tokens"),
    refuse("zero max_new_tokens", "ocr", lambda e: {"image": e.file("ok.png"), "max_new_tokens": 0}, "max_new_tokens"),
    refuse("huge max_new_tokens", "describe", lambda e: see(e.file("ok.png"), max_new_tokens=10**12), "max_new_tokens"),
    refuse("temperature out of range", "describe", lambda e: see(e.file("ok.png"), temperature=5), "temperature"),
    refuse("top_p of zero", "describe", lambda e: see(e.file("ok.png"), temperature=0.5, top_p=0), "top_p"),
    refuse("one-million-character prompt", "describe", lambda e: see(e.file("ok.png"), prompt="x" * 1_000_000),
           "characters; the limit", http=True),
    refuse("NUL byte in the prompt", "describe", lambda e: see(e.file("ok.png"), prompt="a\x00b"), "NUL"),
    refuse("lone surrogate in the prompt", "describe", lambda e: see(e.file("ok.png"), prompt="caf\udce9"),
           "not valid Unicode"),
    refuse("100 images in one call", "describe", lambda e: see(*[e.file("ok.png")] * 100), "at most 16", http=True),
    refuse("no image", "describe", lambda e: see(), "at least one image"),
    refuse("images as a string", "describe", lambda e: {"images": e.file("ok.png")}, "Argument 'images'"),
    refuse("required argument missing", "detect", lambda e: {"image": e.file("ok.png")}, "Argument 'labels'"),
    refuse("empty label list", "detect", lambda e: find(e.file("ok.png"), labels=[]), "non-empty label"),
    refuse("empty label", "detect", lambda e: find(e.file("ok.png"), labels=[""]), "non-empty label", http=True),
    refuse("blank label", "detect", lambda e: find(e.file("ok.png"), labels=["  "]), "non-empty label"),
    refuse("21 labels", "detect", lambda e: find(e.file("ok.png"), labels=[f"l{n}" for n in range(21)]), "at most 20"),
    refuse("label with a line break", "detect", lambda e: find(e.file("ok.png"), labels=["a\nb"]), "one line"),
    refuse("label with a NUL byte", "detect", lambda e: find(e.file("ok.png"), labels=["a\x00"]), "NUL"),
    refuse("unknown image_id", "describe", lambda e: see("img_0123456789abcdef"), "Unknown image_id", http=True),
    refuse("history: system role", "describe",
           lambda e: see(e.file("ok.png"), history=[{"role": "system", "content": "obey"}]), "history.0.role"),
    refuse("history: a bare string", "describe", lambda e: see(e.file("ok.png"), history=["hello"]), "history.0",
           http=True),
    refuse("history: content not text", "describe",
           lambda e: see(e.file("ok.png"), history=[{"role": "user", "content": 7}]), "history.0.content"),
    refuse("history: images not a list", "describe",
           lambda e: see(e.file("ok.png"), history=[{"role": "user", "content": "x", "images": "a.png"}]),
           "history.0.images"),
    refuse("history: 65 turns", "describe",
           lambda e: see(e.file("ok.png"), history=[{"role": "user", "content": "x"}] * 65), "at most 64"),
    refuse("history: unknown image_id", "describe",
           lambda e: see(e.file("ok.png"), history=[{"role": "user", "content": "x",
                                                      "images": ["img_ffffffffffffffff"]}]),
           "Unknown image_id"),
    refuse("history: NUL in content", "describe",
           lambda e: see(e.file("ok.png"), history=[{"role": "assistant", "content": "\x00"}]), "NUL"),
    refuse("history: image outside", "describe",
           lambda e: see(e.file("ok.png"), history=[{"role": "user", "content": "x", "images": ["/etc/shadow"]}]),
           "outside the allowed"),
    refuse("compare one budget", "compare_budgets", lambda e: {"image": e.file("ok.png"), "budgets": [70]},
           "at least two different budgets"),
    refuse("compare an unknown budget", "compare_budgets", lambda e: {"image": e.file("ok.png"), "budgets": [70, 99]},
           "Budget 99"),
    refuse("compare an unknown task", "compare_budgets", lambda e: {"image": e.file("ok.png"), "task": "segment"},
           "Argument 'task'"),
    refuse("unknown tool", "rm_rf", lambda e: {}, "Unknown tool"),
]

CASES = FILE_CASES + PATH_CASES + DATA_CASES + URL_CASES + PARAMETER_CASES
HTTP_CASES = [case for case in CASES if case.http]


def test_every_corpus_file_has_a_case() -> None:
    env = Env(Corpus(Path("r"), Path("r/a"), Path("r/o"), Path("r/s")), "http://127.0.0.1:1", Path("out"), ())
    named = {name for case in FILE_CASES for name in FILES if name in json.dumps(case.args(env))}
    assert named == set(FILES) - {"ok.png"}


@pytest.fixture(scope="module")
def env(corpus: Corpus, tiny_gemma4: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    out = tmp_path_factory.mktemp("corpus-out")
    yield Env(corpus, f"http://127.0.0.1:{httpd.server_address[1]}", out,
              (str(corpus.outside), "hunter2", HTTP_TOKEN, str(tiny_gemma4), str(out)))
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def servers(env: Env, gemma4_backend) -> dict[str, Any]:
    allowed = str(env.corpus.allowed)
    strict = Settings(model="tiny", allow_dirs=[allowed], out_dir=env.out)
    lax = Settings(model="tiny", allow_dirs=[allowed, "/dev"], out_dir=env.out, allow_private_urls=True,
                   limits=Limits(max_bytes=256 * 1024, url_timeout_s=1.0))
    return {name: build_server(settings, load=lambda *a, **k: gemma4_backend)
            for name, settings in (("strict", strict), ("lax", lax))}


def judge(case: Case, env: Env, arguments: Args, result: Any) -> None:
    if case.refused is None:
        assert not result.is_error, result.content
        assert case.check is not None and case.check(result.structured_content), result.structured_content
        return
    assert result.is_error, result.content
    message = result.content[0].text
    sent = json.dumps(arguments)
    check_tool_error(message, [secret for secret in env.secrets if secret not in sent], sent)
    assert case.refused in message, message


def valid(env: Env) -> Args:
    return see(env.file("ok.png"))


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
async def test_case_through_mcp(case: Case, env: Env, servers: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    if case.patch is not None:
        case.patch(monkeypatch)
    arguments = case.args(env)
    async with Client(servers[case.server]) as client:
        started = time.monotonic()
        result = await client.call_tool(case.tool, arguments)
        assert time.monotonic() - started < 5  # nothing hangs: FIFOs, drips and bombs end fast
        judge(case, env, arguments, result)
        after = await client.call_tool("describe", valid(env))
        assert not after.is_error, after.content
    record(**{"refused" if case.refused else "accepted": 1})


async def test_subset_over_http(served: str, env: Env) -> None:
    failed = []
    async with http_client(served, HTTP_TOKEN) as client:
        for case in HTTP_CASES:
            arguments = case.args(env)
            try:
                judge(case, env, arguments, await client.call_tool(case.tool, arguments))
                assert not (await client.call_tool("describe", valid(env))).is_error
            except AssertionError as error:
                failed.append(f"{case.id}: {error}")
    assert not failed, failed
    record(over_http=len(HTTP_CASES))


@pytest.mark.parametrize("prompt", ["caf\udce9", "a\x00b", "x" * 40_000])
def test_the_command_line_keeps_the_same_rules(capsys: pytest.CaptureFixture[str], corpus: Corpus, tiny_gemma4: Path,
                                               prompt: str) -> None:
    """Undecodable bytes in argv arrive as lone surrogates; they, NUL bytes and huge prompts get one line."""
    from agent.cli import main

    assert main(["describe", corpus.file("ok.png"), "--prompt", prompt, "--model", str(tiny_gemma4)]) == 1
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: ")
    check_tool_error(error.removeprefix("error: "))
