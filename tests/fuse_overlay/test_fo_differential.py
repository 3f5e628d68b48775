"""Hand-written differential tests: every step runs on the kernel overlayfs
(the oracle) and on fuse-overlay, and what a process sees must match, after
each step and after a remount.  Where the two must differ, the test says so
(see docs/fuse-overlay.md, "Differences from the kernel")."""
from __future__ import annotations

import pytest

S_IFCHR = 0o020000

BASE = {
    "layers": [
        [  # top lower
            {"path": "etc/passwd", "type": "file", "data": "root:x:0:0\n", "mode": 0o644},
            {"path": "etc/shadow", "type": "file", "data": "secret\n", "mode": 0o640, "gid": 42},
            {"path": "etc/x.conf", "type": "file", "data": "top\n", "xattrs": {"user.a": "1"}},
            {"path": "bin/sh", "type": "file", "data": "#!ELF\n", "mode": 0o755},
            {"path": "bin/ash", "type": "symlink", "target": "sh"},
            {"path": "var/www/index.html", "type": "file", "data": "<html>\n", "uid": 33, "gid": 33},
            {"path": "var/gone", "type": "whiteout"},
            {"path": "opq", "type": "opaque"},
            {"path": "opq/new", "type": "file", "data": "new\n"},
            {"path": "run/fifo", "type": "fifo"},
            {"path": "sparse", "type": "file", "data": "middle", "sparse": 1 << 20},
            {"path": "suid", "type": "file", "data": "x", "mode": 0o4755},
        ],
        [  # bottom lower
            {"path": "etc/x.conf", "type": "file", "data": "bottom\n"},
            {"path": "etc/group", "type": "file", "data": "root:x:0:\n"},
            {"path": "var/gone/deep", "type": "file", "data": "hidden\n"},
            {"path": "var/lib/dpkg/status", "type": "file", "data": "ok\n"},
            {"path": "opq/old", "type": "file", "data": "old\n"},
            {"path": "usr/lib/a.so", "type": "file", "data": "a" * 5000},
            {"path": "usr/lib/b.so", "type": "hardlink", "target": "usr/lib/a.so"},
            {"path": "home/user/.profile", "type": "file", "data": "PS1=x\n", "uid": 1000, "gid": 1000},
        ],
    ]
}


def _spec(**kw):
    spec = dict(BASE)
    spec.update(kw)
    return spec


def check(pair, remount: bool = False):
    pair.same("snapshot")
    if remount:
        pair.call("remount")
        pair.same("snapshot")


def test_initial_view_and_whiteout_formats(make_pair):
    """Merged view: duplicates removed, chr and OCI whiteouts and both opaque
    markers honoured (the fuse side reads OCI-format lowers, the kernel the
    equivalent kernel-format ones)."""
    p = make_pair(BASE)
    snap = p.same("snapshot")["ok"]
    assert "var/gone" not in snap and "opq/old" not in snap and "opq/new" in snap
    assert snap["etc/x.conf"]["sha"] == p.same("stat", "etc/x.conf")["ok"]["sha"]
    assert p.same("read", "etc/x.conf") == {"ok": "top\n"}
    assert p.same("listdir", "opq") == {"ok": ["new"]}
    check(p, remount=True)



def test_write_copy_up_keeps_metadata(make_pair):
    p = make_pair(BASE)
    p.same("write", "etc/passwd", "user:x:1000\n", "a")
    p.same("write", "etc/shadow", "more\n", "a")
    p.same("write", "var/www/index.html", "<body>\n", "a")
    p.same("truncate", "etc/group", 4)
    p.same("pwrite", "sparse", 10, "head")
    mt_k = p.call("mtime", "bin/sh")
    p.same("chmod", "bin/sh", 0o700)
    assert p.call("mtime", "bin/sh")["f"] == mt_k["f"]   # copy-up keeps mtime
    p.same("write", "home/user/.profile", "", "a")
    check(p, remount=True)


def test_sparse_copy_up_keeps_holes(make_pair):
    p = make_pair(BASE)
    p.same("write", "sparse", "tail", "a")
    res = p.call("sh", "du -k sparse | cut -f1")
    assert int(res["f"]["ok"][1]) < 200, res   # 1 MiB file, mostly hole
    check(p)


