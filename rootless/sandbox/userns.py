"""Entering a new user namespace with id maps, and saying why the kernel refused one.

``fork_into_userns`` is the first step of every sandboxed process (``run``,
``import``, ``unshare``, removing files owned by sub-ids): it forks, the child
calls ``unshare(CLONE_NEWUSER)`` and reports; the parent — still in the host's
namespace, where it may — writes the maps (``idmap.write``); the child then
becomes root of the namespace and runs the given function.  The child never
returns into the caller's stack: whatever happens, it ends with ``os._exit``.
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import sys
import traceback
from typing import Callable, NoReturn

from ..errors import UserNamespaceUnavailable
from . import channel, idmap, libc

USERNS_KNOBS = (
    ("/proc/sys/user/max_user_namespaces", "0",
     "user namespaces are switched off on this host: the sysctl user.max_user_namespaces is 0. "
     "An administrator can enable them with 'sysctl -w user.max_user_namespaces=28633' "
     "and keep it in /etc/sysctl.d/99-userns.conf"),
    ("/proc/sys/kernel/unprivileged_userns_clone", "0",
     "unprivileged user namespaces are switched off on this host: the sysctl "
     "kernel.unprivileged_userns_clone is 0 (a Debian kernel option). An administrator can enable them "
     "with 'sysctl -w kernel.unprivileged_userns_clone=1' and keep it in /etc/sysctl.d/99-userns.conf"),
    ("/proc/sys/kernel/apparmor_restrict_unprivileged_userns", "1",
     "AppArmor restricts unprivileged user namespaces on this host "
     "(kernel.apparmor_restrict_unprivileged_userns=1, as on Ubuntu 24.04). An administrator can allow "
     "rootless by installing the AppArmor profile shipped in docs/troubleshooting.md as "
     "/etc/apparmor.d/rootless and running 'apparmor_parser -r /etc/apparmor.d/rootless', "
     "or switch the restriction off with 'sysctl -w kernel.apparmor_restrict_unprivileged_userns=0'"),
)


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def forbidden_by_sysctl() -> str | None:
    """Why unprivileged user namespaces cannot work here, when a sysctl says so for certain.

    (Not AppArmor's restriction: a profile may grant rootless what it denies to others.)
    """
    for path, bad, text in USERNS_KNOBS[:2]:
        if _read(path) == bad:
            return text
    return None


def explain_failure(err: OSError) -> str:
    """A sentence for a refused ``unshare(CLONE_NEWUSER)`` (or a refused step just after it)."""
    for path, bad, text in USERNS_KNOBS:
        if _read(path) == bad:
            return text
    if err.errno == errno.ENOSPC:
        return ("the limit of user namespaces is reached (user.max_user_namespaces="
                f"{_read('/proc/sys/user/max_user_namespaces')}): stop some containers, or ask an "
                "administrator to raise it")
    if err.errno == errno.EINVAL:
        return "this kernel was built without user namespaces (CONFIG_USER_NS): rootless cannot work here"
    if err.errno == errno.EPERM:
        return (f"the kernel refused a new user namespace ({err.strerror}); this happens inside a "
                "chroot, under a seccomp filter that blocks unshare (some container runtimes and "
                "sandboxes do), or under a security module policy. Run rootless directly on the host")
    return f"cannot create a user namespace: {err}"


def fork_into_userns(maps: idmap.IdMaps, child: Callable[[socket.socket], NoReturn],
                     name: str = "rootless",
                     before_release: Callable[[int], None] | None = None,
                     join: int | None = None) -> tuple[int, socket.socket]:
    """Fork a child into a new user namespace with ``maps`` written; it then runs ``child(sock)``.

    With ``join`` (an fd of ``/proc/PID/ns/user``), the child joins that existing namespace
    instead (it must have been made with the same ``maps``; we own it, so setns is allowed).

    ``before_release(pid)`` runs in the parent while the child still waits for its maps
    (e.g. to put it in a cgroup before it can unshare its cgroup namespace).

    Returns the child's pid and the parent's end of the channel.  Raises
    ``UserNamespaceUnavailable`` (the child's reason) if the namespace could not be made.
    """
    parent_sock, child_sock = channel.pair()
    # Become uid/gid 0 of the namespace when 0 is the caller (the usual maps).  Under
    # keep-id, 0 is a sub-id: staying the caller's ids keeps this process ours on the host
    # (e.g. for the fuse-overlay server to open its namespaces); the capabilities that
    # unshare(CLONE_NEWUSER) gave are the same either way.
    root_is_me = maps.to_host(0, "uid") == os.getuid() and maps.to_host(0, "gid") == os.getgid()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # child
        code = 125
        try:
            parent_sock.close()
            libc.set_pdeathsig(signal.SIGKILL)
            libc.set_process_name(name)
            try:
                if join is not None:
                    libc.setns(join, libc.CLONE_NEWUSER)
                else:
                    libc.unshare(libc.CLONE_NEWUSER)
            except OSError as e:
                channel.send_error(child_sock, explain_failure(e) if join is None else str(e), kind="userns")
                os._exit(125)
            channel.send(child_sock, "userns")
            channel.expect(child_sock, "maps")
            if root_is_me:
                os.setresgid(0, 0, 0)
                os.setresuid(0, 0, 0)
            child(child_sock)
        except channel.ProtocolError:
            pass  # the parent went away; nothing to report to
        except BaseException as e:  # noqa: BLE001 - the child must report, never unwind
            detail = traceback.format_exc() if os.environ.get("ROOTLESS_DEBUG") else ""
            channel.send_error(child_sock, f"{e}{chr(10) + detail if detail else ''}")
        finally:
            os._exit(code)
    child_sock.close()
    try:
        channel.expect(parent_sock, "userns")
        try:
            if join is None:
                idmap.write(pid, maps)
        except OSError as e:
            raise UserNamespaceUnavailable(f"cannot write the id maps of the new user namespace: {e}") from e
        if before_release is not None:
            before_release(pid)
        channel.send(parent_sock, "maps")
    except channel.ChildError as e:
        _reap(pid)
        if e.kind == "userns":
            raise UserNamespaceUnavailable(str(e)) from None
        raise
    except BaseException:
        _kill(pid)
        raise
    return pid, parent_sock


def _reap(pid: int) -> int:
    try:
        _, status = os.waitpid(pid, 0)
    except ChildProcessError:
        return 125
    return exit_code(status)


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    _reap(pid)


def exit_code(status: int) -> int:
    """A wait status as a shell would report it: the code, or 128+N for signal N."""
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.waitstatus_to_exitcode(status)


def wait(pid: int) -> int:
    """Wait for child ``pid``; its exit status as a shell reports it."""
    return _reap(pid)


def kill(pid: int) -> None:
    """SIGKILL child ``pid`` and reap it."""
    _kill(pid)


def run_as_root(maps: idmap.IdMaps, fn: Callable[[], object], name: str = "rootless-unshare") -> None:
    """Run ``fn`` as root of a new user namespace with ``maps`` (in a child) and wait for it.

    For work on files owned by sub-ids: unpacking layers, removing container trees.
    A failure in ``fn`` is raised here as ``channel.ChildError`` with its message.
    """
    def child(sock: socket.socket) -> NoReturn:
        fn()
        channel.send(sock, "done")
        os._exit(0)

    pid, sock = fork_into_userns(maps, child, name)
    with sock:
        try:
            channel.expect(sock, "done")
        finally:
            _reap(pid)
