"""Volumes, networks and ``system df`` through the API: Docker's CLI and docker-py against the
service, containers made with rootless's own CLI on the same store.

Prunes here always carry a label filter: the store is the whole session's.  Networks are
only made and inspected (and joined by containers that send nothing outside them)."""

from __future__ import annotations

import json
import re

import pytest

from tests.api.conftest import needs_docker

pytestmark = pytest.mark.both_modes


@pytest.fixture
def cleanup(api):
    """Names to remove at the end: ("container"|"volume"|"network", name)."""
    made: list[tuple[str, str]] = []
    yield made
    for kind, name in reversed(made):
        if kind == "container":
            api.rl("rm", "-f", name)
        else:
            api.rl(kind, "rm", name)


def _lines(proc) -> list[str]:
    return [line for line in proc.stdout.splitlines() if line.strip()]


# --- volumes ----------------------------------------------------------------------------------

@needs_docker
def test_docker_volume_create_ls_inspect_rm(api, cleanup):
    cleanup += [("volume", "tv-one"), ("volume", "tv-two")]
    assert api.docker("volume", "create", "--label", "tv=1", "tv-one", check=True).stdout.strip() == "tv-one"
    api.docker("volume", "create", "tv-two", check=True)
    names = _lines(api.docker("volume", "ls", "-q", "--filter", "label=tv=1", check=True))
    assert names == ["tv-one"]
    names = _lines(api.docker("volume", "ls", "--format", "{{.Name}} {{.Driver}}", "--filter", "name=tv-", check=True))
    assert names == ["tv-one local", "tv-two local"]
    info = json.loads(api.docker("volume", "inspect", "tv-one", check=True).stdout)[0]
    assert info["Name"] == "tv-one" and info["Driver"] == "local" and info["Labels"] == {"tv": "1"}
    assert info["Mountpoint"].endswith("/volumes/tv-one/_data") and info["Scope"] == "local"

    # in use by a container (not even started): refused, 409; dangling=false lists it
    cleanup.append(("container", "tv-user"))
    api.rl("create", "--name", "tv-user", "-v", "tv-one:/data", "busybox", "true", check=True)
    proc = api.docker("volume", "rm", "tv-one")
    assert proc.returncode != 0 and "in use" in proc.stderr
    assert "tv-one" not in _lines(api.docker("volume", "ls", "-q", "--filter", "dangling=true", check=True))
    assert "tv-one" in _lines(api.docker("volume", "ls", "-q", "--filter", "dangling=false", check=True))
    api.rl("rm", "tv-user", check=True)
    assert _lines(api.docker("volume", "rm", "tv-one", "tv-two", check=True)) == ["tv-one", "tv-two"]
    proc = api.docker("volume", "inspect", "tv-one")
    assert proc.returncode != 0 and "no such volume" in proc.stderr.lower()


def test_volume_api_errors(api):
    c = api.http()
    r = c.get("/v1.41/volumes/tv-missing")
    assert r.status_code == 404 and "no such volume" in r.json()["message"]
    assert c.delete("/v1.41/volumes/tv-missing", params={"force": "1"}).status_code == 204
    assert c.delete("/v1.41/volumes/tv-missing").status_code == 404
    r = c.post("/v1.41/volumes/create", json={"Name": "tv-x", "Driver": "nfs"})
    assert r.status_code == 400 and "local" in r.json()["message"]
    r = c.post("/v1.41/volumes/create", json={"Name": "tv-x", "DriverOpts": {"type": "tmpfs"}})
    assert r.status_code == 400 and "not supported" in r.json()["message"]
    r = c.post("/v1.41/volumes/create", json={"Name": "bad/name"})
    assert r.status_code == 400 and "invalid volume name" in r.json()["message"]
    r = c.get("/v1.41/volumes", params={"filters": json.dumps({"colour": ["red"]})})
    assert r.status_code == 400 and "invalid filter" in r.json()["message"]
    listed = c.get("/v1.41/volumes").json()
    assert set(listed) == {"Volumes", "Warnings"}


@needs_docker
def test_docker_volume_prune_with_a_label(api, cleanup):
    cleanup += [("volume", "tvp-keep"), ("volume", "tvp-go"), ("volume", "tvp-used"), ("container", "tvp-c")]
    api.docker("volume", "create", "--label", "tvp=keep", "tvp-keep", check=True)
    api.docker("volume", "create", "--label", "tvp=go", "tvp-go", check=True)
    api.docker("volume", "create", "--label", "tvp=go", "tvp-used", check=True)
    api.rl("create", "--name", "tvp-c", "-v", "tvp-used:/d", "busybox", "true", check=True)
    out = api.docker("volume", "prune", "-f", "--filter", "label=tvp=go", check=True).stdout
    assert "tvp-go" in out and "tvp-keep" not in out and "tvp-used" not in out
    assert "Total reclaimed space" in out
    left = _lines(api.docker("volume", "ls", "-q", "--filter", "name=tvp-", check=True))
    assert left == ["tvp-keep", "tvp-used"]


