"""PDF pages as pictures: selections, resolutions and refusals (pure), rendering, and the model's
tokens for a page against plain transformers.

The doors (CLI, raw stdio, HTTP) and the offline engine's real accuracy are tests/test_media_doors.py's.
"""

from __future__ import annotations

import pytest
import torch

from tools.tiny.media import big_image_pdf, encrypted_pdf, pdfium_pdf, write_pdf, zero_page_pdf
from tools.errors import ImageError, InvalidRequest
from tools.inputs import AccessPolicy, ImageInput, ImageLoader, Limits
from tools.inputs.documents import Document
from tools.inputs.media import Media, Selection, sniff, split_fragment
from tools.inputs.pdf import MIN_DPI, Pdf, fit_dpi, parse_pages
from tools.options import GenerationOptions
from tools.runtimes.streaming import answer_text
from tools.runtimes.local import local_messages
from tools.tasks import Ask
from tools.vision import Vision


@pytest.mark.parametrize(
    ("text", "count", "pages"),
    [
        ("3", 5, [3]),
        ("2-4", 5, [2, 3, 4]),
        ("1,3,5", 5, [1, 3, 5]),
        ("4-", 5, [4, 5]),
        (" 2 - 3 , 2 ", 5, [2, 3]),
        ("all", 3, [1, 2, 3]),
        ("", 2, [1, 2]),
    ],
)
def test_page_selections(text, count, pages):
    assert parse_pages(text, count) == pages


@pytest.mark.parametrize(
    ("text", "fragment"),
    [("0", "from 1 up"), ("3-2", "from 1 up"), ("9", "has 5 pages"), ("1-99", "has 5 pages"), ("two", "not a page selection"),
     ("1;2", "not a page selection")],
)
def test_bad_page_selections_are_refused_naming_the_argument(text, fragment):
    with pytest.raises(ImageError, match=fragment) as caught:
        parse_pages(text, 5)
    assert caught.value.param == "pages"


@pytest.mark.parametrize(
    ("ref", "base", "selection"),
    [
        ("doc.pdf#pages=2-5", "doc.pdf", Selection(pages="2-5")),
        ("doc.pdf#page=3", "doc.pdf", Selection(pages="3")),
        ("clip.mp4#t=10,20", "clip.mp4", Selection(span=(10.0, 20.0))),
        ("clip.mp4#t=4", "clip.mp4", Selection(span=(4.0, float("inf")))),
        ("img_0123456789abcdef#pages=1", "img_0123456789abcdef", Selection(pages="1")),
        ("photo#1.png", "photo#1.png", Selection()),
        ("https://example.com/a.pdf#zoom=50", "https://example.com/a.pdf#zoom=50", Selection()),
    ],
)
def test_fragments_select_pages_and_spans(ref, base, selection):
    assert split_fragment(ref) == (base, selection)


def test_a_backwards_span_is_refused():
    with pytest.raises(InvalidRequest, match="end after it starts"):
        split_fragment("clip.mp4#t=9,3")


@pytest.mark.parametrize(
    ("head", "kind"),
    [
        (b"%PDF-1.7\n", "pdf"),
        (b"junk before\n%PDF-1.4\n", "pdf"),
        (b"\x00\x00\x00\x18ftypisom", "clip"),
        (b"\x00\x00\x00\x18ftypqt  ", "clip"),
        (b"\x00\x00\x00\x18ftypheic", "image"),
        (b"\x00\x00\x00\x18ftypavif", "image"),
        (b"\x1a\x45\xdf\xa3\x9fB", "clip"),
        (b"RIFF\x00\x00\x00\x00AVI LIST", "clip"),
        (b"RIFF\x00\x00\x00\x00WEBPVP8 ", "image"),
        (b"\x89PNG\r\n\x1a\n", "image"),
    ],
)
def test_the_kind_comes_from_the_bytes(head, kind):
    assert sniff(head) == kind


@pytest.mark.parametrize(
    ("size_pt", "wanted", "limit_mp", "dpi", "noted"),
    [
        ((612, 792), 150, 16, 150, False),
        ((612, 792), 40, 16, MIN_DPI, False),  # never below legible
        ((612, 792), 600, 16, 300, False),  # never past what helps
        ((2384, 3370), 300, 16, 101, True),  # A0 at 300 dpi is 139 MP: lowered to 16 MP, with a note
    ],
)
def test_the_render_resolution_is_bounded(size_pt, wanted, limit_mp, dpi, noted):
    notes: list[str] = []
    chosen = fit_dpi(size_pt, wanted, Limits(max_render_pixels=limit_mp * 1_000_000), "page 1", notes)
    assert chosen == pytest.approx(dpi, abs=1) and bool(notes) == noted


def test_a_page_too_large_even_at_the_lowest_resolution_is_refused():
    with pytest.raises(ImageError, match=r"200 x 200 inches: even at 72 dpi .* 16-megapixel limit"):
        fit_dpi((14_400, 14_400), 150, Limits(), "page 1 of 'big.pdf'", [])


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (encrypted_pdf(), "encrypted with a password"),
        (zero_page_pdf(), "holds no pages"),
        (pdfium_pdf(0), "holds no pages"),
        (b"%PDF-1.4\nnot really", "damaged or truncated PDF"),
    ],
)
def test_documents_that_cannot_open_are_refused_in_one_line(data, fragment):
    with pytest.raises(ImageError, match=fragment):
        Pdf(data, "'x.pdf'")


