"""The container endpoints, end to end through Docker's own clients: the ``docker`` CLI and
docker-py (create, start, run -d, ps, inspect, port, stop, kill, restart, pause, rename, top,
stats, diff, export, prune, wait, rm), and plain HTTP for what no client sends as such."""

from __future__ import annotations

import io
import json
import os
import socket
import tarfile
import threading
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

from tests.api.conftest import needs_docker

pytestmark = pytest.mark.both_modes


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def names(api):
    """Container names for one test, removed (rm -f) at its end."""
    made: list[str] = []

    def make(prefix: str = "c") -> str:
        made.append(_name(prefix))
        return made[-1]
    yield make
    for n in made:
        api.http().delete(f"/containers/{n}", params={"force": "1", "v": "1"})


def _inspect(api, name: str) -> dict:
    r = api.http().get(f"/containers/{name}/json")
    assert r.status_code == 200, r.text
    return r.json()


def _until(check, what: str, timeout: float = 60):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen")
        time.sleep(0.05)


@needs_docker
def test_create_start_ps_inspect_rm_with_the_docker_cli(api, names):
    n = names()
    cid = api.docker("create", "--name", n, "-e", "GREETING=hi there", "-l", "team=api", "-w", "/tmp",
                     "--hostname", "box", "busybox", "sleep", "300", check=True).stdout.strip()
    assert len(cid) == 64
    out = api.docker("inspect", "-f", "{{.State.Status}} {{.Name}} {{json .Config.Cmd}} {{index .Config.Labels "
                     "\"team\"}} {{.Config.WorkingDir}} {{.Config.Hostname}}", n, check=True).stdout.split()
    assert out == ["created", f"/{n}", '["sleep","300"]', "api", "/tmp", "box"]
    assert n in api.docker("ps", "-a", "--format", "{{.Names}} {{.Status}}", check=True).stdout
    assert n not in api.docker("ps", "--format", "{{.Names}}", check=True).stdout
    assert "virtual" in api.docker("ps", "-a", "-s", "--filter", f"name={n}", "--format", "{{.Size}}",
                                   check=True).stdout
    assert api.docker("start", n, check=True).stdout.strip() == n
    info = _inspect(api, n)
    assert info["State"]["Running"] and info["State"]["Status"] == "running" and info["State"]["Pid"] > 0
    assert info["State"]["StartedAt"] > "2000" and info["Id"] == cid
    assert "GREETING=hi there" in info["Config"]["Env"]
    rows = api.docker("ps", "--filter", "label=team=api", "--format", "{{.ID}} {{.Names}} {{.Command}}",
                      check=True).stdout
    assert f"{cid[:12]} {n}" in rows and "sleep 300" in rows
    assert api.docker("ps", "-q", "--filter", f"name={n}", "--filter", "status=exited", check=True).stdout == ""
    assert api.docker("rm", "-f", n, check=True).stdout.strip() == n
    gone = api.docker("inspect", n)
    assert gone.returncode != 0 and "no such" in gone.stderr.lower()


@needs_docker
def test_run_detached_with_a_port_a_bind_and_env_then_port_stop_rm(api, names, tmp_path):
    n = names("web")
    www = tmp_path / "www"
    www.mkdir()
    (www / "index.html").write_text("hello from the api\n")
    port = _free_port()
    api.docker("run", "-d", "--name", n, "-p", f"127.0.0.1:{port}:8080", "-v", f"{www}:/www:ro",
               "-e", "WHO=api", "busybox", "httpd", "-f", "-p", "8080", "-h", "/www", check=True)
    assert api.docker("port", n, check=True).stdout.strip() == f"8080/tcp -> 127.0.0.1:{port}"
    assert api.docker("port", n, "8080", check=True).stdout.strip() == f"127.0.0.1:{port}"

    def fetch():
        try:
            return urllib.request.urlopen(f"http://127.0.0.1:{port}/index.html", timeout=5).read()
        except OSError:
            return None
    assert _until(fetch, "httpd answering") == b"hello from the api\n"
    info = _inspect(api, n)
    assert [(m["Type"], m["Source"], m["Destination"], m["RW"]) for m in info["Mounts"]] == \
        [("bind", str(www), "/www", False)]
    assert info["HostConfig"]["PortBindings"] == {"8080/tcp": [{"HostIp": "127.0.0.1", "HostPort": str(port)}]}
    assert "WHO=api" in info["Config"]["Env"]
    assert f"127.0.0.1:{port}->8080/tcp" in api.docker("ps", "--format", "{{.Ports}}", "-f", f"name={n}",
                                                       check=True).stdout
    assert api.docker("stop", "-t", "1", n, check=True).stdout.strip() == n
    state = _inspect(api, n)["State"]
    assert state["Status"] == "exited" and not state["Running"] and state["FinishedAt"] > "2000"
    assert api.docker("port", n).stdout.strip() == ""
    assert api.docker("rm", n, check=True).returncode == 0


