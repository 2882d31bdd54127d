"""Each plot returns a Figure, saves a PNG headless, and shows the numbers it claims to.

The drawn data is read back from the figure's artists and compared with values
computed independently (counts by hand, the model's own layers run one by one).
"""
import numpy as np
import pytest
from matplotlib.figure import Figure

import minicnn
from minicnn import models, viz
from minicnn.layers import Conv2D, Dense, Flatten, MaxPool2D, ReLU, Sequential
from minicnn.training import History

PNG = b"\x89PNG\r\n\x1a\n"


def saved_png(fig, path):
    assert isinstance(fig, Figure)
    fig.savefig(path)
    return path.read_bytes()[:8] == PNG


def fake_history(loss, acc):
    history = History()
    for epoch, (l, a) in enumerate(zip(loss, acc)):
        history.append(epoch, {"loss": l, "accuracy": a, "val_loss": l + 0.1, "val_accuracy": a - 0.1})
    return history


def test_plot_history_overlays_runs(tmp_path):
    first, second = fake_history([1.0, 0.5, 0.2], [0.5, 0.8, 0.9]), fake_history([2.0, 1.0], [0.3, 0.6])
    fig = viz.plot_history([first, second], metrics=("loss", "accuracy"))
    assert saved_png(fig, tmp_path / "history.png")
    loss_axes, accuracy_axes = fig.axes[:2]
    lines = {line.get_label(): line for line in loss_axes.get_lines()}
    assert set(lines) == {"run 1 loss", "run 1 val_loss", "run 2 loss", "run 2 val_loss"}
    np.testing.assert_allclose(lines["run 1 val_loss"].get_ydata(), [1.1, 0.6, 0.3])
    np.testing.assert_array_equal(lines["run 2 loss"].get_xdata(), [1, 2])
    assert len(accuracy_axes.get_lines()) == 4
    single = viz.plot_history({"baseline": first}, metrics="loss")
    assert {line.get_label() for line in single.axes[0].get_lines()} == {"baseline loss", "baseline val_loss"}
    with pytest.raises(ValueError, match="no \\['f1'\\]"):
        viz.plot_history(first, metrics=("f1",))


def test_plot_confusion_matrix_shows_the_counts(tmp_path):
    y_true = np.array([0, 0, 1, 1, 1, 2, 2, 2, 2])
    y_pred = np.array([0, 1, 1, 1, 0, 2, 2, 1, 2])
    fig = viz.plot_confusion_matrix(y_true, y_pred, class_names=["cat", "dog", "eel"])
    assert saved_png(fig, tmp_path / "cm.png")
    shown = fig.axes[0].get_images()[0].get_array()
    expected = np.array([[1, 1, 0], [1, 2, 0], [0, 1, 3]])  # counted by hand
    np.testing.assert_array_equal(shown, expected)
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["cat", "dog", "eel"]
    normalized = viz.plot_confusion_matrix(y_true, y_pred, normalize=True).axes[0].get_images()[0].get_array()
    np.testing.assert_allclose(normalized.sum(axis=1), 1.0)
    with pytest.raises(ValueError, match="class names"):
        viz.plot_confusion_matrix(y_true, y_pred, class_names=["a", "b"])


def test_plot_roc_binary_and_multiclass(tmp_path):
    y_true = np.array([0, 0, 1, 1])
    scores = np.array([0.1, 0.4, 0.35, 0.8])
    fig = viz.plot_roc(y_true, scores)
    assert saved_png(fig, tmp_path / "roc.png")
    curve = fig.axes[0].get_lines()[0]
    assert "AUC = 0.750" in curve.get_label()  # 3 of the 4 positive/negative pairs are ordered
    multi = viz.plot_roc(np.array([0, 1, 2, 1]), np.eye(3)[[0, 1, 2, 1]])
    labels = [line.get_label() for line in multi.axes[0].get_lines()]
    assert labels == ["class 0 AUC = 1.000", "class 1 AUC = 1.000", "class 2 AUC = 1.000", "chance"]


@pytest.fixture
def cnn():
    minicnn.seed(0)
    model = Sequential([Conv2D(6, 3, padding=1, name="conv1"), ReLU(), MaxPool2D(),
                        Conv2D(3, 3, in_channels=6), Flatten(), Dense(4)])
    model.build((1, 8, 8))
    return model


def test_plot_filters_draws_each_filter(cnn, tmp_path):
    fig = viz.plot_filters(cnn.layers[0])
    assert saved_png(fig, tmp_path / "filters.png")
    images = [ax.get_images()[0].get_array() for ax in fig.axes if ax.get_images()]
    assert len(images) == 6
    weight = cnn.layers[0].params["weight"][2, 0]
    expected = (weight - weight.min()) / (weight.max() - weight.min())
    np.testing.assert_allclose(images[2], expected, rtol=1e-5)
    rgb = Conv2D(4, 3, in_channels=3)
    assert viz.plot_filters(rgb).axes[0].get_images()[0].get_array().shape == (3, 3, 3)
    with pytest.raises(ValueError, match="4-D 'weight'"):
        viz.plot_filters(cnn.layers[1])


@pytest.mark.parametrize("which", [0, "conv1", "layer_object", 2])
def test_plot_feature_maps_shows_the_layer_output(cnn, tmp_path, which):
    x = np.random.default_rng(0).random((1, 8, 8)).astype(np.float32)
    layer = cnn.layers[0] if which == "layer_object" else which
    fig = viz.plot_feature_maps(cnn, x, layer)
    assert saved_png(fig, tmp_path / "maps.png")
    images = [ax.get_images()[0].get_array() for ax in fig.axes if ax.get_images()]
    # run the layers one by one: the maps of layer 0 (or 2, after ReLU and pooling)
    out = x[None]
    stop = 2 if which == 2 else 0
    for index in range(stop + 1):
        out = cnn.layers[index].forward(out)
    assert len(images) == out.shape[1]
    for channel, image in enumerate(images):
        np.testing.assert_allclose(image, out[0, channel], rtol=1e-5, atol=1e-6)


def test_plot_feature_maps_errors(cnn):
    x = np.zeros((1, 8, 8), np.float32)
    with pytest.raises(ValueError, match="no layer named 'conv9'"):
        viz.plot_feature_maps(cnn, x, "conv9")
    with pytest.raises(ValueError, match="out of range"):
        viz.plot_feature_maps(cnn, x, 17)
    with pytest.raises(ValueError, match=r"one sample of shape \(1, 8, 8\)"):
        viz.plot_feature_maps(cnn, x[None], 0)
    with pytest.raises(ValueError, match="is not a layer of"):
        viz.plot_feature_maps(cnn, x, Dense(3))


def test_plot_reconstructions_shows_inputs_and_outputs(tmp_path):
    minicnn.seed(0)
    autoencoder = models.dense_autoencoder(input_dim=16, code_size=3)
    x = np.random.default_rng(0).random((6, 16)).astype(np.float32)
    fig = viz.plot_reconstructions(autoencoder, x, n=4)
    assert saved_png(fig, tmp_path / "recon.png")
    images = [ax.get_images()[0].get_array() for ax in fig.axes]
    assert len(images) == 8 and images[0].shape == (4, 4)
    np.testing.assert_allclose(images[1], x[1].reshape(4, 4))
    expected = np.clip(autoencoder.predict(x[:4]), 0, 1)
    np.testing.assert_allclose(images[4 + 2], expected[2].reshape(4, 4), rtol=1e-5)
