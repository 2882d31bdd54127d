"""Callbacks: the hooks fire in order, and each built-in callback does what it says.

Early stopping and checkpointing are driven by *scripted* validation values (a
callback placed first overwrites ``val_loss``), so the expected stopping epoch
and the expected saved weights are known in advance, independent of training noise.
"""
import csv

import numpy as np
import pytest

import minicnn
from minicnn import data
from minicnn.callbacks import (Callback, CSVLogger, EarlyStopping, FilterRecorder,
                               LearningRateScheduler, ModelCheckpoint)
from minicnn.layers import Conv2D, Dense, Flatten, Sequential
from minicnn.optim import StepLR


@pytest.fixture(scope="module")
def batch():
    x, y = data.load_digits()
    return x[:64], y[:64]


def small_model():
    minicnn.seed(0)
    model = Sequential([Conv2D(3, 3, activation="relu"), Flatten(), Dense(10)])
    model.compile("adam", lr=1e-2)
    return model


class ScriptedValLoss(Callback):
    """Replaces the logged val_loss by a scripted sequence and remembers each epoch's weights."""

    def __init__(self, values):
        self.values, self.weights = list(values), []

    def on_epoch_end(self, epoch, logs=None):
        logs["val_loss"] = self.values[epoch]
        self.weights.append(self.model.state_dict())


class Recorder(Callback):
    def __init__(self):
        self.events = []

    def on_train_begin(self, logs=None):
        self.events.append("train_begin")

    def on_epoch_begin(self, epoch, logs=None):
        self.events.append(f"epoch_begin {epoch}")

    def on_batch_end(self, batch, logs=None):
        self.events.append(f"batch {batch}")

    def on_epoch_end(self, epoch, logs=None):
        self.events.append(f"epoch_end {epoch}")

    def on_train_end(self, logs=None):
        self.events.append("train_end")


def test_hooks_fire_in_order(batch):
    x, y = batch
    recorder = Recorder()
    small_model().fit(x[:40], y[:40], epochs=2, batch_size=16, callbacks=[recorder], verbose=0)
    assert recorder.events == ["train_begin",
                               "epoch_begin 0", "batch 0", "batch 1", "batch 2", "epoch_end 0",
                               "epoch_begin 1", "batch 0", "batch 1", "batch 2", "epoch_end 1",
                               "train_end"]


@pytest.mark.parametrize("patience, expected_epochs", [(0, 3), (1, 3), (3, 5)])
def test_early_stopping_stops_after_patience(batch, patience, expected_epochs):
    x, y = batch
    # best at epoch index 1, never improved afterwards
    script = ScriptedValLoss([1.0, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.2, 1.3])
    stopper = EarlyStopping(patience=patience)
    history = small_model().fit(x, y, epochs=10, callbacks=[script, stopper], verbose=0)
    assert len(history.epoch) == expected_epochs
    assert stopper.stopped_epoch == expected_epochs - 1 and stopper.best == 0.5


def test_early_stopping_restores_best_weights(batch):
    x, y = batch
    script = ScriptedValLoss([1.0, 0.4, 0.6, 0.7, 0.8, 0.9, 1.0])
    model = small_model()
    model.fit(x, y, epochs=7, callbacks=[script, EarlyStopping(patience=2, restore_best_weights=True)],
              verbose=0)
    assert len(script.weights) == 4  # two epochs without improvement after the best: stop
    restored, best, last = model.state_dict(), script.weights[1], script.weights[3]
    for key in restored:
        np.testing.assert_array_equal(restored[key], best[key])
    assert any(not np.array_equal(best[k], last[k]) for k in best)


def test_early_stopping_min_delta_and_max_mode(batch):
    x, y = batch

    class ScriptedAccuracy(Callback):
        def on_epoch_end(self, epoch, logs=None):
            logs["val_accuracy"] = [0.5, 0.8, 0.805, 0.81, 0.9][epoch]

    stopper = EarlyStopping(monitor="val_accuracy", patience=1, min_delta=0.02)
    history = small_model().fit(x, y, epochs=5, callbacks=[ScriptedAccuracy(), stopper], verbose=0)
    assert stopper._tracker.mode == "max"
    assert len(history.epoch) == 3  # 0.805 is within min_delta of 0.8: one bad epoch, stop
    with pytest.raises(ValueError, match="patience"):
        EarlyStopping(patience=-1)


