"""Run untrusted Python (model-written code) in a contained subprocess.

The only place in dlmrl that executes model output (docs/architecture.md, invariant 4). Layers:
  - namespaces (util-linux `unshare`): a new network namespace (no network at all), a
    mount namespace whose root is a fresh tmpfs holding only the system runtime (/usr,
    bind-mounted read-only), /dev/null|zero|urandom, its own /proc and a private /tmp (the
    working directory; it vanishes with the namespace) — the host's root is unmounted, so
    the project, home directories and /etc cannot be read — and a PID namespace (the
    parent's processes are invisible; killing its first process kills everything the
    code started); the sandbox dies with the process that started it;
  - an unprivileged user: a fresh uid per call via `setpriv` when the caller is root (limits such
    as the process count do not bind root); otherwise a user namespace;
  - rlimits: CPU seconds, address space, file size (also bounds captured output, which
    goes to files), process count, no core dumps; a wall-clock limit enforced by
    killing the process group;
  - an empty environment and `python -I -S` (no site-packages, no env vars).
If a namespace cannot be created the call is refused (fail closed), never run bare.
"""

from __future__ import annotations

import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

SANDBOX_UIDS = (200_000, 1_200_000)  # when root: a fresh unprivileged uid per call (no passwd entry needed)


@dataclass
class SandboxLimits:
    cpu_s: int = 5
    wall_s: float = 10.0
    memory_mb: int = 512
    file_mb: int = 16  # any file the code writes, and captured stdout/stderr
    processes: int = 16  # processes/threads the sandbox user may hold
    output_chars: int = 64_000  # returned stdout/stderr are cut to this
    proc: bool = True  # a /proc of its own; False: none, and a non-dumpable process (see _SEALED)


@dataclass
class SandboxResult:
    returncode: int | None  # None: not run (refused)
    stdout: str
    stderr: str
    timed_out: bool = False
    refused: str | None = None  # why the sandbox would not run the code
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out and self.refused is None


def sandbox_python() -> str:
    """The interpreter the sandbox runs: $DLMRL_SANDBOX_PYTHON, else the system python3 (a
    per-user install such as pyenv under /root is not readable by the sandbox user)."""
    for candidate in (os.environ.get("DLMRL_SANDBOX_PYTHON"), "/usr/bin/python3", "/usr/local/bin/python3"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return os.path.realpath(sys.executable)


def _tool(name: str) -> str | None:
    return shutil.which(name, path="/usr/bin:/bin:/usr/sbin:/sbin")


# `proc: False`: no /proc, and the interpreter runs from an execute-only copy, so the kernel makes the
# process non-dumpable: no other process of its uid (a program it starts, say) may ptrace it or read its
# memory (the code judge's answering side keeps its seal key there)
_SEALED = ('umount -l /proc && cp "$1" /tmp/.python && chmod 111 /tmp/.python && shift && '
           'set -- /tmp/.python "$@" && ')


def _inner_script(as_root: bool, uid: int, proc: bool = True) -> str:
    """Shell run inside the new namespaces: a new root that holds only the read-only system
    runtime (/usr and the /bin, /lib... links into it), /dev/null|zero|urandom, a fresh /proc
    and a private tmpfs /tmp; the host's root is unmounted (pivot_root), so no other host file —
    the project, home directories, /etc — can be opened. Then drop to the sandbox user."""
    links = " ".join(f"[ -L /{d} ] && ln -s \"$(readlink /{d})\" $R/{d};" for d in ("bin", "sbin", "lib", "lib64", "lib32"))
    devices = " ".join(f"touch $R/dev/{d} && mount --bind /dev/{d} $R/dev/{d} &&" for d in ("null", "zero", "urandom"))
    setup = ("R=/tmp/root && mount -t tmpfs -o size={tmp_mb}m,mode=755 tmpfs /tmp && mkdir -p $R && "
             "mount --bind $R $R && mkdir -p $R/usr $R/proc $R/dev/shm $R/tmp $R/.old && chmod 1777 $R/tmp && "
             "mount --bind /usr $R/usr && mount -o remount,bind,ro,nosuid $R/usr && "
             + links + " " + devices +
             " mount -t tmpfs -o size=1m,mode=1777 tmpfs $R/dev/shm && mount -t proc proc $R/proc && "
             "cd $R && pivot_root . .old && umount -l /.old && rmdir /.old && cd /tmp && "
             + ("" if proc else _SEALED))
    if as_root:
        drop = "/usr/bin/setpriv" + f" --reuid={uid} --regid={uid} --clear-groups --inh-caps=-all -- "
    else:
        drop = ""
    # not exec: this root shell stays the namespace's first process. unshare's --kill-child gives it
    # a parent-death signal, which a uid change would clear; when it dies the kernel kills every
    # process of the namespace, so nothing outlives the sandbox's starter
    return setup + drop + "/usr/bin/env -i \"$@\""


def _limits(limits: SandboxLimits, as_root: bool):
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_s, limits.cpu_s + 1))
        resource.setrlimit(resource.RLIMIT_AS, (limits.memory_mb << 20,) * 2)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limits.file_mb << 20,) * 2)
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        # as root the count applies to the fresh uid after setpriv; otherwise to this user, who
        # already runs some processes — allow that many more
        base = 0 if as_root else _processes_of(os.getuid())
        resource.setrlimit(resource.RLIMIT_NPROC, (base + limits.processes,) * 2)
    return apply


