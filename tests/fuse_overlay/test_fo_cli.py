"""Command line, readiness, daemon mode, clean shutdown, read-only mounts."""
from __future__ import annotations

import subprocess
import sys

import pytest

from .conftest import mode_available
from .nsutil import REPO, run_in_ns

pytestmark = pytest.mark.skipif(not mode_available("single"),
                                reason="cannot create a user namespace here")


@pytest.mark.parametrize("args, words", [
    ([], "mount point"),
    (["m"], "lowerdir"),
    (["-o", "lowerdir=/nonexistent", "/tmp"], "/nonexistent"),
    (["-o", "lowerdir=/tmp,upperdir=/tmp", "/tmp"], "together"),
    (["-o", "lowerdir=/tmp,bogus=1", "/tmp"], "bogus"),
    (["-o", "lowerdir=/tmp::/tmp", "/tmp"], "empty"),
    (["-o", "lowerdir=/tmp,notify_fd=x", "/tmp"], "notify_fd"),
    (["-o", "lowerdir=/tmp,notify_fd=987", "/tmp"], "987"),
    (["-x", "/tmp"], "-x"),
    (["-o", "lowerdir=/etc/passwd", "/tmp"], "not a directory"),
    (["-o", "lowerdir=/tmp,uidmapping=0:1", "/tmp"], "uidmapping"),
    (["-o", "lowerdir=/tmp,spin_us=-1", "/tmp"], "spin_us"),
    (["-o", "lowerdir=/tmp,gidmapping=0:x:1", "/tmp"], "gidmapping"),
])
def test_bad_command_lines(args, words):
    p = subprocess.run([sys.executable, "-m", "fuse_overlay.cli"] + args, capture_output=True,
                       text=True, timeout=30, cwd=REPO)
    assert p.returncode == 1
    assert "Traceback" not in p.stderr
    assert p.stderr.startswith("fuse-overlay: ") and words in p.stderr, p.stderr
    assert len(p.stderr.strip().splitlines()) == 1


def test_daemon_mode_returns_when_mounted_and_sigterm_unmounts():
    r = run_in_ns("""
mkdir -p $T/l $T/u $T/w $T/m; echo hi > $T/l/f
$FO -o lowerdir=$T/l,upperdir=$T/u,workdir=$T/w,pidfile=$T/pid $T/m
cat $T/m/f                                   # mounted when the command returns
grep -q " $T/m " /proc/self/mountinfo && echo mounted
kill -TERM $(cat $T/pid)
for i in $(seq 100); do grep -q " $T/m " /proc/self/mountinfo || break; sleep 0.1; done
grep -q " $T/m " /proc/self/mountinfo && echo still-mounted || echo unmounted
for i in $(seq 100); do kill -0 $(cat $T/pid) 2>/dev/null || break; sleep 0.1; done
kill -0 $(cat $T/pid) 2>/dev/null && echo alive || echo exited
""")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["hi", "mounted", "unmounted", "exited"]


def test_foreground_notify_fd_and_sigint():
    r = run_in_ns("""
mkdir -p $T/l $T/u $T/w $T/m; echo hi > $T/l/f
mkfifo $T/ready
$FO -f -o lowerdir=$T/l,upperdir=$T/u,workdir=$T/w,notify_fd=4 $T/m 4>$T/ready &
pid=$!
read -t 30 line < $T/ready
echo "$line"
echo new > $T/m/g; cat $T/u/g
kill -INT $pid; wait $pid; echo status=$?
grep -q " $T/m " /proc/self/mountinfo && echo still-mounted || echo unmounted
""")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["ready", "new", "status=0", "unmounted"]


