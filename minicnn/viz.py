"""Plots for understanding a network: training curves, confusion matrices, filters,
feature maps, Grad-CAM heatmaps, reconstructions, ROC curves, and a GIF of filters
learning.

Every ``plot_*`` function returns a ``matplotlib.figure.Figure``; save it with
``fig.savefig('name.png')`` or let Jupyter display it. Figures are created
directly (``Figure()``, not ``pyplot``), so nothing here needs a display or
keeps figures alive in pyplot's global registry; on a machine without a
display pyplot itself is switched to the Agg backend for anyone who uses it.
"""
from __future__ import annotations

import os
import sys
from contextlib import contextmanager

import matplotlib

if sys.platform.startswith("linux") and not os.environ.get("DISPLAY") \
        and not os.environ.get("WAYLAND_DISPLAY") and not os.environ.get("MPLBACKEND") \
        and "matplotlib.pyplot" not in sys.modules:
    matplotlib.use("Agg")

import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from . import backend  # noqa: E402
from .fileio import atomic_write  # noqa: E402

__all__ = ["plot_history", "plot_confusion_matrix", "plot_filters", "plot_feature_maps",
           "grad_cam", "plot_grad_cam", "animate_filters", "plot_reconstructions", "plot_roc"]


def _grid(count: int, max_columns: int = 8) -> tuple[int, int]:
    columns = min(count, max_columns)
    return (count + columns - 1) // columns, columns


def _image_axes(fig, images, titles=None, cmap="gray", max_columns=8):
    """Draw ``images`` (each (H, W) or (H, W, 3)) in a grid of axes without ticks."""
    rows, columns = _grid(len(images), max_columns)
    axes = fig.subplots(rows, columns, squeeze=False)
    for index, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if index < len(images):
            ax.imshow(images[index], cmap=cmap, interpolation="nearest")
            if titles is not None:
                ax.set_title(titles[index], fontsize=8)
    return axes


# ---------------------------------------------------------------------- training curves
def _as_runs(history_or_list):
    """``[(label, history dict)]`` from a History, a dict, a list of them, or a {label: run} dict."""
    def as_dict(run):
        return run.history if hasattr(run, "history") else run

    if hasattr(history_or_list, "history"):
        return [("", history_or_list.history)]
    if isinstance(history_or_list, dict):
        values = list(history_or_list.values())
        if values and all(hasattr(v, "history") or isinstance(v, dict) for v in values):
            return [(str(label), as_dict(run)) for label, run in history_or_list.items()]
        return [("", history_or_list)]
    runs = list(history_or_list)
    return [(f"run {index + 1}", as_dict(run)) for index, run in enumerate(runs)]


def plot_history(history_or_list, metrics=("loss",)):
    """Training (solid) and validation (dashed) curves per epoch, one panel per metric.

    ``history_or_list`` is a ``History``, its ``.history`` dict, a list of them
    (runs overlaid for comparison, labelled "run 1", ...) or a dict
    ``{label: history}``.
    """
    if isinstance(metrics, str):
        metrics = (metrics,)
    runs = _as_runs(history_or_list)
    for label, run in runs:
        missing = [m for m in metrics if m not in run and f"val_{m}" not in run]
        if missing:
            raise ValueError(f"plot_history: {label or 'the history'} has no {missing}; "
                             f"it records {sorted(run)}")
    fig = Figure(figsize=(5 * len(metrics), 3.6), layout="constrained")
    axes = fig.subplots(1, len(metrics), squeeze=False)[0]
    colors = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, metric in zip(axes, metrics):
        for index, (label, run) in enumerate(runs):
            color = colors[index % len(colors)]
            for key, style in ((metric, "-"), (f"val_{metric}", "--")):
                if key in run:
                    values = run[key]
                    name = f"{label} {key}".strip()
                    ax.plot(range(1, len(values) + 1), values, style, color=color, marker=".", label=name)
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return fig


