"""Mean squared error (or its root) between predicted and true values.

A local `evaluate` module with the interface of the hub's `mse`, so it loads with no network:
``evaluate.load("<path>/mse.py")`` (or ``llmkit.metrics.load("mse")``).
"""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = "MSE = mean((prediction - reference)^2); with squared=False, its square root (RMSE)."
_KWARGS_DESCRIPTION = """
Args:
    predictions (list of float): predicted values.
    references (list of float): true values.
    sample_weight (list of float): per-example weights.
    squared (bool): MSE (default) or, when False, RMSE.
Returns:
    mse (float).
Example:
    >>> mse.compute(references=[1.0, 2.0, 3.0], predictions=[1.0, 2.5, 2.0])
    {'mse': 0.4166666666666667}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Mse(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(description=_DESCRIPTION, citation="", inputs_description=_KWARGS_DESCRIPTION,
                                   features=datasets.Features({"predictions": datasets.Value("float64"),
                                                               "references": datasets.Value("float64")}))

    def _compute(self, predictions, references, sample_weight=None, squared=True):
        errors = (np.asarray(predictions, dtype=float) - np.asarray(references, dtype=float)) ** 2
        mse = float(np.average(errors, weights=sample_weight))
        return {"mse": mse if squared else float(np.sqrt(mse))}