def _processes_of(uid: int) -> int:
    count = 0
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                count += os.stat(f"/proc/{pid}").st_uid == uid
            except OSError:
                pass
    return count


def _command(code: str, limits: SandboxLimits) -> list[str] | str:
    """The unshare command line that runs `code` contained, or why it cannot be run (a str)."""
    unshare = _tool("unshare")
    as_root = os.geteuid() == 0
    if unshare is None or (as_root and _tool("setpriv") is None):
        return "util-linux unshare/setpriv not found"
    user = [] if as_root else ["--user", "--map-root-user"]
    uid = random.randrange(*SANDBOX_UIDS)  # its own uid: the process limit is per sandbox, not shared
    script = _inner_script(as_root, uid, limits.proc).format(tmp_mb=limits.file_mb * 2 + (0 if limits.proc else 8))
    return [unshare, *user, "--net", "--mount", "--pid", "--fork", "--kill-child", "--mount-proc",
            "--", "/bin/sh", "-c", script, "sandbox", sandbox_python(), "-I", "-S", "-c", code]


def _spawn(argv: list[str], limits: SandboxLimits, stdout, stderr) -> subprocess.Popen:
    """Start the sandbox in a session of its own (killed as a group) that also dies with this process:
    unshare gets SIGKILL when its parent dies (PR_SET_PDEATHSIG, set before any uid change, so it
    holds), and `--kill-child` takes the namespace's first process — and so every process in it — along."""
    apply_limits = _limits(limits, os.geteuid() == 0)

    def prepare() -> None:
        _die_with_parent()
        apply_limits()

    return subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=stdout, stderr=stderr,
                            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}, cwd="/", start_new_session=True,
                            preexec_fn=prepare)


def _die_with_parent() -> None:
    import ctypes

    PR_SET_PDEATHSIG = 1
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def run_python(code: str, stdin: str = "", limits: SandboxLimits | None = None) -> SandboxResult:
    """Run `code` with the system Python inside the sandbox; never raises for what the code does."""
    limits = limits or SandboxLimits()
    start = time.perf_counter()
    argv = _command(code, limits)
    if isinstance(argv, str):
        return SandboxResult(None, "", "", refused=argv, seconds=0.0)
    with tempfile.TemporaryDirectory(prefix="dlmrl-sandbox-") as scratch:
        out_path, err_path = os.path.join(scratch, "stdout"), os.path.join(scratch, "stderr")
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            try:
                proc = _spawn(argv, limits, out, err)
            except (OSError, subprocess.SubprocessError) as exc:
                return SandboxResult(None, "", "", refused=f"could not start the sandbox: {exc}")
            timed_out = False
            try:
                proc.communicate(stdin.encode(), timeout=limits.wall_s)
            except subprocess.TimeoutExpired:
                timed_out = True
                _kill_group(proc)
            finally:
                _kill_group(proc)  # whatever the code left running
        stdout, stderr = _read(out_path, limits.output_chars), _read(err_path, limits.output_chars)
    if proc.returncode not in (0, None) and _namespace_failure(stderr):
        return SandboxResult(None, stdout, stderr, refused=f"namespaces unavailable: {stderr.strip()[:200]}",
                             seconds=time.perf_counter() - start)
    return SandboxResult(proc.returncode, stdout, stderr, timed_out=timed_out, seconds=time.perf_counter() - start)


class SandboxProcess:
    """A contained Python process to talk to line by line (stdin/stdout pipes), for the code judge.
    Its stderr goes nowhere; `close()` kills its whole process group."""

    def __init__(self, code: str, limits: SandboxLimits):
        argv = _command(code, limits)
        if isinstance(argv, str):
            raise OSError(argv)
        self.proc = _spawn(argv, limits, subprocess.PIPE, subprocess.DEVNULL)
        self._buffer = bytearray()

    def send(self, line: str) -> bool:
        """Write one line; False if the process is gone."""
        try:
            self.proc.stdin.write(line.encode() + b"\n")
            self.proc.stdin.flush()
            return True
        except (BrokenPipeError, OSError, ValueError):
            return False

    def receive(self, deadline: float, max_bytes: int = 1 << 20) -> str | None:
        """The next line, or None on end of output, timeout (`time.monotonic()` deadline) or a
        line longer than max_bytes (whatever the process writes, this never blocks past the deadline)."""
        import select

        fd = self.proc.stdout.fileno()
        searched = 0
        while (end := self._buffer.find(b"\n", searched)) < 0:
            if len(self._buffer) > max_bytes:
                return None
            searched = len(self._buffer)
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                return None
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                return None
            self._buffer += chunk
        line = bytes(self._buffer[:end])
        del self._buffer[:end + 1]
        return line.decode("utf-8", errors="replace")

    def close(self) -> None:
        _kill_group(self.proc)
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                stream.close()
            except OSError:
                pass


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


def _read(path: str, limit: int) -> str:
    with open(path, "rb") as fh:
        return fh.read(limit).decode("utf-8", errors="replace")


def _namespace_failure(stderr: str) -> bool:
    """unshare/mount failing before the code ran (so nothing was contained: refuse)."""
    head = stderr[:300]
    return (head.startswith(("unshare: unshare failed", "unshare: cannot", "mount:", "sandbox:"))
            or "setpriv:" in head or ("/usr/bin/env:" in head and "Permission denied" in head))
