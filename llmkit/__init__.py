"""llmkit: masked-LM pretraining, classification fine-tuning and fill-mask on Hugging Face Transformers.

The recipes are also the Python API; they are imported lazily so `import llmkit` stays fast:

    from llmkit import pretrain, config
    metrics = pretrain.run(config.build("pretrain", "cpu-quick", sets=["training.max_steps=50"]))
    predictions = llmkit.fill_mask("runs/pretrain", ["The [MASK] returns a list."], top_k=3)
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_SUBMODULES = {"config", "data", "modeling", "training", "outputs", "metrics", "pretrain", "prepare", "finetune",
               "predict", "fillmask", "inference", "devices", "errors", "environment"}


def fill_mask(model: Any, texts: Any, top_k: int = 5, **kwargs: Any) -> list[dict[str, Any]]:
    """Masked-token predictions as plain data; see `llmkit.fillmask.fill_mask` (the `llmkit fill-mask` recipe)."""
    from llmkit.fillmask import fill_mask as run

    return run(model, texts, top_k=top_k, **kwargs)


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"llmkit.{name}")
    raise AttributeError(f"module 'llmkit' has no attribute '{name}'")
