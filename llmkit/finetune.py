"""`llmkit finetune`: fine-tune a sequence classifier (single-label, multi-label) or regressor on labeled texts."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from llmkit import config as config_lib
from llmkit import data, metrics, outputs
from llmkit.predict import interpret, pick_text_columns, write_records
from llmkit.config import RunConfig
from llmkit.console import log
from llmkit.errors import ConfigError, DataError, ModelError

USAGE = """\
from transformers import pipeline

classify = pipeline("text-classification", model="{path}")
print(classify({example!r}))
"""

LABEL_COLUMN_GUESSES = ("label", "labels")
HF_PROBLEM_TYPES = {"single_label": "single_label_classification", "multi_label": "multi_label_classification",
                    "regression": "regression"}

# Settings that may differ when a run is resumed: they change neither the data nor the optimisation.
RESUMABLE_CHANGES = {"training.logging_steps", "training.save_total_limit", "training.dataloader_num_workers",
                     "training.per_device_eval_batch_size", "data.num_proc", "data.cache_dir"}


@dataclass
class Labeled:
    """Texts (and second texts of pairs) with their raw labels, as read."""

    texts: list[str]
    pairs: list[str] | None
    labels: list[Any]
    source: str

    def select(self, index: Sequence[int]) -> "Labeled":
        return Labeled([self.texts[i] for i in index], None if self.pairs is None else [self.pairs[i] for i in index],
                       [self.labels[i] for i in index], self.source)


def run(cfg: RunConfig, resume: bool = False, overwrite: bool = False) -> dict[str, Any]:
    """Fine-tune per `cfg`; returns the final metrics. Writes the run directory described in DESIGN.md."""
    # 1. validate everything cheap before loading anything
    if not cfg.model.name:
        raise ConfigError("llmkit finetune needs a model to start from: pass --model NAME|PATH (an encoder checkpoint, "
                          "e.g. an llmkit pretrain run or bert-base-uncased).")
    if not cfg.data.train:
        raise ConfigError("llmkit finetune needs labeled training data: pass --data FILE (CSV, TSV, JSON Lines, JSON "
                          "or parquet with a text and a label column) or a `datasets` name.")
    check_settings(cfg)
    run_dir, finished = outputs.prepare(cfg, resume, overwrite, RESUMABLE_CHANGES, log)
    if finished is not None:
        return finished

    # 2. data: labeled train and eval sets, labels checked (all before any model is loaded or anything written)
    train, held_out, problem, names = labeled_data(cfg)
    metric = metrics.check_metric(cfg.finetune.metric or ("mse" if problem == "regression" else "f1_macro"),
                                  problem, len(names))
    log(f"data: {len(train.texts):,} training and {len(held_out.texts):,} evaluation examples from {train.source}; "
        f"{describe_labels(train.labels, problem, names)}")

    # 3. placement and precision (sets up the process group under accelerate/torchrun)
    from llmkit import modeling, predict, training

    precision, why = modeling.resolve_precision(cfg.precision)
    args = training.training_arguments(cfg, run_dir.checkpoints, precision, **selection_arguments(cfg, metric))
    attention = modeling.resolve_attention(cfg.model.attn_implementation, args.device.type)
    log(f"precision: {precision} ({why}); attention: {attention}")

    # 4. tokenizer and model: the encoder of the checkpoint plus a fresh classification head
    import transformers

    transformers.utils.logging.disable_progress_bar()  # llmkit reports progress itself, on stderr
    transformers.set_seed(cfg.seed)
    tokenizer = modeling.load_tokenizer(cfg.model.tokenizer or cfg.model.name, cfg.model.trust_remote_code)
    tokenizer.model_max_length = cfg.data.max_seq_length  # saved with the model: inference truncates the same way
    model, note = load_classifier(cfg, problem, names, attention)
    if note:
        log(note)
    if tokenizer.pad_token is None:  # GPT-style tokenizers: padding is needed to batch texts of different lengths
        tokenizer.pad_token = tokenizer.eos_token
        model.config.pad_token_id = tokenizer.pad_token_id
    modeling.check_vocab(model, tokenizer, cfg.model.name, cfg.model.tokenizer or cfg.model.name)
    shape = modeling.describe(model)
    log(f"model: {shape['architecture']} {shape['layers']}x{shape['hidden_size']}, {shape['parameters'] / 1e6:.1f}M "
        f"parameters")

    # 5. features: tokenized and truncated, not padded (each batch is padded to its longest text)
    with args.main_process_first(desc="tokenization"):  # the others load what the main process cached
        train_features = features(tokenizer, train, encode_labels(train.labels, problem, names), cfg.data)
        eval_features = features(tokenizer, held_out, encode_labels(held_out.labels, problem, names), cfg.data)
    lengths = np.array([len(f["input_ids"]) for f in train_features])
    log(f"features: {len(train_features):,} training examples, {lengths.mean():.0f} tokens on average "
        f"({int((lengths >= cfg.data.max_seq_length).sum()):,} truncated to {cfg.data.max_seq_length})")

    # 6. trainer: dynamic padding, length-grouped batches, evaluation and best-model selection by `metric`
    guard = training.GuardCallback()
    callbacks = [training.LogCallback(), guard]
    if cfg.finetune.early_stopping_patience:
        callbacks.append(transformers.EarlyStoppingCallback(cfg.finetune.early_stopping_patience))
    collator = transformers.DataCollatorWithPadding(tokenizer, pad_to_multiple_of=8 if args.device.type == "cuda"
                                                    else None)
    trainer = training.SeededTrainer(
        model=model, args=args, data_collator=collator, train_dataset=train_features, eval_dataset=eval_features,
        processing_class=tokenizer, compute_metrics=metrics.for_trainer(problem, names), callbacks=callbacks)
    trainer.remove_callback(transformers.trainer_callback.PrinterCallback)
    # Classification heads take **kwargs but ignore num_items_in_batch and return a per-batch mean; told
    # otherwise, the Trainer would scale that mean by the process count and skip the accumulation division.
    trainer.model_accepts_loss_kwargs = False
    effective_batch = args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
    log(f"batch: {args.per_device_train_batch_size} per device x {args.gradient_accumulation_steps} accumulation x "
        f"{args.world_size} process(es) = {effective_batch} examples per step; best model by eval {metric}")

    # 7. train (Ctrl-C / SIGTERM save a checkpoint; a non-finite loss stops without saving)
    result = training.train(trainer, guard, run_dir, config_lib.dump(cfg))

    # 8. save the (best) model, predict the evaluation set with it as `llmkit predict` would, and publish
    staging = outputs.stage_model(run_dir, trainer, tokenizer)
    if staging is None:  # not the main process
        return {}
    classifier = predict.load(str(staging), device=str(args.device), precision=precision)
    logits = classifier.logits(held_out.texts, held_out.pairs, args.per_device_eval_batch_size)
    references = np.asarray(encode_labels(held_out.labels, problem, names))
    summary = {**metrics.from_logits(problem, logits, references, names, report=True),
               "eval_loss": eval_loss(problem, logits, references),
               **training_summary(result.metrics, trainer, effective_batch, precision, problem, metric, train,
                                  held_out)}
    write_predictions(staging, held_out, problem, logits, names)
    save(run_dir, staging, trainer, cfg, summary, train.source, shape)
    return summary


# ---------------------------------------------------------------- settings


def check_settings(cfg: RunConfig) -> None:
    """Fine-tuning settings that contradict each other, found before anything is loaded."""
    for key in ("metric_for_best_model", "greater_is_better"):
        if key in cfg.training:
            raise ConfigError(f"'training.{key}' is set by llmkit from finetune.metric; use --set finetune.metric=NAME "
                              f"instead.")
    if cfg.finetune.early_stopping_patience and not cfg.training.get("load_best_model_at_end"):
        raise ConfigError("finetune.early_stopping_patience needs training.load_best_model_at_end=true (early "
                          "stopping compares evaluations against the best one so far).")


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


# ---------------------------------------------------------------- data


def labeled_data(cfg: RunConfig) -> tuple[Labeled, Labeled, str, list[str]]:
    """(training set, evaluation set, problem type, label names), every label checked."""
    train, held_out = load_data(cfg)
    problem = problem_type(train.labels, cfg.finetune.problem_type)
    train.labels = normalize_labels(train.labels, problem, train.source)
    names = label_names(train.labels, problem, train.source)
    if held_out is None:
        train, held_out = split_eval(train, problem, cfg.data.eval_fraction, cfg.seed)
    else:
        held_out.labels = normalize_labels(held_out.labels, problem, held_out.source)
        held_out = check_eval_labels(held_out, names, problem, cfg.finetune.unseen_eval_labels)
    if cfg.data.max_eval_samples and len(held_out.texts) > cfg.data.max_eval_samples:  # a seeded, stratified subset
        strata = held_out.labels if problem == "single_label" else [0] * len(held_out.labels)
        held_out = held_out.select(stratified_sample(strata, cfg.data.max_eval_samples / len(strata), cfg.seed))
    return train, held_out, problem, names


def load_data(cfg: RunConfig) -> tuple[Labeled, Labeled | None]:
    """The training set and the evaluation set (None: to be split off the training set)."""
    train = load_labeled(cfg.data.train, cfg.data, None)
    if cfg.data.eval:
        return train, load_labeled(cfg.data.eval, cfg.data, cfg.data.eval_split)
    if cfg.data.eval_split:
        return train, load_labeled(cfg.data.train, cfg.data, cfg.data.eval_split)
    return train, None


def load_labeled(sources: Sequence[str], cfg_data: Any, split: str | None) -> Labeled:
    """Texts, pairs and labels of local tables (CSV/TSV/JSON Lines/JSON/parquet) or `datasets` names.

    The columns are the configured ones or auto-detected (reported on stderr); every problem found in the rows
    (missing texts or labels) is reported at once.
    """
    local = [s for s in sources if data.is_local(s)]
    files = data.expand_files(local) if local else []
    text_files = [f for f in files if f.suffix.lower() in data.TEXT_SUFFIXES]
    if text_files:
        raise DataError(f"'{text_files[0]}' is plain text, but fine-tuning needs a label for each text. Give a CSV, "
                        f"TSV, JSON Lines, JSON or parquet file with a text and a label column.")
    groups: dict[str, list[Path]] = {}
    for f in files:
        groups.setdefault(f.suffix.lower(), []).append(f)
    tables = [(str(g[0]) if len(g) == 1 else f"{g[0].parent} ({len(g)} files)", g) for g in groups.values()]
    tables += [(s, None) for s in sources if s not in local]
    out = Labeled([], None, [], ", ".join(name for name, _ in tables))
    for name, group in tables:
        table = data.load_table(name, group, cfg_data, split)
        texts, pairs, labels = read_columns(table, name, cfg_data)
        if out.texts and (out.pairs is None) != (pairs is None):
            raise DataError(f"'{name}' has a second text column but the data before it has none (or the reverse). "
                            f"Give tables with the same columns.")
        out.texts += texts
        out.labels += labels
        out.pairs = None if pairs is None else (out.pairs or []) + pairs
    if not out.texts:
        raise DataError(f"No examples found in {out.source}. Give data with at least one labeled text.")
    return out


def read_columns(table: Any, source: str, cfg_data: Any) -> tuple[list[str], list[str] | None, list[Any]]:
    columns = table.column_names
    strings = [c for c, f in table.features.items() if getattr(f, "dtype", None) in ("string", "large_string")]
    text, pair, detected = pick_text_columns(columns, cfg_data.text_column, cfg_data.text_pair_column, source,
                                             [c for c in strings if c not in LABEL_COLUMN_GUESSES])
    label = data.pick_column(columns, cfg_data.label_column, LABEL_COLUMN_GUESSES, "label", source, "--label-column")
    if detected or cfg_data.label_column is None:
        log(f"columns of {source}: text '{text}'" + (f", text pair '{pair}'" if pair else "") + f", label '{label}'"
            f" (auto-detected; set them with --text-column, --text-pair-column, --label-column)")
    if label in (text, pair):
        raise DataError(f"Column '{label}' of '{source}' cannot be both a text and the label. Pass --label-column "
                        f"or --text-column with different columns.")
    texts, labels = list(table[text]), class_names(list(table[label]), table.features.get(label))
    pairs = list(table[pair]) if pair else None
    problems = []
    for column, values in ((text, texts), (pair, pairs)):
        bad = [i for i, v in enumerate(values or [], 1) if not isinstance(v, str)]
        if bad:
            problems.append(f"column '{column}' has no text in {len(bad)} row(s) (first: row {bad[0]})")
    missing = [i for i, v in enumerate(labels, 1) if v is None or (isinstance(v, float) and math.isnan(v))
               or (isinstance(v, str) and not v.strip())]
    if missing:
        problems.append(f"column '{label}' has no label in {len(missing)} row(s) (first: row {missing[0]})")
    if problems:
        raise DataError(f"'{source}': " + "; ".join(problems) + ". Fill them in or drop those rows.")
    return texts, pairs, labels


def class_names(values: list[Any], feature: Any) -> list[Any]:
    """`datasets` class labels (ClassLabel ids, or lists of them) as their names; -1 (unlabeled) as missing."""
    import datasets

    def name(feature: Any, v: Any) -> Any:
        return feature.int2str(v) if isinstance(v, int) and v >= 0 else None

    if isinstance(feature, datasets.ClassLabel):
        return [name(feature, v) for v in values]
    inner = getattr(feature, "feature", None)
    if isinstance(inner, datasets.ClassLabel):
        return [None if v is None else [name(inner, x) for x in v] for v in values]
    return values


# ---------------------------------------------------------------- labels


def problem_type(labels: Sequence[Any], requested: str) -> str:
    """single_label, multi_label or regression: as requested, else from the labels (as HF's run_classification):
    lists are multi-label, floats are regression, strings, integers and booleans are classes."""
    if requested != "auto":
        return requested
    if any(isinstance(v, (list, tuple)) for v in labels):
        return "multi_label"
    if any(isinstance(v, float) for v in labels) and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                         for v in labels):
        return "regression"
    return "single_label"


def normalize_labels(labels: Sequence[Any], problem: str, source: str) -> list[Any]:
    """Labels in one form per problem type: class names (str), lists of class names, or floats."""
    if problem == "regression":
        out, bad = [], []
        for i, v in enumerate(labels, 1):
            try:
                value = float(v)
            except (TypeError, ValueError):
                value = float("nan")
            if isinstance(v, bool) or not math.isfinite(value):
                bad.append((i, v))
            out.append(value)
        if bad:
            raise DataError(f"Regression needs a finite number as each label; '{source}' has {len(bad)} other(s) "
                            f"(first: row {bad[0][0]}: {bad[0][1]!r}). Fix those labels, or drop "
                            f"--set finetune.problem_type=regression to classify.")
        return out
    if problem == "multi_label":
        # a list per row; a string is split on commas ("news,sports"), as CSV files cannot hold lists
        return [[_name(x) for x in (v if isinstance(v, (list, tuple)) else str(v).split(",")) if _name(x)]
                for v in labels]
    if any(isinstance(v, (list, tuple)) for v in labels):
        raise DataError(f"'{source}' has list labels, which mean multi-label classification; drop "
                        f"--set finetune.problem_type=single_label or give one label per row.")
    return [_name(v) for v in labels]


def _name(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value).strip()


def label_names(labels: Sequence[Any], problem: str, source: str) -> list[str]:
    """The sorted label set of the training data (numbers in numeric order); empty for regression."""
    if problem == "regression":
        return []
    found = Counter(x for v in labels for x in (v if problem == "multi_label" else [v]))
    if len(found) < 2:
        only = f"one label ('{next(iter(found))}')" if found else "no labels"
        hint = (" For a numeric target, pass --set finetune.problem_type=regression."
                if found and _is_number(next(iter(found))) else "")
        raise DataError(f"The training data in {source} has {only}: classification needs at least 2 classes. Add "
                        f"examples of the other classes.{hint}")
    if all(_is_number(n) for n in found):
        return sorted(found, key=float)
    return sorted(found)


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def encode_labels(labels: Sequence[Any], problem: str, names: Sequence[str]) -> list[Any]:
    """Model targets: class ids (single-label), multi-hot float vectors (multi-label) or floats (regression)."""
    if problem == "regression":
        return [float(v) for v in labels]
    index = {n: i for i, n in enumerate(names)}
    if problem == "multi_label":
        out = []
        for v in labels:
            row = [0.0] * len(names)
            for x in v:
                row[index[x]] = 1.0
            out.append(row)
        return out
    return [index[v] for v in labels]


def check_eval_labels(held_out: Labeled, names: Sequence[str], problem: str, policy: str) -> Labeled:
    """Evaluation labels must be training labels: an error, or with policy 'drop' those rows are dropped (said)."""
    if problem == "regression":
        return held_out
    known = set(names)
    unseen = Counter(x for v in held_out.labels for x in (v if problem == "multi_label" else [v]) if x not in known)
    if not unseen:
        return held_out
    shown = ", ".join(f"'{k}' ({n} row{'s' if n > 1 else ''})" for k, n in sorted(unseen.items())[:8])
    if policy == "error":
        raise DataError(f"Evaluation labels not in the training data: {shown} in {held_out.source}; the model can only "
                        f"predict the {len(names)} training labels. Add examples of them to the training data, or "
                        f"pass --set finetune.unseen_eval_labels=drop to evaluate without those rows.")
    keep = [i for i, v in enumerate(held_out.labels)
            if all(x in known for x in (v if problem == "multi_label" else [v]))]
    if not keep:
        raise DataError(f"Every evaluation row of {held_out.source} has a label not in the training data ({shown}). "
                        f"Give evaluation data with the training labels.")
    log(f"dropped {len(held_out.labels) - len(keep):,} evaluation row(s) whose labels are not in the training data: "
        f"{shown}")
    return held_out.select(keep)


def describe_labels(labels: Sequence[Any], problem: str, names: Sequence[str]) -> str:
    if problem == "regression":
        values = np.asarray(labels, dtype=float)
        return f"regression, labels from {values.min():g} to {values.max():g} (mean {values.mean():.3g})"
    counts = Counter(x for v in labels for x in (v if problem == "multi_label" else [v]))
    shown = ", ".join(f"{n} {counts[n]:,}" for n in names[:10]) + (", ..." if len(names) > 10 else "")
    kind = "multi-label" if problem == "multi_label" else "single-label"
    return f"{kind} classification, {len(names)} labels ({shown})"


def split_eval(train: Labeled, problem: str, fraction: float, seed: int) -> tuple[Labeled, Labeled]:
    """A seeded held-out split; single-label: stratified (each class keeps its share, as far as counts allow)."""
    n = len(train.labels)
    if n < 2:
        raise DataError(f"Need at least 2 examples to hold some out for evaluation, found {n}. Add data or pass "
                        f"--eval-data.")
    strata = train.labels if problem == "single_label" else [0] * n
    eval_index = stratified_sample(strata, fraction, seed)
    held = set(eval_index)
    return train.select([i for i in range(n) if i not in held]), train.select(eval_index)


def stratified_sample(strata: Sequence[Any], fraction: float, seed: int) -> list[int]:
    """Indices of a seeded sample of about `fraction` of the rows, in row order, with each stratum represented in
    proportion (largest remainders get the rounding); every stratum keeps at least one row out of the sample."""
    rng = np.random.default_rng(seed)
    groups: dict[Any, list[int]] = {}
    for i, s in enumerate(strata):
        groups.setdefault(s, []).append(i)
    keys = sorted(groups, key=str)
    total = max(1, round(len(strata) * fraction))
    exact = np.array([len(groups[k]) * fraction for k in keys])
    take = np.floor(exact).astype(int)
    order = sorted(range(len(keys)), key=lambda j: (-(exact[j] - take[j]), rng.random()))
    for j in order[:max(0, total - int(take.sum()))]:
        take[j] += 1
    picked: list[int] = []
    for j, key in enumerate(keys):
        members = groups[key]
        count = min(int(take[j]), len(members) - 1)
        picked += rng.permutation(members)[:count].tolist()
    if not picked:  # tiny data: hold out one row of the largest stratum
        largest = max(keys, key=lambda k: len(groups[k]))
        picked = [int(rng.choice(groups[largest]))]
    return sorted(picked)


# ---------------------------------------------------------------- model and features


def load_classifier(cfg: RunConfig, problem: str, names: Sequence[str],
                    attention: str = "sdpa") -> tuple[Any, str | None]:
    """AutoModelForSequenceClassification from any encoder checkpoint; says which weights start fresh."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from llmkit import modeling

    name = cfg.model.name
    num_labels = 1 if problem == "regression" else len(names)
    model_config = AutoConfig.from_pretrained(name, trust_remote_code=cfg.model.trust_remote_code,
                                              num_labels=num_labels, problem_type=HF_PROBLEM_TYPES[problem])
    modeling.set_dropout(model_config, cfg.model.dropout)
    if problem != "regression":
        model_config.id2label = dict(enumerate(names))
        model_config.label2id = {n: i for i, n in enumerate(names)}
    kwargs = dict(config=model_config, trust_remote_code=cfg.model.trust_remote_code, ignore_mismatched_sizes=True,
                  output_loading_info=True)
    note = None
    try:
        try:
            model, info = AutoModelForSequenceClassification.from_pretrained(
                name, attn_implementation=attention, **kwargs)
        except ValueError as e:
            if "attn_implementation" not in str(e) and attention not in str(e).lower():
                raise
            model, info = AutoModelForSequenceClassification.from_pretrained(name, **kwargs)
            note = f"{model_config.model_type} does not support {attention} attention; using its default"
    except ValueError as e:
        raise ModelError(f"'{name}' ({model_config.model_type}) cannot be used for sequence classification: "
                         f"{str(e).splitlines()[0][:200]}. Use an encoder checkpoint (BERT, RoBERTa, ...).") from None
    fresh = sorted(set(info.get("missing_keys", ())) | {k[0] if isinstance(k, tuple) else k
                                                         for k in info.get("mismatched_keys", ())})
    source = ", ".join(getattr(AutoConfig.from_pretrained(name), "architectures", None) or ["no architecture"])
    what = f"{num_labels} label{'s' if num_labels > 1 else ''}" if problem != "regression" else "regression"
    if fresh:
        head = f"'{name}' ({source}) gets a fresh classification head for {what}: newly initialised " \
               f"{', '.join(fresh[:6])}{' ...' if len(fresh) > 6 else ''}"
    else:
        head = f"'{name}' ({source}) already has a classification head of this shape; training continues from it"
    return model, head + (f"; {note}" if note else "")


def features(tokenizer: Any, labeled: Labeled, targets: Sequence[Any], cfg_data: Any) -> list[dict[str, Any]]:
    """One dict per example (input ids, attention mask, ..., labels), truncated to `max_seq_length`, not padded.

    The tokenized arrays are cached like pretraining features (keyed on texts, pairs, tokenizer and length).
    """
    from llmkit import data

    def build() -> dict[str, np.ndarray]:
        encoded = tokenizer(labeled.texts, labeled.pairs, truncation=True, max_length=cfg_data.max_seq_length)
        lengths = [len(ids) for ids in encoded["input_ids"]]
        arrays = {"offsets": np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)}
        for name, rows in encoded.items():
            arrays[name] = np.fromiter((v for row in rows for v in row), dtype=np.int64, count=sum(lengths))
        return arrays

    key = {"kind": "classification", "texts": data.texts_fingerprint(labeled.texts),
           "pairs": data.texts_fingerprint(labeled.pairs) if labeled.pairs is not None else None,
           "tok": data.tokenizer_fingerprint(tokenizer), "len": cfg_data.max_seq_length}
    arrays = data.cached_arrays(key, cfg_data, build, log)
    offsets = arrays.pop("offsets")
    return [{**{name: column[offsets[i]:offsets[i + 1]].tolist() for name, column in arrays.items()},
             "labels": targets[i]} for i in range(len(labeled.texts))]


