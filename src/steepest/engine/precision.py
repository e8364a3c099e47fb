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

from typing import Any

import torch
from torch import Tensor

#: Dtypes ``state_dtype`` accepts besides the parameter's own.
LOW_PRECISION_STATE = (torch.bfloat16,)


def check_state_dtype(name: str, value: Any) -> torch.dtype | None:
    """``value`` is None (the parameter's dtype) or one of :data:`LOW_PRECISION_STATE`.

    A floating-point dtype that is not among them (``torch.float16``) is a ValueError: the
    right kind, an unsupported value; anything else (``"bf16"``, ``torch.int8``, which
    cannot hold moments at all) is a TypeError.
    """
    if value is None or (isinstance(value, torch.dtype) and value in LOW_PRECISION_STATE):
        return value
    error = ValueError if isinstance(value, torch.dtype) and value.is_floating_point else TypeError
    raise error(
        f"{name} must be None (the parameter's dtype) or one of "
        f"{', '.join(map(str, LOW_PRECISION_STATE))}, got {name}={value!r}"
    )


# 2**32 / golden ratio, as a signed 32-bit integer: frac(n * phi) is the most evenly spread
# sequence there is (a Weyl sequence), so consecutive elements, and one element over
# consecutive steps (seeds 1_000_003 apart), see well-spread rounding offsets.
_GOLDEN = 0x9E3779B9 - 2**32


def random_bits(shape: torch.Size, seed: Tensor | int, device: torch.device) -> Tensor:
    """16 pseudo-random bits per element (int32), a pure function of (position, seed).

    Integer arithmetic that wraps around modulo 2**32 (as torch's int32 ops and the compiled
    kernels do), so the bits are the same on every path.
    """
    index = torch.arange(shape.numel(), device=device, dtype=torch.int32).view(shape)
    return (((index + seed) * _GOLDEN) >> 16) & 0xFFFF


def stochastic_round_(target: Tensor, value: Tensor, seed: Tensor | int) -> Tensor:
    """``target <- value`` rounded to bfloat16 up or down with probability by proximity.

    A float32's top 16 bits are its bfloat16; adding 16 random bits below them before
    truncating rounds the magnitude up with probability (remainder / 2**16): unbiased.
    Infinities stay infinite and NaNs stay NaN.

    Example:
        >>> m = torch.zeros(3, dtype=torch.bfloat16)
        >>> _ = stochastic_round_(m, torch.tensor([1.0, 1.001, -2.5]), seed=0)
    """
    bits = value.float().view(torch.int32)
    rounded = (bits + random_bits(value.shape, seed, value.device)) & -0x10000
    return target.copy_(rounded.view(torch.float32))
