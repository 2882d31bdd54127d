"""Dataset loaders (minicnn.data.datasets): generated files, the real MNIST test set, bundled data."""
import os
import pickle

import numpy as np
import pytest

import minicnn.data.datasets as datasets
from minicnn.data import (load_cifar10, load_digits, load_fashion_mnist, load_mnist,
                          load_sample_image)
from tests.data.fake_files import fake_digits, idx_bytes, write_cifar_batch, write_idx_pair
from tests.helpers import mnist_dir


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """No real data reachable: $MINICNN_DATA, home, working directory and repo root all under tmp."""
    env, home, cwd, repo = (tmp_path / p for p in ("env", "home", "work/cwd", "repo/main"))
    for d in (env, home, cwd, repo):
        d.mkdir(parents=True)
    monkeypatch.setenv("MINICNN_DATA", str(env))
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(cwd)
    monkeypatch.setattr(datasets, "_REPO_ROOT", repo)
    return tmp_path


# ----------------------------------------------------------------------------- MNIST / Fashion-MNIST

@pytest.mark.parametrize("loader", [load_mnist, load_fashion_mnist])
@pytest.mark.parametrize("split,prefix,gz", [("train", "train", True), ("test", "t10k", False),
                                             ("test", "t10k", True)])
def test_idx_dataset_loads_generated_files(tmp_path, loader, split, prefix, gz):
    images, labels = fake_digits(9, seed=3)
    write_idx_pair(tmp_path, prefix, images, labels, gz)
    x, y = loader(tmp_path, split=split)
    assert x.shape == (9, 1, 28, 28) and x.dtype == np.float32
    assert y.shape == (9,) and y.dtype == np.int64
    np.testing.assert_array_equal(y, labels)
    # pixel value v becomes v / 255, checked against a hand-picked pixel as well as the whole array
    assert x[2, 0, 5, 7] == np.float32(images[2, 5, 7]) / np.float32(255)
    np.testing.assert_allclose(x[:, 0], images / 255.0, rtol=1e-7)
    assert 0.0 <= x.min() and x.max() <= 1.0


def test_image_and_label_counts_must_match(tmp_path):
    images, labels = fake_digits(5)
    write_idx_pair(tmp_path, "t10k", images, labels[:4], gz=False)
    with pytest.raises(ValueError, match=r"holds 5 images but .*t10k-labels-idx1-ubyte holds 4 labels"):
        load_mnist(tmp_path, split="test")


def test_labels_outside_0_to_9_are_rejected(tmp_path):
    images, labels = fake_digits(5)
    labels[3] = 12
    write_idx_pair(tmp_path, "t10k", images, labels, gz=True)
    with pytest.raises(ValueError, match=r"label 12, expected 0-9"):
        load_mnist(tmp_path, split="test")


def test_wrong_file_in_place_of_images(tmp_path):
    _, labels = fake_digits(5)
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(idx_bytes(labels))
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(labels))
    with pytest.raises(ValueError, match=r"magic number 2049, expected 2051"):
        load_mnist(tmp_path, split="test")


def test_bad_split(tmp_path):
    with pytest.raises(ValueError, match=r"load_mnist expected split 'train' or 'test', got 'val'"):
        load_mnist(tmp_path, split="val")
    with pytest.raises(ValueError, match=r"load_cifar10 expected split 'train' or 'test', got 'valid'"):
        load_cifar10(tmp_path, split="valid")


def test_missing_files_in_given_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"MNIST train files not found") as info:
        load_mnist(tmp_path / "nowhere")
    message = str(info.value)
    assert str(tmp_path / "nowhere") in message
    assert "train-images-idx3-ubyte[.gz]" in message and "download=True" in message


def test_missing_everywhere_lists_every_place_looked(isolated):
    with pytest.raises(FileNotFoundError) as info:
        load_mnist(split="test")
    message = str(info.value)
    for place in (isolated / "env" / "mnist", isolated / "env",
                  isolated / "home" / ".minicnn" / "data" / "mnist",
                  isolated / "work" / "shared" / "data" / "mnist",     # ../shared/data/mnist from the CWD
                  isolated / "repo" / "shared" / "data" / "mnist"):    # and from the repository
        assert f"  {place}\n" in message + "\n", f"{place} missing from:\n{message}"
    assert "download=True" in message
    assert "https://ossci-datasets.s3.amazonaws.com/mnist/" in message
    assert isinstance(info.value, OSError)