# ---------------------------------------------------------------- results


def eval_loss(problem: str, logits: np.ndarray, references: np.ndarray) -> float:
    """The model's own loss on the evaluation set: cross-entropy, binary cross-entropy or mean squared error."""
    logits = logits.astype(np.float64)
    if problem == "regression":
        return float(np.mean((logits[:, 0] - references) ** 2))
    if problem == "multi_label":
        return float(np.mean(np.logaddexp(0, logits) - references * logits))
    log_probs = logits - np.logaddexp.reduce(logits, axis=-1, keepdims=True)
    return float(-log_probs[np.arange(len(references)), references].mean())


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


def write_predictions(staging: Path, held_out: Labeled, problem: str, logits: np.ndarray,
                      names: Sequence[str]) -> None:
    """predictions.csv (text, [text_pair], gold, label, score per evaluation example) and, for single-label,
    confusion_matrix.png."""
    records = []
    for result, text, pair, gold in zip(interpret(problem, logits, names), held_out.texts,
                                        held_out.pairs or [None] * len(held_out.texts), held_out.labels):
        gold = ";".join(gold) if problem == "multi_label" else gold
        records.append({"text": text, **({"text_pair": pair} if pair is not None else {}), "gold": gold, **result})
    write_records(staging / "predictions.csv", records)
    if problem == "single_label":
        references = encode_labels(held_out.labels, problem, names)
        matrix = metrics.load("confusion_matrix").compute(references=references, predictions=logits.argmax(-1),
                                                          labels=list(range(len(names))))["confusion_matrix"]
        outputs.confusion_plot(np.asarray(matrix), list(names), staging / "confusion_matrix.png",
                               "Evaluation set: true (rows) vs predicted (columns)")


