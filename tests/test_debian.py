"""A real Debian 12 image: apt-get and dpkg installing, upgrading and purging a local .deb on
fuse-overlay, compared with the kernel's overlay, and a ``rootless build`` on it.

The image is the minbase root filesystem tarball scripts/debian-rootfs makes (debootstrap,
cached; scripts/test passes its path as ROOTLESS_TEST_DEBIAN_TAR).  Without it these tests
skip.  Nothing here uses the network: the packages are built here with ``dpkg-deb`` and
installed from a read-only bind mount.

Without a subordinate id range, apt's download methods cannot drop to the ``_apt`` user
(setgroups and seteuid fail: only uid 0 exists), so there ``-o APT::Sandbox::User=root``
keeps them as root, as apt does on systems without ``_apt``; everything else is the same.
"""

from __future__ import annotations

import difflib
import json
import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from .conftest import RANGE_MODE, needs_range, overlay_internal_errors

pytestmark = pytest.mark.both_modes

DEFAULT_TAR = Path("/var/tmp/rootless-ci/debian-rootfs.tar")   # scripts/debian-rootfs's link
DEBIAN_ENV = ["-e", "DEBIAN_FRONTEND=noninteractive", "-e", "LC_ALL=C"]
APT = "apt-get -y -q" + ("" if RANGE_MODE else " -o APT::Sandbox::User=root")
V1 = "/debs/rltest_1.0-1_all.deb"
V2 = "/debs/rltest_2.0-1_all.deb"

# What a container prints about the installed package: its program's output, dpkg's
# record, dpkg's own check of the files against the package's md5sums, what the maintainer
# scripts left, and each installed path's mode, owner, size and type.  No times.
REPORT = r"""
report() {
    set +e
    echo "== $1"
    command -v rltest >/dev/null && rltest
    dpkg-query -W -f='${Package} ${Version} ${Status}\n' rltest 2>&1
    dpkg --verify rltest && echo verify-ok
    cat /var/lib/rltest.state 2>&1
    cat /etc/rltest/rltest.conf 2>&1
    ls -a /etc/rltest /usr/share/rltest 2>&1
    for f in $(dpkg -L rltest 2>/dev/null); do stat -c '%n %a %u %g %s %F' "$f"; done
    set -e
}
"""


def _script(*steps: str) -> str:
    """A shell script: the report function, then STEPS (which may call ``report LABEL``),
    stopping at the first failing step."""
    return REPORT + "set -e\n" + "\n".join(steps) + "\n"


def _apt(args: str) -> str:
    """An apt-get step whose output is shown only when it fails (it has progress and times)."""
    return f"{APT} {args} >/tmp/apt.log 2>&1 || {{ cat /tmp/apt.log; exit 1; }}; rm /tmp/apt.log"


def _debian_tar() -> Path:
    value = os.environ.get("ROOTLESS_TEST_DEBIAN_TAR")
    if value == "":
        pytest.skip("ROOTLESS_TEST_DEBIAN_TAR is empty: no Debian rootfs tarball (scripts/test could "
                    "not make it, see its log, or ROOTLESS_TEST_DEBIAN=0 left it out)")
    path = Path(value) if value else DEFAULT_TAR
    if not path.is_file():
        pytest.skip(f"no Debian rootfs tarball at {path}: make it as root with scripts/debian-rootfs "
                    "(scripts/test does), or set ROOTLESS_TEST_DEBIAN_TAR")
    return path


def _control(version: str) -> str:
    return (f"Package: rltest\nVersion: {version}\nArchitecture: all\n"
            "Maintainer: rootless tests <tests@localhost>\n"
            "Description: rootless test package\n a file, a conffile and maintainer scripts\n")


def _make_deb(out: Path, version: str, files: dict[str, tuple[str, int]], scripts: dict[str, str]) -> None:
    tree = out.parent / f"tree-{version}"
    (tree / "DEBIAN").mkdir(parents=True)
    (tree / "DEBIAN" / "control").write_text(_control(version))
    (tree / "DEBIAN" / "conffiles").write_text("/etc/rltest/rltest.conf\n")
    for name, body in scripts.items():
        p = tree / "DEBIAN" / name
        p.write_text("#!/bin/sh\nset -e\n" + body)
        p.chmod(0o755)
    for path, (content, mode) in files.items():
        p = tree / path.lstrip("/")
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(content)
        p.chmod(mode)
    subprocess.run(["dpkg-deb", "--root-owner-group", "--build", str(tree), str(out)], check=True,
                   capture_output=True, timeout=60)
    shutil.rmtree(tree)
    out.chmod(0o644)


