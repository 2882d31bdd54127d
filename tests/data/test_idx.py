"""IDX parsing (minicnn.data.idx) against files written byte by byte from the format's definition."""
import gzip

import numpy as np
import pytest

from minicnn.data.idx import IDX_IMAGES, IDX_LABELS, read_idx
from tests.data.fake_files import fake_digits, idx_bytes


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("n", [1, 7])
def test_images_and_labels_round_trip(tmp_path, gz, n):
    images, labels = fake_digits(n, seed=n)
    for array, magic, name in ((images, IDX_IMAGES, "img"), (labels, IDX_LABELS, "lab")):
        payload = idx_bytes(array)
        path = tmp_path / (name + (".gz" if gz else ""))
        path.write_bytes(gzip.compress(payload) if gz else payload)
        out = read_idx(path, magic)
        assert out.dtype == np.uint8 and out.shape == array.shape
        np.testing.assert_array_equal(out, array)


def test_gzip_is_recognised_by_content_not_name(tmp_path):
    images, _ = fake_digits(3)
    path = tmp_path / "train-images-idx3-ubyte"  # gzipped but named like a raw file
    path.write_bytes(gzip.compress(idx_bytes(images)))
    np.testing.assert_array_equal(read_idx(path, IDX_IMAGES), images)


def test_header_dimensions_are_big_endian(tmp_path):
    # 2051, then N=2, rows=3, cols=4 written by hand: a little-endian reader would see huge sizes.
    payload = bytes([0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 4]) + bytes(range(24))
    path = tmp_path / "hand.idx"
    path.write_bytes(payload)
    out = read_idx(path, IDX_IMAGES)
    assert out.shape == (2, 3, 4)
    assert out[1, 2, 3] == 23 and out[0, 1, 0] == 4


def test_wrong_magic_number_names_both(tmp_path):
    _, labels = fake_digits(5)
    path = tmp_path / "t10k-labels-idx1-ubyte"
    path.write_bytes(idx_bytes(labels))
    with pytest.raises(ValueError, match=r"t10k-labels-idx1-ubyte has magic number 2049, expected 2051"):
        read_idx(path, IDX_IMAGES)


@pytest.mark.parametrize("gz", [False, True])
def test_truncated_file_says_expected_and_found_bytes(tmp_path, gz):
    images, _ = fake_digits(4)
    payload = idx_bytes(images)[:-10]
    path = tmp_path / "cut"
    path.write_bytes(gzip.compress(payload) if gz else payload)
    expected = 4 * 28 * 28
    with pytest.raises(ValueError, match=rf"truncated.*\(4, 28, 28\).*expected {expected} bytes.*found {expected - 10}"):
        read_idx(path, IDX_IMAGES)


def test_trailing_data_is_an_error(tmp_path):
    _, labels = fake_digits(6)
    path = tmp_path / "long"
    path.write_bytes(idx_bytes(labels) + b"\x00\x01")
    with pytest.raises(ValueError, match=r"trailing data.*expected 6 bytes of data, found 8"):
        read_idx(path, IDX_LABELS)


def test_truncated_header_and_empty_file(tmp_path):
    short = tmp_path / "short"
    short.write_bytes(bytes([0, 0, 8, 3, 0, 0, 0, 2]))  # declares 3 dims, holds 1
    with pytest.raises(ValueError, match=r"truncated: its header needs 16 bytes, found 8"):
        read_idx(short, IDX_IMAGES)
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match=r"too short to be an IDX file \(0 bytes\)"):
        read_idx(empty, IDX_IMAGES)


@pytest.mark.parametrize("damage", ["cut", "flip"])
def test_corrupt_gzip_is_a_value_error(tmp_path, damage):
    images, _ = fake_digits(20)
    packed = bytearray(gzip.compress(idx_bytes(images)))
    if damage == "cut":
        packed = packed[: len(packed) // 2]
    else:
        packed[-6] ^= 0xFF  # inside the CRC-32 trailer
    path = tmp_path / "bad.gz"
    path.write_bytes(bytes(packed))
    with pytest.raises(ValueError, match=r"bad.gz is a corrupt gzip file"):
        read_idx(path, IDX_IMAGES)
