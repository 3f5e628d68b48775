"""``rootless build``: Dockerfiles built into images that run, with the build cache, as the
unprivileged users (with and without a subordinate id range)."""

from __future__ import annotations

import io
import json
import os
import tarfile
import uuid
from pathlib import Path

import pytest

from .conftest import RANGE_MODE, end_podman, layer_tars

pytestmark = pytest.mark.both_modes


def _ctx(tmp_path: Path, dockerfile: str, files: dict[str, str] | None = None) -> Path:
    ctx = tmp_path / f"ctx-{uuid.uuid4().hex[:6]}"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(dockerfile)
    for name, content in (files or {}).items():
        (ctx / name).parent.mkdir(parents=True, exist_ok=True)
        (ctx / name).write_text(content)
    return ctx


def _build(rl, ctx: Path, *args: str, ok: bool = True):
    proc = rl("build", *args, str(ctx), timeout=300)
    if ok:
        assert proc.returncode == 0, proc.stderr
    return proc


def _said(proc) -> str:
    """What the steps printed (the progress lines with the instructions left out)."""
    return "\n".join(ln for ln in proc.stderr.splitlines() if not ln.startswith(("[", "  CACHED", "  DONE")))


def _tag() -> str:
    return f"built-{uuid.uuid4().hex[:8]}"


def _run(rl, image: str, *cmd: str) -> str:
    proc = rl("run", "--rm", "--network", "none", image, *cmd)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


BASIC = """\
# syntax=docker/dockerfile:1
FROM busybox AS base
ARG GREETING=hello
ENV APP=/app \\
    MODE=test
WORKDIR $APP
COPY a.txt ./
COPY --chmod=0755 tool.sh /usr/local/bin/tool
RUN echo "$GREETING from RUN in $(pwd)" > run.txt && rm /bin/vi
RUN <<EOF
echo "heredoc RUN" > /app/heredoc-run.txt
EOF
COPY <<EOF /app/heredoc.txt
here ${APP}
EOF
LABEL team=hpc
EXPOSE 8080
USER 0:0
STOPSIGNAL SIGINT
CMD ["cat", "/app/run.txt"]
"""


def test_a_dockerfile_builds_an_image_that_runs(rl, tmp_path):
    ctx = _ctx(tmp_path, BASIC, {"a.txt": "content a\n", "tool.sh": "#!/bin/sh\necho tool ran\n"})
    tag = _tag()
    proc = _build(rl, ctx, "-t", tag)
    image_id = proc.stdout.strip().splitlines()[-1]
    assert image_id.startswith("sha256:") and "[1/" in proc.stderr and "syntax" in proc.stderr   # noted, ignored
    try:
        assert _run(rl, tag) == "hello from RUN in /app\n"                       # CMD, WORKDIR, ARG in RUN
        out = _run(rl, tag, "sh", "-c", 'ls /app; cat /app/heredoc.txt /app/heredoc-run.txt; tool; '
                                        'echo "$APP $MODE"; ls /bin/vi 2>&1 || true; stat -c %a /usr/local/bin/tool')
        assert out.splitlines() == ["a.txt", "heredoc-run.txt", "heredoc.txt", "run.txt", "here /app",
                                    "heredoc RUN", "tool ran", "/app test",
                                    "ls: /bin/vi: No such file or directory", "755"]
        info = json.loads(rl("inspect", tag).stdout)[0]
        cfg = info["Config"]
        assert cfg["Labels"] == {"team": "hpc"} and "8080/tcp" in cfg["ExposedPorts"]
        assert cfg["WorkingDir"] == "/app" and cfg["StopSignal"] == "SIGINT" and "APP=/app" in cfg["Env"]
        assert not any(e.startswith("GREETING=") for e in cfg["Env"])          # ARGs are not kept
        history = rl("history", "--no-trunc", tag).stdout
        assert "RUN |1 GREETING=hello /bin/sh -c echo" in history and "COPY file:" in history
        # the RUN's deletion is a whiteout in its layer
        layers = _layers(rl, tag)
        assert any("bin/.wh.vi" in t.getnames() for t in layers)
    finally:
        rl("rmi", tag)


def _layers(rl, tag: str) -> list[tarfile.TarFile]:
    return [tarfile.open(fileobj=io.BytesIO(t)) for t in layer_tars(rl, tag)]


