"""The ``minicnn`` command: train, evaluate and summarise models from the shell.

::

    minicnn train --model simple_cnn --dataset digits --epochs 8 --out runs/demo
    minicnn evaluate runs/demo/model.npz --dataset digits
    minicnn summary --model lenet5 --input-shape 1,28,28

``train`` writes ``model.npz``, ``history.csv``, ``loss.png``, ``accuracy.png``
and ``confusion_matrix.png`` into ``--out`` and prints the held-out accuracy.
The held-out set is the dataset's test split, or for ``digits`` (which has
none) a fixed stratified 20 % split, the same in ``train`` and ``evaluate``.
"""
from __future__ import annotations

import argparse
import os
import sys
import time


__all__ = ["main", "MODELS", "DATASETS"]

MODELS = ("lenet5", "simple_cnn", "mlp", "vgg_mini", "mobilenet_mini", "resnet_mini", "inception_mini")
DATASETS = ("digits", "mnist", "fashion-mnist", "cifar10")
DIGITS_SPLIT_SEED = 0  # fixed, so `evaluate` sees the same held-out digits as `train`


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="minicnn", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add_data_args(sub):
        sub.add_argument("--dataset", required=True, type=_dataset_name,
                         help=f"one of {', '.join(DATASETS)}")
        sub.add_argument("--data-dir", default=None,
                         help="folder with the dataset files (default: the loader's search path)")

    train = commands.add_parser("train", help="train a model from the zoo and save it with plots")
    train.add_argument("--model", required=True, choices=MODELS)
    add_data_args(train)
    train.add_argument("--epochs", type=_positive_int, default=8)
    train.add_argument("--batch-size", type=_positive_int, default=32)
    train.add_argument("--lr", type=float, default=5e-3, help="initial Adam learning rate (default 5e-3)")
    train.add_argument("--schedule", choices=("cosine", "constant"), default="cosine",
                       help="learning-rate schedule: cosine annealing to 0 over the epochs (default) "
                            "or constant")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--limit", type=_positive_int, default=None,
                       help="use only the first LIMIT training samples (quick experiments)")
    train.add_argument("--out", default=None, help="output folder (default runs/MODEL-DATASET)")
    train.add_argument("--quiet", action="store_true", help="no progress bars")

    evaluate = commands.add_parser("evaluate", help="evaluate a saved model on a dataset's held-out set")
    evaluate.add_argument("model_path", metavar="MODEL", help="a model.npz written by `minicnn train`")
    add_data_args(evaluate)
    evaluate.add_argument("--batch-size", type=_positive_int, default=256)

    summary = commands.add_parser("summary", help="print a model's layers, shapes and parameter counts")
    summary.add_argument("--model", required=True, choices=MODELS)
    summary.add_argument("--input-shape", type=_shape, default=None,
                         help="per-sample input shape C,H,W (default 1,28,28)")
    summary.add_argument("--num-classes", type=_positive_int, default=10)
    return parser


def _dataset_name(value: str) -> str:
    key = value.lower().replace("_", "-")
    if key not in DATASETS:
        raise argparse.ArgumentTypeError(f"unknown dataset {value!r}; choose from {', '.join(DATASETS)}")
    return key


def _positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return number


def _shape(value: str) -> tuple:
    try:
        shape = tuple(int(part) for part in value.replace("x", ",").split(",") if part.strip())
    except ValueError:
        shape = ()
    if not shape or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"expected a shape such as 1,28,28, got {value!r}")
    return shape


# ---------------------------------------------------------------------- data
def load_dataset(name: str, data_dir=None):
    """``(x_train, y_train, x_test, y_test)`` for a dataset name of :data:`DATASETS`."""
    from . import data

    if name == "digits":
        x, y = data.load_digits()
        x_train, x_test, y_train, y_test = data.train_test_split(
            x, y, test_size=0.2, stratify=True, seed=DIGITS_SPLIT_SEED)
        return x_train, y_train, x_test, y_test
    loader = {"mnist": data.load_mnist, "fashion-mnist": data.load_fashion_mnist,
              "cifar10": data.load_cifar10}[name]
    x_train, y_train = loader(data_dir, split="train")
    x_test, y_test = loader(data_dir, split="test")
    return x_train, y_train, x_test, y_test


