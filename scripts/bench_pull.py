"""The ``pull`` section of scripts/bench: ``rootless pull`` and ``push`` beside ``podman``'s, from and to
a registry on 127.0.0.1, and the disk a pulled image takes.

The image (made once, the same bytes every time): five layers, about ``--pull-mb`` MB unpacked —
the busybox test image's root filesystem (scripts/busybox-rootfs, from the host's busybox-static)
and four data layers, each three parts random data (files of 1-6 MiB: incompressible) to two
parts text-like data (a 16-letter alphabet: gzip halves it) and 200 small files (1-16 KiB); the
last layer carries ``/bench/SHA256SUMS`` of every data file, so that a pulled copy can be
checked.  It is written as a docker-archive, ``rootless load``-ed into a seed store and pushed
once (gzip) to Debian's ``docker-registry`` (Distribution 2.8), started by the bench on
127.0.0.1 with its storage in the bench's temp dir and stopped by its PID at the end.  A second
image shares the first four layers and has another fifth one.

Each run, for each engine (rootless, podman; runs interleaved after one warm-up round):

* ``pull``: into an empty store (rootless: a fresh ``--root``; podman: a fresh ``--root`` and
  ``--runroot``, and its blob-info cache emptied), timed;
* disk: ``du`` of that store root (allocated blocks, run in the engine's user namespace: the
  unpacked files belong to sub-ids), against the image's unpacked size (the sum of its
  regular files' sizes), not timed;
* ``pull, 4 of 5 layers present``: the second image into the same store, timed;
* ``push``: the first image to a fresh repository of a second registry, started empty for that
  push (so neither engine can skip or cross-mount a blob it pushed in an earlier run), timed;
  an engine may send the gzip blobs it pulled as they came (rootless does, while its store
  keeps them) or compress the layers again (podman does);
* the store removed (``unshare rm -rf``), not timed;
* ``push of the loaded image (compressing)``: the image's docker-archive ``load``-ed into another
  empty store (not timed), whose layers have no compressed form yet, pushed to an empty
  registry (timed): the cost of compressing at push, as after a build.

``skopeo copy`` of the image to a ``dir:`` (no unpacking: the transfer alone) is timed too when
skopeo is installed.  The medians, the rootless/podman ratios and issue 14's goals (pull <= 0.8x
podman, push <= 1.0x podman, disk <= 1.1x the unpacked size) are printed.  Nothing here reads
the stores' insides: only ``du`` of their roots.

podman runs rootless as the same user with runc, cgroupfs, its kernel overlay storage driver,
``--tls-verify=false`` (the registries speak HTTP), its own XDG_RUNTIME_DIR (its pause process
is stopped afterwards) and XDG_DATA_HOME.  rootless needs no flag for HTTP on 127.0.0.0/8.
"""

from __future__ import annotations

import glob
import hashlib
import io
import json
import os
import platform
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Callable

MIB = 1 << 20
MTIME = 946684800
TEXT_ALPHABET = b"etaoinshrdlu \n.,"


def _text(rnd: random.Random, size: int) -> bytes:
    """``size`` bytes from a 16-letter alphabet (4 bits a byte: gzip makes about half of it)."""
    table = bytes(TEXT_ALPHABET[i % 16] for i in range(256))
    return rnd.randbytes(size).translate(table)


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o644, MTIME
    tar.addfile(info, io.BytesIO(data))


def _add_dir(tar: tarfile.TarFile, name: str) -> None:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, MTIME
    tar.addfile(info)


def data_layer(path: Path, seed: int, size: int, sums: list[tuple[str, str]] | None = None) -> int:
    """Write a data layer of about ``size`` bytes to ``path`` (the same bytes for the same
    ``seed``); the sha256 and path of its large files are appended to ``sums``.  The sum of its
    regular files' sizes."""
    rnd = random.Random(seed)
    total = 0
    d = f"data{seed}"
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        _add_dir(tar, d)
        random_part, text_part = size * 3 // 5, size * 2 // 5 - 200 * 8192
        i = 0
        for kind, budget in (("bin", random_part), ("txt", text_part)):
            while budget > 0:
                n = min(budget, rnd.randint(1 * MIB, 6 * MIB) if kind == "bin" else rnd.randint(64 << 10, 2 * MIB))
                data = rnd.randbytes(n) if kind == "bin" else _text(rnd, n)
                name = f"{d}/{kind}{i:03d}"
                _add(tar, name, data)
                if sums is not None:
                    sums.append((hashlib.sha256(data).hexdigest(), "/" + name))
                total += n
                budget -= n
                i += 1
        _add_dir(tar, f"{d}/small")
        for j in range(200):
            data = rnd.randbytes(rnd.randint(1024, 16384))
            _add(tar, f"{d}/small/s{j:03d}", data)
            total += len(data)
    return total


