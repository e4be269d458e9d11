"""Weighted box fusion of several budgets' boxes (pure code, table-driven)."""

from __future__ import annotations

import pytest

from tools.jobs.consensus import RunBox, fuse


@pytest.mark.parametrize(
    "boxes, runs, expected",
    [
        # three runs agree: the corners averaged, agreement 1
        ([RunBox(0, "cat", (10, 10, 50, 50)), RunBox(1, "cat", (12, 10, 52, 50)), RunBox(2, "cat", (14, 10, 54, 50))], 3,
         [("cat", (12.0, 10.0, 52.0, 50.0), [0, 1, 2], 1.0)]),
        # one run alone: its box, agreement 1/3
        ([RunBox(1, "dog", (0, 0, 10, 10))], 3, [("dog", (0.0, 0.0, 10.0, 10.0), [1], 0.3333)]),
        # boxes too far apart (IoU < 0.55) stay apart
        ([RunBox(0, "cat", (0, 0, 10, 10)), RunBox(1, "cat", (5, 0, 15, 10))], 2,
         [("cat", (0.0, 0.0, 10.0, 10.0), [0], 0.5), ("cat", (5.0, 0.0, 15.0, 10.0), [1], 0.5)]),
        # different labels never fuse; labels compare without case
        ([RunBox(0, "Cat", (0, 0, 10, 10)), RunBox(1, "cat", (0, 0, 10, 10)), RunBox(1, "dog", (0, 0, 10, 10))], 2,
         [("Cat", (0.0, 0.0, 10.0, 10.0), [0, 1], 1.0), ("dog", (0.0, 0.0, 10.0, 10.0), [1], 0.5)]),
        # two boxes of one run never fuse with each other, even when they overlap
        ([RunBox(0, "cat", (0, 0, 10, 10)), RunBox(0, "cat", (1, 0, 11, 10))], 1,
         [("cat", (0.0, 0.0, 10.0, 10.0), [0], 1.0), ("cat", (1.0, 0.0, 11.0, 10.0), [0], 1.0)]),
        ([], 3, []),
    ],
)
def test_fuse(boxes, runs, expected):
    fused = fuse(boxes, runs)
    assert [(f.label, f.box, f.runs, f.agreement) for f in fused] == expected
    for f in fused:
        assert len(f.ious) == len(f.runs) and all(0 < v <= 1 for v in f.ious)


def test_weights_make_the_trusted_run_lead_and_pull_the_average():
    boxes = [RunBox(0, "cat", (0, 0, 10, 10)), RunBox(1, "cat", (1, 0, 11, 10))]
    fused = fuse(boxes, 2, weights=[1, 3])
    assert fused[0].runs == [1, 0] and fused[0].box == (0.75, 0.0, 10.75, 10.0) and fused[0].agreement == 1.0
    with pytest.raises(ValueError):
        fuse(boxes, 2, weights=[1])