def test_missing_monitor_warns(batch):
    x, y = batch
    with pytest.warns(RuntimeWarning, match="val_loss"):
        small_model().fit(x, y, epochs=2, callbacks=[EarlyStopping()], verbose=0)


def test_model_checkpoint_best_only_keeps_best_epoch(batch, tmp_path):
    x, y = batch
    script = ScriptedValLoss([1.0, 0.5, 0.7, 0.4, 0.9])
    path = tmp_path / "best.npz"
    checkpoint = ModelCheckpoint(path, save_best_only=True)
    small_model().fit(x, y, epochs=5, callbacks=[script, checkpoint], verbose=0)
    assert [epoch for epoch, _ in checkpoint.saved] == [0, 1, 3]
    saved = minicnn.load(path).state_dict()
    for key, value in script.weights[3].items():
        np.testing.assert_array_equal(saved[key], value)


def test_model_checkpoint_every_epoch_with_formatted_path(batch, tmp_path):
    x, y = batch
    checkpoint = ModelCheckpoint(str(tmp_path / "ckpt-{epoch:02d}.npz"))
    small_model().fit(x, y, epochs=3, callbacks=[checkpoint], verbose=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt-01.npz", "ckpt-02.npz", "ckpt-03.npz"]


def test_learning_rate_scheduler_with_function_and_scheduler(batch):
    x, y = batch
    model = small_model()
    history = model.fit(x, y, epochs=4, callbacks=[LearningRateScheduler(lambda epoch: 0.1 / (epoch + 1))],
                        verbose=0)
    np.testing.assert_allclose(history.history["lr"], [0.1, 0.05, 0.1 / 3, 0.025])

    model = small_model()  # lr 1e-2, halved every 2 epochs (torch StepLR semantics)
    scheduler = StepLR(model.optimizer, step_size=2, gamma=0.5)
    history = model.fit(x, y, epochs=5, callbacks=[LearningRateScheduler(scheduler)], verbose=0)
    np.testing.assert_allclose(history.history["lr"], [1e-2, 1e-2, 5e-3, 5e-3, 2.5e-3])
    with pytest.raises(TypeError, match="LearningRateScheduler"):
        LearningRateScheduler(0.1)


def test_csv_logger_writes_one_row_per_epoch(batch, tmp_path):
    x, y = batch
    path = tmp_path / "log.csv"
    history = small_model().fit(x, y, epochs=3, validation_data=(x[:16], y[:16]),
                                callbacks=[CSVLogger(path)], verbose=0)
    with open(path) as file:
        rows = list(csv.DictReader(file))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert set(rows[0]) == {"epoch", "loss", "accuracy", "val_loss", "val_accuracy", "lr"}
    np.testing.assert_allclose([float(r["val_loss"]) for r in rows], history.history["val_loss"])


def test_filter_recorder_snapshots_weights_each_epoch(batch):
    x, y = batch
    model = small_model()
    model.build(x.shape[1:])
    recorder = FilterRecorder(model.layers[0])
    initial = model.layers[0].params["weight"].copy()
    model.fit(x, y, epochs=3, callbacks=[recorder], verbose=0)
    assert len(recorder.snapshots) == 4
    np.testing.assert_array_equal(recorder.snapshots[0], initial)
    np.testing.assert_array_equal(recorder.snapshots[-1], model.layers[0].params["weight"])
    assert recorder.snapshots[-1] is not model.layers[0].params["weight"]  # copies, not views
    assert not np.array_equal(recorder.snapshots[1], recorder.snapshots[0])
    by_index = FilterRecorder(0)
    by_index.set_model(model)
    assert by_index.layer is model.layers[0]
    with pytest.raises(ValueError, match="no layer named"):
        FilterRecorder("nope").set_model(model)
