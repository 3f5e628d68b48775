"""The ``api`` section of scripts/bench: ``rootless system service`` beside ``podman system service``,
both driven by the same ``docker`` CLI through their sockets.

* ``docker run --rm --network none IMG true``: a whole run as Docker's CLI makes it (create,
  attach, start, wait, removal), on the busybox test image (scripts/busybox-rootfs) loaded into
  both; and the same without attach: ``docker run -d``, ``docker wait``, ``docker rm``;
* ``docker ps -a`` and ``docker ps`` with 50 containers in the store (40 created, not started,
  10 running ``sleep``), made with each engine's own command line;
* the memory of the idle service after a few requests (``version``, ``info``, ``ps -a``,
  ``images``, the runs above): VmRSS, and PSS and USS (private memory, what one more service
  costs) from /proc/PID/smaps_rollup.

Runs (``--runs`` / 3, at least 5) are interleaved (rootless, podman, rootless, ...) after three
warm-up runs each; medians and rootless/podman ratios are printed, and each goal of issue 15
(run <= 1.0x podman, ps of 50 containers <= 0.5x podman, idle RSS <= 30 MiB) as met or MISSED.

The docker CLI: ``$ROOTLESS_BENCH_DOCKER``, else the first ``docker`` on PATH, else the client
scripts/test unpacks (/var/tmp/rootless-ci/docker-cli).  Podman (Debian ``podman``) runs rootless
as the same user with runc, cgroupfs, its own --root/--runroot and XDG_RUNTIME_DIR (nothing is
shared with the user's own podman; its pause process is stopped afterwards).  A contender that
cannot work is reported as ``unavailable: <why>``.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

CREATED, RUNNING = 40, 10
CI_DOCKER = "/var/tmp/rootless-ci/docker-cli/usr/bin/docker"


def find_docker() -> str | None:
    given = os.environ.get("ROOTLESS_BENCH_DOCKER")
    if given:
        return given
    return shutil.which("docker") or (CI_DOCKER if os.access(CI_DOCKER, os.X_OK) else None)


def _ping(sock: Path) -> bool:
    import socket
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(5)
    try:
        s.connect(str(sock))
        s.sendall(b"GET /_ping HTTP/1.1\r\nHost: d\r\nConnection: close\r\n\r\n")
        return s.recv(100).startswith(b"HTTP/1.1 200")
    except OSError:
        return False
    finally:
        s.close()


def _memory(pid: int) -> dict[str, float]:
    """VmRSS, PSS and USS (Private_Clean + Private_Dirty) of one process, in MiB."""
    out = {"rss": 0.0, "pss": 0.0, "uss": 0.0}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    out["rss"] = int(line.split()[1]) / 1024
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    out["pss"] += int(line.split()[1]) / 1024
                elif line.startswith(("Private_Clean:", "Private_Dirty:")):
                    out["uss"] += int(line.split()[1]) / 1024
    except OSError:
        pass
    return out


def _threads(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/task"))
    except OSError:
        return 0


class Engine:
    """One service: its own command line (to fill the store), the socket, the docker CLI's env."""

    def __init__(self, name: str, cli: list[str], env: dict[str, str], image: str, sock: Path, docker: str,
                 config: Path) -> None:
        self.name, self.cli, self.env, self.image, self.sock = name, cli, env, image, sock
        self.docker = docker
        self.docker_env = {**env, "DOCKER_HOST": f"unix://{sock}", "DOCKER_CONFIG": str(config),
                           "DOCKER_CLI_HINTS": "false", "DOCKER_BUILDKIT": "0"}
        self.proc: subprocess.Popen | None = None
        self.note = ""

    def start(self, cmd: list[str], log: Path) -> None:
        self.proc = subprocess.Popen(cmd, env=self.env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=open(log, "ab"))
        deadline = time.monotonic() + 60
        while not _ping(self.sock):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} service did not answer /_ping: {log.read_text()[-300:]}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def service_pid(self) -> int:
        return self.proc.pid if self.proc else 0

    def own(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run([*self.cli, *args], env=self.env, stdin=subprocess.DEVNULL, capture_output=True,
                              text=True)
        if check and proc.returncode != 0:
            raise RuntimeError(f"{self.name}: {' '.join(args[:2])} failed: {proc.stderr.strip()[-300:]}")
        return proc

    def timed(self, *args: str) -> float:
        t0 = time.perf_counter()
        proc = subprocess.run([self.docker, *args], env=self.docker_env, stdin=subprocess.DEVNULL,
                              capture_output=True, text=True)
        elapsed = time.perf_counter() - t0
        if proc.returncode != 0:
            raise RuntimeError(f"docker {' '.join(args)} against {self.name} failed ({proc.returncode}): "
                               f"{proc.stderr.strip()[-300:]}")
        return elapsed


def _setup_rootless(rl: list[str], work: Path, tar: Path, docker: str,
                    cleanups: list[Callable[[], object]]) -> Engine:
    run_dir = work / "rootless-run"
    run_dir.mkdir(mode=0o700)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env = {**env, "ROOTLESS_ROOT": str(work / "store"), "XDG_RUNTIME_DIR": str(run_dir),
           "ROOTLESS_NO_SINGLE_UID_WARNING": "1", "ROOTLESS_PULL_POLICY": "never",
           "PYTHONPYCACHEPREFIX": str(work / "pycache-rootless")}     # as an installed copy has its bytecode
    sock_dir = work / "rootless-sock"
    sock_dir.mkdir(mode=0o700)
    eng = Engine("rootless", rl, env, "bench/busybox", sock_dir / "docker.sock", docker, work / "docker-config")

    def stop() -> None:
        eng.stop()
        ids = eng.own("ps", "-a", "-q", check=False).stdout.split()
        if ids:
            eng.own("rm", "-f", *ids, check=False)
        subprocess.run([*rl, "unshare", "rm", "-rf", str(work / "store")], env=env)
        for pidfile in glob.glob(str(run_dir / "rootless" / "*.pid")):      # the per-user fork server
            try:
                os.kill(int(Path(pidfile).read_text()), signal.SIGTERM)
            except (OSError, ValueError):
                pass
    cleanups.append(stop)
    eng.own("import", "-c", 'CMD ["/bin/sh"]', str(tar), "bench/busybox")
    eng.own("save", "-o", str(work / "busybox-docker.tar"), "bench/busybox")
    eng.start([*rl, "system", "service", "--socket", str(eng.sock), "--timeout", "0"], work / "rootless-service.log")
    return eng


def _setup_podman(work: Path, docker: str, cleanups: list[Callable[[], object]]) -> Engine | str:
    if not shutil.which("podman"):
        return "not installed (Debian package podman)"
    xdg = work / "podman-xdg"
    xdg.mkdir(mode=0o700)
    env = {**os.environ, "XDG_RUNTIME_DIR": str(xdg)}
    pod = ["podman", "--runtime", "runc", "--cgroup-manager", "cgroupfs", "--events-backend", "file",
           "--root", str(work / "podman-root"), "--runroot", str(work / "podman-run"),
           "--storage-driver", "overlay"]       # kernel overlay; left to choose, it took vfs here
    eng = Engine("podman", pod, env, "localhost/bench/busybox:latest", work / "podman.sock", docker,
                 work / "docker-config")

    def stop_pause() -> None:
        try:
            os.kill(int((xdg / "libpod" / "tmp" / "pause.pid").read_text()), signal.SIGTERM)
        except (OSError, ValueError):
            pass

    def stop() -> None:
        eng.stop()
        eng.own("rm", "-af", "-t", "0", check=False)
        stop_pause()        # its mount namespace holds the storage's overlay mounts
        subprocess.run([*pod, "unshare", "rm", "-rf", str(work / "podman-root"), str(work / "podman-run")], env=env,
                       capture_output=True)
        stop_pause()        # unshare's
    cleanups.append(stop)
    load = subprocess.run([*pod, "load", "-i", str(work / "busybox-docker.tar")], env=env, capture_output=True,
                          text=True)
    if load.returncode != 0:
        return f"podman load failed: {load.stderr.strip()[-200:]}"
    version = subprocess.run([*pod, "--version"], env=env, capture_output=True, text=True).stdout.strip()
    eng.start([*pod, "system", "service", "--time", "0", f"unix://{eng.sock}"], work / "podman-service.log")
    eng.note = f"{version}: runc, cgroupfs, kernel overlay storage, events to a file"
    return eng


def _fill(eng: Engine) -> None:
    """40 created containers and 10 running ``sleep``, made with the engine's own command line."""
    for i in range(CREATED):
        eng.own("create", "--network", "none", "--name", f"bench-created-{i}", eng.image, "true")
    for i in range(RUNNING):
        eng.own("run", "-d", "--network", "none", "--name", f"bench-sleep-{i}", eng.image, "sleep", "3600")


def bench_api(runs: int, work: Path, rl: list[str], busybox_rootfs: Path) -> dict:
    tar = work / "busybox.tar"
    subprocess.run([sys.executable, str(busybox_rootfs), str(tar)], check=True, stdout=subprocess.DEVNULL)
    notes = [f"load average at the start: {' '.join(f'{x:.2f}' for x in os.getloadavg())} ({os.cpu_count()} CPUs)"]
    medians: dict[str, float] = {}
    ratios: dict[str, float] = {}
    docker = find_docker()
    if not docker:
        return {"section": "api", "what": "docker CLI against the services", "runs": runs, "median_s": {},
                "ratios": {}, "notes": ["unavailable: no docker CLI (set ROOTLESS_BENCH_DOCKER, or install "
                                        "Debian's docker.io client)"]}
    (work / "docker-config").mkdir()
    version = subprocess.run([docker, "--version"], capture_output=True, text=True).stdout.strip()
    notes.append(f"client: {docker} ({version})")
    cleanups: list[Callable[[], object]] = []
    times: dict[str, list[float]] = {}
    memory: dict[str, dict[str, float]] = {}
    try:
        engines = [_setup_rootless(rl, work, tar, docker, cleanups)]
        got = _setup_podman(work, docker, cleanups)
        if isinstance(got, str):
            notes.append(f"podman unavailable: {got}")
        else:
            engines.append(got)
            notes.append(got.note)
        for eng in engines:
            memory[f"{eng.name} fresh"] = _memory(eng.service_pid())
        run = lambda eng: eng.timed("run", "--rm", "--network", "none", eng.image, "true")

        def detached(eng: Engine) -> float:         # the same without attach: three CLI calls
            name = f"bench-d-{time.monotonic_ns()}"
            return (eng.timed("run", "-d", "--network", "none", "--name", name, eng.image, "true")
                    + eng.timed("wait", name) + eng.timed("rm", name))
        ps_all = lambda eng: eng.timed("ps", "-a")
        ps = lambda eng: eng.timed("ps")
        for what, fn in (("run --rm true", run), ("run -d + wait + rm", detached)):
            live = []
            for eng in engines:                              # warm-up: caches, first-run set-up
                try:
                    for _ in range(3):
                        fn(eng)
                    live.append(eng)
                except RuntimeError as e:
                    notes.append(f"{eng.name} {what} unavailable: {e}")
            for _ in range(runs):
                for eng in live:
                    times.setdefault(f"{eng.name} {what}", []).append(fn(eng))
        for eng in engines:
            t0 = time.perf_counter()
            _fill(eng)
            notes.append(f"{eng.name}: {CREATED} created + {RUNNING} running containers made with its own CLI in "
                         f"{time.perf_counter() - t0:.1f} s")
        for what, fn in (("ps -a (50 containers)", ps_all), (f"ps ({RUNNING} running of 50)", ps)):
            live = []
            for eng in engines:
                try:
                    for _ in range(3):
                        fn(eng)
                    live.append(eng)
                except RuntimeError as e:
                    notes.append(f"{eng.name} {what} unavailable: {e}")
            for _ in range(runs):
                for eng in live:
                    times.setdefault(f"{eng.name} {what}", []).append(fn(eng))
        for eng in engines:                                  # a few more requests, then idle
            for args in (("version",), ("info",), ("images",), ("ps", "-a")):
                try:
                    eng.timed(*args)
                except RuntimeError as e:
                    notes.append(f"{eng.name}: {e}")
        time.sleep(15)                                       # idle: the service trims its heap after 11 s
        for eng in engines:
            memory[f"{eng.name} idle"] = _memory(eng.service_pid())
            notes.append(f"{eng.name} service idle: {_threads(eng.service_pid())} threads")
    finally:
        for cleanup in cleanups:
            cleanup()
    medians = {name: statistics.median(t) for name, t in times.items()}
    for what in ("run --rm true", "run -d + wait + rm", "ps -a (50 containers)", f"ps ({RUNNING} running of 50)"):
        if f"rootless {what}" in medians and f"podman {what}" in medians:
            ratios[f"rootless/podman {what}"] = medians[f"rootless {what}"] / medians[f"podman {what}"]
    for name, m in memory.items():
        notes.append(f"{name} service memory: {m['rss']:.1f} MiB RSS, {m['pss']:.1f} MiB PSS, "
                     f"{m['uss']:.1f} MiB USS")
    goals = [("docker run --rm <= 1.0x podman's service", ratios.get("rootless/podman run --rm true"), 1.0),
             ("docker ps -a with 50 containers <= 0.5x podman's service",
              ratios.get("rootless/podman ps -a (50 containers)"), 0.5)]
    for what, value, limit in goals:
        if value is not None:
            notes.append(f"goal {what}: {value:.2f}x, {'met' if value <= limit else 'MISSED'}")
    idle = memory.get("rootless idle")
    if idle:
        notes.append(f"goal idle service RSS <= 30 MiB: {idle['rss']:.1f} MiB, {'met' if idle['rss'] <= 30 else 'MISSED'}")
    notes.append(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return {"section": "api", "what": "the docker CLI against rootless system service and podman system service "
                                      "(unix sockets): run --rm, ps with 50 containers, idle memory",
            "runs": runs, "median_s": medians, "ratios": ratios, "notes": notes}
