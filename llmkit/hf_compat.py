"""The few places where llmkit relies on transformers / accelerate / datasets internals, fenced in one module.

Each function says which internal it touches and why no public API does the job. tests/test_hf_compat.py
checks every one against the installed versions, so an upgrade that moves them fails loudly in one place.
No other module of llmkit names a private attribute of those libraries; `PRIVATE_NAMES` lists all it uses.
"""

from __future__ import annotations

import contextlib
import inspect
import os
from typing import Any

PRIVATE_NAMES = (  # every private name of another library used here, each with a canary in tests/test_hf_compat.py
    "transformers.Trainer._get_train_sampler", "transformers.Trainer._get_eval_sampler",
    "transformers.Trainer._save_checkpoint", "transformers.Trainer._prepare_inputs",
    "transformers.Trainer._train_batch_size", "transformers.TrainingArguments._n_gpu",
    "transformers.PreTrainedModel._no_split_modules", "transformers.PreTrainedModel._supports_sdpa",
    "transformers.PreTrainedModel._supports_flash_attn", "transformers.PreTrainedModel._supports_flex_attn",
    "datasets.Dataset._fingerprint",
)


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


def fsdp_per_layer_units(trainer: Any, units: Any) -> None:
    """Make an FSDP run wrap the model's own layer class, and reduce gradients in fp32.

    accelerate's TRANSFORMER_BASED_WRAP reads `fsdp_plugin.transformer_cls_names_to_wrap` when it prepares the
    model (accelerate/utils/fsdp_utils.py, `fsdp2_prepare_auto_wrap_policy`); unset, it takes all of
    `_no_split_modules`, embeddings included (split from the tied head), and a name written for one family
    (BertLayer) wraps nothing in the others. Unset, llmkit sets it to `units(model)` (`modeling.fsdp_units`).
    Mixed precision from accelerate reduces gradients in bf16/fp16 (`set_mixed_precision`: reduce_dtype = param_dtype); that
    policy becomes an fp32 reduction (sums over many ranks keep their bits; parameters still compute in bf16)."""
    plugin = getattr(trainer.accelerator.state, "fsdp_plugin", None)
    if not getattr(trainer, "is_fsdp_enabled", False) or plugin is None:
        return
    prepare = trainer.accelerator.prepare

    def prepare_per_layer(*objects: Any, **kwargs: Any) -> Any:
        import torch

        from llmkit.console import log

        for obj in objects:
            if isinstance(obj, torch.nn.Module) and plugin.transformer_cls_names_to_wrap is None:
                plugin.transformer_cls_names_to_wrap = units(obj)
                log(f"FSDP: one unit per {', '.join(plugin.transformer_cls_names_to_wrap)} (the model's layers)")
        policy = plugin.mixed_precision_policy
        if policy is not None and getattr(policy, "param_dtype", None) in (torch.bfloat16, torch.float16) and \
                getattr(policy, "reduce_dtype", None) == policy.param_dtype:
            plugin.mixed_precision_policy = type(policy)(**{**_policy_fields(policy), "reduce_dtype": torch.float32})
        return prepare(*objects, **kwargs)

    trainer.accelerator.prepare = prepare_per_layer


def _policy_fields(policy: Any) -> dict[str, Any]:
    import dataclasses

    return {f.name: getattr(policy, f.name) for f in dataclasses.fields(policy)}


def keep_tied_head_in_root_fsdp_group(trainer: Any) -> None:
    """Make an FSDP2 run of a masked LM prepare its model with the tied head in the root group.

    accelerate's `fsdp2_prepare_model` puts [input embeddings, output embeddings] in an FSDP group of their own
    when their weights are tied (accelerate/utils/fsdp_utils.py). A BERT/RoBERTa MLM head also registers the
    decoder's bias on the head itself (`cls.predictions.bias`, `lm_head.bias`), so the root group would take the
    same Parameter and the first forward fails ("Parameter ... is shared with a parameter already managed by
    another FSDP group"). While `accelerator.prepare` runs, the model's embedding getters are hidden: the
    embeddings and the whole head, with every tie, stay in the root group. Modules, parameters, state dict and
    `save_pretrained` are unchanged."""
    plugin = getattr(trainer.accelerator.state, "fsdp_plugin", None)
    if not getattr(trainer, "is_fsdp_enabled", False) or getattr(plugin, "fsdp_version", 1) != 2:
        return
    prepare = trainer.accelerator.prepare

    def prepare_with_tied_head(*objects: Any, **kwargs: Any) -> Any:
        import torch

        with contextlib.ExitStack() as stack:
            for obj in objects:
                if isinstance(obj, torch.nn.Module):
                    stack.enter_context(tied_head_in_root_fsdp_group(obj))
            return prepare(*objects, **kwargs)

    trainer.accelerator.prepare = prepare_with_tied_head


