"""The image store under faults and concurrency: commands killed (SIGKILL) between any two of
their changes to the store, a pull that already has a layer but not its blob, leftovers of
killed writers, the store lock (what waits for it and who says so), an image removed while
its containers live, and the size ``images`` shows.

The kill points come from the engine's test hook (``rootless.atomic.step``):
``ROOTLESS_TEST_CRASH_AFTER=N`` makes a command kill itself at its N-th step, so a loop over N
stops it at every point until it finishes.  Each kill is followed by the checks that matter
to a user: the store is whole (every tag's manifest, config, layer blobs and layers are
there), the command run again succeeds, and ``save`` and ``push`` (which need every blob)
work.
"""

from __future__ import annotations

import fcntl
import gzip
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import tarfile
from pathlib import Path

import pytest

from .conftest import ROOTLESS, Rootless

pytestmark = pytest.mark.both_modes

needs_registry = pytest.mark.skipif(not shutil.which("docker-registry"),
                                    reason="docker-registry (Debian's Distribution server) is not installed")
KILLED = -signal.SIGKILL
MAX_STEPS = 60


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _layer(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o755, 946684800
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


LAYERS = [_layer({"one/a": b"a" * 3000, "one/b": b"b" * 1000}), _layer({"two/c": os.urandom(5000)})]


@pytest.fixture
def store(tmp_path, run_dir):
    rl = Rootless(tmp_path / "store", run_dir)
    yield rl
    for name in json.loads(rl("ps", "-a", "--format", "json").stdout or "[]"):
        rl("rm", "-f", name["Id"])
    subprocess.run([*ROOTLESS, "unshare", "rm", "-rf", str(rl.root)], env=rl.env, timeout=120)


@pytest.fixture(scope="module")
def registry():
    from .registry_server import running_registry
    with running_registry() as reg:
        yield reg


def whole(root: Path) -> None:
    """Every tag's manifest, config, layers and their sizes are in the store, and of each layer
    its blob or the tar-split record that makes its tar again."""
    tags_path = root / "tags.json"
    tags = json.loads(tags_path.read_text()) if tags_path.exists() else {}
    blob = root / "blobs" / "sha256"
    for tag, digest in tags.items():
        manifest = json.loads((blob / digest[7:]).read_bytes())
        config = json.loads((blob / manifest["config"]["digest"][7:]).read_bytes())
        for d, diff in zip(manifest["layers"], config["rootfs"]["diff_ids"]):
            assert (blob / d["digest"][7:]).exists() or (blob / diff[7:]).exists() \
                or (root / "tarsplit" / diff[7:]).exists(), f"{tag}: blob {d['digest']} is missing"
        for diff in config["rootfs"]["diff_ids"]:
            assert (root / "layers" / diff[7:]).is_dir(), f"{tag}: layer {diff} is missing"
            assert (root / "sizes" / diff[7:]).exists(), f"{tag}: the size of layer {diff} is missing"


def no_leftovers(root: Path) -> None:
    """Nothing of a killed writer is left (call after a command that took the store lock)."""
    assert os.listdir(root / "tmp") == [], os.listdir(root / "tmp")
    assert [n for n in os.listdir(root / "layers") if n.startswith(".")] == []


def crash_at_every_step(rl: Rootless, args: list[str], after) -> int:
    """Run ``rootless ARGS`` killed at step 1, 2, ...  until it finishes; ``after(n)`` checks the
    store after each kill.  The number of kills."""
    for n in range(1, MAX_STEPS):
        proc = rl(*args, env={"ROOTLESS_TEST_CRASH_AFTER": str(n)}, timeout=120)
        if proc.returncode != KILLED:
            assert proc.returncode == 0, f"{args} (hook at {n}) failed: {proc.stderr}"
            return n - 1
        whole(rl.root)
        after(n)
    raise AssertionError(f"{args} was still killed after {MAX_STEPS} steps")


def push_layers(registry, repo_tag: str, layers: list[bytes]) -> str:
    from .test_images import push_image
    return push_image(registry, repo_tag, layers)


# ----------------------------------------------------------------------------- kills

@needs_registry
def test_pull_killed_at_every_step(store, registry, tmp_path):
    rl = store
    push_layers(registry, "crash/pull:1", LAYERS)
    ref = f"{registry.host}/crash/pull:1"

    def after(n: int) -> None:
        proc = rl("pull", "-q", ref)
        assert proc.returncode == 0, f"pull after a kill at step {n}: {proc.stderr}"
        no_leftovers(rl.root)
        whole(rl.root)
        assert rl("save", "-o", str(tmp_path / "saved.tar"), ref).returncode == 0, f"save after step {n}"
        push = rl("push", "-q", ref, f"{registry.host}/crash/pushed:{n}")
        assert push.returncode == 0, f"push after a kill at step {n}: {push.stderr}"
        assert rl("rmi", ref).returncode == 0
        assert rl("image", "prune", "-f").returncode == 0

    assert crash_at_every_step(rl, ["pull", "-q", ref], after) >= 5


def test_import_killed_at_every_step(store, busybox_tar):
    rl = store

    def after(n: int) -> None:
        proc = rl("import", str(busybox_tar), "crash/imp:1")
        assert proc.returncode == 0, f"import after a kill at step {n}: {proc.stderr}"
        no_leftovers(rl.root)
        whole(rl.root)
        assert rl("run", "--rm", "--network", "none", "crash/imp:1", "true").returncode == 0
        assert rl("rmi", "crash/imp:1").returncode == 0

    assert crash_at_every_step(rl, ["import", str(busybox_tar), "crash/imp:1"], after) >= 5


def test_load_killed_at_every_step(store, busybox_tar, tmp_path):
    rl = store
    assert rl("import", str(busybox_tar), "crash/load:1").returncode == 0
    archive = tmp_path / "a.tar"
    assert rl("save", "-o", str(archive), "crash/load:1").returncode == 0
    assert rl("rmi", "crash/load:1").returncode == 0

    def after(n: int) -> None:
        proc = rl("load", "-i", str(archive))
        assert proc.returncode == 0, f"load after a kill at step {n}: {proc.stderr}"
        no_leftovers(rl.root)
        whole(rl.root)
        assert rl("save", "-o", str(tmp_path / "again.tar"), "crash/load:1").returncode == 0
        assert rl("rmi", "crash/load:1").returncode == 0

    assert crash_at_every_step(rl, ["load", "-i", str(archive)], after) >= 5


def test_rmi_killed_at_every_step(store, busybox_tar):
    rl = store
    assert rl("import", str(busybox_tar), "crash/rmi:1").returncode == 0

    def after(n: int) -> None:
        rl("rmi", "crash/rmi:1")            # gone already if the kill came after the untag
        assert rl("inspect", "crash/rmi:1").returncode != 0
        assert rl("image", "prune", "-f").returncode == 0
        no_leftovers(rl.root)
        assert os.listdir(rl.root / "layers") == [] and os.listdir(rl.root / "blobs/sha256") == []
        proc = rl("import", str(busybox_tar), "crash/rmi:1")
        assert proc.returncode == 0, f"import after rmi was killed at step {n}: {proc.stderr}"
        assert rl("run", "--rm", "--network", "none", "crash/rmi:1", "true").returncode == 0

    assert crash_at_every_step(rl, ["rmi", "crash/rmi:1"], after) >= 2


# ----------------------------------------------------------------------------- missing blobs

@needs_registry
def test_pull_keeps_the_blob_of_a_layer_imported_before(store, registry, tmp_path):
    """import made the layer (stored uncompressed); a pull of the same content must still keep
    the registry's compressed blob, or push and save fail with "blob ... is missing"."""
    rl = store
    layer = _layer({"same/file": os.urandom(3000)})
    (tmp_path / "same.tar").write_bytes(layer)
    assert rl("import", str(tmp_path / "same.tar"), "local/same:1").returncode == 0
    push_layers(registry, "same/layer:1", [layer])
    ref = f"{registry.host}/same/layer:1"
    assert rl("pull", "-q", ref).returncode == 0
    whole(rl.root)
    proc = rl("push", "-q", ref, f"{registry.host}/same/copy:1")
    assert proc.returncode == 0, proc.stderr
    assert rl("save", "-o", str(tmp_path / "s.tar"), ref).returncode == 0


@needs_registry
def test_pull_fetches_a_blob_the_store_lost(store, registry):
    """A store damaged by an older rootless (layer there, neither its blob nor a tar-split
    record): pull repairs it."""
    rl = store
    manifest_digest = push_layers(registry, "lost/blob:1", LAYERS[:1])
    ref = f"{registry.host}/lost/blob:1"
    assert rl("pull", "-q", ref).returncode == 0
    (rl.root / "tarsplit" / _digest(LAYERS[0])[7:]).unlink()
    proc = rl("pull", ref)
    assert proc.returncode == 0, proc.stderr
    assert "pulled 1 new layer(s)" in proc.stderr
    whole(rl.root)
    assert rl("push", "-q", ref, f"{registry.host}/lost/copy:1").returncode == 0


# ----------------------------------------------------------------------------- concurrency

@pytest.fixture
def gated(registry):
    from .registry_server import GatedProxy
    proxy = GatedProxy(registry.host)
    yield proxy
    proxy.close()


def _held_pull(rl: Rootless, gated, ref: str) -> subprocess.Popen:
    gated.close_gate()
    pull = rl.popen("pull", "-q", ref, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    while not gated.held.wait(1):
        assert pull.poll() is None, pull.stderr.read().decode()
    return pull


@needs_registry
def test_run_goes_on_during_a_slow_pull(store, registry, gated, busybox_tar):
    rl = store
    assert rl("import", "-c", 'CMD ["/bin/sh"]', str(busybox_tar), "busybox").returncode == 0
    push_layers(registry, "slow/pull:1", [_layer({"slow/file": os.urandom(200_000)})])
    pull = _held_pull(rl, gated, f"{gated.host}/slow/pull:1")
    try:
        # The pull is in the middle of its download: run, tag and rmi must not wait for it.
        proc = rl("run", "--rm", "--network", "none", "busybox", "true", timeout=90)
        assert proc.returncode == 0, proc.stderr
        assert "waiting for the image store lock" not in proc.stderr
        assert rl("tag", "busybox", "other:1", timeout=90).returncode == 0
        assert pull.poll() is None
        # a live writer's download is not taken for a leftover
        assert any(n.startswith("pull-") for n in os.listdir(rl.root / "tmp"))
    finally:
        gated.open_gate()
        assert pull.wait(timeout=120) == 0, pull.stderr.read().decode()
    whole(rl.root)
    no_leftovers(rl.root)


@needs_registry
def test_a_killed_pull_leaves_nothing_behind(store, registry, gated):
    rl = store
    push_layers(registry, "killed/pull:1", [_layer({"k/file": os.urandom(200_000)})])
    pull = _held_pull(rl, gated, f"{gated.host}/killed/pull:1")
    pull.kill()
    pull.wait()
    gated.open_gate()
    assert os.listdir(rl.root / "tmp") != []       # the partial download
    proc = rl("pull", "-q", f"{gated.host}/killed/pull:1")
    assert proc.returncode == 0, proc.stderr
    no_leftovers(rl.root)
    whole(rl.root)


@needs_registry
def test_ctrl_c_stops_a_pull_in_the_middle_of_a_download(store, registry, gated):
    rl = store
    layer = _layer({"i/file": os.urandom(200_000)})
    push_layers(registry, "interrupted/pull:1", [layer])
    ref = f"{gated.host}/interrupted/pull:1"
    gated.only = {_digest(gzip.compress(layer, mtime=0))}    # held in the layer's download
    pull = _held_pull(rl, gated, ref)
    pull.send_signal(signal.SIGINT)
    try:
        code = pull.wait(timeout=60)    # not until the blob ends: the gate stays shut
    except subprocess.TimeoutExpired:
        pull.kill()
        pull.wait()
        raise AssertionError("pull went on after SIGINT until its download could finish") from None
    finally:
        gated.open_gate()
    stderr = pull.stderr.read().decode()
    assert code == 130, stderr
    assert "Traceback" not in stderr
    proc = rl("pull", "-q", ref)
    assert proc.returncode == 0, proc.stderr
    no_leftovers(rl.root)
    whole(rl.root)


@needs_registry
def test_a_stalled_download_fails_naming_the_registry_and_the_blob(store, registry):
    from .registry_server import TricklingProxy
    rl = store
    layer = _layer({"t/file": os.urandom(200_000)})
    blob = _digest(gzip.compress(layer, mtime=0))
    push_layers(registry, "stalled/pull:1", [layer])
    proxy = TricklingProxy(registry.host, {blob})     # one byte a second: 200 000 s to go
    try:
        proc = rl("pull", "-q", f"{proxy.host}/stalled/pull:1", timeout=300,
                  env={"ROOTLESS_PULL_STALL_TIMEOUT": "2"})
    finally:
        proxy.close()
    assert proc.returncode == 125, proc.stderr
    assert proxy.host in proc.stderr and blob in proc.stderr, proc.stderr
    assert "stalled" in proc.stderr and "ROOTLESS_PULL_STALL_TIMEOUT" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proxy.requests > 1                             # retried before giving up
    assert os.listdir(rl.root / "tmp") == []
    assert os.listdir(rl.root / "layers") == [] and os.listdir(rl.root / "blobs/sha256") == []
    assert rl("images", "-q").stdout == ""


@needs_registry
def test_a_bad_stall_timeout_is_one_sentence(store, registry):
    proc = store("pull", "-q", f"{registry.host}/any/thing:1", env={"ROOTLESS_PULL_STALL_TIMEOUT": "soon"})
    assert proc.returncode == 125 and "ROOTLESS_PULL_STALL_TIMEOUT" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


@needs_registry
def test_a_layer_is_unpacked_while_the_others_download(store, registry, gated):
    rl = store
    first, second = _layer({"u/one": os.urandom(50_000)}), _layer({"u/two": os.urandom(200_000)})
    push_layers(registry, "overlap/pull:1", [first, second])
    gated.only = {_digest(gzip.compress(second, mtime=0))}    # the second layer's download waits
    pull = _held_pull(rl, gated, f"{gated.host}/overlap/pull:1")
    try:
        unpacking = []
        for _ in range(600):         # the first layer, unpacked meanwhile (not yet visible)
            unpacking = [n for n in os.listdir(rl.root / "layers") if n.startswith(".tmp-layer")]
            if unpacking or pull.poll() is not None:
                break
            gated.gate.wait(0.1)
        assert unpacking, "nothing was unpacked while a download was still going on"
        assert [n for n in os.listdir(rl.root / "layers") if not n.startswith(".")] == []
        assert pull.poll() is None
    finally:
        gated.open_gate()
        assert pull.wait(timeout=120) == 0, pull.stderr.read().decode()
    whole(rl.root)
    no_leftovers(rl.root)


def test_a_command_waiting_for_the_store_lock_says_so(store, busybox_tar):
    rl = store
    assert rl("import", str(busybox_tar), "busybox").returncode == 0
    fd = os.open(rl.root / "lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} test-holder\n".encode())
        proc = rl.popen("tag", "busybox", "waiter:1", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        line = proc.stderr.readline().decode()     # blocks until it speaks
        assert "waiting for the image store lock held by PID" in line and str(os.getpid()) in line, line
        assert "test-holder" in line
        assert proc.poll() is None
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
    assert proc.wait(timeout=60) == 0
    assert rl("inspect", "waiter:1").returncode == 0


# ----------------------------------------------------------------------------- rmi -f

def test_a_container_outlives_rmi_f_of_its_image(store, busybox_tar):
    rl = store
    assert rl("import", "-c", 'CMD ["/bin/sh"]', str(busybox_tar), "gone:1").returncode == 0
    proc = rl("run", "-d", "--name", "keeper", "--network", "none", "gone:1", "sleep", "1000")
    assert proc.returncode == 0, proc.stderr
    assert rl("rmi", "gone:1").returncode == 1                      # in use
    proc = rl("rmi", "-f", "gone:1")
    assert proc.returncode == 0 and "Deleted layer" not in proc.stdout, proc.stdout
    assert rl("inspect", "gone:1").returncode != 0                  # the name is gone ...
    assert len(os.listdir(rl.root / "layers")) == 1                 # ... its layer is not
    assert rl("image", "prune", "-a", "-f").returncode == 0          # nor after a prune
    assert len(os.listdir(rl.root / "layers")) == 1
    assert rl("exec", "keeper", "true").returncode == 0
    assert rl("stop", "-t", "1", "keeper").returncode == 0
    proc = rl("start", "keeper")
    assert proc.returncode == 0, proc.stderr
    assert rl("exec", "keeper", "true").returncode == 0
    assert rl("rm", "-f", "keeper").returncode == 0
    assert rl("image", "prune", "-f").returncode == 0
    assert os.listdir(rl.root / "layers") == []


# ----------------------------------------------------------------------------- sizes

@needs_registry
def test_images_shows_the_unpacked_size(store, registry):
    rl = store
    push_layers(registry, "size/img:1", LAYERS)
    ref = f"{registry.host}/size/img:1"
    assert rl("pull", "-q", ref).returncode == 0
    rows = json.loads(rl("images", "--format", "json").stdout)
    (row,) = [r for r in rows if r["Repository"] == f"{registry.host}/size/img"]
    assert row["Size"] == 3000 + 1000 + 5000
    (info,) = json.loads(rl("inspect", ref).stdout)
    assert info["Size"] == row["Size"]
    assert "9kB" in rl("images").stdout


# ----------------------------------------------------------------------------- system prune

def test_system_prune(store, busybox_tar, tmp_path):
    rl = store
    assert rl("import", "-c", 'CMD ["/bin/sh"]', str(busybox_tar), "keep:1").returncode == 0
    assert rl("network", "create", "unused-net").returncode == 0
    assert rl("run", "--name", "stopped", "--network", "none", "keep:1", "true").returncode == 0
    dangling = tmp_path / "dangling.tar"
    from .test_image_commands import docker_archive
    dangling.write_bytes(docker_archive([_layer({"d/file": b"x" * 4000})], None))
    assert rl("load", "-i", str(dangling)).returncode == 0
    proc = rl("system", "prune")                    # stdin is not a terminal: refused, nothing removed
    assert proc.returncode != 0 and "-f" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert rl("inspect", "stopped").returncode == 0
    proc = rl("system", "prune", "-f")
    assert proc.returncode == 0, proc.stderr
    assert "Deleted Containers:" in proc.stdout and "Deleted Networks:\nunused-net" in proc.stdout
    assert "untagged: localhost/untagged/" in proc.stdout
    assert "Total reclaimed space: " in proc.stdout and "Total reclaimed space: 0B" not in proc.stdout
    assert rl("inspect", "stopped").returncode != 0
    assert rl("inspect", "keep:1").returncode == 0       # tagged: kept without -a
    proc = rl("system", "prune", "-a", "-f")
    assert proc.returncode == 0 and "untagged: keep:1" in proc.stdout, proc.stdout
    assert os.listdir(rl.root / "layers") == [] and os.listdir(rl.root / "blobs/sha256") == []


def test_a_creator_killed_half_way_leaves_no_container_directory(tmp_path):
    """A container's directory appears whole (its record in it) or not at all: a creator killed
    while it made the record (a build stopped by its client) left an empty containers/ID/."""
    import subprocess
    import sys
    root = tmp_path / "store"
    code = ("import os, signal, sys\n"
            "from rootless.image.store import Store\n"
            "from rootless.container.records import Containers\n"
            "Containers(Store(sys.argv[1])).create('busybox', 'sha256:' + '0' * 64, ['true'], None,\n"
            "    setup=lambda r: os.kill(os.getpid(), signal.SIGKILL))\n")
    proc = subprocess.run([sys.executable, "-c", code, str(root)], capture_output=True, timeout=60)
    assert proc.returncode == -9, proc.stderr
    assert list((root / "containers").iterdir()) == []
    from rootless.image.store import Store
    with Store(str(root)).lock():               # the next command that takes the lock sweeps tmp/
        pass
    assert list((root / "tmp").iterdir()) == []
