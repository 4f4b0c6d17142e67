"""Spearman rank correlation coefficient between predicted and true values (-1 to 1).

A local `evaluate` module with the interface of the hub's `spearmanr`, so it loads with no network:
``evaluate.load("<path>/spearmanr.py")`` (or ``llmkit.metrics.load("spearmanr")``).
"""

import evaluate
from scipy import stats

from llmkit.metric_modules._shared import CORRELATION_ARGS, correlation, correlation_info

_DESCRIPTION = "Spearman rank correlation coefficient, computed by scipy.stats.spearmanr; NaN when either side is constant."
_KWARGS_DESCRIPTION = CORRELATION_ARGS + """Returns:
    spearmanr (float), and p-value (float) when asked.
Example:
    >>> spearmanr.compute(references=[1.0, 2.0, 3.0, 4.0], predictions=[1.1, 1.9, 3.5, 3.9])
    {'spearmanr': 1.0}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Spearmanr(evaluate.Metric):
    def _info(self):
        return correlation_info(_DESCRIPTION, _KWARGS_DESCRIPTION)

    def _compute(self, predictions, references, return_pvalue=False):
        return correlation("spearmanr", stats.spearmanr, predictions, references, return_pvalue)
