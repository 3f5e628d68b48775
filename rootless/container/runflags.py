"""Checking the smaller ``run``/``create`` flags: labels, DNS, ulimits, sysctls, --init, -P, --as-me.

Each function takes the flag's raw values and returns what the sandbox needs, or raises a
``UsageError`` that names the flag and the fix, before anything is created."""

from __future__ import annotations

import ipaddress
import os
import resource
import shutil
from dataclasses import dataclass, field

from ..errors import UsageError

INIT_PATH = "/run/rootless-init"          # where --init's program is mounted in the container
INIT_PROGRAMS = ("catatonit", "tini-static", "/usr/libexec/podman/catatonit")


def labels(items: list[str], files: list[str]) -> dict[str, str]:
    """--label-file lines, then --label K=V (K alone: an empty value), as Docker."""
    lines: list[str] = []
    for path in files:
        try:
            with open(path) as f:
                lines += [ln.strip() for ln in f if ln.strip() and not ln.lstrip().startswith("#")]
        except OSError as e:
            raise UsageError(f"cannot read label file {path}: {e.strerror}") from None
    out = {}
    for item in lines + list(items):
        key, _, value = item.partition("=")
        if not key.strip():
            raise UsageError(f"invalid label '{item}': use KEY=VALUE")
        out[key.strip()] = value
    return out


def dns(servers: list[str], search: list[str], options: list[str]) -> str:
    """The resolv.conf lines --dns, --dns-search and --dns-option ask for ('' for none)."""
    text = ""
    for server in servers:
        try:
            ipaddress.ip_address(server)
        except ValueError:
            raise UsageError(f"invalid --dns '{server}': give an IP address (e.g. 10.0.2.3)") from None
        text += f"nameserver {server}\n"
    if search:
        if any(not s or any(c.isspace() for c in s) for s in search):
            raise UsageError(f"invalid --dns-search {search!r}: give domain names without spaces")
        text += "search " + " ".join(s for s in search if s != ".") + "\n"
    if options:
        text += "options " + " ".join(options) + "\n"
    return text


_RLIMITS = {"as": "RLIMIT_AS", "core": "RLIMIT_CORE", "cpu": "RLIMIT_CPU", "data": "RLIMIT_DATA",
            "fsize": "RLIMIT_FSIZE", "locks": "RLIMIT_LOCKS", "memlock": "RLIMIT_MEMLOCK",
            "msgqueue": "RLIMIT_MSGQUEUE", "nice": "RLIMIT_NICE", "nofile": "RLIMIT_NOFILE",
            "nproc": "RLIMIT_NPROC", "rss": "RLIMIT_RSS", "rtprio": "RLIMIT_RTPRIO",
            "rttime": "RLIMIT_RTTIME", "sigpending": "RLIMIT_SIGPENDING", "stack": "RLIMIT_STACK"}


def ulimits(items: list[str]) -> tuple[tuple[int, int, int], ...]:
    """--ulimit NAME=SOFT[:HARD] (-1: unlimited) as (resource, soft, hard).  A hard limit above
    our own cannot be set without privilege: refused now, with the limit we have."""
    out = []
    for item in items:
        name, sep, values = item.partition("=")
        res = getattr(resource, _RLIMITS.get(name.strip(), ""), None)
        if not sep or res is None:
            raise UsageError(f"invalid --ulimit '{item}': use NAME=SOFT[:HARD] with NAME one of "
                             f"{', '.join(sorted(_RLIMITS))}")
        try:
            soft_s, _, hard_s = values.partition(":")
            soft = int(soft_s)
            hard = int(hard_s) if hard_s else soft
        except ValueError:
            raise UsageError(f"invalid --ulimit '{item}': the limits are numbers (-1: unlimited)") from None
        soft = resource.RLIM_INFINITY if soft == -1 else soft
        hard = resource.RLIM_INFINITY if hard == -1 else hard
        if _above(soft, hard):
            raise UsageError(f"invalid --ulimit '{item}': the soft limit is above the hard one")
        ours = resource.getrlimit(res)[1]
        if _above(hard, ours):
            raise UsageError(f"--ulimit {item}: your own hard limit for {name} is {ours}, and raising it "
                             f"needs privilege; ask for at most {ours} (see 'ulimit -H -a')")
        out.append((res, soft, hard))
    return tuple(out)


def _above(a: int, b: int) -> bool:
    inf = resource.RLIM_INFINITY
    return a != b and (a == inf or (b != inf and a > b))


# Namespaced kernel parameters, as Docker allows them (the rest would change the whole host).
_IPC_SYSCTLS = ("kernel.msgmax", "kernel.msgmnb", "kernel.msgmni", "kernel.sem", "kernel.shmall",
                "kernel.shmmax", "kernel.shmmni", "kernel.shm_rmid_forced")