def _make_model(name: str, num_classes: int, in_channels: int):
    from . import models

    return getattr(models, name)(num_classes=num_classes, in_channels=in_channels)


# ---------------------------------------------------------------------- commands
def _train(args) -> int:
    import minicnn
    from . import viz
    from .callbacks import CSVLogger, LearningRateScheduler
    from .optim import CosineAnnealingLR

    minicnn.seed(args.seed)
    x_train, y_train, x_test, y_test = load_dataset(args.dataset, args.data_dir)
    if args.limit:
        x_train, y_train = x_train[:args.limit], y_train[:args.limit]
    num_classes = int(max(y_train.max(), y_test.max())) + 1
    model = _make_model(args.model, num_classes, x_train.shape[1])
    model.build(x_train.shape[1:])
    model.compile("adam", loss="cross_entropy", lr=args.lr)
    out = args.out or os.path.join("runs", f"{args.model}-{args.dataset}")
    os.makedirs(out, exist_ok=True)
    print(f"Training {args.model} ({model.parameters_count():,} parameters) on {args.dataset}: "
          f"{len(x_train)} training / {len(x_test)} held-out samples, {args.epochs} epochs")

    start = time.perf_counter()
    callbacks = [CSVLogger(os.path.join(out, "history.csv"))]
    if args.schedule == "cosine":  # a high start then a gentle finish: robust in few epochs
        callbacks.append(LearningRateScheduler(CosineAnnealingLR(model.optimizer, T_max=args.epochs)))
    history = model.fit(x_train, y_train, epochs=args.epochs, batch_size=args.batch_size,
                        validation_data=(x_test, y_test), verbose=2 if args.quiet else 1,
                        callbacks=callbacks)
    elapsed = time.perf_counter() - start
    model.save(os.path.join(out, "model.npz"))

    predicted = model.predict(x_test).argmax(axis=1)
    accuracy = float((predicted == y_test).mean())
    _save(viz.plot_history(history, metrics=("loss",)), os.path.join(out, "loss.png"))
    _save(viz.plot_history(history, metrics=("accuracy",)), os.path.join(out, "accuracy.png"))
    _save(viz.plot_confusion_matrix(y_test, predicted, class_names=[str(k) for k in range(num_classes)]),
          os.path.join(out, "confusion_matrix.png"))
    print(f"held-out accuracy: {accuracy:.4f} ({len(x_test)} samples) after {elapsed:.1f}s of training")
    print(f"wrote {out}/: model.npz, history.csv, loss.png, accuracy.png, confusion_matrix.png")
    return 0


def _save(fig, path: str) -> None:
    """Write a plot without ever leaving a half-written PNG over last run's."""
    from .fileio import atomic_write

    with atomic_write(path, suffix=".png") as temporary:  # matplotlib picks PNG from the suffix
        fig.savefig(temporary, dpi=100)


def _evaluate(args) -> int:
    from .serialization import load

    model = load(args.model_path)
    _, _, x_test, y_test = load_dataset(args.dataset, args.data_dir)
    model.compile("adam", loss="cross_entropy")
    results = model.evaluate(x_test, y_test, batch_size=args.batch_size)
    print(f"{args.model_path} on {args.dataset} held-out set ({len(x_test)} samples): "
          + ", ".join(f"{key} {value:.4f}" for key, value in results.items()))
    return 0


def _summary(args) -> int:
    input_shape = args.input_shape or (1, 28, 28)
    model = _make_model(args.model, args.num_classes, input_shape[0])
    model.build(input_shape)
    model.summary()
    return 0


def main(argv=None) -> int:
    """Run the command line ``argv`` (default ``sys.argv[1:]``); returns the exit status.

    Errors a user can fix (missing data, a model that does not fit the input)
    print one ``error:`` line instead of a traceback and return 1.
    """
    args = _build_parser().parse_args(argv)
    command = {"train": _train, "evaluate": _evaluate, "summary": _summary}[args.command]
    try:
        return command(args)
    except (FileNotFoundError, ValueError) as exc:
        print(f"minicnn {args.command}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
