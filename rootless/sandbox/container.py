"""The chain of processes that becomes a container.

    rootless (P, host namespaces)          the CLI: writes the id maps, forwards signals,
     │                                     relays the pty, returns the exit status
     └─ rootless-intermediate (C)          user ns U1 (maps written by P), new mount ns:
         │                                 prepares the root filesystem, then
         ├─ K (short-lived)                unshares the container's user ns U2 with UTS, IPC,
         │                                 network and cgroup namespaces (owned by U2);
         │                                 C writes U2's maps (identity over U1's ids),
         │                                 joins K's namespaces, unshares a PID ns, forks:
         └─ container PID 1 (B)            in U1: a nested mount ns, mounts /proc /dev /sys,
                                           pivot_root, masked and read-only paths; then
                                           setns(U2) and a mount ns owned by U2, in which
                                           those mounts are locked; hostname, loopback,
                                           user, capabilities, no_new_privs, exec.

Why U2: mounts that a mount namespace receives from one owned by a more privileged user
namespace are locked (mount_namespaces(7)): the container cannot unmount its masks, make
its read-only paths writable or reveal what they cover, whatever capabilities it has in
U2.  Its UTS, IPC, network and cgroup namespaces are U2's, so root inside keeps its rights
over them (ports < 1024, sethostname, ip link).  The PID namespace is U1's: B must be
born in it (so C unshares it) with U1's rights to mount its /proc, and a PID namespace
without a process cannot be joined (``/proc/K/ns/pid_for_children`` does not open).

``--network host``, ``--ipc host`` and ``--pid host`` leave the matching namespace out: the
container keeps the host's (K unshares no IPC namespace, C no PID namespace), and B binds the
host's ``/dev/shm`` and ``/proc`` instead of mounting its own (``mounts.RootfsPlan``).

Why two processes: ``unshare(CLONE_NEWPID)`` only puts the *children* of the caller in
the new PID namespace, so the command needs a fork after it; and ``pivot_root``
changes the root of every process of the mount namespace, so B takes a nested mount
namespace of its own and C keeps seeing the host's paths.  C ignores terminal signals:
P decides what reaches the container.  Every child reports a failure over the channel
before it exits.

C does not stay: once B exists it exits, and B (orphaned) is reparented to P, which is a
child subreaper while it starts and waits for the container — so P waits for B itself and
one process fewer stays resident per container.  B takes its parent-death signal only
after P saw C's exit, when its parent is P.  The exception is a root filesystem served by
a daemon that C started itself (``SandboxSpec.intermediate_needed``): it dies with C, so C
waits for B and cleans up.
"""

from __future__ import annotations

import errno
import fcntl
import os
import resource
import signal
import termios
import socket
from dataclasses import dataclass, field
from typing import Callable, NoReturn

from . import caps, channel, idmap, libc, mounts, net, seccomp, users
from .userns import fork_into_userns, kill as _kill, wait as _reap

FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT,
                     signal.SIGUSR1, signal.SIGUSR2)
_IGNORED_IN_C = FORWARDED_SIGNALS + (signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU, signal.SIGPIPE)
NAMESPACES = (libc.CLONE_NEWUTS | libc.CLONE_NEWIPC | libc.CLONE_NEWNET | libc.CLONE_NEWCGROUP
              | libc.CLONE_NEWPID)


@dataclass
class ProcessSpec:
    args: list[str]
    env: dict[str, str]
    cwd: str = "/"
    user: str = ""            # Docker's -u: "", UID[:GID] or NAME[:GROUP]
    caps: frozenset[str] = caps.DEFAULT
    tty: bool = False
    stdin: bool = False
    winsize: bytes | None = None  # struct winsize of the user's terminal, set on the pty before exec
    passwd_entry: str | None = None  # "name:x:uid:gid::home:shell", added to /etc/passwd if its uid is missing
    seccomp: bytes | None = None      # a compiled filter (seccomp.program), loaded last; None: unconfined
    no_new_privs: bool = False        # --security-opt no-new-privileges (Docker's default: off)
    preserve_fds: int = 0             # --preserve-fds N: fds 3..3+N-1 stay open; no others do
    groups_add: tuple[str, ...] = ()  # --group-add: more supplementary groups (names or gids)
    rlimits: tuple[tuple[int, int, int], ...] = ()   # --ulimit: (resource, soft, hard)