@needs_docker
def test_kill_wait_restart_rename_top(api, names):
    n = names()
    api.docker("run", "-d", "--name", n, "busybox", "sleep", "300", check=True)
    top = api.docker("top", n, check=True).stdout
    assert "sleep 300" in top and "PID" in top
    api.docker("kill", n, check=True)
    assert api.docker("wait", n, check=True).stdout.strip() == "137"
    assert _inspect(api, n)["State"]["ExitCode"] == 137
    again = api.docker("kill", n)
    assert again.returncode != 0 and "is not running" in again.stderr
    api.docker("restart", "-t", "1", n, check=True)
    assert _inspect(api, n)["State"]["Running"]
    new = names()
    api.docker("rename", n, new, check=True)
    assert _inspect(api, new)["Name"] == f"/{new}"
    assert api.http().get(f"/containers/{n}/json").status_code == 404
    api.docker("restart", "-t", "0", new, check=True)
    assert _inspect(api, new)["State"]["Running"]
    api.docker("rm", "-f", new, check=True)


@needs_docker
def test_pause_and_unpause(api, names):
    n = names()
    api.docker("run", "-d", "--name", n, "busybox", "sleep", "300", check=True)
    r = api.docker("pause", n)
    if r.returncode != 0 and "no cgroup" in r.stderr:
        pytest.skip("pause needs a delegated cgroup")
    assert r.returncode == 0, r.stderr
    assert _inspect(api, n)["State"]["Status"] == "paused"
    assert "Paused" in api.docker("ps", "--format", "{{.Status}}", "-f", f"name={n}", check=True).stdout
    assert n in api.docker("ps", "--format", "{{.Names}}", "-f", "status=paused", check=True).stdout
    assert api.docker("pause", n).returncode != 0
    api.docker("unpause", n, check=True)
    assert _inspect(api, n)["State"]["Status"] == "running"
    api.docker("pause", n, check=True)
    api.docker("stop", "-t", "1", n, check=True)         # a paused container stops too, as in Docker
    assert _inspect(api, n)["State"]["Status"] == "exited"
    api.docker("start", n, check=True)
    assert _inspect(api, n)["State"]["Status"] == "running"
    n2 = names()
    api.docker("run", "-d", "--name", n2, "busybox", "sleep", "300", check=True)
    api.docker("pause", n2, check=True)
    api.docker("rm", "-f", n2, check=True)
    assert api.http().get(f"/containers/{n2}/json").status_code == 404


