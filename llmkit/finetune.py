"""`llmkit finetune`: fine-tune a sequence classifier (single-label, multi-label) or regressor on labeled texts
(token classification: `llmkit.tagging`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from llmkit import config as config_lib
from llmkit import metrics, modeling, outputs
from llmkit.config import RunConfig
from llmkit.console import log
from llmkit.data import labeled, tagged
from llmkit.data.labeled import Labeled
from llmkit.supervised import RESUMABLE_CHANGES, check_settings, placement, shared_trainer

USAGE = """\
from transformers import pipeline

classify = pipeline("text-classification", model="{path}")
print(classify({example!r}))
"""

HF_PROBLEM_TYPES = {"single_label": "single_label_classification", "multi_label": "multi_label_classification",
                    "regression": "regression"}


@outputs.holds_output_dir  # one run at a time in an output directory
def run(cfg: RunConfig, resume: bool = False, overwrite: bool = False, *, callbacks: Sequence[Any] = (),
        trainer_class: type | None = None) -> dict[str, Any]:
    """Fine-tune per `cfg`; returns the final metrics. Writes the run directory described in DESIGN.md.
    `callbacks` (`TrainerCallback`s) join the run's own; a `training.SeededTrainer` subclass builds the trainer."""
    # 1. validate everything cheap before loading anything
    check_settings(cfg, trainer_class)
    if tagged.is_token_task(cfg):  # tags per word: llmkit.tagging, on the same shared steps
        from llmkit import tagging

        return tagging.run(cfg, resume, overwrite, callbacks=callbacks, trainer_class=trainer_class)
    run_dir, finished = outputs.check_run_dir(cfg, resume, overwrite, RESUMABLE_CHANGES, log)
    if finished is not None:
        return finished
    labeled.check_sources(cfg.data)
    modeling.check_model(cfg)

    # 2. data: labeled train and eval sets, labels checked (all before any model is loaded or anything written)
    train, held_out, problem, names, metric = labeled_data(cfg)

    # 3. placement and precision (sets up the process group under accelerate/torchrun)
    from llmkit import training

    precision, args, attention = placement(cfg, run_dir, metric)

    # 4. tokenizer and model: the encoder of the checkpoint plus a fresh classification head
    tokenizer, model = classifier(cfg, problem, names, attention)

    # 5. features: tokenized and truncated, not padded (each batch is padded to its longest text)
    with args.main_process_first(desc="tokenization"):  # the others load what the main process cached
        train_features, eval_features = features(cfg, tokenizer, train, held_out, problem, names)

    # 6. trainer: dynamic padding, length-grouped batches, evaluation and best-model selection by `metric`
    trainer, guard, effective_batch = make_trainer(cfg, args, model, tokenizer, train_features, eval_features,
                                                   problem, names, metric, callbacks, trainer_class)

    # 7. train (Ctrl-C / SIGTERM save a checkpoint; a non-finite loss stops without saving)
    result = training.train(trainer, guard, run_dir, config_lib.dump(cfg))

    # 8. save the (best) model, predict the evaluation set with it as `llmkit predict` would, and publish
    staging = outputs.stage_model(run_dir, trainer, tokenizer)
    if staging is None:  # not the main process
        return {}
    summary = evaluate_saved(staging, held_out, problem, names, str(args.device), precision,
                             args.per_device_eval_batch_size)
    summary.update(training_summary(result.metrics, trainer, effective_batch, precision, problem, metric, train,
                                    held_out))
    save(run_dir, staging, trainer, cfg, summary, train.source, modeling.describe(model))
    return summary


def labeled_data(cfg: RunConfig) -> tuple[Labeled, Labeled, str, list[str], str]:
    """(training set, evaluation set, problem type, label names, the metric that picks the best model), logged."""
    train, held_out, problem, names = labeled.labeled_data(cfg)
    metric = metrics.check_metric(cfg.finetune.metric or ("mse" if problem == "regression" else "f1_macro"),
                                  problem, len(names))
    log(f"data: {len(train.texts):,} training and {len(held_out.texts):,} evaluation examples from {train.source}; "
        f"{labeled.describe_labels(train.labels, problem, names)}")
    return train, held_out, problem, names, metric


