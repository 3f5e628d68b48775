"""``/containers/{id}/archive`` end to end: ``docker cp`` both ways (files, directories, tar
on stdin/stdout), HEAD/GET/PUT answers, docker-py's put_archive/get_archive."""

from __future__ import annotations

import base64
import io
import json
import tarfile
import uuid

import pytest

from tests.api.conftest import needs_docker

pytestmark = [pytest.mark.both_modes, needs_docker]


@pytest.fixture(params=["running", "stopped"])
def container(api, request):
    name = f"cp-{request.param}-{uuid.uuid4().hex[:8]}"
    if request.param == "running":
        made = api.rl("run", "-d", "--name", name, "--network", "none", "busybox", "sleep", "600")
    else:
        made = api.rl("run", "--name", name, "--network", "none", "busybox", "sh", "-c",
                      "mkdir -p /srv/dir/sub && echo inside > /srv/dir/sub/f && echo one > /srv/one")
    assert made.returncode == 0, made.stderr
    if request.param == "running":
        ready = api.rl("exec", name, "sh", "-c",
                       "mkdir -p /srv/dir/sub && echo inside > /srv/dir/sub/f && echo one > /srv/one")
        assert ready.returncode == 0, ready.stderr
    yield name
    api.rl("rm", "-f", name)


def test_docker_cp_both_ways(api, container, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    api.docker("cp", f"{container}:/srv/one", str(out / "one.txt"), check=True)
    assert (out / "one.txt").read_text() == "one\n"
    api.docker("cp", f"{container}:/srv/dir", str(out), check=True)
    assert (out / "dir" / "sub" / "f").read_text() == "inside\n"
    src = tmp_path / "src"
    (src / "deep").mkdir(parents=True)
    (src / "deep" / "g").write_text("from the host\n")
    (tmp_path / "file").write_text("a file\n")
    api.docker("cp", str(src), f"{container}:/srv/", check=True)
    api.docker("cp", str(tmp_path / "file"), f"{container}:/srv/renamed", check=True)
    back = tmp_path / "back"
    api.docker("cp", f"{container}:/srv/src/deep/g", str(back), check=True)
    assert back.read_text() == "from the host\n"
    api.docker("cp", f"{container}:/srv/renamed", str(tmp_path / "renamed"), check=True)
    assert (tmp_path / "renamed").read_text() == "a file\n"
    missing = api.docker("cp", f"{container}:/srv/nothing", str(out))
    assert missing.returncode != 0 and "/srv/nothing" in missing.stderr, missing.stderr


def test_docker_cp_tar_on_stdin_and_stdout(api, container):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        data = b"streamed in\n"
        info = tarfile.TarInfo("streamed.txt")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    api.docker("cp", "-", f"{container}:/srv", input=buf.getvalue(), check=True)
    got = api.docker("cp", f"{container}:/srv/streamed.txt", "-", input=b"", check=True)
    with tarfile.open(fileobj=io.BytesIO(got.stdout)) as tar:
        assert tar.extractfile("streamed.txt").read() == b"streamed in\n"


def test_archive_answers(api, container):
    c = api.http()
    head = c.head(f"/v1.41/containers/{container}/archive", params={"path": "/srv/dir"})
    assert head.status_code == 200
    stat = json.loads(base64.b64decode(head.headers["x-docker-container-path-stat"]))
    assert stat["name"] == "dir" and stat["mode"] & (1 << 31) and stat["mode"] & 0o777 == 0o755
    assert c.head(f"/v1.41/containers/{container}/archive", params={"path": "/nothing"}).status_code == 404
    r = c.put(f"/v1.41/containers/{container}/archive", params={"path": "/srv/one"}, content=b"")
    assert r.status_code == 400 and "not a directory" in r.json()["message"]
    r = c.put(f"/v1.41/containers/{container}/archive", params={"path": "/nothing/here"}, content=b"")
    assert r.status_code == 404
    assert c.get("/v1.41/containers/no-such-container-x/archive", params={"path": "/"}).status_code == 404


def test_docker_py_put_and_get_archive(api, container):
    docker = pytest.importorskip("docker")
    client = docker.DockerClient(base_url=api.url, version="1.41")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        data = b"put by docker-py\n"
        info = tarfile.TarInfo("dp/file")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    assert client.api.put_archive(container, "/srv", buf.getvalue()) is True
    stream, stat = client.api.get_archive(container, "/srv/dp")
    assert stat["name"] == "dp"
    raw = b"".join(stream)
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        assert tar.extractfile("dp/file").read() == b"put by docker-py\n"


def test_put_archive_refusals_are_sentences(api, container):
    c = api.http()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("one")          # /srv/one is a file: a directory may not replace it
        info.type = tarfile.DIRTYPE
        tar.addfile(info)
    r = c.put(f"/v1.41/containers/{container}/archive", params={"path": "/srv", "noOverwriteDirNonDir": "true"},
              content=buf.getvalue())
    assert r.status_code == 400 and "cannot overwrite non-directory" in r.json()["message"], r.text
    r = c.put(f"/v1.41/containers/{container}/archive", params={"path": "/srv"}, content=b"not a tar" * 100)
    assert r.status_code == 400, r.text
    big = io.BytesIO()
    with tarfile.open(fileobj=big, mode="w") as tar:
        data = bytes(range(256)) * 40000          # ~10 MB, streamed to the container as it comes
        info = tarfile.TarInfo("big.bin")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))

    def chunks():
        raw = big.getvalue()
        for i in range(0, len(raw), 100000):
            yield raw[i:i + 100000]
    r = c.put(f"/v1.41/containers/{container}/archive", params={"path": "/srv"}, content=chunks())
    assert r.status_code == 200, r.text
    head = c.head(f"/v1.41/containers/{container}/archive", params={"path": "/srv/big.bin"})
    assert json.loads(base64.b64decode(head.headers["x-docker-container-path-stat"]))["size"] == len(data)