def test_unlink_and_recreate(make_pair):
    p = make_pair(BASE)
    p.same("unlink", "etc/x.conf")
    p.same("stat", "etc/x.conf")
    p.same("write", "etc/x.conf", "again\n", "x")
    p.same("unlink", "etc/group")
    p.same("unlink", "bin/ash")
    p.same("unlink", "run/fifo")
    p.same("unlink", "nonexistent")
    p.same("unlink", "etc")
    check(p, remount=True)


def test_rmdir_and_mkdir_over_whiteout_is_opaque(make_pair):
    p = make_pair(BASE)
    p.same("rmdir", "var/lib")
    p.same("sh", "rm -rf var/lib")
    p.same("listdir", "var")
    p.same("mkdir", "var/lib", 0o750)
    p.same("listdir", "var/lib")
    p.same("sh", "rm -rf usr && mkdir usr && ls -a usr")
    p.same("rmdir", "opq")
    check(p, remount=True)


def test_rename_files(make_pair):
    p = make_pair(BASE)
    p.same("rename", "etc/passwd", "etc/passwd-")
    p.same("rename", "etc/group", "var/group")
    p.same("rename", "etc/x.conf", "bin/sh")
    p.same("rename", "bin/ash", "ash")
    p.same("write", "newfile", "n\n")
    p.same("rename", "newfile", "etc/shadow")
    p.same("rename", "missing", "x")
    check(p, remount=True)


def test_rename_directories(make_pair):
    """Lower/merged directories: EXDEV like the kernel without redirect_dir;
    `mv` falls back to copying.  Upper-only directories move directly."""
    p = make_pair(BASE)
    assert p.same("rename", "var/lib", "var/lib2") == {"err": "EXDEV"}
    p.same("sh", "mv var/lib var/lib2 && ls -R var")
    p.same("mkdir", "newdir")
    p.same("write", "newdir/f", "x")
    p.same("rename", "newdir", "newdir2")
    p.same("rename", "newdir2", "etc/sub")
    p.same("mkdir", "empty")
    p.same("rename", "etc/sub", "empty")
    p.same("sh", "mv etc etc2; ls etc2")
    check(p, remount=True)


def test_hard_links(make_pair):
    p = make_pair(BASE)
    p.same("link", "etc/passwd", "etc/passwd.hl")
    p.same("write", "etc/passwd.hl", "more\n", "a")
    # Known difference: the kernel (index=off) reports different st_ino for
    # the two names of a copied-up file it hard-linked; fuse-overlay one.
    res = p.call("ino_equal", "etc/passwd", "etc/passwd.hl")
    assert res == {"k": {"ok": False}, "f": {"ok": True}}
    p.same("link", "bin/sh", "bin/sh.hl")
    p.same("write", "bin/sh", "more\n", "a")
    p.same("unlink", "etc/passwd")
    p.same("link", "etc", "etc2")
    # Lower hard links: both report nlink 2 until copy-up breaks them.
    p.same("stat", "usr/lib/b.so")
    p.same("write", "usr/lib/a.so", "z", "a")
    p.same("stat", "usr/lib/a.so")
    p.same("stat", "usr/lib/b.so")
    check(p, remount=True)


def test_lower_hard_links_inode_numbers_differ(make_pair):
    """Known difference: the kernel shows one st_ino for two lower hard
    links; fuse-overlay shows two, as copy-up may split them."""
    p = make_pair(BASE)
    res = p.call("ino_equal", "usr/lib/a.so", "usr/lib/b.so")
    assert res["k"] == {"ok": True}
    assert res["f"] == {"ok": False}


def test_symlinks_fifos_devices(make_pair):
    p = make_pair(BASE)
    p.same("symlink", "../etc/passwd", "bin/pw")
    p.same("read", "bin/pw")
    p.same("mkfifo", "run/f2")
    p.same("mknod", "dev0", S_IFCHR | 0o600, 1, 3)
    p.same("chmod", "bin/ash", 0o700)
    check(p, remount=True)


