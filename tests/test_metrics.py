"""Metrics: the shipped `evaluate` modules load offline and give exact values on hand-made arrays."""

from __future__ import annotations

import math

import numpy as np
import pytest

from llmkit import metrics
from llmkit.errors import ConfigError

# 6 examples, 3 classes: class 0 is predicted right twice and once wrongly (for a 1); 1 and 2 are swapped.
REFS = [0, 1, 2, 0, 1, 2]
PREDS = [0, 2, 1, 0, 0, 1]


def test_modules_load_with_evaluate_from_local_files():
    import evaluate

    module = evaluate.load(str(metrics.MODULES_DIR / "classification.py"))
    assert module.compute(references=[0, 1, 2, 1], predictions=[0, 1, 1, 1])["accuracy"] == 0.75
    assert set(metrics.module_names()) == {"classification", "entities", "regression"}


def test_unknown_module_suggests_the_closest():
    with pytest.raises(ConfigError, match="Did you mean 'classification'"):
        metrics.load("clasification")


def test_classification_exact_values():
    out = metrics.classification(REFS, PREDS, num_labels=3, label_names=["a", "b", "c"], report=True)
    # per class: a: P 2/3 R 1 F1 0.8; b: P 0 R 0; c: P 0 R 0
    assert out["accuracy"] == pytest.approx(2 / 6)
    assert out["precision_macro"] == pytest.approx((2 / 3) / 3)
    assert out["recall_macro"] == pytest.approx(1 / 3)
    assert out["f1_macro"] == pytest.approx(0.8 / 3)
    assert out["f1_micro"] == pytest.approx(2 / 6)  # single-label micro F1 equals accuracy
    assert "roc_auc" not in out  # only for binary problems
    assert out["per_class"]["a"] == pytest.approx({"precision": 2 / 3, "recall": 1.0, "f1": 0.8, "support": 2})
    assert out["per_class"]["b"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 2}
    assert out["confusion_matrix"] == [[2, 0, 0], [1, 0, 1], [0, 2, 0]]
    assert out["labels"] == ["a", "b", "c"]


def test_class_absent_from_evaluation_does_not_count_as_zero_in_macro_but_is_reported():
    out = metrics.classification([0, 0, 1, 1], [0, 0, 1, 1], num_labels=3, label_names=["x", "y", "z"],
                                 report=True)
    assert out["f1_macro"] == 1.0 and out["accuracy"] == 1.0
    assert out["per_class"]["z"]["support"] == 0
    assert out["confusion_matrix"] == [[2, 0, 0], [0, 2, 0], [0, 0, 0]]


def test_binary_roc_auc_from_scores():
    refs = [0, 0, 1, 1]
    scores = np.array([[0.9, 0.1], [0.6, 0.4], [0.65, 0.35], [0.2, 0.8]])
    out = metrics.classification(refs, scores.argmax(-1), num_labels=2, scores=scores)
    # positives score 0.35 and 0.8, negatives 0.1 and 0.4: 3 of the 4 (positive, negative) pairs are ordered right
    assert out["roc_auc"] == pytest.approx(0.75)
    assert out["accuracy"] == pytest.approx(0.75)
    tied = metrics.classification([0, 1, 0, 1], [0, 0, 0, 1], num_labels=2,
                                  scores=np.array([[0.5, 0.5], [0.5, 0.5], [0.8, 0.2], [0.1, 0.9]]))
    assert tied["roc_auc"] == pytest.approx((0.5 + 1 + 1 + 1) / 4)  # a tie counts one half
    one_class = metrics.classification([1, 1], [1, 0], num_labels=2, scores=np.array([[0.2, 0.8], [0.7, 0.3]]))
    assert math.isnan(one_class["roc_auc"])  # undefined, reported as NaN rather than dropped


def test_multilabel_exact_values():
    refs = np.array([[1, 0, 1], [0, 1, 0], [1, 1, 0]])
    preds = np.array([[1, 0, 0], [0, 1, 1], [1, 0, 0]])
    out = metrics.multilabel(refs, preds, ["a", "b", "c"], report=True)
    assert out["accuracy"] == 0.0  # no row has every label right
    # a: tp 2; b: tp 1 fn 1; c: fp 1 fn 1 -> F1 1, 2/3, 0; micro: tp 3 fp 1 fn 2 -> 6/9
    assert out["f1_macro"] == pytest.approx((1 + 2 / 3 + 0) / 3)
    assert out["f1_micro"] == pytest.approx(6 / 9)
    assert out["precision_macro"] == pytest.approx((1 + 1 + 0) / 3)
    assert out["recall_macro"] == pytest.approx((1 + 0.5 + 0) / 3)
    assert out["per_class"]["b"] == pytest.approx({"precision": 1.0, "recall": 0.5, "f1": 2 / 3, "support": 2})


def test_regression_exact_values():
    out = metrics.regression([1.0, 2.0, 3.0, 4.0], [1.5, 2.0, 2.5, 5.0])
    assert out["mse"] == pytest.approx((0.25 + 0 + 0.25 + 1) / 4)
    assert out["spearman"] == pytest.approx(1.0)  # same order
    x, y = np.array([1.0, 2, 3, 4]), np.array([1.5, 2.0, 2.5, 5.0])
    expected = ((x - x.mean()) * (y - y.mean())).sum() / math.sqrt(((x - x.mean()) ** 2).sum() * ((y - y.mean()) ** 2).sum())
    assert out["pearson"] == pytest.approx(expected)
    assert math.isnan(metrics.regression([1.0, 2.0], [3.0, 3.0])["pearson"])  # constant predictions


def test_from_logits_and_trainer_hook():
    logits = np.array([[2.0, -1.0], [0.1, 0.3], [-2.0, 1.0], [0.5, 0.0]])
    out = metrics.from_logits("single_label", logits, np.array([0, 1, 1, 1]), ["neg", "pos"])
    assert out["accuracy"] == 0.75 and set(out) == set(metrics.names("single_label", 2))

    class Prediction:
        predictions = (np.array([[0.4], [1.6]]),)
        label_ids = np.array([0.0, 2.0])

    reg = metrics.for_trainer("regression", [])(Prediction())
    assert reg["mse"] == pytest.approx((0.16 + 0.16) / 2) and reg["pearson"] == pytest.approx(1.0)
    multi = metrics.from_logits("multi_label", np.array([[3.0, -1.0], [-0.5, 0.2]]), np.array([[1, 0], [0, 0]]),
                                ["a", "b"])
    assert multi["accuracy"] == 0.5  # logit > 0 means the label is predicted


def test_best_model_metric_is_checked():
    assert metrics.check_metric("eval_accuracy", "single_label", 3) == "accuracy"
    assert metrics.check_metric("roc_auc", "single_label", 2) == "roc_auc"
    with pytest.raises(ConfigError, match="Did you mean 'f1_macro'"):
        metrics.check_metric("f1_marco", "single_label", 3)
    with pytest.raises(ConfigError, match="roc_auc"):
        metrics.check_metric("roc_auc", "single_label", 3)  # binary only
    with pytest.raises(ConfigError, match="mse, pearson, spearman"):
        metrics.check_metric("accuracy", "regression", 0)
