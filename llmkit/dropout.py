"""Cheaper dropout masks on CPUs.

torch's CPU dropout draws a Bernoulli sample per element into a mask of the input's dtype, then multiplies: for
the small matrices of mini and small models that is about a quarter of a training step on a CPU. `dropout` here
draws 15 random bits per element (two elements per 31-bit draw of torch's generator) and keeps an element when
its bits are at least round(p * 32768): the drop probability is p rounded to a multiple of 1/32768 (0.1 ->
0.1000061), kept elements are scaled by 1 / (1 - that probability), so the expected output is the input, as with
torch's. The bits come from torch's default generator: seeded by the Trainer, saved in its checkpoints and
restored on resume, like torch's own dropout; the gradient is the kept mask times the scale.

`CheapDropout()` is a torch function mode: inside it, every `torch.nn.functional.dropout` call in training on a
CPU tensor (the models' `nn.Dropout` modules and the attention-probability dropout of their attention functions,
in every family) uses these masks; CUDA tensors, where dropout is one fused kernel already, and every other call
go through unchanged.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

LEVELS = 1 << 15  # 15 random bits per element


def drop_probability(p: float) -> float:
    """The drop probability `dropout` applies for a requested p: p rounded to a multiple of 1/32768."""
    return round(p * LEVELS) / LEVELS


def dropout(x: torch.Tensor, p: float) -> torch.Tensor:
    """Training-mode dropout of `x` with 15-bit masks (see the module docstring)."""
    threshold = round(p * LEVELS)
    if threshold <= 0:
        return x.clone()
    if threshold >= LEVELS:
        return x * 0
    n = x.numel()
    # random_() fills int32 with 31 random bits (one 32-bit draw each); as two int16 halves, the low one has 16
    # random bits and the high one 15 with a zero sign bit: 15 bits from each.
    halves = torch.empty((n + 1) // 2, dtype=torch.int32, device=x.device).random_().view(torch.int16)
    keep = (halves[:n].view(x.shape) & (LEVELS - 1)) >= threshold
    return (x * keep).mul_(LEVELS / (LEVELS - threshold))


def _dropout_args(input: torch.Tensor, p: float = 0.5, training: bool = True, inplace: bool = False):
    return input, p, training, inplace


class CheapDropout(TorchFunctionMode):
    """Within this mode, `F.dropout` in training on CPU tensors uses `dropout`'s 15-bit masks."""

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func is F.dropout:
            x, p, training, inplace = _dropout_args(*args, **kwargs)
            if training and 0.0 < p < 1.0 and x.device.type == "cpu" and torch.is_floating_point(x):
                out = dropout(x, p)
                return x.copy_(out) if inplace else out
        return func(*args, **kwargs)
