"""Images through the API, end to end with Docker's clients: pull (progress, X-Registry-Auth),
images, inspect, history, tag, rmi, push, save | load, prune, search, import."""

from __future__ import annotations

import base64
import io
import json
import tarfile
import uuid

import pytest

from tests.api.conftest import needs_docker
from tests.registry_server import running_registry
from tests.test_images import own_layer, push_image

pytestmark = [pytest.mark.both_modes, needs_docker]


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def test_pull_shows_progress_and_the_image_runs(api, busybox_tar):
    repo = f"api/{_name('pull')}:1"
    with running_registry() as reg:
        push_image(reg, repo, [busybox_tar.read_bytes(), own_layer()], cmd=["echo", "pulled through the API"])
        ref = f"{reg.host}/{repo}"
        out = api.docker("pull", ref, check=True)
        assert "Pulling from" in out.stdout and "Pull complete" in out.stdout, out.stdout
        assert "Digest: sha256:" in out.stdout and f"Downloaded newer image for {ref}" in out.stdout
        again = api.docker("pull", ref, check=True)
        assert f"Image is up to date for {ref}" in again.stdout and "Already exists" not in again.stdout
        other = f"{reg.host}/api/{_name('same-layer')}:1"          # another image, the same layer
        push_image(reg, other.split("/", 1)[1], [busybox_tar.read_bytes()], cmd=["true"])
        shared = api.docker("pull", other, check=True)
        assert "Already exists" in shared.stdout and "Pull complete" not in shared.stdout, shared.stdout
        api.docker("rmi", other, check=True)
    ran = api.rl("run", "--rm", "--network", "none", ref)
    assert ran.stdout == "pulled through the API\n", ran.stderr
    listed = api.docker("images", "--format", "{{.Repository}}:{{.Tag}} {{.ID}}", check=True).stdout
    assert f"{ref} " in listed
    api.docker("rmi", ref, check=True)


def test_pull_errors(api):
    with running_registry() as reg:
        missing = api.docker("pull", f"{reg.host}/api/not-there:1")
        assert missing.returncode != 0 and "not-there" in missing.stderr, missing.stderr
    bad = api.http().post("/v1.41/images/create", params={"fromImage": "UPPER/Case"})
    assert bad.status_code == 400 and "invalid reference" in bad.json()["message"]


def test_push_and_pull_with_the_registry_auth_header(api):
    from tests.registry_server import PASSWORD, USER
    with running_registry("basic") as reg:
        ref = f"{reg.host}/api/{_name('auth')}:1"
        api.docker("tag", "busybox", ref, check=True)
        c = api.http(timeout=120)
        auth = base64.urlsafe_b64encode(json.dumps({"username": USER, "password": PASSWORD,
                                                    "serveraddress": reg.host}).encode()).decode()
        pushed = c.post(f"/v1.41/images/{ref.rpartition(':')[0]}/push", params={"tag": "1"},
                        headers={"X-Registry-Auth": auth})
        lines = [json.loads(line) for line in pushed.text.splitlines() if line.strip()]
        assert pushed.status_code == 200 and not [m for m in lines if "error" in m], lines
        assert lines[-1]["aux"]["Digest"].startswith("sha256:")
        api.docker("rmi", ref, check=True)
        denied = c.post("/v1.41/images/create", params={"fromImage": ref})
        assert denied.status_code in (401, 403) and "login" in denied.json()["message"], denied.text
        ok = c.post("/v1.41/images/create", params={"fromImage": ref}, headers={"X-Registry-Auth": auth})
        lines = [json.loads(line) for line in ok.text.splitlines() if line.strip()]
        assert ok.status_code == 200 and not [m for m in lines if "error" in m], lines
        assert lines[-1]["status"] == f"Status: Downloaded newer image for {ref}"
    api.docker("rmi", ref, check=True)


def test_inspect_history_tag_and_rmi(api):
    inspected = json.loads(api.docker("image", "inspect", "busybox", check=True).stdout)[0]
    assert inspected["Id"].startswith("sha256:") and "busybox:latest" in inspected["RepoTags"]
    assert inspected["Config"]["Cmd"] == ["/bin/sh"] and inspected["Os"] == "linux"
    hist = api.docker("history", "busybox", check=True).stdout
    assert "IMAGE" in hist and inspected["Id"][7:19] in hist
    name = _name("tagged")
    api.docker("tag", "busybox", f"{name}:v1", check=True)
    listed = api.docker("images", "--format", "{{.Repository}}:{{.Tag}} {{.ID}}", check=True).stdout
    assert f"{name}:v1 {inspected['Id'][7:19]}" in listed
    filtered = api.docker("images", "--filter", f"reference={name}", "-q", check=True).stdout.split()
    assert filtered == [inspected["Id"][7:19]]
    removed = api.docker("rmi", f"{name}:v1", check=True).stdout
    assert f"Untagged: {name}:v1" in removed
    assert "busybox:latest" in api.docker("images", check=True).stdout.replace("   ", " ").replace("busybox ", "busybox:") \
        or "busybox" in api.docker("images", check=True).stdout
    missing = api.docker("rmi", f"{name}:v1")
    assert missing.returncode != 0 and "No such image" in missing.stderr or "not in the local store" in missing.stderr
    assert api.http().get("/v1.41/images/nothing-like-this/json").status_code == 404


