"""
One writer per output folder: a lock file with its owner's process id, host and command, taken before a run writes
into the folder and removed when it ends. A lock left by a process that is gone (killed, crashed) is recognised as
stale and replaced; a live owner is named in the error.
"""

import json
import os
import socket
import sys
import time
import warnings
from contextlib import contextmanager
from pathlib import Path


LOCK_FILE_NAME = ".pdl-trl.lock"


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    return True


def _read_lock(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        # A lock being written, or damaged: its owner is unknown, so it is not ours to take
        return {}


def _describe(owner: dict) -> str:
    if not owner:
        return "an unknown process (its lock file is unreadable)"
    return (
        f"process {owner.get('pid')} on {owner.get('host')} (`{owner.get('command')}`, started {owner.get('started')})"
    )


@contextmanager
def output_dir_lock(directory: str | os.PathLike, what: str):
    """
    Holds `directory/.pdl-trl.lock` while the block runs, so that a second run into the same folder fails at once
    instead of mixing its files with the first's.

    Args:
        directory: the output folder (created if missing).
        what (`str`): what writes there, for the error message (e.g. `"pdl-trl sweep"`).

    Raises:
        `RuntimeError`: another live process holds the folder (or an unreadable lock is there), naming it and the fix.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / LOCK_FILE_NAME
    owner = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "command": " ".join([os.path.basename(sys.argv[0]), *sys.argv[1:]])[:200],
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    while True:
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        except FileExistsError:
            holder = _read_lock(path)
            if holder is None:  # released meanwhile
                continue
            pid = holder.get("pid") if holder else None
            stale = (
                isinstance(pid, int) and pid > 0 and holder.get("host") == owner["host"] and not _process_alive(pid)
            )
            if not stale:
                raise RuntimeError(
                    f"{directory} is in use by {_describe(holder)}: {what} would mix its files with that run's. Wait "
                    f"for it to finish, or choose another output folder. If that process is gone (e.g. on another "
                    f"machine that was shut down), delete {path}."
                ) from None
            warnings.warn(
                f"Taking over {path}: the run that held it ({_describe(holder)}) is gone.", UserWarning, stacklevel=3
            )
            path.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(owner, f)
        break
    try:
        yield
    finally:
        if _read_lock(path) == owner:
            path.unlink(missing_ok=True)
