"""The ``minicnn`` command line: train / evaluate / summary on digits, and clear errors."""
import csv

import numpy as np
import pytest

import minicnn
from minicnn.cli import load_dataset, main


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "demo"
    status = main(["train", "--model", "simple_cnn", "--dataset", "digits", "--epochs", "3",
                   "--out", str(out), "--quiet"])
    return status, out


def test_train_writes_model_history_and_plots(trained_run, capsys):
    status, out = trained_run
    assert status == 0
    assert {p.name for p in out.iterdir()} == {"model.npz", "history.csv", "loss.png", "accuracy.png",
                                              "confusion_matrix.png"}
    for png in ("loss.png", "accuracy.png", "confusion_matrix.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with open(out / "history.csv") as file:
        rows = list(csv.DictReader(file))
    assert len(rows) == 3 and "val_accuracy" in rows[0]
    # the saved model reproduces the held-out accuracy recorded in the last epoch
    _, _, x_test, y_test = load_dataset("digits")
    accuracy = float((minicnn.load(out / "model.npz").predict(x_test).argmax(axis=1) == y_test).mean())
    assert accuracy == pytest.approx(float(rows[-1]["val_accuracy"]))
    assert accuracy > 0.8


def test_evaluate_reports_the_saved_models_accuracy(trained_run, capsys):
    _, out = trained_run
    capsys.readouterr()
    assert main(["evaluate", str(out / "model.npz"), "--dataset", "digits"]) == 0
    printed = capsys.readouterr().out
    _, _, x_test, y_test = load_dataset("digits")
    accuracy = float((minicnn.load(out / "model.npz").predict(x_test).argmax(axis=1) == y_test).mean())
    assert f"accuracy {accuracy:.4f}" in printed


def test_digits_split_is_fixed_and_disjoint():
    x_train, y_train, x_test, y_test = load_dataset("digits")
    again = load_dataset("digits")
    np.testing.assert_array_equal(x_test, again[2])
    assert len(x_train) + len(x_test) == 1797 and len(x_test) == 360
    train_rows = {row.tobytes() for row in x_train}
    assert sum(row.tobytes() in train_rows for row in x_test) < 5  # digits has a few duplicate images
    assert np.bincount(y_test).min() >= 30  # stratified


def test_summary_prints_the_layer_table(capsys):
    assert main(["summary", "--model", "lenet5"]) == 0
    printed = capsys.readouterr().out
    assert "61,706" in printed  # LeNet-5's parameter count on (1, 28, 28), see its docstring
    assert main(["summary", "--model", "simple_cnn", "--input-shape", "3,8,8"]) == 0
    assert "(None, 3, 8, 8)" in capsys.readouterr().out


def test_unknown_dataset_lists_the_names(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--model", "simple_cnn", "--dataset", "imagenet"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "unknown dataset 'imagenet'" in err and "digits" in err and "fashion-mnist" in err


def test_unknown_model_and_missing_data_dir(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["summary", "--model", "alexnet"])
    assert "lenet5" in capsys.readouterr().err
    status = main(["train", "--model", "lenet5", "--dataset", "fashion-mnist", "--data-dir",
                   str(tmp_path / "nowhere"), "--out", str(tmp_path / "out")])
    assert status == 1
    assert "nowhere" in capsys.readouterr().err


def test_model_that_does_not_fit_the_data_is_an_error_line(tmp_path, capsys):
    status = main(["train", "--model", "lenet5", "--dataset", "digits", "--epochs", "1",
                   "--out", str(tmp_path / "out")])
    assert status == 1
    assert "error" in capsys.readouterr().err
