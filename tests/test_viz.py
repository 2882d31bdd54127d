"""Each plot returns a Figure, saves a PNG headless, and shows the numbers it claims to.

The drawn data is read back from the figure's artists and compared with values
computed independently (counts by hand, the model's own layers run one by one).
"""
import numpy as np
import pytest
from matplotlib.figure import Figure

import minicnn
from minicnn import models, viz
from minicnn.layers import (Conv2D, Dense, Flatten, GlobalAvgPool2D, MaxPool2D, ReLU, Residual,
                            Sequential, Softmax)
from minicnn.training import History
from tests.helpers import require_torch

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


# ---------------------------------------------------------------------- Grad-CAM
def conv_by_hand(x, weight, bias, stride=1, pad=1):
    """``A[k, i, j] = b[k] + sum_{c,p,q} W[k, c, p, q] x_pad[c, i*s + p, j*s + q]`` for one sample."""
    x_pad = np.pad(x.astype(np.float64), ((0, 0), (pad, pad), (pad, pad)))
    windows = np.lib.stride_tricks.sliding_window_view(x_pad, weight.shape[2:], axis=(1, 2))
    windows = windows[:, ::stride, ::stride]
    return np.einsum("chwpq,kcpq->khw", windows, weight) + bias[:, None, None]


def normalised_cam(maps, class_weights, size):
    """CAM (Zhou et al., 2016): under global average pooling, Grad-CAM's alpha_k is the
    Dense weight of class c on map k divided by h*w; the map is upsampled with torch's
    bilinear interpolation (align_corners=False) where it is smaller than the image."""
    h, w = maps.shape[1:]
    cam = np.maximum(np.tensordot(class_weights / (h * w), maps, axes=1), 0.0)
    if cam.shape != tuple(size):
        torch = require_torch()
        cam = torch.nn.functional.interpolate(torch.from_numpy(cam)[None, None], size=tuple(size),
                                              mode="bilinear", align_corners=False)[0, 0].numpy()
    return cam / cam.max()


def cam_model(stride, nested, dtype=np.float64):
    minicnn.seed(1)
    conv = Conv2D(4, 3, stride=stride, padding=1, name="features")
    head = [GlobalAvgPool2D(), Dense(3)]
    model = Sequential([Sequential([conv, ReLU(name="relu")]) if nested else conv, *head], dtype=dtype)
    model.build((2, 9, 9))
    return model, conv


@pytest.mark.parametrize("stride, nested, target_class", [(1, False, 0), (1, True, 2), (2, False, 1)])
def test_grad_cam_equals_cam_under_global_average_pooling(stride, nested, target_class):
    model, conv = cam_model(stride, nested)
    x = np.random.default_rng(stride).standard_normal((2, 9, 9))
    dense_weight = model.layers[-1].params["weight"]
    maps = conv_by_hand(x, conv.params["weight"], conv.params["bias"], stride)
    if nested:  # the ReLU inside the inner Sequential: A is its output, read after opening it
        maps = np.maximum(maps, 0)
        heatmap = viz.grad_cam(model, x, target_class, layer="relu")
    else:
        heatmap = viz.grad_cam(model, x, target_class)  # default: the last convolution
    expected = normalised_cam(maps, dense_weight[target_class], x.shape[1:])
    assert heatmap.shape == (9, 9)
    np.testing.assert_allclose(heatmap, expected, rtol=1e-9, atol=1e-12)


def test_grad_cam_target_class_changes_the_map_and_defaults_to_the_prediction():
    model, _ = cam_model(1, False)
    x = np.random.default_rng(5).standard_normal((2, 9, 9))
    maps = [viz.grad_cam(model, x, target_class=c) for c in range(3)]
    assert not np.allclose(maps[0], maps[1]) and not np.allclose(maps[1], maps[2])
    predicted = int(np.argmax(model.predict(x[None])[0]))
    np.testing.assert_array_equal(viz.grad_cam(model, x), maps[predicted])


