"""``stop``, ``kill``, ``wait``, ``logs`` and ``exec`` on containers started with ``run``."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from dataclasses import dataclass
from typing import BinaryIO, Callable, Iterator

from . import procs
from .procs import parse_signal
from .records import Containers, Record, _alive, ended_code, running
from ..errors import CommandError, Conflict, RootlessError, SandboxError, UsageError
from .monitor import log_path
from ..image.store import Store


def rootfs_lost(rec: Record) -> bool:
    """A running container whose root filesystem daemon (fuse-overlay) is gone: its files give ENOTCONN."""
    server = int(rec.config.get("rootfs_server") or 0)
    return running(rec) and server > 0 and not _alive(server)


ROOTFS_LOST = ("its root filesystem daemon (fuse-overlay) has died, so its files cannot be read (ENOTCONN): "
               "restart it with 'rootless restart {name}' (its files are kept)")


def kill(store: Store, key: str, sig: int) -> Record:
    rec = Containers(store).find_here(key)
    if not running(rec):
        raise Conflict(f"container {rec.name} is not running")
    procs.signal_pid(rec.init_pid, rec.init_start, sig)   # through a pidfd: never a reused pid
    from .. import events
    events.emit(store.root, "container", "kill", rec.id, events.container_attributes(rec, signal=int(sig)))
    return rec


def wait_exit(store: Store, key: str, timeout: float | None = None) -> int | None:
    """The exit code once the container has ended (None on timeout)."""
    records = Containers(store)
    rec = records.find_here(key)
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        rec = records.find(rec.id)
        if rec.state == "created" and not _starting(rec):
            return 0                    # as Docker: a container never started is not running
        if not running(rec) and rec.state != "created":
            code = ended_code(records, rec)
            if code is None and (deadline is None or time.monotonic() < deadline):
                time.sleep(0.01)        # it ended a moment ago: its monitor is recording how
                continue
            monitor = int(rec.config.get("monitor") or 0)
            if monitor and _alive(monitor) and rec.config.get("stopped"):
                from .records import _wait_gone
                _wait_gone(monitor, 10)  # let it finish its clean-up before we return
            return 137 if code is None else code
        if deadline is not None and time.monotonic() > deadline:
            return None
        time.sleep(0.01)


def _starting(rec: Record) -> bool:
    """Whether a process is starting the created container (``run``, or a monitor)."""
    return bool(rec.owner_pid) and procs.alive(rec.owner_pid, rec.owner_start)


def stop(store: Store, key: str, grace: float, sig: str | None = None) -> Record:
    """The stop signal (the image's STOPSIGNAL, or SIGTERM), SIGKILL after ``grace`` seconds.

    Marks the record first, so that a restart policy does not bring the container back."""
    records = Containers(store)
    rec = records.find_here(key)
    monitor = int(rec.config.get("monitor") or 0)
    if not running(rec) and not (monitor and _alive(monitor)):
        return rec
    rec = records.update(rec.id, lambda r: r.config.__setitem__("stopped", True), rec.name)
    if not running(rec):
        return rec  # between two runs of a restart policy: the monitor sees the mark
    kill(store, rec.id, parse_signal(sig or rec.config.get("stop_signal") or "SIGTERM"))
    if wait_exit(store, rec.id, grace) is None:
        procs.signal_pid(rec.init_pid, rec.init_start, signal.SIGKILL)  # from outside, even PID 1 cannot ignore it
        wait_exit(store, rec.id, 30)
    from .. import events
    events.emit(store.root, "container", "stop", rec.id, events.container_attributes(rec))
    return rec


@dataclass(frozen=True)
class LogLine:
    stream: str          # "stdout" or "stderr"
    time: str            # RFC 3339, as recorded
    text: str            # with its newline (the last line of a stream may have none)


def logs(store: Store, key: str, follow: bool, tail: int | None, since: float | None,
         until: float | None = None, stop: Callable[[], bool] | None = None) -> Iterator[LogLine]:
    """What a container wrote, line by line (its rotated files first); with ``follow``, until it
    ends (and its monitor has logged all it wrote) or ``stop()`` says so (checked every 0.1 s:
    a server's client that went away).  ``since``/``until``: Unix times bounding the lines."""
    from . import logfile
    rec = Containers(store).find(key)
    path = log_path(store.container_dir(rec.id))
    if (rec.config.get("options") or {}).get("log_driver") == "none":
        raise RootlessError(f"container {rec.name} has no log: it was run with --log-driver none")
    try:
        current = open(path, "rb")
    except FileNotFoundError:
        return                      # nothing written yet (or a -t container run in the foreground)
    with current:
        lines = [line for name in logfile.files(path)[:-1] for line in _lines_of(name)] + current.readlines()
        if tail is not None:
            lines = lines[-tail:] if tail > 0 else []
        yield from _entries(lines, since, until)
        while follow and not (stop is not None and stop()):
            more = current.readlines()
            if more:
                yield from _entries(more, since, until)
            elif _rotated(current, path):
                current.close()
                current = open(path, "rb")
            elif _logged_to_end(store, rec.id):
                yield from _entries(current.readlines(), since, until)
                return
            else:
                time.sleep(0.1)


def _logged_to_end(store: Store, cid: str) -> bool:
    """Whether the container's run has ended and all it wrote is in its log: its owner (the
    monitor) records the exit only once its log pump has drained the pipes."""
    from ..errors import NotFound
    try:
        rec = Containers(store).find(cid)
    except NotFound:
        return True                 # removed (--rm): after its output was logged
    if rec.state != "running":
        return True
    if running(rec):
        return False
    return not (rec.owner_pid and procs.alive(rec.owner_pid, rec.owner_start))


@dataclass
class LogMark:
    """A place in a container's log (``log_mark``), and which run of it had started then.
    ``file``: the log opened when the mark was taken (``hold``), read by ``run_output`` even
    if the container is removed (``--rm``) before its reader comes to it."""
    inode: int
    size: int
    started: float | None
    file: BinaryIO | None = None

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


def log_mark(store: Store, key: str, at_start: bool = False, hold: bool = False) -> LogMark:
    """Where the container's log ends now (``at_start``: where it begins), for ``run_output``.
    ``hold``: open the log now (made empty if the container has none yet: its monitor appends
    to it), for a run about to start whose output must not be lost."""
    rec = Containers(store).find(key)
    path = log_path(store.container_dir(rec.id))
    f = None
    if hold and (rec.config.get("options") or {}).get("log_driver") != "none":
        with contextlib.suppress(FileNotFoundError):       # removed meanwhile: nothing to hold
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600))
            f = open(path, "rb")
    try:
        st = os.fstat(f.fileno()) if f is not None else os.stat(path)
    except FileNotFoundError:
        return LogMark(0, 0, rec.config.get("started"))
    return LogMark(st.st_ino, 0 if at_start else st.st_size, rec.config.get("started"), f)


