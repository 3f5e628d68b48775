"""--device, the Container Device Interface (--device VENDOR/CLASS=NAME, --gpus) and --as-me.

There is no GPU here: the CDI specs the tests write describe a vendor whose "device" is the
harmless /dev/null, with a library mount, environment variables and hooks, in a directory
named by ROOTLESS_CDI_SPEC_DIRS (as /etc/cdi would be)."""

from __future__ import annotations

import json
import os
import socket

import pytest

from rootless.container import cdi, devices, runflags
from rootless.errors import DeviceError, UsageError

from .conftest import RANGE_MODE

pytestmark = pytest.mark.both_modes


def _refused(proc, why: str) -> None:
    assert proc.returncode == 125 and why in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


# --- host device nodes ---------------------------------------------------------------------

def test_device_node_is_bound_at_its_container_path(rl):
    proc = rl("run", "--rm", "--network", "none", "--device", "/dev/null:/dev/mynull", "--device", "/dev/zero",
              "busybox", "sh", "-c", "test -c /dev/mynull && echo x > /dev/mynull && head -c 3 /dev/zero | wc -c")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["3"]


def test_device_refusals_name_the_problem(rl, tmp_path):
    run = ("run", "--rm", "--network", "none")
    _refused(rl(*run, "--device", "/dev/null:rwm", "busybox", "true"), "may not mknod")
    _refused(rl(*run, "--device", str(tmp_path), "busybox", "true"), "is not a device node")
    _refused(rl(*run, "--device", "/dev/no-such-device", "busybox", "true"), "does not exist")
    _refused(rl(*run, "--device", "/dev/null:/dev/x:rx", "busybox", "true"), "letters of rw")
    closed = [p for p in ("/dev/kmsg", "/dev/mem", "/dev/port") if os.path.exists(p) and not os.access(p, os.W_OK)]
    if closed:
        _refused(rl(*run, "--device", closed[0], "busybox", "true"), f"you may not open {closed[0]}")


def test_parse_device_forms():
    assert devices.parse_device("/dev/null") == ("/dev/null", "/dev/null", "rw")
    assert devices.parse_device("/dev/null:/dev/x") == ("/dev/null", "/dev/x", "rw")
    assert devices.parse_device("/dev/null:r") == ("/dev/null", "/dev/null", "r")
    assert devices.parse_device("/dev/null:/dev/x:rw") == ("/dev/null", "/dev/x", "rw")
    with pytest.raises(UsageError, match="absolute"):
        devices.parse_device("/dev/null:dev/x:rw")


def test_gpus_is_the_nvidia_cdi_device():
    assert devices.gpus_names("all") == ["nvidia.com/gpu=all"]
    assert devices.gpus_names('"device=0,1"') == ["nvidia.com/gpu=0", "nvidia.com/gpu=1"]
    with pytest.raises(UsageError, match="--gpus"):
        devices.gpus_names("2")


# --- CDI --------------------------------------------------------------------------------------

def _vendor(tmp_path, fmt: str = "yaml", hooks: list | None = None, version: str = "0.6.0"):
    """A spec directory: vendor example.com/thing, devices 0 and all (/dev/null), a library."""
    specs = tmp_path / "cdi"
    specs.mkdir(exist_ok=True)
    lib = tmp_path / "libthing.so.1"
    lib.write_text("the vendor's library\n")
    spec = {
        "cdiVersion": version, "kind": "example.com/thing",
        "containerEdits": {"env": ["THING_DRIVER=1.2"], "hooks": hooks or [],
                           "mounts": [{"hostPath": str(lib), "containerPath": "/usr/lib/libthing.so.1",
                                       "options": ["ro", "nosuid", "nodev", "bind"]}]},
        "devices": [
            {"name": "0", "containerEdits": {"env": ["THING_VISIBLE=0"],
                                             "deviceNodes": [{"path": "/dev/thing0", "hostPath": "/dev/null"}]}},
            {"name": "all", "containerEdits": {"env": ["THING_VISIBLE=all"],
                                               "deviceNodes": [{"path": "/dev/thing0", "hostPath": "/dev/null"},
                                                               {"path": "/dev/thing1", "hostPath": "/dev/zero",
                                                                "permissions": "rw"}]}},
        ],
    }
    if fmt == "json":
        (specs / "thing.json").write_text(json.dumps(spec))
    else:
        import yaml
        (specs / "thing.yaml").write_text(yaml.safe_dump(spec))
    return specs