def test_chown_chmod(make_pair, map_mode):
    p = make_pair(BASE)
    p.same("chmod", "etc", 0o700)
    p.same("chown", "etc/passwd", 0, 42 if map_mode == "full" else 0)
    p.same("chown", "var/www/index.html", 33 if map_mode == "full" else 0, 0)
    p.same("chown", "bin/ash", 0, 0)
    p.same("chmod", "suid", 0o755)
    p.same("chmod", "opq", 0o1777)
    check(p, remount=True)


def test_xattrs(make_pair):
    p = make_pair(BASE)
    p.same("getxattr", "etc/x.conf", "user.a")
    p.same("setxattr", "etc/passwd", "user.new", "v")
    p.same("setxattr", "etc", "user.dir", "d")
    p.same("removexattr", "etc/x.conf", "user.a")
    p.same("getxattr", "etc/x.conf", "user.a")
    p.same("getxattr", "opq", "user.overlay.opaque")["err"]
    check(p, remount=True)


def test_open_flags(make_pair):
    p = make_pair(BASE)
    p.same("write", "etc/passwd", "x", "x")
    p.same("write", "etc/passwd", "trunc\n", "w")
    p.same("write", "etc/group", "app\n", "a")
    p.same("write", "etc/group", "XY", "r+")
    p.same("write", "new", "1", "x")
    p.same("write", "new", "2", "x")
    p.same("open_unlink_rw", "tmpf", "data")
    p.same("rw_old_fd", "etc/x.conf", "appended\n")
    check(p, remount=True)


def test_mmap_shared_write(make_pair):
    p = make_pair(BASE)
    p.same("mmap_write", "etc/passwd", 2, "MM")
    p.same("mmap_write", "usr/lib/a.so", 4090, "page-boundary")
    check(p, remount=True)


def test_times(make_pair):
    p = make_pair(BASE)
    p.same("utime", "etc/passwd", 1000, 2000)
    p.same("utime", "var", 3000, 4000)
    check(p, remount=True)


def test_busybox_style_tools(make_pair):
    """cp, mv, rm, mkdir, ln, chmod, tar inside the mount."""
    p = make_pair(BASE)
    cmds = [
        "cp -a etc etc.bak && ls etc.bak",
        "mkdir -p a/b/c && echo hi > a/b/c/f && ln -s f a/b/c/l && ln a/b/c/f a/hl",
        "cp bin/sh bin/sh2 && chmod 755 bin/sh2",
        "tar cf - etc var | tar xf - -C a && ls -R a | sort",
        "tar cf /dev/null . && echo ok",
        "mv a/b a/b2 && rm -rf a/b2/c && ls -la a | wc -l",
        "find . -name '*.so' | sort",
        "rm -rf home && ls",
        "echo x > usr/lib/a.so && cat usr/lib/b.so | wc -c",
    ]
    for cmd in cmds:
        p.same("sh", cmd)
    check(p, remount=True)


def test_inode_numbers_stable(make_pair):
    p = make_pair(BASE)
    before = {path: p.call("ino", path)["f"] for path in ("etc/passwd", "etc", "var/www/index.html")}
    p.same("write", "etc/passwd", "x", "a")        # copy-up keeps the number
    p.same("chmod", "etc", 0o755)
    after = {path: p.call("ino", path)["f"] for path in before}
    assert before == after
    p.call("remount")
    assert {path: p.call("ino", path)["f"] for path in before} == before
    res = p.call("sh", "find . -xdev -printf '%i\\n' | sort | uniq -d")
    # Only lower hard links may share a number: none in fuse-overlay.
    assert res["f"]["ok"] == [0, ""]


def test_truncating_open_of_a_big_lower_file(make_pair):
    """O_TRUNC copy-up skips the data (like the kernel); result identical."""
    spec = {"layers": [[{"path": "big", "type": "file", "data": "z" * 300000, "mode": 0o640,
                         "xattrs": {"user.k": "v"}}]]}
    p = make_pair(spec)
    p.same("write", "big", "short\n", "w")
    p.same("truncate", "big", 0)
    check(p, remount=True)