@needs_docker
def test_stats_diff_export(api, names, tmp_path):
    n = names()
    api.docker("run", "-d", "--name", n, "busybox", "sh", "-c", "echo x > /made-here; rm /bin/vi; sleep 300",
               check=True)
    _until(lambda: "/made-here" in api.docker("diff", n, check=True).stdout, "the change showing")
    diff = api.docker("diff", n, check=True).stdout.splitlines()
    assert "A /made-here" in diff and "D /bin/vi" in diff and "C /bin" in diff
    stats = api.docker("stats", "--no-stream", "--format", "{{.Name}} {{.PIDs}} {{.CPUPerc}}", n, check=True).stdout
    name, pids, cpu = stats.split()
    assert name == n and cpu.endswith("%")
    r = api.http().get(f"/containers/{n}/stats", params={"stream": "false"})
    assert r.status_code == 200
    one = r.json()
    assert one["name"] == f"/{n}" and "cpu_usage" in one["cpu_stats"] and "cpu_usage" in one["precpu_stats"]
    assert n in api.docker("stats", "--no-stream", "--format", "{{.Name}}", check=True).stdout.split()
    with api.http() as c, c.stream("GET", f"/containers/{n}/stats") as r:
        lines = r.iter_lines()
        first, second = json.loads(next(lines)), json.loads(next(lines))
    assert second["preread"] == first["read"] and second["precpu_stats"] == first["cpu_stats"]
    shot = api.http().get(f"/containers/{n}/stats", params={"stream": "false", "one-shot": "true"}).json()
    assert shot["name"] == f"/{n}" and shot["precpu_stats"]["system_cpu_usage"] == 0
    exported = tmp_path / "c.tar"
    api.docker("export", "-o", str(exported), n, check=True)
    with tarfile.open(exported) as tar:
        assert "made-here" in tar.getnames()
    with api.http() as c, c.stream("GET", f"/containers/{n}/export") as r:
        assert r.status_code == 200 and r.headers["content-type"] == "application/x-tar"
        data = b"".join(r.iter_bytes())
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = tar.getnames()
        assert "made-here" in members and "bin/sh" in members and "bin/vi" not in members
        assert tar.extractfile("made-here").read() == b"x\n"


@needs_docker
def test_prune_with_a_label_filter(api, names):
    keep, a, b = names(), names(), names()
    api.docker("create", "--name", keep, "busybox", "true", check=True)
    for n in (a, b):
        api.docker("create", "--name", n, "-l", "prune-me=yes", "busybox", "true", check=True)
    out = api.docker("container", "prune", "-f", "--filter", "label=prune-me=yes", check=True).stdout
    ids = {_inspect(api, keep)["Id"]}
    assert "Total reclaimed space" in out
    listed = api.docker("ps", "-a", "--format", "{{.Names}}", check=True).stdout.split()
    assert keep in listed and a not in listed and b not in listed
    assert not ids & set(out.split())


def test_wait_before_start_answers_the_next_exit(api, names):
    n = names()
    c = api.http()
    r = c.post("/containers/create", params={"name": n}, json={"Image": "busybox", "Cmd": ["sh", "-c", "exit 3"]})
    assert r.status_code == 201, r.text
    assert c.post(f"/containers/{n}/wait").json() == {"StatusCode": 0, "Error": None}   # not-running: at once
    got = {}

    def waiter():
        got["r"] = api.http().post(f"/containers/{n}/wait", params={"condition": "next-exit"})
    t = threading.Thread(target=waiter)
    t.start()
    time.sleep(0.3)     # the wait is asked before the start, as 'docker run' asks it
    assert c.post(f"/containers/{n}/start").status_code == 204
    t.join(60)
    assert got["r"].status_code == 200 and got["r"].json() == {"StatusCode": 3, "Error": None}
    assert c.post(f"/containers/{n}/start").status_code == 204
    assert c.post(f"/containers/{n}/wait", params={"condition": "not-running"}).json()["StatusCode"] == 3
    bad = c.post(f"/containers/{n}/wait", params={"condition": "sometime"})
    assert bad.status_code == 400 and "condition" in bad.json()["message"]


def test_host_pid_and_ipc_modes(api, names):
    """PidMode and IpcMode host, as docker run --pid host --ipc host sends them."""
    n = names()
    c = api.http()
    r = c.post("/containers/create", params={"name": n},
               json={"Image": "busybox", "Cmd": ["sh", "-c", "test $$ != 1"],
                     "HostConfig": {"PidMode": "host", "IpcMode": "host"}})
    assert r.status_code == 201, r.text
    hc = c.get(f"/containers/{n}/json").json()["HostConfig"]
    assert (hc["PidMode"], hc["IpcMode"]) == ("host", "host")
    assert c.post(f"/containers/{n}/start").status_code == 204
    assert c.post(f"/containers/{n}/wait").json()["StatusCode"] == 0     # the command was not PID 1