def wait_started(store: Store, key: str, mark: LogMark, stop: Callable[[], bool]) -> bool:
    """Wait until a run of the container later than ``mark``'s has started (it may have ended
    already): True; False if ``stop()`` said to give up first."""
    from ..errors import NotFound
    records = Containers(store)
    cid = records.find(key).id
    while not stop():
        try:
            if records.find(cid).config.get("started") != mark.started:
                return True
        except NotFound:
            return True             # removed: run_output has nothing to give
        time.sleep(0.02)
    return False


def run_output(store: Store, key: str, mark: LogMark, stop: Callable[[], bool] = lambda: False) -> Iterator[LogLine]:
    """The output of the container's current run, from ``mark`` on (a ``log_mark`` taken before
    the run started, or at any time since), until the run has ended and all of it has been
    logged, or ``stop()`` (checked every 0.05 s) says so.  What ``attach`` streams.  A
    container removed meanwhile gives what its held log (``log_mark(hold=True)``) has, or
    nothing."""
    from ..errors import NotFound
    f, mark.file = mark.file, None
    try:
        cid = Containers(store).find(key).id
    except NotFound:
        if f is not None:           # --rm removed it after logging all it wrote
            with f:
                f.seek(mark.size)
                yield from _entries(f.readlines(), None)
        return
    path = log_path(store.container_dir(cid))
    try:
        while f is None:
            try:
                f = open(path, "rb")
            except FileNotFoundError:
                if stop() or _logged_to_end(store, cid):
                    return
                time.sleep(0.05)
        if os.fstat(f.fileno()).st_ino == mark.inode:
            f.seek(mark.size)
        while not stop():
            more = f.readlines()
            if more:
                yield from _entries(more, None)
            elif _rotated(f, path):
                f.close()
                f = open(path, "rb")
            elif _logged_to_end(store, cid):
                yield from _entries(f.readlines(), None)
                return
            else:
                time.sleep(0.05)
    finally:
        if f is not None:
            f.close()


