"""scikit-learn estimators wrapping a minicnn model, for pipelines and grid search.

``build_fn(**build_params)`` returns an unbuilt ``Sequential``; the estimator
compiles it, trains it in ``fit`` and predicts with it. Every extra keyword of
the constructor is a *build parameter*: it is reported by ``get_params``, can be
changed by ``set_params`` and therefore searched by ``GridSearchCV``::

    def build(kernel_size=3, units=32):
        return Sequential([Conv2D(8, kernel_size, padding='same', activation='relu'),
                           MaxPool2D(), Flatten(), Dense(units, activation='relu'), Dense(10)])

    search = GridSearchCV(CNNClassifier(build, epochs=3, kernel_size=3, units=32),
                          {'kernel_size': [3, 5], 'units': [16, 32]}, cv=3)
    search.fit(x, y)           # x: (N, C, H, W) float32, y: labels

Dense layers infer their input size when first called, so changing a kernel
size does not require changing the Dense layer after it.
"""
from __future__ import annotations

import inspect

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin

from .layers.activations import softmax

__all__ = ["CNNClassifier", "CNNRegressor"]


class _CNNEstimator(BaseEstimator):
    """What the classifier and the regressor share: parameters, building, training."""

    _loss = None
    _metrics: tuple = ()

    def __init__(self, build_fn, epochs=5, batch_size=32, optimizer="adam", lr=1e-3, verbose=0,
                 **build_params):
        self.build_fn = build_fn
        self.epochs = epochs
        self.batch_size = batch_size
        self.optimizer = optimizer
        self.lr = lr
        self.verbose = verbose
        self._build_param_names = sorted(build_params)
        for key, value in build_params.items():
            setattr(self, key, value)

    # sklearn's BaseEstimator reads parameters from the __init__ signature, which cannot
    # list the open-ended build parameters; report and accept them explicitly.
    def get_params(self, deep=True):
        params = super().get_params(deep=deep)
        params.update({key: getattr(self, key) for key in self._build_param_names})
        return params

    def set_params(self, **params):
        own = set(self._get_param_names())
        for key, value in params.items():
            if key not in own and key not in self._build_param_names:
                raise ValueError(f"{type(self).__name__} has no parameter {key!r}; its parameters "
                                 f"are {sorted(own | set(self._build_param_names))} (build parameters "
                                 f"are declared by passing them to the constructor)")
            setattr(self, key, value)
        return self

    def _build_params(self) -> dict:
        return {key: getattr(self, key) for key in self._build_param_names}

    def _make_model(self, extra: dict):
        """``build_fn(**build_params)``, adding ``extra`` arguments the function accepts but was not given."""
        params = self._build_params()
        accepted = inspect.signature(self.build_fn).parameters
        for key, value in extra.items():
            if key in accepted and key not in params:
                params[key] = value
        model = self.build_fn(**params)
        if not hasattr(model, "compile") or not hasattr(model, "fit"):
            raise TypeError(f"{type(self).__name__}: build_fn must return a minicnn Sequential, "
                            f"got {type(model).__name__}")
        return model

    def _fit_model(self, x, target, extra):
        model = self._make_model(extra)
        model.compile(optimizer=self.optimizer, loss=self._loss, metrics=self._metrics, lr=self.lr)
        model.fit(x, target, epochs=self.epochs, batch_size=self.batch_size, verbose=self.verbose)
        self.model_ = model
        self.n_features_in_ = int(np.prod(x.shape[1:]))
        return self

    def _check_x(self, x, fitted: bool):
        x = np.asarray(x, dtype=np.float32)
        if x.ndim < 2:
            raise ValueError(f"{type(self).__name__} expected samples with a leading batch axis, "
                             f"got an array of shape {x.shape}")
        if fitted and not hasattr(self, "model_"):
            from sklearn.exceptions import NotFittedError

            raise NotFittedError(f"This {type(self).__name__} instance is not fitted yet; call fit first")
        return x


class CNNClassifier(ClassifierMixin, _CNNEstimator):
    """A classifier: cross-entropy on the model's logits, labels of any type.

    ``build_fn`` may take ``num_classes`` and ``in_channels``; when it does and
    they are not given as build parameters, they are filled in from the data.
    ``predict_proba`` is the softmax of the logits (``build_fn`` should not end
    in a softmax).
    """

    _loss = "cross_entropy"
    _metrics = ("accuracy",)

    def fit(self, X, y):  # noqa: N803 (scikit-learn's argument names)
        x = self._check_x(X, fitted=False)
        y = np.asarray(y)
        if len(x) != len(y):
            raise ValueError(f"{type(self).__name__}.fit got {len(x)} samples in X but {len(y)} labels in y")
        self.classes_, encoded = np.unique(y, return_inverse=True)
        extra = {"num_classes": len(self.classes_)}
        if x.ndim == 4:
            extra["in_channels"] = x.shape[1]
        return self._fit_model(x, encoded.astype(np.int64).ravel(), extra)

    def predict_proba(self, X):  # noqa: N803
        x = self._check_x(X, fitted=True)
        logits = self.model_.predict(x)
        return softmax(np.asarray(logits, dtype=np.float64), axis=1)

    def predict(self, X):  # noqa: N803
        proba = self.predict_proba(X)
        return self.classes_[proba.argmax(axis=1)]


class CNNRegressor(RegressorMixin, _CNNEstimator):
    """A regressor: mean squared error; ``score`` is R² as for every scikit-learn regressor."""

    _loss = "mse"

    def fit(self, X, y):  # noqa: N803
        x = self._check_x(X, fitted=False)
        y = np.asarray(y, dtype=np.float32)
        if len(x) != len(y):
            raise ValueError(f"{type(self).__name__}.fit got {len(x)} samples in X but {len(y)} targets in y")
        self._y_1d = y.ndim == 1
        extra = {"in_channels": x.shape[1]} if x.ndim == 4 else {}
        extra["num_outputs"] = 1 if self._y_1d else y.shape[1]
        return self._fit_model(x, y.reshape(len(y), -1), extra)

    def predict(self, X):  # noqa: N803
        x = self._check_x(X, fitted=True)
        pred = self.model_.predict(x)
        return pred.reshape(len(pred), -1)[:, 0] if self._y_1d else pred
