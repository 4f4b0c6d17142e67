"""Code shared by the metric modules of this folder.

`evaluate.load` copies a module's single file into its own cache before importing it, so the modules cannot
reach this file with a relative import: they import it from the installed package
(``from llmkit.metric_modules._shared import ...``).
"""

import datasets
import evaluate
import numpy as np


def info(description, inputs_description, **features):
    """A module's `evaluate.MetricInfo`; `features`: input name -> `datasets` type, in the order given."""
    return evaluate.MetricInfo(description=description, citation="", inputs_description=inputs_description,
                               features=datasets.Features(features))


def label_info(description, inputs_description, config_name):
    """Info of a module over labels: ints, or 0/1 vectors (one column per label) in the multilabel config."""
    value = datasets.Value("int32")
    kind = datasets.Sequence(value) if config_name == "multilabel" else value
    return info(description, inputs_description, predictions=kind, references=kind)


# The start of the kwargs description of a module computed by `averaged`: the arguments it takes.
AVERAGED_ARGS = """
Args:
    predictions: predicted labels (multilabel config: 0/1 vectors, one column per label).
    references: true labels (multilabel config: 0/1 vectors).
    labels (list of int): the labels to score (default: every label seen in references or predictions;
        multilabel: every column).
    pos_label (int): the positive class when average="binary" (default 1).
    average (str or None): "binary" (default): the positive class only; "macro": unweighted mean over labels;
        "micro": from the total counts; "weighted": mean weighted by support; None: one score per label.
    zero_division (float): the value used when a ratio has a zero denominator (default 0).
"""


def averaged(predictions, references, labels, pos_label, average, zero_division, ratio_of):
    """A per-label ratio of confusion counts, averaged as the hub's precision/recall/f1 do.

    `ratio_of(tp, fp, fn)` gives (numerator, denominator). Returns a float, or one value per label when
    `average` is None.
    """
    tp, fp, fn = counts(np.asarray(predictions), np.asarray(references), labels, pos_label, average)
    if average == "micro":
        tp, fp, fn = tp.sum(keepdims=True), fp.sum(keepdims=True), fn.sum(keepdims=True)
    per_label = ratio(*ratio_of(tp, fp, fn), zero_division)
    if average in ("binary", "micro"):
        return float(per_label[0])
    if average == "macro":
        return float(per_label.mean())
    if average == "weighted":
        support = tp + fn
        return float((per_label * support).sum() / support.sum()) if support.sum() else float(zero_division)
    if average is None:
        return per_label
    raise ValueError(f"average must be 'binary', 'macro', 'micro', 'weighted' or None, got {average!r}")


def ratio(numerator, denominator, zero_division):
    out = np.full(len(numerator), float(zero_division))
    nonzero = denominator > 0
    out[nonzero] = numerator[nonzero] / denominator[nonzero]
    return out


def counts(p, r, labels, pos_label, average):
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


# The start of the kwargs description of a module computed by `correlation`.
CORRELATION_ARGS = """
Args:
    predictions (list of float): predicted values.
    references (list of float): true values.
    return_pvalue (bool): also return the two-sided p-value.
"""


def correlation_info(description, inputs_description):
    """Info of a module comparing predicted and true real values."""
    return info(description, inputs_description, predictions=datasets.Value("float64"),
                references=datasets.Value("float64"))


def correlation(key, statistic, predictions, references, return_pvalue):
    """`statistic` (a scipy.stats correlation) of the two sides under `key`; NaN when either side is constant."""
    p, r = np.asarray(predictions, dtype=float), np.asarray(references, dtype=float)
    if len(p) < 2 or np.ptp(p) == 0 or np.ptp(r) == 0:
        value, pvalue = float("nan"), float("nan")  # undefined for constant input
    else:
        value, pvalue = (float(x) for x in statistic(p, r))
    return {key: value, "p-value": pvalue} if return_pvalue else {key: value}