THREE = {
    "layers": [
        [
            {"path": "m", "type": "opaque", "style": "marker"},   # .wh..wh..opq on the fuse side
            {"path": "m/top", "type": "file", "data": "t"},
            {"path": "gone_dir", "type": "whiteout"},            # hides a whole lower directory
            {"path": "x/y", "type": "file", "data": "layer0"},
        ],
        [
            {"path": "m/mid", "type": "file", "data": "m"},
            {"path": "x/z", "type": "file", "data": "layer1"},
            {"path": "x/y", "type": "file", "data": "hidden"},
            {"path": "x/w", "type": "whiteout"},
        ],
        [
            {"path": "gone_dir/a", "type": "file", "data": "a"},
            {"path": "m/bottom", "type": "file", "data": "b"},
            {"path": "x/w", "type": "file", "data": "whited"},
            {"path": "x/v", "type": "dir"},
            {"path": "x/v/deep", "type": "file", "data": "d"},
        ],
    ]
}


def test_three_layers_and_oci_formats(make_pair):
    p = make_pair(THREE)
    assert p.same("listdir", "m") == {"ok": ["top"]}
    assert p.same("listdir", "x") == {"ok": ["v", "y", "z"]}
    p.same("stat", "gone_dir")
    p.same("mkdir", "gone_dir")                 # over a whiteout: opaque, empty
    assert p.same("listdir", "gone_dir") == {"ok": []}
    p.same("write", "x/w", "new", "x")
    p.same("rename", "x/v", "x/v2")             # lower directory: EXDEV
    p.same("sh", "mv x/v x/v2 && ls -R x")
    p.same("rename", "gone_dir", "m/sub")       # upper-only dir into an opaque dir
    p.same("mkdir", "m/mid")
    p.same("rmdir", "m/mid")
    check(p, remount=True)


def test_rename_dir_over_empty_merged_dir(make_pair):
    spec = {"layers": [[{"path": "target/f", "type": "file", "data": "f"},
                        {"path": "other/g", "type": "file", "data": "g"}]]}
    p = make_pair(spec)
    p.same("unlink", "target/f")                # merged view of target is now empty
    p.same("mkdir", "src")
    p.same("write", "src/new", "n")
    p.same("rename", "src", "target")           # replaces it; must hide lower target/*
    p.same("listdir", "target")
    p.same("rename", "target", "other")         # other is not empty
    check(p, remount=True)


LONG = "n" * 255          # the longest name ext4 and tmpfs accept: no ".wh." prefix fits in front
LONG2 = "m" * 252


def test_names_of_252_to_255_bytes(make_pair):
    """Every operation on names the upper filesystem accepts, in the upper layer and in a
    lower one (a whiteout probe ``.wh.NAME`` for such a name is longer than 255 bytes)."""
    spec = {"layers": [[{"path": "d/other", "type": "file", "data": "top\n"}],   # probes go through it
                       [{"path": f"d/{LONG}", "type": "file", "data": "lower\n"},
                        {"path": f"d/{LONG2}", "type": "file", "data": "lower2\n"},
                        {"path": f"ld/{LONG}", "type": "dir"},
                        {"path": f"ld/{LONG}/x", "type": "file", "data": "x\n"}]]}
    p = make_pair(spec)
    check(p)
    p.same("stat", f"d/{LONG}")
    p.same("read", f"d/{LONG}")
    p.same("chmod", f"d/{LONG}", 0o600)
    p.same("truncate", f"d/{LONG2}", 3)
    p.same("write", f"up-{LONG[4:]}", "new\n")
    p.same("mkdir", f"D{LONG[1:]}")
    p.same("symlink", "target", f"d/S{LONG[1:]}")
    p.same("link", f"d/{LONG2}", f"d/L{LONG[1:]}")
    p.same("rename", f"up-{LONG[4:]}", f"d/R{LONG[1:]}")
    p.same("rmdir", f"D{LONG[1:]}")
    check(p)
    p.same("unlink", f"d/{LONG}")          # a lower file: must be hidden by a whiteout
    p.same("stat", f"d/{LONG}")
    p.same("rename", f"ld/{LONG}", "ld/short")
    check(p, remount=True)
    p.same("write", f"d/{LONG}", "again\n")  # the name comes back over its whiteout
    check(p, remount=True)