@contextlib.contextmanager
def tied_head_in_root_fsdp_group(model: Any):
    """See `keep_tied_head_in_root_fsdp_group`: hide the embedding getters of a model whose output embeddings
    share a parameter with another module, while accelerate prepares it for FSDP2."""
    if not head_shares_parameters(model):
        yield
        return
    model.get_input_embeddings = model.get_output_embeddings = lambda: None
    try:
        yield
    finally:
        del model.get_input_embeddings, model.get_output_embeddings


def head_shares_parameters(model: Any) -> bool:
    """Whether a parameter of the output embeddings (the decoder's bias) is also registered on another module
    than the input and output embeddings (the MLM head's own `bias`)."""
    get_in, get_out = getattr(model, "get_input_embeddings", None), getattr(model, "get_output_embeddings", None)
    inputs, outputs = (get_in() if get_in else None), (get_out() if get_out else None)
    if outputs is None:
        return False
    shared = {id(p) for p in outputs.parameters()}
    return any(id(p) in shared for module in model.modules() if module is not inputs and module is not outputs
               for p in module.parameters(recurse=False))


# ---------------------------------------------------------------- the Trainer's private steps


class TrainerHooks:
    """Put before `transformers.Trainer` in a subclass's bases: the Trainer's private steps llmkit changes, each
    forwarded to a public-named method that llmkit's trainers override.

    - `_get_train_sampler` -> `train_sampler(default, dataset)`: the Trainer takes no sampler argument, and
      `get_train_dataloader` would have to be copied whole to change only its sampler;
    - `_get_eval_sampler` -> `eval_sampler(default, dataset)`: the same for evaluation;
    - `_save_checkpoint` -> the `saving_checkpoint()` context around it: no callback sees a checkpoint write fail.
    """

    def _get_train_sampler(self, train_dataset=None):
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        return self.train_sampler(super()._get_train_sampler(train_dataset), dataset)

    def _get_eval_sampler(self, eval_dataset):
        return self.eval_sampler(super()._get_eval_sampler(eval_dataset), eval_dataset)

    def _save_checkpoint(self, model, trial):
        with self.saving_checkpoint():
            super()._save_checkpoint(model, trial)

    def train_sampler(self, default: Any, dataset: Any) -> Any:
        return default

    def eval_sampler(self, default: Any, dataset: Any) -> Any:
        return default

    def saving_checkpoint(self) -> Any:
        return contextlib.nullcontext()


def prepare_inputs(trainer: Any, inputs: dict[str, Any]) -> dict[str, Any]:
    """A batch moved to the trainer's device as its own steps move it (`Trainer._prepare_inputs`), for a
    `prediction_step` that does not call the Trainer's."""
    return trainer._prepare_inputs(inputs)


def attention_flags(model_class: Any) -> dict[str, bool]:
    """Which attention kernels a transformers model class supports: its `_supports_*` class flags (no public
    query answers it before a model is built)."""
    return {"flash": bool(getattr(model_class, "_supports_flash_attn", False)),
            "flex": bool(getattr(model_class, "_supports_flex_attn", False)),
            "sdpa": bool(getattr(model_class, "_supports_sdpa", False))}


def no_split_modules(model: Any) -> list[str]:
    """The layer classes a model says must not be split across devices (`_no_split_modules`)."""
    return list(getattr(model, "_no_split_modules", None) or [])


def fingerprint(table: Any) -> str:
    """The hash `datasets` keeps of a table's content and history (`Dataset._fingerprint`; the cache files are
    named by it): changes whenever the table does, read without hashing the rows again."""
    return table._fingerprint
