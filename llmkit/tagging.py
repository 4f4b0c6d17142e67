"""`llmkit finetune --task token-classification`: fine-tune a token classifier (named entities, tagging) on tagged
sentences. `finetune.run` hands token-classification runs to `run` here; the settings checks, run directory,
TrainingArguments, SeededTrainer (length-grouped batches), saving and model card are the shared ones.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from llmkit import config as config_lib
from llmkit import entities, metrics, modeling, outputs, supervised
from llmkit.config import RunConfig
from llmkit.console import log
from llmkit.data import tagged
from llmkit.data.tagged import Tagged
from llmkit.errors import ConfigError

USAGE = """\
from transformers import pipeline

tagger = pipeline("token-classification", model="{path}", aggregation_strategy="simple")
print(tagger({example!r}))
"""
PREDICTIONS = "predictions.jsonl"


def run(cfg: RunConfig, resume: bool = False, overwrite: bool = False, *, callbacks: Sequence[Any] = (),
        trainer_class: type | None = None) -> dict[str, Any]:
    """Fine-tune per `cfg`; returns the final metrics. Writes the run directory described in DESIGN.md (the
    evaluation predictions as predictions.jsonl: tags and entity spans per sentence). `callbacks` and
    `trainer_class` as for `finetune.run`."""
    # 1. validate everything cheap before loading anything
    stride = check_settings(cfg, trainer_class)
    run_dir, finished = outputs.check_run_dir(cfg, resume, overwrite, supervised.RESUMABLE_CHANGES, log)
    if finished is not None:
        return finished
    tagged.check_sources(cfg.data)
    modeling.check_model(cfg)

    # 2. data: tagged sentences, tags and scheme checked (all before any model is loaded or anything written)
    train, held_out, names, scheme = tagged.tagged_data(cfg)
    metric = metrics.check_metric(cfg.finetune.metric or "entity_f1", "tokens", len(names))
    log(f"data: {len(train):,} training and {len(held_out):,} evaluation sentences from {train.source}; "
        f"{tagged.describe(train, names, scheme)}")

    # 3. placement and precision (sets up the process group under accelerate/torchrun)
    from llmkit import training

    precision, args, attention = supervised.placement(cfg, run_dir, metric)

    # 4. tokenizer and model: the encoder of the checkpoint plus a fresh token classification head
    tokenizer, model = tagger(cfg, names, attention)

    # 5. features: word pieces in windows of at most max_seq_length (long sentences overlap, none is cut short)
    with args.main_process_first(desc="tokenization"):
        train_windows, eval_windows = features(cfg, tokenizer, train, held_out, names, stride)

    # 6. trainer: dynamic padding of inputs and labels, length-grouped batches, best model by entity F1
    trainer, guard, effective_batch = make_trainer(cfg, args, model, tokenizer, train_windows, eval_windows,
                                                   held_out, names, metric, callbacks, trainer_class)

    # 7. train (Ctrl-C / SIGTERM save a checkpoint; a non-finite loss stops without saving)
    result = training.train(trainer, guard, run_dir, config_lib.dump(cfg))

    # 8. save the (best) model, predict the evaluation set with it through `inference`, and publish
    staging = outputs.stage_model(run_dir, trainer, tokenizer)
    if staging is None:  # not the main process
        return {}
    summary = evaluate_saved(staging, held_out, eval_windows, names, str(args.device), precision,
                             args.per_device_eval_batch_size)
    summary.update(training_summary(result.metrics, trainer, effective_batch, precision, metric, train, train_windows,
                                    held_out, scheme))
    save(run_dir, staging, trainer, cfg, summary, train.source, modeling.describe(model), names)
    return summary


def features(cfg: RunConfig, tokenizer: Any, train: Tagged, held_out: Tagged, names: list[str],
             stride: int) -> tuple[tagged.Windows, tagged.Windows]:
    """The training and evaluation windows (word pieces, at most max_seq_length each), described in the log."""
    length = cfg.data.max_seq_length
    train_windows = tagged.windows(tokenizer, train.words, train.tags, names, length, stride,
                                   cfg.finetune.label_all_pieces)
    eval_windows = tagged.windows(tokenizer, held_out.words, held_out.tags, names, length, stride)
    pieces = np.array([len(f["input_ids"]) for f in train_windows.features])
    log(f"features: {len(pieces):,} training windows from {len(train):,} sentences, {pieces.mean():.0f} tokens on "
        f"average ({len(pieces) - len(train):,} extra windows for sentences over {length} tokens, overlapping by "
        f"{stride} tokens)")
    return train_windows, eval_windows


def training_summary(train_metrics: dict, trainer: Any, effective_batch: int, precision: str, metric: str,
                     train: Tagged, train_windows: tagged.Windows, held_out: Tagged, scheme: str) -> dict[str, Any]:
    """What metrics.json records of the training itself."""
    state = trainer.state
    return {
        "train_loss": train_metrics.get("train_loss"),
        "best_metric": {"metric": f"eval_{metric}", "value": state.best_metric,
                        "checkpoint": state.best_model_checkpoint} if state.best_metric is not None else None,
        "steps": state.global_step, "epochs": round(state.epoch or 0.0, 4), "train_examples": len(train),
        "train_windows": len(train_windows.features), "eval_examples": len(held_out),
        "train_runtime_s": train_metrics.get("train_runtime"),
        "train_samples_per_second": train_metrics.get("train_samples_per_second"),
        "effective_batch_size": effective_batch, "processes": trainer.args.world_size, "precision": precision,
        "problem_type": "token_classification", "tag_scheme": scheme}


def check_settings(cfg: RunConfig, trainer_class: type | None) -> int:
    """`supervised.check_settings`, seqeval (entity metrics: found missing now, not after training); the stride."""
    supervised.check_settings(cfg, trainer_class)
    if importlib.util.find_spec("seqeval") is None:
        raise ConfigError("Token classification scores entities with seqeval, which is not installed here: "
                          "pip install seqeval")
    return window_stride(cfg)


def window_stride(cfg: RunConfig) -> int:
    """The overlap of the windows of long sentences: as set (below half a window), else a quarter of it, <= 32."""
    length, stride = cfg.data.max_seq_length, cfg.finetune.stride
    if stride is None:
        return min(32, length // 4)
    if stride * 2 > length:
        raise ConfigError(f"finetune.stride ({stride}) must be at most half of data.max_seq_length ({length}): "
                          f"windows would overlap more than they move on. Lower --set finetune.stride.")
    return stride


# ---------------------------------------------------------------- model and trainer


def tagger(cfg: RunConfig, names: list[str], attention: str) -> tuple[Any, Any]:
    """(tokenizer, AutoModelForTokenClassification) from any encoder checkpoint, the tags in config.id2label."""
    import transformers

    transformers.set_seed(cfg.seed)
    name = cfg.model.name
    tokenizer = modeling.load_tokenizer(cfg.model.tokenizer or name, cfg.model.trust_remote_code)
    if getattr(tokenizer, "add_prefix_space", None) is False:  # byte-level BPE (RoBERTa, ...): words given split
        from transformers import AutoTokenizer  # need it, as in run_ner.py; saved with the model

        tokenizer = AutoTokenizer.from_pretrained(cfg.model.tokenizer or name, add_prefix_space=True,
                                                  trust_remote_code=cfg.model.trust_remote_code)
    tokenizer.model_max_length = cfg.data.max_seq_length  # saved: the pipeline and inference use the same window
    config = modeling.read_config(name, cfg.model.trust_remote_code)
    source = ", ".join(config.architectures or ["no architecture"])
    config.num_labels = len(names)
    config.id2label, config.label2id = dict(enumerate(names)), {n: i for i, n in enumerate(names)}
    modeling.set_dropout(config, cfg.model.dropout)
    model, info, note = modeling.load_pretrained("AutoModelForTokenClassification", name, config, attention,
                                                 cfg.model.trust_remote_code, ignore_mismatched_sizes=True)
    fresh = sorted(set(info.get("missing_keys", ())) | {k[0] if isinstance(k, tuple) else k
                                                         for k in info.get("mismatched_keys", ())})
    log(f"'{name}' ({source}) gets a fresh token classification head for {len(names)} tags: newly initialised "
        f"{', '.join(fresh[:6])}{' ...' if len(fresh) > 6 else ''}" if fresh else
        f"'{name}' ({source}) already has a token classification head of this shape; training continues from it")
    if note:
        log(note)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
        model.config.pad_token_id = tokenizer.pad_token_id
    modeling.check_vocab(model, tokenizer, name, cfg.model.tokenizer or name)
    shape = modeling.describe(model)
    log(f"model: {shape['architecture']} {shape['layers']}x{shape['hidden_size']}, {shape['parameters'] / 1e6:.1f}M "
        f"parameters")
    return tokenizer, model


def make_trainer(cfg: RunConfig, args: Any, model: Any, tokenizer: Any, train_windows: tagged.Windows,
                 eval_windows: tagged.Windows, held_out: Tagged, names: list[str], metric: str,
                 callbacks: Sequence[Any] = (), trainer_class: type | None = None) -> tuple[Any, Any, int]:
    """(SeededTrainer, its stop callback, examples per optimizer step); evaluations score words, not windows."""
    import transformers

    from llmkit import training

    collator = transformers.DataCollatorForTokenClassification(
        tokenizer, pad_to_multiple_of=8 if args.device.type == "cuda" else None)

    class TaggingTrainer(training.subclass(trainer_class, training.SeededTrainer)):
        """Evaluations in dataset order (the Trainer groups them by length when training does): `word_metrics`
        reads each word from its windows by position."""

        def eval_sampler(self, sampler, dataset):
            import torch

            return torch.utils.data.SequentialSampler(dataset) if self.args.world_size <= 1 else sampler

    return supervised.shared_trainer(cfg, args, model, tokenizer, train_windows.features, eval_windows.features,
                                     collator, word_metrics(eval_windows, held_out, names), metric, unit="windows",
                                     callbacks=callbacks, trainer_class=TaggingTrainer)


def word_metrics(windows: tagged.Windows, held_out: Tagged, names: list[str]) -> Any:
    """A `compute_metrics` scoring each evaluation word once (its first piece, in its most central window)."""

    def compute_metrics(prediction: Any) -> dict[str, float]:
        logits = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
        rows = [logits[k, :len(f["input_ids"])] for k, f in enumerate(windows.features)]
        predicted = [tagged.predicted_tags(p, names)[0] for p in tagged.word_predictions(windows, rows)]
        return metrics.entities(held_out.tags, predicted)

    return compute_metrics


# ---------------------------------------------------------------- results


def evaluate_saved(staging: Path, held_out: Tagged, windows: tagged.Windows, names: list[str], device: str,
                   precision: str, batch_size: int) -> dict[str, Any]:
    """Entity metrics (with the per-type table), the loss at words' first pieces and predictions.jsonl of the
    saved model on the evaluation set, run through `inference` as `llmkit predict` runs it."""
    from llmkit import inference

    loaded = inference.load(staging, "token-classification", device, precision, runtime="torch")
    ids = [f["input_ids"] for f in windows.features]
    types = [f["token_type_ids"] for f in windows.features] if "token_type_ids" in windows.features[0] else None
    rows = entities.window_logits(loaded, ids, types, batch_size)
    probabilities = tagged.word_predictions(windows, rows)
    predicted = [tagged.predicted_tags(p, names) for p in probabilities]
    summary = {**metrics.entities(held_out.tags, [tags for tags, _ in predicted], report=True),
               "eval_loss": word_loss(probabilities, held_out.tags, names), "labels": list(names)}
    with (staging / PREDICTIONS).open("w", encoding="utf-8") as f:
        for words, gold, (tags, scores) in zip(held_out.words, held_out.tags, predicted):
            f.write(json.dumps({"text": " ".join(words), "words": words, "gold": gold, "predicted": tags,
                                "entities": entities.spans(words, tags, scores),
                                "gold_entities": entities.spans(words, gold)}, ensure_ascii=False) + "\n")
    return summary


def word_loss(probabilities: list[np.ndarray], gold: list[list[str]], names: list[str]) -> float:
    """Cross-entropy of the gold tag of each word (at the piece its prediction is read from)."""
    index = {n: i for i, n in enumerate(names)}
    picked = np.concatenate([p[np.arange(len(tags)), [index[t] for t in tags]] for p, tags in zip(probabilities, gold)])
    picked = picked[~np.isnan(picked)]
    return float(-np.log(np.clip(picked, 1e-12, None)).mean()) if picked.size else float("nan")


def save(run_dir: outputs.RunDir, staging: Path, trainer: Any, cfg: RunConfig, summary: dict[str, Any],
         source: str, shape: dict[str, Any], names: list[str]) -> None:
    headline = {k: summary[k] for k in metrics.names("tokens", len(names)) if k in summary}
    shown = ", ".join(f"{k} {v:.4f}" for k, v in headline.items())
    kinds = sorted({n.partition("-")[2] for n in names if n != "O"})
    outputs.write_final(run_dir, staging, trainer, cfg, summary, "Fine-tuning", card=dict(
        title=f"{Path(cfg.output_dir).name}: token classifier",
        summary=(f"A {shape['architecture']} fine-tuned from `{cfg.model.name}` by `llmkit finetune` to tag "
                 f"{', '.join(kinds[:20])}{', ...' if len(kinds) > 20 else ''} ({summary['tag_scheme']} tags). On "
                 f"the evaluation set (entity-level, exact spans): {shown}."),
        data=(f"{source}; {summary['train_examples']:,} training and {summary['eval_examples']:,} evaluation "
              f"sentences, in windows of {cfg.data.max_seq_length} tokens overlapping by {window_stride(cfg)}; "
              f"{summary['steps']:,} steps of {summary['effective_batch_size']} windows. Evaluation-set tags and "
              f"entities are in `{PREDICTIONS}`."),
        model={**shape, "tags": len(names), "tag scheme": summary["tag_scheme"], "precision": summary["precision"],
               "processes": summary["processes"], "effective batch size": summary["effective_batch_size"]},
        usage=USAGE.format(path=Path(cfg.output_dir).resolve(), example="Ada Lovelace lived in London."),
        base_model=cfg.model.name, pipeline_tag="token-classification", datasets=cfg.data.train))
    log(f"saved to {run_dir.path}: {shown}")