@dataclass
class SandboxSpec:
    process: ProcessSpec
    rootfs: mounts.RootfsPlan
    hostname: str
    maps: idmap.IdMaps
    domainname: str | None = None
    # Run in C as root of the user namespace, in its new mount namespace:
    prepare_rootfs: Callable[[], None] = lambda: None
    cleanup_rootfs: Callable[[], None] = lambda: None
    on_started: Callable[[int], None] = field(default=lambda pid: None)
    own_network: bool = True          # False: share the host's network namespace
    own_pid: bool = True              # False: share the host's PID namespace (--pid host)
    own_ipc: bool = True              # False: share the host's IPC namespace (--ipc host)
    # Run in P with PID 1's host pid once its namespaces exist; the command is executed only
    # after it returns (B waits for "network-ready"), so it starts with its network configured.
    network_setup: Callable[[int], None] | None = None
    # Run in P with C's host pid before C may unshare anything: put it in the container's cgroup.
    join_cgroup: Callable[[int], None] | None = None
    # An fd of /proc/PID/ns/user to join instead of making a user namespace (user networks).
    join_userns: int | None = None
    # The pid serving the root filesystem once prepared (a FUSE daemon), reported to P.
    rootfs_server: Callable[[], int] = lambda: 0
    # An fd of /proc/PID/ns/net to join instead of making a network namespace (container:NAME).
    join_netns: int | None = None
    # An fd of the container's own user namespace to join instead of making one: the one that
    # owns ``join_netns`` (container:NAME); ``join_userns`` is then its parent.
    container_userns: int | None = None
    # Asked in C once the root filesystem is prepared: must C stay until the container ends
    # (it owns what serves the root filesystem) and then run ``cleanup_rootfs``?
    intermediate_needed: Callable[[], bool] = lambda: False
    # The container's stdin, stdout and stderr (fds of P's); None: P's own 0, 1 and 2.
    stdio: tuple[int, int, int] | None = None
    # P a child subreaper, so that B is its child once C exits.  False: B goes to the nearest
    # subreaper above P instead (the lean monitor of container/detached.py, which waits for it
    # once P has ended; B's parent-death signal is then tied to that process).
    subreaper: bool = True


@dataclass
class Started:
    """What P holds for a running container."""
    intermediate_pid: int     # the child P waits for: C, or B itself once C has exited
    init_pid: int
    tty_master: int | None
    forward_input: bool = False
    rootfs_server: int = 0


def start(spec: SandboxSpec) -> Started:
    """Create the container and exec its command; raise ``ChildError`` with the child's reason.

    The signals P forwards stay blocked from here until ``wait`` has its handlers in
    place: one sent while the container starts is delivered then, not lost and not
    fatal to P.  Call ``wait`` (or ``unblock_signals``) afterwards.
    """
    signal.pthread_sigmask(signal.SIG_BLOCK, FORWARDED_SIGNALS)
    try:
        if spec.subreaper:
            libc.set_child_subreaper(True)   # B comes to us when C exits
        pid, sock = fork_into_userns(spec.maps, lambda s: _intermediate(spec, s), name="rootless-intermediate",
                                     before_release=spec.join_cgroup, join=spec.join_userns)
    except BaseException:
        _end_subreaping()
        unblock_signals()
        raise
    with sock:
        try:
            msg, _ = channel.expect(sock, "pid")
            if msg.get("intermediate_exits"):
                _reap(pid)            # C is gone: B is our child from now on
                pid = msg["pid"]
            if spec.network_setup is not None:
                try:
                    spec.network_setup(msg["pid"])
                except Exception:
                    # B may have failed (a mount, the host name) and ended meanwhile, which is
                    # why the stack could not join it: its own words are the reason to show.
                    _raise_child_error(sock)
                    raise
            if spec.network_setup is not None or msg.get("intermediate_exits"):
                try:
                    channel.send(sock, "network-ready")
                except (BrokenPipeError, ConnectionResetError):
                    # B has ended already (a mount failed): its error waits in the socket.
                    # (An EPIPE left to click would end the command with status 1, silently.)
                    _raise_child_error(sock)
                    raise channel.ChildError("the container's first process ended before its command "
                                             "started, without saying why") from None
        except BaseException as e:
            _abandon(pid, e)
            raise
        started = _until_exec(sock, pid, msg["pid"], spec.process)
        started.rootfs_server = int(msg.get("rootfs_server") or 0)
        return started


