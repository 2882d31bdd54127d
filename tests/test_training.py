"""compile / fit / evaluate / predict: training works, is reproducible, and fails clearly.

Independent witnesses: the loss measured before and after training, accuracy on
held-out data computed by hand from ``predict``, the shapes of real datasets,
and bit-for-bit comparison of two seeded runs.
"""
import numpy as np
import pytest

import minicnn
from minicnn import data, models
from minicnn.callbacks import Callback
from minicnn.layers import Conv2D, Dense, Flatten, MaxPool2D, Sequential
from minicnn.training import History
from tests.helpers import mnist_dir


@pytest.fixture(scope="module")
def digits():
    x, y = data.load_digits()
    return data.train_test_split(x, y, test_size=0.2, stratify=True, seed=0)


def tiny_cnn(num_classes=10):
    return Sequential([Conv2D(4, 3, padding="same", activation="relu"), MaxPool2D(),
                       Flatten(), Dense(num_classes)])


def test_fit_reduces_loss_and_returns_history(digits):
    x_train, x_test, y_train, y_test = digits
    minicnn.seed(0)
    model = tiny_cnn()
    model.compile("adam", lr=1e-2)
    before = model.evaluate(x_train[:300], y_train[:300])["loss"]
    history = model.fit(x_train[:300], y_train[:300], epochs=3, batch_size=32,
                        validation_data=(x_test[:100], y_test[:100]), verbose=0)
    assert isinstance(history, History)
    assert set(history.history) == {"loss", "accuracy", "val_loss", "val_accuracy", "lr"}
    assert history.epoch == [0, 1, 2]
    assert all(len(v) == 3 for v in history.history.values())
    assert history.history["loss"][-1] < history.history["loss"][0]
    assert model.evaluate(x_train[:300], y_train[:300])["loss"] < 0.7 * before
    assert history.history["lr"] == [pytest.approx(1e-2)] * 3
    # evaluate's accuracy is the fraction of argmax predictions equal to the labels
    expected = float((model.predict(x_test).argmax(axis=1) == y_test).mean())
    assert model.evaluate(x_test, y_test)["accuracy"] == pytest.approx(expected)


def test_verbose_zero_prints_nothing_and_verbose_two_prints_lines(digits, capsys):
    x_train, _, y_train, _ = digits
    model = tiny_cnn()
    model.compile()
    model.fit(x_train[:64], y_train[:64], epochs=2, verbose=0)
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""
    model.fit(x_train[:64], y_train[:64], epochs=2, verbose=2)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("Epoch")]
    assert len(lines) == 2 and "loss" in lines[0] and "accuracy" in lines[0]


def test_validation_split_holds_out_the_last_fraction(digits):
    x_train, _, y_train, _ = digits
    model = tiny_cnn()
    model.compile()
    history = model.fit(x_train[:100], y_train[:100], epochs=1, validation_split=0.25, verbose=0)
    # validation runs on the weights at the end of the (only) epoch: those the model holds now
    expected = model.evaluate(x_train[75:100], y_train[75:100])
    assert history.history["val_loss"][0] == pytest.approx(expected["loss"])
    assert history.history["val_accuracy"][0] == pytest.approx(expected["accuracy"])
    with pytest.raises(ValueError, match="validation_split"):
        model.fit(x_train[:10], y_train[:10], validation_split=1.5, verbose=0)


def test_seed_gives_bit_identical_training(digits):
    x_train, _, y_train, _ = digits

    def run():
        minicnn.seed(123)
        model = Sequential([Conv2D(4, 3, activation="relu"), Flatten(), Dense(10)])
        model.compile("sgd", lr=0.05, momentum=0.9)
        model.fit(x_train[:96], y_train[:96], epochs=2, batch_size=16, verbose=0)
        return model.state_dict()

    first, second = run(), run()
    assert first.keys() == second.keys()
    for key in first:
        np.testing.assert_array_equal(first[key], second[key])
    minicnn.seed(124)
    model = Sequential([Conv2D(4, 3, activation="relu"), Flatten(), Dense(10)])
    model.build((1, 8, 8))
    assert not np.array_equal(model.state_dict()["0.weight"], first["0.weight"])


def test_skip_input_grad_is_set_during_fit_and_restored(digits):
    x_train, _, y_train, _ = digits
    model = tiny_cnn()
    model.compile()
    seen = []

    class Watch(Callback):
        def on_batch_end(self, batch, logs=None):
            seen.append(self.model.layers[0].skip_input_grad)

    model.fit(x_train[:32], y_train[:32], epochs=1, callbacks=[Watch()], verbose=0)
    assert seen == [True]
    assert model.layers[0].skip_input_grad is False

    mlp = models.mlp(hidden=(8,))  # Flatten first: the flag must reach the Dense after it
    mlp.compile()
    flags = []

    class WatchDense(Callback):
        def on_batch_end(self, batch, logs=None):
            flags.append(self.model.layers[1].skip_input_grad)

    mlp.fit(x_train[:32], y_train[:32], epochs=1, callbacks=[WatchDense()], verbose=0)
    assert flags == [True] and mlp.layers[1].skip_input_grad is False


