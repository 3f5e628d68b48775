"""Races of ``rm -f`` with a container that is starting, and of concurrent record writers.

Played as an attacker would: ``rm -f`` fired at varying short delays after ``run`` (in the
foreground, and ``-d``) was launched.  Whatever the interleaving, every ``rm -f`` must either
have removed the container for good (it never comes back, ``run`` says so too) or say clearly
why not (one sentence, no raw errno text), and nothing may be left behind: no record, no
process, no mount, no cgroup, no run-time directory.

The module uses a store, run-time directory and cgroup parent of its own, so that what is
left behind can be told from what other tests (or other users of the machine) have running.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from .conftest import ROOTLESS, Rootless, stop_background

pytestmark = pytest.mark.both_modes

DELEGATED = [Path(p) for p in os.environ.get("ROOTLESS_TEST_CGROUPS", "").split(":") if p]
ROUNDS = 50
TOKEN = f"races{uuid.uuid4().hex[:8]}"
CLEAR = ("no such container", "was removed", "is already in progress")   # what a refusing rm -f may say
RAW = ("Errno", "Traceback", "config.json.tmp", "No such file or directory", "Directory not empty")


def _cgroup_parent() -> list[Path]:
    """A directory of our own in each delegated hierarchy (none without delegation)."""
    made = []
    for d in DELEGATED:
        if not os.access(d, os.W_OK):
            continue
        sub = d / f"{TOKEN}-{os.getpid()}"
        try:
            sub.mkdir()
        except OSError:
            continue
        made.append(sub)
    return made


@pytest.fixture(scope="module")
def rl_races(tmp_path_factory, busybox_tar):
    root = tmp_path_factory.mktemp("races-store")
    run_dir = tmp_path_factory.mktemp("races-run")
    run_dir.chmod(0o700)
    rl = Rootless(root, run_dir)
    rl.env["ROOTLESS_NO_SINGLE_UID_WARNING"] = "1"
    cgroups = _cgroup_parent()
    if cgroups:
        rl.env["ROOTLESS_CGROUP_PARENT"] = ":".join(map(str, cgroups))
    rl("import", "-c", 'CMD ["/bin/sh"]', str(busybox_tar), "busybox", check=True)
    rl.cgroups = cgroups
    rl.env_run_dir = run_dir
    yield rl
    for name in [r["Names"] for r in _ps(rl)]:
        rl("rm", "-f", name)
    stop_background(run_dir)
    subprocess.run([*ROOTLESS, "unshare", "rm", "-rf", str(root)], timeout=120, env=rl.env)
    for sub in cgroups:
        for child in sorted(sub.glob("**/"), key=lambda p: -len(p.parts)):
            try:
                child.rmdir()
            except OSError:
                pass


def _ps(rl) -> list[dict]:
    out = rl("ps", "-a", "--format", "json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def _clear_failure(proc: subprocess.CompletedProcess | tuple[int, str]) -> None:
    rc, err = (proc.returncode, proc.stderr) if not isinstance(proc, tuple) else proc
    for raw in RAW:
        assert raw not in err, f"raw error text ({raw!r}) in: {err!r}"


def _command(i: int) -> list[str]:
    # the container's PID 1 keeps TOKEN in its command line, so a survivor can be found
    return ["busybox", "sh", "-c", "sleep 20; exit 0", f"{TOKEN}-{i}"]


def _finish(p: subprocess.Popen, timeout: float = 60) -> tuple[int, str, str]:
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
        raise AssertionError(f"{p.args} did not end in {timeout}s: {err!r}")
    return p.returncode, out, err


def _round(rl, i: int, detach: bool) -> None:
    name = f"{TOKEN}-{i}"
    delay = (i % 13) * 0.05                       # 0 to 0.6 s after run was launched
    network = [] if i % 5 == 0 else ["--network", "none"]   # every fifth with slirp4netns/pasta
    args = ["run", *(["-d"] if detach else []), "--name", name, *network, *_command(i)]
    p = rl.popen(*args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(delay)
    rm = rl("rm", "-f", name, timeout=60)
    _clear_failure(rm)
    if rm.returncode != 0:
        assert rm.stderr.startswith("rootless: ") and rm.stderr.count("\n") == 1, rm.stderr
        assert any(c in rm.stderr for c in CLEAR), f"round {i}: unclear refusal: {rm.stderr!r}"
        # rm -f came before the record existed: remove what started since (bounded)
        deadline = time.monotonic() + 30
        while p.poll() is None and time.monotonic() < deadline:
            again = rl("rm", "-f", name, timeout=60)
            _clear_failure(again)
            if again.returncode == 0:
                break
            time.sleep(0.05)
    rc, out, err = _finish(p)
    _clear_failure((rc, err))
    if rm.returncode == 0:
        assert rm.stdout.strip() == name
        names = {r["Names"] for r in _ps(rl)}
        assert name not in names, f"round {i}: rm -f said it removed {name}, yet it is back: {_ps(rl)}"
        assert rc != 0 or detach, f"round {i}: run of a removed container exited 0"
    elif name in {r["Names"] for r in _ps(rl)}:
        again = rl("rm", "-f", name, timeout=60)
        assert again.returncode == 0, again.stderr
    assert name not in {r["Names"] for r in _ps(rl)}


def _leftovers(rl) -> list[str]:
    found = []
    containers = rl.root / "containers"
    for d in containers.iterdir():
        try:
            rec = json.loads((d / "config.json").read_text())
            what = f"{rec.get('name')}, state {rec.get('state')}, pid {rec.get('pid')}"
        except (OSError, ValueError):
            what = "no readable config.json: " + " ".join(sorted(p.name for p in d.iterdir()))
        found.append(f"record {d.name} ({what})")
    found += [f"run-time directory {d}" for d in (rl.env_run_dir / "rootless").iterdir()
              if d.is_dir()] if (rl.env_run_dir / "rootless").is_dir() else []
    with open("/proc/self/mountinfo") as f:
        found += [f"mount {ln.split()[4]}" for ln in f if str(rl.root) in ln]
    for sub in rl.cgroups:
        found += [f"cgroup {c}" for c in sub.iterdir() if c.is_dir()]
    uid = os.getuid()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if entry.stat().st_uid != uid and not _in_our_userns(entry):
                continue
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state == "Z":
            continue
        if TOKEN in cmdline:
            found.append(f"process {entry.name}: {cmdline.strip()}")
            continue
        try:
            links = [os.readlink(fd) for fd in (entry / "fd").iterdir()]
        except OSError:
            continue
        if any(link.startswith(str(containers) + "/") for link in links):
            found.append(f"process {entry.name} ({cmdline.strip()[:60]}) holds files of a removed container")
    return found


def _in_our_userns(entry: Path) -> bool:
    """Processes of our containers run as sub-ids: owned by another uid, in a child user namespace."""
    try:
        return os.readlink(entry / "ns" / "user") != os.readlink("/proc/self/ns/user")
    except OSError:
        return False


def _settled(rl, timeout: float = 20) -> list[str]:
    """What is left behind once everything had a bounded moment to end (never a timing assertion)."""
    deadline = time.monotonic() + timeout
    while True:
        left = _leftovers(rl)
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.1)


def test_rm_f_while_starting_leaves_nothing(rl_races):
    rl = rl_races
    for i in range(ROUNDS):
        _round(rl, i, detach=i % 2 == 1)
    left = _settled(rl)
    assert not left, "left behind:\n" + "\n".join(left)


def test_rm_f_of_a_running_detached_container_removes_its_run_time_dir(rl_races):
    rl = rl_races
    cid = rl("run", "-d", "--name", f"{TOKEN}-net", *_command(1000), check=True).stdout.strip()
    assert (rl.env_run_dir / "rootless" / cid[:16]).is_dir()
    rm = rl("rm", "-f", f"{TOKEN}-net")
    assert rm.returncode == 0, rm.stderr
    left = _settled(rl)
    assert not left, "left behind:\n" + "\n".join(left)


def test_concurrent_writers_lose_no_update(rl_races):
    """A rename while the monitor records the end of the container: the new name stays."""
    rl = rl_races
    for i in range(10):
        name, new = f"{TOKEN}-w{i}", f"{TOKEN}-r{i}"
        rl("run", "-d", "--network", "none", "--name", name, "busybox", "sh", "-c",
           f"sleep 0.{i}", check=True)
        ren = rl("rename", name, new)
        _clear_failure(ren)
        assert ren.returncode == 0, ren.stderr
        assert rl("wait", new, timeout=30).returncode == 0
        names = {r["Names"] for r in _ps(rl)}
        assert new in names and name not in names, names
        assert rl("rm", "-f", new).returncode == 0
    left = _settled(rl)
    assert not left, "left behind:\n" + "\n".join(left)


def test_mount_points_are_never_made_above_the_root(tmp_path):
    """The intermediate process makes missing mount points in the image's tree; once 'rm -f'
    renamed the container's directory away, it must fail there, not make the tree again at the
    old path (the leftover 'containers/ID/rootfs' CI once found after this module)."""
    from rootless.sandbox import mounts
    containers = tmp_path / "containers"
    containers.mkdir()
    root = containers / "ID" / "rootfs"
    with pytest.raises(FileNotFoundError):
        mounts._ensure(str(root), str(root / "etc" / "hosts"), "file")
    assert not any(containers.iterdir())
    root.mkdir(parents=True)                 # while it exists, missing parents are made below it
    mounts._ensure(str(root), str(root / "a" / "b" / "hosts"), "file")
    assert (root / "a" / "b" / "hosts").is_file()


def _ancestors(pid: int) -> list[int]:
    chain = []
    while pid > 1:
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError):
            break
        chain.append(pid)
    return chain


def test_shared_daemons_are_no_commands_children(tmp_path_factory, busybox_tar):
    """The fork server and the user networks' holder serve every later command: the command
    that started them must not be their ancestor.  'rm -f' of its container while it starts
    kills that command's process tree (they went with it), and takes an ancestor of its own
    for a process waiting on it, not for one starting the container: a served 'rm -f' (a child
    of the server) removed the files of a container its starter was still mounting (the raw
    'mount bind ... No such file or directory' of a CI run)."""
    root = tmp_path_factory.mktemp("daemons-store")
    run_dir = tmp_path_factory.mktemp("daemons-run")
    run_dir.chmod(0o700)
    rl = Rootless(root, run_dir)
    rl.env["ROOTLESS_NO_SINGLE_UID_WARNING"] = "1"
    assert rl("import", str(busybox_tar), "busybox").returncode == 0
    assert rl("network", "create", "daemons-net").returncode == 0
    stop_background(run_dir)                       # what these commands may have started
    for stale in (run_dir / "rootless").glob("*.pid"):
        stale.unlink()                             # so that 'run' starts them
    run = rl.popen("run", "--rm", "--network", "daemons-net", "--storage-driver", "fuse-overlay",
                   "busybox", "sleep", "30", stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                   stderr=subprocess.PIPE, text=True)
    try:
        state = run_dir / "rootless"
        deadline = time.monotonic() + 30
        while not (list(state.glob("forkserver-*.sock.pid")) and (state / "netns-holder.pid").exists()
                   and [r for r in _ps(rl) if r["State"] == "running"]):
            assert run.poll() is None, run.communicate()
            assert time.monotonic() < deadline, "the container did not start"
            time.sleep(0.05)
        server = int(next(state.glob("forkserver-*.sock.pid")).read_text())
        holder = int((state / "netns-holder.pid").read_text())
        for what, pid in (("fork server", server), ("networks' holder", holder)):
            assert run.pid not in _ancestors(pid), f"the {what} ({pid}) is a descendant of 'run' ({run.pid})"
    finally:
        run.kill()
        run.communicate()
        for r in _ps(rl):
            rl("rm", "-f", r["Names"])
        rl("network", "rm", "daemons-net")
        stop_background(run_dir)
        subprocess.run([*ROOTLESS, "unshare", "rm", "-rf", str(root)], timeout=120, env=rl.env)
