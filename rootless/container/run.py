"""``rootless run``: from an image and Docker's flags to a sandbox spec, then run it."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

from .. import paths
from . import procs
from .records import Containers, Record, claim
from ..errors import CommandError, RootlessError, SandboxError, UsageError
from ..network import NetworkSpec
from .rootfs import ContainerRootfs
from ..sandbox import caps, channel, container, idmap, libc, mounts
from ..image.store import Image, Store

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass
class RunOptions:
    image: str
    command: list[str] = field(default_factory=list)
    rm: bool = False
    interactive: bool = False
    tty: bool = False
    env: list[str] = field(default_factory=list)
    env_files: list[str] = field(default_factory=list)
    workdir: str | None = None
    user: str | None = None
    hostname: str | None = None
    entrypoint: str | list[str] | None = None            # a list: Docker's API form ([] or [""] clears it)
    name: str | None = None
    read_only: bool = False
    cap_add: list[str] = field(default_factory=list)
    cap_drop: list[str] = field(default_factory=list)
    detach: bool = False
    storage_driver: str = "auto"
    network: str | None = None
    publish: list[str] = field(default_factory=list)
    add_host: list[str] = field(default_factory=list)
    memory: str | None = None
    memory_swap: str | None = None
    cpus: str | None = None
    cpu_shares: str | None = None
    pids_limit: str | None = None
    cpuset_cpus: str | None = None
    cgroup_parent: str | None = None
    restart: str = "no"
    userns: str = ""                                     # "" or "keep-id"
    network_alias: list[str] = field(default_factory=list)
    stop_signal: str | None = None
    volume: list[str] = field(default_factory=list)      # -v
    mount: list[str] = field(default_factory=list)       # --mount
    tmpfs: list[str] = field(default_factory=list)       # --tmpfs
    security_opt: list[str] = field(default_factory=list)
    privileged: bool = False
    read_only_tmpfs: bool = False
    preserve_fds: int = 0
    label: list[str] = field(default_factory=list)
    label_file: list[str] = field(default_factory=list)
    dns: list[str] = field(default_factory=list)
    dns_search: list[str] = field(default_factory=list)
    dns_option: list[str] = field(default_factory=list)
    group_add: list[str] = field(default_factory=list)
    ulimit: list[str] = field(default_factory=list)
    sysctl: list[str] = field(default_factory=list)
    init: bool = False
    publish_all: bool = False
    domainname: str | None = None
    shm_size: str | None = None
    log_driver: str | None = None
    log_opt: list[str] = field(default_factory=list)
    health_cmd: str | None = None
    health_interval: str | None = None
    health_timeout: str | None = None
    health_retries: int | None = None
    health_start_period: str | None = None
    no_healthcheck: bool = False
    device: list[str] = field(default_factory=list)      # --device: host nodes or CDI names
    gpus: str | None = None                              # --gpus all: nvidia.com/gpu=all
    as_me: bool = False                                  # --as-me: expanded by plan() (runflags.as_me)
    mpi: bool = False                                    # --mpi: expanded by plan() (runflags.mpi)
    pid: str | None = None                               # --pid host: the host's PID namespace
    ipc: str | None = None                               # --ipc host: the host's IPC namespace, /dev/shm
    host_env: list[str] = field(default_factory=list)    # KEY=VALUE passed by --as-me, below the image's
    env_host: bool = False                               # --env-host: expanded by plan() into env
    expose: list[str] = field(default_factory=list)     # PORT[/PROTO] exposed without publishing (inspect)
    stop_timeout: int | None = None                      # seconds 'stop' waits by default (Docker's --stop-timeout)


def parse_env(items: list[str], env_files: list[str]) -> list[tuple[str, str]]:
    """Docker's ``--env-file`` then ``-e`` entries; ``KEY`` alone takes the caller's value if set."""
    lines: list[str] = []
    for path in env_files:
        try:
            with open(path) as f:
                lines += [ln.lstrip().rstrip("\n") for ln in f if ln.strip() and not ln.lstrip().startswith("#")]
        except OSError as e:
            raise UsageError(f"cannot read env file {path}: {e.strerror}") from None
    out = []
    for item in lines + list(items):
        key, sep, value = item.partition("=")
        key = key.strip() if not sep else key
        if not key or any(c.isspace() for c in key):
            raise UsageError(f"invalid environment variable '{item}': use KEY=VALUE")
        if not sep:
            if key not in os.environ:
                continue
            value = os.environ[key]
        out.append((key, value))
    return out


HOST_NAME_MAX = 64   # bytes, Linux's limit for sethostname(2)


def check_hostname(name: str, flag: str = "--hostname") -> None:
    """Refuse a --hostname (--domainname) the kernel would refuse, before anything is created."""
    size = len(name.encode())
    if size > HOST_NAME_MAX:
        raise UsageError(f"the {flag} '{name[:20]}...' is {size} bytes long, but Linux allows at most "
                         f"{HOST_NAME_MAX}: give a shorter name")
    if "\0" in name or "/" in name or any(c.isspace() for c in name):
        raise UsageError(f"invalid {flag} {name!r}: use letters, digits, '-' and '.' (no spaces or '/')")


def merge_env(image_env: list[str], extra: list[tuple[str, str]], hostname: str, tty: bool,
              passed: list[str] = (), devices: list[tuple[str, str]] = ()) -> dict[str, str]:
    """Docker's order: the engine's defaults, then the image's ENV, then -e/--env-file.
    ``passed``: the caller's environment (--as-me), under the image's, as Apptainer orders
    them; ``devices``: what CDI specs set, over the image's and under -e."""
    env: dict[str, str] = {"PATH": DEFAULT_PATH, "HOSTNAME": hostname}
    if tty:
        env["TERM"] = "xterm"
    for item in passed:
        key, _, value = item.partition("=")
        env[key] = value
    env["PATH"], env["HOSTNAME"] = DEFAULT_PATH, hostname
    for item in image_env:
        key, _, value = item.partition("=")
        env[key] = value
    for key, value in devices:
        env[key] = value
    for key, value in extra:
        env[key] = value
    return env


