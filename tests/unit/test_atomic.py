import os
import stat

import pytest

from pdl_trl.atomic import write_atomically, write_text_atomically


def test_write_replaces_the_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "sub" / "out.txt"
    write_text_atomically(path, "old")
    write_text_atomically(path, "new")
    assert path.read_text() == "new"
    assert os.listdir(path.parent) == ["out.txt"]


def test_failure_halfway_keeps_the_old_file_and_removes_the_temporary(tmp_path):
    path = tmp_path / "out.txt"
    path.write_text("old")

    def half_then_fail(tmp):
        tmp.write_text("half of the new con")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomically(path, half_then_fail)
    assert path.read_text() == "old"
    assert os.listdir(tmp_path) == ["out.txt"]


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_new_files_follow_the_umask_like_a_plain_write(tmp_path, umask):
    previous = os.umask(umask)
    try:
        write_text_atomically(tmp_path / "atomic.json", "{}")
        (tmp_path / "plain.json").write_text("{}")
    finally:
        os.umask(previous)
    assert stat.S_IMODE(os.stat(tmp_path / "atomic.json").st_mode) == 0o666 & ~umask
    assert stat.S_IMODE(os.stat(tmp_path / "atomic.json").st_mode) == stat.S_IMODE(
        os.stat(tmp_path / "plain.json").st_mode
    )


def test_replacing_a_file_keeps_its_permissions(tmp_path):
    path = tmp_path / "counts.json"
    write_text_atomically(path, "old")
    os.chmod(path, 0o640)
    write_text_atomically(path, "new")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o640 and path.read_text() == "new"