def test_the_cache_reruns_from_the_first_changed_step(rl, tmp_path):
    df = ("FROM busybox\nCOPY a.txt /a.txt\nRUN echo ran-one && cat /a.txt > /one\n"
          "COPY b.txt /b.txt\nARG V=1\nRUN echo ran-two-$V\n")
    ctx = _ctx(tmp_path, df, {"a.txt": "a1\n", "b.txt": "b1\n"})
    tag = _tag()
    try:
        first = _build(rl, ctx, "-t", tag)
        assert "ran-one" in _said(first) and "ran-two-1" in _said(first)
        again = _build(rl, ctx, "-t", tag)                           # nothing changed: nothing runs
        assert "ran-one" not in _said(again) and "ran-two" not in _said(again)
        assert again.stderr.count("CACHED") == 4
        assert again.stdout == first.stdout                          # the same image
        os.utime(ctx / "a.txt", (1, 1))                              # a new mtime is no change
        assert "ran-one" not in _said(_build(rl, ctx, "-t", tag))
        (ctx / "b.txt").write_text("b2\n")                           # from the second COPY on
        changed = _build(rl, ctx, "-t", tag)
        assert "ran-one" not in _said(changed) and "ran-two-1" in _said(changed)
        arg = _build(rl, ctx, "-t", tag, "--build-arg", "V=2")      # a build arg the RUN sees
        assert "ran-one" not in _said(arg) and "ran-two-2" in _said(arg)
        nocache = _build(rl, ctx, "-t", tag, "--no-cache")
        assert "ran-one" in _said(nocache) and "CACHED" not in _said(nocache)
    finally:
        rl("rmi", tag)


def test_env_change_reruns_the_run_after_it(rl, tmp_path):
    tag = _tag()
    try:
        ctx = _ctx(tmp_path, "FROM busybox\nENV X=1\nRUN echo run-sees-$X\n")
        assert "run-sees-1" in _said(_build(rl, ctx, "-t", tag))
        (ctx / "Dockerfile").write_text("FROM busybox\nENV X=2\nRUN echo run-sees-$X\n")
        assert "run-sees-2" in _said(_build(rl, ctx, "-t", tag))
    finally:
        rl("rmi", tag)


def test_multi_stage_builds_only_what_the_target_needs(rl, tmp_path):
    df = """\
FROM busybox AS tools
RUN echo made-in-tools > /made
FROM busybox AS unused
RUN echo unused-stage-ran && false
FROM scratch AS final
COPY --from=tools /made /made
COPY --from=tools /bin/busybox /bin/busybox
CMD ["/bin/busybox", "cat", "/made"]
FROM final AS test
RUN ["/bin/busybox", "echo", "test-stage"]
"""
    ctx = _ctx(tmp_path, df)
    tag = _tag()
    try:
        proc = _build(rl, ctx, "-t", tag, "--target", "final")
        assert "unused-stage-ran" not in _said(proc) and "test-stage" not in _said(proc)
        assert _run(rl, tag) == "made-in-tools\n"
        assert len(json.loads(rl("inspect", tag).stdout)[0]["RootFS"]["Layers"]) == 2   # scratch + 2 COPYs
        bad = _build(rl, ctx, "--target", "nope", ok=False)
        assert bad.returncode != 0 and "nope" in _said(bad) and "Traceback" not in _said(bad)
    finally:
        rl("rmi", tag)


def test_dockerignore_keeps_files_out(rl, tmp_path):
    ctx = _ctx(tmp_path, "FROM busybox\nCOPY . /ctx/\nRUN find /ctx -type f | sort\n",
               {"keep.txt": "k", "secret.key": "s", "logs/a.log": "l", "docs/README.md": "r", "docs/x.md": "x",
                ".dockerignore": "*.key\n**/*.log\ndocs/*.md\n!docs/README.md\n"})
    tag = _tag()
    try:
        _build(rl, ctx, "-t", tag)
        files = _run(rl, tag, "find", "/ctx", "-type", "f").split()
        assert sorted(files) == ["/ctx/.dockerignore", "/ctx/Dockerfile", "/ctx/docs/README.md", "/ctx/keep.txt"]
    finally:
        rl("rmi", tag)


@pytest.mark.skipif(not RANGE_MODE, reason="other owners need a subordinate id range")
def test_a_user_made_in_run_owns_files_and_runs_the_image(rl, tmp_path):
    df = ("FROM busybox\nRUN echo app:x:1000:1000::/data:/bin/sh >> /etc/passwd && echo app:x:1000: >> /etc/group "
          "&& mkdir /data && chown app:app /data\n"
          "COPY --chown=app:app note.txt /data/note.txt\nUSER app\nWORKDIR /data\n"
          'RUN echo "written by $(id -un)" > mine.txt\nCMD ["sh", "-c", "id -u; stat -c %u:%g /data /data/note.txt /data/mine.txt"]\n')
    ctx = _ctx(tmp_path, df, {"note.txt": "n\n"})
    tag = _tag()
    try:
        _build(rl, ctx, "-t", tag)
        assert _run(rl, tag).split() == ["1000", "1000:1000", "1000:1000", "1000:1000"]
    finally:
        rl("rmi", tag)