@pytest.fixture(scope="module")
def debs(tmp_path_factory) -> Path:
    """rltest 1.0 and 2.0: a program, a conffile, data files (2.0 drops one, adds one) and
    preinst/postinst/postrm scripts that leave traces."""
    if shutil.which("dpkg-deb") is None:
        pytest.skip("dpkg-deb is not installed (package dpkg)")
    d = tmp_path_factory.mktemp("debs")
    d.chmod(0o755)
    scripts = {
        "preinst": 'echo "preinst $1 ${2:-}" >> /var/lib/rltest.state\n',
        "postinst": 'echo "postinst $1 ${2:-}" >> /var/lib/rltest.state\n',
        "postrm": 'if [ "$1" = purge ]; then rm -f /var/lib/rltest.state; fi\n',
    }
    _make_deb(d / "rltest_1.0-1_all.deb", "1.0-1", {
        "/usr/bin/rltest": ("#!/bin/sh\necho rltest 1.0 says hello\n", 0o755),
        "/etc/rltest/rltest.conf": ("greeting=hello\n", 0o644),
        "/usr/share/rltest/old.txt": ("only in 1.0\n" * 100, 0o644),
        "/usr/share/rltest/kept.txt": ("in both\n", 0o644),
    }, scripts)
    _make_deb(d / "rltest_2.0-1_all.deb", "2.0-1", {
        "/usr/bin/rltest": ("#!/bin/sh\necho rltest 2.0 says hello\n", 0o755),
        "/etc/rltest/rltest.conf": ("greeting=hello\nlanguage=en\n", 0o644),
        "/usr/share/rltest/kept.txt": ("in both, changed\n", 0o600),
        "/usr/share/rltest/new.txt": ("only in 2.0\n", 0o644),
    }, scripts)
    return d


@pytest.fixture(scope="module")
def debian(rl_session) -> str:
    """The Debian tarball imported as an image (removed afterwards)."""
    tar = _debian_tar()
    name = f"debian-test-{uuid.uuid4().hex[:8]}:12"
    rl_session("import", "-c", 'CMD ["/bin/bash"]', str(tar), name, check=True, timeout=300)
    yield name
    rl_session("rmi", "-f", name)


def _overlay_errors(rl, name: str) -> list[str]:
    """Internal errors the container's fuse-overlay daemon recorded, and what inspect says."""
    errors = []
    f = rl.container_dir(name) / "work" / "fuse-overlay.errors"
    if f.exists():
        errors += f.read_text(errors="replace").splitlines()
    state = json.loads(rl("inspect", name, check=True).stdout)[0]["State"]
    if state["Error"]:
        errors.append(f"inspect State.Error: {state['Error']}")
    return errors


def _both_drivers(rl, image: str, debs: Path, script: str) -> dict[str, tuple[str, str] | None]:
    """SCRIPT's output and the container's diff on fuse-overlay and on the kernel's overlay
    (the reference; None where the kernel refuses it).  fuse-overlay must have recorded no
    internal error.  The containers are removed."""
    results: dict[str, tuple[str, str] | None] = {}
    names = []
    try:
        for driver in ("fuse-overlay", "overlay"):
            name = f"deb-{driver}-{uuid.uuid4().hex[:8]}"
            names.append(name)
            proc = rl("run", "--name", name, "--network", "none", "--storage-driver", driver, *DEBIAN_ENV,
                      "-v", f"{debs}:/debs:ro", image, "sh", "-c", script, timeout=300)
            if driver == "overlay" and "storage driver overlay cannot work here" in proc.stderr:
                results[driver] = None
                continue
            assert proc.returncode == 0, f"{driver}: exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
            if driver == "fuse-overlay":
                assert _overlay_errors(rl, name) == []
            results[driver] = (proc.stdout, rl("diff", name, check=True).stdout)
    finally:
        for name in names:
            rl("rm", "-f", name)
    return results


def _same_as_kernel_overlay(results: dict[str, tuple[str, str] | None]) -> None:
    if results["overlay"] is None:
        pytest.skip("the kernel refuses overlayfs in a user namespace here (Linux 5.11+ needed): "
                    "fuse-overlay's results were checked, but not compared with it")
    assert results["fuse-overlay"] == results["overlay"]


