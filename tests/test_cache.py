"""The vision cache and prefix reuse: hits, misses, eviction, and never a prefix served to another prompt."""

from __future__ import annotations

import pytest
import torch
from PIL import Image


from tests.conftest import boxes, replied, run, sample_image
from tools.families.base import chat_messages
from tools.inputs import ImageInput
from tools.model import load_model
from tools.runtimes.local import local_messages
from tools.tasks import Ask, Prompt, Turn
from tools.runtimes.cache import BytesLRU, DynamicPrefixCache, EncodedImage, ImageBlock, StaticPrefixCache, VisionCache, fork, image_blocks, kv_length, reusable_prefix
from tools.errors import InvalidRequest
from tools.scope import Scope, owned_by
from tools.inputs import AccessPolicy, ImageLoader
from tools.options import GenerationOptions
from tools.toolcalls import CHAT_SYSTEM, CHAT_TOOLS
from tools.vision import Vision

FORCED = GenerationOptions(max_new_tokens=6, min_new_tokens=6)
I = 9  # the image token in the pure tests


@pytest.fixture
def backend(tiny_gemma4):
    """A backend of its own: these tests look at its caches, which the shared one fills in any order."""
    return load_model(str(tiny_gemma4))


# -- the pure parts -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("steps", "kept", "evictions"),
    [
        # (op, key, bytes): a put of 60 over a 100 cap pushes the oldest out
        ([("put", "a", 40), ("put", "b", 40), ("put", "c", 40)], ["b", "c"], 1),
        # a get makes "a" the most recent, so "b" goes instead
        ([("put", "a", 40), ("put", "b", 40), ("get", "a", 0), ("put", "c", 40)], ["a", "c"], 1),
        # one value over the cap is refused and evicts nothing
        ([("put", "a", 40), ("put", "big", 101)], ["a"], 0),
        # putting a key again replaces its bytes rather than adding them
        ([("put", "a", 90), ("put", "a", 50), ("put", "b", 50)], ["a", "b"], 0),
    ],
)
def test_lru_is_capped_by_bytes(steps, kept, evictions):
    lru: BytesLRU[str, str] = BytesLRU(max_bytes=100)
    for op, key, nbytes in steps:
        if op == "put":
            lru.put(key, key.upper(), nbytes)
        else:
            assert lru.get(key) == key.upper()
    assert [key for key in ("a", "b", "c", "big") if key in lru] == kept
    assert lru.nbytes <= 100 and lru.stats.evictions == evictions


def test_lru_counts_hits_and_misses():
    lru: BytesLRU[str, int] = BytesLRU(max_bytes=10)
    lru.put("a", 1, 1)
    assert [lru.get("a"), lru.get("b"), lru.get("a")] == [1, None, 1]
    assert (lru.stats.hits, lru.stats.misses) == (2, 1)


@pytest.mark.parametrize(
    ("ids", "keys", "spans"),
    [
        ([1, 2, 3], [], []),
        ([1, 7, I, I, I, 8, 4], ["x"], [(1, 6)]),
        ([7, I, 8, 7, I, I, 8, 5], ["x", "y"], [(0, 3), (3, 7)]),
    ],
)
def test_image_blocks_span_the_markers_around_each_run(ids, keys, spans):
    assert [(b.start, b.end, b.key) for b in image_blocks(ids, I, keys)] == [(s, e, k) for (s, e), k in zip(spans, keys)]


def test_image_blocks_refuse_runs_without_a_key():
    with pytest.raises(ValueError):
        image_blocks([7, I, 8, 7, I, 8], I, ["only one"])


def blocks(ids: list[int], keys: list | None) -> list[ImageBlock]:
    """None: a sequence whose image tokens were generated, so no block was ever recorded for them."""
    return [] if keys is None else image_blocks(ids, I, keys)


PROMPT = [1, 2, 7, I, I, I, 8, 3, 4]  # header, one image block at 2..7, text
CASES = [
    # (name, old ids and keys, new ids and keys, reusable)
    ("same prompt: all but the last token", (PROMPT, ["a"]), (PROMPT, ["a"]), 8),
    ("follow-up: the whole old sequence", (PROMPT, ["a"]), (PROMPT + [5, 6, 7], ["a"]), 9),
    ("text differs after the image", (PROMPT, ["a"]), (PROMPT[:7] + [9 + 1, 4], ["a"]), 7),
    ("same token ids, another image", (PROMPT, ["a"]), (PROMPT, ["b"]), 2),
    ("same image at another budget", (PROMPT, [("a", 70)]), (PROMPT, [("a", 280)]), 2),
    ("prefix would end inside an image", ([1, 2, 7, I, I, I, I, 8], ["a"]), ([1, 2, 7, I, I, 8, 3], ["b"]), 2),
    ("old side generated image tokens", ([1, 2, 3, 7, I, I], None), ([1, 2, 3, 7, I, I, 8, 5], ["a"]), 3),
    ("second image differs", (PROMPT + [7, I, 8, 5], ["a", "b"]), (PROMPT + [7, I, 8, 5], ["a", "c"]), 9),
    ("nothing in common", ([5, 6], []), ([1, 2], []), 0),
    ("one-token prompt leaves nothing to reuse", ([1], []), ([1], []), 0),
]


