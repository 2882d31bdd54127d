"""Callbacks: code that ``fit`` runs at fixed points of training.

``fit`` calls, in order::

    on_train_begin(logs)
    for each epoch:  on_epoch_begin(epoch, logs)
                     for each batch: on_batch_end(batch, logs)   # logs: this batch's loss, metrics
                     on_epoch_end(epoch, logs)                   # logs: the epoch's results, val_*, lr
    on_train_end(logs)

A callback reaches the model through ``self.model`` and can end training by
setting ``self.model.stop_training = True`` (that is how ``EarlyStopping`` works).
"""
from __future__ import annotations

import csv
import inspect
import warnings

import numpy as np

from . import backend

__all__ = ["Callback", "EarlyStopping", "ModelCheckpoint", "LearningRateScheduler",
           "CSVLogger", "FilterRecorder"]


class Callback:
    """Base class: every hook does nothing; override the ones you need."""

    model = None

    def set_model(self, model) -> None:
        self.model = model

    def on_train_begin(self, logs=None):
        pass

    def on_epoch_begin(self, epoch, logs=None):
        pass

    def on_batch_end(self, batch, logs=None):
        pass

    def on_epoch_end(self, epoch, logs=None):
        pass

    def on_train_end(self, logs=None):
        pass


class _Monitor:
    """Tracks the best value of one logged quantity (shared by EarlyStopping and ModelCheckpoint)."""

    def __init__(self, owner: str, monitor: str, mode: str, min_delta: float = 0.0):
        if mode not in ("auto", "min", "max"):
            raise ValueError(f"{owner} expected mode 'auto', 'min' or 'max', got {mode!r}")
        if mode == "auto":  # accuracies grow, losses shrink
            mode = "max" if ("acc" in monitor or monitor.endswith("auc")) else "min"
        self.owner, self.monitor, self.mode, self.min_delta = owner, monitor, mode, abs(min_delta)
        self.best = None
        self._warned = False

    def value(self, logs):
        """The monitored value, or None (with one warning) when it is not logged."""
        if logs and self.monitor in logs:
            return float(logs[self.monitor])
        if not self._warned:
            warnings.warn(f"{self.owner} monitors '{self.monitor}', which is not in the epoch logs "
                          f"(available: {sorted(logs or {})}); pass validation data or another monitor",
                          RuntimeWarning, stacklevel=3)
            self._warned = True
        return None

    def improved(self, value) -> bool:
        if self.best is None:
            return True
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta


class EarlyStopping(Callback):
    """Stop when ``monitor`` has not improved for ``patience`` epochs.

    An improvement is a change by more than ``min_delta`` in the right direction
    (``mode='auto'``: up for accuracies, down otherwise). With
    ``restore_best_weights=True`` the model ends training with the weights of
    its best epoch rather than its last.
    """

    def __init__(self, monitor="val_loss", patience=0, min_delta=0.0, mode="auto",
                 restore_best_weights=False, verbose=0):
        if not isinstance(patience, (int, np.integer)) or patience < 0:
            raise ValueError(f"EarlyStopping expected patience >= 0, got {patience!r}")
        self.monitor, self.patience, self.min_delta, self.mode = monitor, int(patience), min_delta, mode
        self.restore_best_weights, self.verbose = restore_best_weights, verbose

    def on_train_begin(self, logs=None):
        self._tracker = _Monitor("EarlyStopping", self.monitor, self.mode, self.min_delta)
        self.wait, self.stopped_epoch, self.best_epoch = 0, None, None
        self.best_weights = None

    @property
    def best(self):
        return self._tracker.best

    def on_epoch_end(self, epoch, logs=None):
        value = self._tracker.value(logs)
        if value is None:
            return
        if self._tracker.improved(value):
            self._tracker.best, self.best_epoch, self.wait = value, epoch, 0
            if self.restore_best_weights:
                self.best_weights = self.model.state_dict()
            return
        self.wait += 1
        # Keras/Lightning convention: stop once `patience` epochs in a row brought no
        # improvement (so patience=0 and patience=1 both stop at the first bad epoch).
        if self.wait >= self.patience:
            self.stopped_epoch = epoch
            self.model.stop_training = True

    def on_train_end(self, logs=None):
        if self.restore_best_weights and self.best_weights is not None:
            self.model.load_state_dict(self.best_weights)
        if self.verbose and self.stopped_epoch is not None:
            print(f"EarlyStopping: stopped after epoch {self.stopped_epoch + 1}; best {self.monitor} "
                  f"{self.best:.4f} at epoch {self.best_epoch + 1}")


