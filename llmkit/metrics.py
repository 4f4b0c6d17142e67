"""Evaluation metrics for classification and regression, computed through `evaluate`, offline.

`evaluate.load("accuracy")` fetches the metric script from the hub, which fails with no network. llmkit
ships the metrics it uses as local modules with the hub's interfaces (`llmkit/metric_modules/*.py`) and loads
them with `evaluate.load(<local path>)`; `metrics.load("f1")` returns the same kind of object.

- single_label: accuracy, f1/precision/recall (macro, and micro f1), binary: roc_auc; with `report=True` also
  a per-class report and the confusion matrix;
- multi_label (0/1 vectors, a label is predicted when its logit is > 0): subset accuracy, f1/precision/recall;
- regression: mse, pearson, spearman.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from llmkit.errors import ConfigError, did_you_mean

MODULES_DIR = Path(__file__).parent / "metric_modules"

# The headline metrics of each problem type (the keys `metrics_for` returns, without report entries).
NAMES = {
    "single_label": ("accuracy", "f1_macro", "f1_micro", "precision_macro", "recall_macro"),
    "multi_label": ("accuracy", "f1_macro", "f1_micro", "precision_macro", "recall_macro"),
    "regression": ("mse", "pearson", "spearman"),
}
LOWER_IS_BETTER = {"mse", "loss"}


def module_names() -> list[str]:
    return sorted(p.stem for p in MODULES_DIR.glob("*.py") if not p.stem.startswith("_"))


@functools.cache
def load(name: str, config_name: str | None = None) -> Any:
    """A shipped metric module as an `evaluate.EvaluationModule` (kept in memory: no cache files, no locks)."""
    path = MODULES_DIR / f"{name}.py"
    if not path.is_file():
        raise ConfigError(f"No shipped metric named '{name}'.{did_you_mean(name, module_names())} "
                          f"Shipped metrics: {', '.join(module_names())}.")
    import evaluate

    return evaluate.load(str(path), config_name=config_name, keep_in_memory=True)


def names(problem_type: str, num_labels: int) -> list[str]:
    """Metric keys reported for a problem type (binary classification adds roc_auc)."""
    out = list(NAMES[problem_type])
    if problem_type == "single_label" and num_labels == 2:
        out.append("roc_auc")
    return out


def check_metric(metric: str, problem_type: str, num_labels: int) -> str:
    """The metric that picks the best model, validated (accepts an `eval_` prefix); `loss` is always valid."""
    name = metric.removeprefix("eval_")
    valid = names(problem_type, num_labels) + ["loss"]
    if name not in valid:
        raise ConfigError(f"finetune.metric '{metric}' is not reported for {problem_type.replace('_', '-')} "
                          f"problems.{did_you_mean(name, valid)} Choose one of: {', '.join(valid)}.")
    return name


# ---------------------------------------------------------------- the three problem types


def classification(references: Sequence[int], predictions: Sequence[int], num_labels: int,
                   scores: np.ndarray | None = None, label_names: Sequence[str] | None = None,
                   report: bool = False) -> dict[str, Any]:
    """Single-label metrics. `scores`: class probabilities [N, num_labels] (binary: gives roc_auc).

    Averages run over the labels present in the references or predictions (sklearn's convention): a class
    absent from the evaluation set does not count as a zero. The report covers every label.
    """
    refs, preds = np.asarray(references, dtype=np.int64), np.asarray(predictions, dtype=np.int64)
    out: dict[str, Any] = {
        "accuracy": load("accuracy").compute(references=refs, predictions=preds)["accuracy"],
        "f1_macro": load("f1").compute(references=refs, predictions=preds, average="macro")["f1"],
        "f1_micro": load("f1").compute(references=refs, predictions=preds, average="micro")["f1"],
        "precision_macro": load("precision").compute(references=refs, predictions=preds, average="macro")["precision"],
        "recall_macro": load("recall").compute(references=refs, predictions=preds, average="macro")["recall"],
    }
    if num_labels == 2:
        both = scores is not None and len(set(refs.tolist())) == 2
        out["roc_auc"] = (load("roc_auc").compute(references=refs, prediction_scores=np.asarray(scores)[:, 1])
                          ["roc_auc"] if both else float("nan"))  # undefined with one class in the references
    if report:
        labels = list(range(num_labels))
        names_ = list(label_names) if label_names is not None else [str(i) for i in labels]
        per_label = {key: load(key).compute(references=refs, predictions=preds, labels=labels, average=None)[key]
                     for key in ("precision", "recall", "f1")}
        support = np.bincount(refs, minlength=num_labels)
        out["per_class"] = {names_[i]: {"precision": float(per_label["precision"][i]),
                                        "recall": float(per_label["recall"][i]), "f1": float(per_label["f1"][i]),
                                        "support": int(support[i])} for i in labels}
        matrix = load("confusion_matrix").compute(references=refs, predictions=preds, labels=labels)
        out["confusion_matrix"] = np.asarray(matrix["confusion_matrix"]).tolist()
        out["labels"] = names_
    return out


def multilabel(references: np.ndarray, predictions: np.ndarray, label_names: Sequence[str] | None = None,
               report: bool = False) -> dict[str, Any]:
    """Multi-label metrics on 0/1 matrices [N, num_labels]; accuracy is exact-match (every label right)."""
    refs, preds = np.asarray(references).astype(np.int64), np.asarray(predictions).astype(np.int64)

    def score(key: str, average: str | None):
        return load(key, "multilabel").compute(references=refs, predictions=preds, average=average)[key]

    out: dict[str, Any] = {
        "accuracy": load("accuracy", "multilabel").compute(references=refs, predictions=preds)["accuracy"],
        "f1_macro": score("f1", "macro"), "f1_micro": score("f1", "micro"),
        "precision_macro": score("precision", "macro"), "recall_macro": score("recall", "macro"),
    }
    if report:
        names_ = list(label_names) if label_names is not None else [str(i) for i in range(refs.shape[1])]
        per_label = {key: score(key, None) for key in ("precision", "recall", "f1")}
        out["per_class"] = {name: {"precision": float(per_label["precision"][i]),
                                   "recall": float(per_label["recall"][i]), "f1": float(per_label["f1"][i]),
                                   "support": int(refs[:, i].sum())} for i, name in enumerate(names_)}
        out["labels"] = names_
    return out


def regression(references: Sequence[float], predictions: Sequence[float]) -> dict[str, Any]:
    refs = np.asarray(references, dtype=np.float64).reshape(-1)
    preds = np.asarray(predictions, dtype=np.float64).reshape(-1)
    return {
        "mse": load("mse").compute(references=refs, predictions=preds)["mse"],
        "pearson": load("pearsonr").compute(references=refs, predictions=preds)["pearsonr"],
        "spearman": load("spearmanr").compute(references=refs, predictions=preds)["spearmanr"],
    }


# ---------------------------------------------------------------- from model outputs


def from_logits(problem_type: str, logits: np.ndarray, references: np.ndarray, label_names: Sequence[str],
                report: bool = False) -> dict[str, Any]:
    """Metrics of raw model outputs: argmax (single-label), logit > 0 (multi-label) or the value (regression)."""
    logits = np.asarray(logits, dtype=np.float64)
    if problem_type == "regression":
        return regression(references, logits.reshape(-1))
    if problem_type == "multi_label":
        return multilabel(references, (logits > 0).astype(np.int64), label_names, report)
    return classification(references, logits.argmax(-1), len(label_names), softmax(logits), label_names, report)


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def for_trainer(problem_type: str, label_names: Sequence[str]) -> Callable[[Any], dict[str, float]]:
    """A `compute_metrics` for `transformers.Trainer`: the headline metrics (plain floats) of an EvalPrediction."""

    def compute_metrics(prediction: Any) -> dict[str, float]:
        logits = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
        return from_logits(problem_type, logits, prediction.label_ids, label_names)

    return compute_metrics
