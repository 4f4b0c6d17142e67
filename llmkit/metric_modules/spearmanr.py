"""Spearman rank correlation coefficient between predicted and true values (-1 to 1).

A local `evaluate` module with the interface of the hub's `spearmanr`, so it loads with no network:
``evaluate.load("<path>/spearmanr.py")`` (or ``llmkit.metrics.load("spearmanr")``).
"""

import datasets
import evaluate
import numpy as np
from scipy import stats

_DESCRIPTION = "Spearman rank correlation coefficient, computed by scipy.stats.spearmanr; NaN when either side is constant."
_KWARGS_DESCRIPTION = """
Args:
    predictions (list of float): predicted values.
    references (list of float): true values.
    return_pvalue (bool): also return the two-sided p-value.
Returns:
    spearmanr (float), and p-value (float) when asked.
Example:
    >>> spearmanr.compute(references=[1.0, 2.0, 3.0, 4.0], predictions=[1.1, 1.9, 3.5, 3.9])
    {'spearmanr': 1.0}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Spearmanr(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(description=_DESCRIPTION, citation="", inputs_description=_KWARGS_DESCRIPTION,
                                   features=datasets.Features({"predictions": datasets.Value("float64"),
                                                               "references": datasets.Value("float64")}))

    def _compute(self, predictions, references, return_pvalue=False):
        p, r = np.asarray(predictions, dtype=float), np.asarray(references, dtype=float)
        if len(p) < 2 or np.ptp(p) == 0 or np.ptp(r) == 0:
            value, pvalue = float("nan"), float("nan")  # undefined for constant input
        else:
            value, pvalue = (float(x) for x in stats.spearmanr(p, r))
        return {"spearmanr": value, "p-value": pvalue} if return_pvalue else {"spearmanr": value}
