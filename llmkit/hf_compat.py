"""The few places where llmkit relies on transformers / accelerate internals, fenced in one module.

Each function says which internal it touches and why no public API does the job. tests/test_hf_compat.py
checks every one against the installed versions, so an upgrade that moves them fails loudly in one place.
"""

from __future__ import annotations

import inspect
import os
from typing import Any

# accelerate reads the mixed precision of `accelerate launch` (and of an Accelerate config) from this variable.
MIXED_PRECISION_ENV = "ACCELERATE_MIXED_PRECISION"


def set_launch_precision(precision: str) -> str:
    """Make accelerate use llmkit's precision; returns what `accelerate launch` had asked for ("no" if nothing).

    TrainingArguments(bf16=/fp16=) decide the Trainer's autocast, but an Accelerate config's mixed_precision
    reaches the Accelerator through this environment variable and would silently win."""
    launched = os.environ.get(MIXED_PRECISION_ENV, "no")
    os.environ[MIXED_PRECISION_ENV] = {"bf16": "bf16", "fp16": "fp16"}.get(precision, "no")
    return launched


def use_one_gpu(args: Any) -> None:
    """One process that sees several GPUs trains on one (`TrainingArguments._n_gpu`, no public setter).

    Otherwise the Trainer wraps the model in nn.DataParallel: slower than one process per GPU, and it would
    run the masked-positions head on replicas that share one head."""
    args._n_gpu = 1


def train_batch_size(trainer: Any) -> int:
    """The per-device batch the Trainer is using now (`Trainer._train_batch_size`: auto_find_batch_size lowers
    it; TrainingArguments keep the asked one)."""
    return getattr(trainer, "_train_batch_size", None) or trainer.args.train_batch_size


def metric_key_prefix(args: tuple, kwargs: dict[str, Any]) -> str:
    """The `metric_key_prefix` a `Trainer.evaluation_loop` override was called with, positionally or by name."""
    from transformers import Trainer

    signature = inspect.signature(Trainer.evaluation_loop)
    bound = signature.bind_partial(None, *args, **kwargs)
    return bound.arguments.get("metric_key_prefix", signature.parameters["metric_key_prefix"].default)
