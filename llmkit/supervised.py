"""What every fine-tuning task shares (sequence classification in `llmkit.finetune`, token classification in
`llmkit.tagging`): the settings checks, the run's placement and arguments, and the trainer with llmkit's order,
dropout masks, callbacks and early stopping."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from llmkit import metrics, modeling, outputs
from llmkit.config import RunConfig
from llmkit.console import log
from llmkit.data import labeled
from llmkit.errors import ConfigError

# Settings that may differ when a run is resumed: they change neither the data nor the optimisation.
RESUMABLE_CHANGES = {"training.logging_steps", "training.save_total_limit", "training.dataloader_num_workers",
                     "training.per_device_eval_batch_size", "data.num_proc", "data.cache_dir",
                     "model.keep_freed_memory"}


# ---------------------------------------------------------------- settings


def check_settings(cfg: RunConfig, trainer_class: type | None = None) -> None:
    """Fine-tuning settings that contradict each other or are missing, found before anything is loaded."""
    if trainer_class is not None:
        from llmkit import training

        training.subclass(trainer_class, training.SeededTrainer)
    for key in ("metric_for_best_model", "greater_is_better"):
        if key in cfg.training:
            raise ConfigError(f"'training.{key}' is set by llmkit from finetune.metric; use --set finetune.metric=NAME "
                              f"instead.")
    if cfg.finetune.early_stopping_patience and not cfg.training.get("load_best_model_at_end"):
        raise ConfigError("finetune.early_stopping_patience needs training.load_best_model_at_end=true (early "
                          "stopping compares evaluations against the best one so far).")
    if not cfg.model.name:
        raise ConfigError("llmkit finetune needs a model to start from: pass --model NAME|PATH (an encoder checkpoint, "
                          "e.g. an llmkit pretrain run or bert-base-uncased).")
    if not cfg.data.train:
        raise ConfigError("llmkit finetune needs labeled training data: pass --data FILE (CSV, TSV, JSON Lines, JSON "
                          "or parquet with a text and a label column) or a `datasets` name.")
    if cfg.data.eval_split and not cfg.data.eval and any(labeled.is_local(source) for source in cfg.data.train):
        raise ConfigError(f"data.eval_split '{cfg.data.eval_split}' names a split of a `datasets` name, but --data is a "
                          f"local file or folder ({cfg.data.train[0]}), which has one split only: pass the evaluation "
                          f"file with --eval-data instead.")


def placement(cfg: RunConfig, run_dir: outputs.RunDir, metric: str) -> tuple[str, Any, str]:
    """(precision, TrainingArguments, attention) of a fine-tuning run, logged with their reasons. Building the
    arguments sets up the process group under accelerate launch/torchrun."""
    from llmkit import devices, training

    precision, why = devices.precision(cfg.precision)
    args = training.training_arguments(cfg, run_dir.checkpoints, precision, **selection_arguments(cfg, metric))
    attention, reason = modeling.resolve_attention(cfg.model.attn_implementation, args.device.type,
                                                   modeling.model_type(cfg))
    log(f"precision: {precision} ({why}); attention: {attention} ({reason})")
    return precision, args, attention


def selection_arguments(cfg: RunConfig, metric: str) -> dict[str, Any]:
    """TrainingArguments that keep the best model by `metric`; checkpoints follow step-wise evaluations."""
    out: dict[str, Any] = {}
    if cfg.training.get("load_best_model_at_end"):
        out["metric_for_best_model"] = metric
        out["greater_is_better"] = metric not in metrics.LOWER_IS_BETTER
    if cfg.training.get("eval_strategy") == "steps" and cfg.training.get("save_strategy") == "epoch":
        # the best model can only be kept if a checkpoint is saved at each evaluation
        out["save_strategy"] = "steps"
        out["save_steps"] = cfg.training.get("eval_steps")
    return out


# ---------------------------------------------------------------- the trainer


def shared_trainer(cfg: RunConfig, args: Any, model: Any, tokenizer: Any, train_features: Any, eval_features: Any,
                   collator: Any, compute_metrics: Any, metric: str, unit: str = "examples",
                   callbacks: Sequence[Any] = (), trainer_class: type | None = None) -> tuple[Any, Any, int]:
    """The trainer of every fine-tuning task: `trainer_class` (a `SeededTrainer`) with llmkit's sample order,
    dropout masks, log and stop callbacks and early stopping; (trainer, its stop callback, `unit`s per step)."""
    import transformers

    from llmkit import training

    guard = training.StopCallback()
    own = [training.LogCallback(), guard]
    if cfg.finetune.early_stopping_patience:
        own.append(transformers.EarlyStoppingCallback(cfg.finetune.early_stopping_patience))
    trainer = training.subclass(trainer_class, training.SeededTrainer)(
        model=model, args=args, data_collator=collator, train_dataset=train_features, eval_dataset=eval_features,
        processing_class=tokenizer, compute_metrics=compute_metrics, callbacks=[*own, *callbacks],
        cheap_dropout=cfg.model.cheap_dropout, group_window=cfg.finetune.group_window,
        shuffle_batches=cfg.finetune.shuffle_batches)
    trainer.remove_callback(transformers.trainer_callback.PrinterCallback)
    # Classification heads (sequence and token) take **kwargs but ignore num_items_in_batch and return a
    # per-batch mean; told otherwise, the Trainer would scale that mean by the process count and skip the
    # accumulation division.
    trainer.model_accepts_loss_kwargs = False
    effective_batch = training.effective_batch_size(args)
    log(f"batch: {args.per_device_train_batch_size} per device x {args.gradient_accumulation_steps} accumulation x "
        f"{args.world_size} process(es) = {effective_batch} {unit} per step; best model by eval {metric}")
    return trainer, guard, effective_batch
