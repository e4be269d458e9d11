"""Each family's prompt builders against exact strings."""

import pytest

from tools.families import base, blip2, gemma4, paligemma
from tools.errors import InvalidRequest


@pytest.mark.parametrize(
    ("labels", "expected"),
    [
        (["person", "cat"], "detect person and cat, output only ```json"),
        (["person"], "detect person, output only ```json"),
        (["person", "car", "dog"], "detect person, car and dog, output only ```json"),
    ],
)
def test_gemma4_detect_prompt(labels, expected):
    assert gemma4.detect_text(labels) == expected


def test_gemma4_ocr_prompt_asks_for_reading_order_and_original_script():
    assert "reading order" in gemma4.OCR and "original language" in gemma4.OCR


def test_gemma4_empty_prompt_asks_for_a_description():
    assert base.describe_text("", 1) == "Describe this image."
    assert base.describe_text("", 2) == "Describe these images."
    assert base.describe_text("", 0) == "Describe these images."
    assert base.describe_text("Why?", 1) == "Why?"


# ---------------------------------------------------------------- PaliGemma


@pytest.mark.parametrize(
    ("prompt", "lang", "expected"),
    [
        # caption requests, in any language code
        ("", "en", "caption en"),
        ("", "es", "caption es"),
        ("", "pt-BR", "caption pt-BR"),
        ("Describe this image.", "en", "caption en"),
        ("describe the picture in detail", "fr", "caption fr"),
        ("Please caption this photo!", "en", "caption en"),
        ("Write a short caption for this image", "en", "caption en"),
        ("Give me a description of the image.", "de", "caption de"),
        ("What is in this image?", "en", "caption en"),
        # anything else is a question
        ("What color is the car?", "en", "answer en What color is the car?"),
        ("What color is the car?", "es", "answer es What color is the car?"),
        ("Describe the car", "en", "answer en Describe the car"),
        ("  How many\n cars are there?  ", "en", "answer en How many cars are there?"),
        ("Caption es", "en", "answer en Caption es"),
        ("ocr this", "en", "answer en ocr this"),
        ("detect", "en", "answer en detect"),
        # task prefixes pass through as they are, whatever the default language
        ("caption es", "en", "caption es"),
        ("caption zh", "en", "caption zh"),
        ("describe fr", "en", "describe fr"),
        ("ocr", "es", "ocr"),
        ("answer de was ist das?", "en", "answer de was ist das?"),
        ("question en a red car", "en", "question en a red car"),
        ("detect cat ; dog", "en", "detect cat ; dog"),
        ("segment the left cat", "en", "segment the left cat"),
        (" detect cat\n", "en", "detect cat"),
    ],
)
def test_paligemma_describe_prefix(prompt, lang, expected):
    assert paligemma.describe_text(prompt, lang) == expected


@pytest.mark.parametrize("lang", ["english", "EN", "", "e", "en us", "en\n"])
def test_paligemma_language_must_be_a_code(lang):
    with pytest.raises(InvalidRequest, match="language code"):
        paligemma.describe_text("", lang)


@pytest.mark.parametrize(
    ("labels", "expected"),
    [
        (["cat"], "detect cat"),
        (["cat", "dog"], "detect cat ; dog"),
        (["car", "person", "traffic light"], "detect car ; person ; traffic light"),
        (["  red   car "], "detect red car"),
    ],
)
def test_paligemma_detect_prefix(labels, expected):
    assert paligemma.detect_text(labels) == expected


def test_paligemma_segment_and_ocr_prefixes():
    assert paligemma.segment_text("cat") == "segment cat"
    assert paligemma.OCR == "ocr"


@pytest.mark.parametrize("build", [lambda: paligemma.detect_text(["cat", "a;b"]), lambda: paligemma.segment_text("a ; b")])
def test_paligemma_label_with_separator_is_refused(build):
    with pytest.raises(InvalidRequest, match="PaliGemma separates labels with ';'"):
        build()


