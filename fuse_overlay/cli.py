"""Command line: ``fuse-overlay [-f] [-d] -o OPTS MOUNTPOINT``.

Parses fuse-overlayfs style options, checks them, then hands over to
:mod:`fuse_overlay.mount`.  Every problem with the command line or the
directories is reported as one sentence on stderr with exit status 1 (no
traceback).  The heavy import (pyfuse3; trio is never imported, see loop.py)
happens only after the command line is known to be good.
"""
from __future__ import annotations

import os
import stat
import sys

USAGE = """\
usage: fuse-overlay [-f] [-d] -o lowerdir=L1[:L2...][,upperdir=U,workdir=W][,OPTION...] MOUNTPOINT

  -f                 stay in the foreground (default: return once mounted)
  -d, --debug        foreground, log every error
  -o lowerdir=DIRS   lower layers, top first, separated by ':' ('\\:' for a colon)
  -o upperdir=DIR    writable layer (without it the mount is read-only)
  -o workdir=DIR     scratch directory on the upper directory's filesystem
  -o notify_fd=N     write "ready\\n" to fd N once mounted, then close it
  -o pidfile=PATH    write the daemon's PID to PATH once mounted
  -o xattr_permissions=2   keep owners/modes in user.fuseoverlayfs.override_stat
  -o timeout=SECONDS kernel attribute/entry cache time (default 86400)
  -o writeback=0|1   kernel write-back caching (default 1)
  -o spin_us=N       while requests come fast, wait N µs awake for the next one
                     before sleeping (default 100, 0 on one CPU; 0: always sleep)
  -o uidmapping=DISK:SHOWN:COUNT[:...], gidmapping=...
                     show owners DISK+i of the backing files as SHOWN+i (and store
                     the reverse), as fuse-overlayfs does
  -o ro              read-only mount
"""

# Options other tools pass that need nothing from us.
_IGNORED = {"rw", "suid", "nosuid", "dev", "nodev", "exec", "noexec", "atime", "noatime",
            "relatime", "strictatime", "allow_other", "allow_root", "default_permissions",
            "userxattr", "index", "metacopy", "redirect_dir", "volatile", "fast_ino",
            "noacl", "threaded", "sync", "async", "xino", "max_idle_threads", "debug",
            # SELinux labels (containers/storage adds context="..." when SELinux is on: the
            # mount gets no label of its own here), fuse-overlayfs's fsync=0|1 and static_nlink
            "context", "fscontext", "defcontext", "rootcontext", "fsync", "static_nlink"}


class UsageError(Exception):
    """A bad command line; the message is shown to the user."""


class Options:
    """The parsed command line (plain class: dataclasses would import
    inspect, which costs start-up time)."""

    def __init__(self) -> None:
        self.mountpoint = ""
        self.lowers: list[str] = []
        self.upper: str | None = None
        self.work: str | None = None
        self.foreground = False
        self.debug = False
        self.read_only = False
        self.notify_fd: int | None = None
        self.pidfile: str | None = None
        self.xattr_permissions = False
        self.timeout = 86400.0
        self.fsname = "fuse-overlay"
        self.writeback = True
        self.uidmapping = None     # idmapping.IdMapping
        self.spin_us: int | None = None   # None: loop.SPIN_US
        self.gidmapping = None


def _split_lowers(value: str) -> list[str]:
    out, cur, i = [], "", 0
    while i < len(value):
        c = value[i]
        if c == "\\" and i + 1 < len(value):
            cur += value[i + 1]
            i += 2
            continue
        if c == ":":
            out.append(cur)
            cur = ""
        else:
            cur += c
        i += 1
    out.append(cur)
    if any(not p for p in out):
        raise UsageError("lowerdir has an empty entry; separate directories with a single ':'.")
    return out


def _split_opts(text: str) -> list[str]:
    # Commas separate options; a backslash escapes a comma inside a value, and so do double
    # quotes around it (context="...:s0:c1,c2", as mount(8) takes it).
    out, cur, i, quoted = [], "", 0, False
    while i < len(text):
        if text[i] == "\\" and i + 1 < len(text) and text[i + 1] == ",":
            cur += ","
            i += 2
            continue
        if text[i] == '"' and (quoted or cur.endswith("=")):   # only a whole quoted value
            quoted = not quoted
        if text[i] == "," and not quoted:
            out.append(cur)
            cur = ""
        else:
            cur += text[i]
        i += 1
    out.append(cur)
    return [o for o in out if o]


def _apply(opts: Options, item: str) -> None:
    key, eq, value = item.partition("=")
    if key == "lowerdir":
        opts.lowers = _split_lowers(value)
    elif key == "upperdir":
        opts.upper = value
    elif key == "workdir":
        opts.work = value
    elif key == "ro":
        opts.read_only = True
    elif key == "spin_us":
        if not value.isdigit() or int(value) > 10000:
            raise UsageError(f"option spin_us has a bad value {value!r}; use microseconds from 0 to 10000.")
        opts.spin_us = int(value)
    elif key in ("notify_fd", "xattr_permissions", "timeout"):
        if not eq or not value:
            raise UsageError(f"option {key} needs a value, as in {key}=N.")
        try:
            if key == "notify_fd":
                opts.notify_fd = int(value)
                os.fstat(opts.notify_fd)
            elif key == "xattr_permissions":
                if value not in ("0", "1", "2"):
                    raise ValueError
                opts.xattr_permissions = value != "0"
            else:
                opts.timeout = float(value)
                if opts.timeout < 0:
                    raise ValueError
        except ValueError:
            raise UsageError(f"option {key} has a bad value {value!r}.") from None
        except OSError:
            raise UsageError(f"notify_fd={value} is not an open file descriptor.") from None
    elif key in ("uidmapping", "gidmapping"):
        from .idmapping import IdMapping
        try:
            setattr(opts, key, IdMapping.parse(value))
        except ValueError as e:
            raise UsageError(f"option {key}={value} is not valid: {e}.") from None
    elif key == "pidfile":
        opts.pidfile = value
    elif key == "fsname":
        opts.fsname = value
    elif key == "writeback":
        if value not in ("", "0", "1"):
            raise UsageError(f"option writeback has a bad value {value!r}; use 0 or 1.")
        opts.writeback = value != "0"
    elif key in _IGNORED:
        if key == "debug":
            opts.debug = True
    else:
        raise UsageError(f"unknown option {key!r}; see fuse-overlay --help.")


