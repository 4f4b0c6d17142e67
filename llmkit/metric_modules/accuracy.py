"""Accuracy: the fraction of predictions equal to the references (multilabel: exact-match / subset accuracy).

A local `evaluate` module with the interface of the hub's `accuracy`, so it loads with no network:
``evaluate.load("<path>/accuracy.py")`` (or ``llmkit.metrics.load("accuracy")``).
"""

import evaluate
import numpy as np

from llmkit.metric_modules._shared import label_info

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
        return label_info(_DESCRIPTION, _KWARGS_DESCRIPTION, self.config_name)

    def _compute(self, predictions, references, normalize=True, sample_weight=None):
        p, r = np.asarray(predictions), np.asarray(references)
        correct = (p == r).all(axis=1) if p.ndim == 2 else p == r
        weights = np.ones(len(correct)) if sample_weight is None else np.asarray(sample_weight, dtype=float)
        total = float((correct * weights).sum())
        return {"accuracy": float(total / weights.sum()) if normalize else total}