@pytest.mark.parametrize("fmt", ["yaml", "json"])
def test_cdi_device_gets_its_nodes_mounts_and_environment(rl, tmp_path, fmt):
    specs = _vendor(tmp_path, fmt)
    proc = rl("run", "--rm", "--network", "none", "--device", "example.com/thing=all", "-e", "THING_DRIVER=mine",
              "busybox", "sh", "-c", "test -c /dev/thing0 && test -c /dev/thing1 && cat /usr/lib/libthing.so.1 && "
              "echo $THING_VISIBLE $THING_DRIVER && (echo x > /usr/lib/libthing.so.1 || echo read-only)",
              env={cdi.ENV: str(specs)})
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "the vendor's library"
    assert lines[1] == "all mine"                       # -e wins over the spec's env
    assert lines[-1] == "read-only"


def test_cdi_unknown_device_and_kind_are_refused(rl, tmp_path):
    specs = _vendor(tmp_path)
    run = ("run", "--rm", "--network", "none")
    _refused(rl(*run, "--device", "example.com/thing=7", "busybox", "true", env={cdi.ENV: str(specs)}),
             "no CDI device example.com/thing=7: example.com/thing has 0, all")
    _refused(rl(*run, "--gpus", "all", "busybox", "true", env={cdi.ENV: str(specs)}),
             "no CDI spec for nvidia.com/gpu")
    _refused(rl(*run, "--device", "example.com/thing=bad name!", "busybox", "true", env={cdi.ENV: str(specs)}),
             "is not a CDI device name")


def test_malformed_cdi_spec_is_a_clear_error(rl, tmp_path):
    specs = tmp_path / "cdi"
    specs.mkdir()
    (specs / "thing.yaml").write_text("cdiVersion: 0.6.0\nkind: example.com/thing\ndevices: [\n")
    proc = rl("run", "--rm", "--network", "none", "--device", "example.com/thing=0", "busybox", "true",
              env={cdi.ENV: str(specs)})
    _refused(proc, f"the CDI spec {specs / 'thing.yaml'} is not valid YAML")
    (specs / "thing.yaml").write_text("cdiVersion: 0.6.0\nkind: example.com/thing\n"
                                      "devices:\n- name: '0'\n  containerEdits:\n    deviceNodes:\n    - hostPath: x\n")
    proc = rl("run", "--rm", "--network", "none", "--device", "example.com/thing=0", "busybox", "true",
              env={cdi.ENV: str(specs)})
    _refused(proc, "is malformed: device 0: a device node has no absolute path")


@pytest.mark.parametrize("change, why", [
    ({"cdiVersion": "2.0.0"}, "cdiVersion 2.0.0 is not one rootless reads"),
    ({"kind": "thing"}, "is not VENDOR/CLASS"),
    ({"devices": []}, "it lists no devices"),
    ({"extra": 1}, "unknown field 'extra'"),
])
def test_cdi_spec_checks(tmp_path, change, why):
    spec = {"cdiVersion": "0.5.0", "kind": "example.com/thing", "devices": [{"name": "a"}], **change}
    with pytest.raises(DeviceError, match=why):
        cdi.check(spec, "x.json")


@pytest.mark.parametrize("version", ["0.5.0", "0.6.0", "0.7.0", "0.8.0"])
def test_cdi_spec_versions(tmp_path, version):
    edits = cdi.resolve(["example.com/thing=0"], (str(_vendor(tmp_path, "json", version=version)),))
    assert [n.path for n in edits.device_nodes] == ["/dev/thing0"]
    assert edits.env == ["THING_DRIVER=1.2", "THING_VISIBLE=0"]