def test_docker_py_volumes(api, cleanup):
    docker = pytest.importorskip("docker")
    client = docker.DockerClient(base_url=api.url, version="1.41")
    cleanup.append(("volume", "tvpy"))
    v = client.volumes.create("tvpy", labels={"by": "docker-py"})
    assert v.name == "tvpy" and v.attrs["Labels"] == {"by": "docker-py"}
    assert "tvpy" in [x.name for x in client.volumes.list(filters={"label": "by=docker-py"})]
    assert client.volumes.get("tvpy").attrs["Driver"] == "local"
    client.volumes.get("tvpy").remove()
    with pytest.raises(docker.errors.NotFound):
        client.volumes.get("tvpy")


# --- networks ---------------------------------------------------------------------------------

@needs_docker
def test_docker_network_create_ls_inspect_rm(api, cleanup):
    cleanup.append(("network", "tn-api"))
    net_id = api.docker("network", "create", "--subnet", "10.89.200.0/24", "--label", "tn=1", "tn-api",
                        check=True).stdout.strip()
    assert re.fullmatch(r"[0-9a-f]{64}", net_id)
    listed = _lines(api.docker("network", "ls", "--format", "{{.Name}} {{.Driver}} {{.Scope}}", check=True))
    for line in ("bridge bridge local", "host host local", "none null local", "tn-api bridge local"):
        assert line in listed
    assert _lines(api.docker("network", "ls", "-q", "--no-trunc", "--filter", "label=tn=1", check=True)) == [net_id]
    assert _lines(api.docker("network", "ls", "--format", "{{.Name}}", "--filter", "type=custom",
                             "--filter", "name=tn-api", check=True)) == ["tn-api"]
    info = json.loads(api.docker("network", "inspect", net_id[:12], check=True).stdout)[0]
    assert info["Name"] == "tn-api" and info["Id"] == net_id and info["Driver"] == "bridge"
    assert info["IPAM"]["Config"] == [{"Subnet": "10.89.200.0/24", "Gateway": "10.89.200.1"}]
    assert info["Labels"] == {"tn": "1"} and info["Containers"] == {} and info["Internal"] is False
    proc = api.docker("network", "create", "tn-api")
    assert proc.returncode != 0 and "already exists" in proc.stderr
    proc = api.docker("network", "rm", "bridge")
    assert proc.returncode != 0 and "pre-defined" in proc.stderr
    assert api.docker("network", "rm", net_id[:10], check=True).returncode == 0
    proc = api.docker("network", "inspect", "tn-api")
    # docker 28 says "network tn-api does not exist"; Debian's docker.io 20.10 (CI) "No such network: tn-api"
    assert proc.returncode != 0 and ("does not exist" in proc.stderr or "No such network" in proc.stderr)


@needs_docker
def test_docker_network_connect_and_disconnect(api, cleanup):
    cleanup += [("network", "tn-a"), ("network", "tn-b"), ("container", "tn-made"), ("container", "tn-runs")]
    api.docker("network", "create", "--internal", "tn-a", check=True)
    api.docker("network", "create", "--internal", "tn-b", check=True)
    # a container not running joins at its next start
    api.rl("create", "--name", "tn-made", "--network", "tn-a", "busybox", "sleep", "60", check=True)
    api.docker("network", "connect", "--alias", "made2", "tn-b", "tn-made", check=True)
    members = json.loads(api.docker("network", "inspect", "tn-b", check=True).stdout)[0]["Containers"]
    (member,) = members.values()
    assert member["Name"] == "tn-made" and member["Aliases"] == ["made2"]
    assert member["IPv4Address"].startswith(json.loads(api.docker("network", "inspect", "tn-b", check=True).stdout)
                                            [0]["IPAM"]["Config"][0]["Subnet"].rsplit(".", 1)[0] + ".")
    proc = api.docker("network", "connect", "tn-b", "tn-made")
    assert proc.returncode != 0 and "already" in proc.stderr
    api.rl("start", "tn-made", check=True)
    addrs = api.rl("exec", "tn-made", "ip", "-4", "-o", "addr", check=True).stdout
    assert member["IPv4Address"] in addrs
    api.docker("network", "disconnect", "tn-b", "tn-made", check=True)
    assert json.loads(api.docker("network", "inspect", "tn-b", check=True).stdout)[0]["Containers"] == {}
    assert member["IPv4Address"] not in api.rl("exec", "tn-made", "ip", "-4", "-o", "addr", check=True).stdout
    # a running container joins at once
    api.rl("run", "-d", "--name", "tn-runs", "--network", "tn-a", "busybox", "sleep", "60", check=True)
    api.docker("network", "connect", "tn-b", "tn-runs", check=True)
    members = json.loads(api.docker("network", "inspect", "tn-b", check=True).stdout)[0]["Containers"]
    address = next(iter(members.values()))["IPv4Address"]
    assert address in api.rl("exec", "tn-runs", "ip", "-4", "-o", "addr", check=True).stdout
    proc = api.docker("network", "rm", "tn-b")
    assert proc.returncode != 0 and "used by container" in proc.stderr
    proc = api.docker("network", "connect", "bridge", "tn-runs")
    assert proc.returncode != 0 and "network mode" in proc.stderr