def _lines_of(name: str) -> list[bytes]:
    try:
        with open(name, "rb") as f:
            return f.readlines()
    except FileNotFoundError:
        return []


def _rotated(f, path: str) -> bool:
    try:
        return os.fstat(f.fileno()).st_ino != os.stat(path).st_ino
    except FileNotFoundError:
        return False


def _entries(lines: list[bytes], since: float | None, until: float | None = None) -> Iterator[LogLine]:
    import datetime
    from .logfile import parse_line
    for raw in lines:
        entry = parse_line(raw)
        if entry is None:
            continue
        stream, when, text = entry
        if since is not None or until is not None:
            try:
                stamp = datetime.datetime.fromisoformat(_iso(when)).timestamp()
            except ValueError:
                stamp = None
            if stamp is not None and ((since is not None and stamp < since) or (until is not None and stamp > until)):
                continue
        yield LogLine(stream, when, text)


def _iso(when: str) -> str:
    """An RFC 3339 time as ``fromisoformat`` reads it before Python 3.11: at most 6 digits of
    fraction, an explicit offset."""
    import re
    when = when.replace("Z", "+00:00")
    return re.sub(r"(\.\d{6})\d+", r"\1", when)


def exec_in(store: Store, key: str, command: list[str], interactive: bool, tty: bool, env: list[str],
            user: str | None, workdir: str | None, privileged: bool = False, preserve_fds: int = 0) -> int:
    """``exec`` with our own stdin, stdout and stderr (and terminal, with ``tty``); its exit status."""
    from ..sandbox import container
    from ..sandbox.tty import winsize
    if tty and interactive and not os.isatty(0):
        raise UsageError("the input device is not a TTY: drop -t, or run from a terminal")
    started = exec_start(store, key, command, interactive, tty, env, user, workdir, privileged, preserve_fds,
                         winsize=winsize(0) if tty else None)
    code = container.wait(started)
    exec_died(store, key, code)
    return code