def parse_args(argv: list[str]) -> Options:
    """Parse ``argv`` (without the program name)."""
    opts = Options()
    positional: list[str] = []
    it = iter(argv)
    for arg in it:
        if arg in ("-h", "--help"):
            sys.stdout.write(USAGE)
            raise SystemExit(0)
        if arg == "-f":
            opts.foreground = True
        elif arg in ("-d", "--debug"):
            opts.debug = opts.foreground = True
        elif arg == "-o":
            value = next(it, None)
            if value is None:
                raise UsageError("-o needs a list of options after it.")
            for item in _split_opts(value):
                _apply(opts, item)
        elif arg.startswith("-o"):
            for item in _split_opts(arg[2:]):
                _apply(opts, item)
        elif arg.startswith("-") and arg != "-":
            raise UsageError(f"unknown flag {arg!r}; see fuse-overlay --help.")
        else:
            positional.append(arg)
    if len(positional) != 1:
        raise UsageError("give exactly one mount point (got %d)." % len(positional))
    opts.mountpoint = positional[0]
    if not opts.lowers:
        raise UsageError("no lowerdir given; use -o lowerdir=DIR[:DIR...].")
    if (opts.upper is None) != (opts.work is None):
        raise UsageError("upperdir and workdir must be given together.")
    return opts


def _check_dir(what: str, path: str) -> os.stat_result:
    try:
        st = os.stat(path)
    except OSError as e:
        raise UsageError(f"{what} {path} cannot be used: {e.strerror}.") from None
    if not stat.S_ISDIR(st.st_mode):
        raise UsageError(f"{what} {path} is not a directory.")
    return st


def check_dirs(opts: Options) -> None:
    for low in opts.lowers:
        _check_dir("lowerdir", low)
    if opts.upper is not None and opts.work is not None:
        up = _check_dir("upperdir", opts.upper)
        wk = _check_dir("workdir", opts.work)
        if up.st_dev != wk.st_dev:
            raise UsageError(f"workdir {opts.work} is not on the same filesystem as upperdir {opts.upper}.")
        if os.path.realpath(opts.upper) == os.path.realpath(opts.work):
            raise UsageError("upperdir and workdir must be different directories.")
    try:
        os.stat(opts.mountpoint)
    except OSError as e:
        import errno
        if e.errno != errno.ENOTCONN:
            raise UsageError(f"mount point {opts.mountpoint} cannot be used: {e.strerror}.") from None


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``fuse-overlay`` console script."""
    try:
        opts = parse_args(sys.argv[1:] if argv is None else argv)
        check_dirs(opts)
    except UsageError as e:
        print(f"fuse-overlay: {e}", file=sys.stderr)
        return 1
    return run(opts)


def run(opts: Options) -> int:
    from . import mount

    status_fd = None
    if not opts.foreground:
        status_fd, _pid = mount.daemonize()
    try:
        from . import loop
        loop.import_pyfuse3()        # before fs.py imports it: without trio
        from .fs import Config, OverlayFS
        work = None
        if opts.upper is not None and opts.work is not None and not opts.read_only:
            work = mount.prepare_workdir(os.fsencode(os.path.abspath(opts.work)))
        upper = None if opts.read_only or opts.upper is None else os.fsencode(os.path.abspath(opts.upper))
        cfg = Config(upper=upper,
                     lowers=[os.fsencode(os.path.abspath(p)) for p in opts.lowers],
                     work=work, timeout=opts.timeout, xattr_permissions=opts.xattr_permissions,
                     writeback=opts.writeback, uidmap=opts.uidmapping, gidmap=opts.gidmapping,
                     errors_path=None if work is None else
                     os.path.join(os.fsencode(os.path.abspath(opts.work)), mount.ERRORS_FILE))
        os.umask(0)
        ops = OverlayFS(cfg)
        if opts.debug:
            import logging
            logging.basicConfig(level=logging.DEBUG, format="fuse-overlay: %(message)s")

        def ready() -> None:
            if opts.pidfile:
                with open(opts.pidfile, "w") as f:
                    f.write(f"{os.getpid()}\n")
            mount.notify(opts.notify_fd)
            if status_fd is not None:
                mount.notify(status_fd)
                mount.detach_stdio()

        return mount.serve(ops, opts.mountpoint, mount.fuse_options(upper is None, opts.fsname), ready,
                           opts.spin_us)
    except (mount.MountError, OSError) as e:
        msg = str(e) if isinstance(e, mount.MountError) else f"{e.strerror}: {e.filename}"
        print(f"fuse-overlay: {msg}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
