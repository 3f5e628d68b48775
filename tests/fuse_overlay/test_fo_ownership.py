"""xattr_permissions=2: owners, modes and device numbers kept in
user.fuseoverlayfs.override_stat, for mounts without a subuid range."""
from __future__ import annotations

S_IFCHR = 0o020000
KEY = "user.fuseoverlayfs.override_stat"

SPEC = {
    "kernel": False,
    "fuse_opts": "xattr_permissions=2",
    "layers": [[
        {"path": "suid", "type": "file", "data": "x", "xattrs": {KEY: "0:0:4755:file"}},
        {"path": "www", "type": "file", "data": "w", "xattrs": {KEY: "33:33:0640:file"}},
        {"path": "dev/null", "type": "file", "xattrs": {KEY: "0:0:0666:char-1-3"}},
        {"path": "plain", "type": "file", "data": "p", "mode": 0o600},
        {"path": "dir", "type": "dir", "xattrs": {KEY: "0:0:1777:dir"}},
    ]],
}


def f(pair, op, *args):
    res = pair.call(op, *args)["f"]
    assert "ok" in res, (op, args, res)
    return res["ok"]


def test_override_is_presented(make_pair, map_mode):
    p = make_pair(SPEC)
    assert f(p, "stat", "suid")["mode"] == 0o4755
    # A uid outside the namespace's mapping shows as the overflow uid.
    www = f(p, "sh", "stat -c '%u %a' www")[1].split()
    assert www == [("33" if map_mode == "full" else "65534"), "640"]
    dev = f(p, "stat", "dev/null")
    assert dev["type"] == S_IFCHR and dev["rdev"] == (1 << 8 | 3)
    assert f(p, "stat", "dir")["mode"] == 0o1777
    assert f(p, "stat", "plain")["mode"] == 0o600
    assert KEY not in f(p, "stat", "suid").get("xattrs", {})


def test_chown_chmod_are_stored_in_the_xattr(make_pair, map_mode):
    p = make_pair(SPEC)
    f(p, "chmod", "plain", 0o640)
    f(p, "chown", "plain", 0, 0)
    if map_mode == "full":
        f(p, "chown", "www", 0, 33)
        assert f(p, "raw_upper_xattr", "www", KEY) == "0:33:0640:file"
    assert f(p, "raw_upper_xattr", "plain", KEY) == "0:0:0640:file"
    f(p, "chmod", "suid", 0o755)
    assert f(p, "raw_upper_xattr", "suid", KEY) == "0:0:0755:file"
    p.call("remount")
    assert f(p, "stat", "plain")["mode"] == 0o640
    assert f(p, "stat", "suid")["mode"] == 0o755


def test_device_node_kept_through_copy_up(make_pair):
    """(Creating device nodes needs CAP_MKNOD in the initial namespace, which
    the kernel checks before asking any filesystem.)"""
    p = make_pair(SPEC)
    f(p, "chmod", "dev/null", 0o600)
    st = f(p, "stat", "dev/null")
    assert st["type"] == S_IFCHR and st["rdev"] == (1 << 8 | 3) and st["mode"] == 0o600
    assert f(p, "raw_upper_xattr", "dev/null", KEY) == "0:0:0600:char-1-3"
