"""save / load: the model comes back identical, in a fresh process, and bad files fail clearly."""
import json
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest

import minicnn
from minicnn import models, serialization
from minicnn.layers import (BatchNorm2D, Concatenate, Conv2D, Dense, DepthwiseConv2D, Dropout, Flatten,
                            GlobalAvgPool2D, MaxPool2D, Residual, Sequential)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def zoo_models():
    return {
        "lenet5": (models.lenet5(), (1, 28, 28)),
        "resnet_mini": (models.resnet_mini(stages=((4, 1), (8, 2))), (1, 12, 12)),
        "inception_mini": (models.inception_mini(), (1, 12, 12)),
        "mixed": (Sequential([
            Conv2D(4, (3, 5), stride=(1, 2), padding="same", activation="leaky_relu", name="stem"),
            BatchNorm2D(momentum=0.2),
            DepthwiseConv2D(3, depth_multiplier=2, padding=1, bias=False),
            Residual(Sequential([Conv2D(8, 3, padding=1)])),
            Concatenate([MaxPool2D(1), Conv2D(2, 1)]),
            GlobalAvgPool2D(), Dropout(0.3), Dense(3, activation="tanh")]), (2, 9, 10)),
        "autoencoder": (models.dense_autoencoder(input_dim=16, hidden=(8,), code_size=4, sparse_l1=1e-3), (16,)),
    }


def trained_state(model, shape, rng):
    """Build and give every param and buffer random values (so defaults cannot pass by luck)."""
    model.build(shape)
    model.load_state_dict({k: rng.standard_normal(v.shape).astype(v.dtype) * 0.3 + (k.endswith("var"))
                           for k, v in model.state_dict().items()})
    return model


@pytest.mark.parametrize("name", list(zoo_models()))
def test_round_trip_preserves_architecture_weights_and_outputs(name, tmp_path):
    model, shape = zoo_models()[name]
    rng = np.random.default_rng(0)
    trained_state(model, shape, rng)
    x = rng.random((3, *shape)).astype(np.float32)
    path = tmp_path / "m.npz"
    model.save(path)
    loaded = minicnn.load(path)
    assert type(loaded) is type(model)
    assert repr(loaded) == repr(model)
    assert loaded.input_shape == tuple(shape)
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(loaded.state_dict()[key], value)
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))


def test_float64_model_stays_float64(tmp_path):
    model = Sequential([Conv2D(2, 3), Flatten(), Dense(2)], input_shape=(1, 5, 5)).astype(np.float64)
    serialization.save(model, tmp_path / "m")  # the .npz suffix is added
    loaded = minicnn.load(tmp_path / "m.npz")
    assert all(v.dtype == np.float64 for v in loaded.state_dict().values())


def test_load_in_a_new_process_gives_identical_predictions(tmp_path):
    minicnn.seed(3)
    model = models.simple_cnn()
    model.compile()
    rng = np.random.default_rng(1)
    x = rng.random((20, 1, 8, 8)).astype(np.float32)
    model.fit(x, rng.integers(0, 10, 20), epochs=1, verbose=0)  # non-default weights and BN-free
    model.save(tmp_path / "model.npz")
    np.save(tmp_path / "x.npy", x)
    script = ("import sys, numpy as np, minicnn\n"
              "model = minicnn.load(sys.argv[1])\n"
              "np.save(sys.argv[3], model.predict(np.load(sys.argv[2])))\n")
    env = dict(os.environ, PYTHONPATH=ROOT)
    subprocess.run([sys.executable, "-c", script, str(tmp_path / "model.npz"), str(tmp_path / "x.npy"),
                    str(tmp_path / "y.npy")], check=True, env=env, cwd=tmp_path, timeout=120)
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), model.predict(x))


