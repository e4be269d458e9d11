"""Prompt builders against exact strings."""

import pytest

from tools import prompts


@pytest.mark.parametrize(
    ("labels", "expected"),
    [
        (["person", "cat"], "detect person and cat, output only ```json"),
        (["person"], "detect person, output only ```json"),
        (["person", "car", "dog"], "detect person, car and dog, output only ```json"),
    ],
)
def test_gemma4_detect_prompt(labels, expected):
    assert prompts.gemma4_detect(labels) == expected


def test_gemma4_ocr_prompt_asks_for_reading_order_and_original_script():
    assert "reading order" in prompts.GEMMA4_OCR and "original language" in prompts.GEMMA4_OCR
