"""Precision: of the examples predicted as a label, the fraction that truly have it.

A local `evaluate` module with the interface of the hub's `precision`, so it loads with no network:
``evaluate.load("<path>/precision.py")`` (or ``llmkit.metrics.load("precision")``).
"""

import evaluate

from llmkit.metric_modules._shared import AVERAGED_ARGS, averaged, label_info

_DESCRIPTION = "Precision = TP / (TP + FP), per label, then averaged as asked."
_KWARGS_DESCRIPTION = AVERAGED_ARGS + """Returns:
    precision (float, or an array of one value per label when average is None).
Example:
    >>> precision.compute(references=[0, 1, 2, 0, 1, 2], predictions=[0, 2, 1, 0, 0, 1], average="macro")
    {'precision': 0.2222222222222222}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Precision(evaluate.Metric):
    def _info(self):
        return label_info(_DESCRIPTION, _KWARGS_DESCRIPTION, self.config_name)

    def _compute(self, predictions, references, labels=None, pos_label=1, average="binary", zero_division=0.0):
        value = averaged(predictions, references, labels, pos_label, average, zero_division,
                         ratio_of=lambda tp, fp, fn: (tp, tp + fp))
        return {"precision": value}