def test_failed_save_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "model.npz"
    old = Sequential([Dense(3)], input_shape=(4,))
    old.save(path)
    before = path.read_bytes()

    def crash_midway(file, **arrays):
        file.write(b"PK\x03\x04 half an archive")
        raise OSError("disk full")

    monkeypatch.setattr(serialization.np, "savez", crash_midway)
    with pytest.raises(OSError, match="disk full"):
        Sequential([Dense(5)], input_shape=(4,)).save(path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["model.npz"]  # the temporary file was removed
    np.testing.assert_array_equal(minicnn.load(path).state_dict()["0.weight"], old.state_dict()["0.weight"])


def test_truncated_and_corrupt_files_raise_value_error(tmp_path):
    path = tmp_path / "good.npz"
    Sequential([Conv2D(2, 3), Flatten(), Dense(2)], input_shape=(1, 6, 6)).save(path)
    data = path.read_bytes()
    for cut in (10, len(data) // 2, len(data) - 30):
        (tmp_path / "cut.npz").write_bytes(data[:cut])
        with pytest.raises(ValueError, match="minicnn model file"):
            minicnn.load(tmp_path / "cut.npz")
    (tmp_path / "random.npz").write_bytes(np.random.default_rng(0).bytes(2000))
    with pytest.raises(ValueError, match="not a minicnn model file"):
        minicnn.load(tmp_path / "random.npz")
    # flip bytes inside the compressed-free archive body: CRC or format errors, never a crash
    damaged = bytearray(data)
    damaged[200:260] = bytes(60)
    (tmp_path / "damaged.npz").write_bytes(bytes(damaged))
    with pytest.raises(ValueError, match="minicnn model file"):
        minicnn.load(tmp_path / "damaged.npz")
    with pytest.raises(FileNotFoundError):
        minicnn.load(tmp_path / "absent.npz")


def test_foreign_npz_and_bad_records_raise_value_error(tmp_path):
    np.savez(tmp_path / "foreign.npz", weights=np.ones(3))
    with pytest.raises(ValueError, match="not a minicnn model file.*no '__minicnn__' record"):
        minicnn.load(tmp_path / "foreign.npz")
    np.save(tmp_path / "array.npy", np.ones(3))
    with pytest.raises(ValueError, match="single .npy array"):
        minicnn.load(tmp_path / "array.npy")

    def with_record(record, name):
        raw = np.frombuffer(json.dumps(record).encode(), np.uint8)
        np.savez(tmp_path / name, __minicnn__=raw)
        return tmp_path / name

    with pytest.raises(ValueError, match="version 99"):
        minicnn.load(with_record({"format": "minicnn", "format_version": 99}, "future.npz"))
    with pytest.raises(ValueError, match="unknown layer class 'system'"):
        minicnn.load(with_record({"format": "minicnn", "format_version": 1, "input_shape": None,
                                  "model": {"class": "system", "config": {}}}, "evil.npz"))
    with pytest.raises(ValueError, match="weights do not fit"):
        record = {"format": "minicnn", "format_version": 1, "input_shape": [4],
                  "model": {"class": "Sequential", "config": {"layers": [
                      {"__layer__": {"class": "Dense", "config": {"out_features": 2}}}]}}}
        minicnn.load(with_record(record, "noweights.npz"))
    (tmp_path / "notjson.npz").unlink(missing_ok=True)
    np.savez(tmp_path / "notjson.npz", __minicnn__=np.frombuffer(b"{not json", np.uint8))
    with pytest.raises(ValueError, match="not valid JSON"):
        minicnn.load(tmp_path / "notjson.npz")


def test_files_hold_no_pickles(tmp_path):
    path = tmp_path / "m.npz"
    model = models.lenet5()
    model.build((1, 28, 28))
    model.save(path)
    with zipfile.ZipFile(path) as archive:
        for name in archive.namelist():
            header = archive.read(name)[:128]
            assert b"'descr': '|O'" not in header and b"'descr': '<U" not in header
    with np.load(path, allow_pickle=False) as archive:  # every member loads without pickle
        assert all(archive[name] is not None for name in archive.files)


def test_custom_layer_classes_cannot_be_saved(tmp_path):
    class MyDense(Dense):
        pass

    with pytest.raises(ValueError, match="custom layer classes cannot be saved"):
        Sequential([MyDense(2)], input_shape=(3,)).save(tmp_path / "m.npz")
    assert not os.listdir(tmp_path)
