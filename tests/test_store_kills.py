"""Store writers killed (SIGKILL, from outside) at random moments: in the middle of a download, a
decompression or an unpacking, not only between the steps the crash hook stops at
(test_store_faults.py).  After each kill, the next command that takes the store lock leaves no
partial file; at the end the image pulled again is whole (its files' sha256 checked inside a
container).  The small form of scripts/stress-kills (100 kills of a 200 MB image).

The moments are random (seeded, the seed in the failure message); what is asserted holds
for every moment."""

from __future__ import annotations

import hashlib
import io
import random
import shutil
import signal
import subprocess
import tarfile
import time

import pytest

from .conftest import ROOTLESS, Rootless
from .test_images import push_image
from .test_store_faults import no_leftovers, whole

pytestmark = pytest.mark.both_modes

needs_registry = pytest.mark.skipif(not shutil.which("docker-registry"),
                                    reason="docker-registry (Debian's Distribution server) is not installed")
KILLS = 5


def _data_layer(seed: int, files: int, size: int) -> tuple[bytes, list[str]]:
    """A layer of ``files`` random files of ``size`` bytes under /data<seed>; their sha256sum lines."""
    rnd = random.Random(seed)
    buf, sums = io.BytesIO(), []
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for i in range(files):
            data = rnd.randbytes(size)
            info = tarfile.TarInfo(f"data{seed}/f{i}")
            info.size, info.mode, info.mtime = len(data), 0o644, 946684800
            tar.addfile(info, io.BytesIO(data))
            sums.append(f"{hashlib.sha256(data).hexdigest()}  /data{seed}/f{i}\n")
    return buf.getvalue(), sums


def _sums_layer(lines: list[str]) -> bytes:
    data = "".join(lines).encode()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("SHA256SUMS")
        info.size, info.mtime = len(data), 946684800
        tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.fixture
def store(tmp_path, run_dir):
    rl = Rootless(tmp_path / "store", run_dir)
    yield rl
    subprocess.run([*ROOTLESS, "unshare", "rm", "-rf", str(rl.root)], env=rl.env, timeout=120)


@pytest.fixture(scope="module")
def registry():
    from .registry_server import running_registry
    with running_registry() as reg:
        yield reg


def _killed_at_random(rl: Rootless, args: list[str], delay: float) -> bool:
    """Start ``rootless ARGS``; SIGKILL it after ``delay`` seconds unless it ended.  Whether it was killed."""
    proc = rl.popen(*args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        proc.wait(timeout=delay)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        return True
    finally:
        proc.stderr.close()
    return False


@needs_registry
def test_pull_load_and_import_killed_at_random_moments(store, registry, busybox_tar, tmp_path):
    rl = store
    one, sums_one = _data_layer(1, 4, 1 << 20)
    two, sums_two = _data_layer(2, 4, 1 << 20)
    push_image(registry, "kills/img:1", [busybox_tar.read_bytes(), one, two, _sums_layer(sums_one + sums_two)])
    ref = f"{registry.host}/kills/img:1"
    rootfs = tmp_path / "rootfs.tar"
    rootfs.write_bytes(_data_layer(3, 8, 1 << 20)[0])
    archive = tmp_path / "saved.tar"
    assert rl("import", str(busybox_tar), "keep:1").returncode == 0       # for `tag`, which takes the lock
    started = time.monotonic()
    assert rl("pull", "-q", ref).returncode == 0
    typical = time.monotonic() - started                 # only to spread the kill moments over a pull
    assert rl("save", "-o", str(archive), ref).returncode == 0
    seed = random.randrange(1 << 30)
    rnd = random.Random(seed)
    ops = {"pull": ["pull", "-q", ref], "load": ["load", "-q", "-i", str(archive)],
           "import": ["import", str(rootfs), "imported:1"]}
    order = ["pull", "load", "pull", "import", "pull"]
    killed, tried = [], 0
    while len(killed) < KILLS and tried < 4 * KILLS:
        op = order[tried % len(order)]
        tried += 1
        for name in (ref, "imported:1"):       # so that the command has everything to do
            rl("rmi", "-f", name)
        assert rl("image", "prune", "-f").returncode == 0
        delay = rnd.uniform(0, typical)
        if _killed_at_random(rl, ops[op], delay):
            killed.append(f"{op} after {delay:.2f} s")
        proc = rl("tag", "keep:1", "probe:1")             # takes the store lock: removes the leftovers
        assert proc.returncode == 0, f"seed {seed}, {killed}: {proc.stderr}"
        no_leftovers(rl.root)
        whole(rl.root)
    print(f"seed {seed}: killed {', '.join(killed)}; {tried - len(killed)} ended first")
    assert killed, f"seed {seed}: every command ended before its kill"
    proc = rl("pull", "-q", ref)
    assert proc.returncode == 0, f"seed {seed}, {killed}: {proc.stderr}"
    proc = rl("run", "--rm", "--network", "none", ref, "sha256sum", "-c", "-s", "/SHA256SUMS")
    assert proc.returncode == 0, f"seed {seed}, {killed}: {proc.stdout} {proc.stderr}"
    assert rl("images").returncode == 0
    no_leftovers(rl.root)
    whole(rl.root)
