"""Classification metrics: thin wrappers over scikit-learn's, which are the reference.

What the wrappers add: NumPy or CuPy inputs (copied to the host), scores or
probabilities ``(N, C)`` accepted wherever labels are (the label is the argmax,
as a model's ``predict`` output needs), and ValueErrors that name the metric and
the mismatched lengths or shapes instead of a silently wrong number.

    accuracy = (number of i with y_pred[i] == y_true[i]) / N
    precision = TP / (TP + FP)      recall = TP / (TP + FN)      f1 = 2 P R / (P + R)

``average='binary'`` scores class ``pos_label`` (1) alone; ``'macro'`` averages
the per-class values with equal weight. Undefined ratios (no predicted
positives, say) count as 0.
"""
from __future__ import annotations

import numpy as np

from .backend import to_numpy

__all__ = ["accuracy", "precision", "recall", "f1", "confusion_matrix", "roc_curve", "auc",
           "roc_auc", "get_metric", "METRICS"]

_AVERAGES = ("binary", "macro", "micro", "weighted")


def _as_labels(y, what: str, owner: str) -> np.ndarray:
    """Labels ``(N,)`` from labels, or from scores / one-hot ``(N, C)`` by argmax."""
    y = to_numpy(y)
    if y.ndim == 2 and y.shape[1] > 1:
        return y.argmax(axis=1)
    if y.ndim == 2:
        # One column is a binary score, and its threshold (0 for logits, 0.5 for
        # probabilities) is the caller's to choose; an argmax would always say 0.
        raise ValueError(f"{owner} expected {what} as labels (N,) or scores (N, C) with C >= 2, "
                         f"got shape {y.shape}; threshold one-column scores into labels first")
    if y.ndim != 1:
        raise ValueError(f"{owner} expected {what} as labels (N,) or scores (N, C), got shape {y.shape}")
    return y


def _label_pair(y_true, y_pred, owner: str):
    y_true = _as_labels(y_true, "y_true", owner)
    y_pred = _as_labels(y_pred, "y_pred", owner)
    _check_same_length(y_true, y_pred, owner, ("y_true", "y_pred"))
    return y_true, y_pred


def _check_same_length(a, b, owner: str, names) -> None:
    if len(a) != len(b):
        raise ValueError(f"{owner} expected {names[0]} and {names[1]} of the same length, "
                         f"got {len(a)} and {len(b)}")
    if len(a) == 0:
        raise ValueError(f"{owner} got no samples")


def accuracy(y_true, y_pred) -> float:
    """Fraction of samples whose predicted label is the true one; ``y_pred`` labels or scores (N, C)."""
    from sklearn.metrics import accuracy_score

    return float(accuracy_score(*_label_pair(y_true, y_pred, "accuracy")))


def _precision_recall_f1(score, owner, y_true, y_pred, average, pos_label) -> float:
    if average not in _AVERAGES:
        raise ValueError(f"{owner} expected average in {_AVERAGES}, got {average!r}")
    y_true, y_pred = _label_pair(y_true, y_pred, owner)
    return float(score(y_true, y_pred, average=average, pos_label=pos_label, zero_division=0))


def precision(y_true, y_pred, average: str = "binary", pos_label=1) -> float:
    """``TP / (TP + FP)``: of the samples predicted positive, the fraction that are."""
    from sklearn.metrics import precision_score

    return _precision_recall_f1(precision_score, "precision", y_true, y_pred, average, pos_label)


def recall(y_true, y_pred, average: str = "binary", pos_label=1) -> float:
    """``TP / (TP + FN)``: of the positive samples, the fraction predicted positive."""
    from sklearn.metrics import recall_score

    return _precision_recall_f1(recall_score, "recall", y_true, y_pred, average, pos_label)


def f1(y_true, y_pred, average: str = "binary", pos_label=1) -> float:
    """Harmonic mean of precision and recall, ``2 P R / (P + R)``."""
    from sklearn.metrics import f1_score

    return _precision_recall_f1(f1_score, "f1", y_true, y_pred, average, pos_label)


