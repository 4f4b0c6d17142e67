"""Classification metrics in one pass, computed by scikit-learn: a local `evaluate` module (loads offline).

    evaluate.load("<path>/classification.py").compute(references=[0, 1, 2], predictions=[0, 2, 2])
    evaluate.load("<path>/classification.py", "multilabel")   # 0/1 rows, one column per label

Returns accuracy (multi-label: every label of the row right), f1/precision/recall macro-averaged over the labels
present in the references or predictions (scikit-learn's convention), micro f1; roc_auc when binary `scores`
(the positive class's probability) are given; with `report=True` a per-class report over `num_labels` labels
and, single-label, the confusion matrix.
"""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = "Accuracy, macro/micro F1, macro precision and recall, ROC AUC (binary), per-class report."
_KWARGS = """
Args:
    predictions, references: labels (multilabel config: 0/1 vectors, one column per label).
    num_labels (int): labels of the problem, for the report (default: as many as seen).
    scores (list of float): binary problems: the positive class's score per example, for roc_auc.
    label_names (list of str): names of the report's rows (default: "0", "1", ...).
    report (bool): add per_class, labels and (single-label) confusion_matrix.
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS)
class Classification(evaluate.Metric):
    def _info(self):
        value = datasets.Value("int32")
        kind = datasets.Sequence(value) if self.config_name == "multilabel" else value
        return evaluate.MetricInfo(description=_DESCRIPTION, citation="", inputs_description=_KWARGS,
                                   features=datasets.Features({"predictions": kind, "references": kind}))

    def _compute(self, predictions, references, num_labels=None, scores=None, label_names=None, report=False):
        from sklearn import metrics as sk

        p, r = np.asarray(predictions), np.asarray(references)
        precision, recall, f1, _ = sk.precision_recall_fscore_support(r, p, average="macro", zero_division=0)
        out = {"accuracy": float(sk.accuracy_score(r, p)), "f1_macro": float(f1),
               "f1_micro": float(sk.f1_score(r, p, average="micro", zero_division=0)),
               "precision_macro": float(precision), "recall_macro": float(recall)}
        if scores is not None:  # undefined with one class in the references: NaN, not dropped
            out["roc_auc"] = float(sk.roc_auc_score(r, scores)) if len(np.unique(r)) == 2 else float("nan")
        if report:
            out.update(_report(sk, p, r, num_labels, label_names))
        return out


def _report(sk, p, r, num_labels, label_names):
    labels = list(range(num_labels or (r.shape[1] if r.ndim == 2 else int(max(r.max(), p.max())) + 1)))
    names = [str(n) for n in label_names] if label_names is not None else [str(i) for i in labels]
    precision, recall, f1, support = sk.precision_recall_fscore_support(r, p, labels=labels, average=None,
                                                                       zero_division=0)
    out = {"per_class": {names[i]: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                                    "support": int(support[i])} for i in labels}, "labels": names}
    if r.ndim == 1:
        out["confusion_matrix"] = sk.confusion_matrix(r, p, labels=labels).tolist()
    return out