def test_missing_message_says_when_minicnn_data_is_unset(isolated, monkeypatch):
    monkeypatch.delenv("MINICNN_DATA")
    with pytest.raises(FileNotFoundError, match=r"\$MINICNN_DATA is not set"):
        load_fashion_mnist(split="test")


@pytest.mark.parametrize("where", ["env/mnist", "env", "home/.minicnn/data/mnist", "work/shared/data/mnist",
                                   "repo/shared/data/mnist"])
def test_search_finds_each_place(isolated, where):
    images, labels = fake_digits(4, seed=1)
    write_idx_pair(isolated / where, "t10k", images, labels, gz=True)
    x, y = load_mnist(split="test")
    np.testing.assert_array_equal(y, labels)


def test_fashion_mnist_ignores_bare_minicnn_data(isolated):
    # A bare $MINICNN_DATA holds MNIST's identically named files; Fashion-MNIST must not pick them up.
    images, labels = fake_digits(4)
    write_idx_pair(isolated / "env", "t10k", images, labels, gz=False)
    assert load_mnist(split="test")[0].shape == (4, 1, 28, 28)
    with pytest.raises(FileNotFoundError, match=r"Fashion-MNIST test files not found"):
        load_fashion_mnist(split="test")
    write_idx_pair(isolated / "env" / "fashion-mnist", "t10k", images[:2], labels[:2], gz=False)
    assert load_fashion_mnist(split="test")[0].shape == (2, 1, 28, 28)


MNIST_TEST_CLASS_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]  # published


def test_real_mnist_test_set():
    folder = mnist_dir()
    if folder is None:
        pytest.skip("the real MNIST test set is absent (set $MINICNN_DATA or put t10k files in ../shared/data/mnist)")
    x, y = load_mnist(folder, split="test")
    assert x.shape == (10000, 1, 28, 28) and x.dtype == np.float32
    assert y.shape == (10000,) and y.dtype == np.int64
    assert x.min() == 0.0 and x.max() == 1.0
    assert set(np.unique(y)) == set(range(10))
    assert list(y[:5]) == [7, 2, 1, 0, 4]                   # the famous first test digits
    assert list(np.bincount(y)) == MNIST_TEST_CLASS_COUNTS
    assert abs(float(x.mean()) - 0.1325) < 1e-3              # MNIST's known mean intensity


def test_real_mnist_found_without_a_path():
    folder = mnist_dir()
    if folder is None or folder not in datasets._candidate_dirs("mnist", bare_env=True):
        pytest.skip("the real MNIST test set is not in one of the default search places")
    x, _ = load_mnist(split="test")
    assert x.shape == (10000, 1, 28, 28)


# ----------------------------------------------------------------------------- CIFAR-10

def _fake_cifar(folder, sizes=(2, 3, 1, 2, 2), test_size=4, str_keys=False):
    rng = np.random.default_rng(7)
    batches = {}
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name, n in zip(names, (*sizes, test_size)):
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n)
        write_cifar_batch(folder / name, data, labels, str_keys)
        batches[name] = (data, labels)
    return batches


def _expected_cifar(batches, names):
    """The CIFAR row layout by its definition: 1024 red, 1024 green, 1024 blue values, each row-major 32x32."""
    data = np.concatenate([batches[n][0] for n in names])
    x = np.empty((len(data), 3, 32, 32))
    for c in range(3):
        for row in range(32):
            x[:, c, row, :] = data[:, c * 1024 + row * 32: c * 1024 + row * 32 + 32] / 255.0
    return x, np.concatenate([batches[n][1] for n in names])


