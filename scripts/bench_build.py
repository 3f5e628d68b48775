"""The ``build`` section of scripts/bench: ``rootless build`` beside ``podman build`` and ``ch-image build``.

The workload: a context of 2,000 small files (1-8 KiB, 20 directories, the same bytes every
time) and a Dockerfile on the busybox test image (scripts/busybox-rootfs): COPY of the files,
then five RUN steps doing small real work (a note, sha256sum of every copied file, 20 MiB from
/dev/urandom, deleting two directories, a tar of one).  For each builder:

* cold build: its build cache emptied and the built image removed first (not timed), then
  ``build`` (``rootless builder prune -f`` + ``rmi``; podman ``rmi`` + ``image prune`` and
  ``--no-cache``; ``ch-image build --rebuild``, which misses its cache for every step but FROM);
* cached rebuild: the same build again, nothing changed.

rootless runs twice: with its default storage driver (``auto``: the kernel's overlay with a
sub-id range, as podman's storage here; fuse-overlay in single-uid mode) and with
``--storage-driver fuse-overlay`` (its FUSE overlay).  Runs (``--runs`` / 6,
at least 3) are interleaved (rootless, podman, ch-image, rootless, ...) after one warm-up
round; medians and rootless/peer ratios are printed, and each goal of issue 12 (cold <= 1.0x
podman, cached <= 0.5x podman, layers >= 200 MB/s) as met or MISSED.  Every builder gets
``--network none`` (rootless too: its default would be the slirp stack, which the steps do
not need).

Layer creation: a Dockerfile whose one RUN writes 200 MiB from /dev/urandom into a file, and
the same RUN writing them to /dev/null; built cold, the difference of the medians is the cost
of the changed data (writing it through the storage driver, making and storing the layer), and
200 MiB (209.7 MB) over it the throughput.

Peers (for the bench only, not test dependencies): podman (Debian ``podman``, buildah inside)
run rootless as the same user with runc, cgroupfs, its own --root/--runroot and
XDG_RUNTIME_DIR (its pause process is stopped afterwards); Charliecloud's ``ch-image``
(Debian ``charliecloud-builders``, plus ``charliecloud-runtime`` for ``ch-run``, which its RUN
steps use), with its own storage directory, run by the system Python (it needs
``python3-lark``, which a venv does not see).  A peer that cannot work is reported as
``unavailable: <why>``.
"""

from __future__ import annotations

import glob
import os
import pwd
import random
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

FILES, DIRS = 2000, 20
LAYER_MIB = 200
MIB = 1 << 20

WORKLOAD = """\
FROM {base}
COPY files /data
RUN mkdir -p /out && echo built > /out/note && ls /data | wc -l >> /out/note
RUN find /data -type f | sort | xargs sha256sum > /out/sums
RUN dd if=/dev/urandom of=/out/blob bs=1048576 count=20 2>/dev/null
RUN rm -r /data/d00 /data/d01 && sha256sum /out/blob > /out/blob.sum
RUN tar -cf /out/d02.tar /data/d02 2>/dev/null && wc -c /out/d02.tar > /out/size
"""
LAYER = "FROM {base}\nRUN dd if=/dev/urandom of={dest} bs=1048576 count={mib} 2>/dev/null\n"


def make_context(ctx: Path) -> int:
    """The 2,000 files under ``ctx/files`` (deterministic); their total size."""
    total = 0
    for i in range(FILES):
        rnd = random.Random(i)
        d = ctx / "files" / f"d{i % DIRS:02d}"
        d.mkdir(parents=True, exist_ok=True)
        data = rnd.randbytes(rnd.randint(1024, 8192))
        (d / f"f{i:04d}").write_bytes(data)
        total += len(data)
    return total