def test_wait_removed_returns_the_code_of_an_auto_removed_container(api, names):
    n = names()
    c = api.http()
    r = c.post("/containers/create", params={"name": n},
               json={"Image": "busybox", "Cmd": ["sh", "-c", "sleep 0.2; exit 5"], "HostConfig": {"AutoRemove": True}})
    assert r.status_code == 201, r.text
    got = {}
    t = threading.Thread(target=lambda: got.update(r=api.http().post(f"/containers/{n}/wait",
                                                                      params={"condition": "removed"})))
    t.start()
    time.sleep(0.3)
    assert c.post(f"/containers/{n}/start").status_code == 204
    t.join(60)
    assert got["r"].json() == {"StatusCode": 5, "Error": None}
    assert c.get(f"/containers/{n}/json").status_code == 404


def test_errors_are_docker_statuses(api, names):
    c = api.http()
    r = c.get("/containers/no-such-container-here/json")
    assert r.status_code == 404 and "no such container" in r.json()["message"]
    n = names()
    r = c.post("/containers/create", params={"name": n}, json={"Image": "busybox", "Cmd": ["true"]})
    assert r.status_code == 201
    r = c.post("/containers/create", params={"name": n}, json={"Image": "busybox", "Cmd": ["true"]})
    assert r.status_code == 409 and "already in use" in r.json()["message"]
    for hc, words in (({"Devices": [{"PathOnHost": "/dev/kmsg", "PathInContainer": "/dev/kmsg",
                                      "CgroupPermissions": "rwm"}]}, "may not open /dev/kmsg"),
                      ({"DeviceRequests": [{"Driver": "", "Count": 2, "Capabilities": [["gpu"]]}]}, "GPU count"),
                      ({"PidMode": "container:abc"}, "PidMode"),
                      ({"IpcMode": "container:abc"}, "IpcMode"),
                      ({"Memory": "lots"}, "Memory"),
                      ({"RestartPolicy": {"Name": "sometimes"}}, "restart"),
                      ({"Binds": ["./relative:/x"]}, "absolute"),
                      ({"Mounts": [{"Type": "bind", "Source": "rel", "Target": "/x"}]}, "absolute"),
                      ({"SecurityOpt": ["apparmor=docker-default"]}, "apparmor"),
                      ({"CapAdd": ["CAP_NOT_A_THING"]}, "NOT_A_THING")):
        r = c.post("/containers/create", json={"Image": "busybox", "Cmd": ["true"], "HostConfig": hc})
        assert r.status_code == 400, (hc, r.text)
        assert words.lower() in r.json()["message"].lower(), (hc, r.text)
    r = c.post("/containers/create", json={"Cmd": ["true"]})
    assert r.status_code == 400 and "Image" in r.json()["message"]
    r = c.post("/containers/create", json={"Image": "no-such-image-anywhere:1"})
    assert r.status_code == 404
    assert c.post("/containers/no-such-container-here/start").status_code == 404
    assert c.post(f"/containers/{n}/kill").status_code == 409
    assert c.post(f"/containers/{n}/stop").status_code == 304
    assert c.post(f"/containers/{n}/kill", params={"signal": "NOPE"}).status_code == 400


@needs_docker
def test_cli_errors_carry_our_words(api, names):
    n = names()
    api.docker("create", "--name", n, "busybox", "true", check=True)
    dup = api.docker("create", "--name", n, "busybox", "true")
    assert dup.returncode != 0 and "already in use" in dup.stderr
    dev = api.docker("create", "--device", "/dev/kmsg", "busybox", "true")
    assert dev.returncode != 0 and "may not open /dev/kmsg" in dev.stderr
    missing = api.docker("start", "no-such-container-here")
    assert missing.returncode != 0 and "no such container" in missing.stderr.lower()


