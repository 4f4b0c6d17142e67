"""Pearson linear correlation coefficient between predicted and true values (-1 to 1).

A local `evaluate` module with the interface of the hub's `pearsonr`, so it loads with no network:
``evaluate.load("<path>/pearsonr.py")`` (or ``llmkit.metrics.load("pearsonr")``).
"""

import evaluate
from scipy import stats

from llmkit.metric_modules._shared import CORRELATION_ARGS, correlation, correlation_info

_DESCRIPTION = "Pearson linear correlation coefficient, computed by scipy.stats.pearsonr; NaN when either side is constant."
_KWARGS_DESCRIPTION = CORRELATION_ARGS + """Returns:
    pearsonr (float), and p-value (float) when asked.
Example:
    >>> pearsonr.compute(references=[1.0, 2.0, 3.0, 4.0], predictions=[1.1, 1.9, 3.5, 3.9])
    {'pearsonr': 0.9768308314557044}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Pearsonr(evaluate.Metric):
    def _info(self):
        return correlation_info(_DESCRIPTION, _KWARGS_DESCRIPTION)

    def _compute(self, predictions, references, return_pvalue=False):
        return correlation("pearsonr", stats.pearsonr, predictions, references, return_pvalue)