def test_run_mount_cache_persists_between_builds(rl, tmp_path):
    df = ("FROM busybox\nARG N=1\nRUN --mount=type=cache,target=/cache "
          "echo build-$N >> /cache/log && cat /cache/log && test ! -e /kept\n")
    ctx = _ctx(tmp_path, df)
    tag = _tag()
    try:
        _build(rl, ctx, "-t", tag, "--build-arg", "N=1")
        second = _build(rl, ctx, "-t", tag, "--build-arg", "N=2")
        assert "build-1\nbuild-2" in _said(second)
        assert _run(rl, tag, "sh", "-c", "ls -A /cache 2>/dev/null | wc -l").strip() == "0"   # not in the image
    finally:
        rl("rmi", tag)


def test_run_mounts_bind_secret_and_tmpfs(rl, tmp_path):
    secret = tmp_path / "token"
    secret.write_text("s3cret\n")
    df = ("FROM busybox\nRUN --mount=type=bind,source=data,target=/in --mount=type=secret,id=tok,required=true "
          "--mount=type=tmpfs,target=/scratch cat /in/f /run/secrets/tok && touch /scratch/x && echo ok > /out\n")
    ctx = _ctx(tmp_path, df, {"data/f": "bound\n"})
    tag = _tag()
    try:
        proc = _build(rl, ctx, "-t", tag, "--secret", f"id=tok,src={secret}")
        assert "bound\ns3cret" in _said(proc)
        assert _run(rl, tag, "sh", "-c", "cat /out; ls /run/secrets /in /scratch 2>&1 | grep -c 'No such'") == "ok\n3\n"
        missing = _build(rl, ctx, ok=False)
        assert missing.returncode != 0 and "--secret id=tok" in _said(missing)
    finally:
        rl("rmi", tag)


def test_a_failing_step_says_which_and_leaves_nothing(rl, tmp_path):
    ctx = _ctx(tmp_path, "FROM busybox\nRUN echo before\nRUN echo some output; exit 3\nRUN echo after\n")
    tag = _tag()
    records = set(p.name for p in (rl.root / "containers").iterdir()) if (rl.root / "containers").exists() else set()
    proc = _build(rl, ctx, "-t", tag, ok=False)
    assert proc.returncode == 3, proc.stderr
    assert "Dockerfile:3" in _said(proc) and "exit code 3" in _said(proc) and "some output" in _said(proc)
    assert "after" not in _said(proc) and "Traceback" not in _said(proc)
    assert rl("inspect", tag).returncode != 0                                 # nothing tagged
    assert set(p.name for p in (rl.root / "containers").iterdir()) == records  # no container left
    quiet = _build(rl, ctx, "-q", ok=False)
    assert "some output" in _said(quiet)                                      # -q: the tail on failure


def test_dockerfile_errors_name_the_line_and_the_fix(rl, tmp_path):
    proc = _build(rl, _ctx(tmp_path, "FROM: busybox\n"), ok=False)
    assert proc.returncode != 0 and "Dockerfile:1" in proc.stderr and "no colon" in proc.stderr
    proc = _build(rl, _ctx(tmp_path, "FROM busybox\nRUNN echo\n"), ok=False)
    assert "Dockerfile:2" in proc.stderr and "RUN" in proc.stderr and "Traceback" not in proc.stderr
    proc = _build(rl, _ctx(tmp_path, "FROM busybox\nCOPY missing.txt /\n"), ok=False)
    assert "missing.txt" in proc.stderr and "Traceback" not in proc.stderr


def test_quiet_iidfile_outputs_and_stdin(rl, tmp_path):
    ctx = _ctx(tmp_path, "FROM busybox\nRUN echo loud && echo data > /result\n")
    iid = tmp_path / "iid"
    proc = _build(rl, ctx, "-q", "--iidfile", str(iid), "-o", f"type=local,dest={tmp_path / 'out'}",
                  "-o", f"type=tar,dest={tmp_path / 'out.tar'}")
    image_id = proc.stdout.strip()
    assert proc.stdout == image_id + "\n" and "loud" not in _said(proc) and iid.read_text() == image_id
    assert (tmp_path / "out" / "result").read_text() == "data\n"
    with tarfile.open(tmp_path / "out.tar") as tar:
        assert "result" in tar.getnames() and "bin/busybox" in tar.getnames()
    piped = rl("build", "-q", "-", input="FROM busybox\nRUN echo from-stdin > /f\n", timeout=300)
    assert piped.returncode == 0, piped.stderr
    assert _run(rl, piped.stdout.strip(), "cat", "/f") == "from-stdin\n"