def features(cfg: RunConfig, tokenizer: Any, train: Labeled, held_out: Labeled, problem: str,
             names: Sequence[str]) -> tuple[Any, Any]:
    """The training and evaluation features (tokenized, truncated, not padded), described in the log."""
    train_features = labeled.features(tokenizer, train, labeled.encode_labels(train.labels, problem, names), cfg.data)
    eval_features = labeled.features(tokenizer, held_out, labeled.encode_labels(held_out.labels, problem, names),
                                     cfg.data)
    lengths = np.array([len(f["input_ids"]) for f in train_features])
    log(f"features: {len(train_features):,} training examples, {lengths.mean():.0f} tokens on average "
        f"({int((lengths >= cfg.data.max_seq_length).sum()):,} truncated to {cfg.data.max_seq_length})")
    return train_features, eval_features


# ---------------------------------------------------------------- model and trainer


def classifier(cfg: RunConfig, problem: str, names: Sequence[str], attention: str) -> tuple[Any, Any]:
    """(tokenizer, AutoModelForSequenceClassification) from any encoder checkpoint; says which weights start fresh."""
    import transformers

    from llmkit import modeling

    transformers.set_seed(cfg.seed)
    name = cfg.model.name
    tokenizer = modeling.load_tokenizer(cfg.model.tokenizer or name, cfg.model.trust_remote_code)
    tokenizer.model_max_length = cfg.data.max_seq_length  # saved with the model: inference truncates the same way
    config = modeling.read_config(name, cfg.model.trust_remote_code)
    source = ", ".join(config.architectures or ["no architecture"])
    config.num_labels, config.problem_type = 1 if problem == "regression" else len(names), HF_PROBLEM_TYPES[problem]
    if problem != "regression":
        config.id2label, config.label2id = dict(enumerate(names)), {n: i for i, n in enumerate(names)}
    modeling.set_dropout(config, cfg.model.dropout)
    model, info, note = modeling.load_pretrained("AutoModelForSequenceClassification", name, config, attention,
                                                 cfg.model.trust_remote_code, ignore_mismatched_sizes=True)
    fresh = sorted(set(info.get("missing_keys", ())) | {k[0] if isinstance(k, tuple) else k
                                                         for k in info.get("mismatched_keys", ())})
    what = f"{config.num_labels} label{'s' if config.num_labels > 1 else ''}" if problem != "regression" else "regression"
    log(f"'{name}' ({source}) gets a fresh classification head for {what}: newly initialised {', '.join(fresh[:6])}"
        f"{' ...' if len(fresh) > 6 else ''}" if fresh else
        f"'{name}' ({source}) already has a classification head of this shape; training continues from it")
    if note:
        log(note)
    if tokenizer.pad_token is None:  # GPT-style tokenizers: padding is needed to batch texts of different lengths
        tokenizer.pad_token = tokenizer.eos_token
        model.config.pad_token_id = tokenizer.pad_token_id
    modeling.check_vocab(model, tokenizer, name, cfg.model.tokenizer or name)
    shape = modeling.describe(model)
    log(f"model: {shape['architecture']} {shape['layers']}x{shape['hidden_size']}, {shape['parameters'] / 1e6:.1f}M "
        f"parameters")
    return tokenizer, model


def make_trainer(cfg: RunConfig, args: Any, model: Any, tokenizer: Any, train_features: list, eval_features: list,
                 problem: str, names: Sequence[str], metric: str, callbacks: Sequence[Any] = (),
                 trainer_class: type | None = None) -> tuple[Any, Any, int]:
    """(SeededTrainer, its stop callback, examples per optimizer step)."""
    import transformers

    collator = transformers.DataCollatorWithPadding(tokenizer, pad_to_multiple_of=8 if args.device.type == "cuda"
                                                    else None)
    return shared_trainer(cfg, args, model, tokenizer, train_features, eval_features, collator,
                          metrics.for_trainer(problem, names), metric, callbacks=callbacks,
                          trainer_class=trainer_class)


# ---------------------------------------------------------------- results


def evaluate_saved(staging: Path, held_out: Labeled, problem: str, names: Sequence[str], device: str,
                   precision: str, batch_size: int) -> dict[str, Any]:
    """Metrics (with the per-class report), the model's own loss and predictions.csv of the saved model on the
    evaluation set, computed as `llmkit predict` would run it."""
    from llmkit import inference

    loaded = inference.load(staging, "text-classification", device, precision)
    logits = inference.classify(loaded, held_out.texts, held_out.pairs, batch_size)
    references = np.asarray(labeled.encode_labels(held_out.labels, problem, names))
    summary = {**metrics.from_logits(problem, logits, references, names, report=True),
               "eval_loss": eval_loss(problem, logits, references)}
    write_predictions(staging, held_out, problem, logits, names, summary.get("confusion_matrix"))
    return summary


