"""Accuracy: the fraction of predictions equal to the references (multilabel: exact-match / subset accuracy).

A local `evaluate` module with the interface of the hub's `accuracy`, so it loads with no network:
``evaluate.load("<path>/accuracy.py")`` (or ``llmkit.metrics.load("accuracy")``).
"""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = "Accuracy = correct predictions / all predictions. Multilabel: a row counts only if every label matches."
_KWARGS_DESCRIPTION = """
Args:
    predictions: predicted labels (multilabel config: 0/1 vectors).
    references: true labels (multilabel config: 0/1 vectors).
    normalize (bool): return the fraction (default) or the number of correct predictions.
    sample_weight (list of float): per-example weights.
Returns:
    accuracy (float).
Example:
    >>> accuracy.compute(references=[0, 1, 2, 1], predictions=[0, 1, 1, 1])
    {'accuracy': 0.75}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Accuracy(evaluate.Metric):
    def _info(self):
        value = datasets.Value("int32")
        kind = datasets.Sequence(value) if self.config_name == "multilabel" else value
        return evaluate.MetricInfo(description=_DESCRIPTION, citation="", inputs_description=_KWARGS_DESCRIPTION,
                                   features=datasets.Features({"predictions": kind, "references": kind}))

    def _compute(self, predictions, references, normalize=True, sample_weight=None):
        p, r = np.asarray(predictions), np.asarray(references)
        correct = (p == r).all(axis=1) if p.ndim == 2 else p == r
        weights = np.ones(len(correct)) if sample_weight is None else np.asarray(sample_weight, dtype=float)
        total = float((correct * weights).sum())
        return {"accuracy": float(total / weights.sum()) if normalize else total}