def _etc_files(directory: str, hostname: str, net: "NetworkSpec",
               extra_hosts: list[tuple[str, str]], network_hosts: str = "",
               resolv_extra: str = "") -> tuple[tuple[str, str], ...]:
    from ..network import CONTAINER_IP
    own_ip = CONTAINER_IP if net.needs_helper else "127.0.1.1"
    hosts = (f"127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
             f"{own_ip}\t{hostname}\n" + "".join(f"{addr}\t{name}\n" for name, addr in extra_hosts)
             + network_hosts)
    try:
        with open("/etc/resolv.conf") as f:
            host_resolv = f.readlines()
    except OSError:
        host_resolv = []
    if net.mode == "host":
        resolv = "".join(host_resolv)
    else:
        # The host's search domains and options; its nameservers are unreachable from the
        # container (a loopback one) or replaced by the stack's DNS forwarder.
        resolv = "".join(ln for ln in host_resolv if not ln.startswith("nameserver"))
        if net.dns_server and "nameserver" not in resolv_extra:
            resolv += f"nameserver {net.dns_server}\n"
    if resolv_extra:       # --dns replaces the nameservers, --dns-search/--dns-option those lines
        kinds = {ln.split()[0] for ln in resolv_extra.splitlines()}
        resolv = "".join(ln for ln in resolv.splitlines(True) if ln.split()[:1] and ln.split()[0] not in kinds
                         and not (ln.split()[0] == "domain" and "search" in kinds)) + resolv_extra
    out = []
    for target, text in (("/etc/hosts", hosts), ("/etc/hostname", hostname + "\n"),
                         ("/etc/resolv.conf", resolv)):
        path = os.path.join(directory, os.path.basename(target))
        with open(path, "w") as f:
            f.write(text)
        out.append((target, path))
    return tuple(out)


def single_uid_warning(maps: idmap.IdMaps) -> list[str]:
    """What the face tells a user without a subordinate id range (once per container)."""
    if maps.single and not os.environ.get("ROOTLESS_NO_SINGLE_UID_WARNING"):
        return [f"{maps.why_single}; the container gets a single uid/gid mapping "
                "(only uid 0 exists inside). For the full range, an administrator can run "
                "'usermod --add-subuids 100000-165535 --add-subgids 100000-165535 USER' "
                "(see docs/troubleshooting.md)"]
    return []


def parse_restart(policy: str) -> tuple[str, int]:
    """Docker's --restart: no, always, unless-stopped, on-failure[:MAX]."""
    name, _, count = policy.partition(":")
    if name not in ("no", "always", "unless-stopped", "on-failure") or (count and (
            name != "on-failure" or not count.isdigit())):
        raise UsageError(f"invalid --restart '{policy}': use no, always, unless-stopped or on-failure[:MAX]")
    return name, int(count or 0)


def _to_stderr(warning: str) -> None:
    """Where warnings go when the caller gives no place (a monitor: its stderr)."""
    sys.stderr.write(f"rootless: warning: {warning}\n")


@dataclass
class Plan:
    """A container's options checked against the image and the host: what ``create`` records
    and ``start`` runs.  Made again from the record's saved options by each start."""
    opts: RunOptions
    image: Image
    args: list[str]
    workdir: str
    maps: idmap.IdMaps
    stored: idmap.IdMaps                 # the maps the image's layers were unpacked through
    passwd_entry: str | None
    sec: object                          # security.SecurityOptions
    wanted_caps: frozenset[str]
    seccomp_prog: bytes | None
    extra_env: list[tuple[str, str]]
    net: NetworkSpec
    extra_hosts: list[tuple[str, str]]
    user_net: object | None              # network.user_networks.UserNetworkPlan
    shared: object | None                # --network container:NAME: that container's record
    run_base: str
    cg_setup: object                     # cgroups.CgroupSetup
    limits: object                       # cgroups.Limits
    vols: object                         # volumes.VolumePlan
    policy: str
    max_restarts: int
    warnings: list[str] = field(default_factory=list)   # for the face to print
    labels: dict[str, str] = field(default_factory=dict)
    resolv_extra: str = ""               # --dns, --dns-search, --dns-option lines
    rlimits: tuple[tuple[int, int, int], ...] = ()
    sysctls: tuple[tuple[str, str], ...] = ()
    init: str | None = None              # --init: the host's init program
    shm_size: int = 64 << 20
    log: object = None                   # container.logfile.LogConfig
    health: object = None                # container.health.HealthConfig, or None
    devices: object = None               # container.devices.DevicePlan

    @property
    def cfg(self) -> dict:
        return self.image.run_config