@needs_docker
def test_create_translates_host_config(api, names):
    n = names()
    port = _free_port()
    api.docker("create", "--name", n, "--restart", "on-failure:3", "--read-only", "--cap-drop", "NET_RAW",
               "--tmpfs", "/run:size=8m", "--dns", "10.0.2.3", "--add-host", "db:10.1.2.3", "--init",
               "--shm-size", "16m", "--ulimit", "nofile=512:1024", "--entrypoint", "/bin/echo",
               "--stop-signal", "SIGUSR1", "--stop-timeout", "2", "-p", f"127.0.0.1:{port}:80/udp",
               "--expose", "9000",
               "--health-cmd", "true", "--health-interval", "5s", "busybox", "a", "b", check=True)
    info = _inspect(api, n)
    hc, cfg = info["HostConfig"], info["Config"]
    assert hc["RestartPolicy"] == {"Name": "on-failure", "MaximumRetryCount": 3}
    assert hc["ReadonlyRootfs"] and hc["CapDrop"] in (["NET_RAW"], ["CAP_NET_RAW"])
    assert hc["Tmpfs"] == {"/run": "size=8m"}
    assert hc["Dns"] == ["10.0.2.3"] and hc["ExtraHosts"] == ["db:10.1.2.3"] and hc["Init"]
    assert hc["ShmSize"] == 16 << 20 and hc["Ulimits"] == [{"Name": "nofile", "Soft": 512, "Hard": 1024}]
    assert hc["PortBindings"] == {"80/udp": [{"HostIp": "127.0.0.1", "HostPort": str(port)}]}
    assert cfg["Entrypoint"] == ["/bin/echo"] and cfg["Cmd"] == ["a", "b"] and cfg["StopSignal"] == "SIGUSR1"
    assert cfg["StopTimeout"] == 2
    assert info["Path"] == "/bin/echo" and info["Args"] == ["a", "b"]
    assert "9000/tcp" in cfg["ExposedPorts"] and "80/udp" in cfg["ExposedPorts"]
    assert cfg["Healthcheck"]["Test"] == ["CMD-SHELL", "true"]


def test_docker_py(api, names):
    docker = pytest.importorskip("docker")
    client = docker.DockerClient(base_url=api.url, version="auto")
    n = names("py")
    c = client.containers.run("busybox", ["sh", "-c", "echo started; sleep 300"], name=n, detach=True,
                              labels={"suite": n}, environment={"X": "1"}, ports={"8080/tcp": None})
    c.reload()
    assert c.status == "running" and c.name == n and c.labels["suite"] == n
    host = c.ports["8080/tcp"][0]
    assert host["HostIp"] == "0.0.0.0" and int(host["HostPort"]) > 0
    assert [x.name for x in client.containers.list(filters={"label": f"suite={n}"})] == [n]
    assert client.containers.list(filters={"label": f"suite={n}", "status": "exited"}) == []
    c.stop(timeout=1)
    assert c.wait()["StatusCode"] == 137
    c.reload()
    assert c.status == "exited"
    assert [x.name for x in client.containers.list(all=True, filters={"status": "exited", "name": n})] == [n]
    c.remove()
    with pytest.raises(docker.errors.NotFound):
        client.containers.get(n)
    with pytest.raises(docker.errors.APIError) as e:
        client.containers.create("busybox", "true", devices=["/dev/kmsg:/dev/kmsg:rwm"])
    assert e.value.status_code == 400
    code = client.containers.run("busybox", ["sh", "-c", "exit 0"], name=names("py"), detach=True).wait()
    assert code["StatusCode"] == 0


def test_list_limit_size_and_filters_over_http(api, names):
    c = api.http()
    made = []
    for i in range(2):
        n = names()
        r = c.post("/containers/create", params={"name": n},
                   json={"Image": "busybox", "Cmd": ["true"], "Labels": {"batch": made[0] if made else n}})
        assert r.status_code == 201
        made.append(n)
    rows = c.get("/containers/json", params={"all": "1", "filters": json.dumps({"label": [f"batch={made[0]}"]}),
                                             "size": "1"}).json()
    assert sorted(r["Names"][0] for r in rows) == sorted(f"/{n}" for n in made)
    assert all(r["State"] == "created" and r["Status"] == "Created" and r["SizeRootFs"] >= r["SizeRw"] >= 0
               for r in rows)
    assert len(c.get("/containers/json", params={"limit": "1"}).json()) == 1
    r = c.get("/containers/json", params={"filters": json.dumps({"status": ["sleepy"]})})
    assert r.status_code == 400
    assert c.get(f"/containers/{made[0]}/changes").json() is None
    r = c.post("/containers/prune", params={"filters": json.dumps({"label": [f"batch={made[0]}"]})}).json()
    assert sorted(r["ContainersDeleted"]) == sorted(_id for _id in r["ContainersDeleted"]) and len(
        r["ContainersDeleted"]) == 2 and r["SpaceReclaimed"] >= 0
    assert os.path.exists(api.socket)