def _raise_child_error(sock: socket.socket, timeout: float = 0.5) -> None:
    """Raise the ``ChildError`` the child sent, if it sends one within ``timeout``; else return."""
    import select
    if not select.select([sock], [], [], timeout)[0]:
        return
    try:
        channel.receive(sock)
    except channel.ChildError:
        raise
    except Exception:  # noqa: BLE001 - not an error message: the caller's own error stands
        return


def _until_exec(sock: socket.socket, pid: int, target: int, proc: "ProcessSpec") -> "Started":
    """After "pid": the pty master (with -t), then EOF — the channel is close-on-exec, so EOF
    means the command runs.  On failure the child is reaped (or killed) and signals unblocked."""
    try:
        master = None
        if proc.tty:
            _, fds = channel.expect(sock, "tty")
            master = fds[0]
        channel.expect(sock, "eof")
    except BaseException as e:
        _abandon(pid, e)
        raise
    return Started(pid, target, master, proc.stdin)


def _abandon(pid: int, error: BaseException) -> None:
    """A start that failed: reap the child if it reported its error (it is ending), else kill it;
    unblock the forwarded signals."""
    if isinstance(error, channel.ChildError):
        _reap(pid)
    else:
        _kill(pid)
    _end_subreaping()
    unblock_signals()


def unblock_signals() -> None:
    signal.pthread_sigmask(signal.SIG_UNBLOCK, FORWARDED_SIGNALS)


def _end_subreaping() -> None:
    """The container has ended: orphans of later work (servers started in the background)
    go to init again, not to us."""
    try:
        libc.set_child_subreaper(False)
    except OSError:
        pass


def wait(started: Started, tty_output=None) -> int:
    """Forward the user's signals to the container's PID 1 until it ends; its exit status.
    ``tty_output``: given what the container writes on its pty when we relay it (``-t``)."""
    def forward(signum: int, _frame: object) -> None:
        try:
            os.kill(started.init_pid, signum)
        except ProcessLookupError:
            pass
    old = {s: signal.signal(s, forward) for s in FORWARDED_SIGNALS}
    unblock_signals()
    try:
        if started.tty_master is not None:
            from .tty import relay
            relay(started.tty_master, started.forward_input, tty_output)
        return _reap(started.intermediate_pid)
    finally:
        _end_subreaping()
        for s, h in old.items():
            signal.signal(s, h)


# --- C: the intermediate process -------------------------------------------------------

def _intermediate(spec: SandboxSpec, sock: socket.socket) -> NoReturn:
    for s in _IGNORED_IN_C:
        signal.signal(s, signal.SIG_IGN)
    if spec.stdio is not None:
        for target, fd in enumerate(spec.stdio):
            if fd != target:
                os.dup2(fd, target)
    unblock_signals()  # blocked by P around the fork; ignored here, default again in B
    libc.unshare(libc.CLONE_NEWNS)
    libc.mount(None, "/", None, libc.MS_REC | libc.MS_PRIVATE)
    spec.prepare_rootfs()
    try:
        userns, helper = _container_namespaces(spec)
        stays = spec.intermediate_needed()
        pid = os.fork()
        if pid == 0:
            try:
                _init(spec, sock, userns, parent_stays=stays)
            except BaseException as e:  # noqa: BLE001 - report, never unwind into C's code
                code = e.errno_exit if isinstance(e, _ExecFailed) else 125
                channel.send_error(sock, str(e), code, "exec" if code != 125 else "sandbox")
                os._exit(code)
        os.close(userns)
        channel.send(sock, "pid", pid=pid, rootfs_server=spec.rootfs_server(), intermediate_exits=not stays)
        _reap(helper)         # K's exit (a process's teardown) overlaps B's work
        sock.close()
        spec.on_started(pid)
        if not stays:
            os._exit(0)       # B goes to P (a subreaper); the mount lives in B's namespace
        code = _reap(pid)
    finally:
        try:
            spec.cleanup_rootfs()
        except Exception as e:  # noqa: BLE001
            os.write(2, f"rootless: warning: cleaning up the container's root filesystem: {e}\n".encode())
    os._exit(code)