class Contender:
    """One builder: how to time its cold build and cached rebuild of a Dockerfile."""

    def __init__(self, name: str, cmd: list[str], env: dict[str, str], base: str) -> None:
        self.name, self.cmd, self.env, self.base = name, cmd, env, base
        self.note = ""

    def run(self, args: list[str], check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run([*self.cmd, *args], env=self.env, stdin=subprocess.DEVNULL, capture_output=True,
                              text=True)
        if check and proc.returncode != 0:
            raise RuntimeError(f"{self.name}: {' '.join(args[:2])} failed ({proc.returncode}): "
                               f"{proc.stderr.strip()[-400:]}")
        return proc

    def timed(self, args: list[str]) -> float:
        t0 = time.perf_counter()
        self.run(args)
        return time.perf_counter() - t0

    def cold(self, dockerfile: Path, ctx: Path, tag: str) -> float:
        raise NotImplementedError

    def cached(self, dockerfile: Path, ctx: Path, tag: str) -> float:
        raise NotImplementedError


class Rootless(Contender):
    def __init__(self, name: str, cmd: list[str], env: dict[str, str], base: str, extra: list[str]) -> None:
        super().__init__(name, cmd, env, base)
        self.extra = extra

    def cold(self, dockerfile, ctx, tag):
        self.run(["rmi", "-f", tag], check=False)
        self.run(["builder", "prune", "-f"])
        return self.timed(["build", "-q", "--network", "none", *self.extra, "-t", tag, "-f", str(dockerfile),
                           str(ctx)])

    def cached(self, dockerfile, ctx, tag):
        return self.timed(["build", "-q", "--network", "none", *self.extra, "-t", tag, "-f", str(dockerfile),
                           str(ctx)])


class Podman(Contender):
    def cold(self, dockerfile, ctx, tag):
        self.run(["rmi", "-f", tag], check=False)
        self.run(["image", "prune", "-f"])
        return self.timed(["build", "-q", "--no-cache", "--network", "none", "-t", tag, "-f", str(dockerfile),
                           str(ctx)])

    def cached(self, dockerfile, ctx, tag):
        return self.timed(["build", "-q", "--network", "none", "-t", tag, "-f", str(dockerfile), str(ctx)])


class ChImage(Contender):
    def cold(self, dockerfile, ctx, tag):
        return self.timed(["build", "--rebuild", "-t", tag, "-f", str(dockerfile), str(ctx)])

    def cached(self, dockerfile, ctx, tag):
        return self.timed(["build", "-t", tag, "-f", str(dockerfile), str(ctx)])


def _with_bytecode(env: dict[str, str], directory: Path) -> dict[str, str]:
    """``env`` with a place for a Python builder's bytecode: a checkout (or /usr/lib/charliecloud)
    may not be ours to write in, and compiling every module on every run is not what an installed
    one costs."""
    env = {k: v for k, v in env.items() if k != "PYTHONDONTWRITEBYTECODE"}
    return {**env, "PYTHONPYCACHEPREFIX": str(directory)}


def _setup_rootless(rl: list[str], work: Path, tar: Path, cleanups: list[Callable[[], object]]) -> list[Contender]:
    run_dir = work / "rootless-run"
    run_dir.mkdir(mode=0o700)
    env = _with_bytecode({**os.environ, "ROOTLESS_ROOT": str(work / "store"), "XDG_RUNTIME_DIR": str(run_dir),
                          "ROOTLESS_NO_SINGLE_UID_WARNING": "1"}, work / "pycache-rootless")

    def stop() -> None:
        subprocess.run([*rl, "unshare", "rm", "-rf", str(work / "store")], env=env)
        for pidfile in glob.glob(str(run_dir / "rootless" / "*.pid")):      # the per-user fork server
            try:
                os.kill(int(Path(pidfile).read_text()), signal.SIGTERM)
            except (OSError, ValueError):
                pass
    cleanups.append(stop)
    subprocess.run([*rl, "import", "-c", 'CMD ["/bin/sh"]', str(tar), "bench/busybox"], env=env, check=True,
                   stdout=subprocess.DEVNULL)
    subprocess.run([*rl, "save", "-o", str(work / "busybox-docker.tar"), "bench/busybox"], env=env, check=True)
    return [Rootless("rootless", rl, env, "bench/busybox", []),
            Rootless("rootless (fuse-overlay)", rl, env, "bench/busybox", ["--storage-driver", "fuse-overlay"])]


def _setup_podman(work: Path, cleanups: list[Callable[[], object]]) -> Contender | str:
    if not shutil.which("podman"):
        return "not installed (Debian package podman)"
    xdg = work / "podman-xdg"
    xdg.mkdir(mode=0o700)
    env = {**os.environ, "XDG_RUNTIME_DIR": str(xdg)}
    pod = ["podman", "--runtime", "runc", "--cgroup-manager", "cgroupfs", "--events-backend", "file",
           "--root", str(work / "podman-root"), "--runroot", str(work / "podman-run"),
           "--storage-driver", "overlay"]       # kernel overlay; left to choose, it took vfs here

    def stop_pause() -> None:
        try:
            os.kill(int((xdg / "libpod" / "tmp" / "pause.pid").read_text()), signal.SIGTERM)
        except (OSError, ValueError):
            pass

    def stop() -> None:
        stop_pause()        # its mount namespace holds the storage's overlay mounts
        subprocess.run([*pod, "unshare", "rm", "-rf", str(work / "podman-root"), str(work / "podman-run")], env=env,
                       capture_output=True)
        stop_pause()        # unshare's
    cleanups.append(stop)
    load = subprocess.run([*pod, "load", "-i", str(work / "busybox-docker.tar")], env=env, capture_output=True,
                          text=True)
    if load.returncode != 0:
        return f"podman load failed: {load.stderr.strip()[-200:]}"
    driver = subprocess.run([*pod, "info", "--format", "{{.Store.GraphDriverName}}"], env=env, capture_output=True,
                            text=True).stdout.strip()
    podman = Podman("podman", pod, env, "localhost/bench/busybox:latest")
    podman.note = f"podman {_version(pod, env)}: storage driver {driver or 'unknown'}, runtime runc"
    return podman


def _setup_ch_image(work: Path, tar: Path, cleanups: list[Callable[[], object]]) -> Contender | str:
    found = shutil.which("ch-image")
    if not found:
        return "not installed (Debian package charliecloud-builders, and charliecloud-runtime for ch-run)"
    if not shutil.which("ch-run"):
        return "ch-run is not installed (Debian package charliecloud-runtime): ch-image's RUN steps need it"
    # ch-image is `#!/usr/bin/env python3` and imports lark from the system's packages: a venv's
    # python3 first in PATH would not find it
    python = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else "python3"
    storage = work / "ch"
    user = pwd.getpwuid(os.getuid()).pw_name
    # its build cache is a git repository: git wants an identity to commit with
    env = _with_bytecode({**os.environ, "USER": user, "CH_IMAGE_STORAGE": str(storage), "GIT_AUTHOR_NAME": user,
                          "GIT_AUTHOR_EMAIL": f"{user}@localhost", "GIT_COMMITTER_NAME": user,
                          "GIT_COMMITTER_EMAIL": f"{user}@localhost"}, work / "pycache-ch-image")
    ch = [python, found, "--storage", str(storage)]
    cleanups.append(lambda: shutil.rmtree(storage, onerror=_chmod_and_retry))
    probe = subprocess.run([*ch, "import", str(tar), "bench-busybox"], env=env, capture_output=True, text=True)
    if probe.returncode != 0:
        return f"ch-image import failed: {(probe.stderr or probe.stdout).strip()[-300:]}"
    chimage = ChImage("ch-image", ch, env, "bench-busybox")
    chimage.note = f"ch-image {_version(ch, env)}: its build cache (git) on, storage in the bench's temp dir"
    return chimage


def _version(cmd: list[str], env: dict[str, str]) -> str:
    out = subprocess.run([*cmd, "--version"], env=env, capture_output=True, text=True).stdout.strip()
    return out.split()[-1] if out else "(version unknown)"


def _chmod_and_retry(func, path, _exc) -> None:
    """ch-image leaves read-only directories (as the image has them): make them writable."""
    try:
        os.chmod(os.path.dirname(path), 0o700)
        if os.path.isdir(path) and not os.path.islink(path):
            os.chmod(path, 0o700)
        func(path)
    except OSError:
        pass


def bench_build(runs: int, work: Path, rl: list[str], busybox_rootfs: Path) -> dict:
    tar = work / "busybox.tar"
    subprocess.run([sys.executable, str(busybox_rootfs), str(tar)], check=True, stdout=subprocess.DEVNULL)
    ctx = work / "ctx"
    total = make_context(ctx)
    notes = [f"load average at the start: {' '.join(f'{x:.2f}' for x in os.getloadavg())} "
             f"({os.cpu_count()} CPUs)",
             "every builder with --network none; rootless and ch-image keep their bytecode in the bench's "
             "temp dir (PYTHONPYCACHEPREFIX), as an installed copy has it"]
    cleanups: list[Callable[[], object]] = []
    times: dict[str, list[float]] = {}
    layer_times: dict[str, list[float]] = {}
    try:
        contenders = _setup_rootless(rl, work, tar, cleanups)
        for peer, setup in (("podman", lambda: _setup_podman(work, cleanups)),
                            ("ch-image", lambda: _setup_ch_image(work, tar, cleanups))):
            got = setup()
            if isinstance(got, str):
                notes.append(f"{peer} unavailable: {got}")
            else:
                contenders.append(got)
                if got.note:
                    notes.append(got.note)
        dockerfiles: dict[str, Path] = {}
        layer_files: dict[str, tuple[Path, Path]] = {}
        for i, c in enumerate(contenders):
            dockerfiles[c.name] = ctx.parent / f"Dockerfile.{i}"
            dockerfiles[c.name].write_text(WORKLOAD.format(base=c.base))
            written, null = ctx.parent / f"Layer.{i}", ctx.parent / f"Null.{i}"
            written.write_text(LAYER.format(base=c.base, dest="/big", mib=LAYER_MIB))
            null.write_text(LAYER.format(base=c.base, dest="/dev/null", mib=LAYER_MIB))
            layer_files[c.name] = (written, null)
        empty = work / "empty-ctx"
        empty.mkdir()

        def failed(c: Contender, e: RuntimeError) -> None:
            notes.append(f"{c.name} unavailable: {e}")
            contenders.remove(c)

        for c in list(contenders):                   # warm-up: caches, first-run set-up
            try:
                c.cold(dockerfiles[c.name], ctx, "bench/out")
                c.cached(dockerfiles[c.name], ctx, "bench/out")
            except RuntimeError as e:
                failed(c, e)
        for _ in range(runs):
            for c in list(contenders):
                times.setdefault(f"{c.name} cold", []).append(c.cold(dockerfiles[c.name], ctx, "bench/out"))
                times.setdefault(f"{c.name} cached", []).append(c.cached(dockerfiles[c.name], ctx, "bench/out"))
        for _ in range(runs):
            for c in contenders:
                written, null = layer_files[c.name]
                layer_times.setdefault(f"{c.name} write", []).append(c.cold(written, empty, "bench/layer"))
                layer_times.setdefault(f"{c.name} null", []).append(c.cold(null, empty, "bench/layer"))
    finally:
        for cleanup in cleanups:
            cleanup()
    medians = {name: statistics.median(t) for name, t in times.items()}
    ratios = {}
    for peer in ("podman", "ch-image"):
        for kind in ("cold", "cached"):
            for ours in ("rootless", "rootless (fuse-overlay)"):
                if f"{ours} {kind}" in medians and f"{peer} {kind}" in medians:
                    ratios[f"{ours}/{peer} {kind}"] = medians[f"{ours} {kind}"] / medians[f"{peer} {kind}"]
    throughput = {}
    for c in dict.fromkeys(n.rsplit(" ", 1)[0] for n in layer_times):
        w, n = statistics.median(layer_times[f"{c} write"]), statistics.median(layer_times[f"{c} null"])
        medians[f"{c} RUN writing {LAYER_MIB} MiB"] = w
        medians[f"{c} RUN writing nothing"] = n
        throughput[f"{c} RUN writing {LAYER_MIB} MiB"] = LAYER_MIB * MIB / 1e6 / (w - n) if w > n else float("inf")
    goals = [("cold build <= 1.0x podman", ratios.get("rootless/podman cold"), 1.0),
             ("cached rebuild <= 0.5x podman", ratios.get("rootless/podman cached"), 0.5)]
    for what, value, limit in goals:
        if value is not None:
            notes.append(f"goal {what}: {value:.2f}x, {'met' if value <= limit else 'MISSED'}")
    rate = throughput.get(f"rootless RUN writing {LAYER_MIB} MiB")
    if rate is not None:
        notes.append(f"goal layer creation >= 200 MB/s of changed data: {rate:.0f} MB/s, "
                     f"{'met' if rate >= 200 else 'MISSED'}")
    notes.append(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return {"section": "build",
            "what": f"COPY of {FILES} files ({total / 1e6:.1f} MB) + 5 RUN, cold and cached, --network none; "
                    f"layer creation: RUN writing {LAYER_MIB} MiB minus RUN writing them to /dev/null "
                    f"(MB/s of changed data)",
            "runs": runs, "median_s": medians, "throughput_MBps": throughput, "ratios": ratios, "notes": notes}
