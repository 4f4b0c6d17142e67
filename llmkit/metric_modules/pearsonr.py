"""Pearson linear correlation coefficient between predicted and true values (-1 to 1).

A local `evaluate` module with the interface of the hub's `pearsonr`, so it loads with no network:
``evaluate.load("<path>/pearsonr.py")`` (or ``llmkit.metrics.load("pearsonr")``).
"""

import datasets
import evaluate
import numpy as np
from scipy import stats

_DESCRIPTION = "Pearson linear correlation coefficient, computed by scipy.stats.pearsonr; NaN when either side is constant."
_KWARGS_DESCRIPTION = """
Args:
    predictions (list of float): predicted values.
    references (list of float): true values.
    return_pvalue (bool): also return the two-sided p-value.
Returns:
    pearsonr (float), and p-value (float) when asked.
Example:
    >>> pearsonr.compute(references=[1.0, 2.0, 3.0, 4.0], predictions=[1.1, 1.9, 3.5, 3.9])
    {'pearsonr': 0.9768308314557044}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Pearsonr(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(description=_DESCRIPTION, citation="", inputs_description=_KWARGS_DESCRIPTION,
                                   features=datasets.Features({"predictions": datasets.Value("float64"),
                                                               "references": datasets.Value("float64")}))

    def _compute(self, predictions, references, return_pvalue=False):
        p, r = np.asarray(predictions, dtype=float), np.asarray(references, dtype=float)
        if len(p) < 2 or np.ptp(p) == 0 or np.ptp(r) == 0:
            value, pvalue = float("nan"), float("nan")  # undefined for constant input
        else:
            value, pvalue = (float(x) for x in stats.pearsonr(p, r))
        return {"pearsonr": value, "p-value": pvalue} if return_pvalue else {"pearsonr": value}
