"""minicnn.metrics against values worked out by hand on small examples."""
import numpy as np
import pytest

from minicnn import metrics
from minicnn.metrics import (accuracy, auc, confusion_matrix, f1, get_metric, precision, recall,
                             roc_auc, roc_curve)

# Binary example 1: TP = 3 (at 1, 4, 5), FN = 1 (at 2), FP = 0, TN = 2.
Y_TRUE_1 = [0, 1, 1, 0, 1, 1]
Y_PRED_1 = [0, 1, 0, 0, 1, 1]
# Binary example 2: TP = 3 (0, 4, 7), FP = 2 (1, 6), FN = 1 (2), TN = 2 (3, 5).
Y_TRUE_2 = [1, 0, 1, 0, 1, 0, 0, 1]
Y_PRED_2 = [1, 1, 0, 0, 1, 0, 1, 1]
# Three classes: per class (P, R) = (1/2, 1/2), (2/3, 1), (1, 1/2).
Y_TRUE_3 = [0, 0, 1, 1, 2, 2]
Y_PRED_3 = [0, 1, 1, 1, 2, 0]


@pytest.mark.parametrize("y_true,y_pred,expected", [
    (Y_TRUE_1, Y_PRED_1, dict(accuracy=5 / 6, precision=1.0, recall=3 / 4, f1=6 / 7)),
    (Y_TRUE_2, Y_PRED_2, dict(accuracy=5 / 8, precision=3 / 5, recall=3 / 4, f1=2 / 3)),
])
def test_binary_metrics_by_hand(y_true, y_pred, expected):
    assert accuracy(y_true, y_pred) == pytest.approx(expected["accuracy"])
    assert precision(y_true, y_pred) == pytest.approx(expected["precision"])
    assert recall(y_true, y_pred) == pytest.approx(expected["recall"])
    assert f1(y_true, y_pred) == pytest.approx(expected["f1"])


def test_macro_metrics_by_hand():
    assert accuracy(Y_TRUE_3, Y_PRED_3) == pytest.approx(4 / 6)
    assert precision(Y_TRUE_3, Y_PRED_3, average="macro") == pytest.approx((1 / 2 + 2 / 3 + 1) / 3)
    assert recall(Y_TRUE_3, Y_PRED_3, average="macro") == pytest.approx((1 / 2 + 1 + 1 / 2) / 3)
    # per-class F1 = 1/2, 4/5, 2/3
    assert f1(Y_TRUE_3, Y_PRED_3, average="macro") == pytest.approx((1 / 2 + 4 / 5 + 2 / 3) / 3)
    assert get_metric("f1")(Y_TRUE_3, Y_PRED_3) == pytest.approx((1 / 2 + 4 / 5 + 2 / 3) / 3)


def test_no_predicted_positives_counts_as_zero_precision():
    assert precision([1, 0, 1], [0, 0, 0]) == 0.0


def test_scores_and_one_hot_are_reduced_by_argmax():
    scores = np.array([[2.0, 1.0, 0.0], [0.1, 0.3, 0.2], [0.0, 0.0, 5.0], [3.0, 0.0, 0.0]])  # -> 0, 1, 2, 0
    y_true = np.array([0, 1, 1, 0])
    assert accuracy(y_true, scores) == pytest.approx(3 / 4)
    one_hot = np.eye(3)[y_true]
    assert accuracy(one_hot, scores) == pytest.approx(3 / 4)
    np.testing.assert_array_equal(confusion_matrix(y_true, scores), [[2, 0, 0], [0, 1, 1], [0, 0, 0]])


def test_confusion_matrix_by_hand():
    cm = confusion_matrix(Y_TRUE_3, Y_PRED_3)
    np.testing.assert_array_equal(cm, [[1, 1, 0], [0, 2, 0], [1, 0, 1]])  # rows true, columns predicted
    assert cm.dtype == np.int64
    # an absent class keeps its row: labels 0 and 2 give a 3x3 matrix with an empty row 1
    np.testing.assert_array_equal(confusion_matrix([0, 2, 2], [0, 2, 0]), [[1, 0, 0], [0, 0, 0], [1, 0, 1]])
    assert confusion_matrix([0, 1], [1, 1], num_classes=4).shape == (4, 4)
    cm_str = confusion_matrix(np.array(["cat", "dog", "dog"]), np.array(["cat", "cat", "dog"]))
    np.testing.assert_array_equal(cm_str, [[1, 0], [1, 1]])


def test_roc_curve_and_auc_by_hand():
    y = [0, 0, 1, 1]
    scores = [0.1, 0.4, 0.35, 0.8]
    fpr, tpr, thresholds = roc_curve(y, scores)
    np.testing.assert_allclose(fpr, [0, 0, 0.5, 0.5, 1])
    np.testing.assert_allclose(tpr, [0, 0.5, 0.5, 1, 1])
    np.testing.assert_allclose(thresholds[1:], [0.8, 0.4, 0.35, 0.1])
    # of the 4 (positive, negative) pairs, 3 have the positive scored higher
    assert auc(fpr, tpr) == pytest.approx(3 / 4)
    assert roc_auc(y, scores) == pytest.approx(3 / 4)
    two_columns = np.stack([1 - np.array(scores), scores], axis=1)
    assert roc_auc(y, two_columns) == pytest.approx(3 / 4)
    assert auc([0, 1], [0, 1]) == pytest.approx(0.5)
    assert auc([0, 0, 1], [0, 1, 1]) == pytest.approx(1.0)


def test_cupy_inputs_if_available():
    from minicnn import backend

    if "cupy" not in backend.available():
        pytest.skip("CuPy with a GPU is not available")
    cp = backend.require_cupy()
    assert accuracy(cp.asarray(Y_TRUE_1), cp.asarray(Y_PRED_1)) == pytest.approx(5 / 6)


def test_bad_inputs():
    with pytest.raises(ValueError, match=r"accuracy expected y_true and y_pred of the same length, got 3 and 2"):
        accuracy([0, 1, 1], [0, 1])
    with pytest.raises(ValueError, match=r"precision expected average in .*got 'samples'"):
        precision([0, 1], [0, 1], average="samples")
    with pytest.raises(ValueError, match=r"scores \(N, C\) with C >= 2, got shape \(3, 1\)"):
        accuracy([0, 1, 1], np.array([[0.2], [0.9], [0.7]]))
    with pytest.raises(ValueError, match=r"recall expected y_pred as labels \(N,\) or scores \(N, C\), got shape \(2, 2, 2\)"):
        recall([0, 1], np.zeros((2, 2, 2)))
    with pytest.raises(ValueError, match=r"f1 got no samples"):
        f1([], [])
    with pytest.raises(ValueError, match=r"labels in 0..5, outside \[0, 3\)"):
        confusion_matrix([0, 1, 5], [0, 1, 2], num_classes=3)
    with pytest.raises(ValueError, match=r"roc_curve expected scores of shape \(N,\) or \(N, 2\).*got \(2, 3\)"):
        roc_curve([0, 1], np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"roc_auc expected y_true and scores of the same length, got 2 and 3"):
        roc_auc([0, 1], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match=r"auc expected x and y of the same length, got 2 and 3"):
        auc([0, 1], [0, 1, 1])
    with pytest.raises(ValueError, match=r"unknown metric 'top5'; expected a callable or one of"):
        get_metric("top5")
    assert get_metric(accuracy) is accuracy and metrics.METRICS["accuracy"] is accuracy