def test_search_is_refused_clearly(api):
    r = api.http().get("/v1.41/images/search", params={"term": "busybox"})
    assert r.status_code == 501 and "not supported" in r.json()["message"]


def test_save_then_load(api):
    name = _name("saved")
    api.docker("tag", "busybox", f"{name}:1", check=True)
    saved = api.docker("save", f"{name}:1", input=b"", check=True)
    with tarfile.open(fileobj=io.BytesIO(saved.stdout)) as tar:
        manifest = json.load(tar.extractfile("manifest.json"))
    assert manifest[0]["RepoTags"] == [f"{name}:1"]
    api.docker("rmi", f"{name}:1", check=True)
    loaded = api.docker("load", input=saved.stdout, check=True)
    assert f"Loaded image: {name}:1" in loaded.stdout.decode()
    both = api.http().get("/v1.41/images/get", params={"names": [f"{name}:1", "busybox"]})
    assert both.status_code == 200 and both.headers["content-type"] == "application/x-tar"
    api.docker("rmi", f"{name}:1", check=True)
    assert api.http().get("/v1.41/images/nothing-like-this/get").status_code == 404


def test_push_to_the_registry(api):
    with running_registry() as reg:
        ref = f"{reg.host}/api/{_name('pushed')}:2"
        api.docker("tag", "busybox", ref, check=True)
        out = api.docker("push", ref, check=True)
        assert "The push refers to repository" in out.stdout and "digest: sha256:" in out.stdout, out.stdout
        api.docker("rmi", ref, check=True)
        api.docker("pull", ref, check=True)
    api.docker("rmi", ref, check=True)


def test_import_from_the_body_and_prune(api, busybox_tar):
    name = _name("imported")
    r = api.http().post("/v1.41/images/create", params={"fromSrc": "-", "repo": name, "tag": "x"},
                        content=busybox_tar.read_bytes())
    assert r.status_code == 200 and r.json()["status"].startswith("sha256:"), r.text
    assert api.docker("image", "inspect", f"{name}:x").returncode == 0
    api.docker("rmi", f"{name}:x", check=True)
    pruned = api.http().post("/v1.41/images/prune").json()
    assert "SpaceReclaimed" in pruned


def test_docker_py_pull_and_list(api, busybox_tar):
    docker = pytest.importorskip("docker")
    client = docker.DockerClient(base_url=api.url, version="1.41")
    repo = f"api/{_name('dockerpy')}"
    with running_registry() as reg:
        push_image(reg, f"{repo}:3", [busybox_tar.read_bytes()])
        img = client.images.pull(f"{reg.host}/{repo}", tag="3")
        assert f"{reg.host}/{repo}:3" in img.tags
    assert any(f"{reg.host}/{repo}:3" in i.tags for i in client.images.list())
    client.images.remove(f"{reg.host}/{repo}:3")
    with pytest.raises(docker.errors.ImageNotFound):
        client.images.get(f"{reg.host}/{repo}:3")


def test_a_pull_whose_client_goes_away_ends_cleanly(api, busybox_tar):
    repo = f"api/{_name('abandoned')}:1"
    with running_registry() as reg:
        push_image(reg, repo, [busybox_tar.read_bytes()])
        ref = f"{reg.host}/{repo}"
        with api.http(timeout=120) as c:
            with c.stream("POST", "/v1.41/images/create", params={"fromImage": ref}) as r:
                assert r.status_code == 200
                first = next(r.iter_lines())
                assert "Pulling from" in first or "Status:" in first, first
        # the service goes on (the session's end checks its log holds no traceback)
        out = api.docker("pull", ref, check=True)
        assert "Status:" in out.stdout
    api.docker("rmi", ref, check=True)


def test_docker_py_error_in_the_stream(api):
    r = api.http().post("/v1.41/images/create", params={"fromImage": "127.0.0.1:1/nothing/here", "tag": "x"})
    assert r.status_code >= 400 and r.json()["message"]


def test_docker_login_then_push_and_pull_with_the_clients_credentials(api, tmp_path):
    from tests.registry_server import PASSWORD, USER
    config = tmp_path / "docker-config"          # this test's own: its login stays here
    config.mkdir()
    env = {"DOCKER_CONFIG": str(config)}
    with running_registry("basic") as reg:
        wrong = api.docker("login", "-u", USER, "--password-stdin", reg.host, input="not it\n", env=env)
        assert wrong.returncode != 0 and "rejected" in wrong.stderr and "docker login" in wrong.stderr, wrong.stderr
        api.docker("login", "-u", USER, "--password-stdin", reg.host, input=PASSWORD + "\n", env=env, check=True)
        ref = f"{reg.host}/api/{_name('login')}:1"
        api.docker("tag", "busybox", ref, check=True)
        api.docker("push", ref, env=env, check=True)
        api.docker("rmi", ref, check=True)
        api.docker("pull", ref, env=env, check=True)
    api.docker("rmi", ref, check=True)
