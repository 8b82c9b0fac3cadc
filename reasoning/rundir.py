"""A run owns its directory for its lifetime (docs/architecture.md, invariant 10).

`claim_run_dir` takes an exclusive `fcntl` lock on RUN_DIR/.lock (the holder's pid written
inside) that the kernel releases when the process ends, however it ends — no stale locks
after a crash. A second run into a held directory is refused naming the holder's pid; a
fresh run (no `trainer.resume`) into a directory that holds an earlier run's checkpoints
is refused unless `overwrite=true`, which clears that directory first. While a run holds
its directory, nothing else writes or prunes there, so its own clean-up (old checkpoints,
temp dirs of its earlier, dead attempts) touches only its own files.
"""

from __future__ import annotations

import fcntl
import os
import shutil

from reasoning.checkpoint import complete_checkpoints
from reasoning.schema import ConfigError

LOCK_FILE = ".lock"


class RunDirectory:
    """The claim on one run directory; `release()` (or process exit) gives it up."""

    def __init__(self, path: str, fd: int):
        self.path, self._fd = path, fd

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "RunDirectory":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def claim_run_dir(path: str, resume: bool, overwrite: bool, what: str = "run", can_resume: bool = True) -> RunDirectory:
    """Lock `path` for this process, or raise ConfigError (held by another process; an earlier run's
    checkpoints without resume/overwrite; not a writable directory)."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise ConfigError(f"config key 'output_dir' / 'name': '{path}' exists and is not a directory")
    try:
        os.makedirs(path, exist_ok=True)
        fd = os.open(os.path.join(path, LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise ConfigError(f"config key 'output_dir': cannot create the run directory '{path}' "
                          f"({exc.strerror})") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise ConfigError(f"run directory '{path}' is in use by another dlmrl command (pid {holder}); "
                          f"choose another name or wait for it to finish") from None
    claim = RunDirectory(path, fd)
    earlier = complete_checkpoints(path)
    if earlier and not resume:
        if not overwrite:
            claim.release()
            how = ("set trainer.resume=auto to continue it or overwrite=true to start over" if can_resume else
                   f"set overwrite=true to start over, or choose another name ({what}s do not resume)")
            raise ConfigError(f"run directory '{path}' holds checkpoints of an earlier run (up to "
                              f"{os.path.basename(earlier[-1])}); {how}")
        clear(path)
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    return claim


def clear(path: str) -> None:
    """Remove everything an earlier run left in `path` (`overwrite=true`), except the lock."""
    for name in os.listdir(path):
        if name == LOCK_FILE:
            continue
        full = os.path.join(path, name)
        if os.path.isdir(full) and not os.path.islink(full):
            shutil.rmtree(full)
        else:
            os.remove(full)
