"""``POST /build`` (the legacy builder: ``DOCKER_BUILDKIT=0 docker build``, docker-py's
images.build) and ``POST /commit``, end to end."""

from __future__ import annotations

import io
import json
import tarfile
import uuid

import pytest

from tests.api.conftest import needs_docker

pytestmark = [pytest.mark.both_modes, needs_docker]


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def test_docker_build_runs_copies_and_tags(api, tmp_path):
    (tmp_path / "Dockerfile").write_text(
        "FROM busybox\n"
        "ARG GREETING=hello\n"
        "COPY data.txt /data/\n"
        "RUN echo \"$GREETING from RUN\" > /data/run.txt && cat /data/run.txt\n"
        "LABEL made.by=api\n"
        "CMD [\"cat\", \"/data/data.txt\", \"/data/run.txt\"]\n")
    (tmp_path / "data.txt").write_text("copied\n")
    name = _name("built")
    out = api.docker("build", "-t", f"{name}:1", "--build-arg", "GREETING=hi", str(tmp_path), check=True)
    assert "Step 1/6 : FROM busybox" in out.stdout, out.stdout
    assert "hi from RUN" in out.stdout
    assert "Successfully built" in out.stdout and f"Successfully tagged {name}:1" in out.stdout
    ran = api.rl("run", "--rm", "--network", "none", f"{name}:1")
    assert ran.stdout == "copied\nhi from RUN\n", ran.stderr
    labels = json.loads(api.docker("image", "inspect", f"{name}:1", check=True).stdout)[0]["Config"]["Labels"]
    assert labels == {"made.by": "api"}
    again = api.docker("build", "-q", "-t", f"{name}:1", "--build-arg", "GREETING=hi", str(tmp_path), check=True)
    assert again.stdout.strip().startswith("sha256:")
    api.docker("rmi", f"{name}:1", check=True)


def test_a_context_with_absolute_symlinks(api, tmp_path):
    (tmp_path / "Dockerfile").write_text("FROM busybox\nCOPY dir /dir\nCMD [\"readlink\", \"/dir/abs\"]\n")
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "abs").symlink_to("/bin/busybox")        # copied as the link it is
    name = _name("links")
    api.docker("build", "-t", name, str(tmp_path), check=True)
    assert api.rl("run", "--rm", "--network", "none", name).stdout == "/bin/busybox\n"
    api.docker("rmi", name, check=True)


def test_a_failing_run_fails_the_build(api, tmp_path):
    (tmp_path / "Dockerfile").write_text("FROM busybox\nRUN echo before failing; exit 3\n")
    out = api.docker("build", "-t", _name("failing"), str(tmp_path))
    assert out.returncode != 0
    assert "before failing" in out.stdout
    assert "exit code 3" in out.stderr, out.stderr


def test_a_broken_dockerfile_is_a_clear_error(api, tmp_path):
    (tmp_path / "Dockerfile").write_text("FROM busybox\nNOSUCHTHING x\n")
    out = api.docker("build", str(tmp_path))
    assert out.returncode != 0 and "NOSUCHTHING" in out.stderr.upper(), out.stderr


def test_docker_py_build_returns_the_image_and_logs(api, tmp_path):
    docker = pytest.importorskip("docker")
    client = docker.DockerClient(base_url=api.url, version="1.41")
    (tmp_path / "Dockerfile").write_text("FROM busybox\nRUN echo from docker-py > /f\n")
    name = _name("dockerpy-built")
    image, logs = client.images.build(path=str(tmp_path), tag=f"{name}:latest")
    assert f"{name}:latest" in image.tags
    assert any("from docker-py" in (chunk.get("stream") or "") for chunk in logs)
    with pytest.raises(docker.errors.BuildError):
        (tmp_path / "Dockerfile").write_text("FROM busybox\nRUN false\n")
        client.images.build(path=str(tmp_path), tag=f"{name}:bad")
    client.images.remove(f"{name}:latest")


def test_a_gzip_context_with_a_dockerfile_elsewhere(api):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        text = b"FROM busybox\nCMD [\"echo\", \"from gzip\"]\n"
        info = tarfile.TarInfo("sub/Build.file")
        info.size = len(text)
        tar.addfile(info, io.BytesIO(text))
    name = _name("gz")
    r = api.http(timeout=300).post("/v1.41/build", params={"dockerfile": "sub/Build.file", "t": name},
                                   content=buf.getvalue(), headers={"Content-Type": "application/x-tar"})
    lines = [json.loads(line) for line in r.text.splitlines() if line.strip()]
    assert r.status_code == 200 and any("aux" in m for m in lines), lines
    assert api.rl("run", "--rm", "--network", "none", name).stdout == "from gzip\n"
    api.docker("rmi", name, check=True)


def test_docker_commit(api):
    name = _name("committed")
    made = api.rl("run", "--name", name, "--network", "none", "busybox", "sh", "-c", "echo changed > /changed")
    assert made.returncode == 0, made.stderr
    try:
        out = api.docker("commit", "-c", "CMD [\"cat\", \"/changed\"]", "-m", "a message", name, f"{name}:c", check=True)
        assert out.stdout.strip().startswith("sha256:")
        ran = api.rl("run", "--rm", "--network", "none", f"{name}:c")
        assert ran.stdout == "changed\n", ran.stderr
        hist = api.http().get(f"/v1.41/images/{name}:c/history").json()
        assert hist[0]["Comment"] == "a message"
        missing = api.docker("commit", "no-such-container-x", "x")
        assert missing.returncode != 0 and "no-such-container-x" in missing.stderr
        api.docker("rmi", f"{name}:c", check=True)
    finally:
        api.rl("rm", "-f", name)


def _workers(service_pid: int) -> list[int]:
    import os
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read()
            with open(f"/proc/{pid}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if b"rootless.build.worker" in cmd and ppid == service_pid:
            found.append(int(pid))
    return found


def test_a_client_that_goes_away_stops_its_build(api):
    import time
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        text = b"FROM busybox\nRUN echo started && sleep 600\n"
        info = tarfile.TarInfo("Dockerfile")
        info.size = len(text)
        tar.addfile(info, io.BytesIO(text))
    with api.http(timeout=120) as c:
        with c.stream("POST", "/v1.41/build", params={"t": _name("abandoned")}, content=buf.getvalue()) as r:
            assert r.status_code == 200
            for line in r.iter_lines():
                if "started" in line:
                    break
            assert _workers(api.proc.pid)
    deadline = time.monotonic() + 60
    while _workers(api.proc.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _workers(api.proc.pid)
    records = [d / "config.json" for d in (api.rl.root / "containers").iterdir()]
    assert not [r for r in records if r.exists() and "sleep 600" in r.read_text()], "the step's container stayed"
    assert api.http().get("/_ping").text == "OK"
