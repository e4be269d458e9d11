"""Decoding presets and how explicit values combine with them."""

from __future__ import annotations

import pytest

from tools.errors import InvalidRequest
from tools.options import PRESETS, GenerationOptions, resolve_options


def test_presets_are_the_paligemma_demo_choices():
    assert PRESETS == {
        "greedy": GenerationOptions(temperature=0.0, top_p=1.0),
        "nucleus-0.1": GenerationOptions(temperature=1.0, top_p=0.1),
        "nucleus-0.3": GenerationOptions(temperature=1.0, top_p=0.3),
        "temperature-0.5": GenerationOptions(temperature=0.5, top_p=1.0),
    }


@pytest.mark.parametrize(
    ("preset", "temperature", "top_p", "expected"),
    [
        (None, None, None, (0.0, 1.0)),
        ("greedy", None, None, (0.0, 1.0)),
        ("nucleus-0.1", None, None, (1.0, 0.1)),
        ("nucleus-0.3", None, None, (1.0, 0.3)),
        ("temperature-0.5", None, None, (0.5, 1.0)),
        # explicit values win over the preset's
        ("nucleus-0.3", 0.7, None, (0.7, 0.3)),
        ("temperature-0.5", None, 0.9, (0.5, 0.9)),
        ("nucleus-0.1", 0.0, None, (0.0, 0.1)),
        (None, 0.8, 0.95, (0.8, 0.95)),
    ],
)
def test_resolve_options(preset, temperature, top_p, expected):
    options = resolve_options(preset, max_new_tokens=7, temperature=temperature, top_p=top_p)
    assert (options.temperature, options.top_p, options.max_new_tokens) == (*expected, 7)


def test_sampling_presets_sample_and_greedy_does_not():
    assert PRESETS["greedy"].generate_kwargs()["do_sample"] is False
    assert resolve_options("nucleus-0.1").generate_kwargs() == {
        "max_new_tokens": 512, "do_sample": True, "temperature": 1.0, "top_p": 0.1
    }


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(InvalidRequest, match="greedy, nucleus-0.1, nucleus-0.3, temperature-0.5"):
        resolve_options("beam")


def test_explicit_values_are_still_range_checked():
    with pytest.raises(InvalidRequest, match="top_p"):
        resolve_options("nucleus-0.1", top_p=0.0)
