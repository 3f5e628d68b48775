"""User-defined networks: containers reach each other by name and alias, other networks not.

Traffic rule: the networks here are created ``--internal`` wherever a container could try an
address it should not reach — with no userspace stack there is no default route, so the
attempt fails inside the container's own namespace and nothing leaves the machine.  Only
the addresses of the networks these tests create (10.89.x.x, inside our namespaces) are used.
"""

from __future__ import annotations

import json
import time

import pytest

pytestmark = [pytest.mark.both_modes, pytest.mark.vm]   # vm: also in scripts/vm-test's guest

GET = 'printf "GET / HTTP/1.0\\r\\n\\r\\n" | nc -w 3 {host} 8080'
WEB = 'mkdir -p /w; echo "hello from $HOSTNAME" > /w/index.html; trap "exit 0" TERM; httpd -f -p 8080 -h /w & wait'


@pytest.fixture
def nets(rl):
    made, containers = [], []

    def network(name: str, *args: str) -> str:
        proc = rl("network", "create", *args, name)
        assert proc.returncode == 0, proc.stderr
        made.append(name)
        return name

    def container(name: str, *args: str) -> str:
        proc = rl("run", "-d", "--name", name, *args)
        assert proc.returncode == 0, proc.stderr
        containers.append(name)
        return proc.stdout.strip()
    yield network, container
    for c in containers:
        rl("rm", "-f", c)
    for n in made:
        rl("network", "rm", n)


def _wait_http(rl, net: str, host: str, timeout: float = 15) -> str:
    deadline = time.monotonic() + timeout
    out = ""
    while time.monotonic() < deadline:
        out = rl("run", "--rm", "--network", net, "busybox", "sh", "-c", GET.format(host=host)).stdout
        if "hello" in out:
            return out
        time.sleep(0.2)
    return out


def test_containers_reach_each_other_by_name_and_alias(rl, nets):
    network, container = nets
    network("tn-a", "--internal")
    container("tn-web", "--network", "tn-a", "--network-alias", "www", "-h", "tn-web", "busybox", "sh", "-c", WEB)
    assert "hello from tn-web" in _wait_http(rl, "tn-a", "tn-web")
    assert "hello from tn-web" in _wait_http(rl, "tn-a", "www")
    info = json.loads(rl("network", "inspect", "tn-a").stdout)[0]
    members = list(info["Containers"].values())
    assert members[0]["Name"] == "tn-web" and members[0]["IPv4Address"].startswith(info["IPAM"]["Config"][0]
                                                                                     ["Subnet"].rsplit(".", 1)[0])


def test_other_networks_cannot_reach(rl, nets):
    network, container = nets
    network("tn-b", "--internal")
    network("tn-c", "--internal")
    container("tn-web2", "--network", "tn-b", "busybox", "sh", "-c", WEB)
    assert "hello" in _wait_http(rl, "tn-b", "tn-web2")
    ip = json.loads(rl("network", "inspect", "tn-b").stdout)[0]["Containers"]
    address = next(iter(ip.values()))["IPv4Address"].split("/")[0]
    other = rl("run", "--rm", "--network", "tn-c", "busybox", "sh", "-c",
               f"grep tn-web2 /etc/hosts || echo no-name; {GET.format(host=address)} 2>&1; ip route")
    assert "no-name" in other.stdout and "hello" not in other.stdout
    assert "default" not in other.stdout      # internal: no route out, the attempt stayed inside
    subnets = {json.loads(rl("network", "inspect", n).stdout)[0]["IPAM"]["Config"][0]["Subnet"]
               for n in ("tn-b", "tn-c")}
    assert len(subnets) == 2                  # each network has its own subnet


def test_network_commands_and_errors(rl, nets):
    network, container = nets
    network("tn-d")
    assert "tn-d" in rl("network", "ls", "-q").stdout.split()
    assert rl("network", "create", "tn-d").returncode == 125            # exists
    assert rl("network", "create", "--subnet", "nonsense", "tn-e").returncode == 125
    missing = rl("run", "--rm", "--network", "no-such-net", "busybox", "true")
    assert missing.returncode == 125 and "network create no-such-net" in missing.stderr
    assert rl("run", "--rm", "--network-alias", "x", "busybox", "true").returncode == 125
    network("tn-f", "--internal")
    assert rl("run", "--rm", "--network", "tn-f", "-p", "18999:80", "busybox", "true").returncode == 125
    container("tn-user", "--network", "tn-d", "busybox", "sleep", "30")
    assert rl("network", "rm", "tn-d").returncode == 1                   # in use


def test_connect_and_disconnect(rl, nets):
    network, container = nets
    network("tn-g", "--internal")
    network("tn-h", "--internal")
    container("tn-multi", "--network", "tn-g", "busybox", "sh", "-c", WEB)
    assert "hello" in _wait_http(rl, "tn-g", "tn-multi")
    assert "hello" not in rl("run", "--rm", "--network", "tn-h", "busybox", "sh", "-c",
                             GET.format(host="tn-multi") + " 2>&1").stdout
    assert rl("network", "connect", "--alias", "multi", "tn-h", "tn-multi").returncode == 0
    assert "hello" in _wait_http(rl, "tn-h", "multi")                 # now on tn-h too, by its alias
    again = rl("network", "connect", "tn-h", "tn-multi")
    assert again.returncode == 125 and "already on network" in again.stderr
    assert rl("network", "disconnect", "tn-h", "tn-multi").returncode == 0
    out = rl("run", "--rm", "--network", "tn-h", "busybox", "sh", "-c",
             "grep tn-multi /etc/hosts || echo gone").stdout
    assert "gone" in out
    assert "hello" in _wait_http(rl, "tn-g", "tn-multi")              # still on tn-g