def test_files_unlinked_while_open(make_pair):
    """fstat, ftruncate, fchmod, fchown, xattrs, mmap and /proc/self/fd reopen of a file
    with no name left, as on the kernel overlay (link count 0): lower and upper files."""
    p = make_pair({"layers": [[{"path": "lower-ro", "type": "file", "data": "lower data\n"},
                               {"path": "lower-rw", "type": "file", "data": "lower data\n",
                                "xattrs": {"user.a": "1"}}]]})
    p.same("write", "upper-rw", "upper data\n")
    res = p.call("unlinked_open_file", "lower-ro", False)
    # The one difference: the kernel overlay shows the lower file's own link count (1) for a
    # lower file unlinked while open read-only; fuse-overlay shows 0, as POSIX has it.
    assert res["f"]["ok"].pop("fstat_nlink") == 0
    res["k"]["ok"].pop("fstat_nlink")
    assert res["f"] == res["k"]
    p.same("unlinked_open_file", "lower-rw", True)
    p.same("unlinked_open_file", "upper-rw", True)


def test_create_in_a_working_directory_renamed_away(make_pair):
    """A shell in a directory that another name moved (mkdir /a; cd /a; mv /a /b; touch x):
    the directory still exists, as /b, and the kernel creates x there; so must we (was EIO).
    Only once the directory is removed does creating in it fail, with ENOENT."""
    p = make_pair(BASE)
    # an upper-only directory at the top, and one inside a merged (lower) directory
    p.same("sh", "mkdir a && cd a && mv ../a ../b && echo hi > x && mkdir sub && ls -la . >/dev/null && "
                 "cd sub && mv ../../b ../../c && touch y && ls ../../c ../../c/sub")
    p.same("sh", "mkdir etc/a && cd etc/a && mv ../a ../../a2 && touch x && ln -s x l && ls ../../a2")
    p.same("listdir", "c")
    p.same("read", "c/x")
    p.same("listdir", "a2")
    # moved twice, then written through the old working directory
    p.same("sh", "mkdir d && cd d && mv ../d ../e && mv ../e ../f && echo two > t && cat ../f/t")
    # renamed by rename(2) itself (not mv), and over an existing empty directory
    p.same("sh", "mkdir h && cd h && python3 -c \"import os; os.rename('../h', '../var/h2')\" && "
                 "touch x && ls ../var/h2")
    p.same("sh", "mkdir i j && cd i && python3 -c \"import os; os.rename('../i', '../j')\" && touch x && ls ../j")
    # removed, or replaced by another directory: ENOENT, as the kernel (touch fails)
    for cmd in ("mkdir g && cd g && rmdir ../g",
                "mkdir k l && cd l && python3 -c \"import os; os.rename('../k', '../l')\""):
        r = p.same("sh", cmd + "; touch x 2>/dev/null; echo $?")
        assert r["ok"][1].strip() not in ("", "0"), r
    check(p, remount=True)


def test_upper_directories_move_between_drivers(make_pair):
    """An upper directory written by fuse-overlay mounts on the kernel overlay with the same
    result, and the other way round: whiteouts, opaque directories, copy-ups, renames,
    ownership and xattrs are stored in one format, so a container may change drivers."""
    p = make_pair(BASE)
    p.same("write", "etc/passwd", "changed\n")                 # copy-up
    p.same("unlink", "etc/group")                               # whiteout of a lower file
    p.same("unlink", "home/user/.profile")
    p.same("rmdir", "home/user")                                # whiteout of a lower dir
    p.same("mkdir", "home/user")                                # then opaque when made again
    p.same("write", "home/user/new", "n\n")
    p.same("rename", "var/lib", "var/lib2")                     # a merged dir renamed
    p.same("mkdir", "fresh")
    p.same("symlink", "../etc/passwd", "fresh/link")
    p.same("write", "fresh/file", "x\n")
    p.same("chmod", "fresh/file", 0o600)
    p.same("chown", "bin/sh", 0, 0)
    p.same("setxattr", "fresh/file", "user.k", "v")
    p.same("unlink", "usr/lib/b.so")                            # one of two lower hard links
    before = p.same("snapshot")
    p.call("swap_uppers")
    assert p.same("snapshot") == before
    p.same("write", "etc/x.conf", "after swap\n")              # each keeps working on the other's upper
    p.same("unlink", "fresh/file")
    check(p, remount=True)