def regular_bytes(tar_path: Path) -> int:
    with tarfile.open(tar_path) as tar:
        return sum(m.size for m in tar if m.isreg())


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(MIB):
            h.update(chunk)
    return h.hexdigest()


def docker_archive(out: Path, layers: list[Path], tag: str) -> None:
    """A docker-archive (as ``docker save`` writes it) of ``layers`` (plain tars), tagged ``tag``."""
    arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
    diff_ids = [f"sha256:{_sha256_file(p)}" for p in layers]
    config = json.dumps({"architecture": arch, "os": "linux", "config": {"Cmd": ["/bin/sh"]},
                         "rootfs": {"type": "layers", "diff_ids": diff_ids},
                         "history": [{"created": "2000-01-01T00:00:00Z", "created_by": f"bench layer {i}"}
                                     for i in range(len(layers))]}).encode()
    cname = hashlib.sha256(config).hexdigest() + ".json"
    names = [f"{d[7:]}/layer.tar" for d in diff_ids]
    manifest = json.dumps([{"Config": cname, "RepoTags": [tag], "Layers": names}]).encode()
    with tarfile.open(out, "w") as tar:
        _add(tar, cname, config)
        for name, layer in zip(names, layers):
            info = tar.gettarinfo(str(layer), arcname=name)
            info.mtime, info.uid, info.gid, info.uname, info.gname = MTIME, 0, 0, "", ""
            with open(layer, "rb") as f:
                tar.addfile(info, f)
        _add(tar, "manifest.json", manifest)