def test_later_spec_directory_wins(tmp_path):
    (tmp_path / "a").mkdir()
    first = _vendor(tmp_path / "a", "json")
    second = tmp_path / "b"
    second.mkdir()
    spec = json.loads((first / "thing.json").read_text())
    spec["devices"][0]["containerEdits"]["env"] = ["THING_VISIBLE=second"]
    spec["containerEdits"] = {}
    (second / "thing.json").write_text(json.dumps(spec))
    assert cdi.resolve(["example.com/thing=0"], (str(first), str(second))).env == ["THING_VISIBLE=second"]


def test_cdi_hooks_run_as_you_with_the_state_on_stdin(rl, tmp_path):
    out = tmp_path / "hooks"
    out.mkdir()
    script = tmp_path / "hook.sh"
    script.write_text(f"#!/bin/sh\nid -u > {out}/$1.uid\ncat > {out}/$1.json\necho \"$THING_HOOK\" > {out}/$1.env\n"
                      f"b=$(sed 's/.*\"bundle\": \"\\([^\"]*\\)\".*/\\1/' {out}/$1.json)\n"
                      f"cp \"$b/config.json\" {out}/$1.config\n")
    script.chmod(0o755)
    hooks = [{"hookName": name, "path": str(script), "args": ["hook.sh", name], "env": ["THING_HOOK=yes"]}
             for name in ("createRuntime", "poststart", "poststop")]
    specs = _vendor(tmp_path, hooks=hooks)
    proc = rl("run", "--rm", "--network", "none", "--device", "example.com/thing=0", "busybox", "true",
              env={cdi.ENV: str(specs)})
    assert proc.returncode == 0, proc.stderr
    for name, status in (("createRuntime", "created"), ("poststart", "running"), ("poststop", "stopped")):
        state = json.loads((out / f"{name}.json").read_text())
        assert state["status"] == status and len(state["id"]) == 64
        assert ("pid" in state) == (status != "stopped")
        config = json.loads((out / f"{name}.config").read_text())      # the bundle, while the hook ran
        assert config["root"]["path"] == (f"/proc/{state['pid']}/root" if "pid" in state else "")
        assert (out / f"{name}.uid").read_text().strip() == str(os.getuid())
        assert (out / f"{name}.env").read_text().strip() == "yes"


def test_failing_or_unsupported_cdi_hooks_are_refused(rl, tmp_path):
    failing = [{"hookName": "createRuntime", "path": "/bin/false"}]
    proc = rl("run", "--rm", "--network", "none", "--device", "example.com/thing=0", "busybox", "echo", "ran",
              env={cdi.ENV: str(_vendor(tmp_path, hooks=failing))})
    _refused(proc, "the CDI createRuntime hook /bin/false")
    assert "ran" not in proc.stdout
    inside = [{"hookName": "startContainer", "path": "/bin/true"}]
    proc = rl("run", "--rm", "--network", "none", "--device", "example.com/thing=0", "busybox", "true",
              env={cdi.ENV: str(_vendor(tmp_path, hooks=inside))})
    _refused(proc, "has a startContainer hook (/bin/true)")
    failing = [{"hookName": "createContainer", "path": "/bin/sh", "args": ["sh", "-c", "echo no such library >&2; exit 3"]}]
    proc = rl("run", "--rm", "--network", "none", "--device", "example.com/thing=0", "busybox", "echo", "ran",
              env={cdi.ENV: str(_vendor(tmp_path, hooks=failing))})
    _refused(proc, "the CDI createContainer hook /bin/sh failed with status 3: no such library")
    assert "ran" not in proc.stdout