def test_mount_failure_closes_notify_fd_without_data():
    r = run_in_ns("""
mkdir -p $T/l $T/u $T/w; mkfifo $T/ready
$FO -f -o lowerdir=$T/l,upperdir=$T/u,workdir=$T/w,notify_fd=4 $T/missing 4>$T/ready &
pid=$!
if read -t 30 line < $T/ready; then echo "got:$line"; else echo eof; fi
wait $pid || echo failed=$?
""")
    assert r.stdout.split() == ["eof", "failed=1"], (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr


def test_read_only_without_upper():
    r = run_in_ns("""
mkdir -p $T/l1 $T/l2 $T/m; echo 1 > $T/l1/a; echo 2 > $T/l2/b
$FO -o lowerdir=$T/l1:$T/l2,pidfile=$T/pid $T/m
cat $T/m/a $T/m/b
echo x > $T/m/c 2>/dev/null && echo wrote || echo refused
rm $T/m/a 2>/dev/null && echo removed || echo refused
kill $(cat $T/pid)
""")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["1", "2", "refused", "refused"]


def test_busybox_shell_tools_as_root_filesystem():
    """A container-like use: a shell running commands inside the mount."""
    r = run_in_ns("""
mkdir -p $T/l/bin $T/l/etc $T/u $T/w $T/m; cp /bin/busybox $T/l/bin/ 2>/dev/null || cp /bin/ls $T/l/bin/
echo root:x:0:0::/root:/bin/sh > $T/l/etc/passwd
$FO -o lowerdir=$T/l,upperdir=$T/u,workdir=$T/w,pidfile=$T/pid $T/m
cd $T/m
mkdir -p tmp/a/b && cp etc/passwd tmp/a/b/p && mv tmp/a tmp/c && ln -s b tmp/c/lb && ln tmp/c/b/p tmp/c/hp
chmod 600 tmp/c/hp && tar cf tmp.tar tmp && rm -rf tmp && tar xf tmp.tar && rm tmp.tar
ls -l tmp/c/b/p | cut -c1-10; cat tmp/c/lb/p; stat -c %h tmp/c/hp
./bin/$(ls bin) --help > /dev/null 2>&1; echo exec=$?     # binaries run from the mount
cd /; kill $(cat $T/pid)
""")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["-rw-------", "root:x:0:0::/root:/bin/sh", "2", "exec=0"]


def test_startup_time():
    r = run_in_ns("""
mkdir -p $T/l $T/u $T/w $T/m
s=$(date +%s%N)
$FO -o lowerdir=$T/l,upperdir=$T/u,workdir=$T/w,pidfile=$T/pid $T/m
e=$(date +%s%N)
echo $(( (e - s) / 1000000 ))
kill $(cat $T/pid)
""")
    assert r.returncode == 0, r.stderr
    assert int(r.stdout.strip()) < 2000


def test_sigterm_with_busy_mount_detaches_and_exits():
    r = run_in_ns("""
mkdir -p $T/l/d $T/u $T/w $T/m
$FO -o lowerdir=$T/l,upperdir=$T/u,workdir=$T/w,pidfile=$T/pid $T/m
( cd $T/m/d && exec sleep 30 ) &
busy=$!
sleep 0.3
kill -TERM $(cat $T/pid)
for i in $(seq 100); do kill -0 $(cat $T/pid) 2>/dev/null || break; sleep 0.1; done
kill -0 $(cat $T/pid) 2>/dev/null && echo alive || echo exited
grep -q " $T/m " /proc/self/mountinfo && echo still-mounted || echo unmounted
kill $busy
""")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["exited", "unmounted"]


def test_help():
    p = subprocess.run([sys.executable, "-m", "fuse_overlay.cli", "--help"], capture_output=True,
                       text=True, timeout=30, cwd=REPO)
    assert p.returncode == 0 and "lowerdir" in p.stdout


def test_inode_numbers_with_layers_on_two_filesystems():
    """A lower layer on tmpfs and the upper on the disk: numbers stay unique,
    survive copy-up and remount."""
    r = run_in_ns("""
mkdir -p $T/t $T/l2/d $T/u $T/w $T/m
mount -t tmpfs tmpfs $T/t
mkdir -p $T/t/d; for i in 1 2 3 4 5; do echo $i > $T/t/d/f$i; echo $i > $T/l2/d/g$i; done
$FO -o lowerdir=$T/t:$T/l2,upperdir=$T/u,workdir=$T/w,pidfile=$T/pid $T/m
find $T/m -printf '%i\\n' | sort | uniq -d | wc -l
before=$(stat -c %i $T/m/d/f1 $T/m/d/g1)
echo x >> $T/m/d/f1; echo y >> $T/m/d/g1; touch $T/m/d/new
after=$(stat -c %i $T/m/d/f1 $T/m/d/g1)
[ "$before" = "$after" ] && echo kept
kill $(cat $T/pid); for i in $(seq 100); do kill -0 $(cat $T/pid) 2>/dev/null || break; sleep 0.1; done
$FO -o lowerdir=$T/t:$T/l2,upperdir=$T/u,workdir=$T/w,pidfile=$T/pid $T/m
[ "$(stat -c %i $T/m/d/f1 $T/m/d/g1)" = "$before" ] && echo stable
find $T/m -printf '%i\\n' | sort | uniq -d | wc -l
kill $(cat $T/pid)
""")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["0", "kept", "stable", "0"]


@pytest.mark.skipif(not mode_available("full"), reason="needs a subordinate id range (ids 5 and 7 mapped)")
def test_uid_and_gid_mapping():
    """uidmapping/gidmapping (fuse-overlayfs's format DISK:SHOWN:COUNT): owners are shown
    through the mapping, chown and new files store the reverse, unmapped ids are refused."""
    r = run_in_ns("""
mkdir -p $T/l $T/u $T/w $T/m; echo a > $T/l/a; chown 0:0 $T/l/a
$FO -o lowerdir=$T/l,upperdir=$T/u,workdir=$T/w,uidmapping=0:5:1:1:0:1,gidmapping=0:7:1:1:0:1,pidfile=$T/pid $T/m
stat -c %u:%g $T/m/a
touch $T/m/b; stat -c %u:%g $T/m/b $T/u/b
chown 5:7 $T/m/b; stat -c %u:%g $T/m/b $T/u/b
chown 9 $T/m/b 2>/dev/null && echo chowned || echo refused
kill $(cat $T/pid)
""", mode="full")
    assert r.returncode == 0, r.stderr
    # disk 0 is shown as 5 (uid) / 7 (gid); the creator (root, 0) is stored as disk 1
    assert r.stdout.split() == ["5:7", "0:0", "1:1", "5:7", "0:0", "refused"]


def test_listings_follow_every_change():
    """The listing cache (a directory listed again while nothing changed is answered from
    memory) must never show a stale name, size, mode or owner after a change."""
    r = run_in_ns("""
mkdir -p $T/l/d $T/u $T/w $T/m; echo 1 > $T/l/d/a; echo 22 > $T/l/d/b
$FO -o lowerdir=$T/l,upperdir=$T/u,workdir=$T/w,pidfile=$T/pid $T/m
show() { ls -ln --time-style=+ $T/m/d | awk 'NR > 1 {print $1, $5, $6}' | tr '\\n' ' '; echo; }
show; show
echo 333 >> $T/m/d/a; show
chmod 600 $T/m/d/b; show
mv $T/m/d/b $T/m/d/c; show
touch $T/m/d/e; rm $T/m/d/a; show
truncate -s 10 $T/m/d/c; show
kill $(cat $T/pid)
""")
    assert r.returncode == 0, r.stderr
    lines = [line.strip() for line in r.stdout.strip().splitlines()]
    assert lines == [
        "-rw-r--r-- 2 a -rw-r--r-- 3 b",
        "-rw-r--r-- 2 a -rw-r--r-- 3 b",
        "-rw-r--r-- 6 a -rw-r--r-- 3 b",
        "-rw-r--r-- 6 a -rw------- 3 b",
        "-rw-r--r-- 6 a -rw------- 3 c",
        "-rw------- 3 c -rw-r--r-- 0 e",
        "-rw------- 10 c -rw-r--r-- 0 e",
    ], r.stdout


def test_timeout_zero_shows_layers_changed_behind_the_mount():
    """With -o timeout=0,writeback=0 nothing is cached: names and sizes written straight into
    the upper directory show at the next listing and stat (the listing cache is off too;
    with write-back caching the kernel keeps its own file sizes)."""
    r = run_in_ns("""
mkdir -p $T/l/d $T/u/d $T/w $T/m; echo 1 > $T/l/d/a
$FO -o lowerdir=$T/l,upperdir=$T/u,workdir=$T/w,pidfile=$T/pid,timeout=0,writeback=0 $T/m
ls $T/m/d | tr '\\n' ' '; echo; ls $T/m/d | tr '\\n' ' '; echo
echo 4444 > $T/u/d/b
ls $T/m/d | tr '\\n' ' '; echo; stat -c %s $T/m/d/b
echo 55555 > $T/u/d/b; stat -c %s $T/m/d/b
kill $(cat $T/pid)
""")
    assert r.returncode == 0, r.stderr
    assert [line.strip() for line in r.stdout.strip().splitlines()] == ["a", "a", "a b", "5", "6"], r.stdout
