"""Evaluating a Dockerfile into a plan: stages, steps, ARG/ENV scoping, config as Docker records it."""

import json

import pytest

from rootless.build.dockerfile import parse
from rootless.build.plan import (BuildOptions, ConfigStep, CopyStep, RunStep, apply_config, cache_key,
                                 host_platform, make_plan, parse_duration)
from rootless.errors import DockerfileError

pytestmark = pytest.mark.both_modes

IMAGES = {
    "alpine": {"config": {"Env": ["PATH=/usr/bin:/bin", "HOME=/root"], "Cmd": ["/bin/sh"], "WorkingDir": "/"}},
    "onbuild": {"config": {"Env": ["PATH=/bin"], "OnBuild": ["RUN echo trig $X", "ENV T=1"]}},
    "withuser": {"config": {"User": "nobody", "WorkingDir": "/srv", "Shell": ["/bin/bash", "-c"]}},
}


def plan(text, **kw):
    asked = []

    def image_config(ref, platform):
        asked.append((ref, platform))
        return IMAGES.get(ref, {"config": {}})
    p = make_plan(parse(text), BuildOptions(**kw), image_config)
    p.asked = asked
    return p


def steps(p, cls=None, stage=-1):
    return [s for s in p.stages[stage].steps if cls is None or isinstance(s, cls)]


def test_run_shell_and_exec_forms():
    p = plan("FROM alpine\nRUN echo $HOME\nRUN [\"/bin/echo\", \"x\"]\nSHELL [\"/bin/bash\", \"-ec\"]\nRUN y\n")
    r1, r2, r3 = steps(p, RunStep)
    assert r1.argv == ["/bin/sh", "-c", "echo $HOME"]
    assert r1.created_by == "RUN /bin/sh -c echo $HOME"
    assert r2.argv == ["/bin/echo", "x"] and r2.created_by == "RUN /bin/echo x"
    assert r3.argv == ["/bin/bash", "-ec", "y"]
    assert r1.env == ["PATH=/usr/bin:/bin", "HOME=/root"]
    assert r1.workdir == "/" and r1.user == ""
    assert p.target.config["Shell"] == ["/bin/bash", "-ec"]


def test_run_heredocs_as_docker_runs_them():
    p = plan("FROM alpine\nRUN <<EOF\necho hi\nEOF\nRUN <<EOF\n#!/usr/bin/env python3\nprint(1)\nEOF\n"
             "RUN cat <<A >/x\n1\nA\nRUN <<-EOF\n\techo tab\n\tEOF\n")
    simple, shebang, complex_, chomped = steps(p, RunStep)
    assert simple.argv == ["/bin/sh", "-c", "echo hi\n"]
    assert shebang.argv == ["/dev/pipes/EOF"]
    assert shebang.files[0].path == "/dev/pipes/EOF" and shebang.files[0].content.startswith("#!")
    assert shebang.files[0].mode == 0o755
    assert complex_.argv == ["/bin/sh", "-c", "cat <<A >/x\n1\nA"]
    assert chomped.argv == ["/bin/sh", "-c", "echo tab\n"]


def test_run_mounts_and_network():
    p = plan("FROM alpine AS a\nFROM alpine\nWORKDIR /w\n"
             "RUN --mount=type=cache,target=cache,sharing=locked --mount=type=bind,from=a,source=/etc,target=/e "
             "--mount=type=secret,id=tok --mount=type=tmpfs,target=/t,size=1m --network=none x\n")
    run = steps(p, RunStep)[0]
    cache, bind, secret, tmpfs = run.mounts
    assert (cache.type, cache.target, cache.id, cache.sharing, cache.mode) == ("cache", "/w/cache", "/w/cache",
                                                                               "locked", 0o755)
    assert (bind.from_, bind.source, bind.target, bind.readonly) == ("a", "/etc", "/e", True)
    assert (secret.id, secret.target, secret.mode, secret.required) == ("tok", "/run/secrets/tok", 0o400, False)
    assert tmpfs.size == 1 << 20
    assert run.network == "none"
    assert [s.name for s in p.stages] == ["a", None]        # the bind's stage is needed


@pytest.mark.parametrize("flag,message", [
    ("--mount=type=nfs,target=/x", "unknown mount type"), ("--mount=type=cache", "needs target"),
    ("--mount=type=cache,target=/x,sharing=all", "sharing=all"), ("--network=bridge", "--network=bridge"),
    ("--mount=type=secret", "needs id= or target="), ("--mount=type=tmpfs,target=/x,from=a", "no source or from"),
])
def test_run_flag_errors(flag, message):
    with pytest.raises(DockerfileError, match=message) as e:
        plan(f"FROM alpine\nRUN {flag} x\n")
    assert str(e.value).startswith("Dockerfile:2:")