def _container_namespaces(spec: SandboxSpec) -> tuple[int, int]:
    """Enter the container's UTS, IPC, network and cgroup namespaces, owned by the container's
    user namespace U2, a child of ours (U1), and a new PID namespace (for our children; owned
    by U1, see below); return an fd of U2 and K's pid, for the caller to reap.  The host's
    network, IPC or PID namespace is kept where ``spec`` says so (--network/--ipc/--pid host).

    They are made by a short-lived child K: it unshares U2 with them (or joins
    ``spec.container_userns`` and unshares the others), we write U2's maps (identity over our
    whole range: only a process of the parent namespace with CAP_SETUID may write more than
    one id), open K's namespaces and join them; K exits.  We stay in U1, and so does B until
    its mounts are made: the mount namespace holding them is owned by U1, and the one B takes
    once in U2 receives them locked (mount_namespaces(7)).
    """
    flags = NAMESPACES & ~libc.CLONE_NEWPID
    if not spec.own_network or spec.join_netns is not None:
        flags &= ~libc.CLONE_NEWNET
    if not spec.own_ipc:
        flags &= ~libc.CLONE_NEWIPC
    kinds = [(kind, flag) for kind, flag in (("uts", libc.CLONE_NEWUTS), ("ipc", libc.CLONE_NEWIPC),
                                             ("cgroup", libc.CLONE_NEWCGROUP), ("net", libc.CLONE_NEWNET))
             if flags & flag]
    new_userns = spec.container_userns is None
    ready_r, ready_w = os.pipe()
    done_r, done_w = os.pipe()
    k = os.fork()
    if k == 0:
        try:
            os.close(ready_r)
            os.close(done_w)
            if new_userns:
                libc.unshare(libc.CLONE_NEWUSER | flags)
            else:
                libc.setns(spec.container_userns, libc.CLONE_NEWUSER)
                libc.unshare(flags)
            os.write(ready_w, b"ok")
            os.read(done_r, 1)          # until C has what it needs: EOF
        except BaseException as e:  # noqa: BLE001 - C reports it
            os.write(ready_w, str(e).encode()[:4000])
        os._exit(0)
    os.close(ready_w)
    os.close(done_r)
    fds: list[int] = []
    try:
        answer = os.read(ready_r, 4096).decode(errors="replace")
        if answer != "ok":
            raise OSError(f"creating the container's namespaces: {answer or 'the helper died'}")
        fds = [os.open(f"/proc/{k}/ns/{kind}", os.O_RDONLY | os.O_CLOEXEC)
               for kind in ["user"] + [kind for kind, _ in kinds]]
        if new_userns:
            for kind in ("uid", "gid"):
                idmap.write_identity(k, kind)
    except BaseException:
        os.close(done_w)
        _reap(k)
        raise
    finally:
        os.close(ready_r)
    os.close(done_w)          # K exits: its namespaces live on in our fds
    try:
        for fd, (_, flag) in zip(fds[1:], kinds):
            libc.setns(fd, flag)
        if spec.join_netns is not None:
            libc.setns(spec.join_netns, libc.CLONE_NEWNET)
        # The PID namespace is ours (U1), not U2's: B must be its first process, with U1's
        # credentials to mount its /proc, and a PID namespace without a process cannot be
        # joined (/proc/K/ns/pid_for_children does not open until it has an init).
        # --pid host: none; B stays in the host's, and its /proc is the host's (RootfsPlan).
        if spec.own_pid:
            libc.unshare(libc.CLONE_NEWPID)
    except BaseException:
        os.close(fds[0])
        _reap(k)
        raise
    finally:
        for fd in fds[1:]:
            os.close(fd)
    return fds[0], k


# --- B: the container's PID 1 before exec ----------------------------------------------

