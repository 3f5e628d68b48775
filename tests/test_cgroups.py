"""rootless.cgroups against the real kernel: delegated cgroup v1 and v2 hierarchies, no mocks.

The cgroup tests need a delegated subtree per hierarchy, listed in ROOTLESS_TEST_CGROUPS
(scripts/test prepares it: <hierarchy>/rootless-test owned by the test user, the runner in
<hierarchy>/rootless-test/runner).  Containers' cgroups are created next to ``runner`` and
removed by each test; every process a test starts is killed and reaped.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid

import pytest

from rootless import cgroups
from rootless.cgroups import CgroupError, LimitUnavailable, Limits, mounts
from rootless.errors import RootlessError, UsageError

TEST_CGROUPS = [d for d in os.environ.get("ROOTLESS_TEST_CGROUPS", "").split(":") if d]
MEMORY_V1 = "/sys/fs/cgroup/memory"   # the host supervisor's: never touched, only listed


def delegated(kind: str) -> str:
    """The delegated directory of hierarchy ``kind`` ("v2" or a v1 controller), or skip."""
    if not TEST_CGROUPS:
        pytest.skip("ROOTLESS_TEST_CGROUPS is unset: no delegated cgroup subtree (scripts/test sets it up as root)")
    ms = mounts.cgroup_mounts()
    for d in TEST_CGROUPS:
        m = mounts.mount_of_dir(ms, d)
        if m and os.path.isdir(d) and ((kind == "v2" and m.version == 2) or (m.version == 1 and kind in m.controllers)):
            if m.version == 2:
                inside(m, d)
            return d
    pytest.skip(f"no delegated {'cgroup v2' if kind == 'v2' else 'cgroup v1 ' + kind} hierarchy in "
                f"ROOTLESS_TEST_CGROUPS ({':'.join(TEST_CGROUPS)})")


def inside(m: mounts.Mount, d: str) -> None:
    """Skip unless this process is below ``d`` on cgroup v2 (else the kernel refuses to move its children)."""
    mine = [m.dir_for(p) for c, p in mounts.own_cgroups() if not c]
    if not mine or not (mine[0] or "").startswith(d + "/"):
        pytest.skip(f"the test runner is not inside {d} (scripts/test moves it to {d}/runner): cgroup v2 "
                    "lets it move processes only within a subtree it owns")


def all_delegated() -> str:
    if not TEST_CGROUPS or not all(os.path.isdir(d) for d in TEST_CGROUPS):
        pytest.skip(f"ROOTLESS_TEST_CGROUPS is unset or names a missing directory ({':'.join(TEST_CGROUPS)})")
    ms = mounts.cgroup_mounts()
    for d in TEST_CGROUPS:
        m = mounts.mount_of_dir(ms, d)
        if m and m.version == 2:
            inside(m, d)
    return ":".join(TEST_CGROUPS)


def listing(parents: list[str]) -> dict[str, set[str]]:
    return {p: set(os.listdir(p)) for p in parents if os.path.isdir(p)}


@pytest.fixture
def track():
    """Create cgroups and start processes through this; everything is killed and removed afterwards."""
    made: list[cgroups.ContainerCgroup] = []
    procs: list[subprocess.Popen] = []

    class Track:
        def create(self, setup, limits=Limits()):
            cg = setup.create("t-" + uuid.uuid4().hex[:10], limits)
            made.append(cg)
            return cg

        def start(self, cg, script: str) -> subprocess.Popen:
            """A shell that waits for a line on stdin, then runs ``script``; in ``cg`` before it starts."""
            p = subprocess.Popen(["sh", "-c", "read go; " + script], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
            procs.append(p)
            cg.add(p.pid)
            p.stdin.write(b"go\n")
            p.stdin.flush()
            return p

        def python(self, cg, code: str) -> subprocess.Popen:
            p = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.readline()\n" + code],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 start_new_session=True)
            procs.append(p)
            cg.add(p.pid)
            p.stdin.write(b"go\n")
            p.stdin.flush()
            return p

    yield Track()
    for cg in made:
        try:
            cg.remove()
        except CgroupError:
            pass
    for p in procs:
        try:
            os.killpg(p.pid, 9)
        except (ProcessLookupError, PermissionError):
            pass
        p.wait(10)
    for cg in made:
        cg.remove()
        assert not any(os.path.exists(d) for d in cg.paths)


def wait_for(cond, timeout=10.0, what="condition"):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def read(path: str) -> str:
    with open(path) as f:
        return f.read().strip()


# --- values: Docker's units and ranges ------------------------------------------------

@pytest.mark.parametrize("text,value", [("512m", 512 << 20), ("1g", 1 << 30), ("1.5g", 3 << 29), ("1024", 1024),
                                        ("100kb", 100 << 10), ("2GiB", 2 << 30), ("7 M", 7 << 20), ("6m", 6 << 20)])
def test_parse_sizes(text, value):
    assert cgroups.parse_bytes(text) == value
    if value >= 6 << 20:                             # Docker's minimum for --memory
        assert Limits.parse(memory=text).memory == value


@pytest.mark.parametrize("kw", [dict(memory="12q"), dict(memory="-1"), dict(memory="1x"), dict(memory="m"),
                                dict(memory="1m"), dict(cpus="-1"), dict(cpus="abc"), dict(cpus="nan"),
                                dict(cpus="100000"), dict(cpu_shares="1"), dict(cpu_shares="300000"),
                                dict(cpu_shares="1.5"), dict(pids="-2"), dict(pids="12q"), dict(cpuset_cpus="3-1"),
                                dict(cpuset_cpus="a"), dict(memory="512m", memory_swap="256m"),
                                dict(memory_swap="1g"), dict(memory="512m", memory_swap="-2")])
def test_bad_values_refused(kw):
    with pytest.raises(UsageError) as e:
        Limits.parse(**kw)
    flag = {"memory": "--memory", "cpus": "--cpus", "cpu_shares": "--cpu-shares", "pids": "--pids-limit",
            "cpuset_cpus": "--cpuset-cpus", "memory_swap": "--memory"}
    assert any(f in str(e.value) for k, f in flag.items() if k in kw), str(e.value)


def test_docker_meaning_of_zero_and_minus_one():
    assert Limits.parse(pids="-1") == Limits()
    assert Limits.parse(pids="0", memory="0", cpus="0", cpu_shares="0") == Limits()
    assert Limits.parse(memory_swap="-1") == Limits()           # unlimited swap without --memory: default
    lim = Limits.parse(memory="512m", memory_swap="-1")
    assert lim.swap_only() == -1
    assert Limits.parse(memory="512m", memory_swap="1g").swap_only() == 512 << 20
    assert Limits.parse(memory="512m").swap_only() == 512 << 20   # Docker: as much swap again


def test_cpu_conversions():
    assert cgroups.shares_to_weight(2) == 1
    assert cgroups.shares_to_weight(1024) == 39                  # crun's value for Docker's default
    assert cgroups.shares_to_weight(262144) == 10000
    assert Limits(cpus=1.5).cpu_quota() == 150000
    assert Limits(cpus=0.01).cpu_quota() == 1000
    assert Limits.parse(cpuset_cpus="0").cpuset_cpus == "0"
    assert cgroups.parse_cpuset("0-2,4") == {0, 1, 2, 4}
    assert issubclass(LimitUnavailable, RootlessError) and issubclass(CgroupError, RootlessError)


# --- finding the hierarchies ---------------------------------------------------------------

MOUNTINFO = """\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw,nsdelegate
42 31 0:38 /sub /mnt/with\\040space rw,relatime - cgroup2 cgroup2 rw
"""


def test_mount_parsing(tmp_path):
    mi = tmp_path / "mountinfo"
    mi.write_text(MOUNTINFO)
    ms = mounts.cgroup_mounts(str(mi))
    assert [(m.mountpoint, m.version, sorted(m.controllers)) for m in ms] == [
        ("/sys/fs/cgroup/cpu,cpuacct", 1, ["cpu", "cpuacct"]), ("/sys/fs/cgroup/memory", 1, ["memory"]),
        ("/sys/fs/cgroup/systemd", 1, ["name=systemd"]), ("/sys/fs/cgroup/unified", 2, [])]
    assert ms[2].named and not ms[0].named
    pc = tmp_path / "cgroup"
    pc.write_text("4:memory:/a/b\n1:cpu,cpuacct:/x\n0::/user.slice/u\n")
    own = mounts.own_cgroups(str(pc))
    assert mounts.mount_for(ms, own[1][0]) == ms[0]
    assert mounts.mount_for(ms, own[2][0]).dir_for(own[2][1]) == "/sys/fs/cgroup/unified/user.slice/u"
    sub = mounts.Mount("/mnt", "/sub", 2, frozenset())
    assert sub.dir_for("/sub/c") == "/mnt/c" and sub.dir_for("/other") is None
    assert sub.cgpath_of("/mnt/c") == "/sub/c"


def test_bad_parent_refused(tmp_path):
    with pytest.raises(CgroupError, match="not in a cgroup filesystem"):
        cgroups.detect(str(tmp_path))
    if os.geteuid() != 0 and os.path.isdir("/sys/fs/cgroup/pids"):
        with pytest.raises(CgroupError, match=r"/sys/fs/cgroup/pids is not writable.*chown"):
            cgroups.detect("/sys/fs/cgroup/pids")


def test_discovery_finds_the_delegated_parents():
    parents = all_delegated()
    if os.geteuid() == 0:
        pytest.skip("running as root: every cgroup is writable, discovery would pick the host's own")
    ms = mounts.cgroup_mounts()
    own = {mounts.mount_for(ms, c): mounts.mount_for(ms, c).dir_for(p)
           for c, p in mounts.own_cgroups() if mounts.mount_for(ms, c)}
    expected = {d for d in parents.split(":") if any(own.get(m, "").startswith(d + "/") for m in own)}
    if not expected:
        pytest.skip("the test runner is not inside the delegated subtrees (scripts/test moves it to .../runner)")
    setup = cgroups.detect()
    assert {h.parent for h in setup.hierarchies} == expected
    assert not any(h.parent.startswith(MEMORY_V1) for h in setup.hierarchies)


def test_nothing_delegated_means_kind_none():
    setup = cgroups.Setup(kind="none")
    assert "no cgroup is delegated" in setup.why_not
    cg = setup.create("anything", Limits())         # no hierarchy, no limit: a no-op cgroup
    assert cg.paths == () and cg.stats() == {} and not cg.oom_killed()
    cg.add(os.getpid())
    cg.remove()
    with pytest.raises(LimitUnavailable, match="--pids-limit needs the pids controller"):
        setup.create("anything", Limits(pids=5))


def fake_cgroup(tmp_path, names):
    """A directory with empty regular files named like a new cgroup's interface files.

    Only for checking the values written: the kernel's side of cgroup v2 controllers (absent
    on hosts whose v2 hierarchy has none) is proven on a systemd-delegated VM.
    """
    for n in names:
        (tmp_path / n).write_text("")
    return str(tmp_path)


def test_v2_limit_file_values(tmp_path):
    from rootless.cgroups import v2
    d = fake_cgroup(tmp_path, ["cpuset.cpus", "memory.max", "memory.swap.max", "cpu.max", "cpu.weight", "pids.max"])
    v2.apply(d, Limits.parse(memory="512m", memory_swap="768m", cpus="1.5", cpu_shares="1024", pids="100",
                             cpuset_cpus="0"))
    got = {n: (tmp_path / n).read_text() for n in os.listdir(d)}
    assert got == {"cpuset.cpus": "0", "memory.max": str(512 << 20), "memory.swap.max": str(256 << 20),
                   "cpu.max": "150000 100000", "cpu.weight": "39", "pids.max": "100"}
    v2.apply(d, Limits.parse(memory="64m", memory_swap="-1"))
    assert (tmp_path / "memory.swap.max").read_text() == "max"


def test_v2_swap_limit_without_swap_accounting_refused(tmp_path):
    from rootless.cgroups import v2
    d = fake_cgroup(tmp_path, ["memory.max"])
    v2.apply(d, Limits.parse(memory="64m"))            # default swap: only where the kernel accounts it
    with pytest.raises(LimitUnavailable, match=r"--memory-swap: .*memory.swap.max does not exist.*swap"):
        v2.apply(d, Limits.parse(memory="64m", memory_swap="128m"))


def test_v1_limit_file_values(tmp_path):
    from rootless.cgroups import v1
    d = fake_cgroup(tmp_path, ["memory.limit_in_bytes", "memory.memsw.limit_in_bytes", "cpu.cfs_period_us",
                               "cpu.cfs_quota_us", "cpu.shares", "pids.max", "cpuset.cpus"])
    v1.apply(d, frozenset({"memory", "cpu", "pids", "cpuset"}),
             Limits.parse(memory="512m", cpus="0.25", cpu_shares="512", pids="7", cpuset_cpus="0"))
    got = {n: (tmp_path / n).read_text() for n in os.listdir(d)}
    assert got == {"memory.limit_in_bytes": str(512 << 20), "memory.memsw.limit_in_bytes": str(1024 << 20),
                   "cpu.cfs_period_us": "100000", "cpu.cfs_quota_us": "25000", "cpu.shares": "512",
                   "pids.max": "7", "cpuset.cpus": "0"}


# --- limits that cannot be enforced here ----------------------------------------------------

def test_memory_limit_refused_with_the_reason(track):
    parents = all_delegated()
    setup = cgroups.detect(parents)
    if "memory" in setup.available_controllers:
        pytest.skip("the memory controller is delegated here")
    before = listing(TEST_CGROUPS + [MEMORY_V1])
    with pytest.raises(LimitUnavailable, match="--memory needs the memory controller"):
        setup.check(Limits.parse(memory="512m"))
    with pytest.raises(LimitUnavailable) as e:
        track.create(setup, Limits.parse(memory="512m", pids="10"))
    msg = str(e.value)
    assert "--memory needs the memory controller" in msg
    assert "not delegated" in msg
    assert ("Delegate=yes" in msg and "systemctl daemon-reload" in msg) or "chown" in msg
    assert listing(TEST_CGROUPS + [MEMORY_V1]) == before            # nothing created anywhere
    assert "memory" in setup.why_not


def test_v2_without_controllers_refuses_limits_naming_cgroup_controllers(track):
    setup = cgroups.detect(delegated("v2"))
    assert setup.kind == "v2"
    missing = [c for c in ("pids", "memory", "cpu") if c not in setup.available_controllers]
    if not missing:
        pytest.skip("pids, memory and cpu are all delegated on cgroup v2 here")
    kw = {"pids": dict(pids="5"), "memory": dict(memory="64m"), "cpu": dict(cpus="0.5")}[missing[0]]
    with pytest.raises(LimitUnavailable) as e:
        track.create(setup, Limits.parse(**kw))
    msg = str(e.value)
    assert f"needs the {missing[0]} controller" in msg
    assert "cgroup.controllers" in msg or "not delegated" in msg
    assert "Delegate=yes" in msg or "chown" in msg      # the v2 fix, or the v1 one in hybrid mode


# --- cgroup v1 ---------------------------------------------------------------------------------

@pytest.mark.timeout(60)
def test_v1_pids_limit_stops_a_fork_bomb(track):
    parent = delegated("pids")
    setup = cgroups.detect(parent)
    assert setup.kind == "v1" and "pids" in setup.available_controllers
    cg = track.create(setup, Limits.parse(pids="10"))
    assert read(os.path.join(cg.paths[0], "pids.max")) == "10"
    # a bounded loop forking 50 'sleep' children; fork fails with EAGAIN past the limit
    p = track.python(cg, """