class ModelCheckpoint(Callback):
    """Save the model (``model.save(path)``) after each epoch, or only when ``monitor`` improves.

    ``path`` may contain ``{epoch}`` and logged keys, e.g. ``'ckpt-{epoch:02d}-{val_loss:.3f}.npz'``
    (``epoch`` counts from 1).
    """

    def __init__(self, path, monitor="val_loss", save_best_only=False, mode="auto"):
        self.path, self.monitor, self.save_best_only, self.mode = str(path), monitor, save_best_only, mode

    def on_train_begin(self, logs=None):
        self._tracker = _Monitor("ModelCheckpoint", self.monitor, self.mode)
        self.saved = []  # (epoch, path) of every file written

    @property
    def best(self):
        return self._tracker.best

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        if self.save_best_only:
            value = self._tracker.value(logs)
            if value is None or not self._tracker.improved(value):
                return
            self._tracker.best = value
        path = self.path.format(epoch=epoch + 1, **logs)
        self.model.save(path)
        self.saved.append((epoch, path))


class LearningRateScheduler(Callback):
    """Change the learning rate every epoch.

    ``scheduler`` is either a minicnn scheduler (``StepLR``, ``CosineAnnealingLR``,
    anything with ``.step()``), stepped after each epoch as in PyTorch, or a
    function ``epoch -> lr`` (or ``(epoch, lr) -> lr``) applied before each epoch.
    """

    def __init__(self, scheduler):
        if not (hasattr(scheduler, "step") or callable(scheduler)):
            raise TypeError(f"LearningRateScheduler expected a scheduler with .step() or a function "
                            f"epoch -> lr, got {type(scheduler).__name__}")
        self.scheduler = scheduler

    def on_epoch_begin(self, epoch, logs=None):
        if hasattr(self.scheduler, "step"):
            return
        takes_lr = len(inspect.signature(self.scheduler).parameters) >= 2
        optimizer = self.model.optimizer
        lr = self.scheduler(epoch, optimizer.lr) if takes_lr else self.scheduler(epoch)
        optimizer.lr = float(lr)

    def on_epoch_end(self, epoch, logs=None):
        if hasattr(self.scheduler, "step"):
            self.scheduler.step()


class CSVLogger(Callback):
    """Write one CSV row per epoch (``epoch`` then the logged keys) to ``path``."""

    def __init__(self, path, append=False):
        self.path, self.append = str(path), append

    def on_train_begin(self, logs=None):
        self._file = open(self.path, "a" if self.append else "w", newline="")
        self._writer = None

    def on_epoch_end(self, epoch, logs=None):
        row = {"epoch": epoch + 1, **(logs or {})}
        if self._writer is None:
            self._writer = csv.DictWriter(self._file, fieldnames=list(row), extrasaction="ignore")
            if not self.append or self._file.tell() == 0:
                self._writer.writeheader()
        self._writer.writerow(row)
        self._file.flush()

    def on_train_end(self, logs=None):
        self._file.close()


class FilterRecorder(Callback):
    """Keep a NumPy copy of a conv layer's ``weight`` at the start and after every epoch.

    ``layer`` is the layer object, its index in the model, or its name.
    ``snapshots[0]`` is the weight before training; ``viz.animate_filters`` turns
    the list into a GIF of the filters learning.
    """

    def __init__(self, layer):
        self.layer = layer
        self.snapshots: list[np.ndarray] = []

    def set_model(self, model):
        super().set_model(model)
        if isinstance(self.layer, (int, str)):
            self.layer = _find_layer(model, self.layer, "FilterRecorder")
        if "weight" not in getattr(self.layer, "params", {}) and self.layer.built:
            raise ValueError(f"FilterRecorder expected a layer with a 'weight' parameter, "
                             f"got {self.layer.name} with params {sorted(self.layer.params)}")

    def _snapshot(self):
        if "weight" in self.layer.params:
            self.snapshots.append(backend.to_numpy(self.layer.params["weight"]).copy())

    def on_train_begin(self, logs=None):
        if not self.snapshots:
            self._snapshot()

    def on_epoch_end(self, epoch, logs=None):
        self._snapshot()


def _find_layer(model, key, owner: str):
    """A layer of ``model`` by index among its children or by name anywhere inside it."""
    if isinstance(key, int):
        children = model.children()
        if not -len(children) <= key < len(children):
            raise ValueError(f"{owner}: layer index {key} is out of range for a model with "
                             f"{len(children)} layers")
        return children[key]
    for layer in model.layers_recursive():
        if layer.name == key:
            return layer
    names = [layer.name for layer in model.layers_recursive()]
    raise ValueError(f"{owner}: no layer named {key!r}; the model has {names}")