def test_arg_scoping():
    p = plan("ARG TAG=3\nARG ONLYGLOBAL=g\nFROM alpine:$TAG\nARG TAG\nARG LOCAL=l-$TAG\n"
             "RUN echo\nENV LOCAL=env\nRUN echo\nARG LATE\nRUN echo $ONLYGLOBAL\n",
             build_args={"LATE": "late"})
    assert p.asked == [("alpine:3", None)]
    r1, r2, r3 = steps(p, RunStep)
    assert "TAG=3" in r1.env and "LOCAL=l-3" in r1.env
    assert not any(e.startswith("ONLYGLOBAL=") for e in r3.env)     # global ARGs are FROM's only
    assert "LOCAL=env" in r2.env and "LOCAL=l-3" not in r2.env       # ENV wins over ARG
    assert "LATE=late" in r3.env
    assert r1.created_by == "RUN |2 TAG=3 LOCAL=l-3 /bin/sh -c echo"
    assert r2.created_by == "RUN |2 TAG=3 LOCAL=env /bin/sh -c echo"
    assert r3.created_by == "RUN |3 TAG=3 LOCAL=env LATE=late /bin/sh -c echo $ONLYGLOBAL"
    assert not any(e.startswith(("TAG=", "LATE=")) for e in p.target.config["Env"])   # ARGs are not kept


def test_build_args_override_defaults_and_unused_ones_warn():
    p = plan("ARG V=1\nFROM alpine\nARG V\nARG W=2\nRUN x\n", build_args={"V": "9", "W": "8", "NOPE": "x",
                                                                             "HTTP_PROXY": "http://p"})
    run = steps(p, RunStep)[0]
    assert "V=9" in run.env and "W=8" in run.env and "HTTP_PROXY=http://p" in run.env
    assert "HTTP_PROXY" not in run.created_by and "HTTP_PROXY" not in run.cache_material
    assert p.warnings == ["build-args were not consumed: NOPE (no ARG of those names in the stages built)"]


def test_automatic_platform_args():
    p = plan("FROM --platform=$BUILDPLATFORM alpine\nARG TARGETARCH\nARG TARGETOS\nRUN x\n",
             platform="linux/arm64")
    assert p.asked == [("alpine", host_platform())]
    run = steps(p, RunStep)[0]
    assert "TARGETARCH=arm64" in run.env and "TARGETOS=linux" in run.env
    assert p.target.platform == host_platform()


def test_env_expansion_uses_old_values_within_one_instruction():
    p = plan('FROM alpine\nENV abc=hello\nENV abc=bye def=$abc\nENV ghi=$abc\nENV sp "x y"\n')
    env = p.target.config["Env"]
    assert "def=hello" in env and "ghi=bye" in env and "abc=bye" in env and "sp=x y" in env
    created = [s.created_by for s in steps(p, ConfigStep)]
    assert created[1] == "ENV abc=bye def=hello"


def test_config_instructions_as_docker_records_them():
    p = plan("FROM alpine\nLABEL a=1 \"b c\"=\"d e\"\nEXPOSE 80 53/udp 8000-8001\nVOLUME /data [\"/x\"]\n"
             "VOLUME [\"/v\"]\nUSER app:app\nWORKDIR /srv\nWORKDIR sub\nSTOPSIGNAL SIGINT\n"
             "HEALTHCHECK --interval=30s --timeout=1m30s --start-period=500ms --retries=3 CMD curl -f x\n"
             "ONBUILD RUN echo later\nCMD echo hi\n", labels={"extra": "yes"})
    c = p.target.config
    assert c["Labels"] == {"a": "1", "b c": "d e", "extra": "yes"}
    assert c["ExposedPorts"] == {"80/tcp": {}, "53/udp": {}, "8000/tcp": {}, "8001/tcp": {}}
    assert set(c["Volumes"]) == {"/data", "[/x]", "/v"}
    assert c["User"] == "app:app" and c["WorkingDir"] == "/srv/sub" and c["StopSignal"] == "SIGINT"
    assert c["Healthcheck"] == {"Test": ["CMD-SHELL", "curl -f x"], "Interval": 30 * 10**9,
                                "Timeout": 90 * 10**9, "StartPeriod": 500 * 10**6, "Retries": 3}
    assert c["OnBuild"] == ["RUN echo later"]
    assert c["Cmd"] == ["/bin/sh", "-c", "echo hi"]
    created = [s.created_by for s in steps(p)]
    assert "EXPOSE map[53/udp:{} 80/tcp:{} 8000/tcp:{} 8001/tcp:{}]" in created
    assert 'CMD ["/bin/sh" "-c" "echo hi"]' in created
    assert all(s.empty_layer for s in steps(p, ConfigStep))