class _ExecFailed(Exception):
    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.errno_exit = code


def _init(spec: SandboxSpec, sock: socket.socket, userns: int, parent_stays: bool = True) -> NoReturn:
    proc = spec.process
    if parent_stays:
        libc.set_pdeathsig(signal.SIGKILL)
    for s in _IGNORED_IN_C:
        signal.signal(s, signal.SIG_DFL)  # ignored signals would stay ignored across exec
    os.setsid()
    libc.unshare(libc.CLONE_NEWNS)
    mounts.enter_rootfs(spec.rootfs)
    # Into the container's user namespace, then a mount namespace owned by it: every mount
    # above is copied into it locked — not to be unmounted, revealed or made writable, with
    # whatever capabilities the container has (mount_namespaces(7)).
    libc.setns(userns, libc.CLONE_NEWUSER)
    os.close(userns)
    libc.unshare(libc.CLONE_NEWNS)
    libc.sethostname(spec.hostname)
    if spec.domainname:
        libc.setdomainname(spec.domainname)
    if spec.own_network and spec.join_netns is None:
        net.loopback_up()
    if spec.network_setup is not None or not parent_stays:
        channel.expect(sock, "network-ready")
    if not parent_stays:
        # P has reaped C, so our parent is P now: die with it, as with C before.
        libc.set_pdeathsig(signal.SIGKILL)
        if _peer_gone(sock):  # P died before the line above: nobody would end us
            os._exit(125)

    _become(proc, spec.maps, sock)


def _peer_gone(sock: socket.socket) -> bool:
    import select
    p = select.poll()
    p.register(sock, select.POLLIN | select.POLLHUP | getattr(select, "POLLRDHUP", 0x2000))
    for _, ev in p.poll(0):
        if ev & (select.POLLHUP | getattr(select, "POLLRDHUP", 0x2000)):
            return True
    return False


def _become(proc: ProcessSpec, maps: idmap.IdMaps, sock: socket.socket) -> NoReturn:
    """The last steps before the command, inside the container (PID 1, or an exec'd process):
    user lookup, pty, environment, workdir, bounding set, ids, no_new_privs, exec."""
    if proc.passwd_entry:
        _ensure_passwd(proc.passwd_entry)
    try:
        ident = users.resolve(proc.user)
        if proc.groups_add:
            ident = users.add_groups(ident, proc.groups_add)
            if maps.single:
                raise LookupError("--group-add needs a subordinate id range: in single-uid mode the kernel "
                                  "allows no supplementary groups (see docs/troubleshooting.md)")
    except LookupError as e:
        raise RuntimeError(str(e)) from None
    for kind, value in (("uid", ident.uid), ("gid", ident.gid)):
        if value >= maps.size(kind):
            why = maps.why_single or f"the range in /etc/sub{kind} is too small"
            raise RuntimeError(
                f"{kind} {value} does not exist in this container: it has {kind}s 0-{maps.size(kind) - 1} "
                f"only ({why}). Ask an administrator for a subordinate id range: "
                f"usermod --add-subuids 100000-165535 --add-subgids 100000-165535 $USER")

    if proc.tty:
        _attach_pty(sock, proc.winsize)
    elif not proc.stdin:
        fd = os.open("/dev/null", os.O_RDONLY)
        os.dup2(fd, 0)
        os.close(fd)

    env = dict(proc.env)
    env.setdefault("HOME", ident.home)
    cwd = proc.cwd or "/"
    os.makedirs(cwd, exist_ok=True)  # Docker creates a missing WORKDIR

    # A session keyring of its own: the caller's keys are neither readable nor writable
    # inside (runc and crun do the same).  Before the filter, which forbids keyctl.
    try:
        libc.join_session_keyring()
    except OSError as e:
        # ENOSYS (no keyrings in this kernel) or EPERM from a filter rootless itself runs under
        # (e.g. inside another runtime's container): that filter is inherited by the container
        # too, so it cannot reach the caller's keys either.  Anything else is a real failure.
        if e.errno not in (errno.ENOSYS, errno.EPERM):
            raise
    for res, soft, hard in proc.rlimits:
        try:
            resource.setrlimit(res, (soft, hard))
        except (OSError, ValueError) as e:
            raise RuntimeError(f"--ulimit: cannot set limit {res} to {soft}:{hard}: {e}") from None
    caps.limit_bounding_set(proc.caps)
    if proc.seccomp is not None:
        # Loaded while we are still root of the user namespace: without no_new_privs the
        # kernel asks for CAP_SYS_ADMIN there.  Every call below must be allowed by it.
        seccomp.load(proc.seccomp)
    _set_identity(ident)
    if proc.no_new_privs:
        libc.set_no_new_privs()
    try:
        os.chdir(cwd)
    except OSError as e:
        raise _ExecFailed(f"chdir to working directory {cwd}: {e.strerror}", 126) from None
    # Exactly 0, 1 and 2 (and the --preserve-fds ones) reach the command: a descriptor the
    # caller or the engine held open would be a way out (runc's CVE-2024-21626).
    for fd in range(3, 3 + proc.preserve_fds):
        os.set_inheritable(fd, True)
    libc.close_range_cloexec(3 + proc.preserve_fds)
    _exec(proc.args, env)


