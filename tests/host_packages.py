"""A build context made of the host's own installed Debian packages, for images that must hold
exactly what the host has (tests/test_mpi.py: the host's Open MPI inside an image, with no
network to install it from).

``packages_context(dest, roots)`` copies the files of the packages ``roots`` and of every
package owning a shared library their programs and libraries load (``ldd`` over each ELF
file, repeated until nothing new is found), as ``dpkg -L`` lists them, into ``dest``.
Documentation, manual pages and translations are left out, and so is ``SKIP_FILES``.  Paths
are put where they really are on the host (Debian 12 merged /lib into /usr/lib), and
``dest`` gets the merged-/usr links (``lib -> usr/lib``...) a busybox base lacks.

Dependencies are what the ELF files load, not the packages' Depends: a package's Depends
also name programs (adduser, passwd, openssh-client) an MPI rank never runs.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

LEAVE_OUT = ("/usr/share/doc/", "/usr/share/man/", "/usr/share/locale/", "/usr/share/info/",
             "/usr/share/lintian/", "/usr/share/bug/")
# gcc-12's link-time optimizer and its dump tool: 60 MB a plain 'mpicc -O2' never runs.
SKIP_FILES = re.compile(r"/(lto1|lto-dump(-12)?|x86_64-linux-gnu-lto-dump(-12)?)$")
MERGED = {"lib": "usr/lib", "lib64": "usr/lib64", "lib32": "usr/lib32", "libx32": "usr/libx32"}


def _owners() -> dict[str, str]:
    """Every path dpkg knows, at its real place on this host, to the package that owns it."""
    owners: dict[str, str] = {}
    for lst in Path("/var/lib/dpkg/info").glob("*.list"):
        pkg = lst.name[:-len(".list")].split(":")[0]
        for line in lst.read_text(errors="replace").splitlines():
            owners.setdefault(line, pkg)
            owners.setdefault(_real(line), pkg)
    return owners


def _real(path: str) -> str:
    """PATH with its directory's symlinks resolved (the file itself may be a link)."""
    head, tail = os.path.split(path)
    return os.path.join(os.path.realpath(head or "/"), tail)


def _files(pkg: str) -> list[str]:
    out = subprocess.run(["dpkg-query", "-L", pkg], capture_output=True, text=True, timeout=30, check=True)
    return [f for f in out.stdout.splitlines() if f.startswith("/") and not f.startswith(LEAVE_OUT)
            and not SKIP_FILES.search(f)]


def _is_elf(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"\x7fELF"
    except OSError:
        return False


def _loaded(path: str) -> set[str]:
    """The libraries ``ldd`` says PATH loads (paths on this host)."""
    out = subprocess.run(["ldd", path], capture_output=True, text=True, timeout=30)
    found = set()
    for line in out.stdout.splitlines():
        m = re.search(r"(?:=>\s*)?(/\S+)\s+\(0x", line)
        if m:
            found.add(m.group(1))
    return found


def package_set(roots: list[str]) -> set[str]:
    """ROOTS and every installed package owning a library their ELF files load."""
    return _closure(roots)[0]


def _closure(roots: list[str]) -> tuple[set[str], set[str]]:
    """package_set(ROOTS), and the paths of the libraries loaded (some are links that
    update-alternatives made, which no package lists)."""
    owners = _owners()
    chosen: set[str] = set()
    libs: set[str] = set()
    todo = list(roots)
    checked: set[str] = set()
    while todo:
        pkg = todo.pop()
        if pkg in chosen:
            continue
        chosen.add(pkg)
        for f in _files(pkg):
            real = _real(f)
            if real in checked or os.path.islink(real) or not os.path.isfile(real) or not _is_elf(real):
                continue
            checked.add(real)
            for lib in _loaded(real):
                libs.add(lib)
                owner = owners.get(lib) or owners.get(_real(lib)) or owners.get(os.path.realpath(lib))
                if owner and owner not in chosen:
                    todo.append(owner)
    return chosen, libs


def packages_context(dest: Path, roots: list[str], without: set[str] = frozenset()) -> list[str]:
    """Copy the files of ``package_set(roots)``, but for the packages ``without`` (another
    layer's), into DEST (made if missing); returns the packages copied."""
    found, libs = _closure(roots)
    pkgs = sorted(found - set(without))
    dest.mkdir(parents=True, exist_ok=True)
    for name, target in MERGED.items():
        if os.path.islink(f"/{name}") and not os.path.lexists(dest / name):
            os.symlink(target, dest / name)
    for pkg in pkgs:
        for f in _files(pkg):
            real = _real(f)
            if os.path.isdir(real) and not os.path.islink(real):
                continue
            if not os.path.lexists(real):
                continue               # removed by a diversion or by the administrator
            out = dest / real.lstrip("/")
            if os.path.lexists(out):
                continue
            out.parent.mkdir(parents=True, exist_ok=True)
            if os.path.islink(real):
                os.symlink(os.readlink(real), out)
            else:
                shutil.copy2(real, out)
    for lib in sorted(libs):     # e.g. libpsm_infinipath.so.1 -> /etc/alternatives/... -> the file
        out = dest / _real(lib).lstrip("/")
        target = os.path.realpath(lib)
        if not os.path.lexists(out) and os.path.lexists(dest / target.lstrip("/")):
            out.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(target, out)
    return pkgs