def test_apt_get_install_local_deb_on_fuse_overlay_as_on_kernel_overlay(rl, debian, debs):
    script = _script(_apt(f"install {V1}"), "report installed")
    results = _both_drivers(rl, debian, debs, script)
    assert results["fuse-overlay"] is not None
    out, diff = results["fuse-overlay"]
    assert "rltest 1.0 says hello" in out
    assert "rltest 1.0-1 install ok installed" in out and "verify-ok" in out
    assert "preinst install" in out and "postinst configure" in out
    assert "/usr/share/rltest/old.txt 644 0 0 1200 regular file" in out
    assert "A /usr/bin/rltest" in diff.splitlines() and "A /var/lib/dpkg/info/rltest.list" in diff.splitlines()
    _same_as_kernel_overlay(results)


@pytest.fixture(scope="module")
def built(rl_session, debian, debs, tmp_path_factory) -> str:
    """``rootless build`` on fuse-overlay: the Debian image with rltest 1.0 installed by
    apt-get from a bind mount of the context (removed afterwards)."""
    ctx = tmp_path_factory.mktemp("debian-ctx")
    shutil.copytree(debs, ctx / "debs")
    (ctx / "Dockerfile").write_text(
        f"FROM {debian}\n"
        f"RUN --mount=type=bind,source=debs,target=/debs DEBIAN_FRONTEND=noninteractive {APT} install {V1}\n"
        'CMD ["rltest"]\n')
    tag = f"debian-built-{uuid.uuid4().hex[:8]}"
    proc = rl_session("build", "--storage-driver", "fuse-overlay", "--network", "none", "-t", tag, str(ctx),
                      timeout=600)
    assert proc.returncode == 0, proc.stderr
    yield tag
    rl_session("rmi", "-f", tag)


def test_build_runs_apt_get_install_from_a_bind_mount(rl, built):
    proc = rl("run", "--rm", "--network", "none", built)
    assert proc.returncode == 0 and proc.stdout == "rltest 1.0 says hello\n", proc.stderr
    proc = rl("run", "--rm", "--network", "none", built, "sh", "-c",
              "dpkg -s rltest; dpkg --verify rltest && echo verify-ok; cat /var/lib/rltest.state; "
              "test -e /debs || echo no-debs")
    assert proc.returncode == 0, proc.stderr
    assert "Status: install ok installed" in proc.stdout and "Version: 1.0-1" in proc.stdout
    assert "verify-ok" in proc.stdout and "postinst configure" in proc.stdout
    assert "no-debs" in proc.stdout   # the bind mount's target is not part of the image
    # The build's RUN containers are gone; their fuse-overlay daemons log to the fork server.
    assert overlay_internal_errors(run=Path(rl.env["XDG_RUNTIME_DIR"])) == []


def test_upgrade_reinstall_remove_purge_over_the_image_layer(rl, built, debs):
    """rltest 1.0 is in the image's layer: upgrading it renames over, deletes and changes
    lower files, keeps the user's edited conffile, and purge removes lower directories."""
    script = _script(
        "report image",
        "echo greeting=mine > /etc/rltest/rltest.conf",
        _apt(f"install -o Dpkg::Options::=--force-confold {V2}"),
        "report upgraded",
        f"dpkg -i {V2} >/dev/null",
        "report reinstalled",
        _apt("remove rltest"),
        "report removed",
        _apt("purge rltest"),
        "report purged",
    )
    results = _both_drivers(rl, built, debs, script)
    assert results["fuse-overlay"] is not None
    out, diff = results["fuse-overlay"]
    sections = dict(s.split("\n", 1) for s in out.split("== ")[1:])
    assert "rltest 1.0 says hello" in sections["image"]
    up = sections["upgraded"]
    assert "rltest 2.0 says hello" in up and "rltest 2.0-1 install ok installed" in up and "verify-ok" in up
    assert "greeting=mine" in up and "rltest.conf.dpkg-dist" in up
    assert "preinst upgrade 1.0-1" in up and "postinst configure 1.0-1" in up
    assert "/usr/share/rltest/kept.txt 600 0 0 17 regular file" in up and "old.txt" not in up
    assert "rltest 2.0-1 install ok installed" in sections["reinstalled"]
    assert "rltest 2.0-1 deinstall ok config-files" in sections["removed"]
    assert "greeting=mine" in sections["removed"]
    purged = sections["purged"]
    assert "no packages found matching rltest" in purged
    assert "cannot access '/etc/rltest'" in purged and "cannot access '/usr/share/rltest'" in purged
    lines = diff.splitlines()
    assert {"D /usr/bin/rltest", "D /etc/rltest", "D /usr/share/rltest", "D /var/lib/rltest.state"} <= set(lines)
    _same_as_kernel_overlay(results)