def _ensure_passwd(entry: str) -> None:
    """Add ``entry`` to the container's /etc/passwd unless its uid is there (--userns keep-id)."""
    uid = entry.split(":")[2]
    try:
        with open("/etc/passwd") as f:
            if any(line.split(":")[2:3] == [uid] for line in f):
                return
    except OSError:
        pass
    try:
        with open("/etc/passwd", "a") as f:
            f.write(entry + "\n")
    except OSError:
        pass  # a read-only root: the uid still works, without a name


def _set_identity(ident: users.Identity) -> None:
    with open("/proc/self/setgroups") as f:
        setgroups_allowed = f.read().strip() == "allow"
    if setgroups_allowed:
        os.setgroups([g for g in ident.groups])
    os.setresgid(ident.gid, ident.gid, ident.gid)
    os.setresuid(ident.uid, ident.uid, ident.uid)


def _take_stdio(stdio: tuple[int, int, int], keep: set[int]) -> None:
    """In a forked child: ``stdio`` becomes fds 0-2, and every other fd but ``keep`` is closed."""
    for target, fd in enumerate(stdio):
        if fd != target:
            os.dup2(fd, target)
    libc.close_fds_except(keep)


def _attach_pty(sock: socket.socket, winsize: bytes | None) -> None:
    """Open a pty in the container's own devpts; the slave becomes our terminal, P gets the master.

    The window size is set here, before exec, so a command asking for it at once sees the user's.
    """
    master, slave = os.openpty()  # after pivot_root: /dev/ptmx is the container's own devpts
    if winsize:
        fcntl.ioctl(slave, termios.TIOCSWINSZ, winsize)
    fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
    for fd in (0, 1, 2):
        os.dup2(slave, fd)
    if slave > 2:
        os.close(slave)
    channel.send(sock, "tty", fds=[master])
    os.close(master)


def _exec(args: list[str], env: dict[str, str]) -> NoReturn:
    if not args:
        raise _ExecFailed("no command specified: give one after the image name, or set CMD in the image", 125)
    prog = args[0]
    try:
        os.execvpe(prog, args, env)
    except OSError as e:
        if e.errno == errno.ENOENT:
            where = "executable file not found in $PATH" if "/" not in prog else "no such file or directory"
            raise _ExecFailed(f'exec: "{prog}": {where}', 127) from None
        if e.errno in (errno.EACCES, errno.ENOEXEC, errno.EISDIR):
            reason = "permission denied" if e.errno != errno.ENOEXEC else "exec format error"
            raise _ExecFailed(f'exec: "{prog}": {reason}', 126) from None
        raise _ExecFailed(f'exec: "{prog}": {e.strerror}', 126) from None


# --- exec: a process joining a running container ------------------------------------------

NS_ORDER = (("user", libc.CLONE_NEWUSER), ("cgroup", libc.CLONE_NEWCGROUP), ("ipc", libc.CLONE_NEWIPC),
            ("uts", libc.CLONE_NEWUTS), ("net", libc.CLONE_NEWNET), ("pid", libc.CLONE_NEWPID),
            ("mnt", libc.CLONE_NEWNS))