def test_entrypoint_resets_an_inherited_cmd_only():
    p = plan("FROM alpine\nENTRYPOINT [\"/e\"]\n")
    assert p.target.config["Cmd"] is None and p.target.config["Entrypoint"] == ["/e"]
    p = plan("FROM alpine\nCMD [\"c\"]\nENTRYPOINT /e\n")
    assert p.target.config["Cmd"] == ["c"] and p.target.config["Entrypoint"] == ["/bin/sh", "-c", "/e"]


def test_base_image_config_is_inherited():
    p = plan("FROM withuser\nRUN x\nCOPY a b\n")
    run = steps(p, RunStep)[0]
    assert run.argv == ["/bin/bash", "-c", "x"] and run.user == "nobody" and run.workdir == "/srv"
    assert "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" in run.env
    assert steps(p, CopyStep)[0].dest == "/srv/b"


def test_scratch():
    p = plan("FROM scratch\nCOPY a /\n")
    assert p.target.base.kind == "scratch" and p.asked == []
    assert p.target.config["Env"][0].startswith("PATH=")


def test_copy_destinations():
    p = plan("FROM alpine\nWORKDIR /app\nCOPY a .\nCOPY a b\nCOPY a b/\nCOPY a /abs\nCOPY a ../up/\n"
             "COPY [\"x y\", \"/d/\"]\nCOPY --chown=$U:1 --chmod=0755 a ${D:-.}\n", build_args={})
    dests = [s.dest for s in steps(p, CopyStep)]
    assert dests == ["/app/", "/app/b", "/app/b/", "/abs", "/up/", "/d/", "/app/"]
    last = steps(p, CopyStep)[-1]
    assert last.chown == ":1" and last.chmod == 0o755
    assert steps(p, CopyStep)[5].sources == ["x y"]
    p = plan('FROM alpine\nARG S=src\nCOPY ["$S dir", "/${S}/"]\nVOLUME ["/$S"]\n')
    assert steps(p, CopyStep)[0].sources == ["src dir"] and steps(p, CopyStep)[0].dest == "/src/"
    assert p.target.config["Volumes"] == {"/src": {}}


def test_copy_errors():
    with pytest.raises(DockerfileError, match="Dockerfile:2: COPY with more than one source needs a directory"):
        plan("FROM alpine\nCOPY a b /dest\n")
    with pytest.raises(DockerfileError, match="not an octal mode"):
        plan("FROM alpine\nCOPY --chmod=u+x a /d\n")
    with pytest.raises(DockerfileError, match="use ADD for URLs"):
        plan("FROM alpine\nCOPY http://127.0.0.1/x /d\n")
    with pytest.raises(DockerfileError, match="--checksum is for URL sources only"):
        plan("FROM alpine\nADD --checksum=sha256:" + "0" * 64 + " a /d\n")


def test_copy_heredocs_expand_unless_quoted():
    p = plan("FROM alpine\nARG N=world\nCOPY <<EOF /hello\nhello $N\nEOF\nCOPY <<'EOF' <<EOT /d/\n$N\nEOF\n$N\nEOT\n")
    a, b = steps(p, CopyStep)
    assert a.heredocs == [("EOF", "hello world\n")] and a.sources == [] and a.dest == "/hello"
    assert b.heredocs == [("EOF", "$N\n"), ("EOT", "world\n")]


def test_stages_needed_by_the_target_only():
    text = ("FROM alpine AS base\nRUN b\nFROM base AS build\nRUN c\nFROM alpine AS unused\nRUN u\n"
            "FROM scratch AS final\nCOPY --from=build /x /x\nCOPY --from=0 /y /y\nCOPY --from=busybox /bin/sh /sh\n")
    p = plan(text)
    assert [s.name for s in p.stages] == ["base", "build", "final"]
    copies = steps(p, CopyStep)
    assert (copies[0].from_stage, copies[1].from_stage, copies[2].from_image) == (1, 0, "busybox")
    assert p.stages[1].base.kind == "stage" and p.stages[1].base.stage == 0
    p = plan(text, target="build")
    assert [s.name for s in p.stages] == ["base", "build"] and p.target.name == "build"
    with pytest.raises(DockerfileError, match="the target stage 'nope' is not in the Dockerfile; its stages: base"):
        plan(text, target="nope")


