"""SIGTERM and Ctrl-C end a command cleanly: one line, exit 143 / 130, the run directory's lock
released and Ray shut down on the way out (by the `finally` / `with` blocks they pass through),
never a traceback. `install()` turns SIGTERM into `Interrupted`; Ctrl-C is Python's
KeyboardInterrupt, which `as_interrupted` maps the same way."""

from __future__ import annotations

import signal
import threading


class Interrupted(BaseException):
    """The user (Ctrl-C, exit 130) or the system (SIGTERM, exit 143) stopped the command. A
    BaseException, so no `except Exception` on the way out can swallow it."""

    def __init__(self, code: int = 130, message: str = "interrupted"):
        super().__init__(message)
        self.code, self.message = code, message


def _terminate(signum, frame) -> None:
    raise Interrupted(143, "terminated (SIGTERM)")


def install() -> None:
    """SIGTERM -> Interrupted(143) in the main thread (call again after a library that installs
    its own handler, e.g. ray.init)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminate)


def as_interrupted(exc: BaseException) -> Interrupted:
    return exc if isinstance(exc, Interrupted) else Interrupted(130, "interrupted (Ctrl-C)")