@needs_docker
def test_docker_network_prune_with_a_label(api, cleanup):
    cleanup += [("network", "tnp-keep"), ("network", "tnp-go")]
    api.docker("network", "create", "--label", "tnp=keep", "tnp-keep", check=True)
    api.docker("network", "create", "--label", "tnp=go", "tnp-go", check=True)
    out = api.docker("network", "prune", "-f", "--filter", "label=tnp=go", check=True).stdout
    assert "tnp-go" in out and "tnp-keep" not in out
    assert _lines(api.docker("network", "ls", "--format", "{{.Name}}", "--filter", "name=tnp-", check=True)) \
        == ["tnp-keep"]


def test_network_api_errors(api):
    c = api.http()
    assert c.get("/v1.41/networks/tn-missing").status_code == 404
    assert c.get("/v1.41/networks/" + "n" * 300).status_code == 404      # not a 500 (ENAMETOOLONG)
    assert c.get("/v1.41/volumes/" + "v" * 300).status_code == 404
    r = c.post("/v1.41/networks/create", json={"Name": "tn-x", "Driver": "overlay"})
    assert r.status_code == 400 and "bridge" in r.json()["message"]
    r = c.post("/v1.41/networks/create", json={"Name": "tn-x", "EnableIPv6": True})
    assert r.status_code == 400 and "IPv6" in r.json()["message"]
    r = c.post("/v1.41/networks/create", json={"Name": "bridge"})
    assert r.status_code == 409
    r = c.post("/v1.41/networks/tn-missing/connect", json={"Container": "nobody"})
    assert r.status_code == 404
    assert c.get("/v1.41/networks/bridge").json()["Driver"] == "bridge"
    assert c.get("/v1.41/networks/none").json()["Driver"] == "null"


def test_docker_py_networks(api, cleanup):
    docker = pytest.importorskip("docker")
    client = docker.DockerClient(base_url=api.url, version="1.41")
    cleanup += [("container", "tnpy-c"), ("network", "tnpy")]
    ipam = docker.types.IPAMConfig(pool_configs=[docker.types.IPAMPool(subnet="10.89.201.0/24")])
    net = client.networks.create("tnpy", driver="bridge", ipam=ipam, labels={"by": "docker-py"}, internal=True)
    assert net.name == "tnpy" and len(net.id) == 64
    assert [n.name for n in client.networks.list(names=["tnpy"])] == ["tnpy"]
    assert "bridge" in [n.name for n in client.networks.list()]
    got = client.networks.get(net.id)
    assert got.attrs["IPAM"]["Config"][0]["Subnet"] == "10.89.201.0/24"
    api.rl("create", "--name", "tnpy-c", "--network", "tnpy", "busybox", "true", check=True)
    got.disconnect("tnpy-c")
    got.connect("tnpy-c", aliases=["py"])
    got.reload()
    assert [m["Aliases"] for m in got.attrs["Containers"].values()] == [["py"]]
    api.rl("rm", "tnpy-c", check=True)
    got.remove()
    with pytest.raises(docker.errors.NotFound):
        client.networks.get("tnpy")


# --- system df --------------------------------------------------------------------------------

@needs_docker
def test_docker_system_df(api, cleanup):
    cleanup += [("container", "tdf-c"), ("volume", "tdf-v")]
    api.rl("volume", "create", "tdf-v", check=True)
    api.rl("run", "--name", "tdf-c", "-v", "tdf-v:/v", "busybox", "sh", "-c", "head -c 100000 /dev/zero > /v/f",
           check=True)
    out = api.docker("system", "df", check=True).stdout
    for kind in ("Images", "Containers", "Local Volumes", "Build Cache"):
        assert kind in out
    verbose = api.docker("system", "df", "-v", check=True).stdout
    assert re.search(r"tdf-v\s+1\s+10\d(\.\d+)?kB", verbose), verbose
    assert "busybox" in verbose and "tdf-c" in verbose
    df = api.http().get("/v1.41/system/df").json()
    assert set(df) >= {"LayersSize", "Images", "Containers", "Volumes", "BuildCache"}
    (vol,) = [v for v in df["Volumes"] if v["Name"] == "tdf-v"]
    assert vol["UsageData"]["RefCount"] == 1 and vol["UsageData"]["Size"] >= 100000
    (image,) = [i for i in df["Images"] if "busybox:latest" in i["RepoTags"]]
    assert image["Size"] > 0 and image["Containers"] >= 1 and df["LayersSize"] >= image["Size"]
