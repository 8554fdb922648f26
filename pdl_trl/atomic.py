"""Atomic file writes: a reader (or a crash) sees the old file or the whole new one, never half of one."""

import os
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path


def creation_mode(directory: bool = False) -> int:
    """The permissions `open()` or `mkdir()` would give a new file (0o666) or folder (0o777) under the umask."""
    # The umask can only be read by setting it; set it straight back
    umask = os.umask(0o022)
    os.umask(umask)
    return (0o777 if directory else 0o666) & ~umask


def check_writable(path: str | os.PathLike, option: str) -> None:
    """Raises, naming `option`, when `path` cannot be written as a file: checked before the work that produces it."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"`{option}` {path} is a folder: give the path of the file to write, e.g. {path / 'x.json'}.")
    ancestor = path.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir() or not os.access(ancestor, os.W_OK | os.X_OK):
        raise ValueError(f"`{option}` {path} cannot be written: {ancestor} is not a writable folder.")


def write_atomically(path: str | os.PathLike, save: Callable[[Path], None]) -> None:
    """
    Calls `save(temporary_path)` beside `path`, flushes it to disk and renames it over `path`.

    The file ends up with the permissions a plain write would leave: those of the file it replaces, else the umask's
    (a temporary file is created private, mode 0600, which would hide a run's files from its owner's group).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = stat.S_IMODE(path.stat().st_mode) if path.exists() else creation_mode()
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save(Path(tmp_name))
        os.chmod(tmp_name, mode)
        with open(tmp_name, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        os.unlink(tmp_name)
        raise


def write_text_atomically(path: str | os.PathLike, text: str) -> None:
    write_atomically(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
