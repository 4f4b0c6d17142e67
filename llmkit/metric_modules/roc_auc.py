"""ROC AUC of a binary classifier: the probability that a random positive scores above a random negative.

A local `evaluate` module with the interface of the hub's `roc_auc` (binary configuration), so it loads with
no network: ``evaluate.load("<path>/roc_auc.py")`` (or ``llmkit.metrics.load("roc_auc")``).
"""

import datasets
import evaluate
import numpy as np
from scipy.stats import rankdata

from llmkit.metric_modules._shared import info

_DESCRIPTION = "Area under the ROC curve, from the Mann-Whitney rank statistic (tied scores count one half)."
_KWARGS_DESCRIPTION = """
Args:
    references (list of int): true labels, 0 or 1.
    prediction_scores (list of float): the score of the positive class (a probability or a logit).
Returns:
    roc_auc (float).
Example:
    >>> roc_auc.compute(references=[0, 0, 1, 1], prediction_scores=[0.1, 0.4, 0.35, 0.8])
    {'roc_auc': 0.75}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class ROCAUC(evaluate.Metric):
    def _info(self):
        return info(_DESCRIPTION, _KWARGS_DESCRIPTION, prediction_scores=datasets.Value("float64"),
                    references=datasets.Value("int32"))

    def _compute(self, references, prediction_scores):
        r = np.asarray(references)
        if not set(np.unique(r).tolist()) <= {0, 1}:
            raise ValueError("roc_auc expects binary references (0 or 1)")
        positives, negatives = int((r == 1).sum()), int((r == 0).sum())
        if positives == 0 or negatives == 0:
            raise ValueError("roc_auc is undefined when the references hold only one class")
        ranks = rankdata(np.asarray(prediction_scores, dtype=float))
        auc = (ranks[r == 1].sum() - positives * (positives + 1) / 2) / (positives * negatives)
        return {"roc_auc": float(auc)}
