"""Plots for understanding a network: training curves, confusion matrices, filters,
feature maps, reconstructions and ROC curves.

Every ``plot_*`` function returns a ``matplotlib.figure.Figure``; save it with
``fig.savefig('name.png')`` or let Jupyter display it. Figures are created
directly (``Figure()``, not ``pyplot``), so nothing here needs a display or
keeps figures alive in pyplot's global registry; on a machine without a
display pyplot itself is switched to the Agg backend for anyone who uses it.
"""
from __future__ import annotations

import os
import sys

import matplotlib

if sys.platform.startswith("linux") and not os.environ.get("DISPLAY") \
        and not os.environ.get("WAYLAND_DISPLAY") and not os.environ.get("MPLBACKEND") \
        and "matplotlib.pyplot" not in sys.modules:
    matplotlib.use("Agg")

import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from . import backend  # noqa: E402

__all__ = ["plot_history", "plot_confusion_matrix", "plot_filters", "plot_feature_maps",
           "plot_reconstructions", "plot_roc"]


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
    span = np.maximum(weight.max(axis=(1, 2, 3), keepdims=True) - low, 1e-12)
    scaled = (weight - low) / span
    images = scaled.transpose(0, 2, 3, 1) if scaled.shape[1] == 3 else scaled[:, 0]
    rows, columns = _grid(len(images))
    fig = Figure(figsize=(1.2 * columns, 1.2 * rows + 0.4), layout="constrained")
    _image_axes(fig, images, cmap=None if scaled.shape[1] == 3 else "gray")
    fig.suptitle(f"{conv_layer.name} filters {tuple(weight.shape[1:])}")
    return fig


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
