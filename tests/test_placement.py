"""Where the store lives: ~/.config/rootless/storage.conf (paths.configured_root) and the check
of its filesystem (image/placement.py).  A real NFS mount is tried in the VM guest
(scripts/vm-test: nfs); here, the local side: the probe passes on local disk and the words of
a refusal."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from rootless import paths
from rootless.errors import StoreError
from rootless.image import placement

from .conftest import ROOTLESS

pytestmark = pytest.mark.both_modes


def _rootless(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*ROOTLESS, *args], env=env, capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL)


@pytest.fixture
def env(tmp_path, run_dir) -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if k not in ("ROOTLESS_ROOT", "XDG_DATA_HOME")}
    e.update(XDG_CONFIG_HOME=str(tmp_path / "config"), HOME=str(tmp_path / "home"), TMPDIR=str(tmp_path / "t"),
             XDG_RUNTIME_DIR=str(run_dir), ROOTLESS_NO_SINGLE_UID_WARNING="1")
    (tmp_path / "t").mkdir()
    (tmp_path / "home").mkdir()
    return e


def _conf(env: dict[str, str], text: str) -> Path:
    conf = Path(env["XDG_CONFIG_HOME"]) / "rootless" / "storage.conf"
    conf.parent.mkdir(parents=True, exist_ok=True)
    conf.write_text(text)
    return conf


def test_storage_conf_sets_the_store(env, tmp_path):
    _conf(env, '[storage]\nroot = "$TMPDIR/${USER}/rootless"\n')
    user = os.environ.get("USER") or __import__("pwd").getpwuid(os.getuid()).pw_name
    proc = _rootless(env, "images")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "t" / user / "rootless" / "layers").is_dir()
    assert not (tmp_path / "home" / ".local" / "share" / "rootless").exists()
    # ROOTLESS_ROOT and --root come first
    proc = _rootless({**env, "ROOTLESS_ROOT": str(tmp_path / "env-root")}, "images")
    assert proc.returncode == 0 and (tmp_path / "env-root" / "layers").is_dir(), proc.stderr
    proc = _rootless(env, "--root", str(tmp_path / "flag-root"), "images")
    assert proc.returncode == 0 and (tmp_path / "flag-root" / "layers").is_dir(), proc.stderr


def test_containers_storage_conf_keys(env, tmp_path):
    _conf(env, '[storage]\ndriver = "overlay"\nrunroot = "/run/x"\ngraphroot = "~/graph"\n'
               '[storage.options]\nmount_program = "/usr/bin/fuse-overlayfs"\n')
    proc = _rootless(env, "images")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "home" / "graph" / "layers").is_dir()


@pytest.mark.parametrize("text, words", [
    ("[storage\nroot = 1\n", "is not valid TOML"),
    ('[storage]\nrooot = "/tmp/x"\n', "unknown key 'rooot'"),
    ('[storage]\nroot = "$NO_SUCH_VARIABLE_X/r"\n', "$NO_SUCH_VARIABLE_X, which is not set"),
    ('[storage]\nroot = "relative/r"\n', "must be an absolute path"),
    ('[storage]\nroot = 3\n', "must be a directory, as a string"),
])
def test_a_bad_storage_conf_is_named(env, text, words):
    conf = _conf(env, text)
    proc = _rootless(env, "images")
    assert proc.returncode == 125
    assert str(conf) in proc.stderr and words in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


def test_no_storage_conf_is_the_default(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    assert paths.configured_root() is None
    (tmp_path / "rootless").mkdir()
    (tmp_path / "rootless" / "storage.conf").write_text("# nothing\n")
    assert paths.configured_root() is None


def test_a_local_store_passes_the_probe(tmp_path):
    fstype, point = placement.mount_of(str(tmp_path / "not" / "yet"))
    assert fstype and fstype not in placement.NETWORK_FS and point
    assert placement.probe(str(tmp_path)) == []         # locks, user xattrs, lchown to a sub-id
    assert os.listdir(tmp_path / "tmp") == []
    placement.check(str(tmp_path))                       # local: nothing recorded
    assert not (tmp_path / placement.MARKER).exists()


def test_a_refusal_names_the_filesystem_and_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    text = placement.explain("/home/u/.local/share/rootless", "nfs4", "/home",
                             ["file locks (flock: no locks available)"])
    assert "is on NFS (nfs4 mounted at /home)" in text
    assert "file locks" in text
    assert f"'root = \"$TMPDIR/$USER/rootless\"' to {tmp_path}/cfg/rootless/storage.conf" in text
    assert f"--root {tmp_path}/" in text and "ROOTLESS_ROOT" in text
    with pytest.raises(StoreError):
        paths.expand("$NOT_SET_ANYWHERE_X", "x")


# --- a real NFS mount: scripts/vm-test's guest exports and mounts localhost:/srv/nfs --------

NFS = os.environ.get("ROOTLESS_TEST_NFS", "")
needs_nfs = pytest.mark.skipif(not NFS, reason="no NFS mount (ROOTLESS_TEST_NFS): run by scripts/vm-test")


@pytest.mark.vm
@needs_nfs
def test_a_store_on_nfs_is_refused_before_anything_is_done(env, tmp_path, busybox_tar):
    import uuid
    root = Path(NFS) / f"store-{uuid.uuid4().hex[:8]}"
    assert placement.mount_of(str(root))[0].startswith("nfs")
    proc = _rootless({**env, "ROOTLESS_ROOT": str(root)}, "import", str(busybox_tar), "bb")
    assert proc.returncode == 125
    assert f"the store {root} is on NFS" in proc.stderr, proc.stderr
    assert "storage.conf" in proc.stderr and "--root" in proc.stderr
    assert not list((root / "layers").iterdir()) and not list((root / "blobs" / "sha256").iterdir())
    # the fix it names: storage.conf with a local directory
    _conf(env, '[storage]\nroot = "$TMPDIR/$USER/rootless"\n')
    proc = _rootless(env, "import", str(busybox_tar), "bb")
    assert proc.returncode == 0, proc.stderr


@pytest.mark.vm
@needs_nfs
def test_a_squashfs_image_on_nfs_runs_from_a_local_store(env, busybox_tar):
    import uuid
    _conf(env, '[storage]\nroot = "$TMPDIR/$USER/rootless"\n')
    assert _rootless(env, "import", "-c", "ENV WHERE=nfs", str(busybox_tar), "bb").returncode == 0
    image = Path(NFS) / f"bb-{uuid.uuid4().hex[:8]}.sqfs"
    try:
        proc = _rootless(env, "save", "--format", "squashfs", "bb", "-o", str(image))
        assert proc.returncode == 0, proc.stderr
        proc = _rootless(env, "run", "--rm", "--network", "none", str(image), "sh", "-c", "echo $WHERE; ls /bin/sh")
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout == "nfs\n/bin/sh\n"
    finally:
        image.unlink(missing_ok=True)
