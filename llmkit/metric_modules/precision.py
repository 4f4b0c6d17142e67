"""Precision: of the examples predicted as a label, the fraction that truly have it.

A local `evaluate` module with the interface of the hub's `precision`, so it loads with no network:
``evaluate.load("<path>/precision.py")`` (or ``llmkit.metrics.load("precision")``).
"""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = "Precision = TP / (TP + FP), per label, then averaged as asked."
_KWARGS_DESCRIPTION = """
Args:
    predictions: predicted labels (multilabel config: 0/1 vectors, one column per label).
    references: true labels (multilabel config: 0/1 vectors).
    labels (list of int): the labels to score (default: every label seen in references or predictions;
        multilabel: every column).
    pos_label (int): the positive class when average="binary" (default 1).
    average (str or None): "binary" (default): the positive class only; "macro": unweighted mean over labels;
        "micro": from the total counts; "weighted": mean weighted by support; None: one score per label.
    zero_division (float): the value used when a ratio has a zero denominator (default 0).
Returns:
    precision (float, or an array of one value per label when average is None).
Example:
    >>> precision.compute(references=[0, 1, 2, 0, 1, 2], predictions=[0, 2, 1, 0, 0, 1], average="macro")
    {'precision': 0.2222222222222222}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Precision(evaluate.Metric):
    def _info(self):
        value = datasets.Value("int32")
        kind = datasets.Sequence(value) if self.config_name == "multilabel" else value
        return evaluate.MetricInfo(description=_DESCRIPTION, citation="", inputs_description=_KWARGS_DESCRIPTION,
                                   features=datasets.Features({"predictions": kind, "references": kind}))

    def _compute(self, predictions, references, labels=None, pos_label=1, average="binary", zero_division=0.0):
        tp, fp, fn = _counts(np.asarray(predictions), np.asarray(references), labels, pos_label, average)
        if average == "micro":
            tp, fp, fn = tp.sum(keepdims=True), fp.sum(keepdims=True), fn.sum(keepdims=True)
        per_label = _ratio(tp, tp + fp, zero_division)
        if average in ("binary", "micro"):
            return {"precision": float(per_label[0])}
        if average == "macro":
            return {"precision": float(per_label.mean())}
        if average == "weighted":
            support = tp + fn
            return {"precision": float((per_label * support).sum() / support.sum()) if support.sum() else float(zero_division)}
        if average is None:
            return {"precision": per_label}
        raise ValueError(f"average must be 'binary', 'macro', 'micro', 'weighted' or None, got {average!r}")


def _ratio(numerator, denominator, zero_division):
    out = np.full(len(numerator), float(zero_division))
    nonzero = denominator > 0
    out[nonzero] = numerator[nonzero] / denominator[nonzero]
    return out


def _counts(p, r, labels, pos_label, average):
    """True positives, false positives and false negatives per label (arrays)."""
    if p.ndim == 2:  # multilabel: one 0/1 column per label
        p, r = p.astype(bool), r.astype(bool)
        columns = list(range(p.shape[1])) if labels is None else list(labels)
        if average == "binary":
            columns = [pos_label]
        p, r = p[:, columns], r[:, columns]
        return (p & r).sum(0), (p & ~r).sum(0), (~p & r).sum(0)
    if average == "binary":
        labels = [pos_label]
    elif labels is None:
        labels = sorted(set(r.tolist()) | set(p.tolist()))
    labels = np.asarray(labels)
    p_hit = p[:, None] == labels[None, :]
    r_hit = r[:, None] == labels[None, :]
    return (p_hit & r_hit).sum(0), (p_hit & ~r_hit).sum(0), (~p_hit & r_hit).sum(0)
