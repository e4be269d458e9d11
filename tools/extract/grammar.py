"""A model's tokenizer as llguidance sees it, and each schema's compiled matcher, cached by schema hash.

Building llguidance's tokenizer takes from milliseconds (tiny vocabularies) to seconds (262k
tokens), so a runtime builds it once, on the first extraction. A schema's matcher (its lexer
built over this vocabulary) is made once per schema hash and copied for each generation: a copy
costs a fraction of a millisecond, the first build up to a few.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from ..errors import Unsupported
from .processor import SchemaConstraint
from .schema import Schema, limits

log = logging.getLogger("vlm_agent")

#: compiled schemas kept per tokenizer
CACHED_SCHEMAS = 64


class Grammars:
    """llguidance's tokenizer for one model, and the matchers of the schemas decoded on it."""

    def __init__(self, tokenizer: Any, vocab_size: int, stop_ids: Sequence[int]) -> None:
        import llguidance
        import llguidance.hf

        try:
            self.tokenizer = llguidance.hf.from_tokenizer(tokenizer, n_vocab=vocab_size, eos_token=list(stop_ids))
        except (ValueError, RuntimeError, TypeError) as exc:
            # e.g. a T5 tokenizer's Metaspace decoder: llguidance cannot map its tokens to bytes
            log.debug("llguidance cannot read the tokenizer: %s", exc)
            raise Unsupported(
                f"This model's tokenizer ({type(tokenizer).__name__}) is one the schema-constrained decoder cannot "
                "read, so this model cannot extract; use a Gemma 4, Qwen3-VL, PaliGemma or BLIP-2 (OPT) model.",
                param="task",
            ) from None
        self.vocab_size = vocab_size
        self._templates: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()
        #: matchers built (a schema's first use on this tokenizer), for tests and the benchmark
        self.compiled = 0

    def template(self, schema: Schema) -> Any:
        """The schema's matcher at its start, built on first use and kept by its hash; copy before use."""
        import llguidance

        with self._lock:
            found = self._templates.get(schema.hash)
            if found is not None:
                self._templates.move_to_end(schema.hash)
                return found
        matcher = llguidance.LLMatcher(self.tokenizer, schema.grammar, log_level=0, limits=limits())
        if matcher.is_error():
            raise Unsupported(f"The schema cannot be decoded on this model's tokenizer: {matcher.get_error()[:160]}.",
                              param="schema")
        with self._lock:
            self.compiled += 1
            self._templates[schema.hash] = matcher
            while len(self._templates) > CACHED_SCHEMAS:
                self._templates.popitem(last=False)
        return matcher

    def constraint(self, schema: Schema) -> SchemaConstraint:
        """A fresh logits processor for one ``generate`` call under ``schema``."""
        return SchemaConstraint(self.template(schema), self.vocab_size)

    def token_bytes(self, token: int) -> bytes:
        return bytes(self.tokenizer.decode_bytes([token]))