def plan(store: Store, opts: RunOptions, image: Image | None = None) -> Plan:
    """Check ``opts`` against the image and the host, before anything exists (Docker's create
    validates as much).  Paths in ``opts`` are made absolute here, so that a start from
    another working directory finds them.  ``image``: this one rather than ``opts.image``
    looked up in the store (the builder's state between two steps)."""
    if opts.tty and opts.interactive and not opts.detach and not os.isatty(0):
        raise UsageError("the input device is not a TTY: drop -t, or run from a terminal")
    from ..sandbox.userns import forbidden_by_sysctl
    from ..errors import UserNamespaceUnavailable
    why = forbidden_by_sysctl()
    if why:
        raise UserNamespaceUnavailable(why)
    maps = idmap.detect()
    stored = maps
    passwd_entry = None
    mpi_warnings = []
    if opts.mpi:
        mpi_warnings = _expand_mpi(opts, maps.single)
    if opts.as_me:
        _expand_as_me(opts, maps.single)
    from .runflags import namespace_mode
    opts.pid, opts.ipc = namespace_mode("--pid", opts.pid), namespace_mode("--ipc", opts.ipc)
    if opts.env_host:
        # as Podman: over the image's ENV, under -e (which follows); kept in the record as -e is
        from .runflags import host_environment
        opts.env = host_environment() + list(opts.env)
        opts.env_host = False
    if opts.userns not in ("", "host-range", "keep-id"):
        raise UsageError(f"unknown --userns '{opts.userns}': use keep-id (or leave it out)")
    if opts.userns == "keep-id":
        import pwd
        try:
            maps = idmap.keep_id(maps, os.getuid(), os.getgid())
        except ValueError as e:
            raise UsageError(str(e)) from None
        try:
            me = pwd.getpwuid(os.getuid())
            passwd_entry = f"{me.pw_name}:x:{me.pw_uid}:{me.pw_gid}::{me.pw_dir}:/bin/sh"
        except KeyError:
            passwd_entry = f"user:x:{os.getuid()}:{os.getgid()}::/:/bin/sh"
        if opts.user is None:
            opts.user = f"{os.getuid()}:{os.getgid()}"
    if image is None:
        from ..image import squashfs
        if squashfs.looks_like_file(opts.image):   # a single-file image: img.sqfs, ./dir/img
            opts.image = os.path.abspath(opts.image)
            image = squashfs.read_image(opts.image)
        else:
            image = store.resolve(opts.image)
    cfg = image.run_config
    if image.squashfs and opts.userns == "keep-id" and not stored.single:
        raise UsageError("--userns keep-id (and --as-me or --mpi with a subordinate id range) cannot run a squashfs "
                         "image yet: load the image into the store ('rootless load' of a saved archive) "
                         "and run it by name")
    if image.squashfs and opts.storage_driver == "overlay":
        raise UsageError("--storage-driver overlay cannot run a squashfs image: the kernel's overlay does not "
                         "take the image's FUSE mount as its lower layer; use fuse-overlay (the default) or vfs")
    if opts.entrypoint is not None:
        if isinstance(opts.entrypoint, list):
            entrypoint = [] if opts.entrypoint in ([], [""]) else list(opts.entrypoint)
        else:
            entrypoint = [opts.entrypoint] if opts.entrypoint else []
        cmd = list(opts.command)           # Docker: --entrypoint resets the image's CMD
    else:
        entrypoint = list(cfg.get("Entrypoint") or [])
        cmd = list(opts.command) or list(cfg.get("Cmd") or [])
    args = entrypoint + cmd
    if not args:
        raise UsageError(f"no command specified: give one after the image name, e.g. "
                         f"'rootless run {opts.image} sh', or set CMD when importing")
    if opts.stop_signal:
        from .procs import parse_signal
        parse_signal(opts.stop_signal)   # refuse a bad name now, not at stop time
    workdir = opts.workdir or cfg.get("WorkingDir") or "/"
    if not workdir.startswith("/"):
        raise UsageError(f"the working directory '{workdir}' is invalid: it needs to be an absolute path")
    if opts.hostname:
        check_hostname(opts.hostname)
    from .. import security
    opts.security_opt = security.absolute_profile_paths(opts.security_opt)
    sec = security.parse(opts.security_opt, opts.privileged, opts.read_only_tmpfs)
    wanted_caps = caps.resolve(["ALL"] if sec.privileged else opts.cap_add, [] if sec.privileged else opts.cap_drop)
    seccomp_prog = seccomp_program(sec, wanted_caps)
    check_preserve_fds(opts.preserve_fds, opts.detach)
    extra_env = parse_env(opts.env, opts.env_files)
    from . import runflags
    labels = runflags.labels(opts.label, opts.label_file)
    opts.label, opts.label_file = [f"{k}={v}" for k, v in labels.items()], []   # files read once, now
    resolv_extra = runflags.dns(opts.dns, opts.dns_search, opts.dns_option)
    rlimits = runflags.ulimits(opts.ulimit)
    if opts.shm_size and opts.ipc == "host":
        raise UsageError("--shm-size cannot be used with --ipc host: /dev/shm is then the host's own")
    shm_size = runflags.shm_size(opts.shm_size)
    from . import logfile
    log = logfile.parse(opts.log_driver, opts.log_opt)
    from . import health as health_mod
    health = health_mod.config(cfg.get("Healthcheck"), opts.health_cmd, opts.health_interval, opts.health_timeout,
                               opts.health_retries, opts.health_start_period, opts.no_healthcheck)
    if opts.group_add and maps.single:
        raise UsageError(f"--group-add needs a subordinate id range: in single-uid mode ({maps.why_single}) "
                         "the kernel allows no supplementary groups; see docs/troubleshooting.md")
    init = runflags.init_program() if opts.init else None
    if opts.domainname:
        check_hostname(opts.domainname, "--domainname")
    if opts.publish_all:
        opts.publish = list(opts.publish) + runflags.publish_all(cfg.get("ExposedPorts"))
        opts.publish_all = False        # the ports are chosen once: a restart keeps them
    from .. import network
    user_net = None
    shared = None
    mode = opts.network
    if mode and mode.startswith("container:"):
        from .records import running
        shared = Containers(store).find(mode.partition(":")[2])
        if not running(shared) or not shared.init_pid:
            raise RootlessError(f"--network {mode}: container {shared.name} is not running")
        if opts.publish:
            raise UsageError(f"-p cannot be used with --network {mode}: publish the ports on {shared.name}")
        mode = "none"         # nothing of our own: the other container's namespace is used
    if mode and mode.split(":")[0] not in network.MODES + ("bridge",):
        from ..network.user_networks import UserNetworkPlan
        user_net = UserNetworkPlan(store, [mode], list(opts.network_alias))  # raises if it does not exist
        # and the default stack, for traffic leaving the machine and -p; none on an internal network
        mode = "none" if user_net.internal else None
        if user_net.internal and opts.publish:
            raise UsageError(f"network {opts.network} is internal (no traffic in or out): -p cannot work on it")
    elif opts.network_alias:
        raise UsageError("--network-alias needs a network made with 'rootless network create'")
    net, extra_hosts = network.parse(mode, opts.publish, opts.add_host)
    sysctls = runflags.sysctls(opts.sysctl, net.mode == "host", opts.ipc == "host")
    if net.ports:
        from ..network.ports import check_available
        check_available(net.ports)
    run_base = paths.runtime_dir()  # fail early, with the fix, if the run-time directory is unusable
    from .. import cgroups
    cg_setup = cgroups.detect(opts.cgroup_parent or cgroups.default_parent())
    limits = cgroups.Limits.parse(memory=opts.memory, memory_swap=opts.memory_swap, cpus=opts.cpus,
                                  cpu_shares=opts.cpu_shares, pids=opts.pids_limit, cpuset_cpus=opts.cpuset_cpus)
    cg_setup.check(limits)  # refuse a limit that cannot be enforced before anything exists
    from .. import volumes
    opts.volume, opts.mount = volumes.absolute_sources(opts.volume, opts.mount)
    vols = volumes.plan(store, opts.volume, opts.mount, opts.tmpfs)  # -v/--mount/--tmpfs, checked now
    from . import devices as devices_mod
    devs = devices_mod.plan(opts.device, opts.gpus)
    if devs.gids and maps.single:
        devs.warnings.append(f"the CDI spec adds groups {', '.join(devs.gids)}, which single-uid mode cannot "
                             "give (no supplementary groups): left out")
        devs.gids = ()
    policy, max_restarts = parse_restart(opts.restart)
    if policy != "no" and opts.rm:
        raise UsageError("--restart and --rm conflict: a container removed when it exits cannot be restarted")
    return Plan(opts=opts, image=image, args=args, workdir=workdir, maps=maps, stored=stored,
                passwd_entry=passwd_entry, sec=sec, wanted_caps=wanted_caps, seccomp_prog=seccomp_prog,
                extra_env=extra_env, net=net, extra_hosts=extra_hosts, user_net=user_net, shared=shared,
                run_base=run_base, cg_setup=cg_setup, limits=limits, vols=vols, policy=policy,
                max_restarts=max_restarts, warnings=single_uid_warning(maps) + devs.warnings + mpi_warnings,
                labels=labels,
                resolv_extra=resolv_extra, rlimits=rlimits, sysctls=sysctls, init=init, shm_size=shm_size,
                log=log, health=health, devices=devs)