def test_stage_inherits_its_parent_stage_config():
    p = plan("FROM alpine AS a\nENV X=1\nWORKDIR /w\nFROM a\nRUN y\n")
    run = steps(p, RunStep)[0]
    assert "X=1" in run.env and run.workdir == "/w"


def test_onbuild_triggers_run_first_and_are_not_inherited():
    p = plan("FROM onbuild\nARG X=1\nRUN mine\n")
    s = steps(p)
    assert isinstance(s[0], RunStep) and s[0].argv == ["/bin/sh", "-c", "echo trig $X"] and s[0].line == 1
    assert s[1].keyword == "ENV"
    assert p.target.config["OnBuild"] is None
    assert "T=1" in steps(p, RunStep)[-1].env


def test_from_errors():
    with pytest.raises(DockerfileError, match="Dockerfile:2: the base image name .* is empty"):
        plan("ARG B\nFROM $B\n")
    with pytest.raises(DockerfileError, match="Dockerfile:1: RUN before the first FROM"):
        plan("RUN x\nFROM a\n")
    with pytest.raises(DockerfileError, match="used twice"):
        plan("FROM a AS x\nFROM b AS x\n")
    with pytest.raises(DockerfileError, match=r"Dockerfile:2: ENV \$\{A: syntax error: missing '}'"):
        plan("FROM a\nENV B=${A\n")


def test_copy_from_itself_is_an_error():
    with pytest.raises(DockerfileError, match="names the stage it is in"):
        plan("FROM alpine AS a\nCOPY --from=a /x /y\n")


def test_cache_key_material():
    p1 = plan("FROM alpine\nRUN x\n")
    p2 = plan("FROM alpine\nENV A=1\nRUN x\n")
    p3 = plan("FROM alpine\nLABEL a=1\nRUN x\n")
    r1, r2, r3 = (steps(p, RunStep)[0] for p in (p1, p2, p3))
    assert cache_key("base", r1) != cache_key("base", r2)          # ENV changes what RUN sees
    assert cache_key("base", r1) == cache_key("base", r3)          # a LABEL does not
    assert cache_key("base", r1) != cache_key("other", r1)
    c = steps(plan("FROM alpine\nCOPY a /b\n"), CopyStep)[0]
    assert cache_key("p", c, "d1") != cache_key("p", c, "d2")
    assert json.loads(c.cache_material)["dest"] == "/b"
    assert c.created_by("file:abc") == "COPY file:abc in /b"


def test_apply_config_env_replaces_in_place():
    config = {"Env": ["A=1", "B=2"]}
    apply_config(config, ConfigStep("ENV", 1, "Dockerfile", value=[("A", "3"), ("C", "4")]))
    assert config["Env"] == ["A=3", "B=2", "C=4"]


def test_durations():
    assert parse_duration("1m30s") == 90 * 10**9 and parse_duration("1.5s") == 1500 * 10**6
    with pytest.raises(ValueError):
        parse_duration("5 seconds")


def test_healthcheck_errors():
    with pytest.raises(DockerfileError, match="is not a duration"):
        plan("FROM alpine\nHEALTHCHECK --interval=5 CMD x\n")
    with pytest.raises(DockerfileError, match="at least 1"):
        plan("FROM alpine\nHEALTHCHECK --retries=0 CMD x\n")
    p = plan("FROM alpine\nHEALTHCHECK NONE\n")
    assert p.target.config["Healthcheck"] == {"Test": ["NONE"]}


def test_expose_and_stopsignal_errors():
    with pytest.raises(DockerfileError, match="EXPOSE takes container ports only"):
        plan("FROM alpine\nEXPOSE 80:80\n")
    with pytest.raises(DockerfileError, match="not a signal"):
        plan("FROM alpine\nSTOPSIGNAL SIGNOPE\n")
    assert plan("FROM alpine\nSTOPSIGNAL 9\n").target.config["StopSignal"] == "9"


def test_from_with_defaults_and_maintainer():
    p = plan("ARG TAG\nFROM alpine:${TAG:-latest}\nMAINTAINER me <me@x>\n")
    assert p.asked == [("alpine:latest", None)]
    assert p.target.author == "me <me@x>"
    assert any("MAINTAINER is deprecated" in w for w in p.warnings)
    p = plan("ARG TAG\nFROM alpine:${TAG:-latest}\n", build_args={"TAG": "3.19"})
    assert p.asked == [("alpine:3.19", None)]
