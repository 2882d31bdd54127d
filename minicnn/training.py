"""compile / fit / evaluate / predict, shared by ``Sequential`` and ``Autoencoder``.

One training step is the whole story of backpropagation without autograd::

    pred = model.forward(x, training=True)        # every layer caches what it needs
    loss = loss_fn.forward(pred, y) + model.regularization_loss()
    model.backward(loss_fn.backward())            # every layer fills layer.grads
    optimizer.step()                              # param -= lr * update(grad), in place

``fit`` wraps that step in epochs and mini-batches (shuffled with minicnn's
seeded generator, so ``minicnn.seed(n)`` reproduces a run), reports progress
with tqdm, runs callbacks, and records per-epoch results in a :class:`History`.

Data stays in host (NumPy) memory; each mini-batch is moved to the model's
device just before its step, so a GPU never holds more than one batch of data.
"""
from __future__ import annotations

import math
import signal
import threading
import time

import numpy as np

from . import backend
from .rng import get_rng

__all__ = ["History", "TrainingMixin", "METRICS"]


class History:
    """Per-epoch results of :meth:`TrainingMixin.fit`.

    Attributes
    ----------
    history : dict[str, list[float]]
        ``'loss'``, each metric (``'accuracy'``), their ``'val_'`` versions when
        there is validation data, and ``'lr'``; one entry per completed epoch.
    epoch : list[int]
        The (0-based) indices of the completed epochs.
    interrupted : bool
        True when training was stopped with Ctrl-C.
    """

    def __init__(self):
        self.history: dict[str, list[float]] = {}
        self.epoch: list[int] = []
        self.interrupted = False

    def append(self, epoch: int, logs: dict) -> None:
        self.epoch.append(epoch)
        for key, value in logs.items():
            self.history.setdefault(key, []).append(float(value))

    def __repr__(self) -> str:
        return f"History(epochs={len(self.epoch)}, keys={list(self.history)})"


# ---------------------------------------------------------------------- metrics
# A metric returns the *mean* over the batch, so weighting by batch size and
# dividing by the sample count gives the exact epoch value.

def _class_predictions(pred, threshold):
    """Class index per sample: argmax of scores, or a threshold for one output unit."""
    if pred.ndim >= 2 and pred.shape[1] > 1:
        return pred.argmax(axis=1)
    return (pred.reshape(pred.shape[0], -1)[:, 0] > threshold).astype(np.int64)


def accuracy_metric(pred, target, threshold=0.0):
    """Fraction of samples whose predicted class equals the target class.

    ``target`` holds class indices, or one-hot / probability rows (argmax taken).
    """
    labels = target.argmax(axis=1) if target.ndim == pred.ndim and target.ndim >= 2 \
        and target.shape[1] > 1 else target.reshape(target.shape[0], -1)[:, 0]
    return float((_class_predictions(pred, threshold) == labels).mean())


def mse_metric(pred, target, threshold=None):
    return float(((pred - target.reshape(pred.shape)) ** 2).mean())


def mae_metric(pred, target, threshold=None):
    return float(abs(pred - target.reshape(pred.shape)).mean())


METRICS = {"accuracy": accuracy_metric, "acc": accuracy_metric, "mse": mse_metric, "mae": mae_metric}


def _resolve_metric(metric):
    if callable(metric):
        return getattr(metric, "__name__", "metric"), metric
    if metric not in METRICS:
        raise ValueError(f"compile got unknown metric {metric!r}; expected one of "
                         f"{sorted(METRICS)} or a function f(pred, target) -> float")
    return ("accuracy" if metric == "acc" else metric), METRICS[metric]


class _DeferredInterrupt:
    """Turn Ctrl-C into a flag checked between batches, so a step is never cut in half.

    A second Ctrl-C raises at once, for a user who really wants out.
    """

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
        return False


