

@pytest.mark.parametrize(
    "task, size, agreements, expected, says",
    [
        # ocr on a 1600 x 1200 page: 70 already agrees with 1120, but 12 px text needs 1120
        ("ocr", (1600, 1200), [1.0, 1.0, 1.0], 1120, "agreement reaches 0.95 at 70, but"),
        # small image: the rule asks for nothing more, agreement decides
        ("ocr", (64, 48), [0.2, 0.97, 1.0], 280, "budget 'auto' would pick 70"),
        ("describe", (4000, 3000), [0.9, 0.9, 1.0], 70, "whose agreement reaches 0.95"),
    ],
)
def test_compare_recommends_by_agreement_and_the_auto_rule(gemma4_backend, task, size, agreements, expected, says):
    vision = Vision(gemma4_backend, ImageLoader(AccessPolicy.for_files([])))
    budget, reason = vision._recommend(task, size, [70, 280, 1120], agreements, 0.95)
    assert budget == expected and says in reason
