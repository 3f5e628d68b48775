"""Starting helper programs (newuidmap, slirp4netns, pasta) from the engine's process.

``posix_spawn`` with an empty signal mask and default dispositions: the engine blocks the
signals it forwards while a container starts, and a blocked mask is inherited across
``execve`` — a helper started then would never see SIGTERM.  No ``subprocess`` import on
the start path either.
"""

from __future__ import annotations

import os
import signal
from typing import Callable


_DEFAULT_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1,
                    signal.SIGUSR2, signal.SIGPIPE)


def spawn(args: list[str], pass_fds: tuple[int, ...] = (), capture_stderr: bool = True,
          stdout_fd: int | None = None, die_with_parent: bool = False,
          stderr_fd: int | None = None, new_session: bool = False,
          stdin_fd: int | None = None, setup: Callable[[], None] | None = None) -> tuple[int, int | None]:
    """Start ``args`` (stdin and stdout on /dev/null unless ``stdin_fd``/``stdout_fd``); (pid,
    stderr read end or None).

    ``pass_fds`` stay open in the child under the same numbers.  ``die_with_parent``: the
    child gets SIGKILL when this process dies (``PR_SET_PDEATHSIG``), for helpers that must
    not outlive the engine; ``setup``: called in the child just before ``execve`` (e.g.
    ``setns`` into a container's namespaces).  Both need a fork rather than ``posix_spawn``.
    """
    if die_with_parent or setup is not None:
        return _fork_exec(args, pass_fds, capture_stderr, stdout_fd, die_with_parent, stdin_fd, setup)
    r = w = None
    if capture_stderr:
        r, w = os.pipe()
    actions: list[tuple] = [(os.POSIX_SPAWN_DUP2, stdin_fd, 0) if stdin_fd is not None
                            else (os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0)]
    actions.append((os.POSIX_SPAWN_DUP2, stdout_fd, 1) if stdout_fd is not None
                   else (os.POSIX_SPAWN_OPEN, 1, "/dev/null", os.O_WRONLY, 0))
    if w is not None:
        actions.append((os.POSIX_SPAWN_DUP2, w, 2))
    elif stderr_fd is not None:
        actions.append((os.POSIX_SPAWN_DUP2, stderr_fd, 2))
    # Only 0-2 and ``pass_fds`` reach the helper: descriptors the caller inherited from its
    # shell (a pipe, a directory) would otherwise be held by it — a pipe's reader would wait
    # for a long-lived helper, and the helper could reach whatever they point to.
    actions += [(os.POSIX_SPAWN_CLOSE, fd) for fd in _inherited(pass_fds)]
    for fd in pass_fds:
        os.set_inheritable(fd, True)
    try:
        pid = os.posix_spawnp(args[0], args, os.environ, file_actions=actions, setsigmask=(),
                              setsigdef=_DEFAULT_SIGNALS, setsid=new_session)
    except BaseException:
        if r is not None:
            os.close(r)
        raise
    finally:
        if w is not None:
            os.close(w)
        for fd in pass_fds:
            os.set_inheritable(fd, False)
    return pid, r


def _fork_exec(args: list[str], pass_fds: tuple[int, ...], capture_stderr: bool, stdout_fd: int | None,
               die_with_parent: bool = True, stdin_fd: int | None = None,
               setup: Callable[[], None] | None = None) -> tuple[int, int | None]:
    from . import libc
    r, w = os.pipe() if capture_stderr else (None, None)
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:
        try:
            if die_with_parent:
                libc.set_pdeathsig(signal.SIGKILL)
                if os.getppid() != parent:
                    os._exit(1)  # the parent died before we could ask to follow it
            for sig in _DEFAULT_SIGNALS:
                signal.signal(sig, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_SETMASK, ())
            null = os.open("/dev/null", os.O_RDWR)
            os.dup2(stdin_fd if stdin_fd is not None else null, 0)
            os.dup2(stdout_fd if stdout_fd is not None else null, 1)
            if w is not None:
                os.dup2(w, 2)
            if setup is not None:
                setup()
            libc.close_range_cloexec(3)
            for fd in pass_fds:
                os.set_inheritable(fd, True)
            os.execvp(args[0], args)
        except BaseException as e:  # noqa: BLE001
            os.write(2, f"exec {args[0]}: {e}\n".encode())
        finally:
            os._exit(127)
    if w is not None:
        os.close(w)
    return pid, r


def spawn_daemon(args: list[str], stderr_fd: int | None = None) -> None:
    """Start ``args`` as a daemon shared by later commands (the per-user fork server): in a
    session of its own and the child of none of our processes — a fork spawns it and exits.
    A command's process tree is stopped and killed whole ('rm -f' of a container still
    starting kills its owner's, procs.kill_tree), and whoever is a process's ancestor counts
    as waiting for it (procs.is_ancestor): a shared daemon must be in neither.  It goes to
    the nearest child subreaper above us, or init.  ``OSError`` if it could not be started."""
    import sys
    sys.stdout.flush()
    sys.stderr.flush()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            spawn(args, capture_stderr=False, stderr_fd=stderr_fd, new_session=True)
        except BaseException as e:  # noqa: BLE001 - reported to the parent, never unwound here
            os.write(w, str(e).encode(errors="replace") or b"failed")
        finally:
            os._exit(0)
    os.close(w)
    try:
        why = read_all(r)
    finally:
        os.waitpid(pid, 0)
    if why:
        raise OSError(f"cannot start {args[0]}: {why}")


def _inherited(keep: tuple[int, ...]) -> list[int]:
    """Our descriptors from 3 on that an ``execve`` would pass on, except ``keep``."""
    out = []
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd < 3 or fd in keep:
            continue
        try:
            if os.get_inheritable(fd):
                out.append(fd)
        except OSError:
            pass          # the listing's own descriptor, closed by now
    return out


def read_all(fd: int) -> str:
    with os.fdopen(fd, "rb") as f:
        return f.read().decode(errors="replace").strip()


def wait(pid: int) -> int:
    """The exit status as a shell reports it."""
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def stop(pid: int, steps: tuple[tuple[int | None, float], ...] = ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0))
         ) -> int | None:
    """End our child ``pid``: for each (signal, grace) step, send the signal (None: none, just
    wait) and poll for its exit for up to ``grace`` seconds.  Its wait status once reaped;
    None if it outlived every step (or was not our child)."""
    import time
    for sig, grace in steps:
        if sig is not None:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace
        while True:
            try:
                done, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                return None
            if done:
                return status
            if time.monotonic() >= deadline:
                break
            time.sleep(0.005)
    return None


def quiet_thread(target: Callable[..., None], *args, name: str | None = None):
    """Start a daemon thread that blocks the signals the engine forwards, so that one sent to
    the process (the user's Ctrl-C, ``kill``) is taken by the main thread's handler — never
    by this thread with the default action (which ends the process) while the main thread
    still has it blocked during a start.  The thread inherits the mask: it is blocked here,
    around its creation."""
    import threading
    t = threading.Thread(target=target, args=args, name=name, daemon=True)
    old = signal.pthread_sigmask(signal.SIG_BLOCK, _DEFAULT_SIGNALS)
    try:
        t.start()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
    return t
