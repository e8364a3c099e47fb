"""Low-precision optimizer state: moments stored in bfloat16, updated in float32.

``state_dtype=torch.bfloat16`` halves the memory of every state buffer (Adam: 8 of the
16 bytes per parameter) and the traffic of every step. The rule itself still runs in the
parameter's precision: each buffer is widened, updated, and narrowed back with
**stochastic rounding**, so an increment smaller than bfloat16's resolution (8 bits of
mantissa; ``v <- 0.999 v + 0.001 g^2`` changes ``v`` by 0.1%) is kept on average instead of
being rounded away at every step, as round-to-nearest would.

The random bits come from a hash of (element index, seed), not from a random generator:
the rounding is the same on every path (eager, compiled) and after a resume, and it leaves
torch's random state, which the user's data pipeline relies on, untouched.

Example:
    >>> opt = steepest.AdamW(model.parameters(), lr=1e-3, state_dtype=torch.bfloat16)
"""

from __future__ import annotations

import torch
from torch import Tensor

#: Dtypes ``state_dtype`` accepts besides the parameter's own.
LOW_PRECISION_STATE = (torch.bfloat16,)

_MASK32 = 0xFFFFFFFF
# 0x45D9F3B: the multiplier of a well-mixing 32-bit integer hash; below 2**27, so that
# a 32-bit value times it stays inside int64 and the arithmetic is exact everywhere.
_MIX = 0x45D9F3B
_SEED_MIX = 0x9E3779B  # spreads consecutive seeds far apart (below 2**28, same reason)


def random_bits(shape: torch.Size, seed: Tensor | int, device: torch.device) -> Tensor:
    """16 pseudo-random bits per element (int64), a pure function of (position, seed)."""
    index = torch.arange(shape.numel(), device=device, dtype=torch.int64).view(shape)
    h = (index + seed * _SEED_MIX) & _MASK32
    h = ((h ^ (h >> 16)) * _MIX) & _MASK32
    h = ((h ^ (h >> 16)) * _MIX) & _MASK32
    return (h ^ (h >> 16)) & 0xFFFF


def stochastic_round_(target: Tensor, value: Tensor, seed: Tensor | int) -> Tensor:
    """``target <- value`` rounded to bfloat16 up or down with probability by proximity.

    A float32's top 16 bits are its bfloat16; adding 16 random bits below them before
    truncating rounds the magnitude up with probability (remainder / 2**16): unbiased.
    Infinities stay infinite and NaNs stay NaN.

    Example:
        >>> m = torch.zeros(3, dtype=torch.bfloat16)
        >>> _ = stochastic_round_(m, torch.tensor([1.0, 1.001, -2.5]), seed=0)
    """
    bits = value.float().view(torch.int32).to(torch.int64)
    rounded = (bits + random_bits(value.shape, seed, value.device)) & ~0xFFFF
    return target.copy_(rounded.to(torch.int32).view(torch.float32))
