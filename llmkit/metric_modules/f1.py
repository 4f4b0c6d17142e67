"""F1: the harmonic mean of precision and recall.

A local `evaluate` module with the interface of the hub's `f1`, so it loads with no network:
``evaluate.load("<path>/f1.py")`` (or ``llmkit.metrics.load("f1")``).
"""

import evaluate

from llmkit.metric_modules._shared import AVERAGED_ARGS, averaged, label_info

_DESCRIPTION = "F1 = 2 TP / (2 TP + FP + FN), per label, then averaged as asked."
_KWARGS_DESCRIPTION = AVERAGED_ARGS + """Returns:
    f1 (float, or an array of one value per label when average is None).
Example:
    >>> f1.compute(references=[0, 1, 2, 0, 1, 2], predictions=[0, 2, 1, 0, 0, 1], average="macro")
    {'f1': 0.26666666666666666}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class F1(evaluate.Metric):
    def _info(self):
        return label_info(_DESCRIPTION, _KWARGS_DESCRIPTION, self.config_name)

    def _compute(self, predictions, references, labels=None, pos_label=1, average="binary", zero_division=0.0):
        value = averaged(predictions, references, labels, pos_label, average, zero_division,
                         ratio_of=lambda tp, fp, fn: (2 * tp, 2 * tp + fp + fn))
        return {"f1": value}
