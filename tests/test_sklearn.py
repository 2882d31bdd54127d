"""CNNClassifier / CNNRegressor behave as scikit-learn estimators (clone, grid search, score)."""
import numpy as np
import pytest
from sklearn.base import clone
from sklearn.metrics import accuracy_score, r2_score
from sklearn.model_selection import GridSearchCV

import minicnn
from minicnn import data
from minicnn.layers import Conv2D, Dense, Flatten, MaxPool2D, Sequential
from minicnn.sklearn import CNNClassifier, CNNRegressor


def build_cnn(kernel_size=3, units=16, num_classes=10):
    return Sequential([Conv2D(6, kernel_size, padding="same", activation="relu"), MaxPool2D(),
                       Flatten(), Dense(units, activation="relu"), Dense(num_classes)])


@pytest.fixture(scope="module")
def digits():
    x, y = data.load_digits()
    return x[:600], y[:600]


def test_params_include_build_params_and_clone_round_trips():
    estimator = CNNClassifier(build_cnn, epochs=2, lr=5e-3, kernel_size=5, units=8)
    params = estimator.get_params()
    assert params["kernel_size"] == 5 and params["units"] == 8 and params["epochs"] == 2
    assert set(params) == {"build_fn", "epochs", "batch_size", "optimizer", "lr", "verbose",
                           "kernel_size", "units"}
    copy = clone(estimator)
    assert copy.get_params() == params
    copy.set_params(kernel_size=3, lr=1e-3)
    assert copy.kernel_size == 3 and copy.lr == 1e-3 and estimator.kernel_size == 5
    with pytest.raises(ValueError, match="no parameter 'filters'"):
        copy.set_params(filters=4)


def test_classifier_fits_predicts_and_scores(digits):
    x, y = digits
    minicnn.seed(0)
    labels = np.array(list("abcdefghij"))[y]  # arbitrary label values round-trip through classes_
    clf = CNNClassifier(build_cnn, epochs=6, lr=5e-3, units=32).fit(x[:450], labels[:450])
    assert list(clf.classes_) == list("abcdefghij")
    proba = clf.predict_proba(x[450:])
    assert proba.shape == (150, 10)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-6)
    predicted = clf.predict(x[450:])
    np.testing.assert_array_equal(predicted, clf.classes_[proba.argmax(axis=1)])
    assert clf.score(x[450:], labels[450:]) == pytest.approx(accuracy_score(labels[450:], predicted))
    assert clf.score(x[450:], labels[450:]) > 0.6  # chance is 0.1
    # num_classes was filled from the data: a 3-class problem gets 3 outputs
    three = CNNClassifier(build_cnn, epochs=1).fit(x[:60], y[:60] % 3)
    assert three.predict_proba(x[:5]).shape == (5, 3)


def test_unfitted_estimator_raises():
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError):
        CNNClassifier(build_cnn).predict(np.zeros((2, 1, 8, 8), np.float32))


def test_grid_search_over_kernel_sizes_and_dense_widths(digits):
    x, y = digits
    minicnn.seed(0)
    search = GridSearchCV(CNNClassifier(build_cnn, epochs=3, lr=1e-2, kernel_size=3, units=16),
                          {"kernel_size": [3, 5], "units": [8, 24]}, cv=2)
    search.fit(x[:300], y[:300])
    assert len(search.cv_results_["params"]) == 4
    assert {(p["kernel_size"], p["units"]) for p in search.cv_results_["params"]} == \
        {(3, 8), (3, 24), (5, 8), (5, 24)}
    assert np.all(np.isfinite(search.cv_results_["mean_test_score"]))
    best = search.best_estimator_
    assert best.model_.layers[0].params["weight"].shape[2:] == (best.kernel_size,) * 2
    assert best.model_.layers[3].params["weight"].shape[0] == best.units
    assert search.score(x[300:400], y[300:400]) > 0.3  # chance is 0.1


def test_regressor_learns_a_linear_function_and_scores_r2():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((300, 1, 2, 2)).astype(np.float32)
    y = x.reshape(300, 4) @ np.array([1.0, -1.0, 0.5, 2.0]) + 0.5

    def build_linear(num_outputs=1):
        return Sequential([Flatten(), Dense(num_outputs)])

    minicnn.seed(0)
    reg = CNNRegressor(build_linear, epochs=40, lr=3e-2, batch_size=30).fit(x, y)
    predicted = reg.predict(x)
    assert predicted.shape == (300,)
    assert reg.score(x, y) == pytest.approx(r2_score(y, predicted))
    assert reg.score(x, y) > 0.99