def sysctls(items: list[str], host_network: bool, host_ipc: bool = False) -> tuple[tuple[str, str], ...]:
    out = []
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip().replace("/", ".")
        if not sep or not key:
            raise UsageError(f"invalid --sysctl '{item}': use KEY=VALUE, e.g. net.ipv4.ip_forward=1")
        if key.startswith("net."):
            if host_network:
                raise UsageError(f"--sysctl {key} cannot be used with --network host: it would change the host's "
                                 "network")
        elif host_ipc and (key in _IPC_SYSCTLS or key.startswith("fs.mqueue.")):
            raise UsageError(f"--sysctl {key} cannot be used with --ipc host: it would change the host's "
                             "IPC namespace")
        elif not (key in _IPC_SYSCTLS or key.startswith("fs.mqueue.")):
            raise UsageError(f"--sysctl {key} is not a namespaced kernel parameter: it would change the whole "
                             "host, which a container may not do (allowed: net.*, kernel.shm*, kernel.msg*, "
                             "kernel.sem, fs.mqueue.*)")
        out.append((key, value))
    return tuple(out)


def shm_size(value: str | None) -> int:
    """--shm-size: the bytes of /dev/shm (default 64 MiB, as Docker)."""
    if value is None:
        return 64 << 20
    from ..units import parse_size
    size = parse_size(value, "--shm-size")
    if size <= 0:
        raise UsageError(f"invalid --shm-size '{value}': give a size above zero (e.g. 256m)")
    return size


def init_program() -> str:
    """The host's statically linked init for --init (catatonit, or tini-static)."""
    for name in INIT_PROGRAMS:
        path = name if os.path.isabs(name) else shutil.which(name)
        if path and os.access(path, os.X_OK):
            return path
    raise UsageError("--init needs a small init program on the host: install the Debian package "
                     "'catatonit' (or 'tini', which has tini-static)")


def publish_all(exposed: dict | None) -> list[str]:
    """-P: every port the image EXPOSEs, published on a free host port (as HOST:PORT/PROTO)."""
    import socket
    out = []
    for spec in sorted(exposed or {}):
        port, _, proto = spec.partition("/")
        proto = proto or "tcp"
        if not port.isdigit() or proto not in ("tcp", "udp"):
            continue
        kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
        with socket.socket(socket.AF_INET, kind) as s:
            s.bind(("", 0))
            host_port = s.getsockname()[1]
        out.append(f"{host_port}:{port}/{proto}")
    return out


# --as-me: the caller's environment is passed, but for what names the host's own places or
# would load host code into the image's programs (docs/hpc.md).
AS_ME_NOT_PASSED = ("PATH", "HOSTNAME", "LD_PRELOAD", "LD_LIBRARY_PATH", "LD_AUDIT", "TMPDIR",
                    "XDG_RUNTIME_DIR", "DBUS_SESSION_BUS_ADDRESS", "SSH_AUTH_SOCK")
# A working directory here would be bound over what the image needs: these and what is in
# them, and /, /run, /tmp, /var themselves (/var/tmp/job or /tmp/x are fine).
_SYSTEM_DIRS = ("/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/libx32", "/proc",
                "/sbin", "/sys", "/usr")
_SYSTEM_TOPS = ("/", "/run", "/tmp", "/var")


@dataclass
class AsMe:
    """What --as-me adds to the flags: each part only where the user gave no flag of its own."""
    volumes: list[str]                    # HOME:HOME, and CWD:CWD unless it is inside HOME
    workdir: str
    network: str = "host"
    userns: str = "keep-id"               # "" in single-uid mode: uid 0 inside is you already
    hostname: str = ""
    env: list[str] = field(default_factory=list)


def as_me(single_uid: bool, environ: dict[str, str] | None = None, cwd: str | None = None,
          bind_cwd: bool = True) -> AsMe:
    """Apptainer's habits: your home and working directory bound read-write at their own paths,
    the working directory set to it, the host's network and host name, your uid (keep-id),
    your environment but for ``AS_ME_NOT_PASSED``.  ``bind_cwd``: False when -w names another."""
    import pwd
    import socket
    environ = dict(os.environ if environ is None else environ)
    cwd = os.path.realpath(cwd or os.getcwd())
    home = environ.get("HOME") or ""
    if not home:
        try:
            home = pwd.getpwuid(os.getuid()).pw_dir
        except KeyError:
            home = ""
    home = os.path.realpath(home) if home else ""
    if bind_cwd and (cwd in _SYSTEM_TOPS or any(cwd == d or cwd.startswith(d + "/") for d in _SYSTEM_DIRS)):
        raise UsageError(f"--as-me binds your working directory into the container, and {cwd} is a system "
                         "directory the image has its own of: cd to your own directory first (or give -w)")
    volumes = []
    if home and home != "/" and os.path.isdir(home):
        volumes.append(f"{home}:{home}")
    if bind_cwd and not (home and (cwd == home or cwd.startswith(home.rstrip("/") + "/"))):
        volumes.append(f"{cwd}:{cwd}")
    return AsMe(volumes=volumes, workdir=cwd, userns="" if single_uid else "keep-id",
                hostname=socket.gethostname(), env=host_environment(environ))


