"""The intent router, table-driven."""

import pytest

from agent.router import Route, labels_in, route


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ("What does the sign say?", Route("ocr")),
        ("read the text please", Route("ocr")),
        ("Transcribe this receipt", Route("ocr")),
        ("How many cars are there?", Route("detect", {"labels": ["car"]})),
        ("find the cat and the dogs", Route("detect", {"labels": ["cat", "dog"]})),
        ("Where is the red bicycle?", Route("detect", {"labels": ["red bicycle"]})),
        ("count the people", Route("detect", {"labels": ["people"]})),
        ("locate all traffic lights", Route("detect", {"labels": ["traffic light"]})),
        ("What is shown in this image?", Route("describe", {"prompt": "What is shown in this image?"})),
        ("Describe the mood", Route("describe", {"prompt": "Describe the mood"})),
        ("how many?", Route("describe", {"prompt": "how many?"})),  # nothing to count: no labels
    ],
)
def test_route(message, expected):
    assert route(message) == expected


@pytest.mark.parametrize(("message", "labels"), [("find 3 boxes", []), ("detect butterflies", ["butterfly"]), ("spot the glass", ["glass"]),
     ("find cats, dogs or birds", ["cat", "dog", "bird"])])
def test_labels_in(message, labels):
    assert labels_in(message) == labels