def exec_start(store: Store, key: str, command: list[str], interactive: bool, tty: bool, env: list[str],
               user: str | None, workdir: str | None, privileged: bool = False, preserve_fds: int = 0,
               stdio: tuple[int, int, int] | None = None, winsize: bytes | None = None, exec_id: str = ""):
    """Start ``command`` in the running container (Docker's exec): the ``sandbox.container.Started``
    process, its pty master in ``tty_master`` with ``tty``.  ``stdio``: its stdin, stdout and
    stderr (None: ours); with ``tty`` they are its pty instead.  The process dies with the
    thread that started it (PR_SET_PDEATHSIG): that thread waits for it (``exec_wait``)."""
    from .. import security
    from .run import check_preserve_fds, parse_env, seccomp_program
    from ..sandbox import channel, container, idmap
    rec = Containers(store).find_here(key)
    if not running(rec) or not rec.init_pid:
        raise Conflict(f"container {rec.name} is not running: start one with 'rootless run -d'")
    if rootfs_lost(rec):
        raise RootlessError(f"container {rec.name}: " + ROOTFS_LOST.format(name=rec.name))
    if not command:
        raise UsageError("exec needs a command, e.g. 'rootless exec -it NAME sh'")
    cfg = rec.config
    envs = dict(cfg.get("env") or {})
    envs.update(dict(parse_env(env, [])))
    if tty:
        envs.setdefault("TERM", "xterm")
    wd = workdir or cfg.get("cwd") or "/"
    if not wd.startswith("/"):
        raise UsageError(f"the working directory '{wd}' is invalid: it needs to be an absolute path")
    check_preserve_fds(preserve_fds, False)
    # The container's own security options, as Docker's exec: its seccomp filter, its
    # capabilities (all of them with --privileged) and no_new_privs.
    saved = cfg.get("options") or {}
    sec = security.parse(saved.get("security_opt") or [], privileged or bool(saved.get("privileged")))
    caps = frozenset(container.caps.NAMES) if privileged else frozenset(cfg.get("caps") or ())
    proc = container.ProcessSpec(args=command, env=envs, cwd=wd,
                                 user=user if user is not None else cfg.get("user", ""),
                                 caps=caps, tty=tty, stdin=interactive, winsize=winsize,
                                 seccomp=seccomp_program(sec, caps), no_new_privs=sec.no_new_privileges,
                                 preserve_fds=preserve_fds)
    join = None
    if rec.cgroup_paths:
        from ..cgroups import attach
        join = attach(rec.cgroup_paths).add
    try:
        started = container.enter(rec.init_pid, proc, idmap.detect(), join, stdio)
    except channel.ChildError as e:
        cls = CommandError if e.kind == "exec" else SandboxError
        raise cls(str(e), e.exit_code) from None
    from .. import events
    events.exec_event(store.root, rec, "exec_start", command, exec_id)
    return started


def exec_died(store: Store, key: str, code: int, exec_id: str = "") -> None:
    """Journal an exec's end (``exec_die``), unless its container is gone by now."""
    from .. import events
    try:
        rec = Containers(store).find(key)
    except RootlessError:
        return
    events.exec_event(store.root, rec, "exec_die", exec_id=exec_id, exitCode=code)


def exec_wait(started) -> int:
    """The exit status of a process ``exec_start`` started (without relaying a terminal or
    forwarding signals: ``exec_in`` does those)."""
    from ..sandbox import userns
    return userns.wait(started.intermediate_pid)


def resize(store: Store, key: str, height: int, width: int) -> None:
    """Set the window size of a running container's terminal (``-t``): it gets SIGWINCH."""
    import struct
    rec = Containers(store).find_here(key)
    if not running(rec):
        raise Conflict(f"container {rec.name} is not running")
    if not (rec.config.get("options") or {}).get("tty"):
        return                      # as Docker: no terminal, nothing to resize
    from .attaching import send_console
    from .console import SIZE
    send_console(console_path(rec), SIZE, struct.pack("HHHH", height, width, 0, 0))


def console_path(rec: Record) -> str:
    """The socket of a ``-i``/``-t`` container's terminal (console.py), while it runs."""
    from .console import socket_path
    from ..paths import runtime_dir
    return socket_path(os.path.join(runtime_dir(), rec.id[:16]))