def test_keyboard_interrupt_stops_cleanly_and_keeps_weights(digits, capsys):
    x_train, _, y_train, _ = digits
    minicnn.seed(0)
    model = tiny_cnn()
    model.compile(lr=1e-2)
    model.build(x_train.shape[1:])
    initial = model.state_dict()

    class CtrlC(Callback):
        def on_batch_end(self, batch, logs=None):
            self.batches = batch + 1
            if self.params_epoch == 1 and batch == 2:
                raise KeyboardInterrupt

        def on_epoch_begin(self, epoch, logs=None):
            self.params_epoch = epoch

    callback = CtrlC()
    history = model.fit(x_train[:160], y_train[:160], epochs=5, batch_size=32, callbacks=[callback], verbose=1)
    assert isinstance(history, History) and history.interrupted
    assert history.epoch == [0]  # the first epoch completed, the second was cut after 3 batches
    assert callback.batches == 3
    assert "interrupted" in capsys.readouterr().out
    trained = model.state_dict()
    assert any(not np.array_equal(initial[k], trained[k]) for k in initial)
    # the model is still usable and its weights are finite
    assert all(np.isfinite(v).all() for v in trained.values())
    assert model.predict(x_train[:5]).shape == (5, 10)


def test_real_sigint_is_deferred_to_the_end_of_the_batch(digits):
    import os
    import signal

    x_train, _, y_train, _ = digits
    model = tiny_cnn()
    model.compile()
    batches = []

    class SendSigint(Callback):
        def on_batch_end(self, batch, logs=None):
            batches.append(batch)
            if batch == 1:
                os.kill(os.getpid(), signal.SIGINT)  # as if the user pressed Ctrl-C

    history = model.fit(x_train[:128], y_train[:128], epochs=3, batch_size=16, callbacks=[SendSigint()],
                        verbose=0)
    assert history.interrupted and history.epoch == [] and batches == [0, 1]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler restored


def test_train_on_batch_and_predict_shapes(digits):
    x_train, _, y_train, _ = digits
    model = tiny_cnn()
    model.compile()
    logs = model.train_on_batch(x_train[:16], y_train[:16])
    assert set(logs) == {"loss", "accuracy"} and np.isfinite(logs["loss"])
    pred = model.predict(x_train[:300], batch_size=64)
    assert isinstance(pred, np.ndarray) and pred.shape == (300, 10)
    np.testing.assert_allclose(pred[:10], model.predict(x_train[:10]), rtol=1e-5, atol=1e-6)


def test_regression_targets_and_custom_metric():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((200, 3)).astype(np.float32)
    y = (x @ np.array([[1.0], [-2.0], [0.5]]) + 0.3).astype(np.float32)
    minicnn.seed(0)
    model = Sequential([Dense(1)])

    def max_error(pred, target):
        return float(np.abs(pred - target).max())

    model.compile("adam", loss="mse", metrics=("mae", max_error), lr=0.05)
    history = model.fit(x, y, epochs=30, batch_size=20, verbose=0)
    assert set(history.history) == {"loss", "mae", "max_error", "lr"}
    assert history.history["loss"][-1] < 1e-2
    weight = model.layers[0].params["weight"]
    np.testing.assert_allclose(weight.ravel(), [1.0, -2.0, 0.5], atol=0.05)


def test_bad_inputs_give_clear_errors(digits):
    x_train, _, y_train, _ = digits
    model = tiny_cnn()
    with pytest.raises(RuntimeError, match="compile"):
        model.fit(x_train[:10], y_train[:10], verbose=0)
    model.compile()
    with pytest.raises(ValueError, match="10 samples in x but 9 targets"):
        model.fit(x_train[:10], y_train[:9], verbose=0)
    model.fit(x_train[:10], y_train[:10], verbose=0)
    wrong = np.zeros((4, 3, 32, 32), np.float32)
    with pytest.raises(ValueError, match=r"expects input shape \(1, 8, 8\), got \(3, 32, 32\)"):
        model.predict(wrong)
    with pytest.raises(ValueError, match="expects input shape"):
        model.fit(wrong, np.zeros(4, np.int64), verbose=0)
    with pytest.raises(ValueError, match="unknown metric"):
        model.compile(metrics=("precision_at_k",))
    with pytest.raises(ValueError, match="batch_size"):
        model.fit(x_train[:10], y_train[:10], batch_size=0, verbose=0)


def test_small_cnn_on_digits_reaches_95_percent(digits):
    x_train, x_test, y_train, y_test = digits
    minicnn.seed(0)
    model = models.simple_cnn()
    model.compile("adam", lr=3e-3)
    model.fit(x_train, y_train, epochs=8, batch_size=32, verbose=0)
    accuracy = float((model.predict(x_test).argmax(axis=1) == y_test).mean())
    assert accuracy >= 0.95


def _lenet_on_real_mnist():
    path = mnist_dir()
    if path is None:
        pytest.skip("the real MNIST test set is not available (set $MINICNN_DATA or ../shared/data/mnist)")
    x, y = data.load_mnist(path, split="test")
    minicnn.seed(0)
    model = models.lenet5()
    model.compile("adam", lr=2e-3)
    model.fit(x[:8000], y[:8000], epochs=2, batch_size=64, verbose=0)
    return float((model.predict(x[8000:]).argmax(axis=1) == y[8000:]).mean())


def test_lenet5_on_real_mnist_reaches_96_percent():
    accuracy = _lenet_on_real_mnist()
    assert accuracy >= 0.96, f"LeNet-5 reached {accuracy:.4f} on the last 2,000 MNIST test images"