DEEP_LEVELS, DEEP_NAMELEN = 20, 250      # ~5000 bytes of path below the mount: beyond PATH_MAX


def _deep(path, entries, levels=DEEP_LEVELS):
    return {"path": path, "type": "deep", "levels": levels, "namelen": DEEP_NAMELEN, "entries": entries}


def test_paths_longer_than_path_max(make_pair):
    """A tree deeper than PATH_MAX, reached with relative paths (chdir one level at a time,
    as ``mkdir -p`` and ``rm -r`` do): everything the kernel overlay does there works —
    lookups through merged deep directories, copy-up of deep lower files (and of the chain of
    lower directories above them), whiteouts and opaque directories deep down, create,
    write, stat, rename, link, symlinks, xattrs, times, unlink, rmdir — and the result is the
    same after a remount."""
    spec = {"layers": [
        [_deep("deep", [{"path": "top", "type": "file", "data": "top layer\n"},
                        {"path": "b", "type": "whiteout"},
                        {"path": "tl", "type": "symlink", "target": "top"}])],
        [_deep("deep", [{"path": "a", "type": "file", "data": "lower a\n", "xattrs": {"user.k": "v"}},
                        {"path": "b", "type": "file", "data": "hidden\n"},
                        {"path": "c", "type": "file", "data": "lower c\n"},
                        {"path": "ld", "type": "dir"}]),
         _deep("deep/d00-" + "x" * (DEEP_NAMELEN - 4), [{"path": "f", "type": "file", "data": "x\n"}],
               levels=DEEP_LEVELS - 1)],      # a second deep chain inside the first: merged dirs
    ]}
    p = make_pair(spec)
    check(p)
    steps = [
        ["listdir", "."], ["read", "a"], ["read", "b"], ["stat", "top"], ["stat", "tl"],
        ["write", "a", "appended\n", "a"],                  # copy-up of a deep lower file
        ["getxattr", "a", "user.k"], ["stat", "a"],
        ["unlink", "c"], ["stat", "c"],                     # whiteout deep down
        ["rmdir", "ld"], ["mkdir", "ld", 0o700], ["listdir", "ld"],   # opaque deep down
        ["write", "new", "new file\n", "x"], ["stat", "new"],
        ["rename", "new", "new2"], ["read", "new2"],
        ["rename", "new2", "../moved-up"], ["read", "../moved-up"],
        ["symlink", "new2", "sl"], ["stat", "sl"], ["unlink", "sl"],
        ["link", "top", "top-link"], ["stat", "top-link"],
        ["chmod", "top", 0o600], ["chown", "a", 0, 0],
        ["setxattr", "top", "user.x", "y"], ["getxattr", "top", "user.x"],
        ["removexattr", "a", "user.k"],
        ["utime", "top", 1000000, 2000000],
        ["truncate", "top", 3],
        ["mkfifo", "fifo"], ["mknod", "node", 0o010644, 0, 0],
        ["mkdir", "sub"], ["write", "sub/f", "deeper\n"], ["rename", "sub", "sub2"],
        ["unlink", "sub2/f"], ["rmdir", "sub2"],
        ["sh", "mkdir -p p/q/r && echo hi > p/q/r/f && cat p/q/r/f && ls -R p | wc -l"],
        ["unlink", "top-link"], ["unlink", "b"], ["unlink", "nonexistent"],
        ["listdir", "."], ["listdir", ".."],
        # a big deep directory listed with attributes (one directory fd serves all entries)
        ["sh", "for i in $(seq 300); do : > m$i; done; ls -l | wc -l; ls -l ../d19-* | wc -l; rm m*"],
    ]
    p.same("deep", "deep", DEEP_LEVELS, DEEP_NAMELEN, steps)
    check(p, remount=True)
    # Deeper still, below what the lower layers have: upper-only directories, then removal.
    more = [["write", "bottom", "b\n"], ["stat", "bottom"], ["mkdir", "e"], ["listdir", "."]]
    p.same("deep", "deep", DEEP_LEVELS + 4, DEEP_NAMELEN, more)
    check(p, remount=True)
    p.same("sh", "rm -rf deep/d00-*/d01-*/d02-* && ls -R deep | wc -l")
    check(p, remount=True)
