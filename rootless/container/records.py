"""Container records in the store: ``containers/ID/config.json``, names, ids, removal."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from . import procs
from .. import events
from ..errors import Conflict, NotFound, RootlessError, StoreError, UsageError
from ..sandbox.remove import remove_tree
from ..sandbox import idmap
from ..image.store import Store, lock_exclusive

# Trees of removed containers whose removal may finish after the command has answered: a
# list that cli/served.py sets while it runs a command for the CLI, and empties once the CLI
# has its exit status.  The tree is renamed into tmp/ first (the container is gone from then
# on), under a name that tells clean_stale it may go if its remover died.  None: at once.
deferred_removals: list[Callable[[], None]] | None = None

_ADJECTIVES = ("brave", "calm", "eager", "fancy", "gentle", "happy", "jolly", "keen", "lucid", "merry",
               "nimble", "proud", "quiet", "sharp", "tender", "vivid", "witty", "zen")
_NOUNS = ("otter", "lynx", "heron", "badger", "falcon", "panda", "beaver", "gecko", "marten", "orca",
          "puffin", "raven", "stoat", "tapir", "wombat", "yak", "zebu", "ibis")


@dataclass
class Record:
    id: str
    name: str
    image: str
    image_id: str
    command: list[str]
    created: float
    state: str = "created"            # created, running, exited, removing
    pid: int = 0
    exit_code: int | None = None
    finished: float | None = None
    config: dict[str, Any] = field(default_factory=dict)
    oom_killed: bool = False
    cgroup_paths: list[str] = field(default_factory=list)
    init_pid: int = 0                 # host pid of the container's PID 1 while it runs
    init_start: int = 0               # its start time (procs.start_time): the pid is checked against it
    owner_pid: int = 0                # the process that runs it: the foreground 'run', or the monitor
    owner_start: int = 0


class ContainerGone(RootlessError):
    """The container was removed (or is being removed) while this command worked on it."""


class Containers:
    """Container records.  Every change is made under the record's lock (``locked``): flock(2)
    on ``containers/ID/lock``, the record read again, the change applied, the new record written
    to a file of its own and renamed over ``config.json``.  Removal takes the same lock and
    renames the directory away, so a writer that waited gets ``ContainerGone``, never the chance
    to write back a stale copy (docs/architecture.md, "Container records")."""

    def __init__(self, store: Store):
        self.store = store
        self.abandoned: list[Record] = []   # what ``create`` saw of them (``abandoned``), for its caller

    def _path(self, cid: str) -> str:
        return os.path.join(self.store.container_dir(cid), "config.json")

    def _read(self, cid: str) -> Record:
        with open(self._path(cid)) as f:
            return Record(**json.load(f))

    def all(self) -> list[Record]:
        out = []
        base = os.path.join(self.store.root, "containers")
        for cid in os.listdir(base):
            try:
                out.append(self._read(cid))
            except (OSError, ValueError, TypeError):
                continue
        return sorted(out, key=lambda r: r.created, reverse=True)

    def _write(self, rec: Record, directory: str | None = None) -> None:
        """Replace the record (call with its lock held): a temporary file of our own, renamed.
        ``directory``: where the container's directory is being made (``create``)."""
        directory = directory or self.store.container_dir(rec.id)
        # A name of our own (not tempfile's: its import costs every start ~6 ms).
        tmp = os.path.join(directory, f".config.{os.getpid()}.{os.urandom(6).hex()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(vars(rec), f)      # the fields as they are: asdict's deep copy costs ~1 ms a write
            os.rename(tmp, os.path.join(directory, "config.json"))
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    @contextlib.contextmanager
    def locked(self, cid: str, name: str | None = None) -> Iterator[Record]:
        """Hold the record's lock; yields the record as it is now.  ``ContainerGone`` if removed."""
        gone = ContainerGone(f"container {name or cid[:12]} was removed meanwhile")
        path = os.path.join(self.store.container_dir(cid), "lock")
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except FileNotFoundError:
            raise gone from None
        try:
            lock_exclusive(fd, path)
            try:
                st, now = os.fstat(fd), os.stat(path)
                rec = self._read(cid)
            except (OSError, ValueError, TypeError):
                raise gone from None
            if (st.st_dev, st.st_ino) != (now.st_dev, now.st_ino):
                raise gone          # removed (and the lock file with it) while we waited
            yield rec
        finally:
            os.close(fd)

    def update(self, cid: str, change: Callable[[Record], None], name: str | None = None) -> Record:
        """Apply ``change`` to the current record under its lock and write it; the new record.
        ``ContainerGone`` if the container was removed or is being removed."""
        with self.locked(cid, name) as rec:
            if rec.state == "removing":
                raise ContainerGone(f"container {rec.name} is being removed")
            before = (rec.state, bool(rec.config.get("paused")), rec.name)
            change(rec)
            self._write(rec)
            _changed(self.store, before, rec)
            return rec

    def create(self, image: str, image_id: str, command: list[str], name: str | None,
               setup: Callable[[Record], None] | None = None) -> Record:
        """Reserve an id and a unique name (call with the store locked).  This process is
        recorded as the container's owner: ``rm -f`` stops it if the container is removed while
        it starts."""
        existing = self.all()
        taken = {r.name: r.id for r in existing}
        self.abandoned = [r for r in existing if abandoned(r)]     # read anyway: no second listing
        if name:
            if not _valid_name(name):
                raise UsageError(f"invalid container name '{name}': use letters, digits, '_', '.' and '-', "
                                 "starting with a letter or digit")
            if name in taken:
                raise Conflict(f"the container name '{name}' is already in use by container "
                                    f"{taken[name][:12]}: remove it with 'rootless rm {name}' or choose another name")
        else:
            name = next((n for n in (_random_name() for _ in range(100)) if n not in taken), None)
            name = name or f"c_{os.urandom(4).hex()}"
        cid = os.urandom(32).hex()
        rec = Record(cid, name, image, image_id, command, time.time())
        claim(rec, os.getpid())
        # made whole under tmp/ (named for its writer) and renamed into place: a creator killed
        # half-way (a build stopped by its client) leaves nothing in containers/, and what it
        # left in tmp/ is swept by the next command that takes the store lock
        staging = self.store.new_temp_dir("container")
        try:
            if setup is not None:
                setup(rec)
            self._write(rec, staging)
            os.rename(staging, self.store.container_dir(cid))
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        events.emit(self.store.root, "container", "create", cid, events.container_attributes(rec))
        return rec

    def find(self, key: str) -> Record:
        recs = self.all()
        for r in recs:
            if r.name == key or r.id == key:
                return r
        matches = [r for r in recs if r.id.startswith(key)] if len(key) >= 3 else []
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise UsageError(f"container id prefix '{key}' is ambiguous: give more characters")
        raise NotFound(f"no such container: '{key}' ('rootless ps -a' lists them)")

    def find_here(self, key: str) -> Record:
        """``find``, for a command that acts on the container's processes: ``Conflict`` if
        they run on another machine (``elsewhere``)."""
        rec = self.find(key)
        _refuse_elsewhere(rec, "run this command there")
        return rec

    def remove(self, rec: Record, maps: idmap.IdMaps, force: bool = False) -> list[str]:
        """Remove the container: with ``force``, first stop whatever runs or starts it.

        Under the record's lock the record is marked ``removing`` (writers then get
        ``ContainerGone``); the container's PID 1 is killed through a pidfd, so that its owner
        (the ``run`` in the foreground, or the monitor) ends as after any exit; an owner still
        starting it, or one that does not end, is killed with its whole process tree.  Then,
        under the lock again, the directory is renamed away and removed with the cgroup and
        the run-time directory.  Returns warnings (things left that could not be removed)."""
        me = os.getpid()
        with self.locked(rec.id, rec.name) as cur:
            # its processes, there, cannot be stopped from here: its files stay
            _refuse_elsewhere(cur, f"remove it there ('rootless rm -f {cur.name}' on {{node}}), where it can be "
                                   "removed even if that machine has restarted since")
            if cur.state == "removing":
                remover = cur.config.get("remover") or [0, 0]
                if remover[0] != me and procs.alive(*remover):
                    raise Conflict(f"removal of container {cur.name} is already in progress")
            owner = _owner(cur)
            if owner[0] and cur.state in ("exited", "removing") and not _container_alive(cur):
                owner_fd = procs.open_pid(*owner)        # finishing its clean-up, or between two runs
                if owner_fd is not None:                 # of a restart policy
                    procs.wait_fd(owner_fd, 0 if force else 5)
                    os.close(owner_fd)
                owner = _owner(cur)
            busy = _container_alive(cur) or bool(owner[0])
            if busy and not force:
                raise Conflict(f"container {cur.name} is running: stop it first, or use 'rootless rm -f'")
            was_running = cur.state == "running"
            if busy:
                cur.state = "removing"
                cur.config["remover"] = [me, procs.start_time(me)]
                self._write(cur)
            else:
                return self._discard(cur, maps)
        # Outside the lock, which the owner needs to record how the container ended.
        if cur.init_pid and _container_alive(cur):
            procs.signal_pid(cur.init_pid, cur.init_start, 9)
            if owner[0] and not procs.wait_gone(*owner, 10):
                procs.kill_tree(*owner)
        elif owner[0]:
            procs.kill_tree(*owner)      # still starting it: nothing of it may go on
        if cur.init_pid and _container_alive(cur):
            procs.kill_tree(cur.init_pid, cur.init_start)   # a container that outlived its owner
        if cur.pid and cur.pid != me and _alive(cur.pid) and not cur.init_start:
            os.kill(cur.pid, 9)                              # a record from an older rootless
            _wait_gone(cur.pid)
        if was_running:          # its owner cannot record the end of a container being removed
            events.emit(self.store.root, "container", "die", cur.id, events.container_attributes(cur, exitCode=137))
        try:
            with self.locked(cur.id, cur.name) as last:
                return self._discard(last, maps)
        except ContainerGone:
            return []       # another rm -f completed the removal meanwhile

    def _discard(self, rec: Record, maps: idmap.IdMaps) -> list[str]:
        """Rename the directory away (call with the lock held, nothing of the container running),
        then remove it, the cgroup and the run-time directory."""
        directory = self.store.container_dir(rec.id)
        from .. import atomic
        doomed = os.path.join(self.store.root, "tmp", atomic.temp_name(f"removing-{rec.id[:16]}"))
        os.rename(directory, doomed)
        events.emit(self.store.root, "container", "destroy", rec.id, events.container_attributes(rec))
        warnings = []
        if rec.cgroup_paths:
            from ..cgroups import CgroupError, attach
            try:
                present = [p for p in rec.cgroup_paths if os.path.isdir(p)]
                if present:
                    attach(present).remove()
            except CgroupError as e:
                warnings.append(str(e))
        run_dir = rec.config.get("run_dir")
        if run_dir and os.path.isdir(run_dir):
            shutil.rmtree(run_dir, ignore_errors=True)
        if deferred_removals is not None:
            deferred_removals.append(lambda: remove_tree(maps, doomed))
            return warnings
        try:
            remove_tree(maps, doomed)
        except StoreError as e:
            raise StoreError(f"container {rec.name} was removed, but not all of its files ({e}): remove them "
                             f"with 'rootless unshare rm -rf {doomed}'") from None
        return warnings


def _owner(rec: Record) -> tuple[int, int]:
    """The process running (or starting) the container, if it still runs and is neither us nor
    one of our ancestors (a monitor whose child records the end and removes the container: it
    waits for us, and stopping its process tree would stop us)."""
    pid, start = rec.owner_pid, rec.owner_start
    if not pid:
        pid = int(rec.config.get("monitor") or 0)   # a record from an older rootless
    if pid and pid != os.getpid() and procs.alive(pid, start) and not procs.is_ancestor(pid, start):
        return pid, start
    return 0, 0


def abandoned(rec: Record) -> bool:
    """A ``--rm`` container whose processes have all ended without its owner removing it: the
    owner was killed (SIGKILL of 'run --rm', a cancelled Slurm job past its grace time).  The
    next ``run`` or ``create`` removes it, as Docker's daemon removes the auto-remove containers
    it finds stopped when it starts.  Only one created on this machine in this boot: its pids
    can be checked here (a store on a shared filesystem holds other nodes' running ones)."""
    if not (rec.config.get("options") or {}).get("rm") or rec.config.get("builder"):
        return False
    if rec.state not in ("running", "created") or not rec.owner_pid:
        return False        # created to be started later, exited (recorded), or being removed
    if not rec.config.get("boot_id") or rec.config["boot_id"] != procs.boot_id():
        return False        # another node's (a shared store), another boot's, or an older rootless's
    monitor = int(rec.config.get("monitor") or 0)
    return (not procs.alive(rec.owner_pid, rec.owner_start) and not _container_alive(rec)
            and not (monitor and _alive(monitor)))


def claim(rec: Record, owner: int) -> None:
    """Record ``owner`` as the process running (or starting) the container, and the machine
    and boot whose pid it is (``elsewhere``, ``abandoned``)."""
    rec.owner_pid, rec.owner_start = owner, procs.start_time(owner)
    rec.config["boot_id"], rec.config["node"] = procs.boot_id(), procs.node()


def elsewhere(rec: Record) -> str:
    """The machine whose processes run or start the container, if not this one; else "".

    A store on a filesystem shared by several nodes (single-uid mode on NFS 4.2, docs/hpc.md)
    holds other nodes' containers: their pids mean nothing here, so they are neither judged
    ended nor removed from here ('ps' says where they run).  A record of this machine's earlier
    boot, or without the mark (an older rootless), is judged by its pids as before."""
    other = rec.config.get("node")
    if not other or other == procs.node() or rec.config.get("boot_id") == procs.boot_id():
        return ""
    if rec.state in ("running", "removing") or (rec.state == "created" and rec.owner_pid):
        return str(other)
    return ""


def _refuse_elsewhere(rec: Record, advice: str) -> None:
    """``Conflict`` naming the machine if the container runs on another one (``elsewhere``);
    ``advice`` may name it as ``{node}``."""
    other = elsewhere(rec)
    if other:
        raise Conflict(f"container {rec.name} runs on {other}, another machine that uses this store: "
                       + advice.format(node=other))


def _container_alive(rec: Record) -> bool:
    if rec.init_start:
        return procs.alive(rec.init_pid, rec.init_start)
    return rec.state in ("running", "removing") and _alive(rec.pid)


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not: it waits only for its parent to read its status)."""
    if pid <= 0:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _wait_gone(pid: int, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return
        except OSError:
            return
        time.sleep(0.01)


def _changed(store: Store, before: tuple[str, bool, str], rec: Record) -> None:
    """The events of a change of state: start, die, pause, unpause, rename."""
    state, paused, name = before
    if rec.state == "running" and state != "running":
        events.emit(store.root, "container", "start", rec.id, events.container_attributes(rec))
    elif state == "running" and rec.state == "exited":
        events.emit(store.root, "container", "die", rec.id,
                    events.container_attributes(rec, exitCode=rec.exit_code if rec.exit_code is not None else ""))
    if bool(rec.config.get("paused")) != paused:
        events.emit(store.root, "container", "pause" if not paused else "unpause", rec.id,
                    events.container_attributes(rec))
    if rec.name != name:
        events.emit(store.root, "container", "rename", rec.id, events.container_attributes(rec, oldName=name))


def _random_name() -> str:
    a, b = os.urandom(2)
    return f"{_ADJECTIVES[a % len(_ADJECTIVES)]}_{_NOUNS[b % len(_NOUNS)]}"


def _valid_name(name: str) -> bool:
    import re
    return bool(re.fullmatch(r"[a-zA-Z0-9][a-zA-Z0-9_.-]*", name))


def running(rec: Record) -> bool:
    return rec.state == "running" and _alive(rec.pid)


def ended_code(records: "Containers", rec: Record) -> int | None:
    """The exit code of container ``rec``, read when it did not run; None if its PID 1 has ended
    but its monitor lives and has not recorded the end yet.  A monitor found gone is read again:
    it may have recorded the end and exited since ``rec`` was read (a lean monitor ends within
    milliseconds of its starter's writing), and that copy, not 137, has the code."""
    monitor = int(rec.config.get("monitor") or 0)
    if rec.state == "running" and monitor:
        if _alive(monitor):
            return None
        try:
            rec = records._read(rec.id)
        except (OSError, ValueError, TypeError):      # removed as it ended (--rm)
            code = noted_exit(rec.id)
            return 137 if code is None else code
    return rec.exit_code if rec.state == "exited" and rec.exit_code is not None else 137


def restarting(rec: Record) -> bool:
    """Between two runs of its restart policy: it has ended, its monitor lives on to start it
    again (and was not told to stop)."""
    policy = str((rec.config.get("options") or {}).get("restart") or "no").partition(":")[0]
    monitor = int(rec.config.get("monitor") or 0)
    ended = rec.state == "exited" or (rec.state == "running" and not _alive(rec.pid))   # or being recorded
    return policy != "no" and ended and not rec.config.get("stopped") and bool(monitor) and _alive(monitor)


# --- the exit code of a container removed as it ended (--rm) -----------------------------------
# Docker's wait (condition=removed, as 'docker run --rm' asks) answers with the exit code of a
# container that is gone by then: its owner leaves the code here, in the run-time directory,
# before it removes the record.  Notes older than a day are swept when one is written.

EXIT_NOTE_AGE = 86400.0


def _exit_notes() -> str:
    from .. import paths
    return os.path.join(paths.runtime_dir(), "exits")


def note_exit(cid: str, code: int) -> None:
    """Leave ``code`` for a waiter of container ``cid``, which is about to be removed."""
    try:
        directory = _exit_notes()
        os.makedirs(directory, mode=0o700, exist_ok=True)
        now = time.time()
        for name in os.listdir(directory):
            path = os.path.join(directory, name)
            with contextlib.suppress(OSError):
                if now - os.stat(path).st_mtime > EXIT_NOTE_AGE:
                    os.unlink(path)
        tmp = os.path.join(directory, f".{cid}.{os.getpid()}.tmp")
        with open(tmp, "w") as f:
            f.write(str(code))
        os.rename(tmp, os.path.join(directory, cid))
    except (OSError, RootlessError):
        pass            # a waiter then answers as for a container removed with 'rm -f'


def noted_exit(cid: str) -> int | None:
    """The exit code a removed container's owner left (``note_exit``), or None."""
    try:
        with open(os.path.join(_exit_notes(), cid)) as f:
            return int(f.read().strip())
    except (OSError, ValueError, RootlessError):
        return None
