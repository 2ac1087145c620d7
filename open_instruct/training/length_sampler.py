"""Length-grouped sampling for `--group_by_length`, in the manner of HF Trainer's LengthGroupedSampler.

Each epoch the examples are shuffled with a generator seeded by ``seed + epoch``, cut into megabatches of
``megabatch_mult × batch_size`` examples, and each megabatch is sorted by length, longest first; the megabatch
holding the longest example overall is moved to the front (its longest example first), so an out-of-memory error
shows on the first step rather than hours in. Consecutive batches therefore hold examples of similar length —
little padding — while which examples meet, and in what order the megabatches come, stays random.

The order is a pure function of (lengths, batch size, seed, epoch): every rank draws the same one, and a resumed
run that skips the batches it had consumed (``accelerator.skip_first_batches``) sees exactly the batches an
uninterrupted run would have seen.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler

MAX_MEGABATCH_MULT = 50  # HF's default: megabatches of at most 50 batches, and at least 4 megabatches


def megabatch_mult(num_examples: int, batch_size: int) -> int:
    return max(1, min(num_examples // (batch_size * 4), MAX_MEGABATCH_MULT))


def length_grouped_order(lengths: Sequence[int], batch_size: int, generator: torch.Generator) -> list[int]:
    """A permutation of ``range(len(lengths))`` whose consecutive `batch_size` slices have similar lengths."""
    mult = megabatch_mult(len(lengths), batch_size)
    size = mult * batch_size
    order = torch.randperm(len(lengths), generator=generator).tolist()
    megabatches = [sorted(order[i:i + size], key=lambda j: lengths[j], reverse=True)
                   for i in range(0, len(order), size)]
    longest = max(range(len(megabatches)), key=lambda k: lengths[megabatches[k][0]])
    megabatches[0][0], megabatches[longest][0] = megabatches[longest][0], megabatches[0][0]
    return [i for megabatch in megabatches for i in megabatch]


class LengthGroupedSampler(Sampler[int]):
    """Yields dataset indices grouped by length (see the module docstring); call `set_epoch` before each epoch."""

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int):
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(length_grouped_order(self.lengths, self.batch_size, generator))
