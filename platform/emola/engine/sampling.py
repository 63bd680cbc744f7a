"""Next-token choice for a decode batch whose rows each have their own decoding settings.

Every row carries its temperature, top-p and seed. Greedy rows (temperature 0) take the
argmax. Sampled rows apply the temperature, keep the smallest set of most probable tokens
whose mass reaches top-p (as transformers' ``TopPLogitsWarper`` does), and draw with the
exponential race (``argmax(log p - log E)``, ``E ~ Exp(1)``), which is a draw from the
kept distribution.

The noise is not drawn from a global generator: it is a hash of (the row's seed, the index
of the token in its answer, the vocabulary id). So a request's output depends only on its
own prompt and settings, never on which other requests share its batch or on the order
they arrived in; a seed repeats its answer on any replica.
"""

from __future__ import annotations

import torch

_MASK = 0xFFFFFFFF


def uniform_noise(seeds: torch.Tensor, steps: torch.Tensor, vocab: int) -> torch.Tensor:
    """``(k, vocab)`` numbers in (0, 1), a pure function of ``seeds`` ``(k,)``, ``steps`` ``(k,)`` and the column.

    A 32-bit integer hash (multiply-xorshift rounds) computed in int64 so no product
    overflows: every factor is below 2^31 and every operand below 2^32.
    """
    columns = torch.arange(vocab, device=seeds.device, dtype=torch.int64)
    x = ((seeds.to(torch.int64)[:, None] & 0x7FFFFFFF) * 0x27D4EB2F
         + (steps.to(torch.int64)[:, None] & 0x7FFFFFFF) * 0x165667B1 + columns[None, :] * 0x3C6EF372) & _MASK
    for multiplier in (0x7FEB352D, 0x2C1B3C6D, 0x297A2D39):
        x = x ^ (x >> 16)
        x = (x * multiplier) & _MASK
    x = x ^ (x >> 15)
    return ((x >> 8).to(torch.float32) + 0.5) / float(1 << 24)


def top_p_keep(probs: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Boolean ``(k, V)``: the fewest most probable tokens whose mass reaches ``top_p`` ``(k,)`` (at least one)."""
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    before = sorted_probs.cumsum(-1) - sorted_probs     # mass of the tokens ranked above each one
    keep_sorted = before < top_p[:, None]
    keep_sorted[:, 0] = True
    return torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)


def _draw(logp: torch.Tensor, top_p: torch.Tensor, seeds: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
    """The exponential race among each row's top-p kept tokens: ``logp`` ``(k, V)`` log-probabilities after
    the temperature; ``top_p``, ``seeds``, ``steps`` ``(k,)``."""
    race = logp - torch.log(-torch.log(uniform_noise(seeds, steps, logp.shape[-1])))
    return race.masked_fill(~top_p_keep(logp.exp(), top_p), float("-inf")).argmax(-1)


def next_tokens(logits: torch.Tensor, temperature: torch.Tensor, top_p: torch.Tensor, seeds: torch.Tensor,
                steps: torch.Tensor, *, branchless: bool = False) -> torch.Tensor:
    """One token id per row of ``logits`` ``(b, V)`` (float32).

    ``temperature``, ``top_p`` ``(b,)`` float32; ``seeds``, ``steps`` ``(b,)`` int64 (``steps``:
    how many tokens the row has generated so far). Temperature 0 is greedy.

    ``branchless``: every row goes through the draw and the greedy rows are chosen after, instead of
    asking the device which rows sample and which need the top-p sort: no host synchronisation (the
    engine's next step can be launched before this step's tokens are read), more arithmetic. The
    tokens are the same either way.
    """
    out = logits.argmax(-1)
    sampled = temperature > 0
    if branchless:
        logp = torch.log_softmax(logits / torch.where(sampled, temperature, 1.0)[:, None], dim=-1)
        return torch.where(sampled, _draw(logp, top_p, seeds, steps), out)
    if bool(sampled.any()):
        rows = sampled.nonzero().squeeze(-1)
        logp = torch.log_softmax(logits[rows] / temperature[rows, None], dim=-1)
        # Where the most probable token alone holds top_p of the mass, the kept set is that token: the draw is
        # the argmax (the published temperature 0.01 makes this almost every row). Only the others sort and draw.
        open_rows = logp.max(-1).values < torch.log(top_p[rows])
        if bool(open_rows.any()):
            rows, logp = rows[open_rows], logp[open_rows]
            out[rows] = _draw(logp, top_p[rows], seeds[rows], steps[rows])
    return out