def _add_volumes(opts: RunOptions, volumes: list[str]) -> None:
    """Binds a flag stands for (HOST:PATH), before the user's: not where the user binds something."""
    mine = {v.split(":")[1] if ":" in v else v for v in opts.volume}
    opts.volume = [v for v in volumes if v.split(":")[1] not in mine] + list(opts.volume)


def _expand_as_me(opts: RunOptions, single_uid: bool) -> None:
    """--as-me, made into the flags it stands for (once: the record keeps the result, so a later
    start binds the same directories and passes the same environment); a flag the user gave wins."""
    from .runflags import as_me
    me = as_me(single_uid, bind_cwd=not opts.workdir)
    _add_volumes(opts, me.volumes)
    opts.workdir = opts.workdir or me.workdir
    opts.network = opts.network or me.network
    opts.userns = opts.userns or me.userns
    opts.hostname = opts.hostname or me.hostname
    opts.host_env = list(opts.host_env) + me.env
    opts.as_me = False


def _expand_mpi(opts: RunOptions, single_uid: bool) -> list[str]:
    """--mpi, made into the flags it stands for (once, as --as-me); a flag the user gave wins.
    Returns its warnings."""
    from .runflags import mpi
    m = mpi(single_uid)
    _add_volumes(opts, m.volumes)
    opts.network = opts.network or m.network
    opts.pid = opts.pid or m.pid
    opts.ipc = opts.ipc or m.ipc
    opts.userns = opts.userns or m.userns
    opts.hostname = opts.hostname or m.hostname
    # The launcher's variables over the image's ENV (it may carry stale ones) and under the
    # user's --env-file and -e (the files are read now, so that they stay above); the defaults
    # under the image's ENV, as --as-me's environment.
    files = [f"{k}={v}" for k, v in parse_env([], opts.env_files)]
    opts.env, opts.env_files = m.env + files + list(opts.env), []
    opts.host_env = m.defaults + list(opts.host_env)
    opts.mpi = False
    if not m.launcher_found:
        return ["--mpi: no MPI launcher's variables (OMPI_*, PMIX_*, PMI_*) in the environment: "
                "start the container from mpirun or srun, one per rank (docs/hpc.md)"]
    modes = os.environ.get("PMIX_SECURITY_MODE", "")
    if single_uid and modes and "none" not in modes.split(","):
        return [f"--mpi in single-uid mode: the rank is uid 0 inside, and the launcher's PMIx server checks "
                f"uids (PMIX_SECURITY_MODE={modes}), so it will refuse the rank: start mpirun with "
                "PMIX_MCA_psec=none in its environment (docs/hpc.md)"]
    return []


def create(store: Store, p: Plan, started_later: bool = True, builder: bool = False) -> Record:
    """Record the container (state ``created``; no process yet), its name reserved and its
    options saved for every later start.  ``started_later``: by ``start``, detached, as
    ``rootless create`` does (its -t/-i are kept for ``start -a``/``attach``); else this
    process starts it now (``run``) and owns it meanwhile."""
    from dataclasses import asdict
    opts = p.opts
    records = Containers(store)
    keep_terminal = started_later or opts.detach

    def setup(r: Record) -> None:
        r.config["options"] = {**asdict(opts), "detach": True, "tty": opts.tty and keep_terminal,
                               "interactive": opts.interactive and keep_terminal}
        r.config["run_dir"] = os.path.join(p.run_base, r.id[:16])   # for rm -f, whoever runs it
        if p.labels:
            r.config["labels"] = p.labels
        if builder:
            r.config["builder"] = True      # a build's RUN step: 'ps' does not list it
        if started_later:
            r.owner_pid = r.owner_start = 0          # nobody runs it until 'start'
        if p.user_net:
            p.user_net.reserve(r, records)
    with store.lock():
        rec = records.create(p.image.ref or p.image.id, p.image.id, p.args, opts.name, setup=setup)
    _remove_abandoned(records, p.maps)
    return rec


def _remove_abandoned(records: Containers, maps) -> None:
    """Remove the --rm containers whose owner was killed before it could (``records.abandoned``),
    as ``create`` found them."""
    for rec in records.abandoned:
        with contextlib.suppress(RootlessError, OSError):
            records.remove(rec, maps)


@dataclass
class RunResult:
    exit_code: int
    container_id: str | None            # -d: the id, for the face to print


def run(store: Store, p: Plan, on_warning: Callable[[str], None] = _to_stderr) -> RunResult:
    """``rootless run`` of plan ``p`` (see ``plan``): create, then start in this process, in
    the foreground — or, with ``-d``, in a monitor, returning as soon as it has started."""
    if p.opts.detach:
        from dataclasses import asdict
        from .monitor import run_detached
        cid = run_detached(lambda detacher: start_planned(store, p, None, detacher),
                           request={"store": store.root, "opts": asdict(p.opts), "existing": None})
        return RunResult(0, cid)
    return RunResult(start_planned(store, p, None, None, on_warning), None)


def start(store: Store, rec: Record) -> None:
    """Start a created or exited container in a monitor, with the options it was created
    with (``rootless start``); returns once it has started."""
    from dataclasses import asdict
    from .monitor import run_detached
    opts = RunOptions(**{**saved_options(rec), "detach": True, "name": None})
    p = plan(store, opts, image=_own_image(store, rec))
    run_detached(lambda detacher: start_planned(store, p, rec, detacher),
                 request={"store": store.root, "opts": asdict(opts), "existing": rec.id})


def start_attached(store: Store, rec: Record, interactive: bool,
                   on_warning: Callable[[str], None] = _to_stderr) -> int:
    """``start -a`` (``-ai``): run a created or exited container in this process, as ``run``
    runs one in the foreground: its output (and with ``interactive`` our input, with -t our
    terminal) is the caller's; its exit status once it has ended."""
    saved = saved_options(rec)
    opts = RunOptions(**{**saved, "detach": False, "name": None,
                         "interactive": bool(saved.get("interactive")) and interactive})
    return start_planned(store, plan(store, opts, image=_own_image(store, rec)), rec, None, on_warning)


def _own_image(store: Store, rec: Record) -> Image:
    """A container's own image, by id: its tag may be gone or moved since ('rmi -f', pull)."""
    if rec.image.startswith("/"):              # a squashfs file (image/squashfs.py), by its path
        from ..image import squashfs
        image = squashfs.read_image(rec.image)
        if image.id != rec.image_id:
            raise RootlessError(f"the squashfs image {rec.image} of container {rec.name} has changed since "
                                "it was created: remove the container and run the file again")
        return image
    return store.resolve(rec.image_id)


