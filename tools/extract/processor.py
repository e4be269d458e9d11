"""The transformers logits processor that keeps generation inside a schema's grammar.

llguidance ships no transformers processor, so this is ours, on ``llguidance.numpy`` (its
``llguidance.torch`` module compiles a kernel with ``torch.compile`` at import, which costs
seconds on the first call). Each step: feed every row's matcher the token the row took,
have it write the bitmask of tokens allowed next, and set every other logit to -inf. A matcher
whose grammar is complete allows only the stop tokens, so generation ends there instead of
repeating the closing brace.

It also keeps, for each token a row took, the probability the model gave that token among
the tokens the schema allowed at that step (the masked logits, softmaxed): what a field's
confidence is made of.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from transformers import LogitsProcessor


def apply_bitmask_(scores: torch.Tensor, bitmask: torch.Tensor) -> None:
    """In place: -inf where the bitmask disallows. Bit j of int32 word w allows token 32*w + j;
    tokens past the bitmask (a model head wider than the tokenizer) are disallowed.

    On a CPU, numpy unpacks the bits (a third faster than shifting in torch at 262k tokens); on a
    GPU, the 32 KB of words travel and are unpacked there, rather than a bool per token.
    """
    batch, vocab = scores.shape
    if scores.device.type == "cpu":
        bits = np.unpackbits(bitmask.numpy().astype("<i4", copy=False).view(np.uint8), axis=-1, bitorder="little")
        disallowed = torch.from_numpy(bits[:, :vocab] == 0)
    else:
        words = bitmask.to(scores.device)
        shifts = torch.arange(32, dtype=torch.int32, device=scores.device)
        disallowed = (((words.unsqueeze(-1) >> shifts) & 1) == 0).view(batch, -1)[:, :vocab]
    if disallowed.shape[1] < vocab:
        rest = torch.ones(batch, vocab - disallowed.shape[1], dtype=torch.bool, device=disallowed.device)
        disallowed = torch.cat([disallowed, rest], dim=1)
    scores.masked_fill_(disallowed, float("-inf"))


class SchemaConstraint(LogitsProcessor):
    """One ``generate`` call's constraint: a copy of the schema's matcher per row. Use once."""

    def __init__(self, template: Any, vocab_size: int) -> None:
        self.template = template
        self.vocab_size = vocab_size
        self.matchers: list[Any] | None = None
        #: per row, (token, probability among the allowed tokens) of every token it took so far
        self.taken: list[list[tuple[int, float]]] = []
        self._scores: torch.Tensor | None = None
        self._norm: torch.Tensor | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        import llguidance.numpy as lln

        batch = input_ids.shape[0]
        if self.matchers is None:
            # The first step: nothing generated yet, so nothing to feed.
            self.matchers = [self.template.deep_copy() for _ in range(batch)]
            self.taken = [[] for _ in range(batch)]
            self.bitmask_np = lln.allocate_token_bitmask(batch, self.vocab_size)
            self.bitmask = torch.from_numpy(self.bitmask_np)  # the same memory
        else:
            last = input_ids[:, -1].tolist()
            for row, (matcher, token) in enumerate(zip(self.matchers, last)):
                if matcher.is_stopped():
                    continue  # finished: a batch pads it, and the pads are no answer of ours
                self.taken[row].append((token, self.probability(row, token)))
                if not matcher.consume_token(token):
                    raise RuntimeError(f"the schema's grammar refused token {token}: {matcher.get_error()[:200]}")
        for row, matcher in enumerate(self.matchers):
            lln.fill_next_token_bitmask(matcher, self.bitmask_np, row)
        apply_bitmask_(scores, self.bitmask)
        # Kept for the next step, which learns which token was taken. The taken token was allowed,
        # so later processors (temperature, top-p) that make new tensors leave its score here intact.
        self._scores = scores
        self._norm = torch.logsumexp(scores.float(), dim=-1)
        return scores

    def probability(self, row: int, token: int) -> float:
        assert self._scores is not None and self._norm is not None
        return float(torch.exp(self._scores[row, token].float() - self._norm[row]))

    def probabilities(self, row: int = 0) -> list[tuple[int, float]]:
        """(token, probability among the allowed tokens) of each token row ``row`` took, but the last
        (its probability is known only to a next step, which a finished generation does not take)."""
        return list(self.taken[row]) if self.taken else []
