"""``GET /events``: what the CLI did shows up in ``docker events`` (the store's journal),
filters, since/until, following a live stream, and the stream's end when the client goes."""

from __future__ import annotations

import json
import os
import time

import pytest

from tests.api.conftest import needs_docker

pytestmark = pytest.mark.both_modes


def _stamp() -> str:
    """Now, as the docker CLI sends times: seconds.nanoseconds."""
    ns = time.time_ns()
    return f"{ns // 1_000_000_000}.{ns % 1_000_000_000:09d}"


def _events(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines() if line.strip()]


@needs_docker
def test_docker_events_shows_container_and_image_events(api):
    since = _stamp()
    api.rl("run", "--name", "te-one", "busybox", "sh", "-c", "exit 3")
    api.rl("rename", "te-one", "te-two", check=True)
    api.rl("rm", "te-two", check=True)
    api.rl("tag", "busybox", "te-image:1", check=True)
    api.rl("rmi", "te-image:1", check=True)
    api.rl("volume", "create", "te-vol", check=True)
    api.rl("volume", "rm", "te-vol", check=True)
    until = _stamp()
    out = api.docker("events", "--since", since, "--until", until, "--format", "{{json .}}", check=True).stdout
    got = _events(out)
    mine = [(e["Type"], e["Action"]) for e in got
            if e["Actor"]["Attributes"].get("name") in ("te-one", "te-two", "te-image:1")
            or e["Actor"]["ID"] == "te-vol"]
    assert mine == [("container", "create"), ("container", "start"), ("container", "die"),
                    ("container", "rename"), ("container", "destroy"), ("image", "tag"), ("image", "untag"),
                    ("volume", "create"), ("volume", "destroy")], out
    die = next(e for e in got if e["Action"] == "die" and e["Actor"]["Attributes"]["name"] == "te-one")
    assert die["Actor"]["Attributes"]["exitCode"] == "3" and die["Actor"]["Attributes"]["image"] == "busybox:latest"
    assert die["status"] == "die" and die["id"] == die["Actor"]["ID"] and die["from"] == "busybox:latest"

    # filters: the CLI's --filter becomes the API's filters
    out = api.docker("events", "--since", since, "--until", until, "--filter", "type=container",
                     "--filter", "event=die", "--format", "{{.Actor.Attributes.name}} {{.Action}}",
                     check=True).stdout
    assert "te-one die" in out.splitlines() and "tag" not in out
    out = api.docker("events", "--since", since, "--until", until, "--filter", "image=te-image:1",
                     "--format", "{{.Type}} {{.Action}}", check=True).stdout
    assert out.split("\n")[:2] == ["image tag", "image untag"]


@needs_docker
def test_docker_events_until_in_the_future_ends_by_itself(api):
    ns = time.time_ns() + 3_000_000_000
    until = f"{ns // 1_000_000_000}.{ns % 1_000_000_000:09d}"
    since = _stamp()
    proc = api.docker("events", "--since", since, "--until", until, "--filter", "container=te-live",
                      "--format", "{{.Action}}", timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_a_followed_stream_sees_new_events_and_ends_when_the_client_goes(api):
    c = api.http(timeout=60)
    filters = json.dumps({"container": ["te-follow"], "event": ["create", "destroy"]})
    with c.stream("GET", "/v1.41/events", params={"filters": filters}) as r:
        assert r.status_code == 200
        api.rl("create", "--name", "te-follow", "busybox", "true", check=True)
        api.rl("rm", "te-follow", check=True)
        lines = r.iter_lines()
        seen = [json.loads(next(lines))["Action"], json.loads(next(lines))["Action"]]
        assert seen == ["create", "destroy"]
    c.close()
    # the service let go of the journal: no descriptor of its still open on it
    journal = os.path.realpath(os.path.join(api.rl.root, "events.log"))
    fd_dir = f"/proc/{api.proc.pid}/fd"
    deadline = time.monotonic() + 30
    while True:
        held = [fd for fd in os.listdir(fd_dir) if _target(fd_dir, fd) == journal]
        if not held or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert not held
    assert api.http().get("/_ping").text == "OK"


def _target(fd_dir: str, fd: str) -> str:
    try:
        return os.readlink(os.path.join(fd_dir, fd))
    except OSError:
        return ""


def test_bad_event_arguments_are_400(api):
    c = api.http()
    r = c.get("/v1.41/events", params={"since": "yesterday-ish"})
    assert r.status_code == 400 and "invalid since" in r.json()["message"]
    r = c.get("/v1.41/events", params={"filters": json.dumps({"colour": ["red"]}), "until": "1"})
    assert r.status_code == 400 and "invalid filter" in r.json()["message"]


def test_docker_py_events(api):
    docker = pytest.importorskip("docker")
    client = docker.DockerClient(base_url=api.url, version="1.41", timeout=60)
    since = time.time() - 1
    api.rl("network", "create", "te-net", check=True)
    api.rl("network", "rm", "te-net", check=True)
    got = list(client.events(since=int(since), until=int(time.time()) + 2, decode=True,
                             filters={"type": "network"}))
    mine = [e["Action"] for e in got if e["Actor"]["Attributes"].get("name") == "te-net"]
    assert mine == ["create", "destroy"]
    # a live stream, stopped from our side (docker-py's CancellableStream)
    stream = client.events(decode=True, filters={"type": "volume"})
    api.rl("volume", "create", "te-pyvol", check=True)
    try:
        event = next(stream)
        assert event["Type"] == "volume" and event["Action"] == "create" and event["Actor"]["ID"] == "te-pyvol"
    finally:
        stream.close()
        api.rl("volume", "rm", "te-pyvol")


@needs_docker
def test_docker_exec_is_three_events(api):
    """docker exec: exec_create, exec_start (with the command) and exec_die (with its exit code
    and exec id), as Docker's daemon writes them."""
    since = _stamp()
    api.rl("run", "-d", "--name", "te-exec", "--network", "none", "busybox", "sleep", "60", check=True)
    try:
        assert api.docker("exec", "te-exec", "sh", "-c", "exit 4").returncode == 4
    finally:
        api.rl("rm", "-f", "te-exec")
    out = api.docker("events", "--since", since, "--until", _stamp(), "--filter", "container=te-exec",
                     "--format", "{{json .}}", check=True).stdout
    got = [e for e in _events(out) if e["Action"].startswith("exec_")]
    assert [e["Action"] for e in got] == ["exec_create: sh -c exit 4", "exec_start: sh -c exit 4", "exec_die"], out
    assert got[2]["Actor"]["Attributes"]["exitCode"] == "4"
    assert len({e["Actor"]["Attributes"]["execID"] for e in got}) == 1 and got[0]["Actor"]["Attributes"]["execID"]
