"""DataLoader and train_test_split (minicnn.data.loader)."""
import numpy as np
import pytest

import minicnn
from minicnn.data import DataLoader, RandomNoise, train_test_split


def _numbered(n):
    """Images whose every pixel is the sample's index, and labels equal to the index."""
    x = np.broadcast_to(np.arange(n, dtype=np.float32)[:, None, None, None], (n, 1, 2, 2)).copy()
    return x, np.arange(n, dtype=np.int64)


@pytest.mark.parametrize("n,batch_size,drop_last", [(10, 3, False), (10, 3, True), (12, 4, False), (5, 8, False)])
@pytest.mark.parametrize("shuffle", [True, False])
def test_epoch_visits_every_sample_once(n, batch_size, drop_last, shuffle):
    x, y = _numbered(n)
    loader = DataLoader(x, y, batch_size=batch_size, shuffle=shuffle, drop_last=drop_last)
    batches = list(loader)
    expected_batches = n // batch_size if drop_last else -(-n // batch_size)
    assert len(loader) == len(batches) == expected_batches
    sizes = [len(yb) for _, yb in batches]
    assert all(s == batch_size for s in sizes[:-1]) and (sizes[-1] == batch_size or not drop_last)
    seen = np.concatenate([yb for _, yb in batches])
    for xb, yb in batches:  # images stay paired with their labels
        np.testing.assert_array_equal(xb[:, 0, 0, 0], yb)
        assert xb.shape[1:] == (1, 2, 2) and xb.dtype == np.float32
    if drop_last:
        assert len(set(seen)) == len(seen) == (n // batch_size) * batch_size
    else:
        np.testing.assert_array_equal(np.sort(seen), np.arange(n))
    if not shuffle:
        np.testing.assert_array_equal(seen, np.arange(len(seen)))


def test_shuffle_changes_between_epochs():
    x, y = _numbered(50)
    loader = DataLoader(x, y, batch_size=50)
    minicnn.seed(0)
    first, second = (next(iter(loader))[1] for _ in range(2))
    assert not np.array_equal(first, np.arange(50))
    assert not np.array_equal(first, second)
    np.testing.assert_array_equal(np.sort(first), np.sort(second))


def test_reproducible_under_seed():
    x, y = _numbered(20)
    loader = DataLoader(x / 20, y, batch_size=6, augment=RandomNoise(0.1))

    def two_epochs():
        minicnn.seed(123)
        return [b for _ in range(2) for b in loader]

    run1, run2 = two_epochs(), two_epochs()
    for (xa, ya), (xb, yb) in zip(run1, run2):
        np.testing.assert_array_equal(ya, yb)
        np.testing.assert_array_equal(xa, xb)
    minicnn.seed(124)
    assert not np.array_equal(next(iter(loader))[1], run1[0][1])


def test_augment_runs_on_every_batch_and_keeps_the_data():
    x, y = _numbered(7)
    calls = []

    def plus_one(xb):
        calls.append(len(xb))
        return xb + 1

    loader = DataLoader(x, y, batch_size=3, shuffle=False, augment=plus_one)
    out = np.concatenate([xb for xb, _ in loader])
    assert calls == [3, 3, 1]
    np.testing.assert_array_equal(out, x + 1)
    np.testing.assert_array_equal(x[:, 0, 0, 0], np.arange(7))  # the stored data is untouched


def test_without_labels_yields_inputs_only():
    x, _ = _numbered(5)
    batches = list(DataLoader(x, batch_size=2, shuffle=False))
    assert [b.shape for b in batches] == [(2, 1, 2, 2), (2, 1, 2, 2), (1, 1, 2, 2)]


def test_accepts_lists():
    batches = list(DataLoader([[1.0], [2.0], [3.0]], [0, 1, 0], batch_size=2, shuffle=False))
    np.testing.assert_array_equal(batches[0][0], [[1.0], [2.0]])
    np.testing.assert_array_equal(batches[1][1], [0])


def test_bad_arguments():
    x, y = _numbered(10)
    with pytest.raises(ValueError, match=r"DataLoader expected x and y of the same length, got 10 samples in x and 9 in y"):
        DataLoader(x, y[:9])
    with pytest.raises(ValueError, match=r"DataLoader expected batch_size >= 1, got 0"):
        DataLoader(x, y, batch_size=0)
    with pytest.raises(TypeError, match=r"DataLoader expected batch_size as an int, got 2.5"):
        DataLoader(x, y, batch_size=2.5)
    with pytest.raises(TypeError, match=r"DataLoader expected augment to be callable or None"):
        DataLoader(x, y, augment="flip")
    with pytest.raises(ValueError, match=r"DataLoader expected at least one sample"):
        DataLoader(x[:0], y[:0])


def test_train_test_split_sizes_and_disjointness():
    x, y = _numbered(100)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.2, seed=0)
    assert x_train.shape == (80, 1, 2, 2) and x_test.shape == (20, 1, 2, 2)
    np.testing.assert_array_equal(x_train[:, 0, 0, 0], y_train)  # pairs kept
    np.testing.assert_array_equal(np.sort(np.concatenate([y_train, y_test])), np.arange(100))


def test_train_test_split_stratify_keeps_proportions():
    x = np.zeros((100, 3))
    y = np.array([0] * 70 + [1] * 20 + [2] * 10)
    _, _, y_train, y_test = train_test_split(x, y, test_size=0.2, stratify=True, seed=3)
    assert list(np.bincount(y_test)) == [14, 4, 2]
    assert list(np.bincount(y_train)) == [56, 16, 8]


def test_train_test_split_reproducible():
    x, y = _numbered(30)
    a = train_test_split(x, y, seed=7)[3]
    b = train_test_split(x, y, seed=7)[3]
    np.testing.assert_array_equal(a, b)
    minicnn.seed(1)
    c = train_test_split(x, y)[3]
    minicnn.seed(1)
    d = train_test_split(x, y)[3]
    np.testing.assert_array_equal(c, d)
    x_train, x_test = train_test_split(x, test_size=0.5, seed=0)
    assert len(x_train) == len(x_test) == 15


def test_train_test_split_bad_input():
    x, y = _numbered(10)
    with pytest.raises(ValueError, match=r"train_test_split expected x and y of the same length, got 10 samples in x and 8 in y"):
        train_test_split(x, y[:8])
    with pytest.raises(ValueError, match=r"stratify=True\) needs the labels"):
        train_test_split(x, stratify=True)
    with pytest.raises(ValueError, match=r"x and stratify of the same length, got 10 samples in x and 3"):
        train_test_split(x, y, stratify=[0, 1, 0])