# ---------------------------------------------------------------------- classification
def plot_confusion_matrix(y_true, y_pred, class_names=None, normalize=False):
    """Counts of true class (rows) against predicted class (columns), annotated.

    ``normalize=True`` shows each row as fractions of that class's samples.
    """
    from .metrics import confusion_matrix

    y_true, y_pred = backend.to_numpy(y_true).ravel(), backend.to_numpy(y_pred).ravel()
    integer = np.issubdtype(y_true.dtype, np.integer) and np.issubdtype(y_pred.dtype, np.integer)
    num_classes = len(class_names) if class_names is not None and integer else None
    if num_classes is not None and max(y_true.max(), y_pred.max()) >= num_classes:
        raise ValueError(f"plot_confusion_matrix got {num_classes} class names but labels up to "
                         f"{max(y_true.max(), y_pred.max())}")
    matrix = confusion_matrix(y_true, y_pred, num_classes=num_classes)
    if class_names is None:
        class_names = [str(c) for c in (range(len(matrix)) if integer
                                        else np.unique(np.concatenate([y_true, y_pred])))]
    if len(class_names) != len(matrix):
        raise ValueError(f"plot_confusion_matrix got {len(class_names)} class names for "
                         f"{len(matrix)} classes")
    shown = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1) if normalize else matrix
    size = max(4.0, 0.5 * len(matrix) + 2)
    fig = Figure(figsize=(size, size), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(shown, cmap="Blues")
    fig.colorbar(image, ax=ax, shrink=0.8)
    ticks = np.arange(len(matrix))
    ax.set_xticks(ticks, class_names, rotation=45 if max(map(len, class_names)) > 2 else 0)
    ax.set_yticks(ticks, class_names)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    threshold = shown.max() / 2 if shown.size else 0
    for i in ticks:
        for j in ticks:
            text = f"{shown[i, j]:.2f}" if normalize else str(matrix[i, j])
            ax.text(j, i, text, ha="center", va="center", fontsize=8,
                    color="white" if shown[i, j] > threshold else "black")
    accuracy = np.trace(matrix) / max(matrix.sum(), 1)
    ax.set_title(f"Confusion matrix (accuracy {accuracy:.3f})")
    return fig


def plot_roc(y_true, scores):
    """ROC curve(s) with their AUC.

    Binary: ``scores`` of shape ``(N,)`` (or ``(N, 2)``). Several classes: ``scores``
    of shape ``(N, K)``, one one-vs-rest curve per class.
    """
    from .metrics import auc, roc_curve

    y_true, scores = backend.to_numpy(y_true).ravel(), backend.to_numpy(scores)
    if len(y_true) != len(scores):
        raise ValueError(f"plot_roc got {len(y_true)} labels but {len(scores)} scores")
    if scores.ndim == 2 and scores.shape[1] > 2:
        curves = [(f"class {k}", (y_true == k).astype(int), scores[:, k]) for k in range(scores.shape[1])]
    else:
        curves = [("", y_true, scores)]
    fig = Figure(figsize=(5, 5), layout="constrained")
    ax = fig.subplots()
    for label, truth, score in curves:
        if truth.min() == truth.max():
            continue  # a class absent (or alone) in y_true has no ROC curve
        fpr, tpr, _ = roc_curve(truth, score)
        ax.plot(fpr, tpr, label=f"{label} AUC = {auc(fpr, tpr):.3f}".strip())
    ax.plot([0, 1], [0, 1], ":", color="gray", label="chance")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title("ROC curve")
    return fig


# ---------------------------------------------------------------------- inside the network
def plot_filters(conv_layer, max_filters=64):
    """A convolution's filters as small images (RGB when they read 3 channels, else channel 0).

    Each filter is scaled to its own [min, max], since the sign pattern, not the
    magnitude, is what shows the feature it detects.
    """
    weight = conv_layer.params.get("weight") if hasattr(conv_layer, "params") else None
    if weight is None or weight.ndim != 4:
        raise ValueError(f"plot_filters expected a built convolution layer with a 4-D 'weight', "
                         f"got {getattr(conv_layer, 'name', type(conv_layer).__name__)}")
    weight = backend.to_numpy(weight)[:max_filters].astype(np.float64)
    low = weight.min(axis=(1, 2, 3), keepdims=True)
    high = weight.max(axis=(1, 2, 3), keepdims=True)
    images = _filter_images(weight, low, high)
    rows, columns = _grid(len(images))
    fig = Figure(figsize=(1.2 * columns, 1.2 * rows + 0.4), layout="constrained")
    _image_axes(fig, images, cmap=None if weight.shape[1] == 3 else "gray")
    fig.suptitle(f"{conv_layer.name} filters {tuple(weight.shape[1:])}")
    return fig


def _filter_images(weight, low, high):
    """Filters (C_out, C_in, kh, kw) scaled by ``(w - low) / (high - low)`` into [0, 1], as
    images: (kh, kw, 3) RGB when they read 3 channels, else channel 0 (kh, kw)."""
    scaled = (weight - low) / np.maximum(high - low, 1e-12)
    return scaled.transpose(0, 2, 3, 1) if scaled.shape[1] == 3 else scaled[:, 0]


def _resolve_layer(model, layer):
    """A layer of ``model``: an index into its children, a name, or the layer itself."""
    if isinstance(layer, (int, np.integer)):
        children = model.children()
        if not -len(children) <= layer < len(children):
            raise ValueError(f"layer index {layer} is out of range for {model.name} "
                             f"with {len(children)} layers")
        return children[layer]
    if isinstance(layer, str):
        for candidate in model.layers_recursive():
            if candidate.name == layer:
                return candidate
        names = [candidate.name for candidate in model.layers_recursive()]
        raise ValueError(f"{model.name} has no layer named {layer!r}; its layers are {names}")
    if not any(candidate is layer for candidate in model.layers_recursive()):
        raise ValueError(f"{getattr(layer, 'name', layer)!r} is not a layer of {model.name}")
    return layer


def _capture_output(model, layer, x):
    """Run ``model`` on ``x`` and return what ``layer`` produced on the way.

    The layer's ``forward`` is wrapped for one call (an instance attribute that
    shadows the class method), so layers nested in containers can be watched too.
    """
    captured = []
    original = layer.forward

    def recording_forward(inputs, training=False):
        output = original(inputs, training=training)
        captured.append(output)
        return output

    layer.forward = recording_forward
    try:
        model.forward(backend.to_device(x, model.device), training=False)
    finally:
        del layer.forward
    if not captured:
        raise ValueError(f"{layer.name} was not called by {model.name}.forward")
    return backend.to_numpy(captured[-1])


def plot_feature_maps(model, x, layer, max_maps=32):
    """The activations of ``layer`` for one sample ``x`` (C, H, W), one panel per channel.

    ``layer`` is an index into the model's layers, a layer name, or the layer object.
    """
    x = np.asarray(backend.to_numpy(x), dtype=model.dtype)
    if model.built and x.shape != tuple(model.input_shape):
        raise ValueError(f"plot_feature_maps expected one sample of shape {tuple(model.input_shape)} "
                         f"(no batch axis), got {x.shape}")
    target = _resolve_layer(model, layer)
    maps = _capture_output(model, target, x[None])[0]
    if maps.ndim == 1:  # a dense layer: show the vector as a one-row image
        maps = maps[None, None, :]
    maps = maps[:max_maps]
    rows, columns = _grid(len(maps))
    fig = Figure(figsize=(1.4 * columns, 1.4 * rows + 0.4), layout="constrained")
    _image_axes(fig, list(maps), titles=[str(c) for c in range(len(maps))], cmap="viridis")
    fig.suptitle(f"{target.name} output {tuple(maps.shape)}")
    return fig


# ---------------------------------------------------------------------- Grad-CAM
def grad_cam(model, x, target_class=None, layer=None):
    """Grad-CAM heatmap ``(H, W)`` in [0, 1]: where in ``x`` the evidence for a class lies.

    Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks via
    Gradient-based Localization", ICCV 2017. With ``A`` (K, h, w) a convolutional
    layer's activation for one sample and ``y_c`` the score (logit) of class ``c``::

        alpha_k = (1 / (h w)) sum_{i,j} dy_c / dA_k[i, j]     (how much map k counts for c)
        cam     = ReLU(sum_k alpha_k A_k)                      (h, w)

    ``cam`` is upsampled bilinearly to the input's ``(H, W)`` with
    ``scipy.ndimage.zoom(order=1, grid_mode=True, mode='nearest')``, which places
    pixel centres as torch's ``interpolate(mode='bilinear', align_corners=False)``
    does, then divided by its maximum, so 0 keeps meaning "no evidence". An
    all-zero cam (no map speaks for the class) gives all zeros.

    Parameters
    ----------
    model : Sequential
        A classifier ending in class scores ``(N, classes)``.
    x : array (C, H, W)
        One sample, no batch axis.
    target_class : int, optional
        The class to explain; default the class the model predicts for ``x``.
    layer : int, str or Layer, optional
        An index into the model's layers, a layer name, or the layer object.
        Default: the last convolution (a layer with a 4-D weight) in the model,
        nested ones included.

    How it runs
    -----------
    The model is flattened into a chain of steps (nested ``Sequential``s are
    opened; a ``Residual`` or ``Concatenate`` is one step) and run forward step by
    step in evaluation mode, keeping ``A``, the output of the step that holds
    ``layer``. A layer inside a ``Residual`` or ``Concatenate`` (or a conv's fused
    activation) cannot be cut out of its step, so that whole step's output is used
    instead, e.g. the block's sum ``block(x) + shortcut(x)``. A one-hot on ``y_c``
    then goes back through the steps above ``A`` via their own ``backward``. A
    final ``Softmax`` step is skipped, so the gradient is the logit's, as in the
    paper. ``backward`` overwrites ``grads``: they are saved and restored in
    place, so a call leaves params, grads and buffers as they were.
    """
    heatmap, _, _ = _grad_cam(model, x, target_class, layer)
    return heatmap


def _grad_cam(model, x, target_class, layer):
    """``(heatmap, target_class, step)`` where ``step`` is the layer whose output was ``A``."""
    from .layers import Sequential, Softmax

    x = _one_sample(model, x, "grad_cam")
    if not model.built:
        model.build(x.shape)
    steps = _chain(model)
    target = _last_convolution(model, steps) if layer is None else _resolve_layer(model, layer)
    while isinstance(target, Sequential) and target.layers:  # its output is its last layer's
        target = target.layers[-1]
    cut = next(i for i, step in enumerate(steps)
               if any(held is target for held in step.layers_recursive()))

    activation = backend.to_device(x[None], model.device)
    for step in steps[:cut + 1]:
        activation = step.forward(activation, training=False)
    if activation.ndim != 4:
        raise ValueError(f"grad_cam needs a layer with a 4-D output (N, K, h, w); "
                         f"{steps[cut].name} gives shape {tuple(activation.shape)}")
    above = steps[cut + 1:]
    if above and isinstance(above[-1], Softmax):
        above = above[:-1]
    scores = activation
    for step in above:
        scores = step.forward(scores, training=False)
    if scores.ndim != 2:
        raise ValueError(f"grad_cam expected {model.name} to end in class scores (N, classes) "
                         f"after {steps[cut].name}, got shape {tuple(scores.shape)}")
    target_class = _check_class(target_class, backend.to_numpy(scores)[0], model.name)

    xp = backend.get_array_module(scores)
    grad = xp.zeros_like(scores)
    grad[0, target_class] = 1
    with _grads_restored(model):
        for step in reversed(above):
            grad = step.backward(grad)
            if grad is None:
                raise RuntimeError(f"grad_cam: {step.name}.backward returned no input gradient "
                                   f"(skip_input_grad is set); unset it and try again")
    heatmap = _cam(backend.to_numpy(activation)[0], backend.to_numpy(grad)[0], x.shape[1:])
    return heatmap, target_class, steps[cut]


def _cam(maps, grad, size):
    """``ReLU(sum_k alpha_k A_k)`` with ``alpha_k`` the spatial mean of ``dy_c/dA_k``,
    upsampled bilinearly to ``size`` and divided by its maximum."""
    from scipy import ndimage

    alpha = grad.astype(np.float64).mean(axis=(1, 2))
    cam = np.maximum(np.tensordot(alpha, maps.astype(np.float64), axes=1), 0.0)
    (height, width), (h, w) = size, cam.shape
    cam = ndimage.zoom(cam, (height / h, width / w), order=1, mode="nearest", grid_mode=True)
    peak = cam.max()
    return np.clip(cam / peak, 0.0, 1.0) if peak > 0 else np.zeros_like(cam)


def _one_sample(model, x, owner: str):
    """``x`` as one (C, H, W) sample in the model's dtype, or a ValueError saying what is wrong."""
    x = np.asarray(backend.to_numpy(x), dtype=model.dtype)
    if x.ndim != 3:
        raise ValueError(f"{owner} expected one image sample (C, H, W) with no batch axis, "
                         f"got shape {x.shape}")
    if model.built and x.shape != tuple(model.input_shape):
        raise ValueError(f"{owner} expected one sample of shape {tuple(model.input_shape)} "
                         f"(no batch axis), got {x.shape}")
    return x


def _chain(model):
    """The model as steps run one after the other: nested ``Sequential``s are opened."""
    from .layers import Sequential

    if not isinstance(model, Sequential):
        return [model]
    return [step for child in model.layers for step in _chain(child)]


def _last_convolution(model, steps):
    """The last layer with a 4-D weight, in the order the steps run."""
    for step in reversed(steps):
        convolutions = [held for held in step.layers_recursive()
                        if any(p.ndim == 4 for p in held.params.values())]
        if convolutions:
            return convolutions[-1]
    raise ValueError(f"grad_cam found no convolution layer in {model.name}; "
                     f"pass layer= (an index, a name or a layer with a 4-D output)")


def _check_class(target_class, scores, model_name: str) -> int:
    """The class to explain: ``target_class`` checked, or the predicted one."""
    if target_class is None:
        return int(np.argmax(scores))
    if isinstance(target_class, (bool, np.bool_)) or not isinstance(target_class, (int, np.integer)):
        raise TypeError(f"grad_cam expected an int target_class, got {target_class!r}")
    if not 0 <= target_class < len(scores):
        raise ValueError(f"grad_cam target_class {target_class} is out of range for {model_name} "
                         f"with {len(scores)} classes")
    return int(target_class)


@contextmanager
def _grads_restored(model):
    """Save every gradient of ``model`` and write it back on exit.

    In place, because optimizers hold references to the grad arrays.
    """
    saved = [(held.grads, key, grad.copy())
             for held in model.layers_recursive() for key, grad in held.grads.items()]
    try:
        yield
    finally:
        for grads, key, value in saved:
            grads[key][...] = value


def plot_grad_cam(model, x, target_class=None, layer=None, alpha=0.5):
    """The input (left) and the Grad-CAM heatmap laid over it (right); see ``grad_cam``.

    The image is scaled to [0, 1] for display; the heatmap uses the ``jet``
    colour map at opacity ``alpha``, with a colour bar.
    """
    if isinstance(alpha, (bool, np.bool_)) or not isinstance(alpha, (int, float, np.floating)) \
            or not 0 <= alpha <= 1:
        raise ValueError(f"plot_grad_cam expected 0 <= alpha <= 1, got {alpha!r}")
    heatmap, target_class, step = _grad_cam(model, x, target_class, layer)
    image = np.asarray(backend.to_numpy(x), dtype=np.float64)
    image = (image - image.min()) / max(image.max() - image.min(), 1e-12)
    image = image.transpose(1, 2, 0) if image.shape[0] == 3 else image[0]
    fig = Figure(figsize=(7, 3.6), layout="constrained")
    image_ax, overlay_ax = fig.subplots(1, 2)
    for ax in (image_ax, overlay_ax):
        ax.set_axis_off()
        ax.imshow(image, cmap="gray", interpolation="nearest")
    image_ax.set_title("input", fontsize=9)
    overlay = overlay_ax.imshow(heatmap, cmap="jet", alpha=alpha, vmin=0, vmax=1, interpolation="nearest")
    overlay_ax.set_title(f"Grad-CAM, class {target_class}, at {step.name}", fontsize=9)
    fig.colorbar(overlay, ax=overlay_ax, shrink=0.8)
    return fig


# ---------------------------------------------------------------------- filters over training
def animate_filters(snapshots, path, fps=4, max_filters=64):
    """Write a GIF of a convolution's filters changing over training; returns ``path``.

    ``snapshots`` is a ``callbacks.FilterRecorder(layer)``'s ``.snapshots`` (or the
    recorder itself): weights (C_out, C_in, kh, kw), the first taken before
    training and one after each epoch, so frame ``k`` is titled "epoch k". Each
    frame is the grid of ``plot_filters``, but each filter keeps one colour scale,
    its min and max over all snapshots, so what changes from frame to frame is
    the weights, not the scaling.

    The GIF is made by matplotlib's ``PillowWriter`` in a temporary file beside
    ``path`` and moved into place with ``os.replace``: an interrupted call never
    leaves a half-written GIF.
    """
    from matplotlib.animation import PillowWriter

    layer_name = getattr(getattr(snapshots, "layer", None), "name", None)
    weights = _checked_snapshots(getattr(snapshots, "snapshots", snapshots))
    if isinstance(fps, (bool, np.bool_)) or not isinstance(fps, (int, float, np.number)) or not fps > 0:
        raise ValueError(f"animate_filters expected fps > 0, got {fps!r}")
    weights = weights[:, :max_filters]
    low = weights.min(axis=(0, 2, 3, 4), keepdims=True)[0]
    high = weights.max(axis=(0, 2, 3, 4), keepdims=True)[0]
    first = _filter_images(weights[0], low, high)
    rows, columns = _grid(len(first))
    fig = Figure(figsize=(1.2 * columns, 1.2 * rows + 0.4), layout="constrained")
    axes = _image_axes(fig, first, cmap=None if weights.shape[2] == 3 else "gray")
    images = [ax.get_images()[0] for ax in axes.flat if ax.get_images()]
    for image in images:
        image.set_clim(0, 1)  # imshow would fit the colour range to the first frame alone
    title = fig.suptitle("")
    what = f"{layer_name} filters" if layer_name else "filters"

    with atomic_write(path, suffix=".gif") as temporary:  # Pillow picks GIF from the suffix
        # setup/finish rather than writer.saving(): saving() finishes even after an error,
        # and finishing with no frames would hide that error behind an IndexError.
        writer = PillowWriter(fps=fps)
        writer.setup(fig, temporary, dpi=100)
        for epoch, weight in enumerate(weights):
            for image, filter_image in zip(images, _filter_images(weight, low, high)):
                image.set_data(filter_image)
            # The epoch in the title also keeps Pillow from merging two identical frames.
            title.set_text(f"{what} {tuple(weights.shape[2:])}, epoch {epoch}"
                           + (" (before training)" if epoch == 0 else ""))
            writer.grab_frame()
        writer.finish()
    return path


def _checked_snapshots(snapshots) -> np.ndarray:
    """Stack weight snapshots into (T, C_out, C_in, kh, kw), or raise a ValueError."""
    snapshots = [] if snapshots is None else list(snapshots)
    if not snapshots:
        raise ValueError("animate_filters got no snapshots; record them during fit with "
                         "callbacks.FilterRecorder(layer) and pass its .snapshots")
    arrays = [np.asarray(backend.to_numpy(snapshot), dtype=np.float64) for snapshot in snapshots]
    for index, array in enumerate(arrays):
        if array.ndim != 4:
            raise ValueError(f"animate_filters expected each snapshot to be a 4-D conv weight "
                             f"(C_out, C_in, kh, kw); snapshot {index} has shape {array.shape}")
        if array.shape != arrays[0].shape:
            raise ValueError(f"animate_filters expected snapshots of one layer, all of one shape; "
                             f"snapshot {index} has shape {array.shape} but snapshot 0 has "
                             f"{arrays[0].shape}")
    return np.stack(arrays)


def plot_reconstructions(autoencoder, x, n=10):
    """Inputs (top row) and the autoencoder's reconstructions (bottom row) for ``n`` samples.

    Flat inputs ``(N, D)`` are shown as square images when ``D`` is a square.
    """
    x = np.asarray(backend.to_numpy(x))[:n]
    reconstructions = backend.to_numpy(autoencoder.predict(x)).reshape(x.shape)
    images = [_as_image(sample) for sample in np.concatenate([x, reconstructions])]
    fig = Figure(figsize=(1.2 * len(x), 2.8), layout="constrained")
    axes = fig.subplots(2, len(x), squeeze=False)
    for index, ax in enumerate(axes.flat):
        ax.set_axis_off()
        ax.imshow(images[index], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    axes[0, 0].set_title("input", fontsize=8, loc="left")
    axes[1, 0].set_title("reconstruction", fontsize=8, loc="left")
    return fig


def _as_image(sample):
    """(C, H, W) -> (H, W) or (H, W, 3); (D,) -> (sqrt D, sqrt D) when D is a square."""
    sample = np.clip(sample, 0, 1)
    if sample.ndim == 3:
        return sample.transpose(1, 2, 0) if sample.shape[0] == 3 else sample[0]
    if sample.ndim == 1:
        side = int(round(np.sqrt(sample.size)))
        return sample.reshape(side, side) if side * side == sample.size else sample[None, :]
    return sample