@pytest.mark.parametrize(("old", "new", "expected"), [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_reusable_prefix(old, new, expected):
    (old_ids, old_keys), (new_ids, new_keys) = old, new
    assert reusable_prefix(old_ids, blocks(old_ids, old_keys), new_ids, blocks(new_ids, new_keys)) == expected


def test_the_cache_key_is_the_loader_id_or_a_pixel_hash(tmp_path):
    path = tmp_path / "a.png"
    sample_image().save(path)
    loaded = ImageLoader(AccessPolicy.for_files([str(path)])).load(str(path))
    # identity travels with the image: the loader's id is the key, no registry involved
    assert loaded.input.hash == loaded.image_id and loaded.input.pixels is loaded.image
    # an image from anywhere else is known by its pixels
    copy = loaded.image.copy()
    key = ImageInput.from_pixels(copy).hash
    assert key.startswith("px_") and key == ImageInput.from_pixels(loaded.image.copy()).hash
    # drawing on it changes its key
    copy.putpixel((0, 0), (1, 2, 3))
    assert ImageInput.from_pixels(copy).hash != ImageInput.from_pixels(loaded.image.copy()).hash
    assert ImageInput.from_pixels(Image.new("RGB", (4, 4))).hash != ImageInput.from_pixels(Image.new("L", (4, 4))).hash


def test_no_module_keeps_an_image_registry():
    import importlib
    import pkgutil

    from tools.runtimes import cache
    from tools import inputs

    modules = [cache, inputs, *(importlib.import_module(f"tools.inputs.{m.name}") for m in pkgutil.iter_modules(inputs.__path__))]
    for module in modules:
        assert not any(isinstance(value, dict) and "known" in name for name, value in vars(module).items())
        assert not hasattr(module, "remember_image_key") and not hasattr(module, "image_key")


def kv_of(length: int, layers: int = 2) -> object:
    from transformers import DynamicCache

    return DynamicCache(ddp_cache_data=[(torch.randn(1, 1, length, 4), torch.randn(1, 1, length, 4))] * layers)


def test_fork_copies_a_prefix_and_leaves_the_snapshot_whole():
    kv = kv_of(10)
    copy = fork(kv, 6)
    assert kv_length(copy) == 6 and kv_length(kv) == 10
    assert torch.equal(copy.layers[0].keys, kv.layers[0].keys[..., :6, :])


@pytest.mark.parametrize(
    ("max_bytes", "max_entries", "lengths", "kept"),
    [
        (10**6, 8, [40, 40, 40], 3),
        (10**6, 2, [40, 40, 40], 2),  # by count
        (2 * 2 * 2 * 40 * 4 * 4 + 1, 8, [40, 40, 40], 2),  # by bytes: two entries of 40 positions fit
        (100, 8, [40], 0),  # one entry alone over the cap is not kept
    ],
)
def test_prefix_cache_evicts_by_bytes_and_count(max_bytes, max_entries, lengths, kept):
    cache = DynamicPrefixCache(max_bytes=max_bytes, max_entries=max_entries)
    for n, length in enumerate(lengths):
        cache.end([n] * length, [], kv_of(length))
    assert len(cache) == kept


def test_prefix_cache_refuses_a_cache_that_does_not_hold_the_ids():
    cache = DynamicPrefixCache()
    assert not cache.end(list(range(50)), [], kv_of(49))
    assert len(cache) == 0


def test_prefix_cache_picks_the_longest_match_and_ignores_short_ones():
    cache = DynamicPrefixCache(min_tokens=8)
    cache.end(list(range(40)), [], kv_of(40))
    cache.end(list(range(20)) + [99] * 20, [], kv_of(40))
    kv, reused = cache.begin(list(range(45)), [], 60)
    assert reused == 40 and kv_length(kv) == 40
    kv, reused = cache.begin([0, 1, 2, 3, 5], [], 10)  # 4 shared tokens: under min_tokens
    assert reused == 0 and kv_length(kv) == 0


@pytest.mark.parametrize(
    ("made_in", "asked_in", "reused"),
    [("a", "a", 40), ("a", "b", 0), (None, "a", 0), ("a", None, 0), (None, None, 40)],
)
def test_a_prefix_is_resumed_only_in_the_scope_that_computed_it(made_in, asked_in, reused):
    """How much of another client's prompt matches must not be learnt from reused_prompt_tokens."""
    scopes = {"a": Scope(), "b": Scope(), None: None}
    cache = DynamicPrefixCache(min_tokens=8)
    with owned_by(scopes[made_in]):
        cache.end(list(range(40)), [], kv_of(40))
    with owned_by(scopes[asked_in]):
        assert cache.begin(list(range(45)), [], 60)[1] == reused


@pytest.mark.parametrize(("made_in", "asked_in", "hit"), [("a", "a", True), ("a", "b", False), (None, "a", False)])
def test_an_encoding_is_found_only_in_the_scope_that_made_it(made_in, asked_in, hit):
    scopes = {"a": Scope(), "b": Scope(), None: None}
    cache = VisionCache()
    key = ("model", "hash", 70)
    with owned_by(scopes[made_in]):
        cache.keep(key, EncodedImage(4, torch.zeros(4, 8)))
    with owned_by(scopes[asked_in]):
        assert (cache.get(key) is not None) == hit


# -- on the tiny model ------------------------------------------------------------------------


def test_describe_ocr_detect_on_one_image_encode_it_once(backend):
    image = sample_image(512, 512)
    first = run(backend, "describe", [image], "What is it?", budget=70, options=FORCED).generation
    ocr = run(backend, "ocr", [image], budget=70, options=FORCED).generation
    detect, _ = boxes(run(backend, "detect", [image], labels=["cat"], budget=70, options=FORCED))
    assert [g.cache.vision for g in (first, ocr, detect)] == ["miss", "hit", "hit"]
    # the header and the whole image block are shared, the task text is not
    assert first.cache.reused_prompt_tokens == 0
    assert ocr.cache.reused_prompt_tokens == detect.cache.reused_prompt_tokens > first.image_tokens
    assert backend.runtime.vision_cache.stats.misses == 1 and len(backend.runtime.vision_cache) == 1


def conversation(image: Image.Image, answer: str) -> list[Turn]:
    return [Turn("user", "What is it?", (ImageInput.from_pixels(image),)), Turn("assistant", answer)]


def test_follow_up_reuses_the_prefix_and_gives_the_same_tokens(backend, gemma4_backend):
    image = sample_image(512, 512)
    first = run(backend, "describe", [image], "What is it?", budget=70, options=FORCED).generation
    history = conversation(image, first.text)
    warm = run(backend, "describe", [], "And the colours?", history=history, budget=70, options=FORCED).generation
    gemma4_backend.clear_caches()
    cold = run(gemma4_backend, "describe", [], "And the colours?", history=history, budget=70, options=FORCED).generation
    assert warm.cache.vision == "hit" and warm.cache.reused_prompt_tokens >= first.prompt_tokens
    assert cold.cache.reused_prompt_tokens == 0
    assert warm.token_ids == cold.token_ids and warm.prompt_tokens == cold.prompt_tokens


def test_an_unrelated_prompt_reuses_nothing(backend):
    run(backend, "describe", [sample_image(512, 512)], "What is it?", budget=70, options=FORCED).generation
    other = replied(run(backend, "chat", [], "Hello there, who are you?", budget=70, options=FORCED))[0]
    assert other.cache.reused_prompt_tokens == 0 and other.cache.vision == "none"


def test_another_image_with_identical_token_ids_is_not_served_the_first_ones_cache(backend, gemma4_backend):
    red, green = Image.new("RGB", (64, 48), "red"), Image.new("RGB", (64, 48), "green")
    first = run(backend, "describe", [red], "What is it?", budget=70, options=FORCED).generation
    second = run(backend, "describe", [green], "What is it?", budget=70, options=FORCED).generation
    assert first.prompt_tokens == second.prompt_tokens and first.image_tokens == second.image_tokens
    assert second.cache.vision == "miss" and second.cache.reused_prompt_tokens == 0
    gemma4_backend.clear_caches()
    assert second.token_ids == run(gemma4_backend, "describe", [green], "What is it?", budget=70, options=FORCED).generation.token_ids


def test_the_vision_cache_evicts_by_its_byte_cap(backend):
    images = [Image.new("RGB", (64, 48), color) for color in ("red", "green", "blue")]
    run(backend, "describe", [images[0]], "x", budget=70, options=FORCED).generation
    one_image = backend.runtime.vision_cache.nbytes
    backend.runtime.vision_cache = VisionCache(max_bytes=int(one_image * 2.5))
    reports = [run(backend, "describe", [image], "x", budget=70, options=FORCED).generation.cache.vision for image in [*images, images[0], images[2]]]
    # three fit in no cap of two and a half: the first is gone when it comes back, the last is not
    assert reports == ["miss", "miss", "miss", "miss", "hit"]
    assert backend.runtime.vision_cache.stats.evictions >= 1 and backend.runtime.vision_cache.nbytes <= backend.runtime.vision_cache.max_bytes


def test_several_images_in_one_prompt_report_a_partial_hit(backend):
    known, new = Image.new("RGB", (64, 48), "red"), Image.new("RGB", (64, 48), "blue")
    run(backend, "describe", [known], "x", budget=70, options=FORCED).generation
    generation = run(backend, "describe", [known, new, new], "Compare.", budget=70, options=FORCED).generation
    assert generation.cache.vision == "partial" and generation.image_tokens == 3 * 63


def test_budgets_are_cached_separately(backend):
    image = sample_image(512, 512)
    assert [run(backend, "describe", [image], "x", budget=budget, options=FORCED).generation.cache.vision for budget in (70, 140, 70)] == [
        "miss", "miss", "hit"
    ]


def test_a_prefix_over_the_cap_is_not_kept(backend):
    backend.runtime.prefix_cache = DynamicPrefixCache(max_bytes=1)
    image = sample_image()
    run(backend, "describe", [image], "x", budget=70, options=FORCED).generation
    assert run(backend, "describe", [image], "y", budget=70, options=FORCED).generation.cache.reused_prompt_tokens == 0


def test_the_static_cache_resumes_like_the_dynamic_one(backend, gemma4_backend):
    backend.runtime.prefix_cache = StaticPrefixCache(backend.runtime.model.config, min_capacity=512)
    image = sample_image(512, 512)
    first = run(backend, "describe", [image], "What is it?", budget=70, options=FORCED).generation
    follow_up = run(backend, "describe", [], "And then?", history=conversation(image, first.text), budget=70, options=FORCED).generation
    unrelated = run(backend, "describe", [Image.new("RGB", (64, 48), "blue")], "x", budget=70, options=FORCED).generation
    assert follow_up.cache.reused_prompt_tokens >= first.prompt_tokens
    assert unrelated.cache.reused_prompt_tokens == 0
    gemma4_backend.clear_caches()
    assert follow_up.token_ids == run(gemma4_backend, "describe", [], "And then?", history=conversation(image, first.text), budget=70, options=FORCED).generation.token_ids
    # a prompt past the capacity gets a larger cache and starts over
    long = run(backend, "describe", [image], "x", budget=1120, options=FORCED).generation
    assert backend.runtime.prefix_cache.capacity >= long.prompt_tokens + FORCED.max_new_tokens


@pytest.mark.parametrize(
    ("images", "history", "tools"),
    [
        ([(512, 512)], [], False),
        ([(64, 48), (1, 2000), (300, 100)], [], False),
        ([(64, 48)], [("user", "first", [(32, 32)]), ("assistant", "an answer", [])], False),
        ([], [("user", "look", [(64, 48)]), ("assistant", "ok", [])], True),
    ],
)
def test_prompts_built_from_cached_encodings_match_the_processor(gemma4_backend, images, history, tools):
    pictures = [ImageInput.from_pixels(Image.new("RGB", size, "white")) for size in images]
    turns = [
        Turn(role, text, tuple(ImageInput.from_pixels(Image.new("RGB", s, "gray")) for s in sizes))
        for role, text, sizes in history
    ]
    messages = chat_messages(pictures, "Describe.", turns)
    if tools:
        messages.insert(0, {"role": "system", "content": CHAT_SYSTEM})
    declared = CHAT_TOOLS if tools else None
    for budget in (70, 1120):
        stock = gemma4_backend.runtime.processor.apply_chat_template(
            local_messages(messages), tools=declared, add_generation_prompt=True, tokenize=True, return_dict=True,
            return_tensors="pt", processor_kwargs={"max_soft_tokens": budget},
        )
        prompt = Prompt(images=[], messages=messages, budget=budget, tools=declared)
        ours = gemma4_backend.runtime.encoded(prompt).inputs
        for name in ("input_ids", "attention_mask", "mm_token_type_ids"):
            assert torch.equal(ours[name], stock[name]), name


def test_the_image_placeholder_typed_in_a_prompt_is_refused(gemma4_backend):
    with pytest.raises(InvalidRequest, match="image placeholder"):
        run(gemma4_backend, "describe", [sample_image()], "look at <|image|> this", budget=70, options=FORCED).generation


def plain_transformers(backend, task, image, budget, options):
    """The tokens plain transformers gives for one budget: the processor's own prompt, one ``generate``."""
    ask = Ask(task, (ImageInput.from_pixels(image),), "What?", ("cat",), budget=budget)
    messages = local_messages(backend.dialect.prompt(ask).messages)
    inputs = backend.runtime.processor.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt",
        processor_kwargs={"max_soft_tokens": budget},
    )
    with torch.inference_mode():
        output = backend.runtime.model.generate(**inputs, **options.generate_kwargs())
    return output[0, inputs["input_ids"].shape[1]:].tolist()


@pytest.mark.parametrize(
    ("task", "options"),
    [
        ("describe", FORCED),
        ("ocr", FORCED),
        ("detect", FORCED),
        # free length: a row may stop early and leave the batch
        ("describe", GenerationOptions(max_new_tokens=12)),
        # one token: the prefill alone answers, nothing is decoded
        ("describe", GenerationOptions(max_new_tokens=1, min_new_tokens=1)),
    ],
)
def test_batched_budgets_give_plain_transformers_tokens(gemma4_backend, task, options):
    image = sample_image(512, 512)
    budgets = [70, 140, 280]
    ask = Ask(task, (ImageInput.from_pixels(image),), "What?", ("cat",))
    batched = [boxes(a) for a in gemma4_backend.run_budgets(ask, budgets, options)]
    assert [g.image_tokens for g, _ in batched] == [64, 121, 256]
    # greedy, float32 on the tiny model: neither the unpadded prefill nor the shared decode changes a token
    assert [g.token_ids for g, _ in batched] == [
        plain_transformers(gemma4_backend, task, image, budget, options) for budget in budgets
    ]
    assert all((parsed is not None) == (task == "detect") for _, parsed in batched)


def test_each_budget_reports_its_own_encoding_and_prefill_and_the_shared_decode(backend):
    ask = Ask("describe", (ImageInput.from_pixels(sample_image(512, 512)),), "What?")
    low, high = [answer.generation for answer in backend.run_budgets(ask, [70, 1120], FORCED)]
    for t in (low.timings, high.timings):
        assert t.preprocess_ms > 0 and t.prefill_ms > 0
        assert t.total_ms == pytest.approx(t.preprocess_ms + t.prefill_ms + t.decode_ms, abs=0.02)
    # one decode for both rows; encoding and prefill are each row's own (1120 encodes 16 times the patches)
    assert low.timings.decode_ms == high.timings.decode_ms > 0
    assert low.timings.preprocess_ms != high.timings.preprocess_ms


def test_results_report_the_cache(tiny_gemma4, square_png):
    vision = Vision(load_model(str(tiny_gemma4)), ImageLoader(AccessPolicy.for_files([str(square_png)])))
    first = vision.describe([str(square_png)], "What?", budget=70, options=FORCED)
    second = vision.ocr(first.image_ids[0], budget=70, options=FORCED)
    assert first.cache.model_dump() == {"vision": "miss", "reused_prompt_tokens": 0}
    assert second.cache.vision == "hit" and second.cache.reused_prompt_tokens > 0
    compared = vision.compare_budgets(first.image_ids[0], "describe", "What?", budgets=[70, 140], options=FORCED)
    assert [run.cache.vision for run in compared.runs] == ["hit", "miss"]


def test_without_encoded_image_support_the_processor_path_runs_uncached(backend):
    backend.runtime.reuses_encodings = False
    generation = run(backend, "describe", [sample_image()], "x", budget=70, options=FORCED).generation
    runs = backend.run_budgets(Ask("ocr", (ImageInput.from_pixels(sample_image()),)), [70, 140], FORCED)
    assert generation.cache is None and generation.image_tokens == 63
    assert [answer.generation.image_tokens for answer in runs] == [63, 130]


def test_running_out_of_memory_empties_the_caches(backend, monkeypatch):
    from tools.errors import OutOfMemory

    run(backend, "describe", [sample_image()], "x", budget=70, options=FORCED).generation
    assert len(backend.runtime.vision_cache) and len(backend.runtime.prefix_cache)

    def exhausted(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(backend.runtime.model, "generate", exhausted)
    with pytest.raises(OutOfMemory):
        run(backend, "describe", [sample_image()], "y", budget=70, options=FORCED).generation
    assert not len(backend.runtime.vision_cache) and not len(backend.runtime.prefix_cache)