def test_grad_cam_through_a_residual_block_uses_the_block_output():
    """A conv nested in a Residual gives the Residual's output as A; a final Softmax is skipped."""
    minicnn.seed(2)
    stem, inner = Conv2D(3, 3, padding=1, name="stem"), Conv2D(3, 3, padding=1, name="inner")
    model = Sequential([stem, Residual(Sequential([inner, ReLU()])), GlobalAvgPool2D(), Dense(2),
                        Softmax()], dtype=np.float64)
    model.build((1, 6, 6))
    x = np.random.default_rng(2).standard_normal((1, 6, 6))
    after_stem = conv_by_hand(x, stem.params["weight"], stem.params["bias"])
    block_out = after_stem + np.maximum(conv_by_hand(after_stem, inner.params["weight"],
                                                     inner.params["bias"]), 0)
    expected = normalised_cam(block_out, model.layers[3].params["weight"][1], (6, 6))
    for layer in (None, "inner", 1, model.layers[1]):
        np.testing.assert_allclose(viz.grad_cam(model, x, 1, layer=layer), expected, rtol=1e-9, atol=1e-12)
    # At the stem, dL/dA goes back through the residual sum: compare with torch autograd.
    torch = require_torch()
    A = torch.tensor(after_stem[None], requires_grad=True)
    inner_out = torch.nn.functional.conv2d(A, torch.from_numpy(inner.params["weight"]),
                                           torch.from_numpy(inner.params["bias"]), padding=1)
    pooled = (A + torch.relu(inner_out)).mean(dim=(2, 3))
    dense = model.layers[3]
    logits = pooled @ torch.from_numpy(dense.params["weight"]).T + torch.from_numpy(dense.params["bias"])
    logits[0, 1].backward()
    alpha = A.grad[0].numpy().mean(axis=(1, 2))
    cam = np.maximum(np.tensordot(alpha, after_stem, axes=1), 0)
    np.testing.assert_allclose(viz.grad_cam(model, x, 1, layer="stem"), cam / cam.max(),
                               rtol=1e-9, atol=1e-12)


@pytest.fixture
def trained_cnn():
    """A tiny CNN trained a few steps to tell a bright left half from a bright right half."""
    minicnn.seed(0)
    rng = np.random.default_rng(0)
    y = np.arange(48) % 2
    x = rng.random((48, 1, 8, 8)).astype(np.float32) * 0.2
    x[y == 0, :, :, :4] += 0.8
    x[y == 1, :, :, 4:] += 0.8
    model = Sequential([Conv2D(4, 3, padding=1, activation="relu"), MaxPool2D(),
                        Conv2D(6, 3, padding=1, name="conv2"), ReLU(), Flatten(), Dense(2)])
    model.compile("adam", lr=0.01)
    model.fit(x, y, epochs=3, batch_size=16, verbose=0)
    return model, x


def test_grad_cam_on_a_trained_cnn_is_an_image_sized_map_and_leaves_the_model_alone(trained_cnn):
    model, x = trained_cnn
    for layer in model.layers_recursive():
        for grad in layer.grads.values():
            grad[...] = np.random.default_rng(3).standard_normal(grad.shape)
    before = {name: (p.copy(), g.copy()) for name, p, g in model.named_parameters()}
    heatmap = viz.grad_cam(model, x[0])
    assert heatmap.shape == (8, 8) and heatmap.dtype == np.float64
    assert heatmap.min() >= 0.0 and heatmap.max() == 1.0
    for name, p, g in model.named_parameters():
        np.testing.assert_array_equal(p, before[name][0], err_msg=name)
        np.testing.assert_array_equal(g, before[name][1], err_msg=name)  # grads restored


def test_grad_cam_all_zero_cam_gives_zeros():
    model, _ = cam_model(1, False)
    model.layers[-1].params["weight"][...] = 0.0  # no map counts for any class: alpha = 0
    heatmap = viz.grad_cam(model, np.ones((2, 9, 9)), target_class=0)
    np.testing.assert_array_equal(heatmap, np.zeros((9, 9)))


def test_grad_cam_errors(cnn):
    x = np.zeros((1, 8, 8), np.float32)
    with pytest.raises(ValueError, match=r"one image sample \(C, H, W\).*\(1, 1, 8, 8\)"):
        viz.grad_cam(cnn, x[None])
    with pytest.raises(ValueError, match=r"one sample of shape \(1, 8, 8\)"):
        viz.grad_cam(cnn, np.zeros((1, 9, 9)))
    with pytest.raises(ValueError, match="no layer named 'conv9'"):
        viz.grad_cam(cnn, x, layer="conv9")
    with pytest.raises(ValueError, match="out of range for Sequential with 6 layers"):
        viz.grad_cam(cnn, x, layer=6)
    with pytest.raises(ValueError, match=r"4-D output.*Flatten gives shape \(1, 12\)"):
        viz.grad_cam(cnn, x, layer=4)
    with pytest.raises(ValueError, match="target_class 4 is out of range .* with 4 classes"):
        viz.grad_cam(cnn, x, target_class=4)
    with pytest.raises(ValueError, match="target_class -1 is out of range"):
        viz.grad_cam(cnn, x, target_class=-1)
    with pytest.raises(TypeError, match="int target_class"):
        viz.grad_cam(cnn, x, target_class=1.0)
    fully_convolutional = Sequential([Conv2D(2, 3, padding=1), Conv2D(2, 3, padding=1)])
    with pytest.raises(ValueError, match=r"end in class scores .* got shape \(1, 2, 8, 8\)"):
        viz.grad_cam(fully_convolutional, x, layer=0)
    mlp = Sequential([Flatten(), Dense(3)])
    with pytest.raises(ValueError, match="no convolution layer"):
        viz.grad_cam(mlp, x)