def _df_cache(rl) -> dict:
    return next(r for r in json.loads(rl("system", "df", "--format", "json").stdout) if r["Type"] == "Build Cache")


def test_builder_prune_empties_the_cache(rl, tmp_path):
    ctx = _ctx(tmp_path, "FROM busybox\nRUN echo pruned-run && head -c 100000 /dev/zero > /p\n")
    _build(rl, ctx)
    assert rl("image", "prune", "-f").returncode == 0              # leaves the cache's layers alone
    assert "pruned-run" not in _said(_build(rl, ctx))
    assert _df_cache(rl)["TotalCount"] >= 1 and _df_cache(rl)["Size"] >= 100000
    proc = rl("builder", "prune", "-f")
    assert proc.returncode == 0 and "Total reclaimed space" in proc.stdout, proc.stderr
    assert _df_cache(rl)["TotalCount"] == 0 and _df_cache(rl)["Size"] == 0
    assert "pruned-run" in _said(_build(rl, ctx))
    refused = rl("builder", "prune")
    assert refused.returncode == 125 and "-f" in _said(refused)


# --- beside the peers: podman build makes the same tree; the pushed image works for them ------

PEER_DOCKERFILE = """\
FROM busybox
ARG WHO=peer
ENV GREETING=hello
WORKDIR /srv/app
COPY files/ ./
COPY --chmod=0751 run.sh /usr/local/bin/run
RUN mkdir -p /var/data && echo "$GREETING $WHO" > /var/data/greeting && ln -s /var/data/greeting /srv/app/link \\
    && ln /var/data/greeting /var/data/hard && rm /bin/vi && chmod 0640 /srv/app/b.txt
CMD ["run"]
"""


