"""User-defined networks without root: containers on one reach each other by name.

    holder (sleep infinity)       a user namespace with the caller's id maps and a network
      netns: br-NAME per network  namespace: one bridge per network, its gateway address on it;
             veth ends            no IP forwarding, so two networks cannot reach each other.
    container (B)                 on a user network, the container's namespaces are created in
      netns: tap0 (slirp4netns)   the holder's user namespace (``SandboxSpec.join_userns``), so a
             eth1 (veth peer)     veth made in the holder's network namespace can be moved into
                                  the container's; slirp4netns still gives it outbound traffic
                                  and published ports on tap0.

Names: every running container on a network finds the others (name and aliases) in its
/etc/hosts, rewritten in place (it is bind-mounted) as containers come and go.  Networks
are kept in ``ROOT/networks/NAME.json``; the holder's pid in ``RUNTIME/netns-holder.pid``.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import re
import shutil
import socket
import time
from dataclasses import asdict, dataclass, field
from typing import NoReturn

from .. import events
from ..errors import Conflict, NotFound, RootlessError, UsageError
from ..sandbox import channel, idmap, libc

SUBNETS = ipaddress.ip_network("10.89.0.0/16")
HOSTS_MARK = "# rootless networks\n"
NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}")     # a network's name


@dataclass
class Network:
    name: str
    subnet: str
    gateway: str
    created: float = field(default_factory=time.time)
    labels: dict = field(default_factory=dict)
    internal: bool = False          # no traffic leaves: containers get no outbound stack

    @property
    def bridge(self) -> str:
        return "br-" + self.name[:12]

    @property
    def id(self) -> str:
        """Docker's network id: 64 hex digits, stable for the network's life (a network made
        again under the same name gets another)."""
        return hashlib.sha256(f"{self.name}\0{self.created!r}".encode()).hexdigest()


class Networks:
    def __init__(self, store):
        self.store = store
        self.dir = os.path.join(store.root, "networks")
        os.makedirs(self.dir, mode=0o700, exist_ok=True)

    def _path(self, name: str) -> str:
        return os.path.join(self.dir, name + ".json")

    def all(self) -> list[Network]:
        out = []
        for f in sorted(os.listdir(self.dir)):
            if f.endswith(".json"):
                with open(os.path.join(self.dir, f)) as fh:
                    out.append(Network(**json.load(fh)))
        return out

    def get(self, name: str) -> Network:
        """A network by name, id, or a unique prefix of its id."""
        try:
            if not NAME.fullmatch(name):          # never a file of ours (a long one: ENAMETOOLONG)
                raise FileNotFoundError
            with open(self._path(name)) as f:
                return Network(**json.load(f))
        except FileNotFoundError:
            by_id = [n for n in self.all() if n.id == name] or (
                [n for n in self.all() if n.id.startswith(name)] if re.fullmatch(r"[0-9a-f]{3,63}", name) else [])
            if len(by_id) == 1:
                return by_id[0]
            if len(by_id) > 1:
                raise UsageError(f"network id prefix '{name}' is ambiguous: give more characters") from None
            raise NotFound(f"network '{name}' does not exist: use a mode (slirp4netns, pasta, none, host), "
                                f"or make it with 'rootless network create {name}' ('rootless network ls' "
                                "lists them)") from None

    def create(self, name: str, subnet: str | None = None, internal: bool = False,
               labels: dict | None = None) -> Network:
        if not NAME.fullmatch(name):
            raise UsageError(f"invalid network name '{name}': letters, digits, '_', '.', '-'")
        if name in ("pasta", "slirp4netns", "none", "host", "bridge"):
            raise UsageError(f"'{name}' is a network mode, not a name you can create")
        with self.store.lock():
            if os.path.exists(self._path(name)):
                raise Conflict(f"network '{name}' already exists")
            taken = {ipaddress.ip_network(n.subnet) for n in self.all()}
            if subnet:
                try:
                    net = ipaddress.ip_network(subnet)
                except ValueError:
                    raise UsageError(f"invalid --subnet '{subnet}': use a CIDR such as 10.90.0.0/24") from None
                if net.version != 4 or net.prefixlen > 29:
                    raise UsageError(f"--subnet {subnet}: use an IPv4 subnet of /29 or larger")
                if any(net.overlaps(t) for t in taken):
                    raise RootlessError(f"subnet {subnet} overlaps another network's")
            else:
                net = next((n for n in SUBNETS.subnets(new_prefix=24) if n not in taken
                            and n.network_address.packed[2] != 0), None)
                if net is None:
                    raise RootlessError("no free subnet left in 10.89.0.0/16: remove a network or give --subnet")
            network = Network(name, str(net), str(next(net.hosts())), internal=internal, labels=dict(labels or {}))
            with open(self._path(name), "w") as f:
                json.dump(asdict(network), f)
        events.emit(self.store.root, "network", "create", network.id, {"name": name, "type": "bridge"})
        return network

    def listed(self, filters: list[str]) -> list[Network]:
        """``network ls --filter``: name=SUBSTRING, label=KEY[=VALUE], dangling=true|false
        (no container on it)."""
        checks = []
        for f in filters:
            key, sep, value = f.partition("=")
            if not sep or key not in ("name", "label", "dangling"):
                raise UsageError(f"invalid filter '{f}': use name=TEXT, label=KEY[=VALUE] or dangling=true|false")
            if key == "name":
                checks.append(lambda n, v=value: v in n.name)
            elif key == "label":
                k, eq, val = value.partition("=")
                checks.append(lambda n, k=k, eq=eq, val=val: k in n.labels and (not eq or str(n.labels[k]) == val))
            else:
                if value not in ("true", "false", "1", "0"):
                    raise UsageError(f"invalid filter '{f}': dangling is true or false")
                want = value in ("true", "1")
                checks.append(lambda n, w=want: (not self.users(n.name)) == w)
        return [n for n in self.all() if all(c(n) for c in checks)]

    def users(self, name: str) -> list[str]:
        """Names of the containers (running or not) on network ``name``."""
        from ..container.records import Containers
        return [r.name for r in Containers(self.store).all() if name in (r.config.get("networks") or {})]

    def remove(self, name: str) -> None:
        """``network rm``: refused while a container uses it.  With the store locked."""
        with self.store.lock():
            net = self.get(name)
            users = self.users(net.name)
            if users:
                raise Conflict(f"network '{net.name}' is used by container {users[0]}: remove it first")
            os.unlink(self._path(net.name))
        events.emit(self.store.root, "network", "destroy", net.id, {"name": net.name, "type": "bridge"})

    def inspect(self, name: str) -> dict:
        """``network inspect``: Docker's shape (Name, Driver, IPAM, Containers)."""
        import datetime
        from ..container.records import Containers
        n = self.get(name)
        prefix = ipaddress.ip_network(n.subnet).prefixlen
        members = {}
        for r in Containers(self.store).all():
            info = (r.config.get("networks") or {}).get(n.name)
            if info is not None:
                members[r.id] = {"Name": r.name, "EndpointID": hashlib.sha256(f"{r.id}\0{n.id}".encode()).hexdigest(),
                                 "MacAddress": "", "IPv4Address": f"{info['ip']}/{prefix}", "IPv6Address": "",
                                 "Aliases": info.get("aliases", [])}
        created = datetime.datetime.fromtimestamp(n.created).astimezone().isoformat()
        return {"Name": n.name, "Id": n.id, "Created": created, "Scope": "local", "Driver": "bridge",
                "EnableIPv6": False, "IPAM": {"Driver": "default", "Options": {},
                                              "Config": [{"Subnet": n.subnet, "Gateway": n.gateway}]},
                "Internal": n.internal, "Attachable": True, "Ingress": False, "ConfigFrom": {"Network": ""},
                "ConfigOnly": False, "Containers": members, "Options": {}, "Labels": n.labels}

    def prune(self, filters: list[str] = ()) -> list[str]:
        """``network prune``: remove every network no container uses; their names.  ``filters``:
        Docker's label=KEY[=VALUE], label!=KEY[=VALUE] and until=TIMESTAMP (made before it)."""
        checks = [_prune_check(f) for f in filters]
        removed = []
        with self.store.lock():
            for net in self.all():
                if not self.users(net.name) and all(c(net) for c in checks):
                    os.unlink(self._path(net.name))
                    events.emit(self.store.root, "network", "destroy", net.id, {"name": net.name, "type": "bridge"})
                    removed.append(net.name)
        return removed


