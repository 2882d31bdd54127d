"""atomic_write: the old file survives any failure, and no temporary file is left."""
import os
import stat

import pytest

from minicnn.fileio import atomic_write


def test_success_replaces_the_file_with_normal_permissions(tmp_path):
    target = tmp_path / "model.npz"
    target.write_text("old")
    with atomic_write(target) as temporary:
        assert os.path.dirname(temporary) == str(tmp_path) and temporary != str(target)
        with open(temporary, "w") as file:
            file.write("new")
        assert target.read_text() == "old"  # nothing visible until the block ends
    assert target.read_text() == "new"
    assert os.listdir(tmp_path) == ["model.npz"]
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask  # not mkstemp's private 0600


@pytest.mark.parametrize("error", [RuntimeError("disk full"), KeyboardInterrupt()])
def test_failure_keeps_the_old_file_and_removes_the_temporary(tmp_path, error):
    target = tmp_path / "plot.png"
    target.write_text("previous run")
    with pytest.raises(type(error)):
        with atomic_write(target, suffix=".png") as temporary:
            assert temporary.endswith(".png")
            with open(temporary, "w") as file:
                file.write("half a fi")
            raise error
    assert target.read_text() == "previous run"
    assert os.listdir(tmp_path) == ["plot.png"]