def _podman(tmp_path: Path):
    import shutil
    import subprocess
    import tempfile
    if not shutil.which("podman"):
        pytest.skip("podman is not installed")
    run_root = tempfile.mkdtemp(prefix="rl-pb-", dir="/tmp")
    env = {**os.environ, "XDG_RUNTIME_DIR": run_root}
    base = ["podman", "--runtime", "runc", "--cgroup-manager", "cgroupfs", "--events-backend", "file",
            "--root", str(tmp_path / "p-root"), "--runroot", run_root]

    def podman(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run([*base, *args], capture_output=True, text=True, timeout=timeout, env=env)

    def cleanup() -> None:
        end_podman(base, env, tmp_path / "p-root", run_root)
    return podman, cleanup


def _environmental(proc) -> bool:
    why = ("insufficient UIDs", "newuidmap", "cannot set up namespace", "cannot re-exec", "not allowed",
           "permission denied", "subuid", "subgid")
    return proc.returncode != 0 and any(w.lower() in proc.stderr.lower() for w in why)


def _tree(rl, image: str) -> dict[str, tuple]:
    """Every entry of an image's merged tree: type, mode, owner, content digest or link target."""
    import hashlib
    import io
    created = rl("create", "--network", "none", image, "true")
    assert created.returncode == 0, created.stderr
    cid = created.stdout.strip().splitlines()[-1]
    path = rl.root.parent / f"export-{cid[:12]}.tar"
    try:
        proc = rl("export", "-o", str(path), cid)
        assert proc.returncode == 0, proc.stderr
        data = path.read_bytes()
    finally:
        rl("rm", "-f", cid)
        path.unlink(missing_ok=True)
    out = {}
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for m in tar:
            digest = hashlib.sha256(tar.extractfile(m).read()).hexdigest() if m.isreg() else m.linkname
            out[m.name.rstrip("/")] = (m.type, m.mode & 0o7777, m.uid, m.gid, digest)
    return out


@pytest.mark.skipif(not RANGE_MODE, reason="podman needs a subordinate id range")
def test_podman_build_makes_the_same_tree_and_takes_our_pushed_image(rl, tmp_path):
    from .registry_server import running_registry
    podman, cleanup = _podman(tmp_path)
    ctx = _ctx(tmp_path, PEER_DOCKERFILE, {"files/a.txt": "A\n", "files/b.txt": "B\n", "files/sub/c.txt": "C\n",
                                           "run.sh": "#!/bin/sh\ncat /var/data/greeting\n"})
    tag = _tag()
    archive = tmp_path / "busybox.tar"
    try:
        assert rl("save", "-o", str(archive), "busybox").returncode == 0
        loaded = podman("load", "-i", str(archive))
        if _environmental(loaded):
            pytest.skip(f"podman cannot work here: {loaded.stderr.strip()[-200:]}")
        assert loaded.returncode == 0, loaded.stderr
        built = podman("build", "--network", "none", "-t", "peer:1", str(ctx))
        assert built.returncode == 0, built.stderr
        assert podman("save", "--format", "oci-archive", "-o", str(tmp_path / "peer.tar"), "peer:1").returncode == 0
        assert rl("load", "-i", str(tmp_path / "peer.tar")).returncode == 0
        _build(rl, ctx, "-t", tag)
        ours, theirs = _tree(rl, tag), _tree(rl, "localhost/peer:1")
        empty = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        for stub in ("etc/hostname", "etc/hosts", "etc/resolv.conf"):
            # buildah leaves its RUN mount points behind as empty files; Docker's builder and ours do not
            if stub not in ours and theirs.get(stub, (0, 0, 0, 0, ""))[4] == empty:
                theirs.pop(stub)
        differ = sorted(k for k in set(ours) | set(theirs) if ours.get(k) != theirs.get(k))
        assert not differ, [(k, ours.get(k), theirs.get(k)) for k in differ[:10]]
        assert _run(rl, tag) == "hello peer\n"
        with running_registry() as reg:
            remote = f"{reg.host}/built/{tag}:1"
            pushed = rl("push", tag, remote)
            assert pushed.returncode == 0, pushed.stderr
            inspected = __import__("subprocess").run(
                ["skopeo", "inspect", "--config", "--tls-verify=false", f"docker://{remote}"], capture_output=True,
                text=True, timeout=60)
            assert inspected.returncode == 0, inspected.stderr
            assert json.loads(inspected.stdout)["config"]["Cmd"] == ["run"]
            pulled = podman("pull", "--tls-verify=false", remote)
            assert pulled.returncode == 0, pulled.stderr
            ran = podman("run", "--rm", "--network", "none", remote)
            assert (ran.returncode, ran.stdout) == (0, "hello peer\n"), ran.stderr
    finally:
        rl("rmi", tag)
        rl("rmi", "localhost/peer:1")
        cleanup()


def test_onbuild_add_shell_volume_healthcheck_entrypoint(rl, tmp_path):
    import http.server
    import io
    import threading
    payload = io.BytesIO()
    with tarfile.open(fileobj=payload, mode="w:gz") as tar:
        info = tarfile.TarInfo("from-tar/inside.txt")
        data = b"extracted\n"
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):                               # noqa: N802
            body = b"downloaded\n"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    parent, child = _tag(), _tag()
    try:
        ctx = _ctx(tmp_path, f"""\
FROM busybox
ONBUILD RUN echo triggered > /onbuild.txt
ONBUILD COPY note.txt /from-child-context.txt
SHELL ["/bin/sh", "-e", "-c"]
RUN echo "shell $0" > /shell.txt
ADD archive.tar.gz /opt/
ADD http://127.0.0.1:{server.server_address[1]}/file.txt /downloaded.txt
VOLUME /data
HEALTHCHECK --interval=30s --retries=2 CMD true
ENTRYPOINT ["/bin/sh", "-c"]
CMD ["cat /opt/from-tar/inside.txt /downloaded.txt /shell.txt"]
""")
        (ctx / "archive.tar.gz").write_bytes(payload.getvalue())
        _build(rl, ctx, "-t", parent)
        assert _run(rl, parent) == "extracted\ndownloaded\nshell /bin/sh\n"
        assert not (rl("run", "--rm", "--network", "none", parent, "test -e /onbuild.txt").returncode == 0)
        cfg = json.loads(rl("inspect", parent).stdout)[0]["Config"]
        assert "/data" in cfg["Volumes"] and cfg["Healthcheck"]["Test"] == ["CMD-SHELL", "true"]
        assert cfg["Healthcheck"]["Retries"] == 2 and cfg["Entrypoint"] == ["/bin/sh", "-c"]
        assert len(cfg["OnBuild"]) == 2
        child_ctx = _ctx(tmp_path, f"FROM {parent}\nRUN cat /onbuild.txt /from-child-context.txt\n",
                         {"note.txt": "from the child's context\n"})
        proc = _build(rl, child_ctx, "-t", child)
        assert "triggered\nfrom the child's context" in _said(proc)           # the triggers ran first
        assert not json.loads(rl("inspect", child).stdout)[0]["Config"].get("OnBuild")
    finally:
        server.shutdown()
        rl("rmi", child)
        rl("rmi", parent)
