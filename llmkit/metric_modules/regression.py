"""Regression metrics in one pass (scikit-learn and scipy): a local `evaluate` module (loads offline).

    evaluate.load("<path>/regression.py").compute(references=[1.0, 2.0], predictions=[1.5, 2.5])

Returns mse, and the pearson and spearman correlations (NaN when either side is constant: undefined).
"""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = "Mean squared error, Pearson and Spearman correlation of predicted and true values."
_KWARGS = """
Args:
    predictions (list of float): predicted values.
    references (list of float): true values.
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS)
class Regression(evaluate.Metric):
    def _info(self):
        value = datasets.Value("float64")
        return evaluate.MetricInfo(description=_DESCRIPTION, citation="", inputs_description=_KWARGS,
                                   features=datasets.Features({"predictions": value, "references": value}))

    def _compute(self, predictions, references):
        from scipy import stats
        from sklearn.metrics import mean_squared_error

        p, r = np.asarray(predictions, dtype=float), np.asarray(references, dtype=float)
        constant = len(p) < 2 or np.ptp(p) == 0 or np.ptp(r) == 0
        return {"mse": float(mean_squared_error(r, p)),
                "pearson": float("nan") if constant else float(stats.pearsonr(p, r)[0]),
                "spearman": float("nan") if constant else float(stats.spearmanr(p, r)[0])}
