#!/usr/bin/env python3
"""Benchmark fuse-overlay against fuse-overlayfs and the kernel overlayfs.

Run as an ordinary user: the script re-executes itself inside a user + mount
namespace (``unshare --map-auto --map-root-user --mount``, or ``-rm`` when
the user has no subuid range), generates the lower trees, and times every
workload on each implementation with fresh upper/work directories.

    scripts/bench_fuse_overlay.py [--big-mib 1024] [--small-files 20000]
        [--dirs 200] [--reps 3] [--format text|json] [--only NAME,...]

Prints the median time of each workload per implementation, and the ratio
of fuse-overlay to each peer (below 1.0 = fuse-overlay is faster).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Callable, Iterator

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMPLS = ("fuse-overlay", "fuse-overlayfs", "kernel")
CHUNK = 1 << 20


def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--big-mib", type=int, default=1024, help="size of the big file (MiB)")
    ap.add_argument("--small-files", type=int, default=20000, help="files in the small tree")
    ap.add_argument("--dirs", type=int, default=200, help="directories in the small tree")
    ap.add_argument("--create-files", type=int, default=5000, help="files to create and delete")
    ap.add_argument("--reps", type=int, default=3, help="repetitions (median is reported)")
    ap.add_argument("--format", choices=("text", "json"), default="text")
    ap.add_argument("--impls", default=",".join(IMPLS), help="implementations to run")
    ap.add_argument("--only", default="", help="comma-separated workloads to run")
    ap.add_argument("--dir", default=None, help="scratch directory (default: under /var/tmp)")
    ap.add_argument("--variant", action="append", default=[], metavar="NAME=DIR",
                    help="also run fuse-overlay with DIR first on PYTHONPATH, shown as fuse-overlay[NAME]: "
                         "an older fuse_overlay package (before/after), or a patched pyfuse3 (e.g. one "
                         "answering opendir with cache_readdir; see docs/fuse-overlay.md)")
    return ap.parse_args()


def reexec_in_namespace() -> None:
    if os.environ.get("BENCH_FO_IN_NS") == "1":
        return
    env = dict(os.environ, BENCH_FO_IN_NS="1", PYTHONPATH=REPO)
    for prefix in (["unshare", "--map-auto", "--map-root-user", "--mount"],
                   ["unshare", "--map-root-user", "--mount"]):
        if subprocess.run(prefix + ["true"], capture_output=True).returncode == 0:
            os.execvpe(prefix[0], prefix + [sys.executable] + sys.argv, env)
    sys.exit("bench: cannot create a user namespace")


# --------------------------------------------------------------- trees

def make_big(path: str, mib: int) -> None:
    block = os.urandom(CHUNK)
    with open(path, "wb") as f:
        for i in range(mib):
            f.write(block[i % 7:] + block[:i % 7])


def make_small(root: str, files: int, dirs: int) -> None:
    for d in range(dirs):
        os.makedirs(f"{root}/d{d:03d}", exist_ok=True)
    for i in range(files):
        with open(f"{root}/d{i % dirs:03d}/f{i:05d}", "wb") as f:
            f.write(b"x" * (100 + i % 4000))


# -------------------------------------------------------------- mounts

class Mounter:
    def __init__(self, base: str, lower: str, variants: dict[str, str] | None = None) -> None:
        self.base, self.lower, self.n = base, lower, 0
        self.variants = variants or {}     # implementation name -> directory put first on PYTHONPATH
        self.mount_seconds = 0.0     # of the last mount: command until it returned + a stat of the root

    @contextlib.contextmanager
    def mounted(self, impl: str) -> Iterator[str]:
        self.n += 1
        d = f"{self.base}/m{self.n}"
        for sub in ("u", "w", "m"):
            os.makedirs(f"{d}/{sub}")
        opts = f"lowerdir={self.lower},upperdir={d}/u,workdir={d}/w"
        m = f"{d}/m"
        env = None
        if impl in self.variants:
            env = dict(os.environ, PYTHONPATH=f"{self.variants[impl]}:{REPO}")
        t = time.perf_counter()
        if impl == "kernel":
            subprocess.run(["mount", "-t", "overlay", "overlay", "-o", opts + ",userxattr", m], check=True)
        elif impl == "fuse-overlayfs":
            subprocess.run(["fuse-overlayfs", "-o", opts, m], check=True, stderr=subprocess.DEVNULL)
        else:
            subprocess.run([sys.executable, "-m", "fuse_overlay.cli", "-o", opts + f",pidfile={d}/pid", m],
                           check=True, env=env)
        os.stat(f"{m}/small")
        self.mount_seconds = time.perf_counter() - t
        try:
            yield m
        finally:
            subprocess.run(["umount", m], check=False)
            if impl.startswith("fuse-overlay") and impl != "fuse-overlayfs":
                with contextlib.suppress(OSError, ValueError):
                    pid = int(open(f"{d}/pid").read())
                    for _ in range(100):
                        os.kill(pid, 0)
                        time.sleep(0.05)
            shutil.rmtree(d, ignore_errors=True)


# ----------------------------------------------------------- workloads

def read_all(path: str) -> None:
    buf = bytearray(CHUNK)
    fd = os.open(path, os.O_RDONLY)
    try:
        while os.readv(fd, [buf]):
            pass
    finally:
        os.close(fd)


def stat_tree(root: str) -> int:
    n = 0
    for dirpath, dirnames, filenames in os.walk(root):
        for name in filenames:
            os.lstat(os.path.join(dirpath, name))
            n += 1
    return n


def timed(fn: Callable[[], object]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def w_seq_read_cold(mo: Mounter, impl: str, a: argparse.Namespace) -> float:
    with mo.mounted(impl) as m:
        return timed(lambda: read_all(f"{m}/big"))


def w_seq_read_warm(mo: Mounter, impl: str, a: argparse.Namespace) -> float:
    with mo.mounted(impl) as m:
        read_all(f"{m}/big")
        return timed(lambda: read_all(f"{m}/big"))


def w_seq_write(mo: Mounter, impl: str, a: argparse.Namespace) -> float:
    block = os.urandom(CHUNK)
    with mo.mounted(impl) as m:
        def run() -> None:
            fd = os.open(f"{m}/new", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            for _ in range(a.big_mib):
                os.write(fd, block)
            os.fsync(fd)
            os.close(fd)
        return timed(run)


def w_copyup_append(mo: Mounter, impl: str, a: argparse.Namespace) -> float:
    with mo.mounted(impl) as m:
        def run() -> None:
            with open(f"{m}/big", "ab") as f:
                f.write(b"x")
        return timed(run)


def w_stat_cold(mo: Mounter, impl: str, a: argparse.Namespace) -> float:
    with mo.mounted(impl) as m:
        return timed(lambda: stat_tree(f"{m}/small"))


def w_stat_warm(mo: Mounter, impl: str, a: argparse.Namespace) -> float:
    with mo.mounted(impl) as m:
        stat_tree(f"{m}/small")
        return timed(lambda: stat_tree(f"{m}/small"))


def w_find_warm(mo: Mounter, impl: str, a: argparse.Namespace) -> float:
    """A second `find` of the small tree (listings only)."""
    with mo.mounted(impl) as m:
        find = lambda: subprocess.run(["find", "small"], cwd=m, check=True, stdout=subprocess.DEVNULL)
        find()
        return timed(find)


def w_du_warm(mo: Mounter, impl: str, a: argparse.Namespace) -> float:
    """A second `du -s` of the small tree (listings and stat of every file)."""
    with mo.mounted(impl) as m:
        du = lambda: subprocess.run(["du", "-s", "small"], cwd=m, check=True, stdout=subprocess.DEVNULL)
        du()
        return timed(du)


def w_mount(mo: Mounter, impl: str, a: argparse.Namespace) -> float:
    """The mount command until it returned, and a stat through the mount (standalone, no server)."""
    with mo.mounted(impl):
        return mo.mount_seconds


def w_tar_small(mo: Mounter, impl: str, a: argparse.Namespace) -> float:
    with mo.mounted(impl) as m:
        return timed(lambda: subprocess.run(f"tar cf - small | cat > /dev/null", shell=True, cwd=m,
                                            check=True))


def w_create_delete(mo: Mounter, impl: str, a: argparse.Namespace) -> float:
    with mo.mounted(impl) as m:
        def run() -> None:
            os.mkdir(f"{m}/c")
            for i in range(a.create_files):
                os.close(os.open(f"{m}/c/f{i}", os.O_WRONLY | os.O_CREAT, 0o644))
            for i in range(a.create_files):
                os.unlink(f"{m}/c/f{i}")
            os.rmdir(f"{m}/c")
        return timed(run)


def w_du(mo: Mounter, impl: str, a: argparse.Namespace) -> float:
    with mo.mounted(impl) as m:
        return timed(lambda: subprocess.run(["du", "-s", "small"], cwd=m, check=True,
                                            stdout=subprocess.DEVNULL))


WORKLOADS: dict[str, Callable[[Mounter, str, argparse.Namespace], float]] = {
    "seq_read_cold": w_seq_read_cold,
    "seq_read_warm": w_seq_read_warm,
    "seq_write_fsync": w_seq_write,
    "copyup_append_big": w_copyup_append,
    "stat_all_cold": w_stat_cold,
    "stat_all_warm": w_stat_warm,
    "tar_small_tree": w_tar_small,
    "create_delete": w_create_delete,
    "du_small_tree": w_du,
    "find_warm": w_find_warm,
    "du_warm": w_du_warm,
    "mount": w_mount,
}


def main() -> int:
    a = parse()
    reexec_in_namespace()
    impls = [i for i in a.impls.split(",") if i]
    if "fuse-overlayfs" in impls and shutil.which("fuse-overlayfs") is None:
        impls.remove("fuse-overlayfs")
    variants = {}
    for v in a.variant:
        name, _, path = v.partition("=")
        variants[f"fuse-overlay[{name}]"] = os.path.abspath(path)
    impls[1:1] = list(variants)
    names = [n for n in (a.only.split(",") if a.only else WORKLOADS)]
    base = tempfile.mkdtemp(prefix="bench-fo-", dir=a.dir or "/var/tmp")
    try:
        lower = f"{base}/lower"
        os.makedirs(lower)
        make_big(f"{lower}/big", a.big_mib)
        make_small(f"{lower}/small", a.small_files, a.dirs)
        os.sync()                       # no writeback of the trees during the runs
        read_all(f"{lower}/big")        # backing files in the page cache for everyone
        stat_tree(f"{lower}/small")
        mo = Mounter(base, lower, variants)
        results: dict[str, dict[str, float]] = {}
        for name in names:
            times: dict[str, list[float]] = {impl: [] for impl in impls}
            for rep in range(a.reps):
                # rotate the order so that no implementation always goes first
                for impl in impls[rep % len(impls):] + impls[:rep % len(impls)]:
                    times[impl].append(WORKLOADS[name](mo, impl, a))
                    os.sync()
            results[name] = {impl: statistics.median(t) for impl, t in times.items()}
    finally:
        shutil.rmtree(base, ignore_errors=True)
    report(a, results, impls)
    return 0


def report(a: argparse.Namespace, results: dict[str, dict[str, float]], impls: list[str]) -> None:
    peers = [i for i in impls if i in ("fuse-overlayfs", "kernel")]
    ours = [i for i in impls if i not in peers]       # fuse-overlay and its --variant runs
    ratios = {n: {f"{o}/{p}": r[o] / r[p] for o in ours for p in peers if r.get(p) and o in r}
              for n, r in results.items()}
    if a.format == "json":
        out = {"params": {"big_mib": a.big_mib, "small_files": a.small_files, "dirs": a.dirs,
                          "create_files": a.create_files, "reps": a.reps},
               "median_seconds": results, "ratios": ratios}
        print(json.dumps(out, indent=2))
        return
    cols = [f"{o}/{p}" for o in ours for p in peers]
    w = max(16, *(len(i) + 2 for i in impls))
    head = f"{'workload':<20}" + "".join(f"{i:>{w}}" for i in impls) + "".join(f"{c:>{len(c) + 2}}" for c in cols)
    print(f"median of {a.reps} runs, seconds; big file {a.big_mib} MiB, {a.small_files} small files")
    print(head)
    for n, r in results.items():
        line = f"{n:<20}" + "".join(f"{r[i]:>{w}.3f}" for i in impls)
        line += "".join(f"{ratios[n][c]:>{len(c) + 2}.2f}" for c in cols if c in ratios[n])
        print(line)

if __name__ == "__main__":
    sys.exit(main())
