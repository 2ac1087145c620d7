"""Inverted dropout on the adapter input, drawn cheaply: which entries are zeroed, kept for backward.

PEFT's LoRA applies ``nn.Dropout(p)`` to the layer input before ``A``: a fresh float tensor of Bernoulli(1 - p)
draws, a division by ``1 - p`` and a product, all over the full ``(..., d_in)`` input, and it keeps both the mask
and the dropped input alive until backward. PRoLoRA's fused path (`rebuild.prolora_delta`) computes the same
``(alpha/r) B A dropout(x)`` from two facts only:

* *which* entries are dropped (`sample_dropped`) — i.i.d. Bernoulli(p) over the entries of ``x``, as ``nn.Dropout``;
* the factor ``1 / (1 - p)``, which is a scalar and so moves onto the rank-r side with the LoRA scale.

On CPU, torch draws one random number per entry serially, which for a small model costs as much as a matmul. The
dropped entries of an i.i.d. Bernoulli(p) sequence are equally well described by the gaps between them, which are
i.i.d. Geometric(p) (``P(gap = k) = (1 - p)^(k - 1) p``, ``k >= 1``); drawing the gaps needs about ``p * numel``
random numbers instead of ``numel`` (20 times fewer at the usual p = 0.05) and gives the positions as a sorted flat
index, which also is what backward keeps (``8 p`` bytes per entry instead of LoRA's float mask and dropped copy).
On other devices the draw is one fused Bernoulli kernel already, so there the result is a boolean mask.
"""

from __future__ import annotations

import math

import torch


def sample_dropped(shape: torch.Size | tuple[int, ...], p: float, device: torch.device) -> torch.Tensor:
    """The entries of a ``shape`` tensor that dropout with drop probability ``p`` zeroes, each independently with
    probability ``p``, drawn from torch's default generator of ``device`` (so ``torch.manual_seed`` and a
    checkpoint's RNG state fix them).

    CPU: sorted positions in the flattened tensor, int64 ``(k,)``. Elsewhere: a boolean mask of ``shape``.
    """
    if not 0.0 < p < 1.0:
        raise ValueError(f"dropout probability must be in (0, 1), got {p}")
    device = torch.device(device)
    if device.type != "cpu":
        return torch.empty(shape, dtype=torch.bool, device=device).bernoulli_(p)
    numel = math.prod(shape)
    if numel == 0:
        return torch.empty(0, dtype=torch.long)
    batch = _gap_batch(numel, p)
    ends = [torch.empty(batch, dtype=torch.float64).geometric_(p).cumsum_(0)]  # 1-based positions of the drops
    while ends[-1][-1].item() < numel:
        ends.append(torch.empty(batch, dtype=torch.float64).geometric_(p).cumsum_(0).add_(ends[-1][-1]))
    positions = torch.cat(ends) if len(ends) > 1 else ends[0]
    return positions[positions <= numel].long().sub_(1)


def _gap_batch(numel: int, p: float) -> int:
    """Gaps drawn at once: the mean number of drops plus six standard deviations, so a second batch is needed
    about once in 10^9 draws (it is then drawn, continuing the positions; the result is the same process)."""
    return int(numel * p + 6 * math.sqrt(numel * p * (1 - p)) + 16)


def zero_dropped_(t: torch.Tensor, dropped: torch.Tensor) -> torch.Tensor:
    """Zero, in place, the entries of the contiguous tensor ``t`` that `sample_dropped` chose; returns ``t``."""
    if dropped.dtype == torch.bool:
        return t.masked_fill_(dropped, 0)
    t.view(-1).index_fill_(0, dropped, 0)
    return t


def apply_dropped(x: torch.Tensor, dropped: torch.Tensor) -> torch.Tensor:
    """A contiguous copy of ``x`` with the dropped entries zeroed (not rescaled: the caller folds ``1/(1-p)``)."""
    return zero_dropped_(x.clone(memory_format=torch.contiguous_format), dropped)
