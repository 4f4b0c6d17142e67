"""Evaluation metrics for classification and regression, computed through `evaluate`, offline.

`evaluate.load("accuracy")` fetches the metric script from the hub, which fails with no network. llmkit ships
its metrics as local `evaluate` modules (`llmkit/metric_modules/`: classification, regression), thin wrappers
around scikit-learn that compute every metric of an evaluation in one call; `metrics.load("classification")`
returns the `evaluate.EvaluationModule`.

- single_label: accuracy, f1/precision/recall (macro, and micro f1), binary: roc_auc; with `report=True` also
  a per-class report and the confusion matrix;
- multi_label (0/1 vectors, a label is predicted when its logit is > 0): subset accuracy, f1/precision/recall;
- regression: mse, pearson, spearman;
- tokens (token classification, `entities`): entity precision/recall/f1 (exact spans, seqeval) and token accuracy;
  with `report=True` a per-entity-type table.
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
    "tokens": ("entity_f1", "entity_precision", "entity_recall", "token_accuracy"),
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
    """Single-label metrics. `scores`: class probabilities [N, num_labels] (binary: gives roc_auc)."""
    positive = np.asarray(scores)[:, 1] if scores is not None and num_labels == 2 else None
    out = load("classification").compute(references=np.asarray(references, dtype=np.int64),
                                         predictions=np.asarray(predictions, dtype=np.int64), num_labels=num_labels,
                                         scores=positive, label_names=label_names, report=report)
    if num_labels == 2 and "roc_auc" not in out:
        out["roc_auc"] = float("nan")
    return out


def multilabel(references: np.ndarray, predictions: np.ndarray, label_names: Sequence[str] | None = None,
               report: bool = False) -> dict[str, Any]:
    """Multi-label metrics on 0/1 matrices [N, num_labels]; accuracy is exact-match (every label right)."""
    refs = np.asarray(references).astype(np.int64)
    return load("classification", "multilabel").compute(references=refs, predictions=np.asarray(predictions).astype(
        np.int64), num_labels=refs.shape[1], label_names=label_names, report=report)


def entities(references: Sequence[Sequence[str]], predictions: Sequence[Sequence[str]],
             report: bool = False) -> dict[str, Any]:
    """Entity-level metrics of tag sequences (one list of tag names per sentence)."""
    return load("entities").compute(references=[list(r) for r in references],
                                    predictions=[list(p) for p in predictions], report=report)


def regression(references: Sequence[float], predictions: Sequence[float]) -> dict[str, Any]:
    return load("regression").compute(references=np.asarray(references, dtype=np.float64).reshape(-1),
                                      predictions=np.asarray(predictions, dtype=np.float64).reshape(-1))


# ---------------------------------------------------------------- from model outputs


def from_logits(problem_type: str, logits: np.ndarray, references: np.ndarray, label_names: Sequence[str],
                report: bool = False) -> dict[str, Any]:
    """Metrics of raw model outputs: argmax (single-label), logit > 0 (multi-label) or the value (regression)."""
    from scipy.special import softmax

    logits = np.asarray(logits, dtype=np.float64)
    if problem_type == "regression":
        return regression(references, logits.reshape(-1))
    if problem_type == "multi_label":
        return multilabel(references, (logits > 0).astype(np.int64), label_names, report)
    return classification(references, logits.argmax(-1), len(label_names), softmax(logits, axis=-1), label_names,
                          report)


def for_trainer(problem_type: str, label_names: Sequence[str]) -> Callable[[Any], dict[str, float]]:
    """A `compute_metrics` for `transformers.Trainer`: the headline metrics (plain floats) of an EvalPrediction."""

    def compute_metrics(prediction: Any) -> dict[str, float]:
        logits = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
        return from_logits(problem_type, logits, prediction.label_ids, label_names)

    return compute_metrics