# ---------------------------------------------------------------- BLIP-2


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("", ""),
        ("   ", ""),
        ("What is a dinosaur holding?", "Question: What is a dinosaur holding? Answer:"),
        ("how many dogs", "Question: how many dogs Answer:"),
        ("Is it raining", "Question: Is it raining Answer:"),
        ("the colour of the sky?", "Question: the colour of the sky? Answer:"),
        ("this is a cartoon of", "this is a cartoon of"),
        ("they seem to be", "they seem to be"),
        ("Question: what is it? Answer:", "Question: what is it? Answer:"),
        ("Where\nare they?", "Question: Where are they? Answer:"),
    ],
)
def test_blip2_turn(prompt, expected):
    assert blip2.turn_text(prompt) == expected


@pytest.mark.parametrize(
    ("question", "answer", "expected"),
    [
        ("What is a dinosaur holding?", "a torch", "Question: What is a dinosaur holding? Answer: a torch."),
        ("Where are they?", "In the woods.", "Question: Where are they? Answer: In the woods."),
        ("", "two cartoon monsters", "two cartoon monsters."),
        ("Why?", "", "Question: Why? Answer:"),
    ],
)
def test_blip2_pair(question, answer, expected):
    assert blip2.pair_text(question, answer) == expected


@pytest.mark.parametrize(
    ("turns", "expected"),
    [
        ([], []),
        (
            [("user", "q1"), ("assistant", "a1"), ("user", "q2"), ("assistant", "a2")],
            [("Question: q1 Answer: a1.", 2), ("Question: q2 Answer: a2.", 2)],
        ),
        (
            [("assistant", "a0"), ("user", "q1"), ("user", "more"), ("assistant", "a1"), ("user", "q2")],
            [("a0.", 1), ("Question: q1 more Answer: a1.", 3), ("Question: q2 Answer:", 1)],
        ),
    ],
)
def test_blip2_pairs_from_turns(turns, expected):
    assert blip2.pairs_of(turns) == expected


def words(text: str) -> int:
    return len(text.split())


def test_blip2_chat_is_the_write_ups_concatenation():
    pairs = [
        blip2.pair_text("What is a dinosaur holding?", "a torch"),
        blip2.pair_text("Where are they?", "In the woods."),
    ]
    assert blip2.fit_chat(pairs, blip2.turn_text("What for?"), words) == (
        "Question: What is a dinosaur holding? Answer: a torch. Question: Where are they? Answer: In the woods. "
        "Question: What for? Answer:",
        0,
    )


PAIRS = ["one two", "three four", "five six"]


@pytest.mark.parametrize(
    ("current", "limit", "expected", "dropped"),
    [
        ("seven", 512, "one two three four five six seven", 0),
        ("seven", 7, "one two three four five six seven", 0),
        ("seven", 6, "three four five six seven", 1),
        ("seven", 5, "three four five six seven", 1),
        ("seven", 3, "five six seven", 2),
        ("seven", 1, "seven", 3),
        ("", 6, "one two three four five six", 0),
        ("", 2, "five six", 2),
        ("", 0, "", 3),
    ],
)
def test_blip2_chat_drops_the_oldest_pairs_first(current, limit, expected, dropped):
    assert blip2.fit_chat(PAIRS, current, words, limit) == (expected, dropped)


def test_blip2_chat_never_drops_the_current_turn():
    with pytest.raises(InvalidRequest, match="BLIP-2"):
        blip2.fit_chat(PAIRS, "seven eight", words, 1)


def test_blip2_chat_counts_the_whole_prompt_each_time():
    seen: list[str] = []

    def count(text: str) -> int:
        seen.append(text)
        return words(text) + 10  # e.g. the image's query tokens

    assert blip2.fit_chat(PAIRS, "seven", count, 15) == ("three four five six seven", 1)
    assert seen == ["one two three four five six seven", "three four five six seven"]