def saved_options(rec: Record) -> dict:
    saved = rec.config.get("options")
    if not saved:
        raise RootlessError(f"container {rec.name} cannot be started again: it was created by an older rootless")
    return saved


def monitor_main(store: Store, opts: RunOptions, existing: str | None, detacher, handoff=None,
                 ended: tuple[int, int] | None = None) -> int:
    """In a monitor forked by the fork server (``detached.adopt``): plan again, then create
    (unless ``existing``) and start, as ``run``/``start`` would have in their own fork.

    ``handoff``: this process runs under a lean monitor (``detached.LeanMonitor``) and may hand
    it the waiting once the container runs, then end.  ``ended``: (exit status, restarts) of the
    round that lean monitor waited for: record its end, and restart as the policy says."""
    rec = Containers(store).find(existing) if existing else None
    p = plan(store, opts, image=_own_image(store, rec) if rec is not None else None)
    return _Starter(store, p, detacher, _to_stderr, handoff=handoff, ended=ended).execute(rec)


def start_planned(store: Store, p: Plan, existing: Record | None, detacher,
                  on_warning: Callable[[str], None] = _to_stderr,
                  stdio: tuple[int, int, int] | None = None) -> int:
    """Run the container of plan ``p`` in this process until it ends, restarting it as its
    policy says: its exit code.  ``existing``: the record of a created or exited container
    (``start``); None: create it first (``run``).  ``detacher``: in a monitor, told when the
    container has started (its output then goes to the log).  ``stdio``: the container's
    stdin, stdout and stderr (None: ours; the builder passes a pipe it reads)."""
    return _Starter(store, p, detacher, on_warning, stdio).execute(existing)


