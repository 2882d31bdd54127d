"""Downloads (minicnn.data.download) against a local HTTP server on 127.0.0.1; nothing here reaches the internet."""
import gzip
import hashlib
import io
import os
import tarfile
import threading
import urllib.parse
import urllib.request
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

import minicnn.data.datasets as datasets
import minicnn.data.download as download
from minicnn.data import download_dataset, load_cifar10, load_mnist
from tests.data.fake_files import fake_digits, idx_bytes, write_cifar_batch
from tests.helpers import mnist_dir

T10K = ["t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]


@pytest.fixture(autouse=True)
def local_only(monkeypatch):
    """Fail any attempt to open a URL that is not on 127.0.0.1."""
    real_urlopen = urllib.request.urlopen

    def guarded(url, *args, **kwargs):
        host = urllib.parse.urlsplit(url if isinstance(url, str) else url.full_url).hostname
        assert host == "127.0.0.1", f"a test tried to reach {url}"
        return real_urlopen(url, *args, **kwargs)

    monkeypatch.setattr(urllib.request, "urlopen", guarded)


class _Handler(SimpleHTTPRequestHandler):
    """Serves a folder; ``/cut/<file>`` announces the full length but sends half and hangs up."""

    requests: list

    def do_GET(self):
        self.requests.append(self.path)
        if self.path.startswith("/cut/"):
            body = (Path(self.directory) / self.path[len("/cut/"):]).read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2])
            self.close_connection = True
            return
        super().do_GET()

    def log_message(self, *args):
        pass


@pytest.fixture
def server(tmp_path):
    """``(base_url, served_folder, requests)`` of a threaded HTTP server, shut down after the test."""
    folder = tmp_path / "served"
    folder.mkdir()
    requests = []
    handler = type("Handler", (_Handler,), {"requests": requests})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(handler, directory=str(folder)))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/", folder, requests
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def _serve_mnist_test(folder, n=6):
    images, labels = fake_digits(n, seed=11)
    table = {}
    for name, array in zip(T10K, (images, labels)):
        blob = gzip.compress(idx_bytes(array))
        (folder / name).write_bytes(blob)
        table[name] = [("sha256", hashlib.sha256(blob).hexdigest())]
    return images, labels, table


def test_download_success(server, tmp_path):
    url, folder, _ = server
    _, _, table = _serve_mnist_test(folder)
    root = download_dataset("mnist", tmp_path / "cache", files=T10K, mirror=url, checksums=table, timeout=5)
    assert root == tmp_path / "cache"
    assert sorted(os.listdir(root)) == sorted(T10K)  # and no .part leftovers
    for name in T10K:
        assert (root / name).read_bytes() == (folder / name).read_bytes()


def test_mirror_from_environment(server, tmp_path, monkeypatch):
    url, folder, requests = server
    _, _, table = _serve_mnist_test(folder)
    monkeypatch.setenv("MINICNN_MIRROR", url)
    download_dataset("mnist", tmp_path / "cache", files=T10K[1:], checksums=table, timeout=5)
    assert requests == ["/t10k-labels-idx1-ubyte.gz"]


def test_md5_digests_are_accepted(server, tmp_path):
    url, folder, _ = server
    _serve_mnist_test(folder)
    blob = (folder / T10K[1]).read_bytes()
    table = {T10K[1]: [("md5", hashlib.md5(blob).hexdigest())]}
    download_dataset("mnist", tmp_path, files=T10K[1:], mirror=url, checksums=table, timeout=5)
    assert (tmp_path / T10K[1]).read_bytes() == blob


def test_checksum_mismatch_leaves_nothing(server, tmp_path):
    url, folder, _ = server
    _, _, table = _serve_mnist_test(folder)
    table[T10K[0]] = [("sha256", "0" * 64)]
    cache = tmp_path / "cache"
    with pytest.raises(ValueError, match=r"checksum mismatch for .*t10k-images-idx3-ubyte.gz: expected sha256 0{64}, got sha256 [0-9a-f]{64}"):
        download_dataset("mnist", cache, files=T10K[:1], mirror=url, checksums=table, timeout=5)
    assert os.listdir(cache) == []


def test_cut_transfer_leaves_nothing(server, tmp_path):
    url, folder, _ = server
    _, _, table = _serve_mnist_test(folder)
    with pytest.raises(ValueError, match=r"cut short: expected \d+ bytes, received \d+"):
        download_dataset("mnist", tmp_path / "cache", files=T10K[:1], mirror=url + "cut/",
                         checksums=table, timeout=5)
    assert os.listdir(tmp_path / "cache") == []


def test_interrupted_download_leaves_nothing(server, tmp_path, monkeypatch):
    url, folder, _ = server
    _, _, table = _serve_mnist_test(folder)

    def interrupt(*args):
        raise KeyboardInterrupt  # Ctrl-C after the bytes arrived, before the rename

    monkeypatch.setattr(download, "_digest_ok", interrupt)
    with pytest.raises(KeyboardInterrupt):
        download_dataset("mnist", tmp_path / "cache", files=T10K[:1], mirror=url, checksums=table, timeout=5)
    assert os.listdir(tmp_path / "cache") == []


def test_missing_file_on_server_leaves_nothing(server, tmp_path):
    url, _, _ = server
    table = {"absent.gz": [("sha256", "0" * 64)]}
    with pytest.raises(OSError, match=r"404"):
        download_dataset("mnist", tmp_path / "cache", files=["absent.gz"], mirror=url, checksums=table, timeout=5)
    assert os.listdir(tmp_path / "cache") == []