def start(store: Store, key: str, fork_here: bool = True) -> Record:
    """Start a created or exited container, detached, with the options it was created with.

    ``fork_here=False``: never fork this process (a multi-threaded one, the API service, whose
    sockets a forked monitor would keep open for the container's life): the fork server forks
    the monitor, or, without one, a fresh ``python -m rootless.container.detached`` does."""
    from .run import start as start_container
    records = Containers(store)
    rec = records.find_here(key)
    if running(rec):
        return rec
    if fork_here:
        start_container(store, rec)
        return _after_start(records, rec)
    from . import services
    from .. import paths
    if services.ensure(paths.runtime_dir()) is not None:
        start_container(store, rec)
    else:
        import subprocess
        import sys
        proc = subprocess.run([sys.executable, "-m", "rootless.container.detached", store.root, rec.id],
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if proc.returncode != 0:
            raise RootlessError(proc.stderr.decode(errors="replace").strip() or
                                f"the container's monitor could not start it (exit status {proc.returncode})",
                                proc.returncode)
    return _after_start(records, rec)


def _after_start(records: Containers, rec: Record) -> Record:
    """The record of a container just started; the one it had if it has already run and been
    removed (``--rm``, a short command): it did start."""
    from ..errors import NotFound
    try:
        return records.find(rec.id)
    except NotFound:
        return rec


def start_attached(store: Store, key: str, interactive: bool, on_warning: Callable[[str], None],
                   emit: Callable[[LogLine], None]) -> int:
    """``start -a``: a running container is followed (``attach``); another one runs in the
    foreground, as ``run`` would run it (``run.start_attached``).  Its exit status."""
    from .run import start_attached as run_attached
    rec = Containers(store).find_here(key)
    if running(rec):
        return attach(store, rec.id, emit)
    options = rec.config.get("options") or {}
    if interactive and not (options.get("tty") or options.get("interactive")):
        raise UsageError(f"container {key} has no input to attach to: it was not created with "
                         "-i or -t (use 'rootless start -a')")
    return run_attached(store, rec, interactive, on_warning)


def _cgroup(rec: Record):
    from ..cgroups import attach
    if not rec.cgroup_paths:
        raise RootlessError(f"container {rec.name} has no cgroup: pause needs a delegated cgroup "
                            "(see docs/cgroups.md)")
    return attach(rec.cgroup_paths)


def pause(store: Store, key: str, paused: bool) -> None:
    records = Containers(store)
    rec = records.find_here(key)
    if not running(rec):
        raise Conflict(f"container {rec.name} is not running")
    if bool(rec.config.get("paused")) == paused:
        raise Conflict(f"container {rec.name} is {'already' if paused else 'not'} paused")
    cg = _cgroup(rec)
    cg.freeze() if paused else cg.thaw()
    records.update(rec.id, lambda r: r.config.__setitem__("paused", paused), rec.name)


def top(store: Store, key: str) -> list[tuple[int, str, str]]:
    """(host pid, user, command) of every process of the container: PID 1 and its descendants."""
    rec = Containers(store).find_here(key)
    if not running(rec):
        raise Conflict(f"container {rec.name} is not running")
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = open(f"/proc/{entry}/stat").read()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [rec.init_pid]
    while todo:
        pid = todo.pop(0)
        try:
            cmd = open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode(errors="replace").strip()
            uid = open(f"/proc/{pid}/status").read().split("Uid:")[1].split()[0]
        except (OSError, IndexError):
            continue
        import pwd
        try:
            user = pwd.getpwuid(int(uid)).pw_name
        except KeyError:
            user = uid
        out.append((pid, user, cmd))
        todo += sorted(children.get(pid, []))
    return out


UPDATABLE = ("memory", "memory_swap", "cpus", "cpu_shares", "pids_limit", "cpuset_cpus", "restart")


def update(store: Store, key: str, changes: dict[str, str]) -> Record:
    """Change a container's resource limits or restart policy (``changes``: run option names
    of ``UPDATABLE`` -> the flags' values).  Its saved options change for every later start;
    a running container's cgroup gets the new limits now.  The restart policy of a running
    container applies from its next start."""
    from .. import cgroups
    from .run import parse_restart
    unknown = sorted(set(changes) - set(UPDATABLE))
    if unknown:
        raise UsageError(f"cannot update {', '.join(unknown)}: only {', '.join(UPDATABLE)}")
    records = Containers(store)
    rec = records.find(key)
    if "restart" in changes:
        parse_restart(changes["restart"])
        if changes["restart"] != "no" and (rec.config.get("options") or {}).get("rm"):
            raise UsageError(f"container {rec.name} is removed when it exits (--rm): it cannot have a restart policy")
    merged = {**(rec.config.get("options") or {}), **changes}
    limits = cgroups.Limits.parse(memory=merged.get("memory"), memory_swap=merged.get("memory_swap"),
                                  cpus=merged.get("cpus"), cpu_shares=merged.get("cpu_shares"),
                                  pids=merged.get("pids_limit"), cpuset_cpus=merged.get("cpuset_cpus"))
    if running(rec) and any(k != "restart" for k in changes):
        setup = cgroups.detect(merged.get("cgroup_parent") or cgroups.default_parent())
        setup.check(limits)
        if not rec.cgroup_paths:
            raise RootlessError(f"container {rec.name} runs without a cgroup: its limits cannot change until "
                                "it is started again (see docs/cgroups.md)")
        cgroups.attach(rec.cgroup_paths).apply(limits)
    return records.update(rec.id, lambda r: r.config.setdefault("options", {}).update(changes), rec.name)


def rename(store: Store, key: str, new: str) -> None:
    from .records import _valid_name
    records = Containers(store)
    with store.lock():
        rec = records.find(key)
        if not _valid_name(new):
            raise UsageError(f"invalid container name '{new}': use letters, digits, '_', '.' and '-'")
        if any(r.name == new for r in records.all()):
            raise Conflict(f"the container name '{new}' is already in use")
        records.update(rec.id, lambda r: setattr(r, "name", new), rec.name)


def prune(store: Store) -> list[str]:
    """Remove every container that is not running; their ids."""
    return prune_containers(store)[0]


PRUNE_FILTERS = ("until", "label", "label!")


def prune_containers(store: Store, filters: list[str] | None = None) -> tuple[list[str], int]:
    """Remove every container that is not running and passes each ``KEY=VALUE`` filter
    (Docker's: ``until=TIMESTAMP|DURATION`` created before, ``label=KEY[=VALUE]``,
    ``label!=KEY[=VALUE]``); their ids and the bytes their files held."""
    from ..sandbox import idmap
    checks: list[Callable[[Record], bool]] = []
    for f in filters or []:
        key, sep, value = f.partition("=")
        if not sep or key not in PRUNE_FILTERS:
            raise UsageError(f"invalid filter '{f}': use until=TIMESTAMP|DURATION, label=KEY[=VALUE] or "
                             "label!=KEY[=VALUE]")
        if key == "until":
            cutoff = _until(value)
            checks.append(lambda r, c=cutoff: r.created < c)
        else:
            want = key == "label"
            checks.append(lambda r, v=value, w=want: _has_label(r, v) == w)
    records = Containers(store)
    maps = idmap.detect()
    gone, reclaimed = [], 0
    for rec in records.all():
        if running(rec) or rec.config.get("builder") or not all(check(rec) for check in checks):
            continue
        size = _disk_usage(store.container_dir(rec.id))
        try:
            records.remove(rec, maps)
        except RootlessError:
            continue        # starting, being removed, or removed meanwhile
        gone.append(rec.id)
        reclaimed += size
    return gone, reclaimed


def _has_label(rec: Record, wanted: str) -> bool:
    """Docker's ``label=KEY`` (present) or ``label=KEY=VALUE`` (equal), as ``listing.label_matches``."""
    labels = rec.config.get("labels") or {}
    key, sep, value = wanted.partition("=")
    return key in labels and (not sep or str(labels[key]) == value)


def _until(value: str) -> float:
    """Docker's ``until``: a Unix time, an RFC 3339 time, or a duration before now (10m, 24h)."""
    import datetime
    from ..units import parse_duration
    try:
        return float(value)
    except ValueError:
        pass
    try:
        return time.time() - parse_duration(value) / 1e9
    except ValueError:
        pass
    try:
        return datetime.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise UsageError(f"invalid until '{value}': use a Unix time, an RFC 3339 time or a duration "
                         "such as 24h") from None


def _disk_usage(directory: str) -> int:
    """Bytes of the files under ``directory`` (what can be read of them: best effort)."""
    total = 0
    for base, _dirs, files in os.walk(directory):
        for name in files:
            try:
                total += os.lstat(os.path.join(base, name)).st_blocks * 512
            except OSError:
                pass
    return total


WAIT_CONDITIONS = ("not-running", "next-exit", "removed")


class Waiter:
    """Docker's wait, one ``poll`` at a time (the API polls it between its own sleeps, so that
    a client that goes away stops it): ``not-running`` — as soon as the container does not
    run (a created one at once, code 0); ``next-exit`` — its next end after this waiter was
    made (a created container: once it has been started and has ended); ``removed`` — once
    its record is gone.  ``poll`` returns the exit code then, else None."""

    def __init__(self, store: Store, key: str, condition: str = "not-running"):
        if condition not in WAIT_CONDITIONS:
            raise UsageError(f"invalid wait condition '{condition}': use not-running, next-exit or removed")
        self.records = Containers(store)
        rec = self.records.find(key)
        self.id, self.condition = rec.id, condition
        self.finished = rec.finished            # next-exit: an end after this one
        self.code: int | None = None            # the last exit code seen

    def poll(self) -> int | None:
        from .records import noted_exit
        try:
            rec = next(r for r in self.records.all() if r.id == self.id)
        except StopIteration:                   # removed
            code = noted_exit(self.id)
            return code if code is not None else self.code if self.code is not None else 137
        if rec.state == "created" and not _starting(rec):
            return 0 if self.condition == "not-running" else None
        if running(rec) or rec.state == "created" or rec.state == "removing":
            return None
        code = ended_code(self.records, rec)
        if code is None:
            return None                         # it ended a moment ago: its monitor is recording how
        self.code = code
        if self.condition == "not-running" or (self.condition == "next-exit" and rec.finished != self.finished):
            return self.code
        return None


def attach(store: Store, key: str, emit: Callable[[LogLine], None], sig_proxy: bool = True) -> int:
    """Follow a detached container's output from now on, forwarding the user's signals to its
    PID 1 (Docker's ``--sig-proxy``); its exit status when it ends.  Each line goes to ``emit``.

    A container started with ``-dt``/``-di`` has a terminal (console.py): then our input goes to
    it too, Ctrl-P Ctrl-Q detaches, and with ``-t`` signals are keys on its pty, as in Docker.
    """
    from .. import events
    records = Containers(store)
    rec = records.find_here(key)
    if not running(rec):
        raise RootlessError(f"container {rec.name} is not running: 'rootless start -a {rec.name}' runs it "
                            "again and follows it")
    events.emit(store.root, "container", "attach", rec.id, events.container_attributes(rec))
    options = rec.config.get("options") or {}
    if options.get("tty") or options.get("interactive"):
        path = console_path(rec)
        if os.path.exists(path):
            from .attaching import attach_console
            if attach_console(path, bool(options.get("tty")), rec.init_pid if sig_proxy else 0):
                return 0                        # detached with Ctrl-P Ctrl-Q: it runs on
            return wait_exit(store, rec.id) or 0
    mark = log_mark(store, rec.id)
    old = {}
    init = procs.open_pid(rec.init_pid, rec.init_start) if sig_proxy else None
    if init is not None:
        def forward(signum: int, _frame: object) -> None:
            procs.send(init, signum)
        old = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        for line in run_output(store, rec.id, mark):
            emit(line)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        if init is not None:
            os.close(init)
    return wait_exit(store, rec.id) or 0