class BenchImage:
    """The two images' docker-archives and what is known of them."""

    def __init__(self, work: Path, size_mb: int, busybox_rootfs: Path) -> None:
        base = work / "layer0.tar"
        subprocess.run([sys.executable, str(busybox_rootfs), str(base)], check=True, stdout=subprocess.DEVNULL)
        per = max(4 * MIB, (size_mb * 1_000_000 - regular_bytes(base)) // 4)
        paths, sums = [base], []
        self.unpacked = regular_bytes(base)
        for seed in range(1, 4):
            paths.append(work / f"layer{seed}.tar")
            self.unpacked += data_layer(paths[-1], seed, per, sums)
        last, other = work / "layer4.tar", work / "layer5.tar"
        self._last_layer(other, 5, per, list(sums))
        self.unpacked += self._last_layer(last, 4, per, sums)
        self.first, self.second = work / "first.tar", work / "second.tar"
        docker_archive(self.first, [*paths, last], "bench/pull:1")
        docker_archive(self.second, [*paths, other], "bench/pull2:1")
        for p in (*paths, last, other):
            p.unlink()

    @staticmethod
    def _last_layer(path: Path, seed: int, size: int, sums: list[tuple[str, str]]) -> int:
        """A data layer with ``/bench/SHA256SUMS`` of every data file of the image."""
        plain = path.with_suffix(".part")
        total = data_layer(plain, seed, size, sums)
        listing = "".join(f"{h}  {name}\n" for h, name in sums).encode()
        with tarfile.open(plain) as src, tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
            for m in src:
                tar.addfile(m, src.extractfile(m) if m.isreg() else None)
            _add_dir(tar, "bench")
            _add(tar, "bench/SHA256SUMS", listing)
        plain.unlink()
        return total + len(listing)


def start_registry(workdir: Path, repo: Path):
    """Debian's docker-registry on 127.0.0.1 (tests/registry_server.py), storage in ``workdir``."""
    sys.path.insert(0, str(repo))
    from tests.registry_server import REGISTRY_BIN, RegistryServer
    if not os.path.exists(REGISTRY_BIN):
        raise RuntimeError("docker-registry is not installed (Debian package docker-registry)")
    workdir.mkdir(parents=True, exist_ok=True)
    server = RegistryServer(workdir)
    server.start()
    return server


def _du(cmd: list[str], env: dict[str, str], root: Path) -> int:
    """Bytes of disk (allocated blocks) under ``root``, counted in the engine's user namespace."""
    proc = subprocess.run([*cmd, "unshare", "du", "-s", "-B1", str(root)], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"du of {root} failed: {proc.stderr.strip()[-300:]}")
    return int(proc.stdout.split()[0])


def _run(cmd: list[str], env: dict[str, str], what: str) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{what} failed ({proc.returncode}): {proc.stderr.strip()[-400:]}")
    return elapsed


class Engine:
    """How one engine pulls, pushes, measures and removes a store of its own."""

    name = ""

    def __init__(self, cmd: list[str], env: dict[str, str]) -> None:
        self.cmd, self.env = cmd, env

    def store_cmd(self, root: Path) -> list[str]:
        raise NotImplementedError

    def pull(self, root: Path, ref: str) -> float:
        raise NotImplementedError

    def push(self, root: Path, ref: str, dest: str) -> float:
        raise NotImplementedError

    loaded_name = "bench/pull:1"

    def load(self, root: Path, archive: Path) -> None:
        _run([*self.store_cmd(root), "load", "-q", "-i", str(archive)], self.env, f"{self.name} load")

    def disk(self, root: Path) -> int:
        return _du(self.store_cmd(root), self.env, root)

    def remove(self, root: Path) -> None:
        subprocess.run([*self.store_cmd(root), "unshare", "rm", "-rf", str(root)], env=self.env,
                       capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


class Rootless(Engine):
    name = "rootless"

    def store_cmd(self, root):
        return [*self.cmd, "--root", str(root)]

    def pull(self, root, ref):
        return _run([*self.store_cmd(root), "pull", "-q", ref], self.env, f"rootless pull {ref}")

    def push(self, root, ref, dest):
        return _run([*self.store_cmd(root), "push", "-q", ref, dest], self.env, f"rootless push {ref}")


class Podman(Engine):
    name = "podman"
    loaded_name = "localhost/bench/pull:1"

    def __init__(self, cmd, env, data_home: Path) -> None:
        super().__init__(cmd, env)
        self.data_home = data_home

    def store_cmd(self, root):
        return [*self.cmd, "--root", str(root), "--runroot", f"{root}-run"]

    def _forget(self) -> None:
        # its blob-info cache (where each blob was seen): nothing carried from one run to the next
        shutil.rmtree(self.data_home / "containers" / "cache", ignore_errors=True)

    def pull(self, root, ref):
        self._forget()
        return _run([*self.store_cmd(root), "pull", "-q", "--tls-verify=false", ref], self.env, f"podman pull {ref}")

    def push(self, root, ref, dest):
        self._forget()
        return _run([*self.store_cmd(root), "push", "-q", "--tls-verify=false", ref, f"docker://{dest}"], self.env,
                    f"podman push {ref}")

    def remove(self, root):
        super().remove(root)
        shutil.rmtree(f"{root}-run", ignore_errors=True)


def _with_bytecode(env: dict[str, str], directory: Path) -> dict[str, str]:
    env = {k: v for k, v in env.items() if k != "PYTHONDONTWRITEBYTECODE"}
    return {**env, "PYTHONPYCACHEPREFIX": str(directory)}


def _setup_rootless(rl: list[str], work: Path, cleanups: list[Callable[[], object]]) -> Rootless:
    run_dir = work / "rootless-run"
    run_dir.mkdir(mode=0o700)
    env = {k: v for k, v in os.environ.items() if k != "ROOTLESS_ROOT"}
    env = _with_bytecode({**env, "XDG_RUNTIME_DIR": str(run_dir), "ROOTLESS_NO_SINGLE_UID_WARNING": "1"},
                         work / "pycache-rootless")

    def stop() -> None:
        for pidfile in glob.glob(str(run_dir / "rootless" / "*.pid")):      # the per-user fork server
            try:
                os.kill(int(Path(pidfile).read_text()), signal.SIGTERM)
            except (OSError, ValueError):
                pass
    cleanups.append(stop)
    return Rootless(rl, env)


def _setup_podman(work: Path, cleanups: list[Callable[[], object]]) -> Podman | str:
    if not shutil.which("podman"):
        return "not installed (Debian package podman)"
    xdg, data = work / "podman-xdg", work / "podman-data"
    xdg.mkdir(mode=0o700)
    data.mkdir(mode=0o700)
    env = {**os.environ, "XDG_RUNTIME_DIR": str(xdg), "XDG_DATA_HOME": str(data)}
    pod = ["podman", "--runtime", "runc", "--cgroup-manager", "cgroupfs", "--events-backend", "file",
           "--storage-driver", "overlay"]

    def stop() -> None:
        try:
            os.kill(int((xdg / "libpod" / "tmp" / "pause.pid").read_text()), signal.SIGTERM)
        except (OSError, ValueError):
            pass
    cleanups.append(stop)
    version = subprocess.run([*pod, "--version"], env=env, capture_output=True, text=True).stdout.strip()
    podman = Podman(pod, env, data)
    podman.version = version.split()[-1] if version else "(version unknown)"
    return podman


def bench_pull(runs: int, work: Path, size_mb: int, rl: list[str], repo: Path) -> dict:
    t0 = time.perf_counter()
    image = BenchImage(work, size_mb, repo / "scripts" / "busybox-rootfs")
    made = time.perf_counter() - t0
    notes = [f"load average at the start: {' '.join(f'{x:.2f}' for x in os.getloadavg())} ({os.cpu_count()} CPUs)"]
    cleanups: list[Callable[[], object]] = []
    servers = []
    times: dict[str, list[float]] = {}
    disk: dict[str, list[int]] = {}
    try:
        source = start_registry(work / "registry", repo)
        servers.append(source)
        engines: list[Engine] = [_setup_rootless(rl, work, cleanups)]
        got = _setup_podman(work, cleanups)
        if isinstance(got, str):
            notes.append(f"podman unavailable: {got}")
        else:
            engines.append(got)
            notes.append(f"podman {got.version}: kernel overlay storage driver, runc; --tls-verify=false")
        seeder, seed = engines[0], work / "seed"
        one, two = f"{source.host}/bench/pull:1", f"{source.host}/bench/pull2:1"
        t0 = time.perf_counter()
        for archive, tag, dest in ((image.first, "bench/pull:1", one), (image.second, "bench/pull2:1", two)):
            _run([*seeder.store_cmd(seed), "load", "-q", "-i", str(archive)], seeder.env, "rootless load (seed)")
            seeder.push(seed, tag, dest)
        seeded = time.perf_counter() - t0
        seeder.remove(seed)
        compressed = _registry_bytes(source.host, "bench/pull", "1")
        notes.append(f"made the image in {made:.1f} s; load + push of both images once (rootless, gzip) "
                     f"{seeded:.1f} s; pulled: {compressed / 1e6:.1f} MB of gzip layers")
        skopeo = shutil.which("skopeo")
        counter = 0
        sent: dict[str, int] = {}

        def push_to_empty_registry(e: Engine, root: Path, name: str, repository: str) -> tuple[float, int]:
            """Seconds ``e`` takes to push ``name`` to a registry started empty for it; bytes of layers sent."""
            target = start_registry(work / f"push-{counter}", repo)
            servers.append(target)
            try:
                took = e.push(root, name, f"{target.host}/{repository}:1")
                return took, _registry_bytes(target.host, repository, "1")
            finally:
                target.stop()
                shutil.rmtree(work / f"push-{counter}", ignore_errors=True)

        def one_round(record: bool) -> None:
            nonlocal counter
            for e in engines:
                counter += 1
                root = work / f"store-{e.name}-{counter}"
                try:
                    pulled = e.pull(root, one)
                    used = e.disk(root)
                    again = e.pull(root, two)
                    pushed, _ = push_to_empty_registry(e, root, one, f"bench/pushed-{counter}")
                finally:
                    e.remove(root)
                loaded = work / f"loaded-{e.name}-{counter}"     # a store of its own: no blob of the pull
                try:
                    e.load(loaded, image.first)
                    compressing, sent[e.name] = push_to_empty_registry(e, loaded, e.loaded_name,
                                                                       f"bench/loaded-{counter}")
                finally:
                    e.remove(loaded)
                if record:
                    times.setdefault(f"{e.name} pull", []).append(pulled)
                    times.setdefault(f"{e.name} pull, 4 of 5 layers present", []).append(again)
                    times.setdefault(f"{e.name} push", []).append(pushed)
                    times.setdefault(f"{e.name} push of the loaded image (compressing)", []).append(compressing)
                    disk.setdefault(f"{e.name} store after pull", []).append(used)
            if skopeo:
                counter += 1
                target = work / f"skopeo-{counter}"
                t = _run([skopeo, "copy", "-q", "--src-tls-verify=false", f"docker://{one}", f"dir:{target}"],
                         {**os.environ, "XDG_RUNTIME_DIR": str(work / "podman-xdg")}, "skopeo copy")
                shutil.rmtree(target, ignore_errors=True)
                if record:
                    times.setdefault("skopeo copy to dir (no unpacking)", []).append(t)

        one_round(record=False)                 # warm-up: caches, podman's pause process
        for _ in range(runs):
            one_round(record=True)
    finally:
        for s in servers:
            s.stop()
        for cleanup in cleanups:
            cleanup()
    medians = {name: statistics.median(t) for name, t in times.items()}
    throughput = {n: compressed / 1e6 / m for n, m in medians.items() if "4 of 5" not in n}
    ratios: dict[str, float] = {}
    for what in ("pull", "pull, 4 of 5 layers present", "push", "push of the loaded image (compressing)"):
        if f"rootless {what}" in medians and f"podman {what}" in medians:
            ratios[f"rootless/podman {what}"] = medians[f"rootless {what}"] / medians[f"podman {what}"]
    sizes = {"image unpacked (its regular files)": (image.unpacked, 1.0),
             "image compressed (its gzip layers)": (compressed, compressed / image.unpacked)}
    for name, values in disk.items():
        used = int(statistics.median(values))
        sizes[f"{name} (du)"] = (used, used / image.unpacked)
    goals = [("pull <= 0.8x podman", ratios.get("rootless/podman pull"), 0.8),
             ("push <= 1.0x podman", ratios.get("rootless/podman push"), 1.0),
             ("push of the loaded image <= 1.0x podman",
              ratios.get("rootless/podman push of the loaded image (compressing)"), 1.0),
             ("disk <= 1.1x unpacked", sizes.get("rootless store after pull (du)", (0, None))[1], 1.1)]
    for what, value, limit in goals:
        if value is not None:
            notes.append(f"goal {what}: {value:.2f}x, {'met' if value <= limit else 'MISSED'}")
    for name, size in sent.items():
        notes.append(f"{name} push of the loaded image: {size / 1e6:.2f} MB of layers sent")
    notes.append(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return {"section": "pull",
            "what": f"5-layer image, {image.unpacked / 1e6:.0f} MB unpacked, {compressed / 1e6:.0f} MB gzip, "
                    f"from/to docker-registry on 127.0.0.1; cold store; push to an empty registry "
                    f"(MB/s of gzip layers)",
            "runs": runs, "median_s": medians, "throughput_MBps": throughput, "ratios": ratios,
            "sizes": sizes, "notes": notes}


def _registry_bytes(host: str, repository: str, tag: str) -> int:
    """The sum of the layer sizes in the manifest of ``repository:tag`` at ``host`` (HTTP)."""
    import urllib.request
    req = urllib.request.Request(f"http://{host}/v2/{repository}/manifests/{tag}", headers={"Accept": ", ".join((
        "application/vnd.oci.image.manifest.v1+json", "application/vnd.docker.distribution.manifest.v2+json"))})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))     # 127.0.0.1 only, never a proxy
    with opener.open(req, timeout=30) as resp:
        return sum(layer["size"] for layer in json.loads(resp.read())["layers"])


if __name__ == "__main__":        # for a quick look: python3 scripts/bench_pull.py [MB]
    with tempfile.TemporaryDirectory(prefix="rootless-bench-") as tmp:
        img = BenchImage(Path(tmp), int(sys.argv[1]) if len(sys.argv) > 1 else 200,
                         Path(__file__).resolve().parent / "busybox-rootfs")
        print(f"unpacked {img.unpacked / 1e6:.1f} MB; archive {img.first.stat().st_size / 1e6:.1f} MB")