def eval_loss(problem: str, logits: np.ndarray, references: np.ndarray) -> float:
    """The model's own loss on the evaluation set: cross-entropy, binary cross-entropy or mean squared error."""
    import torch
    import torch.nn.functional as F

    x, y = torch.from_numpy(logits).double(), torch.from_numpy(references)
    if problem == "regression":
        return float(F.mse_loss(x[:, 0], y.double()))
    if problem == "multi_label":
        return float(F.binary_cross_entropy_with_logits(x, y.double()))
    return float(F.cross_entropy(x, y.long()))


def training_summary(train: dict[str, Any], trainer: Any, effective_batch: int, precision: str, problem: str,
                     metric: str, train_set: Labeled, held_out: Labeled) -> dict[str, Any]:
    state = trainer.state
    return {
        "train_loss": train.get("train_loss"),
        "best_metric": {"metric": f"eval_{metric}", "value": state.best_metric,
                        "checkpoint": state.best_model_checkpoint} if state.best_metric is not None else None,
        "steps": state.global_step,
        "epochs": round(state.epoch or 0.0, 4),
        "train_examples": len(train_set.texts),
        "eval_examples": len(held_out.texts),
        "train_runtime_s": train.get("train_runtime"),
        "train_samples_per_second": train.get("train_samples_per_second"),
        "effective_batch_size": effective_batch,
        "processes": trainer.args.world_size,
        "precision": precision,
        "problem_type": problem,
    }


def write_predictions(staging: Path, held_out: Labeled, problem: str, logits: np.ndarray, names: Sequence[str],
                      confusion: list[list[int]] | None) -> None:
    """predictions.csv (text, [text_pair], gold, label, score per evaluation example) and, for single-label,
    confusion_matrix.png."""
    from llmkit import inference

    records = []
    for result, text, pair, gold in zip(inference.interpret(problem, logits, names), held_out.texts,
                                        held_out.pairs or [None] * len(held_out.texts), held_out.labels):
        gold = ";".join(gold) if problem == "multi_label" else gold
        records.append({"text": text, **({"text_pair": pair} if pair is not None else {}), "gold": gold, **result})
    outputs.write_predictions(staging / "predictions.csv", records)
    if confusion is not None:
        outputs.confusion_plot(np.asarray(confusion), list(names), staging / "confusion_matrix.png",
                               "Evaluation set: true (rows) vs predicted (columns)")


def save(run_dir: outputs.RunDir, staging: Path, trainer: Any, cfg: RunConfig, summary: dict[str, Any],
         source: str, shape: dict[str, Any]) -> None:
    problem = summary["problem_type"]
    headline = {k: summary[k] for k in metrics.names(problem, len(summary.get("labels") or [])) if k in summary}
    shown = ", ".join(f"{k} {v:.4f}" for k, v in headline.items())
    kind = {"single_label": "text classifier", "multi_label": "multi-label text classifier",
            "regression": "text regressor"}[problem]
    labels = summary.get("labels") or []
    outputs.write_final(run_dir, staging, trainer, cfg, summary, "Fine-tuning", card=dict(
        title=f"{Path(cfg.output_dir).name}: {kind}",
        summary=(f"A {shape['architecture']} fine-tuned from `{cfg.model.name}` by `llmkit finetune`"
                 + (f" to predict {len(labels)} labels: {', '.join(labels[:20])}{', ...' if len(labels) > 20 else ''}"
                    if labels else "") + f". On the evaluation set: {shown}."),
        data=(f"{source}; {summary['train_examples']:,} training and {summary['eval_examples']:,} evaluation examples, "
              f"truncated to {cfg.data.max_seq_length} tokens; {summary['steps']:,} steps of "
              f"{summary['effective_batch_size']} examples. Evaluation-set predictions are in `predictions.csv`."),
        model={**shape, "problem type": problem, "precision": summary["precision"],
               "processes": summary["processes"], "effective batch size": summary["effective_batch_size"]},
        usage=USAGE.format(path=Path(cfg.output_dir).resolve(), example="This is an example text."),
        base_model=cfg.model.name, pipeline_tag="text-classification", datasets=cfg.data.train))
    log(f"saved to {run_dir.path}: {shown}")