def test_write_is_atomic(server, tmp_path, monkeypatch):
    """The final name appears only by one rename, from a complete file in the same folder."""
    url, folder, _ = server
    _, _, table = _serve_mnist_test(folder)
    cache = tmp_path / "cache"
    real_replace = os.replace
    renames = []

    def checking_replace(src, dst):
        src, dst = Path(src), Path(dst)
        assert not dst.exists(), "the destination existed before the rename"
        assert src.parent == dst.parent, "temp file on another folder (rename would not be atomic)"
        assert src.read_bytes() == (folder / dst.name).read_bytes(), "renamed before complete"
        renames.append(dst.name)
        real_replace(src, dst)

    monkeypatch.setattr(download.os, "replace", checking_replace)
    download_dataset("mnist", cache, files=T10K, mirror=url, checksums=table, timeout=5)
    assert renames == T10K


def test_verified_files_are_not_fetched_again(server, tmp_path):
    url, folder, requests = server
    _, _, table = _serve_mnist_test(folder)
    cache = tmp_path / "cache"
    download_dataset("mnist", cache, files=T10K, mirror=url, checksums=table, timeout=5)
    assert len(requests) == 2
    download_dataset("mnist", cache, files=T10K, mirror=url, checksums=table, timeout=5)
    assert len(requests) == 2
    (cache / T10K[0]).write_bytes(b"damaged")  # a bad cached file is replaced
    download_dataset("mnist", cache, files=T10K, mirror=url, checksums=table, timeout=5)
    assert requests[2:] == ["/" + T10K[0]]
    assert (cache / T10K[0]).read_bytes() == (folder / T10K[0]).read_bytes()


def test_unknown_dataset_and_file():
    with pytest.raises(ValueError, match=r"download_dataset expected a dataset name in .*'mnist'.*got 'imagenet'"):
        download_dataset("imagenet")
    with pytest.raises(ValueError, match=r"no checksum for 'x.gz' of 'mnist'"):
        download_dataset("mnist", files=["x.gz"])
    with pytest.raises(ValueError, match=r"no checksum"):
        download.download_file("http://127.0.0.1:9/x", "unused", accepted=[])


def test_load_mnist_downloads_into_given_path(server, tmp_path, monkeypatch):
    url, folder, _ = server
    images, labels, table = _serve_mnist_test(folder)
    monkeypatch.setitem(download.SOURCES["mnist"], "files", table)
    x, y = load_mnist(tmp_path / "mine", split="test", download=True, mirror=url)
    np.testing.assert_array_equal(y, labels)
    np.testing.assert_allclose(x[:, 0], images / 255.0, rtol=1e-7)
    assert sorted(os.listdir(tmp_path / "mine")) == sorted(T10K)


def test_load_mnist_downloads_into_cache(server, tmp_path, monkeypatch):
    url, folder, _ = server
    _, labels, table = _serve_mnist_test(folder)
    monkeypatch.setitem(download.SOURCES["mnist"], "files", table)
    monkeypatch.setenv("MINICNN_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("MINICNN_MIRROR", url)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(datasets, "_REPO_ROOT", tmp_path / "repo")
    _, y = load_mnist(split="test", download=True)
    np.testing.assert_array_equal(y, labels)
    assert sorted(os.listdir(tmp_path / "data" / "mnist")) == sorted(T10K)


def _cifar_archive(folder):
    """A small cifar-10-python.tar.gz laid out as the real one; returns (archive bytes, test labels)."""
    staging = folder.parent / "cifar-staging" / "cifar-10-batches-py"
    rng = np.random.default_rng(5)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        labels = rng.integers(0, 10, size=3)
        write_cifar_batch(staging / name, rng.integers(0, 256, (3, 3072), dtype=np.uint8), labels)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(staging, arcname="cifar-10-batches-py")
    return buffer.getvalue(), labels


def test_load_cifar10_downloads_and_extracts(server, tmp_path, monkeypatch):
    url, folder, _ = server
    blob, test_labels = _cifar_archive(folder)
    (folder / "cifar-10-python.tar.gz").write_bytes(blob)
    table = {"cifar-10-python.tar.gz": [("sha256", hashlib.sha256(blob).hexdigest())]}
    monkeypatch.setitem(download.SOURCES["cifar10"], "files", table)
    x, y = load_cifar10(tmp_path / "c", split="test", download=True, mirror=url)
    assert x.shape == (3, 3, 32, 32)
    np.testing.assert_array_equal(y, test_labels)
    # the archive and the unpacked folder, no staging folders left behind
    assert sorted(os.listdir(tmp_path / "c")) == ["cifar-10-batches-py", "cifar-10-python.tar.gz"]


def test_tar_members_escaping_the_folder_are_refused(tmp_path):
    archive = tmp_path / "evil.tar"
    with tarfile.open(archive, "w") as tar:
        info = tarfile.TarInfo("../escaped.txt")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"bad"))
    (tmp_path / "out").mkdir()
    with pytest.raises(ValueError, match=r"refusing to extract"):
        download.extract_tar(archive, tmp_path / "out")
    assert not (tmp_path / "escaped.txt").exists()


def test_published_checksums_match_the_real_mnist_test_files():
    folder = mnist_dir()
    if folder is None or not all((folder / name).exists() for name in T10K):
        pytest.skip("the real gzipped MNIST test files are absent")
    for name in T10K:
        assert download._file_matches(folder / name, download.SOURCES["mnist"]["files"][name]), name