def test_create_container_hook_edits_the_root_filesystem(rl, tmp_path):
    # As nvidia-cdi-hook does (update-ldcache, create-symlinks): the root's path from the bundle,
    # changed as root of the container's user namespace, before the command starts.
    script = tmp_path / "hook.sh"
    script.write_text("#!/bin/sh\nstate=$(cat)\n"
                      "b=$(echo \"$state\" | sed 's/.*\"bundle\": \"\\([^\"]*\\)\".*/\\1/')\n"
                      "root=$(sed 's/.*\"root\": {\"path\": \"\\([^\"]*\\)\".*/\\1/' \"$b/config.json\")\n"
                      "echo \"uid $(id -u) $1\" > \"$root/etc/hooked\"\n"
                      "ln -s libthing.so.1 \"$root/usr/lib/libthing.so\"\n")
    script.chmod(0o755)
    hooks = [{"hookName": "createContainer", "path": str(script), "args": ["hook.sh", "created"]}]
    proc = rl("run", "--rm", "--network", "none", "--device", "example.com/thing=0", "busybox", "sh", "-c",
              "cat /etc/hooked; cat /usr/lib/libthing.so", env={cdi.ENV: str(_vendor(tmp_path, hooks=hooks))})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["uid 0 created", "the vendor's library"]


def test_device_flags_are_kept_by_create(rl, tmp_path):
    specs = _vendor(tmp_path)
    name = "hpc-devices-create"
    rl("create", "--name", name, "--network", "none", "--device", "example.com/thing=0",
       "--device", "/dev/zero:/dev/z", "busybox", "sh", "-c", "test -c /dev/thing0 && test -c /dev/z && echo ok",
       env={cdi.ENV: str(specs)}, check=True)
    try:
        proc = rl("start", "-a", name, env={cdi.ENV: str(specs)})
        assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr
        host = json.loads(rl("inspect", name, check=True).stdout)[0]["HostConfig"]
        assert host["Devices"] == [{"PathOnHost": "/dev/zero", "PathInContainer": "/dev/z", "CgroupPermissions": "rw"}]
        assert host["DeviceRequests"] == [{"Driver": "cdi", "DeviceIDs": ["example.com/thing=0"]}]
    finally:
        rl("rm", "-f", name)


# --- --as-me ---------------------------------------------------------------------------------

def test_as_me_runs_as_you_in_your_directory(rl, tmp_path, monkeypatch):
    work = tmp_path / "project"
    work.mkdir()
    monkeypatch.chdir(work)
    proc = rl("run", "--rm", "--as-me", "busybox", "sh", "-c",
              'id -u; pwd; hostname; echo "$HPC_JOB_VAR [${LD_PRELOAD-unset}] $HOME"; touch made-inside; '
              'test -d "$HOME" && echo home-bound',
              env={"HPC_JOB_VAR": "passed", "LD_PRELOAD": ""})
    assert proc.returncode == 0, proc.stderr
    uid, cwd, host, env, home = proc.stdout.splitlines()
    assert uid == (str(os.getuid()) if RANGE_MODE else "0")
    assert cwd == os.path.realpath(work)
    assert host == socket.gethostname()
    assert env == f"passed [unset] {os.environ['HOME']}"
    assert home == "home-bound"
    st = os.stat(work / "made-inside")
    assert (st.st_uid, st.st_gid) == (os.getuid(), os.getgid())


def test_as_me_yields_to_the_flags_you_give(rl, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    proc = rl("run", "--rm", "--as-me", "-w", "/tmp", "--network", "none", "-h", "box", "-e", "HPC_JOB_VAR=flag",
              "busybox", "sh", "-c", "pwd; hostname; echo $HPC_JOB_VAR; cat /proc/net/dev | grep -c :",
              env={"HPC_JOB_VAR": "passed"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["/tmp", "box", "flag", "1"]       # only lo: --network none won
    other = tmp_path / "other-home"
    other.mkdir()
    (other / "marker").write_text("")
    home = os.path.realpath(os.environ["HOME"])
    proc = rl("run", "--rm", "--as-me", "-v", f"{other}:{home}", "busybox", "ls", home)
    assert proc.returncode == 0 and proc.stdout.split() == ["marker"], proc.stderr


def test_as_me_refuses_a_system_directory():
    with pytest.raises(UsageError, match="/usr is a system directory"):
        runflags.as_me(False, {"HOME": "/home/x"}, "/usr")
    me = runflags.as_me(False, {"HOME": "/", "PATH": "/x", "SSH_AUTH_SOCK": "/s", "A": "1"}, "/", bind_cwd=False)
    assert me.env == ["HOME=/", "A=1"] and me.volumes == []

