"""SIGTERM and Ctrl-C end a command cleanly: one line, exit 143 / 130, the run directory's lock
released and Ray shut down on the way out (by the `finally` / `with` blocks they pass through),
never a traceback. `install()` turns SIGTERM into `Terminated`, a KeyboardInterrupt — the one
exception Ray's signal check inside `ray.get` turns into a clean interrupt (any other exception
raised there is printed by Ray as "Exception ignored" with a traceback, and Ray re-raises a plain
KeyboardInterrupt, so the signal that came is remembered here). `as_interrupted` maps Ctrl-C to
exit 130 and SIGTERM to 143."""

from __future__ import annotations

import signal
import threading


class Interrupted(BaseException):
    """The user (Ctrl-C, exit 130) or the system (SIGTERM, exit 143) stopped the command. A
    BaseException, so no `except Exception` on the way out can swallow it."""

    def __init__(self, code: int = 130, message: str = "interrupted"):
        super().__init__(message)
        self.code, self.message = code, message


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the main thread is (also inside Ray's calls, which let only a
    KeyboardInterrupt through cleanly)."""


_terminated = False  # a SIGTERM came (Ray may hand it back as a plain KeyboardInterrupt)


def _terminate(signum, frame) -> None:
    global _terminated
    _terminated = True
    raise Terminated("terminated (SIGTERM)")


def install() -> None:
    """SIGTERM -> Interrupted(143) in the main thread (call again after a library that installs
    its own handler, e.g. ray.init)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminate)


def as_interrupted(exc: BaseException) -> Interrupted:
    if isinstance(exc, Interrupted):
        return exc
    if isinstance(exc, Terminated) or _terminated:
        return Interrupted(143, "terminated (SIGTERM)")
    return Interrupted(130, "interrupted (Ctrl-C)")