def confusion_matrix(y_true, y_pred, num_classes: int | None = None) -> np.ndarray:
    """``C[i, j]`` = number of samples of true class ``i`` predicted as class ``j`` (int64).

    Integer labels give a ``(K, K)`` matrix with ``K = num_classes`` (default: the
    largest label + 1), so row ``i`` is always class ``i`` even when a class is
    absent; other labels (strings, negatives) get sorted-unique order, as scikit-learn.
    """
    from sklearn.metrics import confusion_matrix as sklearn_confusion_matrix

    y_true, y_pred = _label_pair(y_true, y_pred, "confusion_matrix")
    integer = np.issubdtype(y_true.dtype, np.integer) and np.issubdtype(y_pred.dtype, np.integer)
    if num_classes is not None:
        if not integer:
            raise ValueError("confusion_matrix(num_classes=...) needs integer labels")
        if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
            raise ValueError(f"confusion_matrix expected num_classes >= 1, got {num_classes!r}")
        low, high = min(y_true.min(), y_pred.min()), max(y_true.max(), y_pred.max())
        if low < 0 or high >= num_classes:
            raise ValueError(f"confusion_matrix got labels in {low}..{high}, outside "
                             f"[0, {num_classes}) for num_classes={num_classes}")
    elif integer and min(y_true.min(), y_pred.min()) >= 0:
        num_classes = int(max(y_true.max(), y_pred.max())) + 1
    labels = None if num_classes is None else np.arange(num_classes)
    return sklearn_confusion_matrix(y_true, y_pred, labels=labels).astype(np.int64)


def _binary_scores(scores, owner: str) -> np.ndarray:
    scores = to_numpy(scores)
    if scores.ndim == 2 and scores.shape[1] == 2:
        return scores[:, 1]  # the positive class's column of a two-class output
    if scores.ndim != 1:
        raise ValueError(f"{owner} expected scores of shape (N,) or (N, 2) for a binary problem, got "
                         f"{scores.shape}; for one class of many pass scores[:, k] and y_true == k")
    return scores


def roc_curve(y_true, scores, pos_label=None):
    """``(fpr, tpr, thresholds)`` of a binary problem as the decision threshold falls.

    ``scores`` are higher for "more positive" (probabilities or logits), shape
    ``(N,)`` or ``(N, 2)`` (the second column is used).
    """
    from sklearn.metrics import roc_curve as sklearn_roc_curve

    y_true = to_numpy(y_true)
    scores = _binary_scores(scores, "roc_curve")
    _check_same_length(y_true, scores, "roc_curve", ("y_true", "scores"))
    return sklearn_roc_curve(y_true, scores, pos_label=pos_label)


def auc(x, y) -> float:
    """Area under the curve through points ``(x[i], y[i])`` by the trapezoid rule (``x`` monotonic).

    ``auc(*roc_curve(y_true, scores)[:2])`` is the ROC AUC; :func:`roc_auc` does both.
    """
    from sklearn.metrics import auc as sklearn_auc

    x, y = to_numpy(x), to_numpy(y)
    if x.ndim != 1 or y.ndim != 1:
        raise ValueError(f"auc expected 1-D x and y, got shapes {x.shape} and {y.shape}")
    _check_same_length(x, y, "auc", ("x", "y"))
    return float(sklearn_auc(x, y))


def roc_auc(y_true, scores) -> float:
    """Area under the ROC curve of a binary problem: the chance a random positive outscores a random negative."""
    from sklearn.metrics import roc_auc_score

    y_true = to_numpy(y_true)
    scores = _binary_scores(scores, "roc_auc")
    _check_same_length(y_true, scores, "roc_auc", ("y_true", "scores"))
    return float(roc_auc_score(y_true, scores))


def _macro(score):
    def macro_score(y_true, y_pred):
        return score(y_true, y_pred, average="macro")
    macro_score.__name__ = score.__name__
    macro_score.__doc__ = f"Macro-averaged {score.__name__} (a training metric)."
    return macro_score


# Names accepted by ``model.compile(metrics=...)``; multi-class, so macro-averaged.
METRICS = {"accuracy": accuracy, "precision": _macro(precision), "recall": _macro(recall),
           "f1": _macro(f1)}


def get_metric(metric):
    """A metric function ``f(y_true, y_pred) -> float`` from a name in :data:`METRICS` or a callable."""
    if callable(metric):
        return metric
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; expected a callable or one of {sorted(METRICS)}")
    return METRICS[metric]