def test_plot_grad_cam_overlays_the_heatmap(trained_cnn, tmp_path):
    model, x = trained_cnn
    fig = viz.plot_grad_cam(model, x[1], target_class=0, alpha=0.4)
    assert saved_png(fig, tmp_path / "gradcam.png")
    input_image = fig.axes[0].get_images()[0]
    overlay = fig.axes[1].get_images()[1]
    np.testing.assert_allclose(overlay.get_array(), viz.grad_cam(model, x[1], target_class=0, layer="conv2"))
    assert overlay.get_alpha() == 0.4
    image = x[1, 0]
    np.testing.assert_allclose(input_image.get_array(), (image - image.min()) / (image.max() - image.min()),
                               rtol=1e-6)
    assert "class 0" in fig.axes[1].get_title() and "conv2" in fig.axes[1].get_title()
    with pytest.raises(ValueError, match="0 <= alpha <= 1"):
        viz.plot_grad_cam(model, x[1], alpha=1.5)


# ---------------------------------------------------------------------- filters over training
def gif_frames(path):
    from PIL import Image

    with Image.open(path) as gif:
        return gif.n_frames, gif.info.get("duration")


def test_animate_filters_writes_one_frame_per_snapshot(tmp_path):
    rng = np.random.default_rng(0)
    snapshots = [rng.standard_normal((5, 1, 3, 3)).astype(np.float32) for _ in range(6)]
    path = tmp_path / "filters.gif"
    assert viz.animate_filters(snapshots, path, fps=5) == path
    assert path.read_bytes()[:6] in (b"GIF87a", b"GIF89a")
    assert gif_frames(path) == (6, 200)  # 1000 ms / 5 fps
    assert [p.name for p in tmp_path.iterdir()] == ["filters.gif"]  # no temporary file left
    rgb = [rng.standard_normal((2, 3, 3, 3)) for _ in range(2)]
    assert gif_frames(viz.animate_filters(rgb, tmp_path / "rgb.gif"))[0] == 2


def test_animate_filters_errors_and_atomic_write(tmp_path, monkeypatch):
    path = tmp_path / "filters.gif"
    with pytest.raises(ValueError, match="no snapshots"):
        viz.animate_filters([], path)
    mismatch = r"snapshot 1 has shape \(4, 1, 3, 3\) but snapshot 0 has \(3, 1, 3, 3\)"
    with pytest.raises(ValueError, match=mismatch):
        viz.animate_filters([np.zeros((3, 1, 3, 3)), np.zeros((4, 1, 3, 3))], path)
    with pytest.raises(ValueError, match=r"4-D conv weight .* snapshot 0 has shape \(3, 3\)"):
        viz.animate_filters([np.zeros((3, 3))], path)
    with pytest.raises(ValueError, match="fps > 0"):
        viz.animate_filters([np.zeros((3, 1, 3, 3))], path, fps=0)
    # A failure while writing leaves the previous file untouched and no temporary file behind.
    path.write_bytes(b"old")
    from matplotlib.animation import PillowWriter

    def broken_grab_frame(self, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(PillowWriter, "grab_frame", broken_grab_frame)
    with pytest.raises(OSError, match="disk full"):
        viz.animate_filters([np.ones((3, 1, 3, 3))], path)
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["filters.gif"]


def test_fit_with_a_filter_recorder_then_animate(tmp_path):
    from minicnn.callbacks import FilterRecorder

    minicnn.seed(0)
    model = Sequential([Conv2D(4, 3, name="conv1"), ReLU(), Flatten(), Dense(2)])
    model.compile("sgd", lr=0.1)
    x = np.random.default_rng(0).random((16, 1, 6, 6)).astype(np.float32)
    recorder = FilterRecorder("conv1")
    model.fit(x, np.arange(16) % 2, epochs=3, batch_size=8, callbacks=[recorder], verbose=0)
    assert len(recorder.snapshots) == 4  # before training, then after each epoch
    assert not np.array_equal(recorder.snapshots[0], recorder.snapshots[-1])
    path = viz.animate_filters(recorder.snapshots, tmp_path / "training.gif")
    assert gif_frames(path) == (4, 250)
    assert gif_frames(viz.animate_filters(recorder, str(tmp_path / "recorder.gif")))[0] == 4
