"""The smaller run/create flags people reach for: labels, DNS, ulimits, sysctls, groups, --init,
--domainname, -P.  Each is checked inside a real container."""

from __future__ import annotations

import json
import os
import resource
import shutil
import time
import urllib.request

import pytest

from .conftest import RANGE_MODE

pytestmark = pytest.mark.both_modes


def _out(rl, *args: str) -> str:
    proc = rl("run", "--rm", "--network", "none", *args)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def _refused(rl, *args: str, why: str) -> None:
    proc = rl("run", "--rm", "--network", "none", *args, "busybox", "true")
    assert proc.returncode == 125 and why in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_dns_flags_write_resolv_conf(rl):
    out = _out(rl, "--dns", "192.0.2.53", "--dns-search", "example.test", "--dns-option", "ndots:2",
               "busybox", "cat", "/etc/resolv.conf")
    lines = out.splitlines()
    assert "nameserver 192.0.2.53" in lines and "search example.test" in lines and "options ndots:2" in lines
    assert sum(ln.startswith("nameserver") for ln in lines) == 1      # --dns replaces the default
    _refused(rl, "--dns", "not-an-address", why="--dns")


def test_labels_are_recorded_and_shown_by_inspect(rl, tmp_path):
    (tmp_path / "labels").write_text("# a comment\nfrom.file=yes\nshared=file\n")
    cid = rl("create", "-l", "team=hpc", "--label", "shared=flag", "--label-file", str(tmp_path / "labels"),
             "busybox", "true").stdout.strip()
    try:
        labels = json.loads(rl("inspect", cid).stdout)[0]["Config"]["Labels"]
        assert labels == {"team": "hpc", "from.file": "yes", "shared": "flag"}   # a flag wins over the file
    finally:
        rl("rm", "-f", cid)


def test_ulimit_sets_the_limits_and_refuses_what_needs_privilege(rl):
    assert _out(rl, "--ulimit", "nofile=512:1024", "busybox", "sh", "-c", "ulimit -n; ulimit -Hn") == "512\n1024\n"
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY:
        _refused(rl, "--ulimit", f"nofile={hard + 1}", why=f"your own hard limit for nofile is {hard}")
    _refused(rl, "--ulimit", "bogus=1", why="--ulimit")
    _refused(rl, "--ulimit", "nofile=2048:1024", why="soft limit is above the hard one")


def test_namespaced_sysctls_only(rl):
    out = _out(rl, "--sysctl", "net.ipv4.ip_forward=1", "--sysctl", "kernel.shmmni=100",
               "busybox", "cat", "/proc/sys/net/ipv4/ip_forward", "/proc/sys/kernel/shmmni")
    assert out == "1\n100\n"
    _refused(rl, "--sysctl", "kernel.hostname=x", why="not a namespaced kernel parameter")
    _refused(rl, "--sysctl", "vm.swappiness=1", why="not a namespaced kernel parameter")
    proc = rl("run", "--rm", "--network", "host", "--sysctl", "net.ipv4.ip_forward=1", "busybox", "true")
    assert proc.returncode == 125 and "--network host" in proc.stderr


def test_shm_size(rl):
    assert _out(rl, "busybox", "df", "-k", "/dev/shm").split()[-5] == "65536"          # Docker's 64 MiB
    assert _out(rl, "--shm-size", "128m", "busybox", "df", "-k", "/dev/shm").split()[-5] == "131072"
    _refused(rl, "--shm-size", "lots", why="--shm-size")


def test_domainname(rl):
    assert _out(rl, "--domainname", "dom.test", "busybox", "cat", "/proc/sys/kernel/domainname") == "dom.test\n"


@pytest.mark.skipif(not (shutil.which("catatonit") or shutil.which("tini-static")),
                    reason="no catatonit or tini-static on this host (scripts/test installs catatonit)")
def test_init_runs_the_command_under_a_small_init(rl):
    out = _out(rl, "--init", "busybox", "sh", "-c", "tr '\\0' ' ' < /proc/1/cmdline; echo; echo $$")
    pid1, me = out.splitlines()
    assert pid1.startswith("/run/rootless-init -- sh -c") and me != "1"
    # a zombie reparented to PID 1 is reaped by the init
    out = _out(rl, "--init", "busybox", "sh", "-c",
               "sh -c 'sleep 0.2 & exit 0'; sleep 1; ps -o stat,comm | grep -c '^Z' || true")
    assert out.strip() == "0"


def test_group_add(rl):
    if not RANGE_MODE:
        _refused(rl, "--group-add", "10", why="--group-add needs a subordinate id range")
        return
    assert _out(rl, "--group-add", "10", "--group-add", "users", "busybox", "id", "-G").split() == ["0", "10", "100"]
    proc = rl("run", "--rm", "--network", "none", "--group-add", "no-such-group", "busybox", "true")
    assert proc.returncode != 0 and "no-such-group" in proc.stderr


def test_publish_all_publishes_the_exposed_ports(rl, busybox_tar):
    if not shutil.which("slirp4netns"):
        pytest.skip("slirp4netns is not installed")
    assert rl("import", "-c", "EXPOSE 8080", str(busybox_tar), "exposing").returncode == 0
    try:
        assert rl("run", "-d", "-P", "--name", "pall", "exposing", "sh", "-c",
                  "echo hello > /tmp/index.html; httpd -f -p 8080 -h /tmp").returncode == 0
        mapping = rl("port", "pall").stdout
        assert "8080/tcp" in mapping, mapping
        host_port = int(mapping.strip().rsplit(":", 1)[1])
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{host_port}/index.html", timeout=2) as r:
                    assert r.read() == b"hello\n"
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
    finally:
        rl("rm", "-f", "pall")
        rl("rmi", "exposing")