def _prune_check(item: str):
    key, _, value = item.partition("=")
    if key in ("label", "label!"):
        k, eq, val = value.partition("=")
        return lambda n: (k in n.labels and (not eq or str(n.labels[k]) == val)) != (key == "label!")
    if key == "until":
        try:
            limit = float(value)
        except ValueError:
            raise UsageError(f"invalid filter '{item}': until is a Unix timestamp") from None
        return lambda n: n.created < limit
    raise UsageError(f"invalid prune filter '{item}': use label=KEY[=VALUE], label!=KEY[=VALUE] or until=TIMESTAMP")


def allocate(network: Network, used: set[str]) -> str:
    """The lowest free address of ``network`` (the gateway and ``used`` excluded)."""
    for host in ipaddress.ip_network(network.subnet).hosts():
        if str(host) != network.gateway and str(host) not in used:
            return str(host)
    raise RootlessError(f"network {network.name} has no free address left ({network.subnet})")


# --- the holder ----------------------------------------------------------------------------

def _holder_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
        return "(sleep)" in stat and stat.rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def ensure_holder(maps: idmap.IdMaps, run_dir: str) -> int:
    """The pid of the per-user holder of the networks' namespaces, started when none runs."""
    import fcntl
    pidfile = os.path.join(run_dir, "netns-holder.pid")
    # one at a time: two commands starting a holder each would leave one nobody knows of
    lock = os.open(pidfile + ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            with open(pidfile) as f:
                pid = int(f.read())
            if _holder_alive(pid):
                return pid
        except (OSError, ValueError):
            pass
        return _start_holder(maps, pidfile)
    finally:
        os.close(lock)


def _start_holder(maps: idmap.IdMaps, pidfile: str) -> int:
    from ..sandbox.userns import fork_into_userns, wait as wait_child
    sleep = shutil.which("sleep") or "/bin/sleep"

    def child(sock: socket.socket) -> NoReturn:
        libc.set_pdeathsig(0)          # it outlives this command
        if os.fork():
            os._exit(0)    # the holder is nobody's child of ours (spawn.spawn_daemon says why)
        os.setsid()
        libc.unshare(libc.CLONE_NEWNET)
        from ..sandbox.net import loopback_up
        loopback_up()
        channel.send(sock, "ready", pid=os.getpid())
        sock.close()
        null = os.open("/dev/null", os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        os.execv(sleep, [sleep, "infinity"])

    first, sock = fork_into_userns(maps, child, name="rootless-netns")
    try:
        with sock:
            msg, _ = channel.expect(sock, "ready")
    finally:
        wait_child(first)
    pid = int(msg["pid"])
    with open(pidfile + ".tmp", "w") as f:
        f.write(str(pid))
    os.rename(pidfile + ".tmp", pidfile)
    return pid


def _ip(userns_pid: int, netns_pid: int, commands: list[str], tolerate: str = "") -> None:
    """Run ``ip -batch`` in the network namespace of ``netns_pid``, as root of ``userns_pid``'s."""
    from ..sandbox.spawn import read_all, spawn
    fds = [os.open(f"/proc/{userns_pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC),
           os.open(f"/proc/{netns_pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)]

    def enter() -> None:
        libc.setns(fds[0], libc.CLONE_NEWUSER)
        libc.setns(fds[1], libc.CLONE_NEWNET)
    r, w = os.pipe()
    try:
        pid, er = spawn([shutil.which("ip") or "/sbin/ip", "-force", "-batch", "-"], stdin_fd=r, setup=enter)
    finally:
        for fd in fds + [r]:
            os.close(fd)
    os.write(w, "".join(c + "\n" for c in commands).encode())
    os.close(w)
    detail = read_all(er)
    _, status = os.waitpid(pid, 0)
    if status != 0 and not (tolerate and tolerate in detail):
        raise RootlessError(f"configuring the container's network failed: {detail or f'wait status {status}'}")


def _veth(short_id: str, ifname: str) -> str:
    """The holder's end of a container's interface (names hold 15 bytes)."""
    return f"rl{short_id[:8]}{ifname[3:]}"


def attach(holder: int, pid: int, network: Network, address: str, short_id: str, ifname: str = "eth1") -> None:
    """Connect the container whose PID 1 is ``pid`` to ``network`` as ``ifname`` with ``address``."""
    prefix = ipaddress.ip_network(network.subnet).prefixlen
    veth = _veth(short_id, ifname)
    _ip(holder, holder, [f"link add {network.bridge} type bridge"], tolerate="File exists")
    _ip(holder, holder, [
        f"addr replace {network.gateway}/{prefix} dev {network.bridge}",
        f"link set {network.bridge} up",
        f"link add {veth} type veth peer name {ifname} netns {pid}",
        f"link set {veth} master {network.bridge} up",
    ])
    _ip(holder, pid, [f"addr add {address}/{prefix} dev {ifname}", f"link set {ifname} up"])


# --- names --------------------------------------------------------------------------------

def hosts_entries(peers: list[tuple[str, list[str], str]]) -> str:
    """/etc/hosts lines for (name, aliases, address) of the containers on a container's networks."""
    return HOSTS_MARK + "".join(f"{addr}\t{' '.join([name, *aliases])}\n" for name, aliases, addr in peers)


def rewrite_hosts(path: str, entries: str) -> None:
    """Replace the networks part of a bind-mounted hosts file in place (a rename would not be seen)."""
    try:
        with open(path, "r+") as f:
            base = f.read().split(HOSTS_MARK)[0]
            f.seek(0)
            f.write(base + entries)
            f.truncate()
    except OSError:
        pass


class UserNetworkPlan:
    """The user networks of one container, from ``run`` to its end."""

    def __init__(self, store, names: list[str], aliases: list[str]):
        self.store = store
        self.networks = [Networks(store).get(n) for n in names]
        self.aliases = aliases
        self.holder = 0

    @property
    def internal(self) -> bool:
        """Every network is internal: the container gets no userspace stack, no default route."""
        return all(n.internal for n in self.networks)

    def reserve(self, rec, records) -> None:
        """Give ``rec`` an address on each network (call with the store locked; kept across restarts).
        The networks it joined while it was not running ('network connect') are its networks too."""
        mine = rec.config.setdefault("networks", {})
        known = {n.name for n in self.networks}
        for name in list(mine):
            if name not in known:
                try:
                    self.networks.append(Networks(self.store).get(name))
                except NotFound:
                    del mine[name]          # removed meanwhile ('network rm' refuses that; a crash)
        for net in self.networks:
            if net.name in mine:
                continue
            used = {r.config.get("networks", {}).get(net.name, {}).get("ip") for r in records.all()
                    if r.id != rec.id and r.state in ("created", "running")}
            interfaces = {info.get("interface") for info in mine.values()}
            ifname = next(f"eth{i}" for i in range(1, len(mine) + 2) if f"eth{i}" not in interfaces)
            mine[net.name] = {"ip": allocate(net, used), "aliases": list(self.aliases), "interface": ifname}

    def _peers(self, records, rec_id: str, include: bool = True) -> dict[str, list]:
        """Per network: (name, aliases, ip) of the running containers on it (and ``rec_id`` if asked)."""
        from ..container.records import running
        out: dict[str, list] = {}
        for r in records.all():
            for net, info in (r.config.get("networks") or {}).items():
                if (r.id == rec_id and include) or (r.id != rec_id and running(r)):
                    out.setdefault(net, []).append((r.name, info.get("aliases", []), info["ip"]))
        return out

    def hosts_for(self, records, rec) -> str:
        peers = self._peers(records, rec.id)
        return hosts_entries([p for net in self.networks for p in peers.get(net.name, [])])

    def start_holder(self, maps, run_dir: str) -> int:
        """The holder's user namespace, open (for ``SandboxSpec.join_userns``)."""
        self.holder = ensure_holder(maps, run_dir)
        return os.open(f"/proc/{self.holder}/ns/user", os.O_RDONLY | os.O_CLOEXEC)

    def attach(self, rec, pid: int, records) -> None:
        for net in self.networks:
            info = rec.config["networks"][net.name]
            attach(self.holder, pid, net, info["ip"], rec.id, info.get("interface", "eth1"))
        self.refresh_peers(records, rec.id)

    def refresh_peers(self, records, rec_id: str, leaving: bool = False) -> None:
        """Rewrite the hosts files of the running containers that share a network with ``rec_id``."""
        from ..container.records import running
        mine = {n.name for n in self.networks}
        for r in records.all():
            nets = set(r.config.get("networks") or {})
            if r.id == rec_id or not (nets & mine) or not running(r):
                continue
            peers = self._peers(records, rec_id, include=not leaving)
            entries = [p for n in sorted(nets) for p in peers.get(n, []) if p[0] != r.name]
            rewrite_hosts(os.path.join(self.store.container_dir(r.id), "hosts"), hosts_entries(entries))


def _on_user_network(rec) -> bool:
    """Was the container made on a user network (so that its namespaces are the holder's)?"""
    from . import MODES
    mode = (rec.config.get("options") or {}).get("network") or ""
    return bool(rec.config.get("networks")) or bool(mode and mode.split(":")[0] not in MODES + ("bridge", "container"))


def connect(store, maps, run_dir: str, network_name: str, container: str, aliases: list[str]) -> None:
    """``network connect``: a container joins one more user network — at once if it runs, at
    its next start if not."""
    from ..container.records import Containers
    from ..container.records import running
    records = Containers(store)
    rec = records.find(container)
    network = Networks(store).get(network_name)
    network_name = network.name
    if not _on_user_network(rec):
        raise RootlessError(f"container {rec.name} was not made on a user network, so its namespaces are not "
                            "the networks' own: create it with --network NAME to connect it to others later")
    if network_name in (rec.config.get("networks") or {}):
        raise Conflict(f"container {rec.name} is already on network {network_name}")
    plan = UserNetworkPlan(store, [network_name], aliases)
    is_running = running(rec) and rec.init_pid
    with store.lock():
        rec = records.update(rec.id, lambda r: plan.reserve(r, records), rec.name)
    events.emit(store.root, "network", "connect", network.id,
                {"container": rec.id, "name": network_name, "type": "bridge"})
    if not is_running:
        return                  # attached when it starts (UserNetworkPlan.reserve)
    os.close(plan.start_holder(maps, run_dir))
    info = rec.config["networks"][network_name]
    attach(plan.holder, rec.init_pid, plan.networks[0], info["ip"], rec.id, info["interface"])
    plan.refresh_peers(records, rec.id)
    everyone = plan._peers(records, rec.id, include=False)
    entries = [p for n in sorted(rec.config["networks"]) for p in everyone.get(n, [])]
    rewrite_hosts(os.path.join(store.container_dir(rec.id), "hosts"), hosts_entries(entries))


def disconnect(store, run_dir: str, network_name: str, container: str) -> None:
    """``network disconnect``: a container leaves a user network (its interface is removed if it runs)."""
    from ..container.records import Containers
    from ..container.records import running
    records = Containers(store)
    rec = records.find(container)
    network = Networks(store).get(network_name)
    network_name = network.name
    info = (rec.config.get("networks") or {}).get(network_name)
    if info is None:
        raise RootlessError(f"container {rec.name} is not on network {network_name}")
    plan = UserNetworkPlan(store, [network_name], [])
    if running(rec) and rec.init_pid:
        pidfile = os.path.join(run_dir, "netns-holder.pid")
        try:
            with open(pidfile) as f:
                holder = int(f.read())
            if _holder_alive(holder):
                _ip(holder, holder, [f"link del {_veth(rec.id, info.get('interface', 'eth1'))}"],
                    tolerate="Cannot find device")
        except (OSError, ValueError):
            pass
        plan.refresh_peers(records, rec.id, leaving=True)
    with store.lock():
        records.update(rec.id, lambda r: (r.config.get("networks") or {}).pop(network_name, None), rec.name)
    events.emit(store.root, "network", "disconnect", network.id,
                {"container": rec.id, "name": network_name, "type": "bridge"})