import os, time
ok = failed = 0
for _ in range(50):
    try:
        pid = os.fork()
    except BlockingIOError:
        failed += 1
        continue
    if pid == 0:
        os.execvp("sleep", ["sleep", "30"])
    ok += 1
print(ok, failed, flush=True)
time.sleep(30)
""")
    ok, failed = map(int, p.stdout.readline().split())
    assert (ok, failed) == (9, 41)                   # itself + 9 children = 10
    st = cg.stats()
    assert st["pids_current"] == 10 and st["pids_limit"] == 10
    assert len(cg.pids()) == 10
    cg.kill()                                        # no cgroup.kill on v1: kills each process
    assert p.wait(10) == -9
    assert not cg.populated()
    cg.remove()
    assert not os.path.exists(cg.paths[0])


def test_v1_cpu_shares_and_quota(track):
    setup = cgroups.detect(delegated("cpu"))
    cg = track.create(setup, Limits.parse(cpu_shares="512", cpus="0.5"))
    d = cg.paths[0]
    assert read(os.path.join(d, "cpu.shares")) == "512"
    assert read(os.path.join(d, "cpu.cfs_period_us")) == "100000"
    assert read(os.path.join(d, "cpu.cfs_quota_us")) == "50000"
    cg.remove()
    assert not os.path.exists(d)


@pytest.mark.timeout(60)
def test_v1_freezer_pauses_and_kill_empties(track, tmp_path):
    setup = cgroups.detect(delegated("freezer"))
    cg = track.create(setup)
    counter = tmp_path / "n"
    p = track.start(cg, f"i=0; while true; do i=$((i+1)); echo $i > {counter}; sleep 0.02; done")
    wait_for(counter.exists, what="the loop to start")
    cg.freeze()
    assert read(os.path.join(cg.paths[0], "freezer.state")) == "FROZEN" and cg.frozen()
    n = counter.read_text()
    time.sleep(0.3)
    assert counter.read_text() == n                  # no progress while frozen
    cg.thaw()
    assert not cg.frozen()
    wait_for(lambda: counter.read_text() != n, what="progress after thaw")
    cg.kill()
    assert p.wait(10) == -9 and not cg.pids()


# --- cgroup v2 core interface ------------------------------------------------------------------

@pytest.mark.timeout(60)
def test_v2_freeze_thaw_and_kill_all(track, tmp_path):
    setup = cgroups.detect(delegated("v2"))
    cg = track.create(setup)
    d = cg.paths[0]
    counter = tmp_path / "n"
    p = track.start(cg, f"sleep 60 & sleep 60 & i=0; while true; do i=$((i+1)); echo $i > {counter}; sleep 0.02; done")
    wait_for(lambda: len(cg.pids()) == 3 and counter.exists(), what="three processes")
    assert "populated 1" in read(os.path.join(d, "cgroup.events")) and cg.populated()

    cg.freeze()
    assert "frozen 1" in read(os.path.join(d, "cgroup.events")).splitlines() and cg.frozen()
    n = counter.read_text()
    time.sleep(0.3)
    assert counter.read_text() == n
    cg.thaw()
    assert "frozen 0" in read(os.path.join(d, "cgroup.events")).splitlines()
    wait_for(lambda: counter.read_text() != n, what="progress after thaw")

    sleeps = cg.pids() - {p.pid}
    cg.kill()                                        # cgroup.kill: every process, children included
    assert p.wait(10) == -9
    assert "populated 0" in read(os.path.join(d, "cgroup.events"))
    for pid in sleeps:
        wait_for(lambda: not os.path.exists(f"/proc/{pid}") or
                 read(f"/proc/{pid}/stat").split(") ")[1][0] in "ZX", what=f"sleep {pid} killed")
    cg.remove()
    assert not os.path.exists(d)


@pytest.mark.timeout(60)
def test_remove_kills_what_is_left_and_leaves_no_dir(track):
    setup = cgroups.detect(all_delegated())
    cg = track.create(setup, Limits.parse(pids="20", cpu_shares="2048"))
    assert len(cg.paths) == len(TEST_CGROUPS)
    p = track.start(cg, "sleep 60 & sleep 60; wait")
    wait_for(lambda: len(cg.pids()) >= 2, what="processes in the cgroup")
    st = cg.stats()
    if "pids" in setup.available_controllers:
        assert st["pids_current"] >= 2 and st["pids_limit"] == 20
    assert not cg.oom_killed()                       # no memory controller here, or no OOM
    cg.remove()
    assert p.wait(10) == -9
    assert not any(os.path.exists(d) for d in cg.paths)
    cg.remove()                                      # again: nothing to do


def test_stats_count_cpu_time(track):
    setup = cgroups.detect(all_delegated())
    cg = track.create(setup)
    p = track.python(cg, "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.2: pass")
    assert p.wait(20) == 0
    st = cg.stats()
    if "cpu_usage_usec" not in st:
        pytest.skip("no hierarchy here accounts CPU time (no cgroup v2 cpu.stat, no v1 cpuacct)")
    assert st["cpu_usage_usec"] >= 150_000


def test_attach_and_name_collision(track):
    setup = cgroups.detect(all_delegated())
    cg = track.create(setup)
    again = cgroups.attach(cg.paths)
    assert again.paths == cg.paths
    name = os.path.basename(cg.paths[0])
    before = listing(TEST_CGROUPS)
    with pytest.raises(CgroupError, match="already exists"):
        setup.create(name, Limits())
    assert listing(TEST_CGROUPS) == before           # the first one is intact, nothing else created
    with pytest.raises(CgroupError, match="invalid cgroup name"):
        setup.create("../x", Limits())
    with pytest.raises(CgroupError, match="no process"):
        cg.add(4194304 + 1)
    again.remove()
    assert not any(os.path.exists(d) for d in cg.paths)