@needs_docker
def test_update_limits_and_restart_policy(api, names):
    n = names()
    r = api.docker("run", "-d", "--name", n, "--cpus", "0.5", "--pids-limit", "100", "busybox", "sleep", "300")
    if r.returncode != 0 and "cannot enforce" in r.stderr:
        pytest.skip(f"no cpu or pids controller here: {r.stderr.strip()}")
    assert r.returncode == 0, r.stderr
    api.docker("update", "--cpus", "1", "--pids-limit", "50", "--restart", "unless-stopped", n, check=True)
    info = _inspect(api, n)
    assert info["HostConfig"]["NanoCpus"] == 10**9 and info["HostConfig"]["PidsLimit"] == 50
    assert info["HostConfig"]["RestartPolicy"]["Name"] == "unless-stopped"
    rows = api.http().get(f"/containers/{n}/stats", params={"stream": "false"}).json()
    assert rows["pids_stats"]["limit"] == 50
    bad = api.docker("update", "--blkio-weight", "300", n)
    assert bad.returncode != 0 and "BlkioWeight" in bad.stderr
    r = api.http().post(f"/containers/{n}/update", json={"Memory": 1024})
    assert r.status_code == 400 and "memory" in r.json()["message"]


def _sockets(pid: int) -> set[str]:
    out = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:"):
            out.add(target)
    return out


def test_start_without_the_fork_server_keeps_no_socket_of_the_service(rl_session, tmp_path):
    """Without the fork server the monitor comes from a fresh process, not from a fork of the
    service's thread: it would hold the service's sockets open for the container's life."""
    from tests.api.conftest import Service
    rl = type(rl_session).__new__(type(rl_session))
    rl.__dict__.update(rl_session.__dict__)
    rl.env = {**rl_session.env, "ROOTLESS_FORKSERVER": "0"}
    svc = Service(rl, tmp_path / "d.sock", tmp_path / "service.log")
    svc.start()
    n = _name("nofork")
    try:
        c = svc.http()
        assert c.post("/containers/create", params={"name": n},
                      json={"Image": "busybox", "Cmd": ["sleep", "300"]}).status_code == 201
        assert c.post(f"/containers/{n}/start").status_code == 204
        info = c.get(f"/containers/{n}/json").json()
        assert info["State"]["Running"]
        record = json.loads((Path(rl.env["ROOTLESS_ROOT"]) / "containers" / info["Id"] / "config.json").read_text())
        monitor = int(record["config"]["monitor"])
        assert monitor and monitor != svc.proc.pid
        assert not _sockets(monitor) & _sockets(svc.proc.pid)
        assert c.delete(f"/containers/{n}", params={"force": "1"}).status_code == 204
    finally:
        svc.stop()
    assert "Traceback" not in (tmp_path / "service.log").read_text()


def test_publish_all_and_random_host_ports(api, names):
    n = names()
    c = api.http()
    r = c.post("/containers/create", params={"name": n}, json={
        "Image": "busybox", "Cmd": ["sleep", "300"], "ExposedPorts": {"80/tcp": {}, "443": {}},
        "HostConfig": {"PublishAllPorts": True, "PortBindings": {"7000/tcp": [{"HostIp": "127.0.0.1", "HostPort": ""}]},
                       "NetworkMode": "default"},
        "NetworkingConfig": {"EndpointsConfig": {"default": {}}}})
    assert r.status_code == 201, r.text
    bindings = _inspect(api, n)["HostConfig"]["PortBindings"]
    assert set(bindings) == {"80/tcp", "443/tcp", "7000/tcp"}
    assert bindings["7000/tcp"][0]["HostIp"] == "127.0.0.1"
    assert all(int(b[0]["HostPort"]) > 0 for b in bindings.values())
    assert c.post(f"/containers/{n}/start").status_code == 204
    ports = _inspect(api, n)["NetworkSettings"]["Ports"]
    assert ports["7000/tcp"] == [{"HostIp": "127.0.0.1", "HostPort": bindings["7000/tcp"][0]["HostPort"]}]
    rows = c.get("/containers/json", params={"filters": json.dumps({"name": [n]})}).json()
    assert sorted(p["PrivatePort"] for p in rows[0]["Ports"]) == [80, 443, 7000]


