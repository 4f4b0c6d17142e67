"""Confusion matrix: counts of (true label, predicted label) pairs; rows are true labels, columns predictions.

A local `evaluate` module with the interface of the hub's `confusion_matrix`, so it loads with no network:
``evaluate.load("<path>/confusion_matrix.py")`` (or ``llmkit.metrics.load("confusion_matrix")``).
"""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = "Entry [i, j] counts the examples whose true label is labels[i] and predicted label is labels[j]."
_KWARGS_DESCRIPTION = """
Args:
    predictions (list of int): predicted labels.
    references (list of int): true labels.
    labels (list of int): row/column order (default: sorted labels seen in references or predictions).
    sample_weight (list of float): per-example weights.
    normalize ("true", "pred", "all" or None): divide by the row sums, the column sums, or the total.
Returns:
    confusion_matrix (2-D array).
Example:
    >>> confusion_matrix.compute(references=[0, 1, 1, 2], predictions=[0, 1, 2, 2])
    {'confusion_matrix': array([[1, 0, 0], [0, 1, 1], [0, 0, 1]])}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class ConfusionMatrix(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(description=_DESCRIPTION, citation="", inputs_description=_KWARGS_DESCRIPTION,
                                   features=datasets.Features({"predictions": datasets.Value("int32"),
                                                               "references": datasets.Value("int32")}))

    def _compute(self, predictions, references, labels=None, sample_weight=None, normalize=None):
        p, r = np.asarray(predictions), np.asarray(references)
        labels = np.asarray(sorted(set(r.tolist()) | set(p.tolist())) if labels is None else labels)
        index = {int(label): i for i, label in enumerate(labels)}
        weights = np.ones(len(p), dtype=np.int64) if sample_weight is None else np.asarray(sample_weight, dtype=float)
        matrix = np.zeros((len(labels), len(labels)), dtype=weights.dtype)
        for true, pred, w in zip(r.tolist(), p.tolist(), weights):
            if true in index and pred in index:
                matrix[index[true], index[pred]] += w
        if normalize is not None:
            with np.errstate(invalid="ignore", divide="ignore"):
                total = {"true": matrix.sum(1, keepdims=True), "pred": matrix.sum(0, keepdims=True),
                         "all": matrix.sum()}[normalize]
                matrix = np.nan_to_num(matrix / total)
        return {"confusion_matrix": matrix}