class _Starter:
    def __init__(self, store: Store, p: Plan, detacher, on_warning: Callable[[str], None],
                 stdio: tuple[int, int, int] | None = None, handoff=None,
                 ended: tuple[int, int] | None = None) -> None:
        self.store, self.p, self.detacher, self.on_warning = store, p, detacher, on_warning
        self.stdio = stdio
        self.handoff, self.ended = handoff, ended

    def execute(self, existing: Record | None) -> int:
        from contextlib import nullcontext
        from .records import ContainerGone
        store, p = self.store, self.p
        records = Containers(store)
        if self.ended is not None:
            rec = existing      # the lean monitor's previous round: its container has ended
        elif existing is None:
            rec = create(store, p, started_later=False)
        else:
            def own(r: Record) -> None:      # start: this process now owns it
                r.config.pop("stopped", None)
                claim(r, os.getpid())
                r.config["run_dir"] = os.path.join(p.run_base, r.id[:16])
                if p.user_net:
                    p.user_net.reserve(r, records)
            with store.lock() if p.user_net else nullcontext():
                rec = records.update(existing.id, own, existing.name)
        restarts, backoff = 0, 0.1
        detacher = self.detacher
        logging = detacher is not None or self.handoff is not None
        ended, self.ended = self.ended, None
        if ended is not None:
            restarts = ended[1]
            backoff = min(0.1 * 2 ** restarts, 10.0)
        while True:
            try:
                if ended is not None:
                    code, ended = self._ended_under_lean_monitor(rec, records, ended[0]), None
                else:
                    code = self.once(rec, records, detacher, logging, restarts)
            except ContainerGone:
                raise ContainerGone(f"container {rec.name} was removed ('rootless rm -f') before it had "
                                    "started", 137) from None
            detacher = None  # the CLI has its answer; later rounds only log
            if code is None:
                raise ContainerGone(f"container {rec.name} was removed ('rootless rm -f') while it ran", 137)
            if p.policy == "no":
                return code
            again = (p.policy in ("always", "unless-stopped") or (p.policy == "on-failure" and code != 0 and (
                not p.max_restarts or restarts < p.max_restarts))) and not _stopped(records, rec)
            if not again:
                return code
            restarts += 1
            time.sleep(backoff)
            backoff = min(backoff * 2, 10.0)
            if _stopped(records, rec):  # stopped (or removed) while we waited
                return code

    def once(self, rec, records, detacher, logging: bool, restarts: int) -> int | None:
        """One run of the container: its exit code, or None if it was removed meanwhile."""
        store, p = self.store, self.p
        opts, maps, stored, image, cfg = p.opts, p.maps, p.stored, p.image, p.cfg
        net, user_net, shared, run_base, cg_setup = p.net, p.user_net, p.shared, p.run_base, p.cg_setup
        sec, vols = p.sec, p.vols
        from .records import ContainerGone
        directory = store.container_dir(rec.id)
        hostname = opts.hostname or rec.id[:12]
        pump = console = None
        helpers: list = []
        run_dir = os.path.join(run_base, rec.id[:16])  # short: unix socket paths hold 108 bytes
        if logging:
            from .monitor import log_path
            if opts.tty or opts.interactive:      # -dit / -di: a terminal to attach to
                from .console import Console
                console = Console(run_dir, opts.tty)
                if not opts.tty:
                    console.stdin_pipe()
            pump = _log_pump(rec, log_path(directory), console.broadcast if console else None, p.log)
            pump.redirect()
        stdio, ours = self.stdio, ()
        if not logging and stdio is None and not opts.tty and p.log.driver != "none":
            # in the foreground too the output is logged (as Docker does), and passed on to ours
            from .monitor import log_path
            pump = _log_pump(rec, log_path(directory), None, p.log)
            ours = (os.dup(1), os.dup(2))
            pump.tee = _passed_on(*ours)
            stdio = (0, *pump.writers())
            pump.pump_pipes()
        tty_log = None
        if not logging and stdio is None and opts.tty and p.log.driver != "none":
            # a foreground -t container: what we relay from its pty is logged as it passes
            from .monitor import log_path
            pump = _log_pump(rec, log_path(directory), None, p.log, pipes=False)
            tty_log = pump.sink("stdout")
        cg = started = checks = squash = None
        try:
            cg_setup.sweep("rootless-")  # leftovers of engines that were killed
            cg_name = f"rootless-{rec.id[:32]}"
            planned = [os.path.join(h.parent, cg_name) for h in cg_setup.hierarchies]
            # recorded before it exists: rm -f of a container still starting removes it too
            rec = records.update(rec.id, lambda r: setattr(r, "cgroup_paths", planned))
            cg = cg_setup.create(cg_name, p.limits)
            rec.cgroup_paths = list(cg.paths)
            missing = [d for d in image.diff_ids if not store.has_layer(d)]
            if missing:
                raise RootlessError(f"layer {missing[0]} of image {opts.image} is missing from the store: "
                                    "import the image again")
            # Under a lean monitor, nothing that must live as long as the container may belong
            # to this process (a console, health checks, a squashfs mount's lock, user networks):
            # then it hands the waiting to that monitor and ends (detached.py) — or, holding
            # network helpers, which follow its death, stays as a sleeping process.
            lean = (self.handoff is not None and logging and user_net is None
                    and console is None and p.health is None and not image.squashfs)
            server = None
            if _may_use_fuse(opts.storage_driver, maps, stored, bool(image.squashfs)):
                from . import services
                server = services.ensure(run_base)
            layer_dirs = [store.layer_dir(d) for d in image.diff_ids]
            join_userns = user_net.start_holder(maps, run_base) if user_net else None
            if image.squashfs:
                from . import squashmount
                squash = squashmount.acquire(image.squashfs, stored, run_base)
                layer_dirs = [squash.lower]
                if join_userns is None and not shared:
                    join_userns = squash.userns()    # the same holder's as user networks'
            rootfs = ContainerRootfs(layer_dirs, directory,
                                     opts.storage_driver, remove_after=opts.rm, single_uid=maps.single,
                                     fuse_server=server,
                                     id_translation=None if maps is stored else (
                                         idmap.translation(stored.uids, maps.uids),
                                         idmap.translation(stored.gids, maps.gids)),
                                     squashfs=bool(image.squashfs))
            spec = container.SandboxSpec(
                process=container.ProcessSpec(
                    args=_with_init(p.init, p.args),
                    env=merge_env(cfg.get("Env") or [], p.extra_env, hostname, opts.tty, opts.host_env,
                                  p.devices.env),
                    cwd=p.workdir,
                    user=opts.user if opts.user is not None else (cfg.get("User") or ""),
                    caps=p.wanted_caps, tty=opts.tty, stdin=opts.interactive,
                    winsize=(_user_winsize() if not logging else console_winsize()) if opts.tty else None,
                    passwd_entry=p.passwd_entry, seccomp=p.seccomp_prog, no_new_privs=sec.no_new_privileges,
                    preserve_fds=opts.preserve_fds, groups_add=tuple(opts.group_add) + p.devices.gids,
                    rlimits=p.rlimits),
                rootfs=mounts.RootfsPlan(rootfs.target, readonly=opts.read_only,
                                         masked=sec.masked_paths(mounts.MASKED_PATHS),
                                         readonly_paths=sec.readonly_paths(mounts.READONLY_PATHS),
                                         devices=mounts.usable_host_devices() if sec.privileged else (),
                                         device_nodes=p.devices.nodes,
                                         etc_files=_shared_etc(store, shared, directory) if shared else
                                         _etc_files(directory, hostname, net, p.extra_hosts,
                                                    user_net.hosts_for(records, rec) if user_net else "",
                                                    p.resolv_extra),
                                         ptmx_gid=5 if maps.size("gid") > 5 else None,
                                         binds=vols.create(rec, maps) + (
                                             read_only_tmpfs_binds() if opts.read_only and sec.read_only_tmpfs
                                             else ()) + _init_bind(p.init) + p.devices.binds,
                                         sysctls=p.sysctls, shm_size=p.shm_size,
                                         host_proc=opts.pid == "host", host_shm=opts.ipc == "host",
                                         hooks=_hooks_in_container(p, rec.id, run_dir, rootfs.target,
                                                                   hostname)),
                hostname=hostname, domainname=opts.domainname, maps=maps,
                prepare_rootfs=vols.populating(rootfs.prepare, rootfs.target),
                rootfs_server=lambda: rootfs.serving,
                cleanup_rootfs=rootfs.cleanup,
                intermediate_needed=lambda: rootfs.daemon != 0,
                own_network=net.own_namespace, own_pid=opts.pid != "host", own_ipc=opts.ipc != "host",
                network_setup=_network_setup(net, run_dir, helpers, user_net, rec, records,
                                             _hooks_before(p, rec.id, run_dir, hostname)),
                join_cgroup=cg.add if cg.paths else None,
                join_userns=join_userns,
                stdio=stdio,
                subreaper=not lean)
            if shared:
                # NAME's network namespace is owned by NAME's user namespace (a child of the one
                # its mounts were made in): ours is that one too, made in the same way.
                try:
                    spec.join_netns = os.open(f"/proc/{shared.init_pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
                    spec.container_userns = libc.ns_ioctl(spec.join_netns, libc.NS_GET_USERNS)
                    spec.join_userns = libc.ns_ioctl(spec.container_userns, libc.NS_GET_PARENT)
                    if squash is not None:
                        theirs, mine = os.fstat(spec.join_userns), os.fstat(held := squash.userns())
                        os.close(held)
                        if (theirs.st_dev, theirs.st_ino) != (mine.st_dev, mine.st_ino):
                            raise UsageError(f"--network container:{shared.name} with a squashfs image needs "
                                             f"{shared.name} to run from a squashfs image or on a user network "
                                             "too (their user namespace is the one the image is mounted in)")
                except (OSError, UsageError) as e:
                    if isinstance(e, UsageError):
                        for fd in (spec.join_netns, spec.container_userns, spec.join_userns):
                            if fd is not None:
                                os.close(fd)
                        raise
                    for fd in (spec.join_netns, spec.container_userns):
                        if fd is not None:
                            os.close(fd)
                    raise SandboxError(f"cannot join the namespaces of container {shared.name}: {e}") from None
            try:
                started = container.start(spec)
            except channel.ChildError as e:
                cls = CommandError if e.kind == "exec" else SandboxError
                raise cls(str(e), e.exit_code) from None
            finally:
                for fd in (spec.join_userns, spec.join_netns, spec.container_userns):
                    if fd is not None:
                        os.close(fd)
                if ours:
                    pump.close_writers()    # the container holds them now: its end is their end
            config = {"env": spec.process.env, "user": spec.process.user, "cwd": spec.process.cwd,
                      "caps": sorted(spec.process.caps), "hostname": hostname, "detached": opts.detach,
                      "stop_signal": opts.stop_signal or cfg.get("StopSignal") or "SIGTERM", "started": time.time(),
                      "monitor": (self.handoff.monitor if lean else os.getpid()) if logging else 0,
                      "rootfs_server": started.rootfs_server}
            if restarts:
                config["restarts"] = restarts
            init_start = procs.start_time(started.init_pid)

            def now_running(r) -> None:
                r.state, r.pid, r.init_pid, r.init_start = ("running", started.intermediate_pid,
                                                            started.init_pid, init_start)
                if lean:        # the lean monitor owns it from now on
                    claim(r, self.handoff.monitor)
                r.exit_code, r.finished, r.cgroup_paths = None, None, list(cg.paths)
                r.config.pop("paused", None)     # stopped while paused: a new cgroup, not frozen
                r.config.update(config)
            rec = records.update(rec.id, now_running)
            from .devices import HOOKS_AFTER, HOOKS_END
            _hooks_after(p, HOOKS_AFTER, rec.id, run_dir, started.init_pid, hostname, self.on_warning)
            checks = _start_health_checks(store, rec.id, p.health)
            if detacher is not None:
                detacher.started(rec.id)
            if lean and started.intermediate_pid == started.init_pid:
                self.handoff.give(rec, started, pump, p.log, restarts, lingers=bool(helpers))
                if helpers:     # they die with us: we stay, as a sleeping process
                    self.handoff.linger([h.exit_fd for h in helpers if h.exit_fd is not None])
                os._exit(0)     # the lean monitor waits and logs from here; it forks the rest
            if pump is not None and logging:
                pump.start()
                if console is not None:
                    master, started.tty_master = started.tty_master, None   # the console's, not a relay's
                    console.started(os.dup(master) if master is not None else None)
                    if master is not None:
                        pump.add_source("stdout", master)
                libc.release_free_memory()   # the monitor idles from here on (docs/containers.md)
            code = container.wait(started, tty_log)
            _hooks_after(p, HOOKS_END, rec.id, run_dir, None, hostname, self.on_warning)
            if checks is not None:
                checks.set()
            rec.oom_killed = cg.oom_killed()
            if pump is not None:
                pump.finish()
            if console is not None:
                console.close()
        except BaseException as e:
            if checks is not None:
                checks.set()
            if ours:
                pump.close_writers()
                pump.finish(1.0)
                for fd in ours:
                    os.close(fd)
            elif tty_log is not None:
                pump.finish(0)
            if started is not None:     # removed just as it started: it must not run on
                _kill_child(started.init_pid)
            if squash is not None:
                squash.release()
            if console is not None:
                console.close()
            _stop(helpers, run_dir)
            _remove_cgroup(cg, self.on_warning)
            if isinstance(e, ContainerGone):
                pass        # 'rm -f' removes it
            elif _removed(records, rec):
                # 'rm -f' took its files while it started: that, not what failed for want of them
                raise ContainerGone(f"container {rec.name} was removed meanwhile") from None
            elif opts.rm:
                _remove(records, rec, maps, self.on_warning)
            else:
                with contextlib.suppress(ContainerGone):
                    records.update(rec.id, lambda r: _ended(r, getattr(e, "exit_code", 125)))
            raise
        for fd in ours:
            os.close(fd)
        if squash is not None:
            squash.release()      # the last container of that file unmounts it (squashmount.py)
        return self._ended(rec, records, code, cg, helpers, run_dir)

    def _ended_under_lean_monitor(self, rec, records, code: int) -> int | None:
        """The end of a round the lean monitor waited for (see ``once``): the poststop hooks,
        the cgroup (by its recorded paths), the record or --rm."""
        from ..cgroups import CgroupError, attach
        from .devices import HOOKS_END
        try:
            rec = records.find(rec.id)
        except RootlessError:
            return None             # removed meanwhile
        run_dir = os.path.join(self.p.run_base, rec.id[:16])
        _hooks_after(self.p, HOOKS_END, rec.id, run_dir, None, self.p.opts.hostname or rec.id[:12], self.on_warning)
        cg = None
        try:
            present = [d for d in rec.cgroup_paths if os.path.isdir(d)]
            cg = attach(present) if present else None
            rec.oom_killed = cg.oom_killed() if cg is not None else False
        except CgroupError:
            rec.oom_killed = False
        return self._ended(rec, records, code, cg, [], run_dir)

    def _ended(self, rec, records, code: int, cg, helpers: list, run_dir: str) -> int | None:
        """After a container's end: its helpers and cgroup go, and its record records the end
        (or, with --rm, goes); the code, or None if it was removed meanwhile."""
        from .records import ContainerGone
        opts, maps, user_net = self.p.opts, self.p.maps, self.p.user_net
        _stop(helpers, run_dir)
        _remove_cgroup(cg, self.on_warning)
        if user_net:
            user_net.refresh_peers(records, rec.id, leaving=True)
        oom = rec.oom_killed
        try:
            if opts.rm:
                if records.find(rec.id).state == "removing":
                    return None
                from .records import note_exit
                note_exit(rec.id, code)     # for a waiter (Docker's wait condition=removed)
                _remove(records, rec, maps, self.on_warning)
            else:
                records.update(rec.id, lambda r: _ended(r, code, oom))
        except ContainerGone:
            return None
        except RootlessError:
            if opts.rm:
                raise
            return None     # no such container: removed meanwhile
        return code


def seccomp_program(sec, wanted_caps: frozenset[str]) -> bytes | None:
    """The compiled filter the container's processes get (None: unconfined); a bad profile is
    the user's error, reported before anything starts."""
    from ..sandbox import seccomp
    if sec.seccomp == "unconfined":
        return None
    try:
        return seccomp.program(sec.seccomp, wanted_caps)
    except seccomp.ProfileError as e:
        raise UsageError(str(e)) from None


def check_preserve_fds(count: int, detach: bool) -> None:
    """--preserve-fds N: descriptors 3..3+N-1 of ours must be open; not with -d (nobody holds them)."""
    if count < 0:
        raise UsageError(f"--preserve-fds must be 0 or more (got {count})")
    if count and detach:
        raise UsageError("--preserve-fds cannot be used with -d: the descriptors belong to this command, "
                         "which does not stay; run in the foreground")
    import fcntl
    for fd in range(3, 3 + count):
        try:
            fcntl.fcntl(fd, fcntl.F_GETFD)
        except OSError:
            raise UsageError(f"--preserve-fds {count}: file descriptor {fd} is not open in this shell "
                             f"(open it, e.g. '{fd}<file', or pass a smaller number)") from None


def _log_pump(rec, path: str, tee, cfg, pipes: bool = True):
    """The container's log pump; its directory gone means it was removed ('rm -f') meanwhile."""
    from .monitor import LogPump
    from .records import ContainerGone
    try:
        return LogPump(path, tee=tee, cfg=cfg, pipes=pipes)
    except FileNotFoundError:
        raise ContainerGone(f"container {rec.name} was removed ('rootless rm -f') before it had started",
                            137) from None


def _start_health_checks(store: Store, cid: str, cfg):
    """Run the container's health checks in a thread of the process that owns it; the event
    that stops them (None without a check)."""
    if cfg is None:
        return None
    import threading
    from .health import run_checks
    stop = threading.Event()
    from ..sandbox.spawn import quiet_thread
    quiet_thread(run_checks, store.root, cid, cfg, stop, name="health")
    return stop


def _passed_on(out: int, err: int) -> Callable[[str, bytes], None]:
    """A LogPump tee writing the container's output to our own stdout and stderr (``out`` and
    ``err``: copies of them, closed once the pump has finished)."""
    def tee(stream: str, chunk: bytes) -> None:
        fd = out if stream == "stdout" else err
        view = memoryview(chunk)
        while view:
            try:
                view = view[os.write(fd, view):]
            except InterruptedError:
                continue
            except OSError:
                return                  # our reader went away: the log still gets it
    return tee


def _with_init(program: str | None, args: list[str]) -> list[str]:
    if not program:
        return args
    from .runflags import INIT_PATH
    return [INIT_PATH, "--", *args]


def _init_bind(program: str | None) -> tuple:
    """--init: the host's init program, read-only, where the container's PID 1 is run from."""
    if not program:
        return ()
    from .runflags import INIT_PATH
    return (mounts.Bind(source=program, target=INIT_PATH, readonly=True),)


def read_only_tmpfs_binds() -> tuple:
    """--read-only with --read-only-tmpfs: writable tmpfs on /run, /tmp and /var/tmp (as Podman)."""
    return tuple(mounts.Bind(target=t, kind="tmpfs", options="mode=1777") for t in ("/run", "/tmp", "/var/tmp"))


def _ended(rec, code: int, oom: bool = False) -> None:
    rec.state, rec.exit_code, rec.finished, rec.oom_killed = "exited", code, time.time(), oom


def _stopped(records: Containers, rec) -> bool:
    """Whether 'stop' marked the container (or it was removed): a restart policy ends then."""
    try:
        cur = records.find(rec.id)
    except RootlessError:
        return True
    return bool(cur.config.get("stopped")) or cur.state == "removing"


def _removed(records: Containers, rec) -> bool:
    """Whether the container was removed, or is being removed ('rm -f')."""
    try:
        return records.find(rec.id).state == "removing"
    except RootlessError:
        return True


def _kill_child(pid: int) -> None:
    """SIGKILL our own unreaped child (its pid cannot have been reused: no pidfd needed)."""
    import signal
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def _shared_etc(store: Store, shared, directory: str) -> tuple[tuple[str, str], ...]:
    """--network container:NAME: that container's hosts and resolv.conf (copied), our hostname."""
    import shutil
    out = []
    for name in ("hosts", "resolv.conf"):
        src = os.path.join(store.container_dir(shared.id), name)
        dst = os.path.join(directory, name)
        try:
            shutil.copyfile(src, dst)
        except OSError:
            open(dst, "w").close()
        out.append((f"/etc/{name}", dst))
    return tuple(out)


def _network_setup(net: NetworkSpec, run_dir: str, helpers: list, user_net=None, rec=None, records=None,
                   hooks: Callable[[int], None] | None = None):
    """What P does once PID 1's namespaces exist: the userspace stack, then the user networks,
    then the CDI hooks that run before the command (``hooks``)."""
    if not net.needs_helper and user_net is None:
        return hooks

    def setup(pid: int) -> None:
        if net.needs_helper:
            from ..network import helpers as stacks
            os.makedirs(run_dir, mode=0o700, exist_ok=True)
            helpers.extend(stacks.start(net, pid, run_dir))
        if user_net is not None:
            user_net.attach(rec, pid, records)
        if hooks is not None:
            hooks(pid)
    return setup


def _hooks_before(p: Plan, cid: str, run_dir: str, hostname: str) -> Callable[[int], None] | None:
    """The CDI prestart and createRuntime hooks, run by P as the user once PID 1 exists."""
    from . import devices, hooks
    todo = p.devices.hooks_at(devices.HOOKS_BEFORE)
    if not todo:
        return None

    def run_them(pid: int) -> None:
        bundle = hooks.write_bundle(run_dir, f"/proc/{pid}/root", p.args, hostname)
        hooks.run(todo, hooks.state(cid, "created", pid, bundle))
    return run_them


def _hooks_in_container(p: Plan, cid: str, run_dir: str, root: str, hostname: str) -> tuple:
    """The CDI createContainer hooks, for the sandbox to run before pivot_root."""
    from . import devices, hooks
    return hooks.in_container(p.devices.hooks_at(devices.HOOKS_IN_CONTAINER), cid, run_dir,
                              os.path.realpath(root), p.args, hostname)


def _hooks_after(p: Plan, points: tuple[str, ...], cid: str, run_dir: str, pid: int | None,
                 hostname: str, on_warning: Callable[[str], None]) -> None:
    """The CDI poststart (``pid``: the running PID 1) or poststop hooks; a failure is a warning."""
    from . import hooks
    todo = p.devices.hooks_at(points)
    if not todo:
        return
    try:
        bundle = hooks.write_bundle(run_dir, f"/proc/{pid}/root" if pid else "", p.args, hostname)
        hooks.run(todo, hooks.state(cid, "running" if pid else "stopped", pid, bundle))
    except (RootlessError, OSError) as e:
        on_warning(str(e))


def _stop(helpers: list, run_dir: str) -> None:
    while helpers:
        helpers.pop().stop()
    if os.path.isdir(run_dir):
        import shutil
        shutil.rmtree(run_dir, ignore_errors=True)


def _may_use_fuse(driver: str, maps: idmap.IdMaps, stored: idmap.IdMaps, squashfs: bool) -> bool:
    """Whether the root filesystem will most likely be fuse-overlay's (then the fork server is
    started for it; when auto's kernel overlay is refused, C starts a daemon of its own)."""
    from .rootfs import driver_order
    return driver_order(driver, maps.single, maps is not stored, squashfs)[0][0] == "fuse-overlay"


def _remove_cgroup(cg, on_warning: Callable[[str], None]) -> None:
    if cg is None:
        return
    from ..cgroups import CgroupError
    try:
        cg.remove()
    except CgroupError as e:
        on_warning(str(e))


def console_winsize() -> bytes:
    """A detached container's pty starts at 24x80; ``attach`` sends the user's size."""
    from .console import DEFAULT_WINSIZE
    return DEFAULT_WINSIZE


def _user_winsize() -> bytes | None:
    from ..sandbox.tty import winsize
    return winsize(0)


def _remove(records: Containers, rec, maps: idmap.IdMaps, on_warning: Callable[[str], None]) -> None:
    """``--rm``: the container, and its anonymous volumes (as Docker's --rm)."""
    from .records import ContainerGone
    try:
        from ..volumes import remove_container_volumes
        remove_container_volumes(records.store, rec, maps)
        for warning in records.remove(rec, maps, force=True):
            on_warning(warning)
    except ContainerGone:
        pass            # 'rm -f' was quicker
    except RootlessError as e:
        on_warning(str(e))