def save(run_dir: outputs.RunDir, staging: Path, trainer: Any, cfg: RunConfig, summary: dict[str, Any],
         source: str, shape: dict[str, Any]) -> None:
    problem = summary["problem_type"]
    headline = {k: summary[k] for k in metrics.names(problem, len(summary.get("labels") or [])) if k in summary}
    shown = ", ".join(f"{k} {v:.4f}" for k, v in headline.items())
    kind = {"single_label": "text classifier", "multi_label": "multi-label text classifier",
            "regression": "text regressor"}[problem]
    labels = summary.get("labels") or []
    outputs.finish(run_dir, staging, trainer, cfg, summary, "Fine-tuning", card=dict(
        title=f"{Path(cfg.output_dir).name}: {kind}",
        summary=(f"A {shape['architecture']} fine-tuned from `{cfg.model.name}` by `llmkit finetune`"
                 + (f" to predict {len(labels)} labels: {', '.join(labels[:20])}{', ...' if len(labels) > 20 else ''}"
                    if labels else "") + f". On the evaluation set: {shown}."),
        data=(f"{source}; {summary['train_examples']:,} training and {summary['eval_examples']:,} evaluation examples, "
              f"truncated to {cfg.data.max_seq_length} tokens; {summary['steps']:,} steps of "
              f"{summary['effective_batch_size']} examples. Evaluation-set predictions are in `predictions.csv`."),
        model={**shape, "problem type": problem, "precision": summary["precision"],
               "processes": summary["processes"], "effective batch size": summary["effective_batch_size"]},
        usage=USAGE.format(path=Path(cfg.output_dir).resolve(), example="This is an example text.")))
    log(f"saved to {run_dir.path}: {shown}")