ADMIN = r"""
set -e
useradd -m -u 1000 alice
groupadd -g 2000 staff2
usermod -aG staff2 alice
echo 'alice:secret' | chpasswd
userdel -r alice
useradd -m -u 1001 bob
update-alternatives --quiet --install /usr/bin/pager2 pager2 /bin/cat 10
update-alternatives --quiet --install /usr/bin/pager2 pager2 /bin/more 20
update-alternatives --quiet --set pager2 /bin/cat
cp -a /usr/share/doc /doc2
mv /usr/share/doc /usr/share/doc-moved
mv /doc2 /usr/share/doc
rm -rf /usr/share/doc-moved/a* /usr/share/locale
mkdir -p /usr/share/locale/xx && echo hi > /usr/share/locale/xx/f
ln /usr/bin/env /usr/bin/env-hard
mv /usr/bin/env-hard /usr/lib/env-hard
chmod 4711 /usr/lib/env-hard
rm /usr/bin/env
ln -s /usr/lib/env-hard /usr/bin/env
cd /usr/lib && tar cf /tmp/x.tar x86_64-linux-gnu/gconv && rm -rf x86_64-linux-gnu/gconv && tar xpf /tmp/x.tar
rm /tmp/x.tar && cd /
find /etc -type f -name '*.conf' -exec touch -d '2001-01-01 00:00' {} +
mv /etc/ld.so.conf.d /etc/ld.so.conf.e && mkdir /etc/ld.so.conf.d
mv /etc/ld.so.conf.e/* /etc/ld.so.conf.d/ && rmdir /etc/ld.so.conf.e
ldconfig
dd if=/dev/zero of=/var/big bs=1M count=8 status=none && truncate -s 3M /var/big && sync
# The whole tree: directories (mode, owner), everything else (and link count, size, type),
# and every file's checksum.  Left out: what differs by design (the container's own
# /etc/hosts and /etc/hostname, ldconfig's cache of inode numbers).
skip='-path /proc -o -path /sys -o -path /dev -o -path /var/log -o -path /debs'
find / -xdev \( $skip \) -prune -o -type d -print0 | sort -z | xargs -0 stat -c '%n %a %u %g'
find / -xdev \( $skip \) -prune -o ! -type d -print0 | sort -z | xargs -0 stat -c '%n %a %u %g %h %s %F'
find / -xdev \( $skip \) -prune -o -type f -print0 | sort -z | xargs -0 md5sum
"""


@needs_range
def test_admin_tools_on_fuse_overlay_as_on_kernel_overlay(rl, debian, debs):
    """Debian's own tools on the image layer: useradd/userdel (lock files, hard links, renames
    of /etc/passwd), update-alternatives, moves of lower directories (EXDEV, then copies),
    hard links, set-id bits, tar, touch, ldconfig.  The resulting tree must be the kernel
    overlay's.  (Single-uid mode cannot chown a home directory to uid 1000.)"""
    results = _both_drivers(rl, debian, debs, ADMIN)
    assert results["fuse-overlay"] is not None
    ignore = {"/etc/hosts", "/etc/hostname", "/var/cache/ldconfig/aux-cache"}

    def tree(out: str) -> list[str]:
        return [ln for ln in out.splitlines() if not ignore & set(ln.split())]
    fuse, kernel = results["fuse-overlay"], results["overlay"]
    assert "/usr/lib/env-hard 4711 0 0 1 " in fuse[0] and "/home/bob 755 1001 1001" in fuse[0]
    if kernel is None:
        _same_as_kernel_overlay(results)
    differences = list(difflib.unified_diff(tree(kernel[0]), tree(fuse[0]), "kernel overlay", "fuse-overlay",
                                            lineterm="", n=1))
    assert not differences, "\n".join(differences[:60])
    assert fuse[1] == kernel[1]