class TrainingMixin:
    """Keras-style training for a layer container (mixed into ``Sequential``).

    Expects the host class to be a :class:`~minicnn.layers.Layer` with
    ``forward``, ``backward``, ``build``, ``children`` and ``regularization_loss``.
    """

    # ------------------------------------------------------------------ setup
    def compile(self, optimizer="adam", loss="cross_entropy", metrics=("accuracy",), **optimizer_kwargs):
        """Choose the optimizer (name or instance; ``lr=`` etc. go to it), the loss and metrics."""
        from .losses import get_loss
        from .optim import get_optimizer

        if isinstance(metrics, str) or callable(metrics):
            metrics = (metrics,)
        self.loss = get_loss(loss)
        self.optimizer = get_optimizer(optimizer, self, **optimizer_kwargs)
        self.metrics = dict(_resolve_metric(m) for m in metrics)  # name -> function
        self.stop_training = False
        return self

    def _require_compiled(self, what: str) -> None:
        if getattr(self, "loss", None) is None or getattr(self, "optimizer", None) is None:
            raise RuntimeError(f"{self.name}.{what}() needs a compiled model; call "
                               f"model.compile(optimizer='adam', loss='cross_entropy') first")

    def _metric_threshold(self) -> float:
        # Single-unit classifiers: logits cross zero where probabilities cross one half.
        from_logits = getattr(self.loss, "from_logits", False)
        return 0.0 if type(self.loss).__name__ == "BinaryCrossEntropy" and from_logits else 0.5

    # ------------------------------------------------------------------ input checks
    def _check_data(self, x, y, what: str):
        if not hasattr(x, "shape"):
            x = np.asarray(x)
        if x.ndim < 2:
            raise ValueError(f"{self.name}.{what} expected a batch of samples with a leading "
                             f"batch axis, got x of shape {tuple(x.shape)}")
        if y is not None:
            if not hasattr(y, "shape"):
                y = np.asarray(y)
            if len(x) != len(y):
                raise ValueError(f"{self.name}.{what} got {len(x)} samples in x but {len(y)} "
                                 f"targets in y; they must have the same length")
        if len(x) == 0:
            raise ValueError(f"{self.name}.{what} got no samples (x has shape {tuple(x.shape)})")
        return x, y

    def _ensure_built(self, sample_shape) -> None:
        if not self.built:
            self.build(tuple(int(s) for s in sample_shape))

    def _forward(self, xb, training: bool):
        """Forward one batch; a shape error names the shape the model was built for."""
        try:
            return self.forward(xb, training=training)
        except ValueError as exc:
            got = tuple(int(s) for s in xb.shape[1:])
            if self.input_shape is not None and got != tuple(self.input_shape):
                raise ValueError(f"{self.name} expects input shape {tuple(self.input_shape)}, "
                                 f"got {got} (batch shape {tuple(xb.shape)}): {exc}") from exc
            raise

    def _input_batch(self, xb):
        """A host batch on the model's device, cast first so the transfer moves the final dtype."""
        if not backend.is_cupy_array(xb):
            xb = np.asarray(xb).astype(self.dtype, copy=False)
        return backend.to_device(xb, self.device)

    def _target_batch(self, yb):
        # Class indices stay integers; regression / one-hot targets take the model's dtype.
        if not backend.is_cupy_array(yb) and np.asarray(yb).dtype.kind == "f":
            yb = np.asarray(yb).astype(self.dtype, copy=False)
        return backend.to_device(yb, self.device)

    def _compute_metrics(self, pred, yb) -> dict:
        threshold = self._metric_threshold()
        logs = {}
        for name, fn in self.metrics.items():
            if fn in METRICS.values():  # built-ins run on the device
                logs[name] = fn(pred, yb, threshold=threshold)
            else:  # user functions get NumPy arrays
                logs[name] = float(fn(backend.to_numpy(pred), backend.to_numpy(yb)))
        return logs

    # ------------------------------------------------------------------ one step
    def train_on_batch(self, x, y) -> dict:
        """One optimisation step on one batch; returns ``{'loss': ..., metric: ...}``."""
        self._require_compiled("train_on_batch")
        x, y = self._check_data(x, y, "train_on_batch")
        self._ensure_built(x.shape[1:])
        xb, yb = self._input_batch(x), self._target_batch(y)
        pred = self._forward(xb, training=True)
        loss = float(self.loss.forward(pred, yb)) + self.regularization_loss()
        self.backward(self.loss.backward())
        self.optimizer.step()
        return {"loss": loss, **self._compute_metrics(pred, yb)}

    # ------------------------------------------------------------------ fit
    def fit(self, x, y, epochs=1, batch_size=32, validation_data=None, callbacks=(), shuffle=True,
            verbose=1, validation_split=0.0) -> History:
        """Train for ``epochs`` passes over ``(x, y)`` in shuffled mini-batches.

        ``validation_split`` holds out the *last* fraction of ``x`` (before shuffling,
        as Keras). ``verbose``: 0 silent, 1 a progress bar per epoch plus a result
        line, 2 the result line only. Ctrl-C stops after the current batch and
        returns the History so far with the trained weights kept.
        """
        self._require_compiled("fit")
        x, y = self._check_data(x, y, "fit")
        if not isinstance(epochs, (int, np.integer)) or epochs < 0:
            raise ValueError(f"{self.name}.fit expected epochs >= 0, got {epochs!r}")
        if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"{self.name}.fit expected batch_size >= 1, got {batch_size!r}")
        if not 0.0 <= validation_split < 1.0:
            raise ValueError(f"{self.name}.fit expected 0 <= validation_split < 1, got {validation_split}")
        if validation_split and validation_data is None:
            n_train = len(x) - int(math.ceil(len(x) * validation_split))
            if n_train < 1:
                raise ValueError(f"{self.name}.fit: validation_split={validation_split} leaves no "
                                 f"training samples out of {len(x)}")
            validation_data = (x[n_train:], y[n_train:])
            x, y = x[:n_train], y[:n_train]
        if validation_data is not None:
            if len(validation_data) != 2:
                raise ValueError(f"{self.name}.fit expected validation_data=(x_val, y_val), "
                                 f"got a sequence of length {len(validation_data)}")
            validation_data = self._check_data(*validation_data, "fit(validation_data)")
        self._ensure_built(x.shape[1:])

        history = History()
        callbacks = list(callbacks)
        for callback in callbacks:
            callback.set_model(self)
        # Nobody needs dL/dx of the data: a container passes the flag on to the layers
        # that receive its input (past a leading Flatten, to the first Dense).
        saved_skip, self.skip_input_grad = self.skip_input_grad, True
        self.stop_training = False
        try:
            with _DeferredInterrupt() as interrupt:
                for callback in callbacks:
                    callback.on_train_begin({})
                for epoch in range(epochs):
                    logs = self._run_epoch(x, y, epoch, epochs, batch_size, shuffle, verbose,
                                           validation_data, callbacks, interrupt)
                    if logs is None:  # interrupted mid-epoch: keep only completed epochs
                        history.interrupted = True
                        break
                    for callback in callbacks:
                        callback.on_epoch_end(epoch, logs)
                    history.append(epoch, logs)  # last, as Keras: it records what callbacks added
                    if interrupt.requested:
                        history.interrupted = True
                    if self.stop_training or interrupt.requested:
                        break
                for callback in callbacks:
                    callback.on_train_end({})
        finally:
            self.skip_input_grad = saved_skip
        if history.interrupted and verbose:
            print(f"Training interrupted (Ctrl-C) after {len(history.epoch)} complete epoch(s); "
                  f"keeping the weights trained so far.", flush=True)
        self.history = history
        return history

    def _run_epoch(self, x, y, epoch, epochs, batch_size, shuffle, verbose, validation_data,
                   callbacks, interrupt):
        """One pass over the data; returns the epoch's logs, or None if Ctrl-C cut it short."""
        from tqdm.auto import tqdm

        for callback in callbacks:
            callback.on_epoch_begin(epoch, {})
        n = len(x)
        order = get_rng().permutation(n) if shuffle else np.arange(n)
        n_batches = (n + batch_size - 1) // batch_size
        lr = float(getattr(self.optimizer, "lr", float("nan")))
        totals, seen, start = {}, 0, time.perf_counter()
        bar = tqdm(total=n_batches, desc=f"Epoch {epoch + 1}/{epochs}", unit="batch", leave=True,
                   disable=verbose != 1, dynamic_ncols=True)
        try:
            for batch in range(n_batches):
                index = np.sort(order[batch * batch_size:(batch + 1) * batch_size])
                batch_logs = self.train_on_batch(x[index], y[index])
                seen += len(index)
                for key, value in batch_logs.items():
                    totals[key] = totals.get(key, 0.0) + value * len(index)
                bar.set_postfix({k: f"{v / seen:.4f}" for k, v in totals.items()}, refresh=False)
                bar.update(1)
                try:
                    for callback in callbacks:
                        callback.on_batch_end(batch, batch_logs)
                except KeyboardInterrupt:
                    interrupt.requested = True
                if interrupt.requested and batch < n_batches - 1:
                    return None
        finally:
            bar.close()
        logs = {key: value / seen for key, value in totals.items()}
        if validation_data is not None:
            val = self.evaluate(*validation_data, batch_size=max(batch_size, 256))
            logs.update({f"val_{key}": value for key, value in val.items()})
        logs["lr"] = lr
        if verbose:
            line = " - ".join(f"{k} {v:.4g}" if k == "lr" else f"{k} {v:.4f}" for k, v in logs.items())
            print(f"Epoch {epoch + 1}/{epochs} - {line} - {time.perf_counter() - start:.1f}s", flush=True)
        return logs

    # ------------------------------------------------------------------ inference
    def evaluate(self, x, y, batch_size=256) -> dict:
        """Mean loss (plus any regularization penalty) and metrics over ``(x, y)``, in eval mode."""
        self._require_compiled("evaluate")
        x, y = self._check_data(x, y, "evaluate")
        self._ensure_built(x.shape[1:])
        totals = {"loss": 0.0, **{name: 0.0 for name in self.metrics}}
        for start in range(0, len(x), batch_size):
            xb = self._input_batch(x[start:start + batch_size])
            yb = self._target_batch(y[start:start + batch_size])
            pred = self._forward(xb, training=False)
            batch = {"loss": float(self.loss.forward(pred, yb)) + self.regularization_loss(),
                     **self._compute_metrics(pred, yb)}
            for key, value in batch.items():
                totals[key] += value * len(xb)
        return {key: value / len(x) for key, value in totals.items()}

    def predict(self, x, batch_size=256, to_numpy=True):
        """Model outputs for ``x`` in eval mode, batch by batch (NumPy unless ``to_numpy=False``)."""
        x, _ = self._check_data(x, None, "predict")
        self._ensure_built(x.shape[1:])
        outputs = []
        for start in range(0, len(x), batch_size):
            pred = self._forward(self._input_batch(x[start:start + batch_size]), training=False)
            outputs.append(backend.to_numpy(pred) if to_numpy else pred)
        xp = np if to_numpy else backend.get_array_module(outputs[0])
        return xp.concatenate(outputs, axis=0)

    def save(self, path) -> None:
        """Write architecture and weights to one ``.npz`` (see :mod:`minicnn.serialization`)."""
        from .serialization import save

        save(self, path)