@pytest.mark.parametrize("nested", [True, False])
@pytest.mark.parametrize("split", ["train", "test"])
def test_cifar10_round_trip(tmp_path, nested, split):
    batches = _fake_cifar(tmp_path / "cifar-10-batches-py" if nested else tmp_path)
    x, y = load_cifar10(tmp_path, split=split)
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    expected_x, expected_y = _expected_cifar(batches, names)
    assert x.shape == ((10 if split == "train" else 4), 3, 32, 32) and x.dtype == np.float32
    assert y.dtype == np.int64
    np.testing.assert_allclose(x, expected_x, rtol=1e-6)
    np.testing.assert_array_equal(y, expected_y)


def test_cifar10_accepts_str_keys(tmp_path):
    batches = _fake_cifar(tmp_path, str_keys=True)
    x, y = load_cifar10(tmp_path, split="test")
    np.testing.assert_array_equal(y, batches["test_batch"][1])


def test_cifar10_missing_lists_places(isolated):
    with pytest.raises(FileNotFoundError) as info:
        load_cifar10(split="test")
    message = str(info.value)
    assert str(isolated / "env" / "cifar10") in message
    assert str(isolated / "env" / "cifar-10-batches-py") in message
    assert "cifar-10-python.tar.gz" in message and "download=True" in message


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_cifar10_refuses_pickles_that_run_code(tmp_path):
    marker = tmp_path / "pwned"
    _fake_cifar(tmp_path)
    with open(tmp_path / "test_batch", "wb") as f:
        pickle.dump({b"data": _RunsCode(str(marker)), b"labels": [0]}, f)
    with pytest.raises(ValueError, match=r"refusing to load posix.mkdir"):
        load_cifar10(tmp_path, split="test")
    assert not marker.exists()


@pytest.mark.parametrize("batch,match", [
    ({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, r"expected uint8 \(N, 3072\)"),
    ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}, r"2 images but 1 labels"),
    ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]}, r"labels span 0..10, expected 0-9"),
    ({b"pixels": np.zeros((2, 3072), np.uint8)}, r"expected 'data' and 'labels'"),
    ([1, 2, 3], r"holds a list, expected a dict"),
])
def test_cifar10_bad_batches(tmp_path, batch, match):
    _fake_cifar(tmp_path)
    with open(tmp_path / "test_batch", "wb") as f:
        pickle.dump(batch, f)
    with pytest.raises(ValueError, match=match):
        load_cifar10(tmp_path, split="test")


def test_cifar10_truncated_pickle(tmp_path):
    _fake_cifar(tmp_path)
    blob = (tmp_path / "test_batch").read_bytes()
    (tmp_path / "test_batch").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(ValueError, match=r"not a readable CIFAR-10 batch"):
        load_cifar10(tmp_path, split="test")


# ----------------------------------------------------------------------------- bundled with scikit-learn

def test_load_digits():
    x, y = load_digits()
    assert x.shape == (1797, 1, 8, 8) and x.dtype == np.float32
    assert y.shape == (1797,) and y.dtype == np.int64
    assert x.min() == 0.0 and x.max() == 1.0
    # pixel counts 0..16 scaled by 1/16: every value is a multiple of 1/16
    np.testing.assert_array_equal(x * 16, np.round(x * 16))
    assert list(np.bincount(y)) == [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]  # UCI's class counts


@pytest.mark.parametrize("name", ["china.jpg", "flower.jpg"])
def test_load_sample_image(name):
    from PIL import Image
    from sklearn.datasets import load_sample_images

    image = load_sample_image(name)
    assert image.shape == (3, 427, 640) and image.dtype == np.float32
    assert 0.0 <= image.min() < image.max() <= 1.0
    # decoded independently with Pillow: channel c of pixel (h, w) is RGB[h, w, c] / 255
    path = next(p for p in load_sample_images().filenames if p.endswith(name))
    rgb = np.asarray(Image.open(path).convert("RGB"))
    np.testing.assert_allclose(image[:, 100, 200], rgb[100, 200] / 255.0, rtol=1e-6)


def test_load_sample_image_unknown_name_lists_names():
    with pytest.raises(ValueError, match=r"expected one of \['china.jpg', 'flower.jpg'\], got 'lena.png'"):
        load_sample_image("lena.png")