def test_a_stats_stream_ends_when_its_container_is_removed(api, names):
    n = names()
    c = api.http()
    r = c.post("/containers/create", params={"name": n}, json={"Image": "busybox", "Cmd": ["sleep", "300"]})
    assert r.status_code == 201
    assert c.post(f"/containers/{n}/start").status_code == 204
    with api.http() as s, s.stream("GET", f"/containers/{n}/stats") as r:
        lines = r.iter_lines()
        assert json.loads(next(lines))["name"] == f"/{n}"
        assert c.delete(f"/containers/{n}", params={"force": "1"}).status_code == 204
        rest = [line for line in lines if line.strip()]
    assert len(rest) <= 1
    assert c.get("/_ping").text == "OK"


def test_platform_of_the_stored_image_is_checked(api, names):
    import platform
    arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
    c = api.http()
    r = c.post("/containers/create", params={"name": names(), "platform": f"linux/{arch}"},
               json={"Image": "busybox", "Cmd": ["true"]})
    assert r.status_code == 201, r.text
    other = "arm64" if arch != "arm64" else "amd64"
    r = c.post("/containers/create", params={"name": names(), "platform": f"linux/{other}"},
               json={"Image": "busybox", "Cmd": ["true"]})
    assert r.status_code == 404 and f"linux/{other}" in r.json()["message"]


@needs_docker
def test_a_container_between_restarts_is_restarting(api, names):
    n = names()
    api.docker("run", "-d", "--name", n, "--restart", "always", "busybox", "sh", "-c", "sleep 0.2; exit 2",
               check=True)
    _until(lambda: _inspect(api, n)["RestartCount"] >= 2, "two restarts")
    info = _inspect(api, n)
    assert info["State"]["Status"] in ("restarting", "running")
    assert n in api.docker("ps", "--format", "{{.Names}}", check=True).stdout.split()
    api.docker("stop", "-t", "1", n, check=True)
    state = _inspect(api, n)["State"]
    assert state["Status"] == "exited" and not state["Restarting"]
    assert n not in api.docker("ps", "--format", "{{.Names}}", check=True).stdout.split()


def test_a_user_network_and_its_aliases(api, names):
    net = _name("net")
    api.rl("network", "create", net, check=True)
    try:
        n = names()
        c = api.http()
        r = c.post("/containers/create", params={"name": n}, json={
            "Image": "busybox", "Cmd": ["sleep", "300"], "HostConfig": {"NetworkMode": net},
            "NetworkingConfig": {"EndpointsConfig": {net: {"Aliases": ["web", "www"], "IPAMConfig": {}, "Links": []}}}})
        assert r.status_code == 201, r.text
        assert c.post(f"/containers/{n}/start").status_code == 204
        info = _inspect(api, n)
        assert info["HostConfig"]["NetworkMode"] == net
        ep = info["NetworkSettings"]["Networks"][net]
        assert set(ep["Aliases"]) >= {"web", "www"} and ep["IPAddress"]
        rows = c.get("/containers/json", params={"filters": json.dumps({"network": [net]})}).json()
        assert [row["Names"] for row in rows] == [[f"/{n}"]]
        r = c.post("/containers/create", json={"Image": "busybox", "HostConfig": {"NetworkMode": net},
                                               "NetworkingConfig": {"EndpointsConfig": {net: {}, "other": {}}}})
        assert r.status_code == 400 and "one network" in r.json()["message"]
        c.delete(f"/containers/{n}", params={"force": "1"})
    finally:
        api.rl("network", "rm", net)


@needs_docker
def test_devices_are_bound_in(api):
    """docker run --device (HostConfig.Devices) binds a node the user may open; --gpus asks for
    the CDI spec a site would have (none here: its sentence)."""
    out = api.docker("run", "--rm", "--device", "/dev/null:/dev/mynull", "busybox", "sh", "-c",
                     "ls -l /dev/mynull; echo x > /dev/mynull && echo written", check=True).stdout
    assert out.startswith("c") and "written" in out
    gpus = api.docker("run", "--rm", "--gpus", "all", "busybox", "true")
    assert gpus.returncode != 0 and "no CDI spec for nvidia.com/gpu" in gpus.stderr
