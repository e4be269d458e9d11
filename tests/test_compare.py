"""Agreement metrics and the budget recommendation, table-driven."""

from __future__ import annotations

import pytest

from tools.jobs import budgets as compare
from tools.boxes.detections import Detection


@pytest.mark.parametrize(
    ("a", "b", "distance"),
    [("", "", 0), ("abc", "", 3), ("", "abc", 3), ("kitten", "sitting", 3), ("猫に注意", "猫に注意", 0), ("ab", "ba", 2)],
)
def test_edit_distance(a, b, distance):
    assert compare.edit_distance(a, b) == distance


@pytest.mark.parametrize(
    ("text", "reference", "score"),
    [("HELLO", "HELLO", 1.0), ("HELL0", "HELLO", 0.8), ("", "HELLO", 0.0), ("", "", 1.0), ("x", "", 0.0),
     ("a much longer wrong text", "ab", 0.0)],
)
def test_char_agreement_is_one_minus_cer_floored_at_zero(text, reference, score):
    assert compare.char_agreement(text, reference) == pytest.approx(score)


@pytest.mark.parametrize(
    ("text", "reference", "score"),
    [("A red box", "a red box", 1.0), ("", "", 1.0), ("a red box", "a blue box", 2 / 3), ("cat", "dog", 0.0)],
)
def test_text_similarity_on_words(text, reference, score):
    assert compare.text_similarity(text, reference) == pytest.approx(score)


def box(label: str, x1: float, y1: float, x2: float, y2: float) -> Detection:
    return Detection(label=label, box=(int(x1 * 100), int(y1 * 100), int(x2 * 100), int(y2 * 100)),
                     box_normalized=(x1, y1, x2, y2), raw="")


def test_detect_agreement_is_box_f1():
    reference = [box("car", 0.1, 0.1, 0.5, 0.5), box("person", 0.6, 0.6, 0.9, 0.9)]
    assert compare.agreement("detect", "", "", reference, reference) == 1.0
    assert compare.agreement("detect", "", "", reference[:1], reference) == pytest.approx(2 / 3, abs=1e-4)
    assert compare.agreement("detect", "", "", [], reference) == 0.0


@pytest.mark.parametrize(
    ("scores", "threshold", "expected"),
    [([0.1, 0.5, 0.9, 0.95, 1.0], 0.9, 280), ([1.0, 1.0, 1.0, 1.0, 1.0], 0.8, 70),
     ([0.0, 0.0, 0.0, 0.0, 1.0], 0.95, 1120), ([0.9, 0.2, 0.2, 0.2, 1.0], 0.8, 70)],
)
def test_recommend_picks_the_smallest_agreeing_budget(scores, threshold, expected):
    assert compare.recommend([70, 140, 280, 560, 1120], scores, threshold) == expected


def test_every_task_has_a_metric_with_a_threshold():
    assert set(compare.METRICS) == {"describe", "ocr", "detect"}
    assert all(0 < metric.threshold <= 1 for metric in compare.METRICS.values())