def host_environment(environ: dict[str, str] | None = None) -> list[str]:
    """The caller's environment as KEY=VALUE (--as-me, --env-host: under Slurm, its SLURM_*), but
    for ``AS_ME_NOT_PASSED`` and the engine's own ROOTLESS_* settings."""
    environ = os.environ if environ is None else environ
    return [f"{k}={v}" for k, v in environ.items() if k and k not in AS_ME_NOT_PASSED
            and not k.startswith("ROOTLESS_")]


def namespace_mode(flag: str, value: str | None) -> str:
    """--pid and --ipc: "" (the container's own namespace, Docker's default) or "host"."""
    value = (value or "").strip()
    if value in ("", "private") or (flag == "--ipc" and value == "shareable"):
        return ""
    if value == "host":
        return "host"
    raise UsageError(f"invalid {flag} '{value}': use host (share the host's namespace) or private "
                     "(the default); sharing another container's is not supported")


# --mpi: the variables an MPI launcher (mpirun of Open MPI 4 and 5, PRRTE, a PMIx server such as
# Slurm's) gives each rank; the rank's library reads them to find its server and its peers.
MPI_PREFIXES = ("OMPI_", "OPAL_", "PMIX_", "PRTE_", "PMI_")
# Variables naming the directory a PMIx server and its ranks share (rendezvous files, the
# shared-memory key/value store, the session directory): bound at their own paths.
MPI_DIR_VARIABLES = ("OMPI_MCA_orte_top_session_dir", "OMPI_MCA_orte_jobfam_session_dir",
                     "PMIX_SERVER_TMPDIR", "PRTE_MCA_prte_top_session_dir")
# Open MPI's shared-memory transport copies large messages with process_vm_readv (CMA), which
# the kernel refuses between processes of different user namespaces (each container has its
# own; ptrace's rule) and Open MPI does not try: it warns and copies through the shared
# segment, which this asks at once.
MPI_DEFAULTS = ("OMPI_MCA_btl_vader_single_copy_mechanism=none", "OMPI_MCA_smsc=^cma")


@dataclass
class Mpi:
    """What --mpi adds to the flags: each part only where the user gave no flag of its own."""
    volumes: list[str]
    env: list[str]                         # the launcher's variables, KEY=VALUE
    defaults: list[str]                    # MPI_DEFAULTS the launcher did not set
    network: str = "host"
    pid: str = "host"
    ipc: str = "host"
    userns: str = "keep-id"                # "" in single-uid mode: uid 0 inside is you already
    hostname: str = ""
    launcher_found: bool = True


def mpi(single_uid: bool, environ: dict[str, str] | None = None) -> Mpi:
    """A rank of an MPI job started by a launcher on the host (mpirun, srun): the host's
    network (the PMIx server listens on it, ranks talk TCP), PID and IPC namespaces with the
    host's /dev/shm (ranks map each other's shared-memory segments, and tell them apart by pid),
    your uid (PMIx's native security checks it), the launcher's variables and directories."""
    import socket
    environ = dict(os.environ if environ is None else environ)
    env = [f"{k}={v}" for k, v in environ.items() if k.startswith(MPI_PREFIXES)]
    names = {item.partition("=")[0] for item in env}
    defaults = [d for d in MPI_DEFAULTS if d.partition("=")[0] not in names]
    dirs: list[str] = []
    for name in MPI_DIR_VARIABLES:
        value = environ.get(name, "")
        if not value.startswith("/") or not os.path.isdir(value):
            continue
        path = os.path.realpath(value)
        if path in _SYSTEM_TOPS or any(path == d or path.startswith(d + "/") for d in _SYSTEM_DIRS):
            continue
        dirs.append(path)
    # the outermost of nested directories is enough
    dirs = sorted(set(dirs))
    outer = [d for d in dirs if not any(d != o and d.startswith(o.rstrip("/") + "/") for o in dirs)]
    return Mpi(volumes=[f"{d}:{d}" for d in outer], env=env, defaults=defaults, userns="" if single_uid else "keep-id",
               hostname=socket.gethostname(), launcher_found=bool(names))