def media_of(data: bytes, pages: str | None = None) -> Media:
    return Media("pdf", data, "img_0123456789abcdef", "'x.pdf'", "path", Selection(pages=pages))


def test_every_page_is_checked_before_any_is_rendered(monkeypatch):
    data = pdfium_pdf(3)
    rendered = []
    monkeypatch.setattr(Pdf, "render", lambda self, index, dpi: rendered.append(index))
    with pytest.raises(ImageError, match="more than the 2 one call may read"):
        Document(media_of(data), None, lambda size: 100.0, Limits(max_pages=2))
    with pytest.raises(ImageError, match="embedded image of 10,000 x 10,000 pixels"):
        Document(media_of(big_image_pdf()), None, lambda size: 100.0, Limits())
    assert rendered == []


def test_pages_render_one_at_a_time_with_their_origin(tmp_path):
    data = write_pdf(tmp_path / "doc.pdf", pages=3).read_bytes()
    with Document(media_of(data, "2-3"), None, lambda size: 100.0, Limits()) as document:
        parts = list(document.parts())
    assert [(p.origin.page, p.origin.dpi) for p in parts] == [(2, 100.0), (3, 100.0)]
    # 8.5 x 11 inches at 100 dpi
    assert [p.loaded.size for p in parts] == [(850, 1100), (850, 1100)]
    assert len({p.loaded.image_id for p in parts}) == 2


# ---------------------------------------------------------------- on the model


@pytest.fixture(scope="module")
def vision(gemma4_backend, tmp_path_factory):
    folder = tmp_path_factory.mktemp("pdfs")
    write_pdf(folder / "doc.pdf", pages=3, size=(425, 550), dpi=50, font_px=12, lines=6)
    return Vision(gemma4_backend, ImageLoader(AccessPolicy.for_server([folder]))), folder


def plain_tokens(backend, picture, budget: int, options: GenerationOptions) -> list[int]:
    """What plain transformers generates for the ocr prompt on ``picture``: the processor, one generate."""
    messages = local_messages(backend.dialect.prompt(Ask("ocr", (ImageInput.from_pixels(picture),), budget=budget)).messages)
    inputs = backend.runtime.processor.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt",
        processor_kwargs={"max_soft_tokens": budget},
    )
    with torch.inference_mode():
        output = backend.runtime.model.generate(**inputs, **options.generate_kwargs())
    return output[0, inputs["input_ids"].shape[1]:].tolist()


def test_each_pages_tokens_equal_plain_transformers_on_the_same_rendered_page(vision, gemma4_backend):
    """Three pages read in one run_many batch: each page's tokens are what plain transformers gives for that
    page rendered at the same resolution by PDFium itself."""
    import pypdfium2

    core, folder = vision
    options = GenerationOptions(max_new_tokens=6, min_new_tokens=6)
    result = core.ocr(str(folder / "doc.pdf"), budget=70, options=options, tiles="off")
    assert [p.origin.page for p in result.pages] == [1, 2, 3]
    document = pypdfium2.PdfDocument(str(folder / "doc.pdf"))
    for page in result.pages:
        rendered = document[page.origin.page - 1].render(scale=page.origin.dpi / 72).to_pil().convert("RGB")
        expected = plain_tokens(gemma4_backend, rendered, 70, options)
        assert page.generated_tokens == len(expected)
        assert page.text == answer_text(gemma4_backend.runtime.processor.decode(expected, skip_special_tokens=True))


def test_a_pdf_describes_as_its_pages_in_one_prompt(vision):
    core, folder = vision
    result = core.describe([f"{folder / 'doc.pdf'}#pages=1,3"], "What is this?", budget=70,
                           options=GenerationOptions(max_new_tokens=2))
    assert [s.page for s in result.sources] == [1, 3]
    assert result.image_tokens and result.image_tokens % 2 == 0  # two pages of one size, same tokens each
    assert result.image_ids == [core.loader.open(str(folder / "doc.pdf")).id]


def test_compare_budgets_takes_one_page(vision):
    core, folder = vision
    result = core.compare_budgets(str(folder / "doc.pdf"), budgets=[70, 140], pages="2",
                                  options=GenerationOptions(max_new_tokens=1))
    assert result.source is not None and result.source.page == 2
    with pytest.raises(InvalidRequest, match="compares one page at a time"):
        core.compare_budgets(str(folder / "doc.pdf"), budgets=[70, 140], options=GenerationOptions(max_new_tokens=1))


def test_a_page_read_again_comes_from_the_vision_cache(vision, gemma4_backend):
    """Pages are known by the PDF's content hash, the page number and the render resolution."""
    core, folder = vision
    gemma4_backend.clear_caches()
    options = GenerationOptions(max_new_tokens=1)
    first = core.ocr(f"{folder / 'doc.pdf'}#page=2", budget=70, options=options, tiles="off")
    again = core.ocr(f"{folder / 'doc.pdf'}#page=2", budget=70, options=options, tiles="off")
    assert (first.cache.vision, again.cache.vision) == ("miss", "hit")