def enter(init_pid: int, proc: ProcessSpec, maps: idmap.IdMaps,
          join_cgroup: Callable[[int], None] | None = None,
          stdio: tuple[int, int, int] | None = None) -> Started:
    """Run ``proc`` in the namespaces of the running container whose PID 1 is ``init_pid``.

    X (a child of ours) is put in the container's cgroup, then joins the user namespace that
    owns the container's PID namespace (U1, the parent of its user namespace U2) first: that
    grants the capabilities the other ``setns`` calls need; then the others, the mount namespace,
    and U2 last; joining a PID namespace applies to children, so X forks Y, which takes the
    same last steps as the container's PID 1 (``_become``).  Returns like ``start``.

    ``stdio``: the process's stdin, stdout and stderr (None: ours).  Given, X keeps no other
    descriptor of ours: a server's other clients and pipes must not live on in it.
    """
    fds = []
    order = []
    try:
        for kind, flag in NS_ORDER:
            fd = os.open(f"/proc/{init_pid}/ns/{kind}", os.O_RDONLY | os.O_CLOEXEC)
            if kind in ("ipc", "pid", "net") and os.fstat(fd).st_ino == os.stat(f"/proc/self/ns/{kind}").st_ino:
                os.close(fd)    # the host's own (--ipc/--pid/--network host): nothing to join, and
                continue        # setns would need rights over the host's namespace
            fds.append(fd)
            order.append((kind, flag))
    except OSError as e:
        for fd in fds:
            os.close(fd)
        raise channel.ChildError(f"the container is not running (cannot open its namespaces: {e.strerror})")
    # The container's user namespace (U2) is a child of the one that owns its PID and mount
    # set-up (U1): join U1 first (its PID namespace needs capabilities there), U2 last.
    parent = libc.ns_ioctl(fds[0], libc.NS_GET_PARENT)
    if os.fstat(parent).st_ino != os.stat("/proc/self/ns/user").st_ino:
        fds.insert(0, parent)
        order.insert(0, ("user", libc.CLONE_NEWUSER))
        fds.append(fds.pop(1))
        order.append(order.pop(1))
    else:
        os.close(parent)       # a container started before U2 existed: its user namespace is U1
    parent_sock, child_sock = channel.pair()
    signal.pthread_sigmask(signal.SIG_BLOCK, FORWARDED_SIGNALS)
    pid = os.fork()
    if pid == 0:
        code = 125
        try:
            parent_sock.close()
            if stdio is not None:
                _take_stdio(stdio, keep={*fds, child_sock.fileno()})
            libc.set_pdeathsig(signal.SIGKILL)
            libc.set_process_name("rootless-exec")
            for sig in _IGNORED_IN_C:
                signal.signal(sig, signal.SIG_IGN)
            unblock_signals()
            channel.expect(child_sock, "go")
            for fd, (kind, flag) in zip(fds, order):
                libc.setns(fd, flag)
            os.chdir("/")
            y = os.fork()
            if y == 0:
                try:
                    libc.set_pdeathsig(signal.SIGKILL)
                    for sig in _IGNORED_IN_C:
                        signal.signal(sig, signal.SIG_DFL)
                    os.setsid()
                    _become(proc, maps, child_sock)
                except BaseException as e:  # noqa: BLE001
                    code = e.errno_exit if isinstance(e, _ExecFailed) else 125
                    channel.send_error(child_sock, str(e), code, "exec" if code != 125 else "sandbox")
                    os._exit(code)
            channel.send(child_sock, "pid", pid=y)
            child_sock.close()
            code = _reap(y)
        except channel.ProtocolError:
            pass
        except BaseException as e:  # noqa: BLE001
            channel.send_error(child_sock, str(e))
        finally:
            os._exit(code)
    child_sock.close()
    for fd in fds:
        os.close(fd)
    with parent_sock as sock:
        try:
            if join_cgroup is not None:
                join_cgroup(pid)
            channel.send(sock, "go")
            msg, _ = channel.expect(sock, "pid")
        except BaseException as e:
            _abandon(pid, e)
            raise
        return _until_exec(sock, pid, msg["pid"], proc)
